"""Endless (speckled, clean) training crops for the denoiser, drawn on the fly.

Content and speckle are drawn independently for every crop, so the denoiser never sees the same
pair twice:

* content: training photographs (scikit-image, scikit-learn), training slabs of the MNI152 MRI
  template, dead-leaves images (:func:`usdespeckle.simulation.deadleaves.dead_leaves`) and random-shape
  echogenicity maps; every source is randomly cropped, zoomed, flipped and rotated;
* speckle: the randomised acquisition chain (:func:`usdespeckle.simulation.acquisition.simulate_acquisition`),
  the method's Rayleigh model with log compression (:func:`usdespeckle.simulation.speckle.rayleigh_envelope`)
  and multiplicative Gamma speckle with L = 1..16 looks on the amplitude.

One target for every pair: the expected speckled image given the speckle-free one, i.e. the local
mean grey level the input itself shows, in its own display (:func:`expected_display` for the
acquisition chain; the same expectation over Rayleigh or Gamma quantiles for the other models). A
denoiser trained so keeps the input's echogenicity as displayed: it neither re-maps log-compressed
grey levels onto a linear photograph nor sends dim tissue near the display floor to black (both
paint dark holes into real scans).

Validation and test content (photographs of :data:`usdespeckle.data.sources.NATURAL_VALIDATION` and
``NATURAL_TEST``, the validation and test MRI slabs) never appears in the ``training`` split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.stats

from usdespeckle.data.sources import (
    load_mri_volume,
    load_natural_sources,
    mri_slices,
    mri_view,
    natural_crop,
    natural_split,
    oriented_slice,
    random_shapes_map,
)
from usdespeckle.simulation.acquisition import (
    QUANTILE_PROBABILITIES,
    SPECKLE_INTENSITY_QUANTILES,
    AcquisitionRanges,
    simulate_acquisition,
)
from usdespeckle.simulation.deadleaves import dead_leaves
from usdespeckle.simulation.speckle import gamma_speckle, rayleigh_envelope

__all__ = ["CONTENTS", "SPECKLES", "PairMix", "PairStream", "speckle_pair"]

RAYLEIGH_SCALE = (5.0, 255.0)  # Rayleigh scale (grey levels) for clean 0 and 1, the method's model
CONTENTS = ("photo", "mri", "dead_leaves", "shapes")
SPECKLES = ("acquisition", "rayleigh", "gamma")


@dataclass(frozen=True)
class PairMix:
    """What the stream draws, and how often (weights need not sum to 1).

    Args:
        content: weight of each content kind of :data:`CONTENTS`.
        speckle: weight of each speckle kind of :data:`SPECKLES`.
        looks: range of Gamma looks L (drawn log-uniformly).
        rayleigh_decimation: speckle grain steps of the Rayleigh model, pixels (one drawn per pair).
        rayleigh_paper_prob: probability of the method's log-compression ranges (a ~ U(10, 50),
            b ~ U(-50, 50)); otherwise the milder a ~ U(40, 70), b ~ -U(1.7, 2.1) * a.
    """

    content: dict[str, float] = field(
        default_factory=lambda: {"photo": 0.35, "mri": 0.15, "dead_leaves": 0.35, "shapes": 0.15}
    )
    speckle: dict[str, float] = field(
        default_factory=lambda: {"acquisition": 0.5, "rayleigh": 0.25, "gamma": 0.25}
    )
    looks: tuple[float, float] = (1.0, 16.0)
    rayleigh_decimation: tuple[int, ...] = (1, 2, 3, 4)
    rayleigh_paper_prob: float = 0.5

    def __post_init__(self) -> None:
        for name, weights, kinds in (
            ("content", self.content, CONTENTS),
            ("speckle", self.speckle, SPECKLES),
        ):
            unknown = set(weights) - set(kinds)
            if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
                raise ValueError(
                    f"PairMix.{name} must give non-negative weights to {kinds} (some positive); got {weights}."
                )


def _choose(weights: dict[str, float], rng: np.random.Generator) -> str:
    names = list(weights)
    p = np.asarray([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _rayleigh_pair(
    clean: np.ndarray, rng: np.random.Generator, mix: PairMix
) -> tuple[np.ndarray, np.ndarray]:
    """The method's Rayleigh model; the target is the mean envelope through the same compression."""
    decimation = int(rng.choice(mix.rayleigh_decimation))
    envelope = rayleigh_envelope(clean, rng, scale_range=RAYLEIGH_SCALE, decimation=decimation)
    if rng.random() < mix.rayleigh_paper_prob:
        gain, offset = rng.uniform(10.0, 50.0), rng.uniform(-50.0, 50.0)
    else:
        gain = rng.uniform(40.0, 70.0)
        offset = -rng.uniform(1.7, 2.1) * gain
    low, high = RAYLEIGH_SCALE
    sigma = low + (high - low) * np.clip(clean, 0.0, 1.0)  # the envelope's scale, as drawn above

    def compress(linear: np.ndarray) -> np.ndarray:
        return np.clip(gain * np.log1p(linear) + offset, 0.0, 255.0) / 255.0

    # the expected display: a unit-scale Rayleigh variable is sqrt(2 E), E ~ Exp(1)
    rayleigh = np.sqrt(2.0 * SPECKLE_INTENSITY_QUANTILES)
    return compress(envelope.astype(np.float64)), compress(sigma[..., None] * rayleigh).mean(axis=-1)


