"""Slice-wise despeckling of 2D images and 3D volumes with the shipped denoiser or a classical filter.

One library function serves every front door (the ``usdespeckle run`` command, the Slicer module and
the MONAI Label app): :func:`despeckle_array` for numpy arrays and :func:`despeckle_image` for
SimpleITK images.

Volumes are processed slice by slice along one numpy axis (of ``SimpleITK.GetArrayFromImage``, that
is ``(k, j, i)``). The output is preallocated and filled batch by batch, so peak memory stays near
input + output + one batch. The batched loop is ours rather than MONAI's ``SliceInferer``: that
inferer needs the whole volume as one tensor and has no progress callback or cancellation.

The denoiser is a 2D generator mapping ``(B, 1, H, W)`` float32 in [0, 1] to the same; H and W must
be multiples of the divisor named in the bundle's ``metadata.json``
(``network_data_format.inputs.image.spatial_shape``, e.g. ``["256*n", "256*n"]``). Slices are padded
by reflection up to the next multiple and cropped back. The exported denoiser is one network pass;
``passes`` > 1 averages it over that many mirrorings of each slice (flips, then transposes:
:data:`MIRRORINGS`), each undone on its output (a self-ensemble), with either backend. The spread
of the 8 mirrorings' outputs (``return_uncertainty``) shows where the network invents texture: there
the mirrorings disagree.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from usdespeckle.bundle_utils import verify_checksums
from usdespeckle.errors import DespeckleCancelled
from usdespeckle.options import (
    BACKENDS,
    CLASSICAL_METHODS,
    DEFAULT_PASSES,
    DEVICES,
    METHODS,
    MIRRORINGS,
    MODEL_FILES,
    PASSES,
    PERCENTILES,
)

__all__ = [
    "CLASSICAL_METHODS",
    "METHODS",
    "MIRRORINGS",
    "MODEL_FILES",
    "PASSES",
    "PERCENTILES",
    "Denoiser",
    "DespeckleCancelled",
    "default_bundle_root",
    "despeckle_array",
    "despeckle_image",
    "load_denoiser",
    "pad_to_multiple",
    "resolve_backend",
    "robust_range",
]

#: Smallest in-plane side of a slice, pixels.
MIN_SLICE_SIZE = 8
#: Largest number of values used to estimate the percentiles (a strided sample beyond that).
_PERCENTILE_SAMPLE = 1_000_000

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool] | threading.Event


def default_bundle_root() -> Path:
    """The bundle folder, found by this rule.

    1. ``$USDESPECKLE_BUNDLE`` if set;
    2. ``monai_bundle/`` beside the package, if it holds ``configs/metadata.json`` (a source
       checkout or an editable install);
    3. ``usdespeckle/monai_bundle/`` inside the installed package (a wheel: its configs, model.ts
       and model.onnx are package data).
    """
    env = os.environ.get("USDESPECKLE_BUNDLE")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent
    checkout = package.parent / "monai_bundle"
    return checkout if (checkout / "configs" / "metadata.json").is_file() else package / "monai_bundle"


def _no_weights_message(path: Path) -> str:
    return (
        f"no denoiser weights at {path}. Train them with the recipe in training/ (see training/README.md) "
        "and export them into the bundle's models/ folder, point USDESPECKLE_BUNDLE at a bundle that "
        "has them, or use a classical method (--method median, lee, srad, ...)."
    )


def _divisor(metadata: dict[str, Any], path: Path) -> int:
    """Parse the spatial divisor from ``spatial_shape`` entries such as ``"256*n"``."""
    try:
        shape = metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
        divisors = [int(str(s).split("*")[0]) for s in shape]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: network_data_format.inputs.image.spatial_shape is missing or not like "
            f'["256*n", "256*n"] ({err!r}); fix the bundle metadata'
        ) from None
    if len(set(divisors)) != 1 or divisors[0] < 1:
        raise ValueError(f"{path}: spatial_shape {shape} must name one positive divisor for both sides")
    return divisors[0]


@dataclass
class Denoiser:
    """A loaded denoiser: call it on ``(B, 1, H, W)`` float32 in [0, 1], H and W multiples of ``divisor``.

    Attributes:
        path: the model file.
        backend: ``"torch"`` (TorchScript) or ``"onnx"`` (ONNX Runtime).
        device: ``"cpu"`` or ``"cuda"``.
        divisor: H and W must be multiples of this, pixels.
        model: the ``torch.jit.ScriptModule`` or ``onnxruntime.InferenceSession`` (one pass).
        passes: mirrorings of each slice averaged per call, one of :data:`PASSES`.
    """

    path: Path
    backend: str
    device: str
    divisor: int
    model: Any = field(repr=False)
    passes: int = 1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run the model, averaged over ``passes`` mirrorings.

        Args:
            batch: float32 ``(B, 1, H, W)`` in [0, 1].

        Returns:
            float32 ``(B, 1, H, W)`` in [0, 1].
        """
        outputs = self.mirrored(batch, self.passes)
        return outputs[0] if len(outputs) == 1 else np.mean(outputs, axis=0, dtype=np.float32)

    def mirrored(self, batch: np.ndarray, passes: int) -> list[np.ndarray]:
        """The model's outputs for the first ``passes`` mirrorings of the batch, each undone.

        Args:
            batch: float32 ``(B, 1, H, W)`` in [0, 1]; H and W multiples of ``divisor``.
            passes: one of :data:`PASSES`.

        Returns:
            ``passes`` float32 arrays ``(B, 1, H, W)`` in [0, 1], aligned with the input.
        """
        outputs = []
        for transpose, flips in MIRRORINGS[:passes]:
            mirrored = batch.swapaxes(-2, -1) if transpose else batch
            mirrored = np.flip(mirrored, flips) if flips else mirrored
            out = self._run(mirrored)
            out = np.flip(out, flips) if flips else out
            outputs.append(np.ascontiguousarray(out.swapaxes(-2, -1) if transpose else out))
        return outputs

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One network pass: float32 ``(B, 1, H, W)`` in [0, 1] in, clipped to [0, 1] out."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.backend == "onnx":
            inp = self.model.get_inputs()[0]
            fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
            step = fixed or len(batch)
            parts = [
                self.model.run(None, {inp.name: batch[i : i + step]})[0] for i in range(0, len(batch), step)
            ]
            out = np.concatenate(parts, axis=0)
        else:
            import torch

            with torch.inference_mode():
                out = self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()
        return np.clip(out, 0.0, 1.0, out=out)


