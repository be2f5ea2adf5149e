"""Image-quality metrics for despeckling: reference-based and reference-free.

Reference-based (need the clean image): :func:`psnr`, :func:`ssim` (scikit-image, ``data_range=1``
for [0, 1] images), their affine-fitted versions :func:`psnr_affine` / :func:`ssim_affine` (the
output's gain and offset are fitted to the reference first, so a method is not penalised for a
global intensity change such as log compression), and :func:`edge_preservation_index`.

Reference-free (regions of one image): :func:`enl`, :func:`speckle_snr`, :func:`cnr`, :func:`gcnr`,
and on the boxes stored with real scans :func:`box_mask`, :func:`region_contrast`.

No-reference judges of a despeckler on real scans (the input is the only reference) live in
:mod:`usdespeckle.metrics.real`: :func:`ratio_image_quality`
(the ratio-image estimator M of Gomez, Ospina and Frery, adapted to log-compressed B-mode),
:func:`echogenicity_fidelity` (does the output keep the tissue's echogenicity up to a monotonic
grey-level change?), :func:`temporal_flicker` (cine loops) and :func:`box_mask`.

All functions take ``(output, reference)`` or ``(image, mask...)`` in that order and return a float
(or a small named tuple of floats).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from usdespeckle.metrics.checks import check_pair, region_values
from usdespeckle.metrics.real import (
    box_mask,
)

__all__ = [
    "affine_fit",
    "cnr",
    "edge_preservation_index",
    "enl",
    "gcnr",
    "psnr",
    "psnr_affine",
    "region_contrast",
    "speckle_snr",
    "ssim",
    "ssim_affine",
]


def psnr(output: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio, dB (``skimage.metrics.peak_signal_noise_ratio``).

    Args:
        output: despeckled image, any shape.
        reference: clean image, same shape.
        data_range: peak-to-peak range of the images (1 for [0, 1] images).

    Returns:
        PSNR in dB; ``inf`` for identical images.

    Raises:
        ValueError: different shapes or non-finite values.
    """
    from skimage.metrics import peak_signal_noise_ratio

    out, ref = check_pair(output, reference, "psnr")
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(ref, out, data_range=data_range))


