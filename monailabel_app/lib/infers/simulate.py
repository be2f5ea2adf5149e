"""The ``simulate`` infer task: the trained simulator turns an MRI volume into a synthetic B-mode.

The library does the work (:mod:`usdespeckle.gan.simulator`): :func:`~usdespeckle.gan.simulator.load_simulator`
checks and loads the bundle's simulator, :func:`~usdespeckle.gan.simulator.simulate_array` turns each
slice into its low-level map and the map into a B-mode image in [0, 1]. The result is a float32 image
with the input's geometry.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.infers.common import (
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
from usdespeckle.gan.simulator import SIMULATOR_FILES, load_simulator, simulate_array, simulator_file
from usdespeckle.runtime.bundle_utils import default_bundle_root
from usdespeckle.runtime.options import (
    AXES,
    DEFAULT_AXIS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEVICES,
    MAX_BATCH_SIZE,
    MAX_VOXELS,
)

__all__ = ["SimulateInferTask", "load_simulator"]  # load_simulator: the library's, for the app's users

logger = logging.getLogger(__name__)


class SimulateInferTask(InferTask):
    """Synthetic B-mode from an MRI image or volume; returns a float32 image in [0, 1].

    Request parameters, all optional: ``axis`` (0-2), ``batch_size`` (1-256), ``device``,
    ``result_extension``.

    Args:
        bundle_root: the bundle holding ``models/simulator.ts`` or ``models/simulator.pt`` with its
            sha256 in ``configs/metadata.json``; None uses the library's default bundle.
        device: default device.
        datastore_root: the datastore folder, whose images requests may name by id.
        max_voxels: largest number of values an input's header may declare.
    """

    def __init__(
        self,
        bundle_root: str | None = None,
        device: str = DEFAULT_DEVICE,
        datastore_root: str | None = None,
        max_voxels: int = MAX_VOXELS,
    ) -> None:
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description="MRI to synthetic ultrasound B-mode (pix2pix simulator on the low-level map); float32 in [0, 1]",
            config={
                "axis": DEFAULT_AXIS,
                "batch_size": DEFAULT_BATCH_SIZE,
                "device": device,
                "result_extension": ".nii.gz",
            },
        )
        self.bundle_root = Path(bundle_root) if bundle_root else None
        self.datastore_root = datastore_root
        self.max_voxels = max_voxels

    def bundle(self) -> Path:
        """The bundle folder the simulator is read from."""
        return self.bundle_root or default_bundle_root()

    def simulator_path(self) -> Path:
        """The weights file this task uses; when none exists, the one it would look for last."""
        return simulator_file(self.bundle()) or self.bundle() / SIMULATOR_FILES[-1]

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
        axis = get_int(params, "axis", DEFAULT_AXIS, min(AXES), max(AXES))
        batch_size = get_int(params, "batch_size", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE)
        device = get_choice(params, "device", DEFAULT_DEVICE, DEVICES)
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
            array = sitk.GetArrayViewFromImage(image)
            out, seconds = run_timed(
                lambda: simulate_array(
                    array, axis=axis, batch_size=batch_size, device=device, simulator=model
                )
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
