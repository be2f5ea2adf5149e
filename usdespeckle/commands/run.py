"""``usdespeckle run INPUT OUTPUT``: despeckle one image or volume with the denoiser or a classical filter."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from usdespeckle.runtime.errors import UserError
from usdespeckle.runtime.options import (
    AXES,
    BACKEND_NAMES,
    BACKENDS,
    DEFAULT_AXIS,
    DEFAULT_BACKEND,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_METHOD,
    DEFAULT_PASSES,
    DEFAULT_STRENGTH,
    DEVICES,
    MAX_VOXELS,
    METHODS,
    PASSES,
)

HELP = "Despeckle an image or volume (any format SimpleITK reads, or a DICOM folder) into OUTPUT."


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"strength must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"strength must be in [0, 1], got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``run`` options to ``parser``."""
    parser.add_argument(
        "input", metavar="INPUT", help="image file (.nii.gz, .nrrd, .mha, .png, .dcm, ...) or DICOM folder"
    )
    parser.add_argument("output", metavar="OUTPUT", help="output file; its extension names the format")
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help=f"'denoiser' (the shipped pix2pix model, default {DEFAULT_METHOD}) or a classical filter "
        "with its defaults",
    )
    parser.add_argument(
        "--axis",
        type=int,
        choices=AXES,
        default=DEFAULT_AXIS,
        help="volumes are processed slice by slice along this numpy axis of SimpleITK's "
        "GetArrayFromImage, ordered (k, j, i): 0 = slices of constant k (frames of a cine loop or "
        "multi-frame DICOM; axial for a usual volume), 1 = constant j, 2 = constant i "
        f"(default {DEFAULT_AXIS})",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help="denoiser runtime: 'onnx' (ONNX Runtime, models/model.onnx), 'torch' (TorchScript, "
        "models/model.ts) or 'auto': ONNX Runtime when it is installed and the bundle has "
        f"model.onnx (2-4x faster on a CPU), else TorchScript (default {DEFAULT_BACKEND}); with "
        "--server, 'auto' leaves the choice to the server",
    )
    parser.add_argument(
        "--batch",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"slices per model call (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=DEFAULT_DEVICE,
        help=f"denoiser device (default {DEFAULT_DEVICE})",
    )
    parser.add_argument(
        "--strength",
        type=_strength,
        default=DEFAULT_STRENGTH,
        metavar="S",
        help=f"blend in [0, 1]: output = (1 - S) * input + S * despeckled (default {DEFAULT_STRENGTH:g})",
    )
    parser.add_argument(
        "--passes",
        type=int,
        choices=PASSES,
        default=DEFAULT_PASSES,
        help=f"denoiser: mirrorings (flips, transposes) of each slice averaged, with either backend "
        f"(default {DEFAULT_PASSES}, the shipped setting); time grows with passes",
    )
    parser.add_argument(
        "--uncertainty",
        metavar="PATH",
        help="denoiser: also write the per-pixel spread of its 8 mirrored passes (input units, the "
        "input's geometry) to PATH: high where the network invents texture (costs 8 passes; not "
        "with --server)",
    )
    parser.add_argument(
        "--intensity-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="map intensities LOW..HIGH to the methods' [0, 1] instead of the input's 0.5 and 99.5 "
        "percentiles: parts of one volume or cine (blocks of frames) then share one mapping",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite OUTPUT (and its data file, for .mhd/.hdr) if it exists",
    )
    parser.add_argument(
        "--max-voxels",
        type=_positive,
        default=MAX_VOXELS,
        metavar="N",
        help="refuse inputs whose header declares more than N values (voxels x colour components), "
        f"before reading them (default {MAX_VOXELS}: 1 GiB as float32)",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="run on a MONAI Label server serving monailabel_app (e.g. http://127.0.0.1:8000) "
        "instead of on this machine; --device and --backend then name the server's",
    )
    parser.add_argument(
        "--progress",
        choices=("bar", "lines", "none"),
        default="bar",
        help="'bar': a progress bar on stderr for volumes; 'lines': 'progress: i/n' lines on stdout "
        "(for programs that read them); 'none' (default bar)",
    )


def _progress_callback(
    mode: str, slices: int
) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    """Return (callback, close) for the chosen progress display."""
    if mode == "lines":

        def lines(done: int, total: int) -> None:
            print(f"progress: {done}/{total}", flush=True)

        return lines, lambda: None
    if mode == "bar" and slices > 1:
        try:
            from tqdm import tqdm
        except ImportError:  # a minimal runtime (numpy, SimpleITK, onnxruntime): no bar
            return None, lambda: None

        bars: list[tqdm] = []  # made at the first update, so errors before any work print no bar

        def update(done: int, total: int) -> None:
            if not bars:
                bars.append(tqdm(total=total, unit="slice", file=sys.stderr, leave=False))
            bars[0].update(done - bars[0].n)

        return update, lambda: [bar.close() for bar in bars]
    return None, lambda: None


