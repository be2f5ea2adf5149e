"""The probe's pulse-echo point-spread function with pymust, and speckle-grain measures.

Everything here that runs pymust goes through :func:`beamform_iq`: plane-wave RF signals of
point scatterers (``pymust.simus``), demodulated (``pymust.rf2iq``) and beamformed by delay-and-sum
(``pymust.dasmtx``) at given points. :func:`probe_psf` applies it to one point target on a pixel
grid (the kernel of :class:`usdespeckle.simulation.physics.FastBModeSimulator`); the faithful path of
:mod:`usdespeckle.simulation.physics` applies it to a whole scatterer field. Speckle grain is measured two
ways: the half-maximum widths of a PSF (:func:`psf_fwhm`) and of an envelope's autocorrelation
(:func:`autocorrelation_fwhm`).

References:
    D. Garcia, "SIMUS: an open-source simulator for medical ultrasound imaging. Part I: theory &
    examples", Comput. Methods Programs Biomed. 218:106726, 2022, doi:10.1016/j.cmpb.2022.106726.
    V. Perrot et al., "So you think you can DAS?", Ultrasonics 111:106309, 2021,
    doi:10.1016/j.ultras.2020.106309.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft

__all__ = [
    "DEFAULT_CENTER_DEPTH_M",
    "DEFAULT_PIXEL_SIZE_M",
    "autocorrelation_fwhm",
    "probe_psf",
]

#: Default pixel size (m): 0.1 mm, so a 256x256 image covers 25.6 mm x 25.6 mm.
DEFAULT_PIXEL_SIZE_M = 1.0e-4
#: Default depth of the centre of the imaged region (m), near the L11-5v elevation focus.
DEFAULT_CENTER_DEPTH_M = 2.0e-2
#: Largest plane-wave tilt (rad) when several angles are compounded.
MAX_TILT_RAD = math.radians(10.0)
#: Speed of sound (m/s) used by pymust by default.
SPEED_OF_SOUND_M_S = 1540.0


def check_positive(name: str, value: float) -> float:
    """``value`` as a float after checking it is positive and finite (shared by the simulation modules)."""
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value}.")
    return value


# --------------------------------------------------------------------------------------------------
# pymust: probe parameters, plane-wave RF, demodulation and delay-and-sum
# --------------------------------------------------------------------------------------------------
def _get_param(probe: str):
    """pymust parameters of ``probe`` with the sampling frequency and f-number this module uses."""
    import pymust

    try:
        param = pymust.getparam(probe)
    except Exception as error:  # pymust raises a bare exception for unknown names
        raise ValueError(
            f"unknown probe {probe!r} for pymust.getparam; use e.g. 'L11-5v', 'L12-3v', 'C5-2v' or 'P4-2v'."
        ) from error
    param.fs = 4 * param.fc  # RF sampling frequency (Hz): the minimum simus accepts
    param.fnumber = None  # let dasmtx choose the receive f-number from the element directivity
    param.c = SPEED_OF_SOUND_M_S
    return param


def _tilts(n_angles: int) -> np.ndarray:
    if int(n_angles) != n_angles or n_angles < 1:
        raise ValueError(f"n_angles must be a positive integer, got {n_angles}.")
    if n_angles == 1:
        return np.zeros(1)
    return np.linspace(-MAX_TILT_RAD, MAX_TILT_RAD, int(n_angles))


def beamform_iq(
    x_scat: np.ndarray,
    z_scat: np.ndarray,
    amplitude: np.ndarray,
    x_grid: np.ndarray,
    z_grid: np.ndarray,
    probe: str,
    n_angles: int,
    chunk: int = 8192,
    scatterer_chunk: int = 10_000,
) -> np.ndarray:
    """Simulate plane-wave RF with ``pymust.simus`` and beamform the I/Q at (x_grid, z_grid).

    Several tilted plane waves are compounded coherently (their beamformed I/Q are averaged).
    simus is linear in the reflection coefficients, so the scatterers are simulated in groups of
    ``scatterer_chunk`` (pymust holds a scatterers x elements x sub-elements array per frequency)
    and their RF signals, which all start at t = 0 and are sampled at ``param.fs``, are summed.

    Returns:
        Complex beamformed I/Q, same shape as ``x_grid`` (arbitrary units).
    """
    import pymust

    result = np.zeros(x_grid.shape, dtype=np.complex128)
    x_flat = x_grid.reshape(-1)
    z_flat = z_grid.reshape(-1)
    for tilt in _tilts(n_angles):
        param = _get_param(probe)
        delays = pymust.txdelay(param, float(tilt))
        options = pymust.utils.Options()
        options.WaitBar = False
        options.ParPool = False
        rf = np.zeros((0, param.Nelements))
        for first in range(0, x_scat.size, scatterer_chunk):
            group = slice(first, first + scatterer_chunk)
            rf_group, _ = pymust.simus(
                x_scat[group].reshape(1, -1),
                z_scat[group].reshape(1, -1),
                amplitude[group].reshape(1, -1).astype(np.float64),
                delays,
                param.copy(),
                options,
            )
            if rf_group.shape[0] > rf.shape[0]:
                rf = np.pad(rf, ((0, rf_group.shape[0] - rf.shape[0]), (0, 0)))
            rf[: rf_group.shape[0]] += rf_group
        iq = pymust.rf2iq(rf, param)
        iq_flat = iq.reshape(-1, order="F")
        out = np.empty(x_flat.shape, dtype=np.complex128)
        # The DAS matrix has ~2 x Nelements non-zeros per point: build it in chunks to bound memory.
        for start in range(0, x_flat.size, chunk):
            stop = min(start + chunk, x_flat.size)
            das = pymust.dasmtx(
                1j * np.array(iq.shape),
                x_flat[start:stop].reshape(1, -1),
                z_flat[start:stop].reshape(1, -1),
                delays,
                param,
            )
            out[start:stop] = das @ iq_flat
        result += out.reshape(x_grid.shape)
    return result / len(_tilts(n_angles))


# --------------------------------------------------------------------------------------------------
# point-spread function
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _cached_psf(
    probe: str, pixel_axial_m: float, pixel_lateral_m: float, depth_m: float, n_angles: int
) -> np.ndarray:
    wavelength = SPEED_OF_SOUND_M_S / _get_param(probe).fc
    # Window around the point target: the plane-wave PSF has long lateral side lobes.
    half_axial = max(1.5e-3, 12 * wavelength, 4 * pixel_axial_m)
    half_lateral = max(3.0e-3, 24 * wavelength, 4 * pixel_lateral_m)
    n_axial = int(math.ceil(half_axial / pixel_axial_m))
    n_lateral = int(math.ceil(half_lateral / pixel_lateral_m))
    offsets_z = np.arange(-n_axial, n_axial + 1) * pixel_axial_m
    offsets_x = np.arange(-n_lateral, n_lateral + 1) * pixel_lateral_m
    x_grid, z_grid = np.meshgrid(offsets_x, depth_m + offsets_z)
    psf = beamform_iq(
        np.zeros(1), np.full(1, depth_m), np.ones(1), x_grid, z_grid, probe=probe, n_angles=n_angles
    )
    # Crop to the part above -40 dB (symmetric about the target so the convolution is centred).
    magnitude = np.abs(psf)
    keep = magnitude >= magnitude.max() * 10 ** (-40 / 20)
    rows = np.nonzero(keep.any(axis=1))[0]
    cols = np.nonzero(keep.any(axis=0))[0]
    reach_rows = max(n_axial - rows.min(), rows.max() - n_axial)
    reach_cols = max(n_lateral - cols.min(), cols.max() - n_lateral)
    psf = psf[
        n_axial - reach_rows : n_axial + reach_rows + 1, n_lateral - reach_cols : n_lateral + reach_cols + 1
    ]
    psf = psf / np.sqrt(np.sum(np.abs(psf) ** 2))  # unit energy: unit-variance scatterers -> RMS 1
    psf = psf.astype(np.complex64)
    psf.setflags(write=False)
    return psf


def probe_psf(
    probe: str = "L11-5v",
    *,
    pixel_size_m: float | tuple[float, float] = DEFAULT_PIXEL_SIZE_M,
    depth_m: float = DEFAULT_CENTER_DEPTH_M,
    n_angles: int = 1,
) -> np.ndarray:
    """Complex (I/Q) pulse-echo point-spread function of ``probe``, sampled on a pixel grid.

    A single point scatterer at ``(0, depth_m)`` is simulated with ``pymust.simus`` (plane-wave
    transmit, ``n_angles`` tilts compounded), demodulated with ``pymust.rf2iq`` and beamformed
    with ``pymust.dasmtx`` at pixel-spaced points around it; the result is cropped to -40 dB and
    scaled to unit energy. Results are cached per (probe, pixel size, depth, angles).

    Args:
        probe: a probe name known to ``pymust.getparam`` (e.g. "L11-5v").
        pixel_size_m: pixel size (m), one value or (axial, lateral).
        depth_m: depth of the point target (m, > 0).
        n_angles: number of compounded plane-wave tilts (1 = a single unsteered plane wave).

    Returns:
        Read-only complex64 array (rows = axial, columns = lateral), odd sizes, centred on the
        target, with sum of squared magnitudes 1.

    Raises:
        ValueError: for an unknown probe or non-positive sizes.
    """
    axial, lateral = (pixel_size_m, pixel_size_m) if np.isscalar(pixel_size_m) else tuple(pixel_size_m)
    axial = check_positive("pixel_size_m (axial)", axial)
    lateral = check_positive("pixel_size_m (lateral)", lateral)
    depth_m = check_positive("depth_m", depth_m)
    _tilts(n_angles)
    return _cached_psf(str(probe), round(axial, 12), round(lateral, 12), round(depth_m, 12), int(n_angles))


def psf_fwhm(psf: np.ndarray) -> tuple[float, float]:
    """Half-maximum widths (pixels) of |psf| along the rows and columns through its peak."""
    magnitude = np.abs(psf)
    row, col = np.unravel_index(np.argmax(magnitude), magnitude.shape)

    def width(profile: np.ndarray, centre: int) -> float:
        profile = profile / profile[centre]
        grid = np.arange(profile.size, dtype=np.float64)
        above = profile >= 0.5
        left = centre
        while left > 0 and above[left - 1]:
            left -= 1
        right = centre
        while right < profile.size - 1 and above[right + 1]:
            right += 1
        # Linear interpolation of the crossings on each side.
        x_left = (
            grid[left] - (profile[left] - 0.5) / max(profile[left] - profile[left - 1], 1e-12)
            if left > 0
            else 0.0
        )
        x_right = (
            grid[right] + (profile[right] - 0.5) / max(profile[right] - profile[right + 1], 1e-12)
            if right < profile.size - 1
            else float(profile.size - 1)
        )
        return max(x_right - x_left, 1e-3)

    return width(magnitude[:, col], row), width(magnitude[row, :], col)


# --------------------------------------------------------------------------------------------------
# speckle grain of an envelope
# --------------------------------------------------------------------------------------------------
def autocorrelation_fwhm(envelope: np.ndarray) -> tuple[float, float]:
    """Axial and lateral speckle size: FWHM (pixels) of the normalised envelope autocorrelation.

    Hand-written (no library computes it): the mean-removed envelope of a homogeneous region is
    autocorrelated with zero-padded FFTs, each lag normalised by its number of overlapping pixels
    (unbiased estimate), divided by the zero-lag value, and the half-maximum crossings along the
    axial (rows) and lateral (columns) axes through zero lag are found by linear interpolation.

    Args:
        envelope: 2D linear envelope (H, W) of a homogeneous speckle region, H and W >= 8.

    Returns:
        ``(axial_fwhm, lateral_fwhm)`` in pixels (full widths, i.e. twice the half-maximum lag).

    Raises:
        ValueError: if the input is not 2D, is too small or is constant.
    """
    values = np.asarray(envelope, dtype=np.float64)
    if values.ndim != 2 or min(values.shape) < 8:
        raise ValueError(f"autocorrelation_fwhm needs a 2D region of at least 8x8, got {values.shape}.")
    values = values - values.mean()
    if not np.any(values):
        raise ValueError("autocorrelation_fwhm got a constant region; use a speckled region.")
    height, width = values.shape
    padded = (2 * height, 2 * width)
    spectrum = scipy.fft.rfft2(values, s=padded)
    correlation = scipy.fft.irfft2(np.abs(spectrum) ** 2, s=padded)
    overlap = scipy.fft.irfft2(np.abs(scipy.fft.rfft2(np.ones_like(values), s=padded)) ** 2, s=padded)
    correlation = correlation / np.maximum(np.round(overlap), 1.0)
    correlation = correlation / correlation[0, 0]

    def half_width(profile: np.ndarray) -> float:
        below = np.nonzero(profile < 0.5)[0]
        if below.size == 0:
            return float(profile.size)
        lag = int(below[0])
        previous, current = profile[lag - 1], profile[lag]
        return lag - 1 + (previous - 0.5) / (previous - current)

    axial = half_width(correlation[: height // 2, 0])
    lateral = half_width(correlation[0, : width // 2])
    return 2.0 * axial, 2.0 * lateral
