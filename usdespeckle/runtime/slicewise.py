"""The slice-wise runner under the library's 2D models: a 2D image or a 3D volume, one batch at a time.

Despeckling (:func:`usdespeckle.runtime.inference.despeckle_array`) and simulation
(:func:`usdespeckle.gan.simulator.simulate_array`) share it: the input checks, the slices along one numpy
axis (views, no copy of the volume), the output preallocated and filled batch by batch (peak memory
near input + output + one batch), ``progress(done, total)`` after each batch, cancellation between
batches, and the refusal of non-finite outputs. The helpers the models need around it live here
too: the robust mapping of intensities to [0, 1] and back, and reflection padding of slices to the
network's size divisor.

The loop is ours rather than MONAI's ``SliceInferer``: that inferer needs the whole volume as one
tensor and has no progress callback or cancellation. Only numpy is imported: the module runs inside
3D Slicer without torch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from usdespeckle.runtime.errors import DespeckleCancelled
from usdespeckle.runtime.options import DEFAULT_AXIS, DEFAULT_BATCH_SIZE, PERCENTILES

__all__ = [
    "MIN_SLICE_SIZE",
    "Cancel",
    "IntensityMap",
    "Progress",
    "check_volume",
    "is_cancelled",
    "pad_to_multiple",
    "robust_range",
    "run_slicewise",
    "slices_along",
]

#: Smallest in-plane side of a slice, pixels.
MIN_SLICE_SIZE = 8
#: Largest number of values used to estimate the percentiles (a strided sample beyond that).
_PERCENTILE_SAMPLE = 1_000_000

#: ``progress(done, total)``, in slices.
Progress = Callable[[int, int], None]
#: A callable that returns True to stop, or a ``threading.Event`` that is set to stop.
Cancel = Callable[[], bool] | threading.Event
#: Maps a float32 batch of slices ``(B, H, W)`` to one float32 array ``(B, H, W)`` or a tuple of them.
BatchFunction = Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, ...]]


def check_volume(
    array: np.ndarray, *, axis: int = DEFAULT_AXIS, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Check an input of the runner and return it as an array (never a copy when it is one).

    Args:
        array: 2D ``(H, W)`` or 3D array of real, finite values.
        axis: for 3D, the numpy axis slices are taken along (0, 1 or 2, or -3..-1).
        batch_size: slices per batch, >= 1.

    Returns:
        ``np.asarray(array)``.

    Raises:
        ValueError: a shape that is not 2D or 3D, non-real values, a bad axis or batch size, an
            empty array, NaN or infinite values, or slices smaller than :data:`MIN_SLICE_SIZE`.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"array must be 2D (H, W) or 3D, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"array must hold real numbers, got dtype {array.dtype}")
    if array.ndim == 3 and axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2 for a 3D array, got {axis}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if array.size == 0:
        raise ValueError(f"array is empty (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError("array holds NaN or infinite values; fix or mask them first")
    h, w = slices_along(array, axis).shape[1:]
    if min(h, w) < MIN_SLICE_SIZE:
        raise ValueError(
            f"slices along axis {axis} are {h}x{w} pixels (array shape {array.shape}); each side needs "
            f"at least {MIN_SLICE_SIZE}. Choose another axis."
        )
    return array


def slices_along(array: np.ndarray, axis: int = DEFAULT_AXIS) -> np.ndarray:
    """The slices of a 2D or 3D array as a ``(n, H, W)`` view (n = 1 for 2D; ``axis`` ignored there).

    Writing into the view writes into ``array``; for a SimpleITK array ``(k, j, i)``, axis 0 gives
    the slices of constant k.
    """
    return array[np.newaxis] if array.ndim == 2 else np.moveaxis(array, axis, 0)


def is_cancelled(cancel: Cancel | None) -> bool:
    """Whether ``cancel`` (None, a callable or a ``threading.Event``) asks to stop."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def run_slicewise(
    array: np.ndarray,
    process: BatchFunction,
    *,
    axis: int = DEFAULT_AXIS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    outputs: int = 1,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    name: str = "the model",
    remedy: str = "",
) -> tuple[np.ndarray, ...]:
    """Run ``process`` over the slices of ``array``, ``batch_size`` at a time, into new float32 arrays.

    Call :func:`check_volume` first. Each batch is a float32 copy ``(B, H, W)`` of B consecutive
    slices along ``axis`` (the input is never modified); ``process`` returns ``outputs`` float32
    arrays of that shape (one array when ``outputs`` is 1), written into the matching slices of the
    outputs.

    Args:
        array: a checked 2D or 3D array.
        process: the per-batch function.
        axis: the numpy axis of a 3D array slices are taken along.
        batch_size: slices per call of ``process``, >= 1.
        outputs: how many arrays ``process`` returns per batch.
        progress: called as ``progress(done, total)`` in slices, after each batch.
        cancel: checked before each batch.
        name: what ``process`` runs, for the error message (e.g. ``"method 'denoiser'"``).
        remedy: what to do when it returns non-finite values, appended to that message.

    Returns:
        ``outputs`` float32 arrays of the input's shape.

    Raises:
        DespeckleCancelled: ``cancel`` asked to stop (the outputs are discarded).
        ValueError: ``process`` returned NaN or infinite values (nothing is returned).
    """
    volume = slices_along(array, axis)  # a view, no copy
    n = len(volume)
    results = tuple(np.empty(array.shape, dtype=np.float32) for _ in range(outputs))
    views = [slices_along(result, axis) for result in results]
    step = int(batch_size)
    for start in range(0, n, step):
        if is_cancelled(cancel):
            raise DespeckleCancelled(f"cancelled after {start} of {n} slices")
        stop = min(start + step, n)
        produced = process(volume[start:stop].astype(np.float32))  # one batch copy
        produced = produced if isinstance(produced, tuple) else (produced,)
        if not all(np.isfinite(part).all() for part in produced):  # a broken model file, a diverged filter
            raise ValueError(
                f"{name} returned NaN or infinite values on slices {start}-{stop - 1} of {n}; "
                f"{remedy + ' ' if remedy else ''}Nothing was written."
            )
        for view, part in zip(views, produced, strict=True):
            view[start:stop] = part
        if progress is not None:
            progress(stop, n)
    return results


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
    stride = max(1, array.size // _PERCENTILE_SAMPLE)
    if stride == 1:
        sample = np.asarray(array, dtype=np.float64).reshape(-1)
    else:  # every stride-th value in C order, without flattening (a transposed view would be copied)
        sample = np.asarray(
            array[np.unravel_index(np.arange(0, array.size, stride), array.shape)], np.float64
        )
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        lo, hi = float(array.min()), float(array.max())
    return lo, hi


@dataclass(frozen=True)
class IntensityMap:
    """A linear map of intensities ``[low, high]`` onto the models' [0, 1], clipped, and back.

    Attributes:
        low: the input intensity mapped to 0.
        high: the input intensity mapped to 1 (> ``low``).
    """

    low: float
    high: float

    @classmethod
    def of(cls, array: np.ndarray, intensity_range: tuple[float, float] | None = None) -> IntensityMap:
        """The map of ``intensity_range``, or of the :func:`robust_range` of ``array`` when None.

        Raises:
            ValueError: the range is empty (a constant image).
        """
        lo, hi = (float(v) for v in intensity_range) if intensity_range is not None else robust_range(array)
        if not hi > lo:
            raise ValueError(
                f"intensity range ({lo}, {hi}) is empty: the image is constant, nothing to despeckle"
            )
        return cls(lo, hi)

    @property
    def scale(self) -> float:
        """``high - low``, in input units."""
        return self.high - self.low

    def to_unit(self, batch: np.ndarray) -> np.ndarray:
        """float32 input intensities to [0, 1], clipped."""
        return np.clip((batch - np.float32(self.low)) / np.float32(self.scale), 0.0, 1.0)

    def from_unit(self, batch: np.ndarray) -> np.ndarray:
        """float32 values in [0, 1] back to input intensities."""
        return batch * np.float32(self.scale) + np.float32(self.low)


def pad_to_multiple(batch: np.ndarray, divisor: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Pad ``(B, H, W)`` by reflection, symmetrically, to multiples of ``divisor``.

    numpy's ``reflect`` mode repeats the reflection for pads wider than the image, which torch's
    (and so MONAI's ``DivisiblePad``) refuses.

    Args:
        batch: ``(B, H, W)`` slices.
        divisor: H and W are padded up to multiples of this, >= 1.

    Returns:
        The padded batch and the ``(rows, cols)`` slices that crop it back to ``(B, H, W)``.
    """
    h, w = batch.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    top, left = ph // 2, pw // 2
    padded = np.pad(batch, ((0, 0), (top, ph - top), (left, pw - left)), mode="reflect")
    return padded, (slice(top, top + h), slice(left, left + w))
