"""Figure: the simulator's B-mode next to real frames, and its rendering of MRI slices.

Rows 1-3: a real held-out B-mode frame, its low-level map, the simulator's B-mode of that map.
Row 4: an MRI slice, its low-level map, the simulator's B-mode (the denoiser's MRI training input).

    python training/simulator_figure.py --data data --bundle_root monai_bundle --out reports/figures/simulator.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from usdespeckle.gan.simulator import load_simulator, simulate_bmode_from_mri
from usdespeckle.simulation.lowlevel import low_level_map


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0


def _tile(image: np.ndarray, size: int = 256) -> np.ndarray:
    """Centre crop or zero-pad to size x size."""
    out = np.zeros((size, size), np.float32)
    h, w = image.shape
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    crop = image[top : top + size, left : left + size]
    r, c = (size - crop.shape[0]) // 2, (size - crop.shape[1]) // 2
    out[r : r + crop.shape[0], c : c + crop.shape[1]] = crop
    return out


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--bundle_root", type=Path, default=Path("monai_bundle"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    simulator = load_simulator(args.bundle_root)
    real = json.loads((args.data / "datalist_real_bmode.json").read_text(encoding="utf-8"))
    picks = [real["test"][0], real["test"][-1], real["validation"][-1]]
    mri = json.loads((args.data / "datalist_mri.json").read_text(encoding="utf-8"))["test"]
    images = [_tile(_grey(args.data / item["image"])) for item in picks]
    images.append(_tile(_grey(args.data / mri[len(mri) // 2]["label"])))
    rows = []
    for image in images:
        level = low_level_map(image)
        simulated = simulate_bmode_from_mri(simulator, image[None])[0]
        rows.append(np.concatenate([image, level, simulated], axis=1))
    grid = np.concatenate(rows, axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)).save(args.out)
    print(f"wrote {args.out} (columns: image, low-level map, simulator; rows: 3 real frames, 1 MRI slice)")


if __name__ == "__main__":
    main()
