"""``usdespeckle benchmark``: every method on every test set; writes ``OUT/benchmark.md`` and figures."""

from __future__ import annotations

import argparse

from usdespeckle.runtime.errors import UserError
from usdespeckle.runtime.options import CLASSICAL_METHODS

HELP = "Benchmark despeckling methods (quality per test set, ms per 256x256 slice); writes a Markdown report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the command's options to ``parser``."""
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        metavar="NAME",
        help=f"methods to run (classical filters: {', '.join(CLASSICAL_METHODS)}; 'denoiser' when its "
        "weights are shipped) or 'all' (default); the speckled input is always the baseline row",
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        default=["all"],
        metavar="NAME",
        help="test sets (rayleigh_mild, rayleigh_strong, gamma_looks_1, gamma_looks_4, correlated, mri_sim, "
        "mri_extra_sim, phantom, real_bmode, cine), groups (gamma_looks, synthetic, real) or 'all' (default)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="folder made by `usdespeckle prepare-data` (without it: scikit-image photographs, no MRI or "
        "real sets)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="at most N images per set (frames for the cine); default: each set's own small number, "
        "so that a full run stays under 15 minutes on 2 cores",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--out", default="reports", metavar="DIR", help="output folder (default reports/)")
    parser.add_argument(
        "--size", type=int, default=256, help="side of the test images in pixels (default 256)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (default 3)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark and print where the report is; returns the exit status."""
    from usdespeckle.benchmark import resolve_methods, run_benchmark

    try:
        _, skipped = resolve_methods(args.methods)
        for name, why in skipped.items():
            print(f"skipping {name}: {why}")
        result = run_benchmark(
            args.methods,
            args.sets,
            data_dir=args.data,
            out_dir=args.out,
            limit=args.limit,
            seed=args.seed,
            progress=not args.no_progress,
            image_size=args.size,
            time_repeats=args.repeats,
        )
    except (ValueError, FileNotFoundError) as err:
        raise UserError(str(err)) from err
    for name, entry in result["sets"].items():
        if not entry["n"]:
            print(f"set {name}: no images ({'; '.join(entry['notes'])})")
    print(f"wrote {result['report']}")
    return 0
