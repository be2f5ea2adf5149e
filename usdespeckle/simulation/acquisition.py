"""A randomised ultrasound acquisition chain: training pairs (speckled B-mode, clean B-mode) on the fly.

Real scans differ from one another in probe, settings and export far more than one simulated
probe does. :func:`simulate_acquisition` draws every setting of the chain from a range:

1. the echogenicity map ``g`` (grey levels in [0, 1]) becomes a linear scatterer amplitude spanning
   ``contrast_db`` decibels, ``10 ** ((g - 1) * C / 20)``
   (:func:`usdespeckle.simulation.physics.echogenicity_to_amplitude`); optional anechoic ellipses (cysts,
   vessels) are set to 0;
2. scatterers: circular complex Gaussian amplitudes on the pixel grid (fully developed speckle) or,
   with probability ``partial_prob``, sparse ones (a fraction ``density`` of the pixels: partly
   developed, non-Rayleigh speckle);
3. a complex Gaussian-modulated point-spread function (the standard analytic PSF model: Gaussian
   envelope of axial width ``psf_axial_px`` and lateral width ``psf_lateral_px``, carrier of
   ``carrier_cycles`` cycles per pixel along depth, the probe's centre frequency relative to the
   sampling) convolved by FFT; the envelope is the magnitude, plus thermal noise;
4. depth gain (a TGC ramp of ``tgc_db`` over the image height), overall gain, log compression to a
   dynamic range of ``dynamic_range_db``;
5. optionally a sector mask (black outside a fan, as curved and phased-array probes show) and a
   lossy JPEG export.

The clean target is the same chain without speckle: the echogenicity amplitude through the same
gains and log compression (and the same fan), so a denoiser trained on it keeps the input's grey
levels. Hand-written: scikit-image and MONAI have no ultrasound speckle model, and pymust's
PSF (:class:`usdespeckle.simulation.physics.FastBModeSimulator`) is fixed per probe and costs seconds to vary.
"""

from __future__ import annotations

import io
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_numpy

from usdespeckle.simulation.physics import echogenicity_to_amplitude, log_compress

__all__ = [
    "QUANTILE_PROBABILITIES",
    "SPECKLE_INTENSITY_QUANTILES",
    "AcquisitionRanges",
    "RandAcquisitiond",
    "expected_display",
    "simulate_acquisition",
]


@dataclass(frozen=True)
class AcquisitionRanges:
    """Ranges (low, high) of every random setting of the chain; probabilities in [0, 1].

    Args:
        contrast_db: decibel span given to the map's grey levels 0..1.
        psf_axial_px: axial Gaussian PSF width (standard deviation), pixels.
        psf_lateral_px: lateral Gaussian PSF width (standard deviation), pixels.
        carrier_cycles: carrier cycles per pixel along depth (centre frequency / axial sampling).
        partial_prob: probability of partly developed speckle (sparse scatterers).
        density: fraction of pixels holding a scatterer when sparse.
        noise_db: thermal noise level relative to echogenicity 1, dB.
        gain_db: overall gain, dB.
        tgc_db: gain change from the top to the bottom of the image, dB.
        dynamic_range_db: displayed dynamic range of the log compression, dB.
        anechoic_prob: probability of adding 1-3 anechoic ellipses.
        sector_prob: probability of a sector (fan) mask.
        sector_half_angle_deg: half opening angle of the fan, degrees.
        jpeg_prob: probability of a lossy JPEG export.
        jpeg_quality: JPEG quality (PIL scale 1-95).
    """

    contrast_db: tuple[float, float] = (20.0, 45.0)
    psf_axial_px: tuple[float, float] = (0.5, 2.0)
    psf_lateral_px: tuple[float, float] = (0.8, 3.5)
    carrier_cycles: tuple[float, float] = (0.1, 0.4)
    partial_prob: float = 0.2
    density: tuple[float, float] = (0.05, 0.5)
    noise_db: tuple[float, float] = (-70.0, -35.0)
    gain_db: tuple[float, float] = (-6.0, 6.0)
    tgc_db: tuple[float, float] = (-10.0, 10.0)
    dynamic_range_db: tuple[float, float] = (30.0, 80.0)
    anechoic_prob: float = 0.3
    sector_prob: float = 0.3
    sector_half_angle_deg: tuple[float, float] = (25.0, 45.0)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[float, float] = (50.0, 95.0)


