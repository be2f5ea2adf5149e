"""Tiny bundles for the tests: one place that writes a bundle folder the way the library reads it.

A bundle here is what ``usdespeckle.runtime.inference.load_denoiser`` needs: ``models/model.ts``
(TorchScript), optionally ``models/model.onnx`` and ``models/simulator.ts``, and
``configs/metadata.json`` with the spatial divisor and the sha256 of every model file.

- :func:`make_bundle`: any module as the denoiser; by default :class:`SquareDenoiser`, whose answer
  (x**2) is known, with or without an ONNX export, for any divisor;
- :func:`make_server_bundle`: seeded :class:`TinyGenerator` denoiser and simulator, for the MONAI Label
  server;
- :func:`make_exported_bundle`: the shipped configs with a tiny real generator, exported by
  ``training/export_bundle.py`` as a real bundle is;
- :func:`make_broken_bundle`: a bundle broken in one named way (NaN or corrupt weights, bad metadata).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from usdespeckle.runtime.bundle_utils import sha256_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "monai_bundle" / "configs"
#: Model input sides must be multiples of this (like the real generators' ``2**num_downs``).
DIVISOR = 16


class SquareDenoiser(nn.Module):
    """A stand-in denoiser with a known answer (x**2) that insists on the bundle's divisor."""

    def __init__(self, divisor: int = DIVISOR) -> None:
        super().__init__()
        self.divisor = divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] % self.divisor != 0 or x.shape[3] % self.divisor != 0:
            raise RuntimeError("input size is not a multiple of the divisor")
        return torch.clamp(x * x, 0.0, 1.0)


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


class NaNModel(nn.Module):
    """A denoiser with NaN weights: every output is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float("nan")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def write_metadata(root: Path, files: list[str], divisor: int = DIVISOR) -> None:
    """Write ``configs/metadata.json``: the divisor and the sha256 of ``files`` (relative to root)."""
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
                    "spatial_shape": [f"{divisor}*n", f"{divisor}*n"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
            "outputs": {
                "pred": {"type": "image", "num_channels": 1, "dtype": "float32", "value_range": [0, 1]}
            },
        },
        "weights_sha256": {f: sha256_file(root / f) for f in files},
    }
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))


def record_sha256(root: Path, rel: str, digest: str | None) -> None:
    """Make ``root``'s metadata.json record ``digest`` as the sha256 of ``rel`` (None: record none)."""
    meta_path = root / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"].pop(rel, None)
    if digest is not None:
        meta["weights_sha256"][rel] = digest
    meta_path.write_text(json.dumps(meta))


def make_bundle(
    root: Path,
    *,
    model: nn.Module | None = None,
    onnx: bool = False,
    divisor: int = DIVISOR,
    simulator: nn.Module | None = None,
) -> Path:
    """Write a tiny bundle in ``root`` (created with its parents).

    Args:
        root: the bundle folder.
        model: the denoiser, scripted to ``models/model.ts``; default :class:`SquareDenoiser`.
        onnx: also export it to ``models/model.onnx`` (dynamic batch, height and width).
        divisor: the spatial divisor recorded in the metadata (and the default model's).
        simulator: also script this module to ``models/simulator.ts``.

    Returns:
        ``root``.
    """
    root = Path(root)
    (root / "models").mkdir(parents=True, exist_ok=True)
    model = SquareDenoiser(divisor) if model is None else model
    files = {"models/model.ts": model}
    if simulator is not None:
        files["models/simulator.ts"] = simulator
    with warnings.catch_warnings():  # TorchScript is what the bundle ships (MONAI's ckpt_export)
        warnings.simplefilter("ignore", DeprecationWarning)
        for rel, module in files.items():
            torch.jit.script(module.eval()).save(str(root / rel))
    if onnx:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.rand(1, 1, 2 * divisor, 2 * divisor),),
                str(root / "models" / "model.onnx"),
                input_names=["image"],
                output_names=["pred"],
                dynamic_axes={"image": {0: "batch", 2: "h", 3: "w"}, "pred": {0: "batch", 2: "h", 3: "w"}},
                dynamo=False,
            )
    write_metadata(root, [*files, *(["models/model.onnx"] if onnx else [])], divisor)
    return root


def make_server_bundle(root: Path, seed: int = 0) -> Path:
    """A bundle with a seeded :class:`TinyGenerator` denoiser and simulator (``seed + 1``)."""
    return make_bundle(root, model=TinyGenerator(seed), simulator=TinyGenerator(seed + 1))


def make_exported_bundle(
    root: Path, ngf: int = 4, num_downs: int = 4, seed: int = 0
) -> tuple[Path, nn.Module]:
    """The shipped configs, a tiny seeded generator's ``model.pt`` and its exports.

    train.json gets the tiny network options; training/export_bundle.py copies them into
    inference.json and metadata.json, exports model.ts and model.onnx and records the checksums, as
    for a real bundle. Returns the folder and the generator (in eval mode).
    """
    from usdespeckle.gan.networks import Pix2PixUNetGenerator

    shutil.copytree(CONFIGS, root / "configs")
    train = json.loads((CONFIGS / "train.json").read_text())
    train.update(ngf=ngf, num_downs=num_downs)
    (root / "configs" / "train.json").write_text(json.dumps(train, indent=4) + "\n")
    torch.manual_seed(seed)
    generator = Pix2PixUNetGenerator(
        ngf=ngf, num_downs=num_downs, norm=train["norm"], upsample=train["upsample"]
    ).eval()
    (root / "models").mkdir()
    torch.save(generator.state_dict(), root / "models" / "model.pt")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, str(REPO / "training" / "export_bundle.py"), "--bundle_root", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shipped_ngf = json.loads((CONFIGS / "inference.json").read_text())["ngf"]
    if ngf != shipped_ngf:  # the sync reports what it changed
        assert f"inference.json: ngf: {shipped_ngf} -> {ngf}" in done.stdout, done.stdout
    return root, generator


#: The ways :func:`make_broken_bundle` breaks a bundle.
BROKEN_KINDS = (
    "nan_weights",
    "corrupt_model_checksum_updated",
    "weights_sha256_list",
    "weights_sha256_string",
    "spatial_shape_number",
    "spatial_shape_zero",
    "metadata_list",
    "metadata_not_json",
)


def make_broken_bundle(root: Path, kind: str) -> Path:
    """A :class:`SquareDenoiser` bundle broken in one way, one of :data:`BROKEN_KINDS`."""
    if kind not in BROKEN_KINDS:
        raise ValueError(f"kind {kind!r} is not one of {BROKEN_KINDS}")
    if kind == "nan_weights":
        return make_bundle(root, model=NaNModel())
    root = make_bundle(root)
    meta_path = root / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    if kind == "corrupt_model_checksum_updated":
        (root / "models" / "model.ts").write_bytes(b"PK\x03\x04 not a TorchScript archive" * 20)
        write_metadata(root, ["models/model.ts"])
        return root
    if kind == "metadata_not_json":
        meta_path.write_text("{not json")
        return root
    if kind == "weights_sha256_list":
        meta["weights_sha256"] = ["models/model.ts"]
    elif kind == "weights_sha256_string":
        meta["weights_sha256"] = "abc"
    elif kind == "spatial_shape_number":
        meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = 16
    elif kind == "spatial_shape_zero":
        meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = ["0*n", "0*n"]
    elif kind == "metadata_list":
        meta = [meta]
    meta_path.write_text(json.dumps(meta))
    return root
