"""Figure: held-out real frames, the denoiser's output and its uncertainty (spread of 8 mirrored passes).

python training/uncertainty_figure.py --data data --out reports/figures/real_bmode_uncertainty.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from usdespeckle.runtime.inference import despeckle_array


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder made by usdespeckle prepare-data")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    test = json.loads((args.data / "datalist_real_bmode.json").read_text(encoding="utf-8"))["test"]
    picks = [test[0], test[len(test) // 2], test[-1]]
    rows = []
    for item in picks:
        image = np.asarray(Image.open(args.data / item["image"]), dtype=np.float32) / 255.0
        mask = np.asarray(Image.open(args.data / item["mask"])) > 127
        output, spread = despeckle_array(image, intensity_range=(0.0, 1.0), return_uncertainty=True)
        # spread shown on a fixed scale: white = 0.1 (10 % of the grey range) or more, inside the field
        shown = np.where(mask, np.clip(spread / 0.1, 0.0, 1.0), 0.0)
        rows.append(np.concatenate([image, np.clip(output, 0, 1), shown], axis=1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]))) for r in rows], axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(grid * 255).astype(np.uint8)).save(args.out)
    print(f"wrote {args.out} (columns: input, denoiser, spread of the 8 mirrored passes, white = 0.1)")


if __name__ == "__main__":
    main()
