"""The benchmark's test sets: seeded, built from test splits only (nothing here trains or tunes).

A set is a :class:`SetSpec` in :data:`SETS` whose ``load`` returns :class:`Case` objects. Kinds:

- ``reference``: the clean image is known (photographs speckled by a model, MRI through the
  simulator); scored with PSNR/SSIM/EPI against it;
- ``phantom``: cyst phantoms with known regions (ENL, CNR, gCNR) and a speckle-free reference;
- ``real``: held-out real B-mode frames, no reference: scored inside the imaging field against the
  input itself (echogenicity fidelity, ratio-image estimator M) and on stored regions (gCNR, CNR, ENL);
- ``cine``: a held-out block of consecutive real frames, one case of shape (T, H, W): temporal
  flicker and per-frame fidelity.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Case", "LoadedSet", "SetSpec", "SETS", "SET_GROUPS", "resolve_sets"]

KINDS = ("reference", "phantom", "real", "cine")


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
        regions: for real frames, the stored boxes ``{"dark", "bright", "homogeneous"}``.
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
        default_limit: images (frames for a cine) per set when no limit is given; None = all.
    """

    name: str
    description: str
    kind: str
    load: Callable[[Path | None, int | None, int, int], LoadedSet]
    default_limit: int | None = None


def _case_rng(seed: int, set_name: str, index: int) -> np.random.Generator:
    """A generator fixed by (seed, set, case): each case's speckle does not depend on the others."""
    return np.random.default_rng([int(seed), zlib.crc32(set_name.encode()), int(index)])


def _to_size(image: np.ndarray, size: int) -> np.ndarray:
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


def _read_grey(path: Path) -> np.ndarray:
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


def _spread(entries: list, limit: int | None) -> list:
    """``limit`` entries evenly spaced over the list (datalists group crops of one source together)."""
    if limit is None or limit >= len(entries):
        return list(entries)
    return [entries[int(i)] for i in np.round(np.linspace(0, len(entries) - 1, limit))]


def _datalist_split(data_dir: Path | None, filename: str, split: str) -> list[dict] | None:
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


# --------------------------------------------------------------------------------------------------
# Photographs with a speckle model
# --------------------------------------------------------------------------------------------------
# Photographs that scikit-image ships (no download), the fallback natural test set.
_SKIMAGE_PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "brick", "gravel", "moon", "clock", "rocket")


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    img = getattr(data, name)()
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    return img_as_float(img).astype(np.float32)


def _natural_references(data_dir: Path | None, limit: int | None, size: int) -> tuple[list, list[str]]:
    """(name, clean image) pairs of the natural test set, and notes."""
    notes: list[str] = []
    entries = _datalist_split(data_dir, "datalist_natural.json", "test")
    refs = []
    if entries is not None:
        for entry in _spread(entries, limit):
            path = Path(data_dir) / entry["label"]
            refs.append((path.stem, _to_size(_read_grey(path), size)))
        notes.append(f"clean photographs: test split of {Path(data_dir) / 'datalist_natural.json'}")
    else:
        where = (
            "no --data given" if data_dir is None else f"{Path(data_dir) / 'datalist_natural.json'} missing"
        )
        notes.append(
            f"FALLBACK ({where}): clean photographs are scikit-image's {', '.join(_SKIMAGE_PHOTOS)}, "
            f"grey, shorter side scaled to {size} and centre-cropped"
        )
        for name in _SKIMAGE_PHOTOS[:limit]:
            refs.append((name, _to_size(_skimage_photo(name), size)))
    return refs, notes


