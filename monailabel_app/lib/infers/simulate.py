"""The ``simulate`` infer task: the trained simulator turns an MRI volume into a synthetic B-mode.

Each slice becomes its low-level map, which the simulator's generator translates into a B-mode
image in [0, 1] (:func:`usdespeckle.pairs.simulate_bmode_from_mri`). The result is a float32 image with
the input's geometry.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
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
    write_result,
)
from usdespeckle.inference import default_bundle_root
from usdespeckle.pairs import simulate_bmode_from_mri

logger = logging.getLogger(__name__)

#: Simulator files looked for in the bundle's models/ folder, in this order.
SIMULATOR_FILES = ("simulator.ts", "simulator.pt")

_MODELS: dict[tuple[str, int, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def load_simulator(path: Path, device: str, network_args: dict[str, Any]) -> Any:
    """Load the simulator's generator, TorchScript or a state dict, cached per file and device.

    Args:
        path: ``simulator.ts`` (TorchScript) or ``simulator.pt`` (a state dict of
            ``usdespeckle.networks.Pix2PixUNetGenerator``).
        device: ``"cpu"`` or ``"cuda"``.
        network_args: keyword arguments of ``Pix2PixUNetGenerator`` for a state dict.

    Returns:
        A module in eval mode mapping ``(B, 1, H, W)`` in [0, 1] to the same.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is neither TorchScript nor a matching state dict.
    """
    import torch

    if not path.is_file():
        raise FileNotFoundError(
            f"no simulator weights at {path}; train the simulator (training/ recipe) and save its "
            "generator there, or start the server with --conf simulator <file>"
        )
    key = (str(path.resolve()), path.stat().st_mtime_ns, device)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        if path.suffix == ".ts":
            model = torch.jit.load(str(path), map_location=device)
        else:
            from usdespeckle.networks import Pix2PixUNetGenerator

            state = torch.load(str(path), map_location=device, weights_only=True)
            model = Pix2PixUNetGenerator(**network_args)
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                first = str(err).strip().splitlines()[0][:200]
                raise ValueError(
                    f"{path} does not fit Pix2PixUNetGenerator({network_args}): {first}; pass the "
                    'network\'s arguments with --conf simulator_args \'{"num_downs": 8, "ngf": 64}\''
                ) from None
            model = model.to(device)
        model.eval()
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
        simulator: the simulator's weights file; None looks for ``simulator.ts`` then
            ``simulator.pt`` in the bundle's ``models/`` folder.
        network_args: ``Pix2PixUNetGenerator`` arguments for a state-dict file.
        divisor: model input sides must be multiples of this; None takes the model's ``divisor``
            attribute (``2**num_downs``), else 256.
        device: default device.
    """

    def __init__(
        self,
        simulator: str | None = None,
        network_args: dict[str, Any] | None = None,
        divisor: int | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description="MRI to synthetic ultrasound B-mode (pix2pix simulator on the low-level map); float32 in [0, 1]",
            config={"axis": 0, "batch_size": 8, "device": device, "result_extension": ".nii.gz"},
        )
        self.simulator = simulator
        self.network_args = dict(network_args or {})
        self.divisor = divisor

    def simulator_path(self) -> Path:
        """The weights file this task uses (it may not exist yet)."""
        if self.simulator:
            return Path(self.simulator)
        models = default_bundle_root() / "models"
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
        meta["simulator"] = {"path": str(path), "available": path.is_file()}
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

        image = read_request_image(request, "simulate")
        with http_errors("simulate"):
            path = self.simulator_path()
            model = load_simulator(path, device, self.network_args)
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
            "simulator": str(path),
            "axis": axis,
            "batch_size": batch_size,
            "device": device,
            "seconds": round(seconds, 3),
            "output": describe(result),
        }


def parse_network_args(text: str | None) -> dict[str, Any]:
    """Parse ``--conf simulator_args '<json object>'``.

    Raises:
        ValueError: the text is not a JSON object.
    """
    if not text:
        return {}
    try:
        args = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"simulator_args must be a JSON object, got {text!r}: {err}") from None
    if not isinstance(args, dict):
        raise ValueError(f"simulator_args must be a JSON object, got {text!r}")
    return args
