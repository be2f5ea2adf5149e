"""Slice-wise despeckling of 2D images and 3D volumes with the shipped denoiser or a classical filter.

One library function serves every front door (the ``usdespeckle run`` command, the Slicer module and
the MONAI Label app): :func:`despeckle_array` for numpy arrays and :func:`despeckle_image` for
SimpleITK images.

Volumes are processed slice by slice along one numpy axis (of ``SimpleITK.GetArrayFromImage``, that
is ``(k, j, i)``) by the runner the simulator shares (:mod:`usdespeckle.runtime.slicewise`: batches, progress,
cancellation, intensity mapping, padding); this module adds the despeckling methods.

The denoiser is a 2D generator mapping ``(B, 1, H, W)`` float32 in [0, 1] to the same; H and W must
be multiples of the divisor named in the bundle's ``metadata.json``
(``network_data_format.inputs.image.spatial_shape``, e.g. ``["256*n", "256*n"]``). Slices are padded
by reflection up to the next multiple and cropped back. The exported denoiser is one network pass;
``passes`` > 1 averages it over that many mirrorings of each slice (flips, then transposes:
:data:`MIRRORINGS`), each undone on its output (a self-ensemble), with either backend. The spread
of the 8 mirrorings' outputs (``return_uncertainty``) shows where the network invents texture: there
the mirrorings disagree.

The loaded model and its numpy self-ensemble are :class:`usdespeckle.runtime.denoiser.Denoiser`; this module
checks the bundle, loads it and runs the methods.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import SimpleITK as sitk

from usdespeckle.runtime.bundle_utils import check_weights, default_bundle_root, read_metadata
from usdespeckle.runtime.denoiser import Denoiser, onnx_threads
from usdespeckle.runtime.options import (
    BACKENDS,
    DEFAULT_AXIS,
    DEFAULT_BACKEND,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_METHOD,
    DEFAULT_PASSES,
    DEFAULT_STRENGTH,
    DEVICES,
    METHODS,
    MIRRORINGS,
    MODEL_FILES,
    PASSES,
)
from usdespeckle.runtime.slicewise import (
    Cancel,
    IntensityMap,
    Progress,
    check_volume,
    pad_to_multiple,
    run_slicewise,
    slices_along,
)

__all__ = [
    "despeckle_array",
    "despeckle_image",
    "load_denoiser",
    "resolve_backend",
]


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


_CACHE: dict[tuple[str, str, str], Denoiser] = {}
_CACHE_LOCK = threading.Lock()


def resolve_backend(requested: str, bundle_root: str | os.PathLike | None = None) -> str:
    """The runtime that runs the denoiser for a requested backend: ``auto`` picks the fastest present.

    Either runtime runs any ``passes``: the library mirrors the slices.

    Args:
        requested: one of :data:`usdespeckle.runtime.options.BACKENDS` (``"auto"``, ``"torch"``, ``"onnx"``).
        bundle_root: the bundle folder; default :func:`default_bundle_root`.

    Returns:
        ``"onnx"`` or ``"torch"``: ``requested`` unless it is ``"auto"``, which gives ``"onnx"`` when
        onnxruntime is importable and the bundle has ``models/model.onnx``, else ``"torch"``.

    Raises:
        ValueError: ``requested`` is not one of :data:`usdespeckle.runtime.options.BACKENDS`.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend {requested!r} is not one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested
    root = Path(bundle_root) if bundle_root is not None else default_bundle_root()
    if (root / MODEL_FILES["onnx"]).is_file() and importlib.util.find_spec("onnxruntime") is not None:
        return "onnx"
    return "torch"


#: The package each backend runs on, and what to do without it.
_RUNTIME_PACKAGES: dict[str, tuple[str, str]] = {
    "onnx": (
        "onnxruntime",
        "backend 'onnx' needs the onnxruntime package: pip install onnxruntime (or choose backend 'torch')",
    ),
    "torch": (
        "torch",
        "backend 'torch' needs PyTorch (in 3D Slicer: the PyTorch extension); "
        "or choose backend 'onnx', which needs only onnxruntime",
    ),
}


def _runtime_package(backend: str) -> ModuleType:
    """The package that runs ``backend``, imported on first use; a one-line ValueError without it."""
    name, missing = _RUNTIME_PACKAGES[backend]
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(missing) from None


