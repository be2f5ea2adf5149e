"""SlicerDespeckle's MONAI Label app: ultrasound despeckling and MRI-to-ultrasound simulation.

Start it (no download at start; see README.md beside this file)::

    .venv-monailabel/bin/monailabel start_server --app monailabel_app --studies STUDIES \\
        --host 127.0.0.1 --port 8000 --conf sam2 false

``--conf`` options (all optional):

- ``bundle``: MONAI bundle folder with the denoiser (default ``$USDESPECKLE_BUNDLE`` or the
  repository's ``monai_bundle/``).
- ``device``: ``cpu`` (default) or ``cuda``; ``backend``: ``torch`` (default) or ``onnx``.
- ``simulator_bundle``: the bundle folder holding the simulator (``models/simulator.ts`` or
  ``simulator.pt``, sha256 checked against its metadata; default: ``bundle``).
- ``max_upload_mb``: largest upload, MB (default 1024); ``max_voxels``: largest number of values
  an image's header may declare (default ``usdespeckle.runtime.io.MAX_VOXELS``, 2**28).
- ``threads``: torch CPU threads (default: torch's choice).
- ``body_timeout_s``: seconds a request's body may take to arrive before the request is cut with
  HTTP 408 (default 300; a body that stalls 30 s is cut too).
- ``allow_origins``: comma-separated ``Origin`` values (web pages) allowed to call the server;
  default none: requests from browsers are refused.

The server answers only ``GET /info/`` and ``POST /infer/{despeckle,simulate}`` (plus MONAI
Label's ``/auth`` routes when its authentication is on): ``lib/guard.py`` removes every other stock
route at start-up (datastore, training, logs, sessions ...). docs/SECURITY.md has the details.
- ``sam2``: accepted and ignored; this app never adds MONAI Label's SAM2 task (which would download
  weights).
"""

from __future__ import annotations

import logging
import os

import monailabel
from lib import endpoint, guard
from lib.infers import DespeckleInferTask, SimulateInferTask
from lib.infers.despeckle import SERVER_BACKEND
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

import usdespeckle
from usdespeckle.runtime.options import DEFAULT_DEVICE, DEVICES, MAX_VOXELS, MODEL_BACKENDS

logger = logging.getLogger(__name__)


class DespeckleApp(MONAILabelApp):
    """Serves ``despeckle`` (denoiser, float32 result) and ``simulate`` (MRI -> synthetic B-mode).

    Args:
        app_dir: this folder.
        studies: the datastore folder (images that ``image=<id>`` requests refer to).
        conf: ``--conf`` key/value pairs (see the module docstring).

    Raises:
        ValueError: a ``--conf`` value is not usable (the server does not start).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.bundle_root = conf.get("bundle") or None
        self.device = conf.get("device", DEFAULT_DEVICE)
        if self.device not in DEVICES:
            raise ValueError(f"--conf device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        self.backend = conf.get("backend", SERVER_BACKEND)
        if self.backend not in MODEL_BACKENDS:
            raise ValueError(
                f"--conf backend must be one of {', '.join(MODEL_BACKENDS)}, got {self.backend!r}"
            )
        for removed in ("simulator", "simulator_args"):
            if conf.get(removed):
                raise ValueError(
                    f"--conf {removed} is not supported: the simulator is read from a bundle, with its "
                    "checksum; use --conf simulator_bundle <bundle folder>"
                )
        self.simulator_bundle = conf.get("simulator_bundle") or self.bundle_root
        self.max_upload_bytes = _positive_int(conf, "max_upload_mb", 1024) * 1024 * 1024
        self.max_voxels = _positive_int(conf, "max_voxels", MAX_VOXELS)
        self.body_timeout_s = _positive_int(conf, "body_timeout_s", 300)
        self.allow_origins = [o.strip() for o in conf.get("allow_origins", "").split(",") if o.strip()]
        threads = conf.get("threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SlicerDespeckle",
            description="Ultrasound despeckling with pix2pix GANs: despeckle (float image) and simulate",
            version=f"{usdespeckle.__version__} (MONAI Label {monailabel.__version__})",
        )

    def init_infers(self) -> dict[str, InferTask]:
        """The two tasks; nothing is loaded or downloaded until the first request."""
        datastore_root = os.path.realpath(self.studies) if os.path.isdir(self.studies) else None
        return {
            "despeckle": DespeckleInferTask(
                bundle_root=self.bundle_root,
                device=self.device,
                backend=self.backend,
                datastore_root=datastore_root,
                max_voxels=self.max_voxels,
            ),
            "simulate": SimulateInferTask(
                bundle_root=self.simulator_bundle,
                device=self.device,
                datastore_root=datastore_root,
                max_voxels=self.max_voxels,
            ),
        }

    def on_init_complete(self) -> None:
        """Once the server runs: swap in the app's checked ``/infer`` endpoint (``lib/endpoint.py``),
        drop every route not on the allow-list and guard the rest (``lib/guard.py``)."""
        super().on_init_complete()
        from monailabel.app import app  # the running FastAPI application
        from monailabel.config import settings

        endpoint.install(app, self.max_upload_bytes)
        guard.install(
            app,
            prefix=settings.MONAI_LABEL_API_STR,
            auth=bool(settings.MONAI_LABEL_AUTH_ENABLE),
            body_timeout_s=self.body_timeout_s,
            allow_origins=self.allow_origins,
        )


def _positive_int(conf: dict[str, str], key: str, default: int) -> int:
    text = conf.get(key)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--conf {key} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"--conf {key} must be a positive integer, got {value}")
    return value
