"""Self-ensemble: average a 2D image-to-image network over the mirrorings of its input.

:class:`SelfEnsemble` wraps any network that maps ``(B, C, H, W)`` to ``(B, C', H, W)`` and, in eval
mode, averages its output over up to 8 mirrorings of each image (flips and transposes, each undone on
its output). It is the shipped denoiser's network definition in the bundle's ``inference.json``, so
MONAI's standard ``ckpt_export`` / ``onnx_export`` of ``network_def`` write the same ``model.ts`` /
``model.onnx`` as ``training/export_bundle.py`` (one pass since 1.0.0: ``mirrorings`` 1).

The ensemble has no parameters of its own and its state dict *is* the wrapped network's: a
``model.pt`` saved from the plain generator during training loads into it unchanged (MONAI's
``CheckpointLoader``, ``ckpt_export``), and ``state_dict()`` writes the plain generator's keys.

The library runs the same average in numpy over the one-pass export
(:func:`usdespeckle.runtime.denoiser.mirror` / :func:`~usdespeckle.runtime.denoiser.unmirror`, its ``passes``):
ONNX Runtime runs there without torch (as in 3D Slicer), and the uncertainty needs each
mirroring's output. Both loops read the one table :data:`usdespeckle.runtime.options.MIRRORINGS`, and a test
checks that they agree for every number of passes; this one stays a torch module because the
exporters script or trace it into a model file.

References:
    Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution" (EDSR,
    "geometric self-ensemble"), CVPRW 2017, doi:10.1109/CVPRW.2017.151.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from usdespeckle.runtime.options import MIRRORINGS, PASSES

__all__ = ["SelfEnsemble"]


class SelfEnsemble(nn.Module):
    """Average ``network`` over ``mirrorings`` mirrorings of each 2D input, in eval mode.

    The mirrorings, in order (:data:`usdespeckle.runtime.options.MIRRORINGS`): identity, left-right flip,
    up-down flip, both flips, then the same four of the transposed image (the 8 symmetries of a
    square); the first ``n`` of them are the ``n``-pass setting. MONAI's ``TestTimeAugmentation``
    draws random transforms to estimate uncertainty; this fixed, exactly invertible average is
    written here (a few lines, no library offers it as a module).

    In training mode the network runs once. Time grows linearly with the number of mirrorings.

    Args:
        network: a 2D network, ``(B, C, H, W)`` in, ``(B, C', H, W)`` out (square inputs are not
            required: transposed passes see ``(W, H)`` images, which a fully convolutional network
            accepts when both sides meet its size rule).
        mirrorings: how many mirrorings to average, one of :data:`usdespeckle.runtime.options.PASSES` (8:
            all; 1: the plain network).

    Raises:
        ValueError: ``mirrorings`` is not 1, 2, 4 or 8.
    """

    def __init__(self, network: nn.Module, mirrorings: int = 8) -> None:
        super().__init__()
        if mirrorings not in PASSES:
            raise ValueError(
                f"mirrorings must be 1 (the plain network), 2 (+ left-right), 4 (+ up-down) or 8 "
                f"(+ transposed), got {mirrorings!r}"
            )
        self.network = network
        # TorchScript needs typed, non-empty lists: [0] marks "no flip" (list[tuple[bool, list[int]]])
        self.mirrorings = [(transpose, list(flips) or [0]) for transpose, flips in MIRRORINGS[:mirrorings]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on ``x`` (B, C, H, W); in eval mode average over the mirrorings."""
        if self.training or len(self.mirrorings) == 1:
            return self.network(x)
        total = self.network(x)  # the first mirroring is the identity
        for transpose, dims in self.mirrorings[1:]:
            y = x.transpose(-2, -1) if transpose else x
            y = y if dims[0] == 0 else torch.flip(y, dims)
            y = self.network(y)
            y = y if dims[0] == 0 else torch.flip(y, dims)
            total = total + (y.transpose(-2, -1) if transpose else y)
        return total / float(len(self.mirrorings))

    # The ensemble's state is its network's: checkpoints of the plain network load unchanged.
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The wrapped network's state dict (its keys, without a ``network.`` prefix)."""
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load a state dict of the wrapped network (as saved during training) into it."""
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)