def _rayleigh_loader(set_name: str, **speckle_kwargs: Any) -> Callable[..., LoadedSet]:
    def load(data_dir: Path | None, limit: int | None, seed: int, size: int) -> LoadedSet:
        from usdespeckle.speckle import rayleigh_speckle

        refs, notes = _natural_references(data_dir, limit, size)
        cases = []
        for index, (name, clean) in enumerate(refs):
            # The gain a and offset b are drawn inside from this per-image generator: fixed by the seed.
            speckled = rayleigh_speckle(clean, _case_rng(seed, set_name, index), **speckle_kwargs)
            cases.append(Case(name, np.asarray(speckled, dtype=np.float32), clean))
        settings = ", ".join(f"{k}={v}" for k, v in speckle_kwargs.items())
        notes.append(f"Rayleigh speckle: {settings}; a and b drawn per image from the seed")
        return LoadedSet(cases, notes)

    return load


def _gamma_loader(set_name: str, looks: float) -> Callable[..., LoadedSet]:
    def load(data_dir: Path | None, limit: int | None, seed: int, size: int) -> LoadedSet:
        from usdespeckle.speckle import gamma_speckle

        refs, notes = _natural_references(data_dir, limit, size)
        cases = [
            Case(name, gamma_speckle(clean, looks, _case_rng(seed, set_name, index)), clean)
            for index, (name, clean) in enumerate(refs)
        ]
        notes.append(
            f"multiplicative {looks:g}-look speckle on the amplitude, y = x * sqrt(G), G ~ Gamma({looks:g}, "
            f"1/{looks:g}), clipped to [0, 1], no log compression; reference = the clean photograph"
        )
        return LoadedSet(cases, notes)

    return load


# Correlated speckle: the fast PSF-convolution simulator with a grain of about 3 x 4.4 pixels.
_CORRELATED_PROBE = "L11-5v"
_CORRELATED_PIXEL_M = (5.0e-5, 1.0e-4)  # axial, lateral
_CORRELATED_RANGE_DB = 50.0
_CORRELATED_HEADROOM_DB = 6.0


def _load_correlated(data_dir: Path | None, limit: int | None, seed: int, size: int) -> LoadedSet:
    from usdespeckle.simulate import FastBModeSimulator, log_compress

    refs, notes = _natural_references(data_dir, limit, size)
    simulator = FastBModeSimulator(
        probe=_CORRELATED_PROBE,
        shape=(size, size),
        pixel_size_m=_CORRELATED_PIXEL_M,
        dynamic_range_db=_CORRELATED_RANGE_DB,
        headroom_db=_CORRELATED_HEADROOM_DB,
    )
    span_db = _CORRELATED_RANGE_DB - _CORRELATED_HEADROOM_DB
    cases = []
    for index, (name, clean) in enumerate(refs):
        # The photograph sets the echo level in dB: grey 1 -> 0 dB (echogenicity 1), grey 0 -> -span_db.
        echogenicity = 10.0 ** (-(1.0 - clean.astype(np.float64)) * span_db / 20.0)
        image = simulator.simulate(echogenicity, _case_rng(seed, "correlated", index))
        reference = log_compress(
            echogenicity, dynamic_range_db=_CORRELATED_RANGE_DB, headroom_db=_CORRELATED_HEADROOM_DB
        )
        cases.append(Case(name, np.asarray(image, dtype=np.float32), reference))
    axial, lateral = (w / p for w, p in zip(simulator.psf_fwhm_m, _CORRELATED_PIXEL_M, strict=True))
    notes.append(
        f"PSF-correlated speckle: circular complex Gaussian scatterers weighted by the echogenicity, "
        f"convolved with the {_CORRELATED_PROBE} pulse-echo PSF (pymust; pixel {_CORRELATED_PIXEL_M[0] * 1e3:g} "
        f"x {_CORRELATED_PIXEL_M[1] * 1e3:g} mm, PSF FWHM {axial:.1f} x {lateral:.1f} pixels axial x "
        f"lateral), envelope, log compression to {_CORRELATED_RANGE_DB:g} dB "
        f"(FastBModeSimulator); the photograph's grey level sets the echo level over {span_db:g} dB"
    )
    notes.append(
        "reference = the echogenicity map log-compressed the same way, without speckle (0.88 x grey)"
    )
    return LoadedSet(cases, notes)


