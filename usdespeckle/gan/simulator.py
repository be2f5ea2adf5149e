"""The trained simulator: an image or volume, slice by slice, to a synthetic B-mode in [0, 1].

Each slice becomes its low-level map (:func:`usdespeckle.simulation.lowlevel.low_level_map`: min-max normalised
per slice, quantised to 8 levels, median-smoothed), which the simulator's generator translates into
a B-mode image in [0, 1], the method's cross-modality step (Vieira et al. 2024). Maps are padded by
reflection to the generator's size divisor and cropped back. :func:`simulate_array` runs it over a
2D image or a 3D volume with the library's slice-wise runner (:mod:`usdespeckle.runtime.slicewise`), as
:func:`usdespeckle.runtime.inference.despeckle_array` runs the denoiser.

The simulator comes from the bundle: ``models/simulator.ts`` (TorchScript) if present, else
``models/simulator.pt`` (weights of the ``network_def`` of the simulator's training config,
``train_simulator.json`` stacked on ``train.json``), each checked against its sha256 in
``configs/metadata.json``.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from usdespeckle.runtime.bundle_utils import check_weights, default_bundle_root
from usdespeckle.runtime.options import DEFAULT_AXIS, DEFAULT_BATCH_SIZE, DEFAULT_DEVICE
from usdespeckle.runtime.slicewise import Cancel, Progress, check_volume, pad_to_multiple, run_slicewise
from usdespeckle.simulation.lowlevel import low_level_map

__all__ = [
    "SIMULATOR_CONFIGS",
    "SIMULATOR_FILES",
    "load_simulator",
    "simulate_array",
    "simulate_bmode_from_mri",
    "simulator_divisor",
    "simulator_file",
]

#: Simulator files looked for in the bundle, in this order.
SIMULATOR_FILES = ("models/simulator.ts", "models/simulator.pt")
#: The simulator's training config: train_simulator.json overrides train.json (MONAI's config stacking).
SIMULATOR_CONFIGS = ("configs/train.json", "configs/train_simulator.json")

_CACHE: dict[tuple[str, int, int, str], torch.nn.Module] = {}
_CACHE_LOCK = threading.Lock()


def simulator_file(bundle_root: str | os.PathLike | None = None) -> Path | None:
    """The bundle's simulator file (the first of :data:`SIMULATOR_FILES` that exists), or None."""
    root = Path(bundle_root) if bundle_root is not None else default_bundle_root()
    return next((root / rel for rel in SIMULATOR_FILES if (root / rel).is_file()), None)


def load_simulator(
    bundle_root: str | os.PathLike | None = None, device: str = DEFAULT_DEVICE
) -> torch.nn.Module:
    """Load the bundle's simulator after checking its sha256 against ``configs/metadata.json``.

    ``models/simulator.ts`` is loaded as it is; ``models/simulator.pt`` into the generator that
    the ``network_def`` of :data:`SIMULATOR_CONFIGS` builds. Loaded models are cached per file
    (its size and modification time included, so a replaced file is checked again) and device;
    use them read-only.

    Args:
        bundle_root: the MONAI bundle folder; default :func:`usdespeckle.runtime.bundle_utils.default_bundle_root`.
        device: torch device for the network (``"cpu"``, ``"cuda"``).

    Returns:
        The generator in eval mode, mapping ``(B, 1, H, W)`` low-level maps in [0, 1] to B-mode in [0, 1].

    Raises:
        FileNotFoundError: no simulator file in the bundle, or no ``configs/metadata.json``.
        ValueError: the file's sha256 is not the one recorded, or none is recorded, or the file
            cannot be loaded (or its weights do not fit ``train_simulator.json``'s network).
    """
    root = Path(bundle_root) if bundle_root is not None else default_bundle_root()
    path = simulator_file(root)
    if path is None:
        raise FileNotFoundError(
            f"no simulator weights in {root / 'models'}; train them with train_simulator.json "
            "(training/recipe.sh) and export them into the bundle, or point USDESPECKLE_BUNDLE at a "
            "bundle that has them"
        )
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(device))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        rel = f"models/{path.name}"
        check_weights(root, rel)
        try:
            simulator = (
                _load_torchscript(path, device) if path.suffix == ".ts" else _load_weights(root, path, device)
            )
        except RuntimeError as err:  # a damaged file, or a state dict that does not fit the network
            raise ValueError(
                f"the simulator in {rel} cannot be loaded (does it fit train_simulator.json's network?): "
                f"{str(err).strip().splitlines()[0][:200]}"
            ) from None
        _CACHE[key] = simulator
        return simulator


