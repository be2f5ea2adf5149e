"""Recipe stage 5: export the trained denoiser to TorchScript and ONNX and record every checksum.

python training/export_bundle.py --bundle_root monai_bundle

The exported models average the generator over train.json's ``export_test_time_flips`` mirrorings
of each slice (self-ensemble; training and validation run one pass), so stock MONAI tools running
inference.json get the same output as this project's library.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monai.bundle import ckpt_export, onnx_export

from usdespeckle.bundle_utils import update_checksums, verify_checksums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle_root", type=Path, default=Path("monai_bundle"))
    args = ap.parse_args()
    root = args.bundle_root
    train_config = json.loads((root / "configs" / "train.json").read_text())
    common = {
        "net_id": "network_def",
        "ckpt_file": str(root / "models" / "model.pt"),
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": str(root / "configs" / "train.json"),
        "bundle_root": str(root),
        "test_time_flips": int(train_config.get("export_test_time_flips", 1)),
    }
    ckpt_export(filepath=str(root / "models" / "model.ts"), **common)
    # Traced with dynamic batch, height and width, so ONNX Runtime runs any slice size the
    # generator accepts (multiples of 2**num_downs); the exporter's default fixes the example shape.
    axes = {0: "batch", 2: "height", 3: "width"}
    onnx_export(
        filepath=str(root / "models" / "model.onnx"),
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
    for name, digest in update_checksums(root).items():
        print(f"{digest or 'absent':64s}  {name}")
    verify_checksums(root, require_all=True)


if __name__ == "__main__":
    main()
