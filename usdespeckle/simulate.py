"""Physics-based B-mode simulation with pymust (the MUST toolbox), and cyst phantoms.

Two paths turn an echogenicity map into a speckled B-mode image:

* the **faithful path** (:func:`simulate_bmode_physics`, :func:`simulate_envelope_physics`) places
  random scatterers in the imaged region, simulates the RF signals of a plane-wave transmit with
  ``pymust.simus``, demodulates them with ``pymust.rf2iq``, beamforms them with a delay-and-sum
  matrix (``pymust.dasmtx``) at the pixel centres and log-compresses the envelope. It takes seconds
  to minutes per image;
* the **fast path** (:class:`FastBModeSimulator`) uses the PSF-convolution speckle model: the
  complex (I/Q) echo is a field of random complex scatterers, weighted by the echogenicity, convolved
  with the probe's point-spread function (Bamber and Dickinson, Phys. Med. Biol. 25:463, 1980,
  doi:10.1088/0031-9155/25/3/006; Meunier and Bertrand, IEEE TMI 14:293, 1995,
  doi:10.1109/42.387711). The PSF is computed once with pymust, so the speckle grain matches the
  faithful path's; an image then costs two FFTs.

Echogenicity convention (both paths): a map in [0, 1] giving the RMS *amplitude* of the scatterers
at each pixel, so a region of echogenicity ``e`` has RMS envelope ``e`` (after calibration) and
two regions differ by ``20*log10(e1/e0)`` dB in the B-mode. 0 is anechoic.

B-mode convention: ``bmode = clip((20*log10(envelope) - headroom_db + dynamic_range_db) /
dynamic_range_db, 0, 1)`` with the envelope calibrated so that echogenicity 1 has RMS envelope 1
(0 dB). The image therefore keeps absolute brightness: a dark phantom gives a dark image.

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
import scipy.ndimage
import scipy.signal

__all__ = [
    "DEFAULT_PIXEL_SIZE_M",
    "FastBModeSimulator",
    "autocorrelation_fwhm",
    "count_physics_scatterers",
    "log_compress",
    "make_cyst_phantom",
    "probe_psf",
    "simulate_bmode_physics",
    "simulate_envelope_physics",
]

#: Default pixel size (m): 0.1 mm, so a 256x256 image covers 25.6 mm x 25.6 mm.
DEFAULT_PIXEL_SIZE_M = 1.0e-4
#: Default depth of the centre of the imaged region (m), near the L11-5v elevation focus.
DEFAULT_CENTER_DEPTH_M = 2.0e-2
#: Largest plane-wave tilt (rad) when several angles are compounded.
MAX_TILT_RAD = math.radians(10.0)
#: Speed of sound (m/s) used by pymust by default.
SPEED_OF_SOUND_M_S = 1540.0


# --------------------------------------------------------------------------------------------------
# validation and small utilities
# --------------------------------------------------------------------------------------------------
def _check_echogenicity(echogenicity: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Return the echogenicity map as float64 after checking it is a finite 2D map in [0, 1]."""
    array = np.asarray(echogenicity)
    if array.ndim != 2:
        raise ValueError(
            f"echogenicity must be a 2D (H, W) map, got shape {array.shape}; pass one slice at a time."
        )
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(
            f"echogenicity has shape {array.shape} but this simulator was built for {tuple(shape)}; "
            "build a FastBModeSimulator with shape=echogenicity.shape or resize the map."
        )
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"echogenicity must be a real numeric array, got dtype {array.dtype}.")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"echogenicity contains {int(np.sum(~np.isfinite(array)))} NaN or infinite values; "
            "replace them (e.g. np.nan_to_num) before simulating."
        )
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"echogenicity must lie in [0, 1], found values in [{low:.4g}, {high:.4g}]; "
            "rescale it (e.g. image / image.max())."
        )
    return array


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value}.")
    return value


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