def _onnx_threads() -> int:
    """Threads for ONNX Runtime: torch's setting when torch is already loaded, else ``OMP_NUM_THREADS``.

    0 lets ONNX Runtime choose. torch is never imported here: the ONNX path runs with numpy,
    SimpleITK and onnxruntime alone (as inside 3D Slicer).
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


_CACHE: dict[tuple[str, str, str, int], Denoiser] = {}
_CACHE_LOCK = threading.Lock()


def resolve_backend(requested: str, bundle_root: str | os.PathLike | None = None) -> str:
    """The runtime that runs the denoiser for a requested backend: ``auto`` picks the fastest present.

    Either runtime runs any ``passes``: the library mirrors the slices.

    Args:
        requested: one of :data:`usdespeckle.options.BACKENDS` (``"auto"``, ``"torch"``, ``"onnx"``).
        bundle_root: the bundle folder; default :func:`default_bundle_root`.

    Returns:
        ``"onnx"`` or ``"torch"``: ``requested`` unless it is ``"auto"``, which gives ``"onnx"`` when
        onnxruntime is importable and the bundle has ``models/model.onnx``, else ``"torch"``.

    Raises:
        ValueError: ``requested`` is not one of :data:`usdespeckle.options.BACKENDS`.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend {requested!r} is not one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested
    import importlib.util

    root = Path(bundle_root) if bundle_root is not None else default_bundle_root()
    if (root / MODEL_FILES["onnx"]).is_file() and importlib.util.find_spec("onnxruntime") is not None:
        return "onnx"
    return "torch"


