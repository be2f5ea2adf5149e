"""The simulator's input: a coarse "low-level" echogenicity map of an image.

Following Vieira et al. (IEEE Access 12:45811, 2024), the simulator GAN does not see the full image
but a simplified map of it: grey levels normalised to 0-255, quantised to 8 levels
``32 * floor(z / 32)`` (0, 32, ..., 224), then smoothed by a 3x3 median filter applied twice, which
removes isolated pixels and thin lines while keeping region boundaries.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from usdespeckle.simulation.channels import map_channels

__all__ = ["LEVEL_STEP", "LowLevelMapd", "low_level_map"]

LEVEL_STEP = 32  # grey levels (0-255 scale) per quantisation bin: 8 levels 0, 32, ..., 224


def low_level_map(image: np.ndarray) -> np.ndarray:
    """Compute the low-level map of a grey image.

    Args:
        image: 2D grey image (H, W) in any range; it is min-max normalised to 0-255 first
            (a constant image maps to zeros).

    Returns:
        float32 (H, W) map in [0, 224/255], taking at most the 8 values ``32 k / 255``, k = 0..7.

    Raises:
        ValueError: if the image is not 2D, is empty, or holds NaN or infinite values.
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"low_level_map expects a non-empty 2D image (H, W); got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or infinite values; clean or mask them before low_level_map.")
    lo, hi = float(arr.min()), float(arr.max())
    z = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    quantised = LEVEL_STEP * np.floor(np.clip(z, 0.0, 255.0) / LEVEL_STEP)
    smoothed = ndimage.median_filter(quantised, size=3, mode="reflect")
    smoothed = ndimage.median_filter(smoothed, size=3, mode="reflect")
    return (smoothed / 255.0).astype(np.float32)


class LowLevelMapd(MapTransform):
    """Dictionary transform applying :func:`low_level_map` to each channel of channel-first data.

    Args:
        keys: keys of channel-first (C, H, W) images (numpy or torch; MetaTensor meta kept).
        allow_missing_keys: skip absent keys instead of raising KeyError.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = map_channels(d[key], low_level_map, key, "LowLevelMapd")
        return d
