"""Recipe stage 3: render every MRI slice through the trained simulator (the denoiser's MRI pairs).

python training/make_mri_pairs.py --data data --bundle_root monai_bundle
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from usdespeckle.gan.pairs import make_mri_pairs
from usdespeckle.gan.simulator import load_simulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="folder made by usdespeckle prepare-data")
    ap.add_argument("--bundle_root", type=Path, default=Path("monai_bundle"))
    ap.add_argument("--batch_size", type=int, default=16)
    args = ap.parse_args()
    bar = tqdm(desc="MRI pairs", unit="slice")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    written = make_mri_pairs(
        args.data, load_simulator(args.bundle_root), batch_size=args.batch_size, progress=progress
    )
    bar.close()
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
