"""Dead-leaves images: synthetic content without limit for training the denoiser.

A dead-leaves image is a stack of occluding disks whose radii follow a power law
``p(r) ~ r**-alpha`` on ``[r_min, r_max]``; with ``alpha`` near 3 it is scale invariant and its
statistics (edges at every scale, flat regions, occlusions) resemble natural images. Denoisers
trained on such images come close to those trained on photographs (Achddou, Gousseau and Ladjal,
"Synthetic images as a regularity prior for image restoration neural networks", SSVM 2021,
doi:10.1007/978-3-030-75549-2_27). Hand-written: no maintained Python library draws them.

Each leaf here has a random grey level, and optionally a smooth linear gradient across it (tissue
echogenicity is rarely flat); the image may be blurred slightly so that edges are not all one pixel.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["dead_leaves"]


def _radii(rng: np.random.Generator, count: int, r_min: float, r_max: float, alpha: float) -> np.ndarray:
    """``count`` radii drawn from ``p(r) ~ r**-alpha`` on [r_min, r_max] by inverting the CDF."""
    u = rng.random(count)
    if abs(alpha - 1.0) < 1e-9:
        return r_min * (r_max / r_min) ** u
    a = 1.0 - alpha
    return (r_min**a + u * (r_max**a - r_min**a)) ** (1.0 / a)


def dead_leaves(
    size: int,
    rng: np.random.Generator,
    *,
    r_min: float = 1.5,
    r_max: float | None = None,
    alpha: float = 3.0,
    leaves: int = 400,
    gradient_prob: float = 0.5,
    blur_px: tuple[float, float] = (0.0, 1.2),
) -> np.ndarray:
    """One dead-leaves image.

    Args:
        size: image side, pixels (>= 8).
        rng: random generator.
        r_min: smallest disk radius, pixels (> 0).
        r_max: largest disk radius, pixels; default ``size / 2``.
        alpha: power-law exponent of the radii (3 is scale invariant).
        leaves: disks drawn; the last drawn lies on top (the background shows where none falls).
        gradient_prob: probability that a leaf carries a linear grey-level gradient (up to +-0.3
            across its diameter) instead of a flat grey level.
        blur_px: range of the Gaussian blur (standard deviation, pixels) applied to the whole
            image; 0 keeps one-pixel edges.

    Returns:
        float32 (size, size) image in [0, 1].

    Raises:
        ValueError: a size under 8 or invalid radii.
    """
    if size < 8:
        raise ValueError(f"dead_leaves: size must be at least 8 pixels; got {size}.")
    r_max = size / 2.0 if r_max is None else float(r_max)
    if not 0.0 < r_min < r_max:
        raise ValueError(f"dead_leaves: need 0 < r_min < r_max; got r_min={r_min}, r_max={r_max}.")
    image = np.full((size, size), rng.random(), dtype=np.float32)
    radii = _radii(rng, leaves, r_min, r_max, alpha)
    centres = rng.uniform(-0.1 * size, 1.1 * size, size=(leaves, 2))
    greys = rng.random(leaves)
    for (cy, cx), r, grey in zip(centres, radii, greys, strict=True):
        r0, r1 = max(0, math.floor(cy - r)), min(size, math.ceil(cy + r) + 1)
        c0, c1 = max(0, math.floor(cx - r)), min(size, math.ceil(cx + r) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        dy = np.arange(r0, r1, dtype=np.float32)[:, None] - cy
        dx = np.arange(c0, c1, dtype=np.float32)[None, :] - cx
        inside = dy * dy + dx * dx <= r * r
        if rng.random() < gradient_prob:
            angle = rng.uniform(0.0, 2.0 * math.pi)
            slope = rng.uniform(-0.3, 0.3) / max(r, 1.0)
            value = grey + slope * (dy * math.cos(angle) + dx * math.sin(angle))
            image[r0:r1, c0:c1][inside] = np.broadcast_to(value, inside.shape)[inside]
        else:
            image[r0:r1, c0:c1][inside] = grey
    sigma = rng.uniform(*blur_px)
    if sigma > 0.05:
        image = ndimage.gaussian_filter(image, sigma, mode="reflect")
    return np.clip(image, 0.0, 1.0).astype(np.float32)