def _psf(axial: float, lateral: float, carrier: float) -> np.ndarray:
    """Complex Gaussian-modulated PSF, normalised to unit energy (so speckle RMS = echogenicity)."""
    half_r, half_c = max(2, math.ceil(3.5 * axial)), max(2, math.ceil(3.5 * lateral))
    z = np.arange(-half_r, half_r + 1, dtype=np.float64)[:, None]
    x = np.arange(-half_c, half_c + 1, dtype=np.float64)[None, :]
    psf = np.exp(-0.5 * (z / axial) ** 2 - 0.5 * (x / lateral) ** 2) * np.exp(2j * math.pi * carrier * z)
    return psf / math.sqrt(float(np.sum(np.abs(psf) ** 2)))


def _fan(shape: tuple[int, int], half_angle_rad: float, rng: np.random.Generator) -> np.ndarray:
    """Bool mask of a fan whose apex lies at or above the top centre."""
    h, w = shape
    apex_r = -rng.uniform(0.0, 0.3) * h
    apex_c = w / 2.0 + rng.uniform(-0.1, 0.1) * w
    rows, cols = np.mgrid[0:h, 0:w]
    angle = np.arctan2(cols - apex_c, rows - apex_r)
    radius = np.hypot(rows - apex_r, cols - apex_c)
    return (np.abs(angle) <= half_angle_rad) & (radius <= (h - apex_r) * rng.uniform(0.9, 1.2))


def _anechoic(amplitude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = amplitude.shape
    rows, cols = np.mgrid[0:h, 0:w]
    out = amplitude.copy()
    for _ in range(int(rng.integers(1, 4))):
        r, c = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        a, b = rng.uniform(0.03, 0.15) * h, rng.uniform(0.03, 0.15) * w
        out[((rows - r) / a) ** 2 + ((cols - c) / b) ** 2 <= 1.0] = 0.0
    return out


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=quality
    )
    return np.asarray(Image.open(buffer), dtype=np.float32) / 255.0


#: Quantiles of Exp(1): the intensity of fully developed speckle over its mean, at 32 evenly spaced
#: probabilities. Averaging a display mapping over them gives its expected value under speckle.
QUANTILE_PROBABILITIES = (np.arange(32) + 0.5) / 32
SPECKLE_INTENSITY_QUANTILES = -np.log1p(-QUANTILE_PROBABILITIES)


def expected_display(unclipped: np.ndarray, dynamic_range_db: float) -> np.ndarray:
    """The expected displayed grey level of fully developed speckle around a mean level.

    A B-mode pixel shows ``clip(t + 10 log10(E) / DR, 0, 1)`` where ``t`` is the unclipped display of
    the local mean intensity and ``E ~ Exp(1)`` the speckle. Its expectation is the grey level a
    perfect local average of the display would show: near the display floor it stays above 0 (the
    speckle peaks that rise above the floor), where ``clip(t, 0, 1)`` would be black.

    Args:
        unclipped: ``t``, the display of the mean intensity before clipping, (H, W).
        dynamic_range_db: the displayed dynamic range DR, dB.

    Returns:
        float64 (H, W) in [0, 1].
    """
    shifts = 10.0 * np.log10(SPECKLE_INTENSITY_QUANTILES) / dynamic_range_db
    return np.clip(np.asarray(unclipped, dtype=np.float64)[..., None] + shifts, 0.0, 1.0).mean(axis=-1)


