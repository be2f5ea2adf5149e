"""Train the denoiser on endless on-the-fly pairs (L1), resumable, on a CPU budget.

    python training/train_denoiser.py --name basicunet_small --network basicunet_small --cpu-minutes 60

A run lives in ``runs/denoiser2/<name>/`` (ignored by git); starting again with the same name resumes
it. The loop, its checkpoint and log are :func:`usdespeckle.gan.denoiser_training.train`'s; the same
training runs from the bundle: ``python -m monai.bundle run training --bundle_root monai_bundle
--config_file monai_bundle/configs/train_denoiser.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from usdespeckle.gan.denoiser_training import TrainSettings, train
from usdespeckle.gan.networks import Pix2PixUNetGenerator, ResidualUNetDenoiser

#: The generators of the equal-budget ablation (reports/ablation_denoiser2.md).
NETWORKS = {
    "basicunet": lambda: ResidualUNetDenoiser(features=(32, 32, 64, 128, 256, 32)),
    "basicunet_small": lambda: ResidualUNetDenoiser(features=(16, 32, 64, 128, 256, 16)),
    "pix2pix32": lambda: Pix2PixUNetGenerator(
        num_downs=7, ngf=32, norm="batch", dropout=0.0, upsample="resize"
    ),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="run name: RUNS/NAME")
    parser.add_argument("--network", choices=sorted(NETWORKS), required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs/denoiser2"))
    parser.add_argument(
        "--cpu-minutes", type=float, required=True, help="stop after this much CPU time in all"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--decay-from", type=float, default=None, help="cosine-decay the lr from this CPU minute"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--validate-minutes", type=float, default=10.0, help="CPU minutes between validations"
    )
    parser.add_argument(
        "--checkpoint-minutes", type=float, default=3.0, help="wall minutes between checkpoints"
    )
    parser.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's network")
    args = parser.parse_args(argv)
    settings = TrainSettings(
        run_dir=str(args.runs / args.name),
        cpu_minutes=args.cpu_minutes,
        batch=args.batch,
        crop=args.crop,
        lr=args.lr,
        decay_from=args.decay_from,
        threads=args.threads,
        seed=args.seed,
        validate_minutes=args.validate_minutes,
        checkpoint_minutes=args.checkpoint_minutes,
        init_from=None if args.init_from is None else str(args.init_from),
    )
    train(NETWORKS[args.network](), settings)


if __name__ == "__main__":
    main()