def _open_onnx(path: Path, device: str) -> Any:
    """An ONNX Runtime session of ``path`` on ``device``; one-line errors for a missing runtime or GPU."""
    ort = _runtime_package("onnx")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(
                "device 'cuda' asked for but ONNX Runtime has no CUDA provider; use --device cpu"
            )
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = onnx_threads()
    session = ort.InferenceSession(str(path), options, providers=providers)
    if device == "cuda" and session.get_providers()[:1] != ["CUDAExecutionProvider"]:
        # ONNX Runtime lists the provider but falls back when CUDA's libraries do not load
        warnings.warn(
            "ONNX Runtime could not start its CUDA provider (CUDA or cuDNN libraries missing or not "
            "matching onnxruntime-gpu); the denoiser runs on the CPU",
            RuntimeWarning,
            stacklevel=2,
        )
    return session


def _open_torchscript(path: Path, device: str) -> Any:
    """The TorchScript module ``path`` on ``device`` in eval mode; refuses an export that mirrors itself."""
    torch = _runtime_package("torch")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no CUDA GPU; use --device cpu")
    with warnings.catch_warnings():  # TorchScript is what MONAI's ckpt_export writes
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(str(path), map_location=device).eval()
    built_in = len(getattr(model, "mirrorings", ()))
    if built_in > 1:  # an export before 1.0.0 (a SelfEnsemble of more than one pass)
        raise ValueError(
            f"{path} averages {built_in} mirrorings itself; re-export it as one pass with "
            "training/export_bundle.py (train.json export_mirrorings 1): passes= mirrors it here"
        )
    return model