def simulate_acquisition(
    echogenicity: np.ndarray,
    rng: np.random.Generator,
    ranges: AcquisitionRanges | None = None,
    *,
    target: str = "mean_level",
) -> tuple[np.ndarray, np.ndarray]:
    """One randomised acquisition of an echogenicity map.

    Args:
        echogenicity: (H, W) grey-level map in [0, 1] (0 is anechoic).
        rng: random generator for every setting and the scatterers.
        ranges: the settings' ranges (defaults of :class:`AcquisitionRanges`).
        target: the clean image: ``"mean_level"``, the display of the mean echo level (black where
            that level is below the dynamic range), or ``"expected_display"``, the expected display
            of the speckled image (:func:`expected_display`: what a perfect local average of the
            B-mode shows, so dim tissue near the floor stays dim instead of black).

    Returns:
        (speckled B-mode, clean B-mode), both float32 (H, W) in [0, 1].

    Raises:
        ValueError: the map is not 2D, not finite, or outside [0, 1].
    """
    ranges = ranges or AcquisitionRanges()
    grey = np.asarray(echogenicity, dtype=np.float64)
    if grey.ndim != 2 or not np.isfinite(grey).all() or grey.min() < 0.0 or grey.max() > 1.0:
        raise ValueError(f"echogenicity must be a finite 2D map in [0, 1]; got shape {grey.shape}.")
    h, w = grey.shape

    def draw(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(*bounds))

    contrast_db = draw(ranges.contrast_db)
    amplitude = echogenicity_to_amplitude(grey, contrast_db)
    if rng.random() < ranges.anechoic_prob:
        amplitude = _anechoic(amplitude, rng)

    scatterers = (rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))) / math.sqrt(2.0)
    if rng.random() < ranges.partial_prob:
        density = draw(ranges.density)
        scatterers = scatterers * (rng.random((h, w)) < density) / math.sqrt(density)
    psf = _psf(draw(ranges.psf_axial_px), draw(ranges.psf_lateral_px), draw(ranges.carrier_cycles))
    field = amplitude * scatterers
    # the full linear convolution fits in this size; padded up to a length the FFT is fast at
    shape = tuple(scipy.fft.next_fast_len(n + k - 1) for n, k in zip((h, w), psf.shape, strict=True))
    echo = scipy.fft.ifft2(scipy.fft.fft2(field, s=shape) * scipy.fft.fft2(psf, s=shape))
    r0, c0 = psf.shape[0] // 2, psf.shape[1] // 2
    echo = echo[r0 : r0 + h, c0 : c0 + w]
    noise = 10.0 ** (draw(ranges.noise_db) / 20.0)
    echo = echo + noise * (rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))) / math.sqrt(2.0)
    envelope = np.abs(echo)

    depth = np.linspace(0.0, 1.0, h)[:, None]
    gain = 10.0 ** ((draw(ranges.gain_db) + draw(ranges.tgc_db) * depth) / 20.0)
    dynamic_range = draw(ranges.dynamic_range_db)

    def compress(linear: np.ndarray) -> np.ndarray:
        return log_compress(linear * gain, dynamic_range_db=dynamic_range, headroom_db=6.0)

    bmode = compress(envelope)
    mean_intensity = amplitude**2 + noise**2  # unit-energy PSF: the speckle's mean intensity
    if target == "mean_level":
        clean = compress(np.sqrt(mean_intensity))  # the mean level, without speckle
    elif target == "expected_display":
        level_db = 10.0 * np.log10(np.maximum(mean_intensity * gain**2, 1e-24))
        clean = expected_display((level_db - 6.0 + dynamic_range) / dynamic_range, dynamic_range)
    else:
        raise ValueError(f"target must be 'mean_level' or 'expected_display'; got {target!r}.")
    if rng.random() < ranges.sector_prob:
        fan = _fan((h, w), math.radians(draw(ranges.sector_half_angle_deg)), rng)
        bmode, clean = bmode * fan, clean * fan
    if rng.random() < ranges.jpeg_prob:
        bmode = _jpeg(bmode, int(round(draw(ranges.jpeg_quality))))
    return bmode.astype(np.float32), clean.astype(np.float32)


class RandAcquisitiond(RandomizableTransform, MapTransform):
    """MONAI dict transform: ``label`` (an echogenicity map) -> ``image`` (speckled) and ``label`` (clean).

    Args:
        keys: the key holding the (1, H, W) echogenicity map in [0, 1] (one key).
        image_key: where the speckled B-mode goes.
        prob: probability of applying (otherwise the item passes through unchanged).
        ranges: a mapping of :class:`AcquisitionRanges` fields, e.g. a config's whole ``acquisition``
            section (keys starting with ``_``, such as ``_desc_``, are ignored).
        **fields: more :class:`AcquisitionRanges` fields; lists from JSON become tuples.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        image_key: str = "image",
        prob: float = 1.0,
        ranges: Mapping[str, object] | None = None,
        **fields: object,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) != 1:
            raise ValueError(f"RandAcquisitiond takes one key (the echogenicity map); got {self.keys}.")
        given = {k: v for k, v in {**(ranges or {}), **fields}.items() if not k.startswith("_")}
        fixed = {k: tuple(v) if isinstance(v, Sequence) else v for k, v in given.items()}
        self.ranges = AcquisitionRanges(**fixed)  # type: ignore[arg-type]
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        out = dict(data)
        self.randomize(None)
        seed = int(
            self.R.randint(0, 2**31 - 1)
        )  # MONAI's state is a RandomState; the chain takes a Generator
        key = self.keys[0]
        array = convert_to_numpy(out[key])
        if not self._do_transform:
            out[self.image_key] = array.astype(np.float32)  # a copy
            return out
        bmode, clean = simulate_acquisition(
            np.clip(array[0], 0.0, 1.0), np.random.default_rng(seed), self.ranges
        )
        out[self.image_key] = bmode[None]
        out[key] = clean[None]
        return out
