"""A loaded denoiser: one call runs the exported network on a batch, averaged over mirrorings.

:class:`Denoiser` holds a one-pass export of the bundle's denoiser, run by TorchScript (torch) or
ONNX Runtime (no torch: as inside 3D Slicer), and averages it over the first ``passes`` mirrorings
of each slice (:data:`usdespeckle.runtime.options.MIRRORINGS`, each undone on its output: a self-ensemble).
:func:`usdespeckle.runtime.inference.load_denoiser` checks and loads it from the bundle.

The self-ensemble is written twice over the one table, on purpose: here in numpy (:func:`mirror` /
:func:`unmirror`), because ONNX Runtime runs without torch and the uncertainty needs each
mirroring's output; and in torch as :class:`usdespeckle.gan.ensemble.SelfEnsemble`, the bundle's network
definition, so MONAI's ``ckpt_export`` / ``onnx_export`` can write an ensemble into a model file.
A test checks that both give the same result for every number of passes.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from usdespeckle.runtime.options import MIRRORINGS

__all__ = ["Denoiser", "mirror", "onnx_threads", "unmirror"]


def mirror(batch: np.ndarray, index: int) -> np.ndarray:
    """Mirroring ``index`` of the table of ``(..., H, W)`` arrays: transpose first if asked, then flip.

    Returns a view; :func:`unmirror` undoes it.
    """
    transpose, flips = MIRRORINGS[index]
    out = batch.swapaxes(-2, -1) if transpose else batch
    return np.flip(out, flips) if flips else out


def unmirror(batch: np.ndarray, index: int) -> np.ndarray:
    """Undo :func:`mirror` ``index`` on ``(..., W, H)`` or ``(..., H, W)`` arrays (flip, then transpose back)."""
    transpose, flips = MIRRORINGS[index]
    out = np.flip(batch, flips) if flips else batch
    return out.swapaxes(-2, -1) if transpose else out


@dataclass
class Denoiser:
    """A loaded denoiser: call it on ``(B, 1, H, W)`` float32 in [0, 1], H and W multiples of ``divisor``.

    Attributes:
        path: the model file.
        backend: ``"torch"`` (TorchScript) or ``"onnx"`` (ONNX Runtime).
        device: ``"cpu"`` or ``"cuda"``.
        divisor: H and W must be multiples of this, pixels.
        model: the ``torch.jit.ScriptModule`` or ``onnxruntime.InferenceSession`` (one pass).
        passes: mirrorings of each slice averaged per call, one of :data:`usdespeckle.runtime.options.PASSES`.
    """

    path: Path
    backend: str
    device: str
    divisor: int
    model: Any = field(repr=False)
    passes: int = 1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run the model, averaged over ``passes`` mirrorings.

        Args:
            batch: float32 ``(B, 1, H, W)`` in [0, 1].

        Returns:
            float32 ``(B, 1, H, W)`` in [0, 1].
        """
        outputs = self.mirrored(batch, self.passes)
        return outputs[0] if len(outputs) == 1 else np.mean(outputs, axis=0, dtype=np.float32)

    def mirrored(self, batch: np.ndarray, passes: int) -> list[np.ndarray]:
        """The model's outputs for the first ``passes`` mirrorings of the batch, each undone.

        Args:
            batch: float32 ``(B, 1, H, W)`` in [0, 1]; H and W multiples of ``divisor``.
            passes: one of :data:`usdespeckle.runtime.options.PASSES`.

        Returns:
            ``passes`` float32 arrays ``(B, 1, H, W)`` in [0, 1], aligned with the input.
        """
        return [unmirror(self._run(mirror(batch, i)), i) for i in range(passes)]  # views; callers reduce them

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One network pass: float32 ``(B, 1, H, W)`` in [0, 1] in, clipped to [0, 1] out."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.backend == "onnx":
            inp = self.model.get_inputs()[0]
            fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
            step = fixed or len(batch)
            parts = [
                self.model.run(None, {inp.name: batch[i : i + step]})[0] for i in range(0, len(batch), step)
            ]
            out = np.concatenate(parts, axis=0)
        else:
            import torch

            with torch.inference_mode():
                out = self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
        return np.clip(out, 0.0, 1.0, out=out)


def onnx_threads() -> int:
    """Threads for ONNX Runtime: torch's setting when torch is already loaded, else ``OMP_NUM_THREADS``.

    0 lets ONNX Runtime choose. torch is never imported here: the ONNX path runs with numpy,
    SimpleITK and onnxruntime alone (as inside 3D Slicer).
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0
