"""The ``despeckle`` infer task: the shipped denoiser (or a classical filter) on an ultrasound image.

The result is a float32 image, not a label map, with the input's size, spacing, origin and
direction; :func:`usdespeckle.runtime.inference.despeckle_image` does all the work.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.infers.common import (
    RESULT_EXTENSIONS,
    bad_request,
    describe,
    get_choice,
    get_float,
    get_int,
    http_errors,
    read_request_image,
    run_timed,
    write_result,
)
from usdespeckle.runtime.inference import despeckle_image
from usdespeckle.runtime.options import (
    AXES,
    DEFAULT_AXIS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_METHOD,
    DEFAULT_PASSES,
    DEFAULT_STRENGTH,
    DEVICES,
    MAX_BATCH_SIZE,
    MAX_VOXELS,
    METHODS,
    MODEL_BACKENDS,
    PASSES,
)

logger = logging.getLogger(__name__)

#: The server's default runtime (``--conf backend``), overriding options.DEFAULT_BACKEND ("auto",
#: which would change with what is installed): TorchScript, which the training environment the app
#: runs in always has. A request may name either of ``options.MODEL_BACKENDS``.
SERVER_BACKEND = "torch"


class DespeckleInferTask(InferTask):
    """Despeckle a 2D image or 3D volume slice by slice; returns a float32 image.

    Request parameters (the ``params`` JSON of ``POST /infer/despeckle``), all optional:
    ``method`` (``"denoiser"`` or a classical filter name), ``axis`` (numpy axis of the
    ``(k, j, i)`` array to slice along, 0-2), ``strength`` (blend with the input, [0, 1]),
    ``batch_size`` (slices per model call, 1-256), ``backend`` (``"torch"`` or ``"onnx"``),
    ``device`` (``"cpu"`` or ``"cuda"``), ``passes`` (mirrorings of each slice the denoiser
    averages: 1, the default and the shipped setting, 2, 4 or 8, with either backend; time grows
    with passes), ``result_extension`` (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``). The choices are
    the library's (``usdespeckle.runtime.options``).

    Args:
        bundle_root: the MONAI bundle folder holding the denoiser; None uses the library's default
            (``$USDESPECKLE_BUNDLE`` or the repository's ``monai_bundle/``).
        device: default device, ``"cpu"`` or ``"cuda"``.
        backend: default backend, ``"torch"`` or ``"onnx"``.
        datastore_root: the datastore folder, whose images requests may name by id.
        max_voxels: largest number of values an input's header may declare.
    """

    def __init__(
        self,
        bundle_root: str | None = None,
        device: str = DEFAULT_DEVICE,
        backend: str = SERVER_BACKEND,
        datastore_root: str | None = None,
        max_voxels: int = MAX_VOXELS,
    ) -> None:
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description="Ultrasound despeckling (pix2pix denoiser); returns a float32 image with the input's geometry",
            config={
                "method": DEFAULT_METHOD,
                "axis": DEFAULT_AXIS,
                "strength": DEFAULT_STRENGTH,
                "batch_size": DEFAULT_BATCH_SIZE,
                "backend": backend,
                "device": device,
                "passes": DEFAULT_PASSES,
                "result_extension": ".nii.gz",
            },
        )
        self.bundle_root = bundle_root
        self.datastore_root = datastore_root
        self.max_voxels = max_voxels

    def is_valid(self) -> bool:
        """Always listed; a request without weights on the server gets HTTP 503 with the reason."""
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run the task on ``request["image"]`` (a file path) and write the result.

        Returns:
            The result file's path and a JSON-serialisable dict (parameters used, output geometry
            and range, seconds).

        Raises:
            HTTPException: 400 for a bad image or parameter, 503 when the denoiser's weights are
                missing on the server.
        """
        params = copy.deepcopy(self._config)
        params.update(request)
        method = get_choice(params, "method", DEFAULT_METHOD, METHODS)
        axis = get_int(params, "axis", DEFAULT_AXIS, min(AXES), max(AXES))
        strength = get_float(params, "strength", DEFAULT_STRENGTH, 0.0, 1.0)
        batch_size = get_int(params, "batch_size", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE)
        backend = get_choice(params, "backend", self._config["backend"], MODEL_BACKENDS)
        device = get_choice(params, "device", self._config["device"], DEVICES)
        passes = get_int(params, "passes", DEFAULT_PASSES, min(PASSES), max(PASSES))
        if passes not in PASSES:
            raise bad_request(
                f"parameter 'passes' must be one of {', '.join(map(str, PASSES))}, got {passes}"
            )
        extension = get_choice(params, "result_extension", ".nii.gz", RESULT_EXTENSIONS)

        image = read_request_image(
            request, "despeckle", datastore_root=self.datastore_root, max_voxels=self.max_voxels
        )
        with http_errors("despeckle"):
            result, seconds = run_timed(
                lambda: despeckle_image(
                    image,
                    method,
                    axis=axis,
                    batch_size=batch_size,
                    strength=strength,
                    device=device,
                    backend=backend,
                    bundle_root=self.bundle_root,
                    passes=passes,
                )
            )
        path = write_result(result, extension)
        logger.info("despeckle: %s -> %s in %.2f s", image.GetSize(), path, seconds)
        return path, {
            "task": "despeckle",
            "method": method,
            "axis": axis,
            "strength": strength,
            "batch_size": batch_size,
            "backend": backend,
            "device": device,
            "passes": passes,
            "seconds": round(seconds, 3),
            "output": describe(result),
        }
