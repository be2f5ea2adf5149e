"""Speckle models: the method's Rayleigh model and a multiplicative Gamma "looks" model.

The Rayleigh model follows Vieira et al. (IEEE Access 12:45811, 2024, doi:10.1109/ACCESS.2024.3381630):
the clean grey image sets the Rayleigh scale of the echo envelope on a decimated grid (the speckle
grain is larger than a pixel), the envelope is re-interpolated to full size and log-compressed with a
random gain and offset, as a scanner's display chain does.

The Gamma model is the classical fully developed speckle model for multi-look intensity images
(Goodman, "Speckle Phenomena in Optics", 2007): the intensity ``y**2`` is the clean intensity
``x**2`` times a Gamma(L, 1/L) variable of mean 1 and variance 1/L, so its equivalent number of
looks ``ENL = mean(y**2)**2 / var(y**2)`` equals L on a constant region.

Both come as functions on 2D float images in [0, 1] and as MONAI dictionary transforms on
channel-first ``(C, H, W)`` arrays or tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage

from usdespeckle.simulation.channels import map_channels

__all__ = [
    "RandGammaSpeckled",
    "RandRayleighSpeckled",
    "gamma_speckle",
    "rayleigh_envelope",
    "rayleigh_speckle",
]


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` as a finite 2D float64 array or raise ValueError."""
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D grey image (H, W); got shape {arr.shape}. Pass one slice.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}).")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; clean the image first.")
    return arr


def _check_range(value: Sequence[float], name: str, low: float | None = None) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if hi < lo or (low is not None and lo < low):
        bound = f" and low >= {low}" if low is not None else ""
        raise ValueError(f"{name} must be (low, high) with low <= high{bound}; got {tuple(value)}.")
    return lo, hi


def rayleigh_envelope(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    scale_range: Sequence[float] = (5.0, 255.0),
    decimation: int = 4,
) -> np.ndarray:
    """Draw the Rayleigh echo envelope of the method, before log compression.

    The image is mapped linearly from [0, 1] to ``scale_range``, sampled every ``decimation``
    pixels, a Rayleigh variable with that scale (sigma) is drawn on the coarse grid, and the result
    is linearly interpolated back to the full size.

    Args:
        image: clean grey image (H, W), values in [0, 1] (values outside are clipped).
        rng: random generator.
        scale_range: Rayleigh scale (sigma) for image values 0 and 1, grey levels (0-255 scale).
        decimation: coarse grid step in pixels (>= 1); 1 draws one variable per pixel.

    Returns:
        float32 (H, W) envelope, >= 0, in grey levels; mean/std is 1.91 on a constant region
        when ``decimation == 1``.

    Raises:
        ValueError: if the image is not 2D or not finite, or the settings are invalid.
    """
    arr = np.clip(_check_image(image), 0.0, 1.0)
    lo, hi = _check_range(scale_range, "scale_range", low=0.0)
    if int(decimation) != decimation or decimation < 1:
        raise ValueError(f"decimation must be an integer >= 1; got {decimation}.")
    d = int(decimation)
    sigma = lo + (hi - lo) * arr
    coarse = sigma[::d, ::d]
    # numpy's Rayleigh rejects scale 0, so draw a unit variable and multiply.
    envelope = coarse * rng.rayleigh(1.0, size=coarse.shape)
    if d == 1:
        return envelope.astype(np.float32)
    # Full-size pixel i lies at coarse coordinate i / d; beyond the last coarse sample hold its value.
    rows = np.arange(arr.shape[0], dtype=np.float64) / d
    cols = np.arange(arr.shape[1], dtype=np.float64) / d
    grid = np.meshgrid(rows, cols, indexing="ij")
    full = ndimage.map_coordinates(envelope, grid, order=1, mode="nearest")
    return np.maximum(full, 0.0).astype(np.float32)


def rayleigh_speckle(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    scale_range: Sequence[float] = (5.0, 255.0),
    decimation: int = 4,
    gain_range: Sequence[float] = (10.0, 50.0),
    offset_range: Sequence[float] = (-50.0, 50.0),
) -> np.ndarray:
    """Speckle a clean image with the method's Rayleigh model and log compression.

    ``y = rayleigh_envelope(image)``, then ``z = a * log(y + 1) + b`` with ``a ~ U(gain_range)``,
    ``b ~ U(offset_range)``, clipped to [0, 255] and divided by 255.

    Args:
        image: clean grey image (H, W), values in [0, 1].
        rng: random generator.
        scale_range: Rayleigh scale for image values 0 and 1, grey levels.
        decimation: coarse grid step of the speckle, pixels.
        gain_range: range of the log-compression gain ``a``, grey levels per neper.
        offset_range: range of the log-compression offset ``b``, grey levels.

    Returns:
        float32 (H, W) speckled image in [0, 1]; a new array.

    Raises:
        ValueError: if the image is not 2D or not finite, or a range is invalid.
    """
    gain_lo, gain_hi = _check_range(gain_range, "gain_range")
    off_lo, off_hi = _check_range(offset_range, "offset_range")
    envelope = rayleigh_envelope(image, rng, scale_range=scale_range, decimation=decimation)
    gain = rng.uniform(gain_lo, gain_hi)
    offset = rng.uniform(off_lo, off_hi)
    compressed = gain * np.log1p(envelope.astype(np.float64)) + offset
    return (np.clip(compressed, 0.0, 255.0) / 255.0).astype(np.float32)


