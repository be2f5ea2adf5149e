"""Non-local means despecklers: OBNLM (Bayesian, Pearson distance) and scikit-image's NLM.

Both follow the shared signature of :mod:`usdespeckle.runtime.filters` (``despeckle_<name>(image, <params>,
*, axis=0) -> float32``) and are registered there in ``FILTERS``. Each
restores a pixel as a weighted mean of the pixels whose neighbourhoods look alike: OBNLM with the
Pearson distance of the multiplicative model of log-compressed B-mode, NLM with the Euclidean
distance of additive noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from usdespeckle.runtime.filters.common import EPS, apply_slicewise, noise_std, normalise, positive

__all__ = ["despeckle_nlm", "despeckle_obnlm"]


def despeckle_obnlm(
    image: np.ndarray,
    h: float = 0.2,
    block_radius: int = 2,
    search_radius: int = 5,
    step: int = 2,
    *,
    axis: int = 0,
) -> np.ndarray:
    """Optimized Bayesian non-local means (OBNLM) with the Pearson distance, block-wise.

    For each block centre ``c`` (on a grid of spacing ``step``) and each offset ``s`` in the search
    window, the weight is ``exp(-d_P(c, c+s) / h^2)`` with the Pearson distance
    ``d_P = mean_block((u(c+b) - u(c+s+b))^2 / u(c+s+b))`` (the model ``u = v + sqrt(v) n`` of
    log-compressed B-mode); the whole block is restored as the weighted mean of the shifted blocks
    and overlapping blocks are averaged.

    Args:
        image: grey image (H, W) or volume, any finite range (mapped to [0, 1] internally).
        h: smoothing parameter (> 0) in units of the [0, 1]-normalised slice; larger smooths more.
        block_radius: block half-side ``a``, pixels (blocks are ``2a+1`` wide).
        search_radius: search-window half-side ``M``, pixels.
        step: spacing of the block centres ``n`` (1 = every pixel).
        axis: slicing axis of a 3D volume.

    Returns:
        float32 array, same shape as ``image``; a new array.

    Raises:
        ValueError: non-finite values, not 2D/3D, or invalid parameters.

    Notes:
        O(N (2M+1)^2) per slice, vectorised over pixels (one shifted array per offset; hand-written,
        no library implements OBNLM). The centre weight is the largest other weight, as in the
        paper. The paper's pre-selection of blocks by mean/variance is omitted: with vectorised
        distances it would not save time. ``h`` matters most; ``a = 1..2`` and ``M = 5`` are the
        paper's choices for 2D.

    References:
        Coupe, P., Hellier, P., Kervrann, C., Barillot, C. (2009). Nonlocal means-based speckle
        filtering for ultrasound images. IEEE TIP 18(10):2221-2229. DOI:10.1109/TIP.2009.2024064
    """
    h = positive(h, "h", "obnlm")
    for value, name in ((block_radius, "block_radius"), (search_radius, "search_radius")):
        if int(value) != value or value < 1:
            raise ValueError(f"despeckle_obnlm: {name} must be an integer >= 1, got {value}")
    if int(step) != step or step < 1:
        raise ValueError(f"despeckle_obnlm: step must be an integer >= 1, got {step}")
    a, m, n = int(block_radius), int(search_radius), int(step)
    block = 2 * a + 1
    if n > block:
        raise ValueError(f"despeckle_obnlm: step ({n}) must be <= the block width 2*block_radius+1 ({block})")

    def run(img: np.ndarray) -> np.ndarray:
        u, low, span = normalise(img)
        if span == 0:
            return img.copy()
        u = u.astype(np.float32)  # float32 halves memory traffic; 121 shifted arrays per slice
        hgt, wid = u.shape
        pad = m + a
        up = np.pad(u, pad, mode="reflect")
        offsets = [(dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)]
        weights = np.empty((len(offsets), hgt, wid), dtype=np.float32)
        centre = offsets.index((0, 0))
        for k, (dy, dx) in enumerate(offsets):
            if k == centre:
                continue
            s = up[pad + dy : pad + dy + hgt, pad + dx : pad + dx + wid]
            pearson = (u - s) ** 2 / np.maximum(s, 1e-3)
            dist = ndimage.uniform_filter(pearson, size=block, mode="reflect")
            weights[k] = np.exp(-dist / (h * h))
        weights[centre] = 0.0
        weights[centre] = weights.max(axis=0)
        wnorm = weights / np.maximum(weights.sum(axis=0), EPS)
        # only block centres on the grid restore blocks; a pixel averages the blocks covering it
        grid = np.zeros((hgt, wid), np.float32)
        grid[::n, ::n] = 1.0
        grid[-1, ::n] = 1.0
        grid[::n, -1] = 1.0
        grid[-1, -1] = 1.0
        coverage = ndimage.uniform_filter(grid, size=block, mode="constant")
        out = np.zeros((hgt, wid), np.float32)
        for k, (dy, dx) in enumerate(offsets):
            # block centred at c restores pixel p = c + b with u(p + s): spread the centre weights
            # over the block, then multiply by the shifted image at p.
            spread = ndimage.uniform_filter(wnorm[k] * grid, size=block, mode="constant")
            out += spread * up[pad + dy : pad + dy + hgt, pad + dx : pad + dx + wid]
        out /= np.maximum(coverage, EPS)
        return out * span + low

    return apply_slicewise(run, image, axis, "obnlm")


def despeckle_nlm(
    image: np.ndarray,
    h_scale: float = 1.6,
    patch_size: int = 7,
    patch_distance: int = 6,
    *,
    axis: int = 0,
) -> np.ndarray:
    """Non-local means (``skimage.restoration.denoise_nl_means``, fast mode, sigma estimated).

    The noise sigma is the median local standard deviation (7x7 windows), which, unlike
    ``skimage.restoration.estimate_sigma``, sees spatially correlated speckle.

    Args:
        image: grey image (H, W) or volume, any finite range.
        h_scale: cut-off ``h`` as a multiple of the estimated noise sigma (> 0); larger smooths more.
        patch_size: patch side, pixels (>= 1).
        patch_distance: search half-side, pixels (>= 1).
        axis: slicing axis of a 3D volume.

    Returns:
        float32 array, same shape as ``image``; a new array.

    Raises:
        ValueError: non-finite values, not 2D/3D, or invalid parameters.

    Notes:
        O(N patch_distance^2) per slice in fast mode. Assumes additive Gaussian noise: on
        log-compressed B-mode speckle is close to additive, on linear images it is not (see OBNLM).

    References:
        Buades, A., Coll, B., Morel, J.-M. (2005). A non-local algorithm for image denoising. CVPR,
        60-65. DOI:10.1109/CVPR.2005.38. Darbon, J. et al. (2008). Fast nonlocal filtering applied
        to electron cryomicroscopy. ISBI, 1331-1334. DOI:10.1109/ISBI.2008.4541250
    """
    h_scale = positive(h_scale, "h_scale", "nlm")
    for value, name in ((patch_size, "patch_size"), (patch_distance, "patch_distance")):
        if int(value) != value or value < 1:
            raise ValueError(f"despeckle_nlm: {name} must be an integer >= 1, got {value}")
    from skimage.restoration import denoise_nl_means

    def run(img: np.ndarray) -> np.ndarray:
        sigma = noise_std(img)
        if sigma <= 0:
            return img.copy()
        return denoise_nl_means(
            img,
            patch_size=int(patch_size),
            patch_distance=int(patch_distance),
            h=h_scale * sigma,
            sigma=sigma,
            fast_mode=True,
        )

    return apply_slicewise(run, image, axis, "nlm")
