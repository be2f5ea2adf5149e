"""``usdespeckle demo``: make a small ultrasound-like volume from data shipped in installed packages, despeckle it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from usdespeckle.cli import UserError

HELP = "Make a demo B-mode volume (MNI152 slices from nilearn rendered by the shipped simulator), despeckle it, write input/output/PNG."

_METHODS = ("denoiser", "median", "lee", "frost", "kuan", "srad", "obnlm", "bm3d", "mulog", "nlm", "tv")
#: Classical method used when no denoiser weights are shipped yet.
FALLBACK_METHOD = "median"
#: Axial slices of the MNI152 template used (k indices of the 197x233x189 volume).
SLICES = slice(86, 94)
SEED = 2024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser``."""
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default demo_out)")
    parser.add_argument(
        "--method",
        choices=_METHODS,
        default="denoiser",
        help=f"despeckler (default denoiser; {FALLBACK_METHOD} with a notice if no weights are shipped)",
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"speckle random seed (default {SEED})")


def _template_path() -> Path:
    import nilearn

    path = (
        Path(nilearn.__file__).parent
        / "datasets"
        / "data"
        / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    if not path.is_file():
        raise UserError(f"the MNI152 template that nilearn ships is missing ({path}); reinstall nilearn")
    return path


def make_demo_volume(rng: np.random.Generator, simulator=None):
    """Build the demo volume: 8 axial MNI152 slices rendered as B-mode.

    Args:
        rng: random generator for the Rayleigh speckle (used without a simulator).
        simulator: the bundle's simulator (:func:`usdespeckle.pairs.load_simulator`), which renders
            each slice's low-level map as B-mode, as in the denoiser's MRI training pairs; None
            speckles the slices with the method's Rayleigh model instead.

    Returns:
        A float32 SimpleITK image in [0, 1], 197 x 233 x 8 voxels of 1 mm, with the template's geometry.
    """
    import SimpleITK as sitk

    template = sitk.ReadImage(str(_template_path()))[:, :, SLICES]
    clean = sitk.GetArrayFromImage(template).astype(np.float32)
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    if simulator is not None:
        from usdespeckle.pairs import simulate_bmode_from_mri

        bmode = simulate_bmode_from_mri(simulator, clean)
    else:
        from usdespeckle.speckle import rayleigh_speckle

        bmode = np.stack([rayleigh_speckle(s, rng) for s in clean])
    image = sitk.GetImageFromArray(bmode.astype(np.float32))
    image.CopyInformation(template)
    return image


def _side_by_side(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Two slices next to each other, both scaled with the input's range to uint8 (grey gap between)."""
    lo, hi = float(before.min()), float(before.max())
    gap = np.full((before.shape[0], 4), 0.5)
    joined = np.concatenate([(before - lo) / (hi - lo), gap, (after - lo) / (hi - lo)], axis=1)
    return np.rint(np.clip(joined, 0, 1) * 255).astype(np.uint8)


def main(args: argparse.Namespace) -> int:
    """Write input.nii.gz, output.nii.gz and side_by_side.png into ``--out``; returns 0."""
    import SimpleITK as sitk

    from usdespeckle.inference import despeckle_image, load_denoiser
    from usdespeckle.io import write_image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    method = args.method
    if method == "denoiser":
        try:
            load_denoiser()
        except (FileNotFoundError, ValueError) as err:
            print(
                f"notice: {err} Using the classical '{FALLBACK_METHOD}' filter for this demo.",
                file=sys.stderr,
            )
            method = FALLBACK_METHOD
    try:
        from usdespeckle.pairs import load_simulator

        simulator = load_simulator()
        source = "the simulator"
    except (FileNotFoundError, ValueError) as err:
        print(f"notice: {err}; speckling the demo with the Rayleigh model instead.", file=sys.stderr)
        simulator, source = None, "the Rayleigh model"
    try:
        image = make_demo_volume(np.random.default_rng(args.seed), simulator)
        result = despeckle_image(image, method)
        write_image(image, out / "input.nii.gz", force=True)
        write_image(result, out / "output.nii.gz", force=True)
        middle = image.GetDepth() // 2
        png = sitk.GetImageFromArray(
            _side_by_side(
                sitk.GetArrayViewFromImage(image)[middle], sitk.GetArrayViewFromImage(result)[middle]
            )
        )
        write_image(png, out / "side_by_side.png", force=True)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(" ".join(str(err).split())) from None
    print(
        f"demo B-mode made with {source} from MNI152 slices; despeckled with {method}; wrote {out / 'input.nii.gz'}, {out / 'output.nii.gz'}, {out / 'side_by_side.png'}"
    )
    return 0