#: pip names of the optional packages whose import name differs.
_PIP_NAMES = {"skimage": "scikit-image"}


def _missing_package(method: str, err: ImportError) -> str:
    """One line naming the optional package ``method`` needs; a broken ``usdespeckle`` is re-raised.

    The Slicer extension's runtime holds numpy, SimpleITK and onnxruntime only; the classical
    filters also need SciPy (and scikit-image or bm3d for some), which Slicer provides or installs.
    """
    if not isinstance(err, ModuleNotFoundError):  # a package's own message (bm3d says how to install it)
        return f"--method {method}: {' '.join(str(err).split())}"
    top = (err.name or "").split(".")[0]
    if not top or top == "usdespeckle":
        raise err  # part of this package is missing or broken: not the user's input
    pip = _PIP_NAMES.get(top, top)
    return f"--method {method} needs the Python package {pip}, which is not installed: pip install {pip}"


def _intensity_range(args: argparse.Namespace) -> tuple[float, float] | None:
    """``--intensity-range`` checked: finite, LOW < HIGH; None when not given."""
    if args.intensity_range is None:
        return None
    low, high = args.intensity_range
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"--intensity-range needs finite LOW < HIGH, got {low} {high}")
    return low, high


def _check_options(args: argparse.Namespace, dimension: int) -> None:
    """The option checks a local run and a ``--server`` run share, once the input's dimension is known.

    Raises:
        ValueError: ``--uncertainty`` or ``--passes`` other than 1 with a classical filter, ``--uncertainty``
            with ``--server`` (the server answers with the despeckled image only), an uncertainty
            path that collides with OUTPUT or the input, or ``--axis`` other than 0 on a 2D image.
    """
    from usdespeckle.runtime.io_checks import check_output_path, same_file

    if (
        args.method != "denoiser"
    ):  # --passes 1 (the default; the Slicer module always sends it) changes nothing
        extra = args.passes != DEFAULT_PASSES
        for option, given in (("--uncertainty", bool(args.uncertainty)), (f"--passes {args.passes}", extra)):
            if given:
                raise ValueError(
                    f"{option} needs the denoiser; --method {args.method} has no mirrored passes"
                )
    if args.uncertainty:
        if args.server:
            raise ValueError(
                "--uncertainty is not available with --server: the server answers with the despeckled "
                "image only; run without --server to write the spread"
            )
        check_output_path(args.uncertainty, force=args.force, source=args.input, dimension=dimension)
        if same_file(Path(args.uncertainty), Path(args.output)):  # also in another case or via a link
            raise ValueError("--uncertainty must name another file than OUTPUT")
    if dimension == 2 and args.axis != 0:
        raise ValueError(f"--axis {args.axis} needs a volume; {args.input} is a 2D image")


def _checked_input(args: argparse.Namespace):
    """Read INPUT and check, before any computation, everything about the run that can be checked.

    That is: the output's format, folder and collisions (with the input and existing files), the
    format against the image's dimension, the options (:func:`_check_options`), and the
    denoiser's weights (missing, bad checksum, or a file its runtime cannot load).

    Returns:
        The input as a SimpleITK image.

    Raises:
        ValueError, OSError: as the library's checks; a RuntimeError of the runtime becomes a
            ValueError saying the model file is corrupt.
    """
    from usdespeckle.runtime.inference import load_denoiser
    from usdespeckle.runtime.io import read_image
    from usdespeckle.runtime.io_checks import check_output_path

    check_output_path(args.output, force=args.force, source=args.input)
    image = read_image(args.input, max_voxels=args.max_voxels)
    check_output_path(args.output, force=args.force, source=args.input, dimension=image.GetDimension())
    _check_options(args, image.GetDimension())
    if args.method == "denoiser" and not args.server:  # fail on missing or bad weights before any work
        try:
            load_denoiser(backend=args.backend, device=args.device, passes=args.passes)
        except RuntimeError as err:  # TorchScript or ONNX Runtime cannot load the file
            detail = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(
                f"the denoiser model file cannot be loaded ({detail}); it is corrupt: restore the "
                "bundle's models/ folder"
            ) from None
    return image