# --------------------------------------------------------------------------------------------------
# MRI through the simulator, phantoms
# --------------------------------------------------------------------------------------------------
def _pairs_loader(filenames: Sequence[tuple[str, str]]) -> Callable[..., LoadedSet]:
    """Loader of (simulated B-mode ``image``, MRI ``label``) pairs from the first datalist found."""

    def load(data_dir: Path | None, limit: int | None, seed: int, size: int) -> LoadedSet:
        for filename, split in filenames:
            entries = _datalist_split(data_dir, filename, split)
            if entries is None:
                continue
            cases = []
            for entry in _spread(entries, limit):
                image = _to_size(_read_grey(Path(data_dir) / entry["image"]), size)
                label = _to_size(_read_grey(Path(data_dir) / entry["label"]), size)
                cases.append(Case(Path(entry["image"]).stem, image, label))
            return LoadedSet(cases, [f"pairs: {split!r} split of {Path(data_dir) / filename}"])
        looked = " or ".join(f"{name} [{split!r}]" for name, split in filenames)
        where = "no --data given" if data_dir is None else f"no {looked} in {data_dir}"
        return LoadedSet([], [f"SKIPPED: {where}; the training recipe makes these pairs with the simulator"])

    return load


_PHANTOM_CONTRASTS_DB = (-20.0, -12.0, -6.0, -3.0, 6.0)
_PHANTOM_COUNT = 8  # phantoms when no limit at all is given
_PHANTOM_PROBE = "L11-5v"


def _load_phantoms(data_dir: Path | None, limit: int | None, seed: int, size: int) -> LoadedSet:
    from usdespeckle.simulate import FastBModeSimulator, log_compress, make_cyst_phantom

    simulator = FastBModeSimulator(probe=_PHANTOM_PROBE, shape=(size, size))
    count = _PHANTOM_COUNT if limit is None else limit
    cases = []
    for index in range(count):
        rng = _case_rng(seed, "phantom", index)
        echogenicity, masks = make_cyst_phantom((size, size), rng, contrasts_db=_PHANTOM_CONTRASTS_DB)
        image = np.asarray(simulator.simulate(echogenicity, rng), dtype=np.float32)
        # make_cyst_phantom names one "cyst_<c>dB" mask per contrast, in the order of contrasts_db.
        cysts = [k for k in masks if k.startswith("cyst_")]
        if len(cysts) != len(_PHANTOM_CONTRASTS_DB) or "background" not in masks:
            raise ValueError(
                f"make_cyst_phantom returned masks {list(masks)} for contrasts {_PHANTOM_CONTRASTS_DB}; "
                "the benchmark needs 'background' and one 'cyst_*' mask per contrast, in order."
            )
        contrasts = dict(zip(cysts, _PHANTOM_CONTRASTS_DB, strict=True))
        masks = {k: np.asarray(masks[k], dtype=bool) for k in ["background", *cysts]}
        # The reference is the speckle-free display of the echogenicity map: the same log compression
        # as the simulator, so a perfect despeckler's output and the reference share one grey scale.
        reference = log_compress(
            echogenicity, dynamic_range_db=simulator.dynamic_range_db, headroom_db=simulator.headroom_db
        )
        cases.append(Case(f"phantom_{index:03d}", image, reference, masks, contrasts))
    notes = [
        f"FastBModeSimulator(probe={_PHANTOM_PROBE!r}, shape=({size}, {size})); cysts of "
        f"{', '.join(f'{c:+g}' for c in _PHANTOM_CONTRASTS_DB)} dB in a background of echogenicity 0.5",
        "reference (EPI, PSNR/SSIM aff.) = the echogenicity map log-compressed as the simulator does, "
        f"without speckle ({simulator.dynamic_range_db:g} dB range)",
        f"weakest = the cyst of smallest |contrast| ({min(_PHANTOM_CONTRASTS_DB, key=abs):+g} dB)",
    ]
    return LoadedSet(cases, notes)