def gamma_speckle(image: np.ndarray, looks: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative speckle with ``looks`` looks: ``y = x * sqrt(G)``, ``G ~ Gamma(L, 1/L)``.

    On a constant region the intensity ``y**2`` has ``ENL = mean(y**2)**2 / var(y**2) = L``
    (before clipping; clipping at 1 is negligible for ``x <= 0.5`` and ``L >= 1``).

    Args:
        image: clean grey amplitude image (H, W), values in [0, 1].
        looks: number of looks L > 0 (1 is fully developed single-look speckle).
        rng: random generator.

    Returns:
        float32 (H, W) speckled amplitude image, clipped to [0, 1]; a new array.

    Raises:
        ValueError: if the image is not 2D or not finite, or ``looks <= 0``.
    """
    arr = np.clip(_check_image(image), 0.0, 1.0)
    if not np.isfinite(looks) or looks <= 0:
        raise ValueError(f"looks must be a positive number; got {looks}.")
    gain = rng.gamma(shape=looks, scale=1.0 / looks, size=arr.shape)
    return np.clip(arr * np.sqrt(gain), 0.0, 1.0).astype(np.float32)


class _RandSpeckled(RandomizableTransform, MapTransform):
    """Shared logic: per call one seed per key from ``self.R``, applied channel by channel."""

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self._seeds: list[int] = []

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._seeds = [int(s) for s in self.R.randint(0, 2**31 - 1, size=len(self.keys))]

    def _speckle(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        for key, seed in zip(self.keys, self._seeds, strict=True):
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key {key!r} not in data (keys: {list(d)}); set allow_missing_keys=True.")
            speckle = functools.partial(self._speckle, rng=np.random.default_rng(seed))
            d[key] = map_channels(
                d[key], speckle if self._do_transform else np.copy, key, type(self).__name__
            )
        return d


class RandRayleighSpeckled(_RandSpeckled):
    """Dictionary transform: the method's Rayleigh speckle (see :func:`rayleigh_speckle`).

    Typical use makes the noisy input from the clean target:
    ``CopyItemsd(keys="label", names="image")`` then ``RandRayleighSpeckled(keys="image")``.

    Args:
        keys: keys of channel-first (C, H, W) images in [0, 1] (numpy or torch; MetaTensor meta kept).
        prob: probability of speckling; otherwise a float32 copy is returned.
        scale_range, decimation, gain_range, offset_range: as in :func:`rayleigh_speckle`.
        allow_missing_keys: skip absent keys instead of raising KeyError.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        scale_range: Sequence[float] = (5.0, 255.0),
        decimation: int = 4,
        gain_range: Sequence[float] = (10.0, 50.0),
        offset_range: Sequence[float] = (-50.0, 50.0),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        self.scale_range = _check_range(scale_range, "scale_range", low=0.0)
        if int(decimation) != decimation or decimation < 1:
            raise ValueError(f"decimation must be an integer >= 1; got {decimation}.")
        self.decimation = int(decimation)
        self.gain_range = _check_range(gain_range, "gain_range")
        self.offset_range = _check_range(offset_range, "offset_range")

    def _speckle(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rayleigh_speckle(
            image,
            rng,
            scale_range=self.scale_range,
            decimation=self.decimation,
            gain_range=self.gain_range,
            offset_range=self.offset_range,
        )


class RandGammaSpeckled(_RandSpeckled):
    """Dictionary transform: multiplicative Gamma speckle with a random number of looks.

    The number of looks is drawn uniformly from ``looks_range`` (a real number) per image.

    Args:
        keys: keys of channel-first (C, H, W) images in [0, 1] (numpy or torch; MetaTensor meta kept).
        looks_range: (min, max) number of looks, > 0.
        prob: probability of speckling; otherwise a float32 copy is returned.
        allow_missing_keys: skip absent keys instead of raising KeyError.
    """

    def __init__(
        self,
        keys: KeysCollection,
        looks_range: Sequence[float] = (1.0, 16.0),
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        lo, hi = _check_range(looks_range, "looks_range")
        if lo <= 0:
            raise ValueError(f"looks_range must be positive; got {tuple(looks_range)}.")
        self.looks_range = (lo, hi)

    def _speckle(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        looks = rng.uniform(*self.looks_range)
        return gamma_speckle(image, looks, rng)
