"""What the benchmark's test sets are made of: :class:`Case`, :class:`LoadedSet`, :class:`SetSpec`.

Also the readers the set loaders share (grey images, datalist splits, even spreading, resizing)
and the per-case random generator. The loaders themselves are in
:mod:`usdespeckle.benchmark.sets_synthetic` and :mod:`usdespeckle.benchmark.sets_real`; the
registry :data:`usdespeckle.benchmark.sets.SETS` names them.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Case", "LoadedSet", "SetSpec"]

SIGMA_PER_GRAIN = 2.0  # fidelity low-pass sigma = this x the speckle grain's FWHM (mean of both axes)
SIGMA_RANGE = (2.0, 10.0)  # pixels
DEFAULT_SIGMA = 4.0  # pixels, when no homogeneous box is large enough to measure the grain
GLCM_PER_GRAIN = 1.5  # co-occurrence offset of M = this x the grain's FWHM, per axis
DEFAULT_GLCM_DISTANCE = 4  # pixels, when the grain is unknown


@dataclass
class Case:
    """One test input.

    Attributes:
        name: short identifier (file stem or ``phantom_003``).
        image: speckled input, float32 (H, W) in [0, 1]; for a cine, the frames (T, H, W).
        reference: what a perfect method would return (clean image or echogenicity map), in [0, 1];
            None for real scans.
        masks: for phantoms, boolean masks: ``background`` and one per cyst.
        contrasts_db: for phantoms, the contrast of each cyst mask in dB (same keys as the cyst masks).
        field: for real scans, the valid imaging-field mask (H, W), bool.
        regions: for real frames, the boxes ``{"dark", "bright", "homogeneous"}`` (gCNR pair chosen on the frame).
        grain_px: for real scans, the speckle grain (autocorrelation FWHM, pixels), axial and
            lateral, measured on the input; None when no homogeneous box allowed it.
    """

    name: str
    image: np.ndarray
    reference: np.ndarray | None = None
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    contrasts_db: dict[str, float] = dataclasses.field(default_factory=dict)
    field: np.ndarray | None = None
    regions: dict[str, Any] = dataclasses.field(default_factory=dict)
    grain_px: tuple[float, float] | None = None

    @property
    def sigma(self) -> float:
        """Low-pass scale (pixels) of the echogenicity fidelity: a few times the speckle grain.

        :data:`SIGMA_PER_GRAIN` times the grain's FWHM (mean of both axes), kept within
        :data:`SIGMA_RANGE`; :data:`DEFAULT_SIGMA` when the grain is unknown.
        """
        if self.grain_px is None:
            return DEFAULT_SIGMA
        return float(np.clip(SIGMA_PER_GRAIN * 0.5 * sum(self.grain_px), *SIGMA_RANGE))

    @property
    def glcm_distance(self) -> tuple[int, int]:
        """Co-occurrence offsets (axial, lateral) of the estimator M: 1.5 grains, where pure speckle decorrelates."""
        if self.grain_px is None:
            return (DEFAULT_GLCM_DISTANCE, DEFAULT_GLCM_DISTANCE)
        axial, lateral = (max(1, int(np.ceil(GLCM_PER_GRAIN * g))) for g in self.grain_px)
        return (axial, lateral)


@dataclass
class LoadedSet:
    """The cases of one set, plus notes for the report (fallbacks, what is missing, subsampling)."""

    cases: list[Case]
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclass
class SetSpec:
    """A registered test set.

    Attributes:
        name: registry name.
        description: one line for the report.
        kind: one of ``reference``, ``phantom``, ``real``, ``cine``.
        load: ``load(data_dir, limit, seed, size) -> LoadedSet``; may return no cases with a note.
            Sets of kind ``reference`` and ``phantom`` also take ``split="validation"``: the same
            set made of other images, on which ``training/tune_filters.py`` tunes settings.
        default_limit: images (frames for a cine) per set when no limit is given; None = all.
    """

    name: str
    description: str
    kind: str
    load: Callable[..., LoadedSet]
    default_limit: int | None = None

    @property
    def tunable(self) -> bool:
        """Whether settings can be tuned on this set: it has a reference and a validation split."""
        return self.kind in ("reference", "phantom")


def case_rng(seed: int, set_name: str, index: int) -> np.random.Generator:
    """A generator fixed by (seed, set, case): each case's speckle does not depend on the others."""
    return np.random.default_rng([int(seed), zlib.crc32(set_name.encode()), int(index)])


def to_size(image: np.ndarray, size: int) -> np.ndarray:
    """Scale the shorter side to ``size`` (anti-aliased) and crop the centre to ``size x size``."""
    from skimage.transform import resize

    h, w = image.shape
    if (h, w) != (size, size):
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        image = resize(image, new, order=1, anti_aliasing=scale < 1, preserve_range=True)
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        image = image[top : top + size, left : left + size]
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def read_grey(path: Path) -> np.ndarray:
    """Read an image file as a float32 grey image in [0, 1] (8- or 16-bit PNG, or any PIL format)."""
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"image {path} listed in a datalist does not exist; rerun prepare-data.")
    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
    maxval = 65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype == np.uint8 else max(1.0, arr.max())
    return (arr.astype(np.float64) / maxval).astype(np.float32)


def spread(entries: list, limit: int | None) -> list:
    """``limit`` entries evenly spaced over the list (datalists group crops of one source together)."""
    if limit is None or limit >= len(entries):
        return list(entries)
    return [entries[int(i)] for i in np.round(np.linspace(0, len(entries) - 1, limit))]


def datalist_split(data_dir: Path | None, filename: str, split: str) -> list[dict] | None:
    """The entries of ``split`` in ``data_dir/filename``, or None if the file or split is absent."""
    if data_dir is None:
        return None
    path = Path(data_dir) / filename
    if not path.is_file():
        return None
    with path.open() as f:
        content = json.load(f)
    entries = content.get(split)
    return list(entries) if entries else None
