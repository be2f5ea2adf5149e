"""The classical despecklers of local statistics and diffusion: median, Lee, Frost, Kuan, SRAD and
total variation, each ``despeckle_<name>(image, <params>, *, axis=0) -> float32`` (the signature
:mod:`usdespeckle.runtime.filters` describes).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from usdespeckle.runtime.filters.common import (
    EPS,
    apply_slicewise,
    local_stats,
    noise_cv2,
    normalise,
    odd_size,
    positive,
)


# --------------------------------------------------------------------------------------------------
# median
# --------------------------------------------------------------------------------------------------
def despeckle_median(image: np.ndarray, size: int = 5, *, axis: int = 0) -> np.ndarray:
    """Median filter over a ``size`` x ``size`` window (scipy.ndimage.median_filter, reflect padding).

    Args:
        image: grey image (H, W) or volume, any finite range (usually [0, 1]).
        size: odd window side, pixels (>= 1).
        axis: slicing axis of a 3D volume.

    Returns:
        float32 array, same shape as ``image``; a new array.

    Raises:
        ValueError: non-finite values, not 2D/3D, or an even/negative size.

    Notes:
        O(N size^2) per slice. The baseline despeckler: larger windows remove more speckle and round
        corners. The default 5 won over the tuning sets (Rayleigh, Gamma-looks, correlated);
        9 to 11 suit strong, coarse log-compressed speckle alone.

    References:
        Tukey, J. W. (1977). Exploratory Data Analysis. Addison-Wesley. Huang, T. S., Yang, G. J.,
        Tang, G. Y. (1979). A fast two-dimensional median filtering algorithm. IEEE TASSP 27(1):13-18.
        DOI:10.1109/TASSP.1979.1163188
    """
    size = odd_size(size, "size", "median")
    return apply_slicewise(
        lambda s: ndimage.median_filter(s, size=size, mode="reflect"), image, axis, "median"
    )


# --------------------------------------------------------------------------------------------------
# Lee, Kuan, Frost: local-statistics filters (hand-written: no maintained vectorised library has them)
# --------------------------------------------------------------------------------------------------
def despeckle_lee(
    image: np.ndarray, size: int = 5, noise_cv: float | None = 0.7, *, axis: int = 0
) -> np.ndarray:
    """Lee's local-statistics (MMSE) filter for multiplicative speckle.

    ``out = m + k (x - m)``, ``k = max(0, 1 - Cu^2 / Ci^2)``, with the local mean ``m`` and local
    coefficient of variation ``Ci`` over a ``size`` window and the speckle's coefficient of
    variation ``Cu``.

    Args:
        image: grey image (H, W) or volume, any finite range (usually [0, 1]).
        size: odd window side, pixels.
        noise_cv: speckle coefficient of variation ``Cu`` (std/mean of pure speckle, > 0); None
            estimates it per slice as the median local coefficient of variation.
        axis: slicing axis of a 3D volume.

    Returns:
        float32 array, same shape as ``image``; a new array.

    Raises:
        ValueError: non-finite values, not 2D/3D, or invalid parameters.

    Notes:
        O(N) per slice (box filters). Larger ``noise_cv`` smooths more. The default (5, 0.7) won
        over the tuning sets; it adapts on amplitude speckle (single-look ``Cu`` is 0.52), but on
        log-compressed B-mode, whose local ``Ci`` is only about 0.1-0.3, it is a 5x5 box mean
        almost everywhere. For edge-adaptive smoothing of log-compressed images pass a small
        ``noise_cv`` (0.05-0.2) or None (estimated), at some cost in PSNR on strong speckle.

    References:
        Lee, J.-S. (1980). Digital image enhancement and noise filtering by use of local statistics.
        IEEE TPAMI 2(2):165-168. DOI:10.1109/TPAMI.1980.4766994
    """
    size = odd_size(size, "size", "lee", 3)

    def run(img: np.ndarray) -> np.ndarray:
        mean, var = local_stats(img, size)
        cu2 = noise_cv2(img, mean, var, noise_cv, "lee")
        ci2 = var / np.maximum(mean * mean, EPS)
        k = np.clip(1.0 - cu2 / np.maximum(ci2, EPS), 0.0, 1.0)
        return mean + k * (img - mean)

    return apply_slicewise(run, image, axis, "lee")


def despeckle_kuan(
    image: np.ndarray, size: int = 5, noise_cv: float | None = 0.7, *, axis: int = 0
) -> np.ndarray:
    """Kuan's adaptive (LLMMSE) filter for signal-dependent, multiplicative speckle.

    ``out = m + k (x - m)``, ``k = (1 - Cu^2 / Ci^2) / (1 + Cu^2)`` clipped to [0, 1].

    Args:
        image: grey image (H, W) or volume, any finite range (usually [0, 1]).
        size: odd window side, pixels.
        noise_cv: speckle coefficient of variation (> 0); None estimates it per slice as the median
            local coefficient of variation.
        axis: slicing axis of a 3D volume.

    Returns:
        float32 array, same shape as ``image``; a new array.

    Raises:
        ValueError: non-finite values, not 2D/3D, or invalid parameters.

    Notes:
        O(N) per slice. Like Lee's filter without the first-order approximation; slightly stronger
        smoothing for the same ``noise_cv`` (weights smaller by ``1 / (1 + Cu^2)``, so the two
        differ most at large ``noise_cv``). Defaults and the advice on log-compressed images as
        for :func:`despeckle_lee`.

    References:
        Kuan, D. T., Sawchuk, A. A., Strand, T. C., Chavel, P. (1985). Adaptive noise smoothing filter
        for images with signal-dependent noise. IEEE TPAMI 7(2):165-177. DOI:10.1109/TPAMI.1985.4767641
    """
    size = odd_size(size, "size", "kuan", 3)

    def run(img: np.ndarray) -> np.ndarray:
        mean, var = local_stats(img, size)
        cu2 = noise_cv2(img, mean, var, noise_cv, "kuan")
        ci2 = var / np.maximum(mean * mean, EPS)
        k = np.clip((1.0 - cu2 / np.maximum(ci2, EPS)) / (1.0 + cu2), 0.0, 1.0)
        return mean + k * (img - mean)

    return apply_slicewise(run, image, axis, "kuan")


def despeckle_frost(image: np.ndarray, size: int = 9, damping: float = 0.5, *, axis: int = 0) -> np.ndarray:
    """Frost's adaptive filter: an exponential kernel whose decay follows the local variation.

    ``out(p) = sum_d w(p, d) x(p + d) / sum_d w(p, d)``, ``w = exp(-damping * Ci^2(p) * |d|)``, with
    ``Ci`` the local coefficient of variation at ``p`` and ``|d|`` the Euclidean offset in pixels.

    Args:
        image: grey image (H, W) or volume, any finite range (usually [0, 1]).
        size: odd window side, pixels.
        damping: kernel damping factor ``K`` (> 0); larger keeps more edges and removes less speckle.
        axis: slicing axis of a 3D volume.

    Returns:
        float32 array, same shape as ``image``; a new array.

    Raises:
        ValueError: non-finite values, not 2D/3D, or invalid parameters.

    Notes:
        O(N size^2) per slice, vectorised as one shifted array per window offset (no per-pixel
        loop), hand-written here. Homogeneous regions (small ``Ci``) get a near-box kernel, edges a
        sharp one. ``Ci^2`` is normalised by its median so that ``damping`` does not depend on the
        speckle's strength.

    References:
        Frost, V. S., Stiles, J. A., Shanmugan, K. S., Holtzman, J. C. (1982). A model for radar images
        and its application to adaptive digital filtering of multiplicative noise. IEEE TPAMI
        4(2):157-166. DOI:10.1109/TPAMI.1982.4767223
    """
    size = odd_size(size, "size", "frost", 3)
    damping = positive(damping, "damping", "frost")
    r = size // 2

    def run(img: np.ndarray) -> np.ndarray:
        mean, var = local_stats(img, size)
        ci2 = var / np.maximum(mean * mean, EPS)
        scale = float(np.median(ci2))
        alpha = damping * ci2 / (scale if scale > EPS else 1.0)
        padded = np.pad(img, r, mode="reflect")
        acc = np.zeros_like(img)
        wsum = np.zeros_like(img)
        h, w = img.shape
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                weight = np.exp(-alpha * np.hypot(dy, dx))
                acc += weight * padded[r + dy : r + dy + h, r + dx : r + dx + w]
                wsum += weight
        return acc / wsum

    return apply_slicewise(run, image, axis, "frost")


# --------------------------------------------------------------------------------------------------
# SRAD
# --------------------------------------------------------------------------------------------------
def despeckle_srad(
    image: np.ndarray,
    n_iter: int = 25,
    dt: float = 0.2,
    q0: float | None = None,
    *,
    axis: int = 0,
) -> np.ndarray:
    """Speckle-reducing anisotropic diffusion (SRAD) with an explicit 4-neighbour scheme.

    Our own numpy implementation: itk-ultrasound's ``SpeckleReducingAnisotropicDiffusionImageFilter``
    could not be loaded with itk 5.4.7 and returned NaN on [0, 1] images (docs: FACTS.md). For
    stability the slice is mapped to [1/255, 1 + 1/255] (no division by zero in dark speckle),
    the diffusion coefficient is clipped to [0, 1], and ``dt <= 0.25``.

    Args:
        image: grey image (H, W) or volume, any finite range (usually [0, 1]).
        n_iter: number of diffusion steps (>= 1).
        dt: time step, in (0, 0.25].
        q0: speckle scale ``q0`` (coefficient of variation of pure speckle, > 0), kept constant;
            None estimates it at every step as the median instantaneous coefficient of variation.
        axis: slicing axis of a 3D volume.

    Returns:
        float32 array, same shape as ``image``; a new array.

    Raises:
        ValueError: non-finite values, not 2D/3D, or invalid parameters.

    Notes:
        O(N n_iter) per slice. ``n_iter * dt`` is the diffusion time: more smooths more. The
        automatic ``q0`` follows the speckle as it is removed, like the paper's ``q0 exp(-rho t)``.

    References:
        Yu, Y., Acton, S. T. (2002). Speckle reducing anisotropic diffusion. IEEE TIP
        11(11):1260-1270. DOI:10.1109/TIP.2002.804276
    """
    if int(n_iter) != n_iter or n_iter < 1:
        raise ValueError(f"despeckle_srad: n_iter must be an integer >= 1, got {n_iter}")
    if not (np.isfinite(dt) and 0 < dt <= 0.25):
        raise ValueError(f"despeckle_srad: dt must be in (0, 0.25] for a stable explicit scheme, got {dt}")
    fixed_q02 = None if q0 is None else positive(q0, "q0", "srad") ** 2
    offset = 1.0 / 255.0

    def run(img: np.ndarray) -> np.ndarray:
        u, low, span = normalise(img)
        if span == 0:
            return img.copy()
        u = u + offset
        for _ in range(int(n_iter)):
            p = np.pad(u, 1, mode="edge")  # Neumann boundary
            dn = p[:-2, 1:-1] - u
            ds = p[2:, 1:-1] - u
            dw = p[1:-1, :-2] - u
            de = p[1:-1, 2:] - u
            grad2 = (dn * dn + ds * ds + dw * dw + de * de) / (u * u)
            lap = (dn + ds + dw + de) / u
            q2 = (0.5 * grad2 - lap * lap / 16.0) / np.square(1.0 + 0.25 * lap)
            q2 = np.maximum(q2, 0.0)
            q02 = fixed_q02 if fixed_q02 is not None else max(float(np.median(q2)), EPS)
            c = np.clip(1.0 / (1.0 + (q2 - q02) / (q02 * (1.0 + q02))), 0.0, 1.0)
            cp = np.pad(c, 1, mode="edge")
            # divergence of c * grad u, with c taken at the south / east neighbours as in the paper
            div = cp[2:, 1:-1] * ds + c * dn + cp[1:-1, 2:] * de + c * dw
            u = u + dt * div
        return (u - offset) * span + low

    return apply_slicewise(run, image, axis, "srad")


# --------------------------------------------------------------------------------------------------
# TV (scikit-image); OBNLM and NLM live in usdespeckle.runtime.filters.nlm, BM3D and MuLoG in
# usdespeckle.runtime.filters.bm3d
# --------------------------------------------------------------------------------------------------
def despeckle_tv(
    image: np.ndarray, weight: float = 0.2, n_iter_max: int = 200, *, axis: int = 0
) -> np.ndarray:
    """Total-variation denoising (``skimage.restoration.denoise_tv_chambolle``).

    Args:
        image: grey image (H, W) or volume, any finite range (mapped to [0, 1] internally, so
            ``weight`` does not depend on the range).
        weight: TV weight (> 0), for the [0, 1]-normalised slice; larger smooths more.
        n_iter_max: maximum number of Chambolle iterations (>= 1).
        axis: slicing axis of a 3D volume.

    Returns:
        float32 array, same shape as ``image``; a new array.

    Raises:
        ValueError: non-finite values, not 2D/3D, or invalid parameters.

    Notes:
        O(N n_iter) per slice. Piecewise-constant results ("cartoon" look) at large weights.

    References:
        Chambolle, A. (2004). An algorithm for total variation minimization and applications.
        J. Math. Imaging Vis. 20:89-97. DOI:10.1023/B:JMIV.0000011325.36760.1e
    """
    weight = positive(weight, "weight", "tv")
    if int(n_iter_max) != n_iter_max or n_iter_max < 1:
        raise ValueError(f"despeckle_tv: n_iter_max must be an integer >= 1, got {n_iter_max}")
    from skimage.restoration import denoise_tv_chambolle

    def run(img: np.ndarray) -> np.ndarray:
        u, low, span = normalise(img)
        if span == 0:
            return img.copy()
        return denoise_tv_chambolle(u, weight=weight, max_num_iter=int(n_iter_max)) * span + low

    return apply_slicewise(run, image, axis, "tv")
