"""Input handling and local statistics shared by the classical despecklers (private)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

EPS = 1e-8


# --------------------------------------------------------------------------------------------------
# shared input handling
# --------------------------------------------------------------------------------------------------
def check_image(image: np.ndarray, name: str) -> np.ndarray:
    """Validate a 2D/3D finite real image and return it as a float64 array (a view or a copy)."""
    arr = np.asarray(image)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"despeckle_{name}: expected a real grey image, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"despeckle_{name}: expected a 2D (H, W) image or a 3D volume, got shape {arr.shape}; "
            "squeeze channel axes or split 4D data first"
        )
    if min(arr.shape) < 1:
        raise ValueError(f"despeckle_{name}: image has an empty axis, shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(
            f"despeckle_{name}: image has {bad} NaN/inf values; replace them (np.nan_to_num) first"
        )
    return arr.astype(np.float64, copy=False)


def apply_slicewise(
    fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, axis: int, name: str
) -> np.ndarray:
    """Apply a 2D filter to a 2D image or to each slice of a 3D volume along ``axis``; float32 out."""
    arr = check_image(image, name)
    if arr.ndim == 2:
        return np.array(fn(arr), dtype=np.float32, copy=True)
    if not -3 <= axis <= 2:
        raise ValueError(f"despeckle_{name}: axis must be in [-3, 2] for a 3D volume, got {axis}")
    moved = np.moveaxis(arr, axis, 0)
    out = np.empty(moved.shape, dtype=np.float32)
    for k in range(moved.shape[0]):
        out[k] = fn(moved[k])
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def normalise(img: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Map an image to [0, 1] by its min/max; returns (u, low, span). span is 0 for a constant image."""
    low = float(img.min())
    span = float(img.max()) - low
    if span <= 0:
        return np.zeros_like(img), low, 0.0
    return (img - low) / span, low, span


def odd_size(value: int, name: str, method: str, minimum: int = 1) -> int:
    if int(value) != value or value < minimum or value % 2 == 0:
        raise ValueError(f"despeckle_{method}: {name} must be an odd integer >= {minimum}, got {value}")
    return int(value)


def positive(value: float, name: str, method: str) -> float:
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"despeckle_{method}: {name} must be a positive finite number, got {value}")
    return float(value)


def local_stats(img: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and (non-negative) variance over a ``size`` x ``size`` window, reflect-padded."""
    mean = ndimage.uniform_filter(img, size=size, mode="reflect")
    mean_sq = ndimage.uniform_filter(img * img, size=size, mode="reflect")
    return mean, np.maximum(mean_sq - mean * mean, 0.0)


def noise_std(img: np.ndarray, size: int = 7) -> float:
    """Noise standard deviation as the median local standard deviation over ``size`` windows.

    Hand-written instead of ``skimage.restoration.estimate_sigma``: the wavelet (finest-scale MAD)
    estimate assumes white noise and returns about 0 for spatially correlated speckle (cells of
    several pixels), which leaves NLM and BM3D doing nothing. Speckle dominates most windows of a
    B-mode image, so the median local std follows the speckle; on textured images it overestimates.
    """
    _, var = local_stats(img, size)
    return float(np.sqrt(np.median(var)))


def noise_cv2(
    img: np.ndarray, mean: np.ndarray, var: np.ndarray, noise_cv: float | None, method: str
) -> float:
    """Squared speckle coefficient of variation: given, or the median local value (speckle dominates)."""
    if noise_cv is not None:
        return positive(noise_cv, "noise_cv", method) ** 2
    ci2 = var / np.maximum(mean * mean, EPS)
    return float(np.median(ci2[mean > EPS])) if np.any(mean > EPS) else 0.0