def load_denoiser(
    bundle_root: str | os.PathLike | None = None,
    backend: str = DEFAULT_BACKEND,
    device: str = DEFAULT_DEVICE,
    passes: int = DEFAULT_PASSES,
) -> Denoiser:
    """Load the bundle's denoiser after checking its sha256 against ``configs/metadata.json``.

    Loaded models are cached per (model file, backend, device), whatever ``passes``; the file's size
    and modification time are part of the key, so a replaced file is checked and loaded again.

    Args:
        bundle_root: the MONAI bundle folder; default :func:`default_bundle_root`.
        backend: ``"torch"`` for ``models/model.ts`` (TorchScript), ``"onnx"`` for
            ``models/model.onnx`` (ONNX Runtime) or ``"auto"`` (see :func:`resolve_backend`).
        device: one of :data:`usdespeckle.runtime.options.DEVICES` (``"cpu"``, ``"cuda"``).
        passes: mirrorings of each slice to average, one of :data:`PASSES`; default 1, the
            shipped model's setting. Time grows with passes. ``None`` (older callers) means 1.

    Returns:
        A callable :class:`Denoiser`.

    Raises:
        FileNotFoundError: if the model file or ``metadata.json`` is missing (the message says how to
            get the weights).
        ValueError: for an unknown backend or device, an unavailable CUDA, a sha256 that does not
            match the metadata (or is not listed there), unusable metadata, ``passes`` that is
            not in :data:`PASSES`, or a TorchScript export that averages mirrorings itself (one
            before 1.0.0: re-export it as one pass).
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
    # passes only changes the mirroring around the one-pass model: one checked, loaded model for all
    key = (f"{path}:{stat.st_size}:{stat.st_mtime_ns}", backend, device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            metadata = read_metadata(root)
            check_weights(root, rel, metadata)
            divisor = _divisor(metadata, meta_path)
            model = _open_onnx(path, device) if backend == "onnx" else _open_torchscript(path, device)
            _CACHE[key] = Denoiser(path=path, backend=backend, device=device, divisor=divisor, model=model)
        cached = _CACHE[key]
    return cached if cached.passes == passes else dataclasses.replace(cached, passes=passes)


def _classical(method: str) -> Callable[[np.ndarray], np.ndarray]:
    """The classical filter ``method`` (one of :data:`CLASSICAL_METHODS`) with its defaults."""
    from usdespeckle.runtime.filters import (
        FILTERS,  # scipy and scikit-image: imported only when a filter runs
    )

    return FILTERS[method]


def despeckle_array(
    array: np.ndarray,
    method: str = DEFAULT_METHOD,
    *,
    axis: int = DEFAULT_AXIS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    strength: float = DEFAULT_STRENGTH,
    device: str = DEFAULT_DEVICE,
    backend: str = DEFAULT_BACKEND,
    bundle_root: str | os.PathLike | None = None,
    intensity_range: tuple[float, float] | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    passes: int = DEFAULT_PASSES,
    return_uncertainty: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Despeckle a 2D image or a 3D volume slice by slice.

    Intensities are mapped to [0, 1] by a robust min-max of the whole array (0.5 and 99.5
    percentiles, clipped), despeckled, mapped back to the input's range, then blended with the
    input: ``out = (1 - strength) * input + strength * despeckled``.

    Args:
        array: 2D ``(H, W)`` or 3D array of real values, finite. Never modified.
        method: ``"denoiser"`` (the shipped pix2pix generator) or a classical method in
            :data:`CLASSICAL_METHODS` (``usdespeckle.runtime.filters.FILTERS`` with its defaults).
        axis: for 3D, the numpy axis slices are taken along (0, 1 or 2; for a SimpleITK array
            ``(k, j, i)``, 0 means slices of constant k). Ignored for 2D.
        batch_size: slices per model call, >= 1.
        strength: blend factor in [0, 1]; 0 returns the input values exactly (as float32).
        device: ``"cpu"`` or ``"cuda"`` (denoiser only).
        backend: ``"auto"``, ``"torch"`` or ``"onnx"`` (denoiser only; see :func:`resolve_backend`).
        bundle_root: the bundle folder; default :func:`default_bundle_root`.
        intensity_range: ``(low, high)`` mapped to [0, 1] instead of the robust range (use it to
            process parts of a volume with one mapping).
        progress: called as ``progress(done, total)`` in slices, after each batch.
        cancel: a callable returning True, or a ``threading.Event`` that is set, to stop.
        passes: denoiser only: mirrorings of each slice averaged (1, 2, 4 or 8; default 1, the
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
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if return_uncertainty and method != "denoiser":
        raise ValueError(
            f"return_uncertainty needs the denoiser (the spread of its mirrored passes); {method!r} has none"
        )
    array = check_volume(array, axis=axis, batch_size=batch_size)
    if strength == 0.0:  # nothing to blend in: the input values, exactly
        output = array.astype(np.float32)
        if progress is not None:
            n = len(slices_along(array, axis))
            progress(n, n)
        return (output, np.zeros_like(output)) if return_uncertainty else output

    if method == "denoiser":
        denoiser = load_denoiser(bundle_root, backend=backend, device=device, passes=passes)
        step = int(batch_size)
    else:
        despeckle_slice = _classical(method)
        step = 1
    intensity = IntensityMap.of(array, intensity_range)

    def despeckle_batch(src: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        mapped = intensity.to_unit(src)
        spread = None
        if method == "denoiser":
            result, spread = _denoise(denoiser, mapped, return_uncertainty)
        else:
            result = np.stack([np.asarray(despeckle_slice(s), dtype=np.float32) for s in mapped])
        result = intensity.from_unit(result)
        if strength < 1.0:
            result = np.float32(1.0 - strength) * src + np.float32(strength) * result
        if spread is None:
            return result
        return result, spread * np.float32(intensity.scale * strength)

    outputs = run_slicewise(
        array,
        despeckle_batch,
        axis=axis,
        batch_size=step,
        outputs=2 if return_uncertainty else 1,
        progress=progress,
        cancel=cancel,
        name=f"method {method!r}",
        remedy="the model file may be corrupt (restore the bundle) or the filter diverged.",
    )
    return outputs if return_uncertainty else outputs[0]


def _denoise(denoiser: Denoiser, mapped: np.ndarray, spread: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The denoiser on ``(B, H, W)`` in [0, 1], padded to its divisor and cropped back.

    Returns:
        The average of ``denoiser.passes`` mirrorings, and with ``spread`` the standard deviation
        of all 8 mirrorings' outputs (else None); float32 ``(B, H, W)`` on the [0, 1] scale.
    """
    padded, (rows, cols) = pad_to_multiple(mapped, denoiser.divisor)
    if not spread:
        return denoiser(padded[:, np.newaxis])[:, 0, rows, cols], None
    every = np.stack(denoiser.mirrored(padded[:, np.newaxis], len(MIRRORINGS)))[:, :, 0, rows, cols]
    return every[: denoiser.passes].mean(axis=0, dtype=np.float32), every.std(axis=0)


def despeckle_image(
    image: sitk.Image, method: str = DEFAULT_METHOD, **kwargs: Any
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
        ValueError: for a vector-pixel image (call ``usdespeckle.runtime.io.to_grey`` first), and as
            :func:`despeckle_array`.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"image has {image.GetNumberOfComponentsPerPixel()} components per pixel; "
            "convert it with usdespeckle.runtime.io.to_grey first"
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