def load_denoiser(
    bundle_root: str | os.PathLike | None = None,
    backend: str = "torch",
    device: str = "cpu",
    passes: int = DEFAULT_PASSES,
) -> Denoiser:
    """Load the bundle's denoiser after checking its sha256 against ``configs/metadata.json``.

    Loaded models are cached per (model file, backend, device, passes); the file's size and
    modification time are part of the key, so a replaced file is checked and loaded again.

    Args:
        bundle_root: the MONAI bundle folder; default :func:`default_bundle_root`.
        backend: ``"torch"`` for ``models/model.ts`` (TorchScript), ``"onnx"`` for
            ``models/model.onnx`` (ONNX Runtime) or ``"auto"`` (see :func:`resolve_backend`).
        device: one of :data:`usdespeckle.options.DEVICES` (``"cpu"``, ``"cuda"``).
        passes: mirrorings of each slice to average, one of :data:`PASSES`; default 1, the
            shipped model's setting. Time grows with passes. ``None`` (older callers) means 1.

    Returns:
        A callable :class:`Denoiser`.

    Raises:
        FileNotFoundError: if the model file or ``metadata.json`` is missing (the message says how to
            get the weights).
        ValueError: for an unknown backend or device, an unavailable CUDA, a sha256 that does not
            match the metadata (or is not listed there), unusable metadata, or ``passes`` that is
            not in :data:`PASSES`.
    """
    passes = DEFAULT_PASSES if passes is None else passes
    if passes not in PASSES:
        raise ValueError(f"passes must be one of {', '.join(map(str, PASSES))} (got {passes!r})")
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    backend = resolve_backend(backend, bundle_root)
    root = Path(bundle_root) if bundle_root is not None else default_bundle_root()
    rel = MODEL_FILES[backend]
    path = (root / rel).resolve()
    meta_path = root / "configs" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(_no_weights_message(path))
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} is missing; the bundle at {root} is incomplete. " + _no_weights_message(path)
        )
    stat = path.stat()
    key = (f"{path}:{stat.st_size}:{stat.st_mtime_ns}", backend, device, passes)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            metadata = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_path} is not valid JSON: {err}") from None
        if verify_checksums(root, files=(rel,))[rel] != "ok":  # ValueError on a mismatch
            raise ValueError(
                f'{meta_path} lists no "weights_sha256" for "{rel}"; re-export the bundle so the '
                "weights can be checked"
            )
        divisor = _divisor(metadata, meta_path)
        if backend == "onnx":
            try:
                import onnxruntime as ort
            except ImportError:
                raise ValueError(
                    "backend 'onnx' needs the onnxruntime package: pip install onnxruntime "
                    "(or choose backend 'torch')"
                ) from None

            providers = ["CPUExecutionProvider"]
            if device == "cuda":
                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    raise ValueError(
                        "device 'cuda' asked for but ONNX Runtime has no CUDA provider; use --device cpu"
                    )
                providers.insert(0, "CUDAExecutionProvider")
            options = ort.SessionOptions()
            options.intra_op_num_threads = _onnx_threads()
            model: Any = ort.InferenceSession(str(path), options, providers=providers)
        else:
            try:
                import torch
            except ImportError:
                raise ValueError(
                    "backend 'torch' needs PyTorch (in 3D Slicer: the PyTorch extension); "
                    "or choose backend 'onnx', which needs only onnxruntime"
                ) from None

            if device == "cuda" and not torch.cuda.is_available():
                raise ValueError("device 'cuda' asked for but torch sees no CUDA GPU; use --device cpu")
            with warnings.catch_warnings():  # TorchScript is what MONAI's ckpt_export writes
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location=device).eval()
            if len(getattr(model, "mirrorings", ())) > 1:  # an export with a built-in self-ensemble
                model.mirrorings = model.mirrorings[:1]  # one pass; this library mirrors
        denoiser = Denoiser(
            path=path, backend=backend, device=device, divisor=divisor, model=model, passes=passes
        )
        _CACHE[key] = denoiser
        return denoiser


