"""SlicerDespeckle's MONAI Label app: ultrasound despeckling and MRI-to-ultrasound simulation.

Start it (no download at start; see README.md beside this file)::

    .venv-monailabel/bin/monailabel start_server --app monailabel_app --studies STUDIES \\
        --host 127.0.0.1 --port 8000 --conf sam2 false

``--conf`` options (all optional):

- ``bundle``: MONAI bundle folder with the denoiser (default ``$USDESPECKLE_BUNDLE`` or the
  repository's ``monai_bundle/``).
- ``device``: ``cpu`` (default) or ``cuda``; ``backend``: ``torch`` (default) or ``onnx``.
- ``simulator``: the simulator's weights file (default ``<bundle>/models/simulator.ts`` or
  ``simulator.pt``); ``simulator_args``: JSON keyword arguments of ``Pix2PixUNetGenerator`` for a
  state-dict file.
- ``threads``: torch CPU threads (default: torch's choice).
- ``sam2``: accepted and ignored; this app never adds MONAI Label's SAM2 task (which would download
  weights).
"""

from __future__ import annotations

import logging
import os

import monailabel
from lib.infers import DespeckleInferTask, SimulateInferTask
from lib.infers.simulate import parse_network_args
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

import usdespeckle

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
        if self.bundle_root:
            # the simulator's default location follows the bundle too
            os.environ["USDESPECKLE_BUNDLE"] = os.path.abspath(self.bundle_root)
        self.device = conf.get("device", "cpu")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--conf device must be cpu or cuda, got {self.device!r}")
        self.backend = conf.get("backend", "torch")
        if self.backend not in ("torch", "onnx"):
            raise ValueError(f"--conf backend must be torch or onnx, got {self.backend!r}")
        self.simulator = conf.get("simulator") or None
        self.simulator_args = parse_network_args(conf.get("simulator_args"))
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
        return {
            "despeckle": DespeckleInferTask(
                bundle_root=self.bundle_root, device=self.device, backend=self.backend
            ),
            "simulate": SimulateInferTask(
                simulator=self.simulator, network_args=self.simulator_args, device=self.device
            ),
        }