# --------------------------------------------------------------------------------------------------
# Real B-mode (no reference)
# --------------------------------------------------------------------------------------------------
REAL_DATALIST = "datalist_real_bmode.json"
SIGMA_PER_GRAIN = 2.0  # fidelity low-pass sigma = this x the speckle grain's FWHM (mean of both axes)
SIGMA_RANGE = (2.0, 10.0)  # pixels
DEFAULT_SIGMA = 4.0  # pixels, when no homogeneous box is large enough to measure the grain
GLCM_PER_GRAIN = 1.5  # co-occurrence offset of M = this x the grain's FWHM, per axis
DEFAULT_GLCM_DISTANCE = 4  # pixels, when the grain is unknown
CINE_CROP = (256, 256)  # the cine is cut to at most this window (rows, columns) around the field's centre


def speckle_grain(
    image: np.ndarray, field: np.ndarray, regions: dict[str, Any]
) -> tuple[float, float] | None:
    """Speckle grain (axial, lateral autocorrelation FWHM, pixels) in the largest homogeneous box.

    Uses :func:`usdespeckle.simulate.autocorrelation_fwhm` on the input inside the largest stored
    homogeneous box that lies wholly in the field and measures at least 8 x 8; None without one.
    """
    from usdespeckle.simulate import autocorrelation_fwhm

    best = None
    for box in regions.get("homogeneous", []):
        r0, c0, r1, c1 = (int(v) for v in box)
        big_enough = r1 - r0 >= 8 and c1 - c0 >= 8 and field[r0:r1, c0:c1].all()
        if big_enough and (best is None or (r1 - r0) * (c1 - c0) > (best[2] - best[0]) * (best[3] - best[1])):
            best = (r0, c0, r1, c1)
    if best is None:
        return None
    try:
        axial, lateral = autocorrelation_fwhm(image[best[0] : best[2], best[1] : best[3]])
    except ValueError:  # a constant box
        return None
    return float(axial), float(lateral)


