"""No-reference judges of a despeckler on real scans, where the input is the only reference.

:func:`ratio_image_quality` (the ratio-image estimator M of Gomez, Ospina and Frery, adapted to
log-compressed B-mode), :func:`echogenicity_fidelity` (does the output keep the tissue's
echogenicity up to a monotonic grey-level change?), :func:`temporal_flicker` (cine loops), and
:func:`box_mask` for the boxes stored with real scans (``regions`` of a ``datalist_real_bmode.json``
item). The region metrics on those boxes (gCNR, CNR, ENL: :func:`usdespeckle.metrics.region_contrast`)
and the full-reference metrics are in :mod:`usdespeckle.metrics.reference`; the package
:mod:`usdespeckle.metrics` hands on the names of both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from usdespeckle.metrics.checks import check_field, check_pair, region_values

__all__ = [
    "Box",
    "Fidelity",
    "RatioImageQuality",
    "box_mask",
    "echogenicity_fidelity",
    "ratio_image_quality",
    "temporal_flicker",
]

# --------------------------------------------------------------------------------------------------
# Boxes stored with real scans
# --------------------------------------------------------------------------------------------------
Box = Sequence[int]  # half-open pixel box [r0, c0, r1, c1]: rows r0..r1-1, columns c0..c1-1


def box_mask(shape: tuple[int, int], box: Box, field: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of a half-open pixel box ``[r0, c0, r1, c1]``, intersected with a field mask.

    Args:
        shape: image shape (H, W).
        box: ``[r0, c0, r1, c1]`` with ``0 <= r0 < r1 <= H`` and ``0 <= c0 < c1 <= W``.
        field: optional valid-pixel mask (bool, or nonzero = valid) of the same shape.

    Returns:
        bool (H, W) array, True inside the box and the field.

    Raises:
        ValueError: for a box that is not four integers inside the image, or a field of another shape.
    """
    if len(box) != 4 or any(int(v) != v for v in box):
        raise ValueError(f"box_mask: a box is four integers [r0, c0, r1, c1], got {list(box)}")
    r0, c0, r1, c1 = (int(v) for v in box)
    height, width = int(shape[0]), int(shape[1])
    if not (0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width):
        raise ValueError(f"box_mask: box {[r0, c0, r1, c1]} is empty or outside an image of shape {shape}")
    mask = np.zeros((height, width), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask & check_field(field, (height, width), "box_mask")


# --------------------------------------------------------------------------------------------------
# Ratio-image estimator M (Gomez, Ospina, Frery 2017), in the display domain
# --------------------------------------------------------------------------------------------------
class RatioImageQuality(NamedTuple):
    """The estimator M and its two terms (0 = a residual that is pure speckle; lower is better)."""

    m: float  #: ``first_order + delta_h``
    first_order: float  #: mean over the homogeneous areas of ``(r_enl + r_mu) / 2``, >= 0
    delta_h: float  #: ``100 |h0 - mean(h_shuffled)| / h0``, percent


def _glcm_homogeneity(
    values: np.ndarray, inside: np.ndarray, low: float, high: float, levels: int, offsets: tuple[int, int]
) -> float:
    """Haralick homogeneity of the pixels inside a mask (vertical and horizontal neighbours, mean).

    Values inside are quantised to grey levels 1..levels over [low, high]; outside pixels get level 0,
    whose row and column are dropped from the co-occurrence matrix, so only pairs of two inside
    pixels count.
    """
    from skimage.feature import graycomatrix, graycoprops

    quantised = np.zeros(values.shape, dtype=np.uint8)
    if high > low:
        scaled = np.clip((values[inside] - low) / (high - low), 0.0, 1.0)
        quantised[inside] = 1 + np.minimum((scaled * levels).astype(np.int64), levels - 1)
    else:
        quantised[inside] = 1
    vertical, horizontal = offsets
    # graycomatrix gives every (distance, angle) pair: keep (vertical, pi/2) and (horizontal, 0).
    matrix = graycomatrix(
        quantised,
        distances=[vertical, horizontal],
        angles=[0.0, np.pi / 2],
        levels=levels + 1,
        symmetric=True,
    )
    matrix = np.stack([matrix[:, :, 1, 0], matrix[:, :, 0, 1]], axis=-1)[:, :, None, :]
    matrix = matrix[1:, 1:].astype(np.float64)  # graycoprops normalises each matrix to sum 1
    return float(np.mean(graycoprops(matrix, "homogeneity")))


def ratio_image_quality(
    observed: np.ndarray,
    despeckled: np.ndarray,
    homogeneous: Sequence[Box] | Sequence[np.ndarray],
    field: np.ndarray | None = None,
    *,
    distance: int | tuple[int, int] = 1,
    levels: int = 16,
    shuffles: int = 10,
    seed: int = 0,
) -> RatioImageQuality:
    """Unassisted quality of a despeckler from its residual: the estimator M, for B-mode images.

    Gomez, Ospina and Frery judge a SAR despeckler by the ratio image ``observed / despeckled``,
    which should be pure speckle. A B-mode image is log-compressed, so the ratio becomes the
    residual ``r = observed - despeckled`` in the display domain (hand-written adaptation; no
    library computes M):

    - first-order term, per homogeneous area ``i``: ``r_mu = |mean(r)| / std(observed)`` (the
      residual should have no mean, as the ratio should have mean 1) and
      ``r_enl = |var(observed) / var(r) - 1|`` (the residual should carry all the speckle: on
      log-compressed data the ENL is a decreasing function of the variance, so the paper's
      ``|ENL(observed) - ENL(ratio)| / ENL(observed)`` becomes this ratio of variances);
      ``first_order = mean_i (r_enl + r_mu) / 2`` (the paper sums over the areas; the mean keeps
      scans with different numbers of areas comparable);
    - second-order term: ``delta_h = 100 |h0 - h_g| / h0`` with ``h0`` the Haralick homogeneity of
      the residual inside the field (``skimage.feature.graycomatrix``/``graycoprops``, ``levels``
      grey levels over the residual's 1-99 percentile range, neighbours ``distance`` pixels apart
      vertically and horizontally) and ``h_g`` its mean over ``shuffles`` random permutations of
      the residual's field pixels: structure left in the residual makes it differ from its shuffled
      versions. Ultrasound speckle is correlated over its grain (SAR speckle is nearly white), so
      give ``distance`` about 1.5 times the grain's autocorrelation FWHM: pure speckle is then
      uncorrelated at that offset;
    - ``M = first_order + delta_h``; 0 for an ideal despeckler. The identity (``despeckled =
      observed``) leaves no residual: ``r_enl`` and M are infinite, as in the paper.

    Args:
        observed: speckled input image (H, W), display domain (e.g. [0, 1]).
        despeckled: the method's output, same shape.
        homogeneous: homogeneous areas, as half-open boxes ``[r0, c0, r1, c1]`` or boolean masks.
        field: optional valid-pixel mask; areas and the texture term are restricted to it.
        distance: co-occurrence offset in pixels, one value or (vertical, horizontal), >= 1.
        levels: grey levels of the co-occurrence matrix (>= 2).
        shuffles: number of shuffled residuals (>= 1).
        seed: seed of the shuffles.

    Returns:
        :class:`RatioImageQuality` ``(m, first_order, delta_h)``.

    Raises:
        ValueError: different shapes, non-finite values, no homogeneous area, an area with fewer
            than 2 field pixels or a constant observed area, bad ``levels``/``shuffles``.

    References:
        Gomez, L., Ospina, R., Frery, A. C. (2017). Unassisted quantitative evaluation of
        despeckling filters. Remote Sensing 9(4):389. DOI:10.3390/rs9040389
    """
    out, obs = check_pair(despeckled, observed, "ratio_image_quality")
    if int(levels) != levels or levels < 2 or int(shuffles) != shuffles or shuffles < 1:
        raise ValueError(f"ratio_image_quality: levels >= 2 and shuffles >= 1, got {levels}, {shuffles}")
    if len(homogeneous) == 0:
        raise ValueError("ratio_image_quality: give at least one homogeneous area")
    inside = check_field(field, obs.shape, "ratio_image_quality")
    residual = obs - out
    terms = []
    for area in homogeneous:
        if isinstance(area, np.ndarray) and area.shape == obs.shape:
            area_mask = check_field(area, obs.shape, "ratio_image_quality") & inside
        else:
            area_mask = box_mask(obs.shape, area, inside)  # type: ignore[arg-type]
        z = region_values(obs, area_mask, "ratio_image_quality", "homogeneous area")
        r = residual[area_mask]
        if z.var() == 0:
            raise ValueError("ratio_image_quality: a homogeneous area of the observed image is constant")
        r_mu = abs(r.mean()) / np.sqrt(z.var())
        r_enl = float("inf") if r.var() == 0 else abs(z.var() / r.var() - 1.0)
        terms.append(0.5 * (r_enl + r_mu))
    values = residual[inside]
    if values.size < 2:
        raise ValueError("ratio_image_quality: the field has fewer than 2 pixels")
    offsets = (distance, distance) if np.isscalar(distance) else tuple(distance)  # type: ignore[arg-type]
    if len(offsets) != 2 or any(int(d) != d or d < 1 for d in offsets):
        raise ValueError(f"ratio_image_quality: distance must be integers >= 1, got {distance}")
    low, high = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    offsets = (int(offsets[0]), int(offsets[1]))
    h0 = _glcm_homogeneity(residual, inside, low, high, int(levels), offsets)
    rng = np.random.default_rng(int(seed))
    shuffled = residual.copy()
    h_shuffled = []
    for _ in range(int(shuffles)):
        shuffled[inside] = rng.permutation(values)
        h_shuffled.append(_glcm_homogeneity(shuffled, inside, low, high, int(levels), offsets))
    delta_h = 100.0 * abs(h0 - float(np.mean(h_shuffled))) / h0
    first_order = float(np.mean(terms))
    return RatioImageQuality(first_order + delta_h, first_order, float(delta_h))


# --------------------------------------------------------------------------------------------------
# Echogenicity fidelity and temporal flicker
# --------------------------------------------------------------------------------------------------
class Fidelity(NamedTuple):
    """Echogenicity fidelity: correlation (1 = perfect) and PSNR (dB) after the monotonic fit."""

    correlation: float
    psnr: float


def _masked_lowpass(image: np.ndarray, inside: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass that uses field pixels only (normalised convolution): no black leaks in."""
    weights = ndimage.gaussian_filter(inside.astype(np.float64), sigma, mode="constant")
    blurred = ndimage.gaussian_filter(np.where(inside, image, 0.0), sigma, mode="constant")
    return blurred / np.maximum(weights, 1e-12)


def echogenicity_fidelity(
    output: np.ndarray, observed: np.ndarray, field: np.ndarray | None = None, *, sigma: float = 4.0
) -> Fidelity:
    """Does the output keep the tissue's echogenicity, up to a monotonic grey-level change?

    Both images are low-passed (Gaussian of ``sigma`` pixels, a few times the speckle grain, using
    field pixels only) so that only echogenicity remains; the output's low-pass is then mapped onto
    the input's by the best non-decreasing function (``sklearn.isotonic.IsotonicRegression``) and
    compared with it inside the field: Pearson correlation and PSNR (data range 1). A despeckler
    may change contrast (any monotonic change is forgiven) but not erase or invent tissue: sending a
    range of echogenicities to black merges them into one grey level, an error no monotonic map
    removes.

    Args:
        output: despeckled image (H, W), display domain in [0, 1].
        observed: the speckled input, same shape.
        field: optional valid-pixel mask (bool, or nonzero = valid); pixels outside are ignored.
        sigma: low-pass scale in pixels (> 0); about 2-3 times the speckle grain's FWHM.

    Returns:
        :class:`Fidelity` ``(correlation, psnr)``; ``(1.0, inf)`` for an output equal to the input.

    Raises:
        ValueError: different shapes, non-finite values, a bad sigma, fewer than 2 field pixels or
            a constant input inside the field.
    """
    from sklearn.isotonic import IsotonicRegression

    out, obs = check_pair(output, observed, "echogenicity_fidelity")
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"echogenicity_fidelity: sigma must be a positive number of pixels, got {sigma}")
    inside = check_field(field, obs.shape, "echogenicity_fidelity")
    if inside.sum() < 2:
        raise ValueError("echogenicity_fidelity: the field has fewer than 2 pixels")
    target = _masked_lowpass(obs, inside, sigma)[inside]
    source = _masked_lowpass(out, inside, sigma)[inside]
    if np.ptp(target) == 0:
        raise ValueError("echogenicity_fidelity: the input is constant inside the field")
    fitted = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(source, target).predict(source)
    correlation = 0.0 if np.ptp(fitted) == 0 else float(np.corrcoef(fitted, target)[0, 1])
    mse = float(np.mean((fitted - target) ** 2))
    return Fidelity(correlation, float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse)))


def temporal_flicker(output: np.ndarray, observed: np.ndarray, field: np.ndarray | None = None) -> float:
    """Frame-to-frame change of a despeckled cine, relative to the input's.

    ``mean_t mean_field |out[t+1] - out[t]|`` divided by the same for the input: 1 for the input
    itself, 0 for a frozen output, below 1 when a method calms the loop, above 1 when it adds
    flicker of its own. It also falls when a method lowers the contrast, so read it beside
    :func:`echogenicity_fidelity`.

    Args:
        output: despeckled frames (T, H, W), T >= 2.
        observed: input frames, same shape.
        field: valid-pixel mask (H, W) shared by all frames, or (T, H, W); a pixel counts for a
            pair of frames when it is valid in both.

    Returns:
        relative flicker (dimensionless, >= 0).

    Raises:
        ValueError: different shapes, fewer than 2 frames, non-finite values, or an input whose
            frames do not change inside the field.
    """
    out, obs = check_pair(output, observed, "temporal_flicker")
    if out.ndim != 3 or out.shape[0] < 2:
        raise ValueError(f"temporal_flicker: needs frames (T, H, W) with T >= 2, got shape {out.shape}")
    if field is None:
        inside = np.ones(out.shape, dtype=bool)
    else:
        m = np.asarray(field)
        m = m > 0 if m.dtype != bool else m
        inside = np.broadcast_to(m, out.shape) if m.shape == out.shape[1:] else m
        if inside.shape != out.shape:
            raise ValueError(
                f"temporal_flicker: field mask shape {m.shape} fits neither {out.shape[1:]} nor {out.shape}"
            )
    pairs = inside[1:] & inside[:-1]
    if pairs.sum() == 0:
        raise ValueError("temporal_flicker: no pixel is inside the field in two consecutive frames")
    moved_in = float(np.abs(np.diff(obs, axis=0))[pairs].mean())
    if moved_in == 0:
        raise ValueError("temporal_flicker: the input frames do not change inside the field")
    return float(np.abs(np.diff(out, axis=0))[pairs].mean()) / moved_in
