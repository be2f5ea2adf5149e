"""The denoiser's MRI pairs: each MRI slice with the trained simulator's B-mode rendering of it.

The method's cross-modality step (Vieira et al. 2024): an MRI slice is reduced to its low-level map
(:func:`usdespeckle.lowlevel.low_level_map`), the simulator turns that map into a synthetic B-mode
image, and the denoiser learns to map the synthetic B-mode back to the MRI slice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from usdespeckle.lowlevel import low_level_map

SIMULATOR_WEIGHTS = "models/simulator.pt"
#: The simulator's training config: train_simulator.json overrides train.json (MONAI's config stacking).
SIMULATOR_CONFIGS = ("configs/train.json", "configs/train_simulator.json")
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


def load_simulator(bundle_root: str | os.PathLike | None = None, device: str = "cpu") -> torch.nn.Module:
    """The bundle's simulator: ``train.json`` stacked with ``train_simulator.json``, ``simulator.pt`` loaded.

    Args:
        bundle_root: the MONAI bundle folder; default :func:`usdespeckle.inference.default_bundle_root`.
        device: torch device for the network.

    Returns:
        The generator in eval mode, mapping (B, 1, H, W) low-level maps in [0, 1] to B-mode in [0, 1].

    Raises:
        FileNotFoundError: no ``models/simulator.pt`` or no metadata in the bundle.
        ValueError: the weights' sha256 is not the one ``configs/metadata.json`` records.
    """
    from monai.bundle import ConfigParser

    from usdespeckle.bundle_utils import verify_checksums
    from usdespeckle.inference import default_bundle_root

    root = Path(bundle_root) if bundle_root is not None else default_bundle_root()
    weights = root / SIMULATOR_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(
            f"no simulator weights at {weights}; train them with train_simulator.json "
            "(training/recipe.sh) or point USDESPECKLE_BUNDLE at a bundle that has them"
        )
    if (
        verify_checksums(root, files=(SIMULATOR_WEIGHTS,))[SIMULATOR_WEIGHTS] != "ok"
    ):  # ValueError on a mismatch
        raise ValueError(f"{root / 'configs' / 'metadata.json'} records no sha256 for {SIMULATOR_WEIGHTS}")
    parser = ConfigParser()
    parser.read_config([root / rel for rel in SIMULATOR_CONFIGS])
    parser["bundle_root"] = str(root)
    simulator = parser.get_parsed_content("network_def")
    state = torch.load(weights, map_location=device, weights_only=True)
    simulator.load_state_dict(state.get("model", state))
    return simulator.to(device).eval()


@torch.no_grad()
def simulate_bmode_from_mri(
    simulator: torch.nn.Module, slices: np.ndarray, *, device: str = "cpu"
) -> np.ndarray:
    """Render MRI slices as synthetic B-mode images with the simulator.

    Slices of any size are padded by reflection to the generator's divisor (``2**num_downs``) and
    cropped back.

    Args:
        simulator: the simulator's generator, mapping (B, 1, H, W) in [0, 1] to the same in [0, 1].
        slices: MRI slices, float array (B, H, W) in [0, 1].
        device: torch device for the simulator.

    Returns:
        float32 array (B, H, W) in [0, 1].
    """
    from usdespeckle.inference import pad_to_multiple

    maps = np.stack([low_level_map(s) for s in slices])
    padded, crop = pad_to_multiple(maps, 2 ** int(getattr(simulator, "num_downs", 0)))
    out = simulator(torch.from_numpy(np.ascontiguousarray(padded[:, None])).to(device))
    return out[:, 0, crop[0], crop[1]].clamp(0, 1).cpu().numpy().astype(np.float32)


def make_mri_pairs(
    data_dir: str | Path,
    simulator: torch.nn.Module,
    *,
    batch_size: int = 16,
    device: str = "cpu",
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
            datalist = json.loads(path.read_text())
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
        path.write_text(json.dumps(datalist, indent=1))
        written.append(path)
    return written