def _beamform_iq(
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


def log_compress(
    envelope: np.ndarray, *, dynamic_range_db: float = 50.0, headroom_db: float = 6.0
) -> np.ndarray:
    """Log-compress a calibrated envelope to a B-mode image in [0, 1].

    Args:
        envelope: linear envelope, >= 0, calibrated so that echogenicity 1 has RMS envelope 1.
        dynamic_range_db: displayed dynamic range (dB, > 0); levels below it map to 0.
        headroom_db: level (dB above the echogenicity-1 RMS) that maps to 1; brighter speckle
            peaks saturate.

    Returns:
        float32 image in [0, 1], same shape.

    Raises:
        ValueError: if ``dynamic_range_db`` is not positive.
    """
    dynamic_range_db = _check_positive("dynamic_range_db", dynamic_range_db)
    level_db = 20.0 * np.log10(np.maximum(np.asarray(envelope, dtype=np.float64), 1e-12))
    image = (level_db - headroom_db + dynamic_range_db) / dynamic_range_db
    return np.clip(image, 0.0, 1.0).astype(np.float32)


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
    psf = _beamform_iq(
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
    axial = _check_positive("pixel_size_m (axial)", axial)
    lateral = _check_positive("pixel_size_m (lateral)", lateral)
    depth_m = _check_positive("depth_m", depth_m)
    _tilts(n_angles)
    return _cached_psf(str(probe), round(axial, 12), round(lateral, 12), round(depth_m, 12), int(n_angles))


# --------------------------------------------------------------------------------------------------
# fast path
# --------------------------------------------------------------------------------------------------
class FastBModeSimulator:
    """Fast B-mode speckle simulator: random scatterers convolved with a pymust point-spread function.

    This is a hand-written implementation of the standard PSF-convolution speckle model (Bamber and
    Dickinson 1980; Meunier and Bertrand 1995): the complex echo is ``(e * w) ** h`` with ``e`` the
    echogenicity, ``w`` circular complex Gaussian white noise (one scatterer amplitude per
    sub-pixel), ``**`` a 2D convolution (FFT) and ``h`` the probe's complex I/Q PSF computed once
    with pymust (:func:`probe_psf`). The envelope is its magnitude: Rayleigh distributed
    (SNR 1.91) in homogeneous regions. The PSF is taken at one depth, so depth-dependent
    resolution, attenuation and diffraction effects outside that depth are not modelled.

    When a pixel is coarser than a third of the PSF's half-maximum width along an axis, the field is
    simulated on a finer grid along that axis and sampled back at the pixel centres, as the
    faithful path beamforms at the pixel centres.

    Args:
        probe: a probe name known to ``pymust.getparam`` (e.g. "L11-5v").
        shape: image shape (H, W) = (axial, lateral) in pixels.
        pixel_size_m: pixel size (m), one value or (axial, lateral); default 0.1 mm.
        dynamic_range_db: displayed dynamic range of :meth:`simulate` (dB).
        headroom_db: level above the echogenicity-1 RMS that maps to 1 in :meth:`simulate` (dB).
        depth_m: depth of the PSF (m); default 20 mm.
        n_angles: number of compounded plane-wave tilts used for the PSF.

    Raises:
        ValueError: for an unknown probe, a bad shape or non-positive sizes.

    Example:
        >>> simulator = FastBModeSimulator("L11-5v", (256, 256))
        >>> image = simulator.simulate(np.full((256, 256), 0.5), np.random.default_rng(0))
    """

    def __init__(
        self,
        probe: str = "L11-5v",
        shape: tuple[int, int] = (256, 256),
        *,
        pixel_size_m: float | tuple[float, float] | None = None,
        dynamic_range_db: float = 50.0,
        headroom_db: float = 6.0,
        depth_m: float = DEFAULT_CENTER_DEPTH_M,
        n_angles: int = 1,
    ) -> None:
        if len(tuple(shape)) != 2 or any(int(s) != s or s < 1 for s in shape):
            raise ValueError(f"shape must be two positive integers (H, W), got {shape}.")
        self.probe = str(probe)
        self.shape = (int(shape[0]), int(shape[1]))
        if pixel_size_m is None:
            pixel_size_m = DEFAULT_PIXEL_SIZE_M
        axial, lateral = (pixel_size_m, pixel_size_m) if np.isscalar(pixel_size_m) else tuple(pixel_size_m)
        self.pixel_size_m = (_check_positive("pixel_size_m", axial), _check_positive("pixel_size_m", lateral))
        self.dynamic_range_db = _check_positive("dynamic_range_db", dynamic_range_db)
        self.headroom_db = float(headroom_db)
        self.depth_m = _check_positive("depth_m", depth_m)
        self.n_angles = int(n_angles)

        # Speckle size on a fine grid decides the sub-sampling factors.
        coarse = probe_psf(
            self.probe, pixel_size_m=self.pixel_size_m, depth_m=self.depth_m, n_angles=self.n_angles
        )
        fine_step = (min(self.pixel_size_m[0], 2.5e-5), min(self.pixel_size_m[1], 5e-5))
        fine = probe_psf(self.probe, pixel_size_m=fine_step, depth_m=self.depth_m, n_angles=self.n_angles)
        fwhm_axial_m, fwhm_lateral_m = _psf_fwhm(fine)
        fwhm_axial_m *= fine_step[0]
        fwhm_lateral_m *= fine_step[1]
        self.upsample = (
            max(1, math.ceil(3 * self.pixel_size_m[0] / fwhm_axial_m)),
            max(1, math.ceil(3 * self.pixel_size_m[1] / fwhm_lateral_m)),
        )
        if self.upsample == (1, 1):
            self.psf = coarse
        else:
            step = (self.pixel_size_m[0] / self.upsample[0], self.pixel_size_m[1] / self.upsample[1])
            self.psf = probe_psf(self.probe, pixel_size_m=step, depth_m=self.depth_m, n_angles=self.n_angles)
        #: PSF half-maximum widths (m), axial and lateral, from the fine grid.
        self.psf_fwhm_m = (fwhm_axial_m, fwhm_lateral_m)
        fine_shape = (self.shape[0] * self.upsample[0], self.shape[1] * self.upsample[1])
        margin = (self.psf.shape[0] // 2, self.psf.shape[1] // 2)
        self._margin = margin
        self._field_shape = (fine_shape[0] + 2 * margin[0], fine_shape[1] + 2 * margin[1])
        self._fft_shape = tuple(
            scipy.fft.next_fast_len(n + k - 1) for n, k in zip(self._field_shape, self.psf.shape, strict=True)
        )
        self._psf_spectrum = scipy.fft.fft2(self.psf, s=self._fft_shape).astype(np.complex64)

    def __repr__(self) -> str:
        return (
            f"FastBModeSimulator(probe={self.probe!r}, shape={self.shape}, pixel_size_m={self.pixel_size_m}, "
            f"dynamic_range_db={self.dynamic_range_db}, upsample={self.upsample}, psf={self.psf.shape})"
        )

    def envelope(self, echogenicity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Linear speckle envelope of an echogenicity map.

        Args:
            echogenicity: (H, W) map in [0, 1] with H, W = ``self.shape`` (RMS scatterer amplitude).
            rng: random generator for the scatterer amplitudes.

        Returns:
            float32 (H, W) envelope >= 0; a region of echogenicity ``e`` has RMS envelope ``e``.

        Raises:
            ValueError: for a wrong shape, NaN/inf, or values outside [0, 1].
        """
        weights = _check_echogenicity(echogenicity, self.shape)
        if self.upsample != (1, 1):
            weights = np.repeat(np.repeat(weights, self.upsample[0], axis=0), self.upsample[1], axis=1)
        # Edge-replicate so border pixels receive echoes from a full PSF footprint.
        weights = np.pad(weights, [(m, m) for m in self._margin], mode="edge")
        noise = rng.standard_normal((2, *self._field_shape), dtype=np.float32)
        # Single precision throughout: complex64 FFTs are twice as fast and ample for an 8-bit image.
        field = (noise[0] + 1j * noise[1]) * (weights / math.sqrt(2.0)).astype(np.float32)
        echo = scipy.fft.ifft2(scipy.fft.fft2(field, s=self._fft_shape) * self._psf_spectrum, workers=1)
        # Full convolution: the pixel that sees scatterer i at the PSF centre sits at i + 2*margin.
        rows = slice(
            2 * self._margin[0], 2 * self._margin[0] + self.shape[0] * self.upsample[0], self.upsample[0]
        )
        cols = slice(
            2 * self._margin[1], 2 * self._margin[1] + self.shape[1] * self.upsample[1], self.upsample[1]
        )
        return np.abs(echo[rows, cols]).astype(np.float32)

    def simulate(self, echogenicity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Speckled, log-compressed B-mode image of an echogenicity map.

        Args:
            echogenicity: (H, W) map in [0, 1] with H, W = ``self.shape``.
            rng: random generator for the scatterer amplitudes.

        Returns:
            float32 (H, W) image in [0, 1] (see :func:`log_compress`).

        Raises:
            ValueError: for a wrong shape, NaN/inf, or values outside [0, 1].
        """
        return log_compress(
            self.envelope(echogenicity, rng),
            dynamic_range_db=self.dynamic_range_db,
            headroom_db=self.headroom_db,
        )


def _psf_fwhm(psf: np.ndarray) -> tuple[float, float]:
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
# faithful path
# --------------------------------------------------------------------------------------------------
def _physics_geometry(
    shape: tuple[int, int],
    probe: str,
    width_m: float | None,
    depth_m: float | None,
    center_depth_m: float,
    scatterers_per_cell: float,
    n_angles: int,
) -> dict[str, float]:
    """Region size, scatterer margins and count of the faithful path (see simulate_envelope_physics)."""
    height, width = shape
    width_m = _check_positive("width_m", width * DEFAULT_PIXEL_SIZE_M if width_m is None else width_m)
    depth_m = _check_positive("depth_m", height * DEFAULT_PIXEL_SIZE_M if depth_m is None else depth_m)
    center_depth_m = _check_positive("center_depth_m", center_depth_m)
    scatterers_per_cell = _check_positive("scatterers_per_cell", scatterers_per_cell)
    if center_depth_m - depth_m / 2 <= 1e-3:
        raise ValueError(
            f"the region starts at depth {center_depth_m - depth_m / 2:.4g} m; it must start at least 1 mm "
            f"below the probe: increase center_depth_m ({center_depth_m}) or reduce depth_m ({depth_m})."
        )
    # Resolution cell = PSF half-maximum widths, measured on a fine grid at the region's centre.
    fine_step = (2.5e-5, 5e-5)
    fine = probe_psf(probe, pixel_size_m=fine_step, depth_m=center_depth_m, n_angles=n_angles)
    fwhm_axial, fwhm_lateral = _psf_fwhm(fine)
    cell_axial, cell_lateral = fwhm_axial * fine_step[0], fwhm_lateral * fine_step[1]
    margin_axial, margin_lateral = 2 * cell_axial, 2 * cell_lateral
    area = (depth_m + 2 * margin_axial) * (width_m + 2 * margin_lateral)
    return {
        "width_m": width_m,
        "depth_m": depth_m,
        "margin_axial_m": margin_axial,
        "margin_lateral_m": margin_lateral,
        "cell_area_m2": cell_axial * cell_lateral,
        "count": int(round(scatterers_per_cell * area / (cell_axial * cell_lateral))),
    }


def count_physics_scatterers(
    shape: tuple[int, int],
    *,
    probe: str = "L11-5v",
    width_m: float | None = None,
    depth_m: float | None = None,
    center_depth_m: float = DEFAULT_CENTER_DEPTH_M,
    scatterers_per_cell: float = 20.0,
) -> int:
    """Number of scatterers :func:`simulate_envelope_physics` uses for a map of ``shape``.

    Its running time grows linearly with this number (and with the number of angles).

    Args:
        shape: (H, W) of the echogenicity map; other arguments as in :func:`simulate_envelope_physics`.

    Returns:
        Scatterer count (the region plus its margins, times the density).

    Raises:
        ValueError: for bad sizes or an unknown probe.
    """
    return int(
        _physics_geometry(tuple(shape), probe, width_m, depth_m, center_depth_m, scatterers_per_cell, 1)[
            "count"
        ]
    )


def simulate_envelope_physics(
    echogenicity: np.ndarray,
    rng: np.random.Generator,
    *,
    probe: str = "L11-5v",
    width_m: float | None = None,
    depth_m: float | None = None,
    center_depth_m: float = DEFAULT_CENTER_DEPTH_M,
    scatterers_per_cell: float = 20.0,
    n_angles: int = 1,
) -> np.ndarray:
    """Linear envelope of an echogenicity map simulated with pymust (simus, rf2iq, dasmtx).

    The map covers ``width_m`` (lateral, centred on the probe) by ``depth_m`` (axial, centred on
    ``center_depth_m``). Scatterers are drawn uniformly over that region plus a margin of twice the
    PSF half-maximum width on every side (the map is edge-extended there), at ``scatterers_per_cell``
    per resolution cell (axial x lateral PSF half-maximum widths); each has a Gaussian reflection
    coefficient scaled by the echogenicity (nearest pixel). Plane waves (``n_angles`` tilts within
    +/-10 degrees, compounded coherently) are simulated with ``pymust.simus``, demodulated with
    ``pymust.rf2iq`` and beamformed by delay-and-sum (``pymust.dasmtx``) at the pixel centres.
    The envelope is then calibrated so that its mean square equals the mean square echogenicity.

    Args:
        echogenicity: (H, W) map in [0, 1] (RMS scatterer amplitude).
        rng: random generator for scatterer positions and amplitudes.
        probe: a probe name known to ``pymust.getparam``.
        width_m: lateral extent of the map (m); default W x 0.1 mm.
        depth_m: axial extent of the map (m); default H x 0.1 mm.
        center_depth_m: depth of the map's centre (m); must exceed ``depth_m / 2``.
        scatterers_per_cell: scatterers per resolution cell (> 0; >~ 10 for developed speckle).
        n_angles: number of compounded plane-wave tilts.

    Returns:
        float32 (H, W) envelope >= 0. Cost grows with the number of scatterers
        (:func:`count_physics_scatterers`): about 5 ms of CPU per scatterer per angle (L11-5v,
        20 mm depth), i.e. about 11 CPU-minutes for a 256x256 map at 20 scatterers per cell.

    Raises:
        ValueError: for a bad map, sizes or probe.
    """
    weights = _check_echogenicity(echogenicity)
    height, width = weights.shape
    geometry = _physics_geometry(
        (height, width), probe, width_m, depth_m, center_depth_m, scatterers_per_cell, n_angles
    )
    width_m, depth_m, margin_axial, margin_lateral, count = (
        geometry["width_m"],
        geometry["depth_m"],
        geometry["margin_axial_m"],
        geometry["margin_lateral_m"],
        geometry["count"],
    )
    pixel_axial, pixel_lateral = depth_m / height, width_m / width
    x_scat = rng.uniform(-width_m / 2 - margin_lateral, width_m / 2 + margin_lateral, count)
    z_scat = center_depth_m + rng.uniform(-depth_m / 2 - margin_axial, depth_m / 2 + margin_axial, count)
    rows = np.clip(np.floor((z_scat - (center_depth_m - depth_m / 2)) / pixel_axial), 0, height - 1).astype(
        int
    )
    cols = np.clip(np.floor((x_scat + width_m / 2) / pixel_lateral), 0, width - 1).astype(int)
    amplitude = rng.standard_normal(count) * weights[rows, cols]

    z_centres = center_depth_m - depth_m / 2 + (np.arange(height) + 0.5) * pixel_axial
    x_centres = -width_m / 2 + (np.arange(width) + 0.5) * pixel_lateral
    x_grid, z_grid = np.meshgrid(x_centres, z_centres)
    envelope = np.abs(_beamform_iq(x_scat, z_scat, amplitude, x_grid, z_grid, probe=probe, n_angles=n_angles))
    mean_square = float(np.mean(envelope**2))
    target = float(np.mean(weights**2))
    if mean_square > 0 and target > 0:
        envelope = envelope * math.sqrt(target / mean_square)
    return envelope.astype(np.float32)


def simulate_bmode_physics(
    echogenicity: np.ndarray,
    rng: np.random.Generator,
    *,
    probe: str = "L11-5v",
    width_m: float | None = None,
    depth_m: float | None = None,
    center_depth_m: float = DEFAULT_CENTER_DEPTH_M,
    scatterers_per_cell: float = 20.0,
    dynamic_range_db: float = 50.0,
    headroom_db: float = 6.0,
    n_angles: int = 1,
) -> np.ndarray:
    """B-mode image of an echogenicity map simulated with pymust (the faithful, slow path).

    Runs :func:`simulate_envelope_physics` and log-compresses the envelope with
    :func:`log_compress`. See those functions for the model and the arguments.

    Returns:
        float32 (H, W) image in [0, 1].

    Raises:
        ValueError: for a bad map, sizes or probe.
    """
    envelope = simulate_envelope_physics(
        echogenicity,
        rng,
        probe=probe,
        width_m=width_m,
        depth_m=depth_m,
        center_depth_m=center_depth_m,
        scatterers_per_cell=scatterers_per_cell,
        n_angles=n_angles,
    )
    return log_compress(envelope, dynamic_range_db=dynamic_range_db, headroom_db=headroom_db)


# --------------------------------------------------------------------------------------------------
# phantoms
# --------------------------------------------------------------------------------------------------
def make_cyst_phantom(
    shape: tuple[int, int] = (256, 256),
    rng: np.random.Generator | None = None,
    *,
    contrasts_db: tuple[float, ...] = (-20.0, -10.0, -6.0, 6.0),
    radius_px: float | None = None,
    background: float = 0.5,
    jitter_px: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Echogenicity map of round cysts/inclusions in a homogeneous background, with region masks.

    Cysts sit on a regular grid (``ceil(sqrt(n))`` columns), each moved by a random jitter. A cyst
    of contrast ``c`` dB has echogenicity ``background * 10**(c/20)`` (clipped to [0, 1]), so its
    B-mode level differs from the background's by ``c`` dB.

    Args:
        shape: (H, W) in pixels.
        rng: random generator for the jitter; None means no jitter.
        contrasts_db: contrast of each cyst (dB, relative to the background).
        radius_px: cyst radius (pixels); default ``min(shape) / 10``.
        background: background echogenicity in (0, 1].
        jitter_px: largest random shift of each cyst centre (pixels); default ``radius_px / 4``.

    Returns:
        ``(echogenicity, masks)``: float32 (H, W) map in [0, 1] and boolean (H, W) masks:
        ``"background"`` (farther than 2 radii from every cyst and half a radius from the border),
        ``"cyst_<c>dB"`` for each cyst (e.g. ``"cyst_-20dB"``, its inner 80 % radius) and
        ``"edges"`` (within 2 pixels of any cyst boundary).

    Raises:
        ValueError: if the cysts do not fit, contrasts repeat, or the background is out of range.
    """
    if len(tuple(shape)) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be (H, W) with H, W >= 16, got {shape}.")
    height, width = int(shape[0]), int(shape[1])
    if not 0.0 < background <= 1.0:
        raise ValueError(f"background must be in (0, 1], got {background}.")
    contrasts = [float(c) for c in contrasts_db]
    if not contrasts:
        raise ValueError("contrasts_db must name at least one cyst.")
    names = [f"cyst_{c:+g}dB".replace("+-", "-") for c in contrasts]
    if len(set(names)) != len(names):
        raise ValueError(f"contrasts_db must not repeat, got {contrasts_db}.")
    radius = min(height, width) / 10.0 if radius_px is None else _check_positive("radius_px", radius_px)
    jitter = radius / 4.0 if jitter_px is None else max(0.0, float(jitter_px))
    n_cols = math.ceil(math.sqrt(len(contrasts)))
    n_rows = math.ceil(len(contrasts) / n_cols)
    cell_h, cell_w = height / n_rows, width / n_cols
    if 2 * (radius + jitter) + 2 > min(cell_h, cell_w):
        raise ValueError(
            f"{len(contrasts)} cysts of radius {radius:.3g} px (+ jitter {jitter:.3g}) do not fit in {shape}; "
            "use a smaller radius_px or fewer contrasts."
        )
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    echogenicity = np.full((height, width), float(background), dtype=np.float64)
    masks: dict[str, np.ndarray] = {}
    near_cyst = np.zeros((height, width), dtype=bool)
    edges = np.zeros((height, width), dtype=bool)
    for index, (contrast, name) in enumerate(zip(contrasts, names, strict=True)):
        centre_row = (index // n_cols + 0.5) * cell_h
        centre_col = (index % n_cols + 0.5) * cell_w
        if rng is not None and jitter > 0:
            centre_row += rng.uniform(-jitter, jitter)
            centre_col += rng.uniform(-jitter, jitter)
        distance = np.hypot(rows - centre_row, cols - centre_col)
        echogenicity[distance <= radius] = min(1.0, background * 10 ** (contrast / 20.0))
        masks[name] = distance <= 0.8 * radius
        near_cyst |= distance <= 2.0 * radius
        edges |= np.abs(distance - radius) <= 2.0
    border = max(1, int(round(radius / 2)))
    inside = np.zeros((height, width), dtype=bool)
    inside[border:-border, border:-border] = True
    masks["background"] = inside & ~near_cyst
    masks["edges"] = edges
    return echogenicity.astype(np.float32), masks
