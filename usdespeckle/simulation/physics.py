"""Physics-based B-mode simulation with pymust (the MUST toolbox): the two paths' entry points.

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

The probe's point-spread function, pymust's plane-wave simulation and beamforming, and the
speckle-grain measures live in :mod:`usdespeckle.simulation.psf`; the cyst phantoms in
:mod:`usdespeckle.simulation.phantoms`.

References:
    D. Garcia, "SIMUS: an open-source simulator for medical ultrasound imaging. Part I: theory &
    examples", Comput. Methods Programs Biomed. 218:106726, 2022, doi:10.1016/j.cmpb.2022.106726.
    V. Perrot et al., "So you think you can DAS?", Ultrasonics 111:106309, 2021,
    doi:10.1016/j.ultras.2020.106309.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from usdespeckle.simulation.psf import (
    DEFAULT_CENTER_DEPTH_M,
    DEFAULT_PIXEL_SIZE_M,
    beamform_iq,
    check_positive,
    probe_psf,
    psf_fwhm,
)

__all__ = [
    "FastBModeSimulator",
    "count_physics_scatterers",
    "echogenicity_to_amplitude",
    "log_compress",
    "simulate_bmode_physics",
    "simulate_envelope_physics",
]


# --------------------------------------------------------------------------------------------------
# validation and log compression
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


def echogenicity_to_amplitude(echogenicity: np.ndarray, contrast_db: float) -> np.ndarray:
    """The linear scatterer amplitude ``10 ** ((g - 1) * contrast_db / 20)`` of a grey-level map (0 stays 0).

    The map is a grey-level (log-domain) picture and B-mode grey levels are log-compressed, so the
    amplitude spans ``contrast_db`` decibels (zero stays anechoic). A linear use of the grey levels
    would leave e.g. grey and white matter 2 dB apart, invisible under speckle.
    """
    return np.where(echogenicity > 0, 10.0 ** ((echogenicity - 1.0) * contrast_db / 20.0), 0.0)


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
    dynamic_range_db = check_positive("dynamic_range_db", dynamic_range_db)
    level_db = 20.0 * np.log10(np.maximum(np.asarray(envelope, dtype=np.float64), 1e-12))
    image = (level_db - headroom_db + dynamic_range_db) / dynamic_range_db
    return np.clip(image, 0.0, 1.0).astype(np.float32)


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
        self.pixel_size_m = (check_positive("pixel_size_m", axial), check_positive("pixel_size_m", lateral))
        self.dynamic_range_db = check_positive("dynamic_range_db", dynamic_range_db)
        self.headroom_db = float(headroom_db)
        self.depth_m = check_positive("depth_m", depth_m)
        self.n_angles = int(n_angles)

        # Speckle size on a fine grid decides the sub-sampling factors.
        fine_step = (min(self.pixel_size_m[0], 2.5e-5), min(self.pixel_size_m[1], 5e-5))
        fine = probe_psf(self.probe, pixel_size_m=fine_step, depth_m=self.depth_m, n_angles=self.n_angles)
        fwhm_axial_m, fwhm_lateral_m = psf_fwhm(fine)
        fwhm_axial_m *= fine_step[0]
        fwhm_lateral_m *= fine_step[1]
        self.upsample = (
            max(1, math.ceil(3 * self.pixel_size_m[0] / fwhm_axial_m)),
            max(1, math.ceil(3 * self.pixel_size_m[1] / fwhm_lateral_m)),
        )
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
    width_m = check_positive("width_m", width * DEFAULT_PIXEL_SIZE_M if width_m is None else width_m)
    depth_m = check_positive("depth_m", height * DEFAULT_PIXEL_SIZE_M if depth_m is None else depth_m)
    center_depth_m = check_positive("center_depth_m", center_depth_m)
    scatterers_per_cell = check_positive("scatterers_per_cell", scatterers_per_cell)
    if center_depth_m - depth_m / 2 <= 1e-3:
        raise ValueError(
            f"the region starts at depth {center_depth_m - depth_m / 2:.4g} m; it must start at least 1 mm "
            f"below the probe: increase center_depth_m ({center_depth_m}) or reduce depth_m ({depth_m})."
        )
    # Resolution cell = PSF half-maximum widths, measured on a fine grid at the region's centre.
    fine_step = (2.5e-5, 5e-5)
    fine = probe_psf(probe, pixel_size_m=fine_step, depth_m=center_depth_m, n_angles=n_angles)
    fwhm_axial, fwhm_lateral = psf_fwhm(fine)
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
    envelope = np.abs(beamform_iq(x_scat, z_scat, amplitude, x_grid, z_grid, probe=probe, n_angles=n_angles))
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