def _read_real(data_dir: Path, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    image = _read_grey(Path(data_dir) / entry["image"])
    field_mask = _read_grey(Path(data_dir) / entry["mask"]) > 0.5
    if field_mask.shape != image.shape:
        raise ValueError(
            f"mask {entry['mask']} has shape {field_mask.shape} but image {entry['image']} has "
            f"{image.shape}; rerun prepare-data."
        )
    return image, field_mask


def _by_source(entries: list[dict], limit: int | None) -> list[dict]:
    """``limit`` entries taken in turn from each source (scan), evenly spaced within each."""
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        groups.setdefault(str(entry.get("source", "")), []).append(entry)
    if limit is None:
        return list(entries)
    counts = dict.fromkeys(groups, 0)
    for turn in range(int(limit)):
        open_groups = [g for g in groups if counts[g] < len(groups[g])]
        if not open_groups:
            break
        counts[open_groups[turn % len(open_groups)]] += 1
    return [entry for g, items in groups.items() for entry in _spread(items, counts[g])]


def _missing_real(data_dir: Path | None) -> LoadedSet:
    where = "no --data given" if data_dir is None else f"no {REAL_DATALIST} in {data_dir}"
    return LoadedSet([], [f"SKIPPED: {where}; `usdespeckle prepare-data` makes the real_bmode dataset"])


def _load_real(data_dir: Path | None, limit: int | None, seed: int, size: int) -> LoadedSet:
    entries = _datalist_split(data_dir, REAL_DATALIST, "test")
    if entries is None:
        return _missing_real(data_dir)
    cases = []
    for entry in _by_source(entries, limit):
        image, field_mask = _read_real(Path(data_dir), entry)
        regions = dict(entry["regions"])
        grain = speckle_grain(image, field_mask, regions)
        cases.append(
            Case(Path(entry["image"]).stem, image, None, field=field_mask, regions=regions, grain_px=grain)
        )
    sources = sorted({str(e.get("source", "?")) for e in entries})
    grains = [c.grain_px for c in cases if c.grain_px is not None]
    if grains:
        axial, lateral = np.median(np.asarray(grains), axis=0)
        sigmas = ", ".join(f"{c.sigma:.1f}" for c in cases)
        measured = f"speckle grain (median) {axial:.1f} x {lateral:.1f} px axial x lateral; fidelity sigma {sigmas} px"
    else:
        measured = f"no homogeneous box to measure the grain: fidelity sigma {DEFAULT_SIGMA:g} px"
    notes = [
        f"held-out real frames: 'test' split of {Path(data_dir) / REAL_DATALIST} ({len(entries)} frames from "
        f"{', '.join(sources)}); {len(cases)} taken in turn from each scan, evenly spaced; native resolution",
        "no reference: every score is inside the imaging field; fidelity = echogenicity fidelity against "
        f"the input (Gaussian low-pass, sigma = {SIGMA_PER_GRAIN:g} x the speckle grain's FWHM measured in "
        f"the largest homogeneous box, {SIGMA_RANGE[0]:g}-{SIGMA_RANGE[1]:g} px; isotonic fit); gCNR and CNR "
        "of the stored dark box against the bright box, ENL mean over the homogeneous boxes; M = ratio-image "
        "estimator on the residual input - output (0 = pure speckle removed; infinite for the input itself), "
        f"its co-occurrences {GLCM_PER_GRAIN:g} grains apart",
        measured,
    ]
    return LoadedSet(cases, notes)


def _load_cine(data_dir: Path | None, limit: int | None, seed: int, size: int) -> LoadedSet:
    entries = _datalist_split(data_dir, REAL_DATALIST, "cine_test")
    if entries is None:
        return _missing_real(data_dir)
    entries = sorted(entries, key=lambda e: int(e["frame"]))
    if limit is not None and limit < len(entries):  # a centred run of consecutive frames
        start = (len(entries) - int(limit)) // 2
        entries = entries[start : start + int(limit)]
    if len(entries) < 2:
        return LoadedSet([], [f"SKIPPED: the cine needs at least 2 frames; {len(entries)} selected"])
    frames, fields = zip(*(_read_real(Path(data_dir), e) for e in entries), strict=True)
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"cine_test frames have different shapes {sorted({f.shape for f in frames})}.")
    field_mask = np.logical_and.reduce(fields)
    grain = speckle_grain(frames[0], field_mask, dict(entries[0]["regions"]))
    # A window around the field's centre keeps the slow methods within the time budget.
    rows, cols = np.nonzero(field_mask)
    window = []
    for centre, extent, size_limit in zip(
        (rows.mean(), cols.mean()), field_mask.shape, CINE_CROP, strict=True
    ):
        length = min(extent, size_limit)
        start = int(np.clip(round(centre - length / 2), 0, extent - length))
        window.append(slice(start, start + length))
    stack = np.stack(frames)[:, window[0], window[1]].astype(np.float32)
    first, last = int(entries[0]["frame"]), int(entries[-1]["frame"])
    case = Case(
        f"frames_{first:03d}-{last:03d}", stack, None, field=field_mask[window[0], window[1]], grain_px=grain
    )
    notes = [
        f"held-out cine block: 'cine_test' of {Path(data_dir) / REAL_DATALIST} "
        f"({entries[0].get('source', '?')}), frames {first}-{last} ({len(entries)} consecutive frames), "
        "each despeckled on its own (no method here uses time); cut to rows "
        f"{window[0].start}-{window[0].stop - 1}, columns {window[1].start}-{window[1].stop - 1} (at most "
        f"{CINE_CROP[0]}x{CINE_CROP[1]} around the field's centre)",
        "flicker = mean |frame t+1 - frame t| of the output inside the field, relative to the input's "
        "(input 1; lower is calmer, but read it beside fidelity: flattening the image also lowers it); "
        "fidelity: per-frame mean",
    ]
    return LoadedSet([case], notes)