def ssim(output: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Structural similarity (``skimage.metrics.structural_similarity``, 7x7 window).

    Args:
        output: despeckled image (H, W) (or 3D), each side >= 7.
        reference: clean image, same shape.
        data_range: peak-to-peak range of the images (1 for [0, 1] images).

    Returns:
        mean SSIM in [-1, 1]; 1 for identical images.

    Raises:
        ValueError: different shapes, non-finite values, or an image smaller than 7 pixels.
    """
    from skimage.metrics import structural_similarity

    out, ref = check_pair(output, reference, "ssim")
    if min(out.shape) < 7:
        raise ValueError(f"ssim: each image side must be >= 7 pixels, got shape {out.shape}")
    return float(structural_similarity(ref, out, data_range=data_range))


def affine_fit(output: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Least-squares gain and offset of ``output`` to ``reference``: returns ``a * output + b``.

    Args:
        output: image to fit, any shape.
        reference: target image, same shape.

    Returns:
        float64 array ``a * output + b`` minimising ``||a * output + b - reference||^2``; for a
        constant output, the reference's mean everywhere.

    Raises:
        ValueError: different shapes or non-finite values.
    """
    out, ref = check_pair(output, reference, "affine_fit")
    design = np.stack([out.ravel(), np.ones(out.size)], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(design, ref.ravel(), rcond=None)
    return gain * out + offset


def psnr_affine(output: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR (dB) after :func:`affine_fit` of the output to the reference."""
    return psnr(affine_fit(output, reference), reference, data_range)


def ssim_affine(output: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM after :func:`affine_fit` of the output to the reference."""
    return ssim(affine_fit(output, reference), reference, data_range)


def enl(image: np.ndarray, mask: np.ndarray) -> float:
    """Equivalent number of looks ``mean^2 / var`` over a homogeneous region.

    For an intensity (power) image of fully developed speckle averaged over ``L`` looks the ENL
    is ``L``; for amplitude images square the image first. Higher means smoother.

    Args:
        image: grey image, any shape.
        mask: boolean array, same shape, selecting a homogeneous region (>= 2 pixels).

    Returns:
        ENL (dimensionless, >= 0); ``inf`` for a constant region.

    Raises:
        ValueError: mask shape/dtype mismatch, fewer than 2 pixels, non-finite values.
    """
    values = region_values(image, mask, "enl")
    var = values.var()
    return float("inf") if var == 0 else float(values.mean() ** 2 / var)


def speckle_snr(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Speckle signal-to-noise ratio ``mean / std`` over a homogeneous region (or the whole image).

    Fully developed speckle has ``SNR = sqrt(pi / (4 - pi)) = 1.91`` on the linear envelope
    (Rayleigh) and 1 on the intensity (Burckhardt, 1978, DOI:10.1364/AO.17.000773); despeckling
    raises it. The standard deviation is the population one (``ddof=0``).

    Args:
        image: grey image or linear envelope (not log-compressed for the 1.91 reference), any shape.
        mask: boolean array, same shape (>= 2 pixels); None uses every value.

    Returns:
        mean/std (dimensionless); ``inf`` for a constant region.

    Raises:
        ValueError: mask shape/dtype mismatch, fewer than 2 values, non-finite values.
    """
    if mask is None:
        mask = np.ones(np.shape(image), dtype=bool)
    values = region_values(image, mask, "speckle_snr")
    std = values.std()
    return float("inf") if std == 0 else float(values.mean() / std)


def cnr(image: np.ndarray, mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Contrast-to-noise ratio ``|mean_a - mean_b| / sqrt(var_a + var_b)`` of two regions.

    Args:
        image: grey image, any shape.
        mask_a: boolean mask of the first region (e.g. a lesion), >= 2 pixels.
        mask_b: boolean mask of the second region (e.g. background), >= 2 pixels.

    Returns:
        CNR (dimensionless, >= 0); ``inf`` when both regions are constant but differ.

    Raises:
        ValueError: mask shape/dtype mismatch, fewer than 2 pixels, non-finite values.
    """
    a = region_values(image, mask_a, "cnr", "mask_a")
    b = region_values(image, mask_b, "cnr", "mask_b")
    noise = np.sqrt(a.var() + b.var())
    diff = abs(a.mean() - b.mean())
    if noise == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / noise)


def gcnr(image: np.ndarray, mask_a: np.ndarray, mask_b: np.ndarray, bins: int = 256) -> float:
    """Generalised contrast-to-noise ratio: ``1 - overlap`` of the two regions' histograms.

    ``gCNR = 1 - sum_k min(p_a(k), p_b(k))`` with normalised histograms on shared bins spanning both
    regions. 0 for identical distributions, 1 for separable ones; unlike CNR it does not change
    under monotonic intensity transforms such as log compression (for fine enough bins).

    Args:
        image: grey image, any shape.
        mask_a: boolean mask of the first region, >= 2 pixels.
        mask_b: boolean mask of the second region, >= 2 pixels.
        bins: number of histogram bins (>= 2).

    Returns:
        gCNR in [0, 1].

    Raises:
        ValueError: mask shape/dtype mismatch, fewer than 2 pixels, non-finite values, bins < 2.

    References:
        Rodriguez-Molares, A. et al. (2020). The generalized contrast-to-noise ratio: a formal
        definition for lesion detectability. IEEE TUFFC 67(4):745-759. DOI:10.1109/TUFFC.2019.2956855
    """
    if int(bins) != bins or bins < 2:
        raise ValueError(f"gcnr: bins must be an integer >= 2, got {bins}")
    a = region_values(image, mask_a, "gcnr", "mask_a")
    b = region_values(image, mask_b, "gcnr", "mask_b")
    low = min(a.min(), b.min())
    high = max(a.max(), b.max())
    if high == low:
        return 0.0
    edges = np.linspace(low, high, int(bins) + 1)
    pa = np.histogram(a, bins=edges)[0] / a.size
    pb = np.histogram(b, bins=edges)[0] / b.size
    return float(1.0 - np.minimum(pa, pb).sum())


def edge_preservation_index(output: np.ndarray, reference: np.ndarray) -> float:
    """Edge preservation index: correlation of the Laplacians of output and reference.

    ``EPI = sum(dO dR) / sqrt(sum(dO^2) sum(dR^2))`` with ``dX = L(X) - mean(L(X))`` and ``L`` the
    discrete Laplacian (``scipy.ndimage.laplace``). 1 for identical edges; near 0 when edges are lost.

    Args:
        output: despeckled image (2D or 3D).
        reference: clean (or speckled) reference image, same shape.

    Returns:
        EPI in [-1, 1].

    Raises:
        ValueError: different shapes, non-finite values, or a reference/output with no edges
            (constant Laplacian), for which EPI is undefined.

    References:
        Sattar, F., Floreby, L., Salomonsson, G., Lovstrom, B. (1997). Image enhancement based on a
        nonlinear multiscale method. IEEE TIP 6(6):888-895. DOI:10.1109/83.585239
    """
    out, ref = check_pair(output, reference, "edge_preservation_index")
    d_out = ndimage.laplace(out)
    d_ref = ndimage.laplace(ref)
    d_out -= d_out.mean()
    d_ref -= d_ref.mean()
    denom = np.sqrt(np.sum(d_out * d_out) * np.sum(d_ref * d_ref))
    if denom == 0:
        raise ValueError("edge_preservation_index: output or reference has a constant Laplacian (no edges)")
    return float(np.sum(d_out * d_ref) / denom)


# --------------------------------------------------------------------------------------------------
# Regions stored with real scans
# --------------------------------------------------------------------------------------------------
def region_contrast(
    image: np.ndarray, regions: Mapping[str, object], field: np.ndarray | None = None
) -> dict[str, float]:
    """gCNR and CNR of the ``dark`` against the ``bright`` box, and ENL of the ``homogeneous`` boxes.

    The boxes are those stored with a real scan (``regions`` of a ``datalist_real_bmode.json``
    item); every box is intersected with the field mask.

    Args:
        image: grey image (H, W) in the display (log-compressed) domain.
        regions: ``{"dark": box, "bright": box, "homogeneous": [box, ...]}`` with half-open boxes
            ``[r0, c0, r1, c1]`` (see :func:`box_mask`).
        field: optional valid-pixel mask of the same shape.

    Returns:
        ``{"gcnr": ..., "cnr": ..., "enl": ...}``; ENL is the mean of :func:`enl` over the
        homogeneous boxes (NaN when there is none).

    Raises:
        ValueError: for a missing dark/bright box, a bad box or a box with fewer than 2 field pixels.
    """
    img = np.asarray(image, dtype=np.float64)
    for key in ("dark", "bright"):
        if key not in regions:
            raise ValueError(f"region_contrast: regions need a {key!r} box; got keys {sorted(regions)}")
    dark = box_mask(img.shape, regions["dark"], field)  # type: ignore[arg-type]
    bright = box_mask(img.shape, regions["bright"], field)  # type: ignore[arg-type]
    looks = [enl(img, box_mask(img.shape, b, field)) for b in regions.get("homogeneous", [])]  # type: ignore[union-attr]
    return {
        "gcnr": gcnr(img, dark, bright),
        "cnr": cnr(img, dark, bright),
        "enl": float(np.mean(looks)) if looks else float("nan"),
    }
