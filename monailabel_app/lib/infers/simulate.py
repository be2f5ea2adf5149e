"""The ``simulate`` infer task: the trained simulator turns an MRI volume into a synthetic B-mode.

Each slice becomes its low-level map, which the simulator's generator translates into a B-mode
image in [0, 1] (:func:`usdespeckle.pairs.simulate_bmode_from_mri`). The result is a float32 image with
the input's geometry.
"""

from __future__ import annotations

import copy
import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.infers.common import (
    DEVICES,
    RESULT_EXTENSIONS,
    describe,
    get_choice,
    get_int,
    http_errors,
    read_request_image,
    run_timed,
    scrub_paths,
    write_result,
)
from usdespeckle.inference import default_bundle_root
from usdespeckle.io import MAX_VOXELS
from usdespeckle.pairs import simulate_bmode_from_mri

logger = logging.getLogger(__name__)

#: Simulator files looked for in the bundle's models/ folder, in this order.
SIMULATOR_FILES = ("simulator.ts", "simulator.pt")

_MODELS: dict[tuple[str, int, int, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def load_simulator(bundle_root: Path, device: str) -> Any:
    """Load the bundle's simulator after checking its sha256 against ``configs/metadata.json``.

    ``models/simulator.ts`` (TorchScript) is loaded as is; ``models/simulator.pt`` goes through
    :func:`usdespeckle.pairs.load_simulator`, which builds the generator ``train_simulator.json``
    describes. Cached per file (size and modification time included) and device.

    Args:
        bundle_root: the MONAI bundle folder.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        A module in eval mode mapping ``(B, 1, H, W)`` in [0, 1] to the same.

    Raises:
        FileNotFoundError: no simulator file or no metadata in the bundle.
        ValueError: the file's sha256 is not the one recorded, or none is recorded, or the file
            cannot be loaded.
    """
    import torch

    from usdespeckle import pairs
    from usdespeckle.bundle_utils import verify_checksums

    models = bundle_root / "models"
    path = next((models / n for n in SIMULATOR_FILES if (models / n).is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"no simulator weights in {models}; train the simulator (training/ recipe) and export "
            "it into the bundle, or start the server with --conf bundle <a bundle that has it>"
        )
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, device)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        if path.suffix == ".ts":
            rel = f"models/{path.name}"
            if verify_checksums(bundle_root, files=(rel,))[rel] != "ok":  # ValueError on a mismatch
                raise ValueError(
                    f"the bundle's metadata.json records no sha256 for {rel}; re-export the bundle"
                )
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    model = torch.jit.load(str(path), map_location=device).eval()
            except RuntimeError as err:
                raise ValueError(
                    f"the simulator file cannot be loaded: {str(err).splitlines()[0][:200]}"
                ) from None
        else:
            try:
                model = pairs.load_simulator(bundle_root, device=device)
            except RuntimeError as err:  # a state dict that does not fit train_simulator.json's network
                raise ValueError(
                    f"the simulator weights do not fit the bundle's train_simulator.json network: "
                    f"{str(err).strip().splitlines()[0][:200]}"
                ) from None
        _MODELS[key] = model
        return model


def simulate_array(
    array: np.ndarray, model: Any, divisor: int, *, axis: int = 0, batch_size: int = 8, device: str = "cpu"
) -> np.ndarray:
    """Run the simulator slice by slice on an MRI array.

    Batches of slices are padded by reflection to multiples of ``divisor``, rendered by
    :func:`usdespeckle.pairs.simulate_bmode_from_mri` (low-level map, then the simulator), and
    cropped back.

    Args:
        array: 2D ``(H, W)`` or 3D array, finite, any intensity range (the low-level map
            normalises each slice).
        model: the simulator's generator, ``(B, 1, H, W)`` in [0, 1] to the same.
        divisor: H and W of the model input must be multiples of this, pixels.
        axis: numpy axis of a 3D array to slice along (0, 1 or 2).
        batch_size: slices per model call, >= 1.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        float32 array of the input's shape, in [0, 1].
    """
    import torch

    volume = array[np.newaxis] if array.ndim == 2 else np.moveaxis(array, axis, 0)
    output = np.empty(array.shape, dtype=np.float32)
    out_view = output[np.newaxis] if array.ndim == 2 else np.moveaxis(output, axis, 0)
    n, h, w = volume.shape
    ph, pw = (-h) % divisor, (-w) % divisor
    top, left = ph // 2, pw // 2
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = np.asarray(volume[start:stop], dtype=np.float32)
        padded = np.pad(batch, ((0, 0), (top, ph - top), (left, pw - left)), mode="reflect")
        with torch.inference_mode():
            result = simulate_bmode_from_mri(model, padded, device=device)
        out_view[start:stop] = result[:, top : top + h, left : left + w]
    return output


class SimulateInferTask(InferTask):
    """Synthetic B-mode from an MRI image or volume; returns a float32 image in [0, 1].

    Request parameters, all optional: ``axis`` (0-2), ``batch_size`` (1-256), ``device``,
    ``result_extension``.

    Args:
        bundle_root: the bundle holding ``models/simulator.ts`` or ``models/simulator.pt`` with its
            sha256 in ``configs/metadata.json``; None uses the library's default bundle.
        divisor: model input sides must be multiples of this; None takes the model's ``divisor``
            attribute (``2**num_downs``), else 256.
        device: default device.
        datastore_root: the datastore folder, whose images requests may name by id.
        max_voxels: largest number of values an input's header may declare.
    """

    def __init__(
        self,
        bundle_root: str | None = None,
        divisor: int | None = None,
        device: str = "cpu",
        datastore_root: str | None = None,
        max_voxels: int = MAX_VOXELS,
    ) -> None:
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description="MRI to synthetic ultrasound B-mode (pix2pix simulator on the low-level map); float32 in [0, 1]",
            config={"axis": 0, "batch_size": 8, "device": device, "result_extension": ".nii.gz"},
        )
        self.bundle_root = Path(bundle_root) if bundle_root else None
        self.divisor = divisor
        self.datastore_root = datastore_root
        self.max_voxels = max_voxels

    def bundle(self) -> Path:
        """The bundle folder the simulator is read from."""
        return self.bundle_root or default_bundle_root()

    def simulator_path(self) -> Path:
        """The weights file this task uses (it may not exist yet)."""
        models = self.bundle() / "models"
        for name in SIMULATOR_FILES:
            if (models / name).is_file():
                return models / name
        return models / SIMULATOR_FILES[-1]

    def is_valid(self) -> bool:
        """Always listed; a request without weights on the server gets HTTP 503 with the reason."""
        return True

    def info(self) -> dict[str, Any]:
        """MONAI Label's task info plus the weights file and whether it exists."""
        meta = super().info()
        path = self.simulator_path()
        meta["simulator"] = {"file": path.name, "available": path.is_file()}
        return meta

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run the simulator on ``request["image"]`` and write the result.

        Raises:
            HTTPException: 400 for a bad image or parameter, 503 when the weights are missing.
        """
        params = copy.deepcopy(self._config)
        params.update(request)
        axis = get_int(params, "axis", 0, 0, 2)
        batch_size = get_int(params, "batch_size", 8, 1, 256)
        device = get_choice(params, "device", "cpu", DEVICES)
        extension = get_choice(params, "result_extension", ".nii.gz", RESULT_EXTENSIONS)

        image = read_request_image(
            request, "simulate", datastore_root=self.datastore_root, max_voxels=self.max_voxels
        )
        with http_errors("simulate"):
            path = self.simulator_path()
            try:
                model = load_simulator(self.bundle(), device)
            except ValueError as err:  # the server's weights, not the request, are wrong
                logger.error("simulate: %s", err)
                raise HTTPException(
                    status_code=503,
                    detail=f"simulate: the server's simulator is unusable: {scrub_paths(str(err))}",
                ) from None
            divisor = int(self.divisor or getattr(model, "divisor", 256))
            array = sitk.GetArrayViewFromImage(image)
            out, seconds = run_timed(
                lambda: simulate_array(array, model, divisor, axis=axis, batch_size=batch_size, device=device)
            )
        result = sitk.GetImageFromArray(out, isVector=False)
        result.CopyInformation(image)
        out_path = write_result(result, extension)
        logger.info("simulate: %s -> %s in %.2f s", image.GetSize(), out_path, seconds)
        return out_path, {
            "task": "simulate",
            "simulator": path.name,
            "axis": axis,
            "batch_size": batch_size,
            "device": device,
            "seconds": round(seconds, 3),
            "output": describe(result),
        }
