"""The denoiser's MRI pairs: each MRI slice with the trained simulator's B-mode rendering of it.

The method's cross-modality step (Vieira et al. 2024): an MRI slice is reduced to its low-level map
(:func:`usdespeckle.simulation.lowlevel.low_level_map`), the simulator turns that map into a synthetic B-mode
image (:mod:`usdespeckle.gan.simulator`), and the denoiser learns to map the synthetic B-mode back to the
MRI slice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from usdespeckle.gan.simulator import simulate_bmode_from_mri
from usdespeckle.runtime.atomic import atomic_write
from usdespeckle.runtime.options import DEFAULT_DEVICE

__all__ = ["PAIR_LISTS", "make_mri_pairs"]

PAIR_LISTS = {
    "datalist_mri.json": "datalist_mri_pairs.json",
    "datalist_mri_extra_test.json": "datalist_mri_extra_test_pairs.json",
}


def _read_grey(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _write_grey(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)).save(path)


def make_mri_pairs(
    data_dir: str | Path,
    simulator: torch.nn.Module,
    *,
    batch_size: int = 16,
    device: str = DEFAULT_DEVICE,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write simulated B-mode images for every MRI slice and the paired datalists.

    For each MRI datalist made by ``usdespeckle prepare-data`` (``datalist_mri.json``, and
    ``datalist_mri_extra_test.json`` when present) it writes ``mri_pairs/<name>.png`` and a datalist
    (``datalist_mri_pairs.json``, ...) whose items hold ``image`` (the synthetic B-mode, the
    denoiser's input) and ``label`` (the MRI slice, its target), with the same splits and sources.

    Args:
        data_dir: folder made by ``usdespeckle prepare-data``.
        simulator: trained simulator generator (eval mode is set here).
        batch_size: slices per simulator forward pass.
        device: torch device.
        progress: optional callback ``progress(done, total)``.

    Returns:
        Paths of the datalists written.

    Raises:
        FileNotFoundError: when ``data_dir`` holds no ``datalist_mri.json``.
    """
    data_dir = Path(data_dir)
    if not (data_dir / "datalist_mri.json").is_file():
        raise FileNotFoundError(
            f"{data_dir} holds no datalist_mri.json; make the datasets first with "
            f"'usdespeckle prepare-data {data_dir}'."
        )
    simulator = simulator.to(device).eval()
    written: list[Path] = []
    jobs: list[tuple[str, str, list[dict]]] = []
    for source_name, pair_name in PAIR_LISTS.items():
        path = data_dir / source_name
        if path.is_file():
            datalist = json.loads(path.read_text(encoding="utf-8"))
            for split, items in datalist.items():
                if isinstance(items, list):
                    jobs.append((pair_name, split, items))
    total = sum(len(items) for _, _, items in jobs)
    done = 0
    pairs: dict[str, dict[str, list[dict]]] = {}
    for pair_name, split, items in jobs:
        out_items = pairs.setdefault(pair_name, {}).setdefault(split, [])
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            slices = np.stack([_read_grey(data_dir / item["label"]) for item in batch])
            bmode = simulate_bmode_from_mri(simulator, slices, device=device)
            for item, image in zip(batch, bmode, strict=True):
                rel = Path("mri_pairs") / Path(item["label"]).with_suffix(".png")
                _write_grey(data_dir / rel, image)
                out_items.append({**item, "image": rel.as_posix()})
            done += len(batch)
            if progress is not None:
                progress(done, total)
    for pair_name, datalist in pairs.items():
        path = data_dir / pair_name
        atomic_write(path, json.dumps(datalist, indent=1))  # the datalist marks the pairs complete
        written.append(path)
    return written