def _load_torchscript(path: Path, device: str) -> torch.nn.Module:
    with warnings.catch_warnings():  # TorchScript is what MONAI's ckpt_export writes
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def _load_weights(root: Path, path: Path, device: str) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(root / rel) for rel in SIMULATOR_CONFIGS])
    parser["bundle_root"] = str(root)
    simulator = parser.get_parsed_content("network_def")
    state = torch.load(path, map_location=device, weights_only=True)
    simulator.load_state_dict(state.get("model", state))
    return simulator.to(device).eval()


def simulator_divisor(simulator: torch.nn.Module) -> int:
    """Input sides the simulator needs multiples of: its ``divisor``, else ``2**num_downs``, else 1."""
    divisor = getattr(simulator, "divisor", None)
    if divisor is None:
        divisor = 2 ** int(getattr(simulator, "num_downs", 0))
    return int(divisor)


@torch.inference_mode()
def simulate_bmode_from_mri(
    simulator: torch.nn.Module,
    slices: np.ndarray,
    *,
    device: str = DEFAULT_DEVICE,
    divisor: int | None = None,
) -> np.ndarray:
    """Render slices as synthetic B-mode images: the low-level map of each, then the simulator.

    Args:
        simulator: the simulator's generator, mapping ``(B, 1, H, W)`` in [0, 1] to the same.
        slices: ``(B, H, W)`` slices of any real range (the low-level map normalises each one).
        device: torch device of the simulator.
        divisor: map sides are padded by reflection to multiples of this and cropped back; default
            :func:`simulator_divisor`.

    Returns:
        float32 ``(B, H, W)`` in [0, 1].
    """
    maps = np.stack([low_level_map(s) for s in slices])
    padded, (rows, cols) = pad_to_multiple(maps, divisor or simulator_divisor(simulator))
    out = simulator(torch.from_numpy(np.ascontiguousarray(padded[:, np.newaxis])).to(device))
    return out[:, 0, rows, cols].clamp(0, 1).float().cpu().numpy()


def simulate_array(
    array: np.ndarray,
    *,
    axis: int = DEFAULT_AXIS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    bundle_root: str | os.PathLike | None = None,
    device: str = DEFAULT_DEVICE,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    simulator: torch.nn.Module | None = None,
    divisor: int | None = None,
) -> np.ndarray:
    """Render a 2D image or a 3D volume slice by slice as synthetic B-mode with the trained simulator.

    Each slice along ``axis`` goes through :func:`simulate_bmode_from_mri`; the output is in the
    simulator's units, [0, 1], not the input's.

    Args:
        array: 2D ``(H, W)`` or 3D array of real, finite values, any range (e.g. an MRI volume).
            Never modified.
        axis: for 3D, the numpy axis slices are taken along (0, 1 or 2; for a SimpleITK array
            ``(k, j, i)``, 0 means slices of constant k). Ignored for 2D.
        batch_size: slices per simulator call, >= 1.
        bundle_root: the bundle the simulator is loaded from (:func:`load_simulator`); default
            :func:`usdespeckle.runtime.bundle_utils.default_bundle_root`. Unused with ``simulator``.
        device: torch device (``"cpu"``, ``"cuda"``).
        progress: called as ``progress(done, total)`` in slices, after each batch.
        cancel: a callable returning True, or a ``threading.Event`` that is set, to stop.
        simulator: an already loaded simulator instead of the bundle's.
        divisor: the simulator's size divisor; default :func:`simulator_divisor`.

    Returns:
        float32 array of the input's shape, in [0, 1].

    Raises:
        ValueError: bad shape, axis, batch size, non-finite values, slices smaller than 8 pixels, or
            a simulator problem (see :func:`load_simulator`).
        FileNotFoundError: the bundle has no simulator.
        DespeckleCancelled: ``cancel`` asked to stop.
    """
    array = check_volume(array, axis=axis, batch_size=batch_size)
    model = simulator if simulator is not None else load_simulator(bundle_root, device)
    size_divisor = divisor or simulator_divisor(model)

    def simulate_batch(batch: np.ndarray) -> np.ndarray:
        return simulate_bmode_from_mri(model, batch, device=device, divisor=size_divisor)

    return run_slicewise(
        array,
        simulate_batch,
        axis=axis,
        batch_size=batch_size,
        progress=progress,
        cancel=cancel,
        name="the simulator",
        remedy="its weights may be corrupt (restore the bundle).",
    )[0]
