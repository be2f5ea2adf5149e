"""``usdespeckle prepare-data OUT_DIR``: build the training/validation/test images and datalists."""

from __future__ import annotations

import argparse
import time

from usdespeckle.runtime.errors import UserError

HELP = "Build training, validation and test data (MRI slices, photographs, simulated B-mode) offline."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments to ``parser``."""
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of all random choices (default 0)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--mri-step", type=int, default=1, help="keep every N-th template slice (default 1)")
    parser.add_argument("--mri-views", type=int, default=4, help="images per kept MRI slice (default 4)")
    parser.add_argument("--natural-crops", type=int, default=80, help="crops per photograph (default 80)")
    parser.add_argument(
        "--simulator-count", type=int, default=1500, help="simulated B-mode images in all (default 1500)"
    )
    parser.add_argument(
        "--no-real-bmode",
        action="store_true",
        help="leave out the real B-mode frames of the pydicom-data scans (datalist_real_bmode.json)",
    )
    parser.add_argument("--force", action="store_true", help="replace a different dataset in OUT_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _command_line(args: argparse.Namespace) -> list[str]:
    """The full command that reproduces this dataset (every content setting spelled out)."""
    return [
        "usdespeckle",
        "prepare-data",
        str(args.out_dir),
        f"--seed={args.seed}",
        f"--size={args.size}",
        f"--mri-step={args.mri_step}",
        f"--mri-views={args.mri_views}",
        f"--natural-crops={args.natural_crops}",
        f"--simulator-count={args.simulator_count}",
        *(["--no-real-bmode"] if args.no_real_bmode else []),
    ]


def main(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status."""
    from usdespeckle.data.dataset import PrepareSettings, prepare_dataset

    settings = PrepareSettings(
        seed=args.seed,
        size=args.size,
        mri_step=args.mri_step,
        mri_views=args.mri_views,
        natural_crops=args.natural_crops,
        simulator_count=args.simulator_count,
        real_bmode=not args.no_real_bmode,
    )
    try:
        settings.validate()
    except ValueError as err:
        raise UserError(str(err)) from err
    bmode_maker = None
    if settings.simulator_count > 0:
        from usdespeckle.simulation.physics import FastBModeSimulator

        try:
            simulator = FastBModeSimulator(probe="L11-5v", shape=(settings.size, settings.size))
        except ImportError as err:  # pymust, of the optional [data] extra, computes the probe's PSF
            raise UserError(
                f"the B-mode simulator needs pymust ({err}): pip install 'usdespeckle[data]', or use "
                "--simulator-count 0 to skip simulated images."
            ) from None
        bmode_maker = simulator.simulate
    start = time.perf_counter()
    try:
        manifest, written = prepare_dataset(
            args.out_dir,
            settings,
            bmode_maker=bmode_maker,
            force=args.force,
            command=_command_line(args),
            progress=not args.quiet,
        )
    except (ValueError, FileNotFoundError) as err:
        raise UserError(str(err)) from err
    if not written:
        print(
            f"{args.out_dir} already holds this dataset (same settings, checksums verified); nothing to do."
        )
        return 0
    counts = ", ".join(
        f"{name} " + "/".join(str(n) for n in split_counts.values())
        for name, split_counts in manifest["counts"].items()
    )
    print(
        f"wrote {len(manifest['files'])} images to {args.out_dir} in {time.perf_counter() - start:.0f} s "
        f"(training/validation/test: {counts})"
    )
    return 0