def speckle_pair(
    clean: np.ndarray, kind: str, rng: np.random.Generator, mix: PairMix | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Speckle one clean image (echogenicity / photograph in [0, 1]) with one kind of speckle.

    Args:
        clean: (H, W) image in [0, 1].
        kind: one of :data:`SPECKLES`.
        rng: random generator.
        mix: the ranges (defaults of :class:`PairMix`).

    Returns:
        (speckled input, speckle-free target), float32 (H, W) in [0, 1], in the same grey levels.

    Raises:
        ValueError: an unknown kind.
    """
    mix = mix or PairMix()
    clean = np.clip(np.asarray(clean, dtype=np.float64), 0.0, 1.0)
    if kind == "acquisition":
        speckled, target = simulate_acquisition(clean, rng, AcquisitionRanges(), target="expected_display")
    elif kind == "rayleigh":
        speckled, target = _rayleigh_pair(clean, rng, mix)
    elif kind == "gamma":
        looks = math.exp(rng.uniform(math.log(mix.looks[0]), math.log(mix.looks[1])))
        level = rng.uniform(0.5, 1.0)  # amplitude images rarely fill the whole range
        amplitude = clean * level
        speckled = gamma_speckle(amplitude, looks, rng)
        quantiles = scipy.stats.gamma.ppf(QUANTILE_PROBABILITIES, looks, scale=1.0 / looks)
        target = np.clip(amplitude[..., None] * np.sqrt(quantiles), 0.0, 1.0).mean(axis=-1)
    else:
        raise ValueError(f"unknown speckle kind {kind!r}; choose one of {SPECKLES}.")
    return speckled.astype(np.float32), np.asarray(target, dtype=np.float32)


class PairStream:
    """An endless, seeded stream of (speckled, clean) crops of one split.

    Args:
        size: crop side, pixels.
        seed: seed of the stream (a worker adds its id).
        split: "training", "validation" or "test": which photographs and MRI slabs are used.
        mix: what is drawn and how often.
    """

    def __init__(self, size: int = 128, seed: int = 0, split: str = "training", mix: PairMix | None = None):
        self.size = size
        self.seed = seed
        self.mix = mix or PairMix()
        self.photos = [img for name, img in load_natural_sources().items() if natural_split(name) == split]
        volume, _ = load_mri_volume()
        axes = {"sagittal": 0, "coronal": 1, "axial": 2}
        self.mri = [(axes[o], i) for o, i, s in mri_slices(volume, step=1) if s == split]
        if not self.photos or not self.mri:
            raise ValueError(f"no photographs or MRI slices in split {split!r}.")

    def content(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        """One clean ``size x size`` image of one content kind, float64 in [0, 1]."""
        if kind == "photo":
            return natural_crop(self.photos[int(rng.integers(len(self.photos)))], rng, self.size)
        if kind == "mri":
            axis, index = self.mri[int(rng.integers(len(self.mri)))]
            volume, _ = load_mri_volume()
            return mri_view(oriented_slice(volume, axis, index), int(rng.integers(0, 4)), rng, self.size)
        if kind == "dead_leaves":
            return dead_leaves(self.size, rng, leaves=int(rng.integers(150, 600))).astype(np.float64)
        if kind == "shapes":
            return random_shapes_map(self.size, rng)
        raise ValueError(f"unknown content kind {kind!r}; choose one of {CONTENTS}.")

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
        """One pair: (speckled (H, W), target (H, W), "content/speckle")."""
        content, speckle = _choose(self.mix.content, rng), _choose(self.mix.speckle, rng)
        speckled, target = speckle_pair(self.content(content, rng), speckle, rng, self.mix)
        return speckled, target, f"{content}/{speckle}"

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        worker = 0
        try:
            import torch.utils.data

            info = torch.utils.data.get_worker_info()
            worker = 0 if info is None else info.id
        except ImportError:  # torch is only needed to run the stream in a DataLoader
            pass
        rng = np.random.default_rng([self.seed, worker])
        while True:
            speckled, target, _ = self.draw(rng)
            yield speckled[None], target[None]
