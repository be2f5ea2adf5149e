"""Speckle noise statistics estimated from one image, for the BM3D-based despecklers.

:func:`estimate_noise_psd` gives the noise power spectral density (PSD) of an image in ``bm3d``'s
``sigma_psd`` convention, estimated from the image's homogeneous tiles or shaped by the probe's
point-spread function; :func:`estimate_looks` the number of looks of log-intensity speckle.

Speckle in a B-mode image is spatially correlated: one speckle grain covers several pixels, set by
the probe's point-spread function (PSF). BM3D's white-noise model then sees the grain as signal.
``bm3d`` accepts the noise's PSD instead of a standard deviation; its convention (read from bm4d
4.2.5's ``bm4d()``, which turns a std ``s`` into ``ones * size * s**2``) is an array of the image's
shape, in unshifted FFT order (zero frequency at ``[0, 0]``), with ``mean(PSD) = noise variance *
number of pixels``.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, signal, special

__all__ = ["estimate_looks", "estimate_noise_psd"]


def _homogeneous_tiles(img: np.ndarray, tile: int) -> np.ndarray:
    """Plane-detrended tiles (n, t, t) from the most homogeneous half of ``img``.

    Tiles of side ``t`` (``tile``, reduced for small images) overlap by half. Tiles with more than
    5% of their pixels at the slice's minimum or maximum (clipped speckle, black background) are
    dropped; of the others, those whose variance is at most the median are kept (speckle dominates
    them; edges and texture raise a tile's variance).
    """
    t = int(min(tile, 2 ** int(np.floor(np.log2(max(min(img.shape) // 2, 4))))))
    t = max(t, 4)
    if min(img.shape) < t:
        t = min(img.shape)
    step = max(t // 2, 1)
    windows = np.lib.stride_tricks.sliding_window_view(img, (t, t))[::step, ::step]
    tiles = windows.reshape(-1, t, t).astype(np.float64)
    low, high = float(img.min()), float(img.max())
    tol = 1e-6 * max(high - low, 1e-12)
    clipped = np.mean((tiles <= low + tol) | (tiles >= high - tol), axis=(1, 2))
    if np.any(clipped <= 0.05):
        tiles = tiles[clipped <= 0.05]
    # least-squares plane per tile (mean and two gradients; the basis is orthogonal)
    yy, xx = np.mgrid[0:t, 0:t].astype(np.float64)
    yy -= yy.mean()
    xx -= xx.mean()
    tiles = tiles - tiles.mean(axis=(1, 2), keepdims=True)
    for basis in (yy, xx):
        norm = float(np.sum(basis * basis))
        if norm > 0:
            coef = np.einsum("nij,ij->n", tiles, basis) / norm
            tiles = tiles - coef[:, None, None] * basis
    var = tiles.var(axis=(1, 2))
    return tiles[var <= np.median(var)]


def _li2(x: np.ndarray) -> np.ndarray:
    """Dilogarithm Li2(x) for x in [0, 1] (scipy's ``spence(z)`` is ``Li2(1 - z)``)."""
    return special.spence(1.0 - np.clip(x, 0.0, 1.0))


def psf_covariance(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Normalised covariance of log-intensity speckle made by ``psf``, circular lags on ``shape``.

    For a circular complex Gaussian field blurred by ``psf`` the complex correlation coefficient at
    lag ``d`` is ``rho(d) = (h * h~)(d) / sum |h|^2`` and the covariance of the log-intensity (and
    of any log-compressed display of it) is ``Li2(|rho|^2)``, whose value at lag 0 is ``pi^2 / 6``
    (Arsenault and April 1976, doi:10.1364/JOSA.66.001160). Returned divided by that value.
    """
    arr = np.asarray(psf)
    if arr.ndim != 2 or min(arr.shape) < 1 or not np.all(np.isfinite(arr)):
        raise ValueError(f"psf must be a finite 2D array (axial, lateral), got shape {arr.shape}")
    energy = float(np.sum(np.abs(arr) ** 2))
    if energy <= 0:
        raise ValueError("psf is all zeros; pass the probe's point-spread function sampled on the pixel grid")
    h, w = shape
    fh, fw = max(h, 2 * arr.shape[0] - 1), max(w, 2 * arr.shape[1] - 1)
    spectrum = np.fft.fft2(arr, s=(fh, fw))
    acf = np.fft.ifft2(np.abs(spectrum) ** 2) / energy  # circular lags on the padded grid, exact
    rho2 = np.abs(acf) ** 2
    # fold the padded lags back onto the image's circular lag grid (lags beyond half the image
    # are dropped: the PSF is expected to be much smaller than the image)
    lags_y = np.fft.fftfreq(fh, 1.0 / fh).astype(int)
    lags_x = np.fft.fftfreq(fw, 1.0 / fw).astype(int)
    keep_y = np.abs(lags_y) <= (h - 1) // 2
    keep_x = np.abs(lags_x) <= (w - 1) // 2
    cov = np.zeros(shape)
    sub = rho2[np.ix_(keep_y, keep_x)]
    cov[np.ix_(lags_y[keep_y] % h, lags_x[keep_x] % w)] = sub
    return _li2(cov) / (np.pi**2 / 6.0)


def estimate_noise_psd(
    image: np.ndarray, *, psf: np.ndarray | None = None, tile: int = 32, max_lag: int | None = None
) -> np.ndarray:
    """Noise power spectral density of a 2D image, in ``bm3d``'s ``sigma_psd`` convention.

    Without ``psf`` the PSD is estimated from the image itself: plane-detrended tiles from the most
    homogeneous half of the image (see Notes) are windowed (Hann) and their periodograms averaged
    (Welch); the resulting autocovariance is kept up to ``max_lag`` pixels with a Tukey taper
    (Blackman-Tukey smoothing) and transformed back on the image's grid. With ``psf`` the shape
    comes from the PSF (the log-intensity covariance ``Li2(|rho|^2)`` of PSF-correlated speckle)
    and only the level (the noise variance) from the image's tiles.

    Args:
        image: 2D grey image in the domain the denoiser will see (for B-mode: the log-compressed
            display image as given).
        psf: optional point-spread function sampled on the image's pixel grid (rows = image rows),
            complex baseband (I/Q) or a real envelope kernel; its shape sets the speckle's
            correlation.
        tile: tile side for the Welch average, pixels (>= 8; reduced for small images).
        max_lag: largest autocovariance lag kept, pixels; default ``3 * tile // 8``.

    Returns:
        float64 array of ``image.shape``, >= 0, unshifted FFT order (zero frequency at ``[0, 0]``),
        with ``mean(PSD) = estimated noise variance * image.size`` (a white noise of std ``s`` has
        ``PSD = s**2 * image.size`` everywhere).

    Raises:
        ValueError: a non-2D image, a tile below 8, or an invalid psf.

    Notes:
        The homogeneous-tile selection keeps texture and edges out of the estimate; the variance it
        measures is that of speckle in the flatter half of the image, which slightly underestimates
        the speckle variance in bright, textured regions (the despecklers' ``sigma_scale`` absorbs it).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"estimate_noise_psd: expected a 2D image, got shape {img.shape}")
    if int(tile) != tile or tile < 8:
        raise ValueError(f"estimate_noise_psd: tile must be an integer >= 8, got {tile}")
    h, w = img.shape
    tiles = _homogeneous_tiles(img, int(tile))
    t = tiles.shape[1]
    window = np.outer(np.hanning(t + 2)[1:-1], np.hanning(t + 2)[1:-1])
    periodogram = np.mean(np.abs(np.fft.fft2(tiles * window)) ** 2, axis=0) / np.sum(window**2)
    acov_tile = np.real(np.fft.ifft2(periodogram))  # circular lags on the tile grid
    lag = 3 * t // 8 if max_lag is None else int(max_lag)
    lag = int(max(1, min(lag, t // 2 - 1, (h - 1) // 2, (w - 1) // 2)))
    # Removing each tile's mean and plane biases every lag by about the same negative amount
    # (the autocovariance of a mean-free tile sums to zero); beyond the kept lags the noise is
    # assumed uncorrelated, so their median measures that bias, which is taken out.
    lags_t = np.abs(np.fft.fftfreq(t, 1.0 / t))
    far = np.maximum.outer(lags_t, lags_t) > lag
    if np.any(far):
        acov_tile = acov_tile - min(float(np.median(acov_tile[far])), 0.0)
    variance = float(max(acov_tile[0, 0], 0.0))
    if variance <= 0:
        return np.zeros((h, w))
    if psf is not None:
        cov = psf_covariance(psf, (h, w)) * variance
    else:
        taper_1d = signal.windows.tukey(2 * lag + 1, alpha=0.5)
        taper = np.outer(taper_1d, taper_1d)
        offsets = np.arange(-lag, lag + 1)
        local = acov_tile[np.ix_(offsets % t, offsets % t)] * taper
        cov = np.zeros((h, w))
        cov[np.ix_(offsets % h, offsets % w)] = local
    psd = np.real(np.fft.fft2(cov))  # per-pixel variance density; its mean is cov[0, 0]
    psd = np.maximum(psd, 1e-3 * variance)  # a PSD is >= 0; bm3d takes its square root
    return psd * (variance / float(np.mean(psd))) * (h * w)


def _homogeneous_variance(img: np.ndarray, tile: int = 32) -> float:
    """Variance of the image inside its most homogeneous, unclipped tiles (see estimate_noise_psd)."""
    tiles = _homogeneous_tiles(img, tile)
    return float(np.mean(tiles.var(axis=(1, 2)) * tiles[0].size / max(tiles[0].size - 3, 1)))


def _inverse_trigamma(value: float) -> float:
    """``L`` with ``polygamma(1, L) = value`` (trigamma is decreasing; L clipped to [0.1, 1e4])."""
    low, high = 0.1, 1e4
    if value >= special.polygamma(1, low):
        return low
    if value <= special.polygamma(1, high):
        return high
    return float(optimize.brentq(lambda x: special.polygamma(1, x) - value, low, high, xtol=1e-6))


def estimate_looks(log_intensity: np.ndarray, tile: int = 32) -> float:
    """Number of looks ``L`` of speckle from a log-intensity image: ``var(log I) = psi1(L)``.

    For L-look intensity speckle ``I = R * G``, ``G ~ Gamma(L, 1/L)``, the log-intensity has variance
    ``psi1(L)`` (trigamma; ``pi^2 / 6`` for L = 1) whatever the reflectivity ``R``. The variance is
    measured in the most homogeneous half of the image (plane-detrended tiles) and inverted.

    Args:
        log_intensity: 2D natural log of the intensity (or any image ``c * log I`` with ``c = 1``).
        tile: tile side, pixels.

    Returns:
        Estimated looks in [0.1, 1e4] (large for an image with little speckle).

    Raises:
        ValueError: a non-2D image.
    """
    arr = np.asarray(log_intensity, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"estimate_looks: expected a 2D image, got shape {arr.shape}")
    return _inverse_trigamma(max(_homogeneous_variance(arr, tile), 1e-12))