SETS: dict[str, SetSpec] = {
    spec.name: spec
    for spec in (
        SetSpec(
            "rayleigh_mild",
            "natural photographs, mild Rayleigh speckle (decimation 2; a ~ U(60, 70), b ~ U(-135, -120) "
            "map the envelope's log range onto about [0, 1], so little is clipped)",
            "reference",
            _rayleigh_loader(
                "rayleigh_mild", decimation=2, gain_range=(60.0, 70.0), offset_range=(-135.0, -120.0)
            ),
            default_limit=3,
        ),
        SetSpec(
            "rayleigh_strong",
            "natural photographs, the paper's Rayleigh speckle (a ~ U(10, 50), b ~ U(-50, 50), decimation 4)",
            "reference",
            _rayleigh_loader(
                "rayleigh_strong", decimation=4, gain_range=(10.0, 50.0), offset_range=(-50.0, 50.0)
            ),
            default_limit=3,
        ),
        SetSpec(
            "gamma_looks_1",
            "natural photographs, multiplicative single-look Gamma speckle on the amplitude (L = 1)",
            "reference",
            _gamma_loader("gamma_looks_1", 1.0),
            default_limit=3,
        ),
        SetSpec(
            "gamma_looks_4",
            "natural photographs, multiplicative 4-look Gamma speckle on the amplitude (L = 4)",
            "reference",
            _gamma_loader("gamma_looks_4", 4.0),
            default_limit=3,
        ),
        SetSpec(
            "correlated",
            "natural photographs as echogenicity, PSF-correlated speckle, log compression to 50 dB",
            "reference",
            _load_correlated,
            default_limit=3,
        ),
        SetSpec(
            "mri_sim",
            "MRI slices (test split) through the trained simulator; reference = the MRI slice",
            "reference",
            _pairs_loader([("datalist_mri_pairs.json", "test")]),
            default_limit=3,
        ),
        SetSpec(
            "mri_extra_sim",
            "extra MRI (dipy, nibabel samples) through the trained simulator; reference = the MRI slice",
            "reference",
            _pairs_loader(
                [("datalist_mri_extra_test_pairs.json", "test"), ("datalist_mri_pairs.json", "extra_test")]
            ),
            default_limit=3,
        ),
        SetSpec(
            "phantom",
            "cyst phantoms of graded contrast through the fast physics B-mode simulator",
            "phantom",
            _load_phantoms,
            default_limit=3,
        ),
        SetSpec(
            "real_bmode",
            "held-out real B-mode frames (pydicom-data scans), no reference, scored inside the imaging field",
            "real",
            _load_real,
            default_limit=4,
        ),
        SetSpec(
            "cine",
            "the held-out block of the real cardiac cine loop, as a sequence",
            "cine",
            _load_cine,
            default_limit=6,
        ),
    )
}

#: Names that select several sets at once.
SET_GROUPS: dict[str, tuple[str, ...]] = {
    "gamma_looks": ("gamma_looks_1", "gamma_looks_4"),
    "synthetic": tuple(n for n, s in SETS.items() if s.kind in ("reference", "phantom")),
    "real": tuple(n for n, s in SETS.items() if s.kind in ("real", "cine")),
}


def resolve_sets(names: Sequence[str] | None) -> list[str]:
    """Validate set names (None or ``["all"]``: every registered set; groups in :data:`SET_GROUPS`).

    Raises:
        ValueError: for an unknown set name.
    """
    if names is None or list(names) == ["all"]:
        return list(SETS)
    chosen: list[str] = []
    for name in names:
        if name in SET_GROUPS:
            chosen.extend(SET_GROUPS[name])
        elif name in SETS:
            chosen.append(name)
        else:
            raise ValueError(
                f"unknown test set {name!r}; choose from {list(SETS)}, a group {list(SET_GROUPS)} (or 'all')."
            )
    return list(dict.fromkeys(chosen))