def robust_range(array: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """Robust intensity range: the given percentiles of the whole array.

    Volumes larger than a few million values are sampled with a fixed stride (no copy of the whole
    volume, deterministic). Falls back to min..max when the percentiles coincide.

    Args:
        array: any real array.
        percentiles: low and high percentiles, in [0, 100].

    Returns:
        ``(low, high)`` with ``low < high`` unless the array is constant.
    """
    flat = array.reshape(-1)
    stride = max(1, flat.size // _PERCENTILE_SAMPLE)
    sample = np.asarray(flat[::stride], dtype=np.float64)
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        lo, hi = float(array.min()), float(array.max())
    return lo, hi


def _is_cancelled(cancel: Cancel | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _classical(method: str) -> Callable[[np.ndarray], np.ndarray]:
    """The classical filter ``method`` (one of :data:`CLASSICAL_METHODS`) with its defaults."""
    from usdespeckle.filters import FILTERS  # scipy and scikit-image: imported only when a filter runs

    return FILTERS[method]


def pad_to_multiple(batch: np.ndarray, divisor: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Pad ``(B, H, W)`` by reflection, symmetrically, to multiples of ``divisor``.

    numpy's ``reflect`` mode repeats the reflection for pads wider than the image, which torch's
    (and so MONAI's ``DivisiblePad``) refuses.
    """
    h, w = batch.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    top, left = ph // 2, pw // 2
    padded = np.pad(batch, ((0, 0), (top, ph - top), (left, pw - left)), mode="reflect")
    return padded, (slice(top, top + h), slice(left, left + w))


def despeckle_array(
    array: np.ndarray,
    method: str = "denoiser",
    *,
    axis: int = 0,
    batch_size: int = 8,
    strength: float = 1.0,
    device: str = "cpu",
    backend: str = "torch",
    bundle_root: str | os.PathLike | None = None,
    intensity_range: tuple[float, float] | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    passes: int | None = None,
    return_uncertainty: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Despeckle a 2D image or a 3D volume slice by slice.

    Intensities are mapped to [0, 1] by a robust min-max of the whole array (0.5 and 99.5
    percentiles, clipped), despeckled, mapped back to the input's range, then blended with the
    input: ``out = (1 - strength) * input + strength * despeckled``.

    Args:
        array: 2D ``(H, W)`` or 3D array of real values, finite. Never modified.
        method: ``"denoiser"`` (the shipped pix2pix generator) or a classical method in
            :data:`CLASSICAL_METHODS` (``usdespeckle.filters.FILTERS`` with its defaults).
        axis: for 3D, the numpy axis slices are taken along (0, 1 or 2; for a SimpleITK array
            ``(k, j, i)``, 0 means slices of constant k). Ignored for 2D.
        batch_size: slices per model call, >= 1.
        strength: blend factor in [0, 1]; 0 returns the input values exactly (as float32).
        device: ``"cpu"`` or ``"cuda"`` (denoiser only).
        backend: ``"torch"`` or ``"onnx"`` (denoiser only).
        bundle_root: the bundle folder; default :func:`default_bundle_root`.
        intensity_range: ``(low, high)`` mapped to [0, 1] instead of the robust range (use it to
            process parts of a volume with one mapping).
        progress: called as ``progress(done, total)`` in slices, after each batch.
        cancel: a callable returning True, or a ``threading.Event`` that is set, to stop.
        passes: denoiser only: mirrorings of each slice averaged (1, 2, 4 or 8; ``None``: 1, the
            shipped setting). Time grows with passes. See :func:`load_denoiser`.
        return_uncertainty: denoiser only: also return the per-pixel spread (standard deviation)
            of the outputs of all 8 mirrorings, in the input's intensity units (times ``strength``).
            It costs 8 passes whatever ``passes`` is; the despeckled output is unchanged.

    Returns:
        float32 array of the input's shape; with ``return_uncertainty``, ``(output, spread)``, two
        float32 arrays of the input's shape.

    Raises:
        ValueError: bad shape, axis, strength, batch size, method, non-finite values, slices
            smaller than 8 pixels, or a model problem (see :func:`load_denoiser`).
        FileNotFoundError: the denoiser's weights are missing.
        DespeckleCancelled: ``cancel`` asked to stop.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"array must be 2D (H, W) or 3D, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"array must hold real numbers, got dtype {array.dtype}")
    if array.ndim == 3 and axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2 for a 3D array, got {axis}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if return_uncertainty and method != "denoiser":
        raise ValueError(
            f"return_uncertainty needs the denoiser (the spread of its mirrored passes); {method!r} has none"
        )
    if array.size == 0:
        raise ValueError(f"array is empty (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError("array holds NaN or infinite values; fix or mask them before despeckling")

    volume = array[np.newaxis] if array.ndim == 2 else np.moveaxis(array, axis, 0)  # views, no copies
    n, h, w = volume.shape
    if min(h, w) < MIN_SLICE_SIZE:
        raise ValueError(
            f"slices along axis {axis} are {h}x{w} pixels (array shape {array.shape}); each side needs "
            f"at least {MIN_SLICE_SIZE}. Choose another axis."
        )
    output = np.empty(array.shape, dtype=np.float32)
    out_view = output[np.newaxis] if array.ndim == 2 else np.moveaxis(output, axis, 0)
    spread = np.zeros(array.shape, dtype=np.float32) if return_uncertainty else None
    spread_view = None
    if spread is not None:
        spread_view = spread[np.newaxis] if array.ndim == 2 else np.moveaxis(spread, axis, 0)
    if strength == 0.0:  # nothing to blend in: the input values, exactly
        out_view[...] = volume
        if progress is not None:
            progress(n, n)
        return (output, spread) if spread is not None else output

    if method == "denoiser":
        denoiser = load_denoiser(bundle_root, backend=backend, device=device, passes=passes)
        step = int(batch_size)
    else:
        despeckle_slice = _classical(method)
        step = 1
    lo, hi = (float(v) for v in intensity_range) if intensity_range is not None else robust_range(array)
    if not hi > lo:
        raise ValueError(
            f"intensity range ({lo}, {hi}) is empty: the image is constant, nothing to despeckle"
        )
    scale = hi - lo

    for start in range(0, n, step):
        if _is_cancelled(cancel):
            raise DespeckleCancelled(f"cancelled after {start} of {n} slices")
        stop = min(start + step, n)
        src = volume[start:stop].astype(np.float32)  # one batch copy
        mapped = np.clip((src - np.float32(lo)) / np.float32(scale), 0.0, 1.0)
        if method == "denoiser":
            padded, (rows, cols) = pad_to_multiple(mapped, denoiser.divisor)
            if spread_view is None:
                result = denoiser(padded[:, np.newaxis])[:, 0, rows, cols]
            else:
                passes_out = np.stack(denoiser.mirrored(padded[:, np.newaxis], len(MIRRORINGS)))
                passes_out = passes_out[:, :, 0, rows, cols]
                result = passes_out[: denoiser.passes].mean(axis=0, dtype=np.float32)
                spread_view[start:stop] = passes_out.std(axis=0) * np.float32(scale * strength)
        else:
            result = np.stack([np.asarray(despeckle_slice(s), dtype=np.float32) for s in mapped])
        result = result * np.float32(scale) + np.float32(lo)
        if not np.isfinite(result).all():  # a broken model file, or a filter that diverged
            raise ValueError(
                f"method {method!r} returned NaN or infinite values on slices {start}-{stop - 1} of {n}; "
                "the model file may be corrupt (restore the bundle) or the filter diverged. Nothing was written."
            )
        if strength < 1.0:
            result = np.float32(1.0 - strength) * src + np.float32(strength) * result
        out_view[start:stop] = result
        if progress is not None:
            progress(stop, n)
    return (output, spread) if spread is not None else output


def despeckle_image(
    image: sitk.Image, method: str = "denoiser", **kwargs: Any
) -> sitk.Image | tuple[sitk.Image, sitk.Image]:
    """Despeckle a SimpleITK image; see :func:`despeckle_array` for the keyword arguments.

    Args:
        image: scalar 2D or 3D SimpleITK image. ``axis`` refers to the numpy axes of
            ``GetArrayFromImage`` ``(k, j, i)``.
        method: as in :func:`despeckle_array`.
        **kwargs: passed to :func:`despeckle_array`.

    Returns:
        A float32 image with the input's spacing, origin, direction and metadata; with
        ``return_uncertainty=True``, ``(despeckled, spread)``, both with that geometry.

    Raises:
        ValueError: for a vector-pixel image (call ``usdespeckle.io.to_grey`` first), and as
            :func:`despeckle_array`.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"image has {image.GetNumberOfComponentsPerPixel()} components per pixel; "
            "convert it with usdespeckle.io.to_grey first"
        )
    arrays = despeckle_array(sitk.GetArrayViewFromImage(image), method, **kwargs)

    def like_input(array: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(array, isVector=False)
        result.CopyInformation(image)
        for key in image.GetMetaDataKeys():
            result.SetMetaData(key, image.GetMetaData(key))
        return result

    if isinstance(arrays, tuple):
        return like_input(arrays[0]), like_input(arrays[1])
    return like_input(arrays)
