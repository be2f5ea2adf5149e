"""Tiny stand-in models for testing the MONAI Label app without trained weights.

``make_tiny_bundle(root)`` writes a bundle folder the way ``usdespeckle.inference.load_denoiser``
reads it: ``configs/metadata.json`` (with ``weights_sha256`` and the spatial divisor) and
``models/model.ts`` (TorchScript), plus a TorchScript simulator ``models/simulator.ts``. The
networks are small seeded convolution stacks mapping ``(B, 1, H, W)`` in [0, 1] to the same.

Run as a script to build one: ``python tests/monailabel/tiny_bundle.py OUT_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

#: Model input sides must be multiples of this (like the real generators' ``2**num_downs``).
DIVISOR = 16


class TinyGenerator(nn.Module):
    """Two 3x3 convolutions and a sigmoid: ``(B, 1, H, W)`` in [0, 1] to the same.

    Args:
        seed: seeds the weights, so two builds are identical.
        divisor: kept as the ``divisor`` attribute, like ``Pix2PixUNetGenerator``'s.
    """

    def __init__(self, seed: int, divisor: int = DIVISOR) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.divisor = divisor
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv2(torch.relu(self.conv1(x * 2.0 - 1.0))) + 3.0 * (x - 0.5))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tiny_bundle(root: str | Path, seed: int = 0) -> Path:
    """Write a tiny bundle (denoiser ``models/model.ts`` and simulator ``models/simulator.ts``).

    Args:
        root: the bundle folder to create (parents too).
        seed: weight seed of the denoiser; the simulator uses ``seed + 1``.

    Returns:
        The bundle folder.
    """
    root = Path(root)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is what the bundle ships (MONAI's ckpt_export)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(TinyGenerator(seed).eval()).save(str(root / "models" / "model.ts"))
        torch.jit.script(TinyGenerator(seed + 1).eval()).save(str(root / "models" / "simulator.ts"))
    metadata = {
        "version": "0.0.1",
        "changelog": {"0.0.1": "tiny test model"},
        "name": "tiny test bundle",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": 1,
                    "spatial_shape": [f"{DIVISOR}*n", f"{DIVISOR}*n"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
            "outputs": {
                "pred": {"type": "image", "num_channels": 1, "dtype": "float32", "value_range": [0, 1]}
            },
        },
        "weights_sha256": {
            "models/model.ts": _sha256(root / "models" / "model.ts"),
            "models/simulator.ts": _sha256(root / "models" / "simulator.ts"),
        },
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/monailabel/tiny_bundle.py OUT_DIR")
    print(make_tiny_bundle(sys.argv[1]))
