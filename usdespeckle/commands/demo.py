"""``usdespeckle demo``: despeckle a small ultrasound-like volume made from data shipped in installed packages.

``usdespeckle demo`` renders MNI152 slices as B-mode with the shipped simulator; ``usdespeckle demo
--real`` despeckles held-out frames of a real cardiac cine loop (pydicom-data) with the chosen method
and with a classical method beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from usdespeckle.runtime.errors import UserError
from usdespeckle.runtime.options import CLASSICAL_METHODS, DEFAULT_METHOD, METHODS

HELP = (
    "Make a demo B-mode volume (MNI152 slices from nilearn rendered by the shipped simulator), or take "
    "held-out real cine frames with --real, despeckle it, write input/output/PNG."
)

#: Classical method shown beside the chosen one with ``--real``.
REAL_CLASSICAL = "obnlm"
#: Held-out real frames despeckled with ``--real``.
REAL_FRAMES = 4
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
        choices=METHODS,
        default=DEFAULT_METHOD,
        help=f"despeckler (default {DEFAULT_METHOD}; {FALLBACK_METHOD} with a notice if no weights are shipped)",
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"speckle random seed (default {SEED})")
    parser.add_argument(
        "--real",
        action="store_true",
        help="despeckle held-out frames of the real cardiac cine loop (pydicom-data) instead of MNI152 slices",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="with --real: take the frames from this `usdespeckle prepare-data` folder "
        "(datalist_real_bmode.json) instead of reading pydicom-data's DICOM",
    )
    parser.add_argument(
        "--classical",
        choices=CLASSICAL_METHODS,
        default=REAL_CLASSICAL,
        help=f"with --real: classical filter shown beside --method (default {REAL_CLASSICAL})",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=REAL_FRAMES,
        metavar="N",
        help=f"with --real: number of consecutive held-out frames (default {REAL_FRAMES})",
    )


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
        simulator: the bundle's simulator (:func:`usdespeckle.gan.pairs.load_simulator`), which renders
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
        from usdespeckle.gan.simulator import simulate_bmode_from_mri

        bmode = simulate_bmode_from_mri(simulator, clean)
    else:
        from usdespeckle.simulation.speckle import rayleigh_speckle

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


def held_out_cine_frames(data_dir: str | Path | None, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``count`` consecutive held-out frames of the real cine loop, their field mask, and their origin.

    Args:
        data_dir: None to read the frames straight from pydicom-data's DICOM
            (:func:`usdespeckle.data.real_bmode.extract_frames`, the test block of
            :data:`usdespeckle.data.real_bmode.CINE_BLOCKS`), or a folder made by ``usdespeckle
            prepare-data`` (its ``datalist_real_bmode.json`` ``cine_test`` block).
        count: number of frames (>= 2); the centred run of the held-out block.

    Returns:
        ``(frames, field, origin)``: float32 (T, H, W) in [0, 1], bool (H, W) valid-pixel mask
        shared by all frames, and a one-line description of where the frames come from.

    Raises:
        UserError: a bad count, a missing dataset, or pydicom-data not installed.
    """
    from usdespeckle.benchmark.sets_real import REAL_DATALIST, load_cine

    if count < 2:
        raise UserError(f"--frames must be at least 2, got {count}")
    if data_dir is None:
        from usdespeckle.data.real_bmode import CINE_BLOCKS, CINE_FILE, extract_frames

        first, stop = CINE_BLOCKS["test"]
        count = min(count, stop - first)
        first += (stop - first - count) // 2
        try:
            frames = extract_frames(CINE_FILE, range(first, first + count))
        except (FileNotFoundError, ValueError) as err:
            raise UserError(" ".join(str(err).split())) from None
        frames = [f for f in frames if f.pane == 0]
        field = np.logical_and.reduce([f.mask for f in frames])
        stack = np.stack([np.where(field, f.image, 0.0) for f in frames]).astype(np.float32)
        return stack, field, f"pydicom-data {CINE_FILE}, held-out frames {first}-{first + count - 1}"
    if not (Path(data_dir) / REAL_DATALIST).is_file():
        raise UserError(f"{Path(data_dir) / REAL_DATALIST} does not exist; rerun `usdespeckle prepare-data`")
    loaded = load_cine(Path(data_dir), count, 0, 0)
    if not loaded.cases:
        raise UserError("; ".join(loaded.notes))
    case = loaded.cases[0]
    return case.image, case.field, loaded.notes[0].split(": ", 1)[-1]


def _usable_method(method: str) -> str:
    """``method``, or the classical fallback (with a notice) when the denoiser has no weights."""
    from usdespeckle.runtime.inference import load_denoiser

    if method != "denoiser":
        return method
    try:
        load_denoiser()
    except (FileNotFoundError, ValueError) as err:
        print(f"notice: {err} Using the classical '{FALLBACK_METHOD}' filter for this demo.", file=sys.stderr)
        return FALLBACK_METHOD
    return method


def _despeckle_frames(frames: np.ndarray, method: str) -> np.ndarray:
    """Every frame despeckled by ``method`` (the frames are display images in [0, 1])."""
    from usdespeckle.runtime import filters
    from usdespeckle.runtime.inference import despeckle_array

    if method == "denoiser":
        return despeckle_array(frames, method="denoiser", axis=0, intensity_range=(0.0, 1.0))
    return np.stack([filters.FILTERS[method](frame) for frame in frames]).astype(np.float32)


def run_real(args: argparse.Namespace) -> int:
    """``demo --real``: despeckle held-out cine frames; write the frames, the outputs and a labelled PNG."""
    import SimpleITK as sitk

    from usdespeckle.benchmark.figures import compose_panels, save_png
    from usdespeckle.runtime.io import write_image

    out = Path(args.out)
    method = _usable_method(args.method)
    frames, field, origin = held_out_cine_frames(args.data, args.frames)
    out.mkdir(parents=True, exist_ok=True)
    try:
        outputs = {name: _despeckle_frames(frames, name) for name in dict.fromkeys([args.classical, method])}
        write_image(sitk.GetImageFromArray(frames), out / "input.nii.gz", force=True)
        write_image(sitk.GetImageFromArray(outputs[method]), out / "output.nii.gz", force=True)
        if args.classical != method:
            write_image(sitk.GetImageFromArray(outputs[args.classical]), out / "classical.nii.gz", force=True)
        middle = frames.shape[0] // 2
        tiles = [frames[middle]] + [np.where(field, o[middle], 0.0) for o in outputs.values()]
        labels = ["input (held-out real frame)", *outputs]
        save_png(compose_panels(tiles, labels, columns=len(tiles)), out / "side_by_side.png")
    except (ValueError, FileNotFoundError) as err:
        raise UserError(" ".join(str(err).split())) from None
    print(
        f"demo: {frames.shape[0]} held-out real frames ({origin}) despeckled with {' and '.join(outputs)}; "
        f"wrote {out / 'input.nii.gz'}, {out / 'output.nii.gz'}, {out / 'side_by_side.png'}"
    )
    return 0


def main(args: argparse.Namespace) -> int:
    """Write input.nii.gz, output.nii.gz and side_by_side.png into ``--out``; returns 0."""
    import SimpleITK as sitk

    from usdespeckle.runtime.inference import despeckle_image
    from usdespeckle.runtime.io import write_image

    if getattr(args, "real", False):
        return run_real(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    method = _usable_method(args.method)
    try:
        from usdespeckle.gan.simulator import load_simulator

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
