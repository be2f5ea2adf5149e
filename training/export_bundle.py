"""Recipe stage 5: export the trained denoiser to TorchScript and ONNX and record every checksum.

python training/export_bundle.py --bundle_root monai_bundle

The exports are MONAI's standard ``ckpt_export`` and ``onnx_export`` of ``inference.json``'s
``network_def``: the generator wrapped in :class:`usdespeckle.gan.ensemble.SelfEnsemble`, which averages
it over ``mirrorings`` flips and transposes of each slice (training and validation run one pass). The
same commands by hand (docs/README.md, *Commands*) therefore write the same files.

First the generator's arguments in ``inference.json`` are brought in line with ``train.json`` (the
keys its ``network_def`` refers to, e.g. ``ngf``, ``num_downs``, ``norm``; and ``mirrorings`` from
``export_mirrorings``), so a retrained network with other options exports without hand edits;
every change is printed.

``--half_weights`` first stores model.pt in half precision (half the size in git), after checking
that the exported network's output moves by at most 1e-3 (on [0, 1]) on probe images; the exports
stay float32.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser, ckpt_export, onnx_export

from usdespeckle.gan.simulator import SIMULATOR_CONFIGS
from usdespeckle.runtime.atomic import atomic_write
from usdespeckle.runtime.bundle_utils import update_checksums

#: Arguments of train.json's generator that inference.json does not copy (training-only settings).
TRAINING_ONLY_ARGUMENTS = ("_desc_",)


def generated_header(keys: list[str]) -> str:
    """inference.json's ``_desc_``: which of its keys this script writes, and from where.

    Args:
        keys: the top-level keys copied from train.json (besides ``network_def#network``).
    """
    return (
        "Hand-written, except network_def#network and "
        + ", ".join(keys)
        + ", which training/export_bundle.py copies from train.json (printing each change): "
        "edit those in train.json"
    )


def sync_network_definition(bundle_root: Path) -> list[str]:
    """Copy the generator's definition from train.json into inference.json's ``network_def#network``.

    metadata.json's ``spatial_shape`` follows (``2**num_downs`` times n), for the denoiser and for the
    simulator (whose ``num_downs`` is that of train.json stacked with train_simulator.json).

    The generator's arguments are copied as written in train.json (references such as ``"@ngf"``
    included), and so are the values of the top-level keys they refer to; ``mirrorings`` takes
    train.json's ``export_mirrorings``. inference.json's first key, ``_desc_``, says which keys are
    copied (:func:`generated_header`). inference.json is rewritten (4-space JSON, key order kept)
    only if something changed, and every change is returned.

    Args:
        bundle_root: the bundle folder (holding ``configs/train.json`` and ``configs/inference.json``).

    Returns:
        One line per change, e.g. ``"ngf: 16 -> 32"``; empty when everything already agrees.

    Raises:
        ValueError: train.json's network_def refers to a key that train.json does not define.
    """
    configs = bundle_root / "configs"
    train = json.loads((configs / "train.json").read_text(encoding="utf-8"))
    inference_path = configs / "inference.json"
    inference = json.loads(inference_path.read_text(encoding="utf-8"))
    generator = {k: v for k, v in train["network_def"].items() if k not in TRAINING_ONLY_ARGUMENTS}
    changes: list[str] = []
    current = inference["network_def"]["network"]
    wanted = {"_target_": generator["_target_"], **{k: v for k, v in current.items() if k == "_desc_"}}
    wanted.update({k: v for k, v in generator.items() if k != "_target_"})
    if current != wanted:
        changes.append(f"network_def#network: {json.dumps(current)} -> {json.dumps(wanted)}")
        inference["network_def"]["network"] = wanted
    referenced = sorted({m for v in generator.values() for m in re.findall(r"@(\w+)", json.dumps(v))})
    values: dict[str, Any] = {}
    for key in referenced:
        if key not in train:
            raise ValueError(f"train.json's network_def refers to @{key}, which train.json does not define")
        values[key] = train[key]
    values["mirrorings"] = int(train.get("export_mirrorings", 1))
    for key, value in values.items():
        if inference.get(key, object()) != value:
            changes.append(f"{key}: {json.dumps(inference.get(key))} -> {json.dumps(value)}")
            inference[key] = value
    header = generated_header(list(values))
    if inference.get("_desc_") != header:
        changes.append(f"_desc_: {json.dumps(inference.get('_desc_'))} -> {json.dumps(header)}")
        inference = {"_desc_": header, **{k: v for k, v in inference.items() if k != "_desc_"}}
    if changes:
        atomic_write(inference_path, json.dumps(inference, indent=4) + "\n")
    simulator = ConfigParser()
    simulator.read_config([str(bundle_root / rel) for rel in SIMULATOR_CONFIGS])
    divisors = {
        "network_data_format": 2 ** int(inference["num_downs"]),
        "simulator_data_format": 2 ** int(simulator.get_parsed_content("num_downs")),
    }
    changes += _sync_spatial_shape(configs / "metadata.json", divisors)
    return changes


def _sync_spatial_shape(meta_path: Path, divisors: dict[str, int]) -> list[str]:
    """Set metadata.json's input and output ``spatial_shape`` to ``["<divisor>*n", "<divisor>*n"]``.

    Args:
        meta_path: the bundle's ``configs/metadata.json``.
        divisors: ``{data format key: divisor}``, e.g. ``{"network_data_format": 128}``; formats
            absent from the metadata are skipped.
    """
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    changes: list[str] = []
    for name, divisor in divisors.items():
        formats = meta.get(name)
        if formats is None:
            continue
        wanted = [f"{divisor}*n", f"{divisor}*n"]
        for group, key in (("inputs", "image"), ("outputs", "pred")):
            if formats[group][key]["spatial_shape"] != wanted:
                changes.append(
                    f"metadata {name}#{group}#{key}#spatial_shape: "
                    f"{formats[group][key]['spatial_shape']} -> {wanted}"
                )
                formats[group][key]["spatial_shape"] = wanted
    if changes:
        atomic_write(meta_path, json.dumps(meta, indent=4) + "\n")
    return changes


def halve_weights(bundle_root: Path, tolerance: float = 1e-3, seed: int = 0) -> float:
    """Store ``models/model.pt`` in float16 if the network's output stays within ``tolerance``.

    The network is inference.json's ``network_def`` (the ensemble as exported). Probe images: four
    256x256 speckle-like images (Gamma-distributed, 1 look, on smooth random backgrounds), seeded.

    Args:
        bundle_root: the bundle folder.
        tolerance: largest allowed change of any output pixel, on the [0, 1] scale.
        seed: seed of the probe images.

    Returns:
        The largest output change measured.

    Raises:
        ValueError: the change exceeds ``tolerance`` (model.pt is then left as it is).
    """
    path = bundle_root / "models" / "model.pt"
    state = torch.load(path, weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.json"))
    rng = np.random.default_rng(seed)
    background = rng.uniform(0.1, 0.9, (4, 1, 8, 8))
    smooth = np.kron(background, np.ones((32, 32)))  # 256x256 piecewise-constant echogenicity
    probes = torch.from_numpy(np.clip(smooth * rng.gamma(1.0, 1.0, smooth.shape), 0, 1).astype(np.float32))
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    outputs = []
    for weights in (state, half):
        network = parser.get_parsed_content("network_def", instantiate=True, lazy=False).eval()
        network.load_state_dict(weights)
        with torch.no_grad():
            outputs.append(network(probes))
    change = float((outputs[0] - outputs[1]).abs().max())
    if change > tolerance:
        raise ValueError(
            f"half-precision weights change the output by up to {change:.2g} (> {tolerance}); "
            "keep model.pt in float32"
        )
    atomic_write(path, lambda f: torch.save(half, f))
    return change


def export(bundle_root: Path, half_weights: bool = False) -> None:
    """Sync inference.json, export models/model.ts and models/model.onnx, record all checksums.

    Args:
        bundle_root: the bundle folder.
        half_weights: first store model.pt in float16 (see :func:`halve_weights`).
    """
    for change in sync_network_definition(bundle_root):
        print(f"inference.json: {change}")
    if half_weights:
        print(f"model.pt stored in float16; largest output change {halve_weights(bundle_root):.2g}")
    common = {
        "net_id": "network_def",
        "ckpt_file": str(bundle_root / "models" / "model.pt"),
        "meta_file": str(bundle_root / "configs" / "metadata.json"),
        "config_file": str(bundle_root / "configs" / "inference.json"),
        "bundle_root": str(bundle_root),
    }
    ckpt_export(filepath=str(bundle_root / "models" / "model.ts"), **common)
    # Traced with dynamic batch, height and width, so ONNX Runtime runs any slice size the
    # generator accepts (multiples of 2**num_downs); the exporter's default fixes the example shape.
    axes = {0: "batch", 2: "height", 3: "width"}
    onnx_export(
        filepath=str(bundle_root / "models" / "model.onnx"),
        input_shape=[1, 1, 256, 256],
        use_trace=True,
        converter_kwargs={
            "input_names": ["image"],
            "output_names": ["pred"],
            "dynamic_axes": {"image": axes, "pred": axes},
            "dynamo": False,
        },
        **common,
    )
    for name, digest in update_checksums(bundle_root).items():
        print(f"{digest or 'absent':64s}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle_root", type=Path, default=Path("monai_bundle"))
    ap.add_argument(
        "--half_weights", action="store_true", help="store model.pt in float16 if outputs move by <= 1e-3"
    )
    args = ap.parse_args()
    export(args.bundle_root, half_weights=args.half_weights)


if __name__ == "__main__":
    main()