def _notice(text: str) -> None:
    print(f"usdespeckle run: note: {text}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Read INPUT, despeckle it, write OUTPUT atomically; returns 0 on success.

    Everything that can be checked before the computation is: the output's format, folder,
    collisions with the input and existing files, and the format against the image's dimension.
    """
    if args.server:
        if args.uncertainty:  # the server's task answers with one image: refuse before any work
            raise UserError(
                "--uncertainty is computed on this machine only: drop --server to get it, or drop "
                "--uncertainty to despeckle on the server"
            )
        if args.intensity_range is not None:
            raise UserError("--intensity-range is not sent to a server; leave it out with --server")
        return _main_via_server(args)
    from usdespeckle.runtime.inference import despeckle_image, resolve_backend
    from usdespeckle.runtime.io import write_image

    try:
        args.backend = resolve_backend(args.backend)
        image = _checked_input(args)
        slices = 1 if image.GetDimension() == 2 else image.GetSize()[::-1][args.axis]
        callback, close = _progress_callback(args.progress, slices)
        try:
            result = despeckle_image(
                image,
                args.method,
                axis=args.axis,
                batch_size=args.batch,
                strength=args.strength,
                device=args.device,
                backend=args.backend,
                progress=callback,
                passes=args.passes,
                return_uncertainty=bool(args.uncertainty),
                intensity_range=_intensity_range(args),
            )
        finally:
            close()
        spread = None
        if isinstance(result, tuple):
            result, spread = result
        write_image(result, args.output, force=args.force, source=args.input, notice=_notice)
        if spread is not None:
            write_image(spread, args.uncertainty, force=args.force, source=args.input, notice=_notice)
    except (ValueError, OSError) as err:  # FileNotFoundError is an OSError
        raise UserError(" ".join(str(err).split())) from None  # one line
    except ImportError as err:  # a package only some methods need (scipy, scikit-image, bm3d)
        raise UserError(_missing_package(args.method, err)) from None
    if args.progress != "none":
        used = f"denoiser, {BACKEND_NAMES[args.backend]}" if args.method == "denoiser" else args.method
        print(f"wrote {args.output} ({used})", file=sys.stderr)
    return 0


def _main_via_server(args: argparse.Namespace) -> int:
    """Send INPUT to a MONAI Label server's ``despeckle`` task and write its answer to OUTPUT.

    The input is read and checked here first, with every option, as for a local run (the server
    cannot honour ``--uncertainty``: refused). The server takes one file and answers in a float
    format (NRRD here). An input that is not one self-contained file of a format the server reads
    (a DICOM folder, .mhd/.raw, .hdr/.img, a file without extension) is uploaded as NRRD;
    the answer is read back, checked and written to OUTPUT in the format its extension names,
    through the same verified atomic write as a local run.
    """
    import tempfile
    from pathlib import Path

    import numpy as np
    import SimpleITK as sitk

    from usdespeckle.runtime.client import ServerError, despeckle_via_server, uploadable
    from usdespeckle.runtime.io import write_image
    from usdespeckle.runtime.io_headers import check_input_file

    try:
        image = _checked_input(args)  # the local run's checks: output, voxel limit, headers, options
        source = Path(args.input)
        with tempfile.TemporaryDirectory(prefix="usdespeckle-server-") as work:
            upload = source
            if not uploadable(source):
                upload = Path(work) / "input.nrrd"
                sitk.WriteImage(image, str(upload), useCompression=True)
            answer = Path(work) / "result.nrrd"
            despeckle_via_server(
                args.server,
                upload,
                answer,
                method=args.method,
                axis=args.axis,
                strength=args.strength,
                batch_size=args.batch,
                device=args.device,
                passes=args.passes,
                # auto: the server's own default runtime (its --conf backend)
                **({} if args.backend == "auto" else {"backend": args.backend}),
            )
            try:  # the answer is untrusted too: a NRRD that names no other file
                check_input_file(answer, self_contained=True)
                result = sitk.ReadImage(str(answer), imageIO="NrrdImageIO")
            except (RuntimeError, ValueError):
                raise ValueError(
                    f"the server at {args.server} answered with a file that is not an image"
                ) from None
            values = sitk.GetArrayViewFromImage(result)
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                raise ValueError(f"the server at {args.server} answered with NaN or infinite values")
            write_image(result, args.output, force=args.force, source=args.input, notice=_notice)
    except (ValueError, OSError, ServerError) as err:
        raise UserError(" ".join(str(err).split())) from None
    if args.progress != "none":
        print(f"wrote {args.output} (from {args.server})", file=sys.stderr)
    return 0
