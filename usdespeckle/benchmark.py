"""Quality and speed benchmark of despeckling methods; writes ``reports/benchmark.md`` and figures.

Every method (the classical filters of :mod:`usdespeckle.filters` and, when its weights are shipped,
the trained ``denoiser``) runs on the same seeded test inputs:

- ``rayleigh_mild`` / ``rayleigh_strong``: natural photographs (``datalist_natural.json`` test split,
  or scikit-image photographs when no prepared data is given) speckled with the method's Rayleigh
  model (Vieira et al., IEEE Access 12:45811, 2024); the reference is the clean photograph.
- ``mri_sim`` / ``mri_extra_sim``: MRI slices through the trained simulator
  (``datalist_mri_pairs.json``, made by the training recipe); the reference is the MRI slice.
- ``phantom``: cyst phantoms of graded contrast through the fast physics simulator
  (:class:`usdespeckle.simulate.FastBModeSimulator`); no clean image exists, so speckle statistics
  (ENL, CNR, gCNR) are measured in the known regions and fidelity against the echogenicity map.

The speckled input itself is the ``input`` row of every table, the baseline a method must beat.
Methods and sets are registries (:data:`SETS`, :func:`available_methods`), so the denoiser is just
another method and a new test set is one function.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Case",
    "Method",
    "SetSpec",
    "SETS",
    "INPUT",
    "available_methods",
    "register_method",
    "run_benchmark",
    "compose_grid",
]

INPUT = "input"  # the name of the baseline row: the speckled input, unchanged
TIMING_SHAPE = (256, 256)  # timings are reported per slice of this size, pixels
TIMING_THREADS = 2  # BLAS/OpenMP and torch threads while timing (and during the whole run)

ArrayFn = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------
@dataclass
class Method:
    """A despeckling method: a function from a 2D float image in [0, 1] to a float32 image.

    Attributes:
        name: registry name (``median``, ``bm3d``, ``denoiser``, ...).
        fn: ``fn(image) -> image``, both 2D float in [0, 1], same shape.
        description: one line for the report.
    """

    name: str
    fn: ArrayFn
    description: str = ""


_EXTRA_METHODS: dict[str, Method] = {}


def register_method(name: str, fn: ArrayFn, description: str = "") -> None:
    """Add (or replace) a method in the registry, e.g. a new filter or a second network.

    Args:
        name: registry name; must not be ``"input"``.
        fn: ``fn(image2d float [0, 1]) -> float32 image`` of the same shape.
        description: one line shown in the report.

    Raises:
        ValueError: if the name is ``"input"`` or empty.
    """
    if not name or name == INPUT:
        raise ValueError(f"method name must be a non-empty name other than {INPUT!r}; got {name!r}.")
    _EXTRA_METHODS[name] = Method(name, fn, description)


def _classical_methods() -> dict[str, Method]:
    from usdespeckle import filters

    return {
        name: Method(name, fn, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
        for name, fn in filters.FILTERS.items()
    }


def _denoiser_method() -> tuple[Method | None, str]:
    """The shipped denoiser as a method, or ``(None, why it is skipped)``."""
    try:
        from usdespeckle import inference
    except ImportError as err:
        return None, f"usdespeckle.inference is not importable ({err})"
    try:
        inference.load_denoiser()  # checks the weights exist and match the bundle's metadata
    except (FileNotFoundError, ValueError) as err:
        return None, str(err)

    def run_denoiser(image: np.ndarray) -> np.ndarray:
        # The test images are already in [0, 1]: map them as they are, not by robust percentiles.
        return inference.despeckle_array(image, method="denoiser", intensity_range=(0.0, 1.0))

    where = inference.default_bundle_root() / inference.MODEL_FILES["torch"]
    return Method("denoiser", run_denoiser, f"the shipped pix2pix denoiser ({where})"), ""


def available_methods() -> tuple[dict[str, Method], dict[str, str]]:
    """All methods that can run here, and the skipped ones with the reason.

    Returns:
        ``(methods, skipped)``: name -> :class:`Method` (classical filters, the denoiser when its
        weights exist, and anything added by :func:`register_method`), and name -> reason.
    """
    methods: dict[str, Method] = {}
    skipped: dict[str, str] = {}
    try:
        methods.update(_classical_methods())
    except ImportError as err:
        skipped["filters"] = f"usdespeckle.filters is not importable ({err})"
    denoiser, why = _denoiser_method()
    if denoiser is None:
        skipped["denoiser"] = why
    else:
        methods["denoiser"] = denoiser
    methods.update(_EXTRA_METHODS)
    return methods, skipped


# --------------------------------------------------------------------------------------------------
# Test sets
# --------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One test input.

    Attributes:
        name: short identifier (file stem or ``phantom_003``).
        image: speckled input, float32 (H, W) in [0, 1].
        reference: what a perfect method would return (clean image or echogenicity map), in [0, 1].
        masks: for phantoms, boolean masks: ``background`` and one per cyst.
        contrasts_db: for phantoms, the contrast of each cyst mask in dB (same keys as the cyst masks).
    """

    name: str
    image: np.ndarray
    reference: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    contrasts_db: dict[str, float] = field(default_factory=dict)


@dataclass
class LoadedSet:
    """The cases of one set, plus notes for the report (fallbacks, what is missing)."""

    cases: list[Case]
    notes: list[str] = field(default_factory=list)


@dataclass
class SetSpec:
    """A registered test set.

    Attributes:
        name: registry name.
        description: one line for the report.
        kind: ``"reference"`` (clean image known) or ``"phantom"`` (regions known).
        load: ``load(data_dir, limit, seed, size) -> LoadedSet``; may return no cases with a note.
    """

    name: str
    description: str
    kind: str
    load: Callable[[Path | None, int | None, int, int], LoadedSet]


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
_PHANTOM_COUNT = 8  # phantoms when no --limit is given
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
        ),
        SetSpec(
            "rayleigh_strong",
            "natural photographs, the paper's Rayleigh speckle (a ~ U(10, 50), b ~ U(-50, 50), decimation 4)",
            "reference",
            _rayleigh_loader(
                "rayleigh_strong", decimation=4, gain_range=(10.0, 50.0), offset_range=(-50.0, 50.0)
            ),
        ),
        SetSpec(
            "mri_sim",
            "MRI slices (test split) through the trained simulator; reference = the MRI slice",
            "reference",
            _pairs_loader([("datalist_mri_pairs.json", "test")]),
        ),
        SetSpec(
            "mri_extra_sim",
            "extra MRI (dipy, nibabel samples) through the trained simulator; reference = the MRI slice",
            "reference",
            _pairs_loader(
                [("datalist_mri_extra_test_pairs.json", "test"), ("datalist_mri_pairs.json", "extra_test")]
            ),
        ),
        SetSpec(
            "phantom",
            "cyst phantoms of graded contrast through the fast physics B-mode simulator",
            "phantom",
            _load_phantoms,
        ),
    )
}


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------
REFERENCE_METRICS = ("psnr", "ssim", "psnr_affine", "ssim_affine", "epi")
PHANTOM_METRICS = (
    "enl",
    "cnr_mean",
    "gcnr_mean",
    "cnr_weakest",
    "gcnr_weakest",
    "epi",
    "psnr_affine",
    "ssim_affine",
)
METRIC_LABELS = {
    "psnr": "PSNR dB",
    "ssim": "SSIM",
    "psnr_affine": "PSNR aff. dB",
    "ssim_affine": "SSIM aff.",
    "epi": "EPI",
    "enl": "ENL bg",
    "cnr_mean": "CNR mean",
    "gcnr_mean": "gCNR mean",
    "cnr_weakest": "CNR weakest",
    "gcnr_weakest": "gCNR weakest",
}


def _reference_metrics(output: np.ndarray, case: Case) -> dict[str, float]:
    from usdespeckle import metrics

    ref = case.reference
    return {
        "psnr": float(metrics.psnr(output, ref)),
        "ssim": float(metrics.ssim(output, ref)),
        "psnr_affine": float(metrics.psnr_affine(output, ref)),
        "ssim_affine": float(metrics.ssim_affine(output, ref)),
        "epi": float(metrics.edge_preservation_index(output, ref)),
    }


def _phantom_metrics(output: np.ndarray, case: Case) -> dict[str, float]:
    from usdespeckle import metrics

    background = case.masks["background"]
    cnr = {k: float(metrics.cnr(output, case.masks[k], background)) for k in case.contrasts_db}
    gcnr = {k: float(metrics.gcnr(output, case.masks[k], background)) for k in case.contrasts_db}
    weakest = min(case.contrasts_db, key=lambda k: abs(case.contrasts_db[k]))
    ref = case.reference
    return {
        "enl": float(metrics.enl(output, background)),
        "cnr_mean": float(np.mean(list(cnr.values()))),
        "gcnr_mean": float(np.mean(list(gcnr.values()))),
        "cnr_weakest": cnr[weakest],
        "gcnr_weakest": gcnr[weakest],
        "epi": float(metrics.edge_preservation_index(output, ref)),
        "psnr_affine": float(metrics.psnr_affine(output, ref)),
        "ssim_affine": float(metrics.ssim_affine(output, ref)),
    }


def _summary(values: Iterable[float]) -> dict[str, Any]:
    """Mean and sample standard deviation over the finite values (NaN if none)."""
    vals = [float(v) for v in values]
    finite = [v for v in vals if math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else float("nan")
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0 if finite else float("nan")
    return {"mean": mean, "std": std, "n": len(finite), "values": vals}


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
def _time_method(fn: ArrayFn, image: np.ndarray, repeats: int) -> dict[str, float]:
    """Milliseconds per call of ``fn(image)``: one warm-up call, then the median of ``repeats``.

    Wall-clock time is what a user waits; the process CPU time (all threads) is reported beside it
    because it is less inflated when other jobs share the cores.
    """
    fn(image)
    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        wall, cpu = time.perf_counter(), time.process_time()
        fn(image)
        walls.append((time.perf_counter() - wall) * 1000.0)
        cpus.append((time.process_time() - cpu) * 1000.0)
    return {
        "median_ms": float(np.median(walls)),
        "min_ms": float(np.min(walls)),
        "cpu_ms": float(np.median(cpus)),
        "repeats": len(walls),
    }


class _Threads:
    """Limit BLAS/OpenMP (threadpoolctl) and torch to ``n`` threads inside the block."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._limits = None
        self._torch_threads: int | None = None

    def __enter__(self) -> _Threads:
        from threadpoolctl import threadpool_limits

        self._limits = threadpool_limits(limits=self.n)
        try:
            import torch

            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(self.n)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self._limits is not None:
            self._limits.restore_original_limits()
        if self._torch_threads is not None:
            import torch

            torch.set_num_threads(self._torch_threads)


# --------------------------------------------------------------------------------------------------
# Figures (numpy + PIL; matplotlib is not a dependency)
# --------------------------------------------------------------------------------------------------
def compose_grid(
    rows: Sequence[Sequence[np.ndarray]],
    column_labels: Sequence[str],
    row_labels: Sequence[str] | None = None,
    *,
    gap: int = 4,
    label_height: int = 22,
    row_label_width: int = 0,
) -> np.ndarray:
    """Tile grey images into one labelled uint8 grid (rows x columns), white background.

    Args:
        rows: rows of 2D float images in [0, 1]; every image of the grid has the same shape.
        column_labels: one label per column, drawn above the first row.
        row_labels: optional label per row, drawn in a left margin of ``row_label_width`` pixels
            (as wide as the longest label when the width is 0).
        gap: white pixels between tiles.
        label_height: pixels reserved above the first row for the column labels.
        row_label_width: width of the row-label margin, pixels.

    Returns:
        uint8 (H, W) grid image.

    Raises:
        ValueError: if the grid is empty, the rows are ragged, shapes differ or labels miscount.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not rows or not rows[0]:
        raise ValueError("compose_grid needs at least one row with one image.")
    ncols = len(rows[0])
    if any(len(r) != ncols for r in rows):
        raise ValueError(f"every row needs {ncols} images; got row lengths {[len(r) for r in rows]}.")
    if len(column_labels) != ncols:
        raise ValueError(f"{ncols} columns but {len(column_labels)} column labels: {list(column_labels)}.")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(row_labels)} row labels.")
    shape = np.asarray(rows[0][0]).shape
    for r in rows:
        for img in r:
            if np.asarray(img).shape != shape:
                raise ValueError(f"all tiles must share one shape; got {np.asarray(img).shape} and {shape}.")
    h, w = shape
    try:
        font = ImageFont.load_default(size=max(6, label_height - 8))
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    if row_labels is not None and row_label_width == 0:  # as wide as the longest row label
        measure = ImageDraw.Draw(Image.new("L", (1, 1)))
        row_label_width = 8 + int(max(measure.textlength(str(t), font=font) for t in row_labels))
    height = label_height + len(rows) * (h + gap)
    width = row_label_width + ncols * (w + gap)
    # Labels first, tiles after: a label's overflow is painted over instead of covering an image.
    pil = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(pil)

    def fit(text: str, room: float) -> str:
        while text and draw.textlength(text, font=font) > room:
            text = text[:-1]
        return text

    for j, label in enumerate(column_labels):
        draw.text((row_label_width + j * (w + gap) + 2, 3), fit(str(label), w - 2), fill=0, font=font)
    for i, label in enumerate(row_labels or []):
        text = fit(str(label), row_label_width - 4)
        draw.text((2, label_height + i * (h + gap) + h // 2 - 6), text, fill=0, font=font)
    canvas = np.array(pil, dtype=np.uint8)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            tile = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float64)), 0.0, 1.0)
            top, left = label_height + i * (h + gap), row_label_width + j * (w + gap)
            canvas[top : top + h, left : left + w] = np.round(tile * 255).astype(np.uint8)
    return canvas


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import importlib.metadata as md

    from usdespeckle import __version__

    out = {"usdespeckle": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "scikit-image", "torch", "monai", "bm3d", "pymust", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _load_average() -> str:
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # not available on Windows
        return "unknown"


def _fmt(summary: dict[str, Any]) -> str:
    mean, std = summary["mean"], summary["std"]
    if not math.isfinite(mean):
        return "n/a"
    digits = 2 if abs(mean) >= 10 else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Despeckling benchmark",
        "",
        f"Made by `{meta['command']}` on {meta['date']} (seed {meta['seed']}, "
        f"images {meta['image_size']}x{meta['image_size']}, limit {meta['limit']}).",
        "",
        "Every method sees the same seeded inputs. Values are mean ± sample standard deviation over the "
        "images of a set; `input` is the speckled input itself, the baseline to beat. "
        "PSNR/SSIM against the reference (data range 1); *aff.* after the best affine fit "
        "`a*output + b` to the reference (removes gain/offset differences); EPI: edge preservation "
        "index (1 = edges as in the reference); ENL: equivalent number of looks in the background "
        "(higher = smoother); CNR, gCNR: contrast of each cyst against the background "
        "(gCNR in [0, 1], 1 = separable).",
        "",
    ]
    for set_name, s in result["sets"].items():
        spec = SETS[set_name]
        lines += [f"## {set_name}: {spec.description}", ""]
        lines += [f"- {note}" for note in s["notes"]]
        lines.append(f"- images: {s['n']}")
        lines.append("")
        if not s["n"]:
            continue
        metric_names = list(REFERENCE_METRICS if spec.kind == "reference" else PHANTOM_METRICS)
        lines.append("| method | " + " | ".join(METRIC_LABELS[m] for m in metric_names) + " |")
        lines.append("|---|" + "---|" * len(metric_names))
        for method, per_metric in s["metrics"].items():
            cells = [_fmt(per_metric[m]) for m in metric_names]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        if s.get("figure"):
            lines += [f"![{set_name}]({s['figure']})", ""]
    lines += [
        f"## Speed: milliseconds per {TIMING_SHAPE[0]}x{TIMING_SHAPE[1]} slice",
        "",
        f"On this machine ({meta['machine']}), {TIMING_THREADS} threads, median of "
        f"{meta['time_repeats']} runs after one warm-up; load average {meta['load_average']} when the "
        "run began (a load above the core count inflates wall-clock times; CPU ms, summed over threads, "
        "much less).",
        "",
        "| method | median ms | min ms | CPU ms |",
        "|---|---|---|---|",
    ]
    for method, t in result["timing_ms"].items():
        lines.append(f"| {method} | {t['median_ms']:.1f} | {t['min_ms']:.1f} | {t['cpu_ms']:.1f} |")
    lines.append("")
    if result["skipped"]:
        lines += ["## Skipped", ""]
        lines += [f"- {name}: {why}" for name, why in result["skipped"].items()]
        lines.append("")
    lines += ["## Provenance", ""]
    lines += [f"- command: `{meta['command']}`", f"- seed: {meta['seed']}", f"- date (UTC): {meta['date']}"]
    lines.append(f"- methods: {', '.join(meta['methods'])}")
    lines.append("- counts: " + ", ".join(f"{name} {s['n']}" for name, s in result["sets"].items()))
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    lines.append(f"- machine: {meta['machine']}")
    lines.append("- numbers as JSON: `benchmark.json` beside this file")
    lines.append("")
    return "\n".join(lines)


def _command_line(
    methods: Sequence[str],
    sets: Sequence[str],
    data_dir: Path | None,
    out_dir: Path,
    limit: int | None,
    seed: int,
) -> str:
    parts = ["usdespeckle", "benchmark", "--methods", *methods, "--sets", *sets]
    if data_dir is not None:
        parts += ["--data", str(data_dir)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    parts += ["--seed", str(seed), "--out", str(out_dir)]
    return shlex.join(parts)


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def resolve_methods(names: Sequence[str] | None) -> tuple[dict[str, Method], dict[str, str]]:
    """Pick methods by name (None or ``["all"]``: every available one).

    Returns:
        ``(methods, skipped)`` where skipped maps unavailable names to the reason.

    Raises:
        ValueError: for a name that is neither available nor a known-but-skipped method.
    """
    available, skipped = available_methods()
    if names is None or list(names) == ["all"]:
        return available, skipped
    chosen: dict[str, Method] = {}
    chosen_skipped: dict[str, str] = {}
    for name in names:
        if name == INPUT:
            continue  # always included as the baseline
        if name in available:
            chosen[name] = available[name]
        elif name in skipped:
            chosen_skipped[name] = skipped[name]
        else:
            known = sorted((set(available) | set(skipped)) - {"filters"})
            why = f" ({skipped['filters']})" if "filters" in skipped else ""
            raise ValueError(f"unknown method {name!r}; choose from {known} (or 'all'){why}.")
    return chosen, chosen_skipped


def resolve_sets(names: Sequence[str] | None) -> list[str]:
    """Validate set names (None or ``["all"]``: every registered set).

    Raises:
        ValueError: for an unknown set name.
    """
    if names is None or list(names) == ["all"]:
        return list(SETS)
    for name in names:
        if name not in SETS:
            raise ValueError(f"unknown test set {name!r}; choose from {list(SETS)} (or 'all').")
    return list(dict.fromkeys(names))


def run_benchmark(
    methods: Sequence[str] | None,
    sets: Sequence[str] | None,
    *,
    data_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    limit: int | None,
    seed: int,
    progress: bool = True,
    image_size: int = 256,
    time_repeats: int = 3,
    figure_rows: int = 3,
) -> dict[str, Any]:
    """Run every method on every test set, write ``benchmark.md``, ``benchmark.json`` and figures.

    Args:
        methods: method names (see :func:`available_methods`); None or ``["all"]`` for all available.
            The speckled ``input`` is always added as the baseline row.
        sets: test-set names from :data:`SETS`; None or ``["all"]`` for all.
        data_dir: folder made by ``usdespeckle prepare-data`` (datalists), or None to use
            scikit-image photographs for the natural sets and skip the MRI sets.
        out_dir: where ``benchmark.md``, ``benchmark.json`` and ``figures/<set>.png`` are written.
        limit: at most this many images per set (None: all; phantoms default to 8).
        seed: seed of every random draw (speckle, phantoms); same seed, same numbers.
        progress: show a tqdm progress bar on stderr.
        image_size: side of the square test images, pixels (timings always use 256x256).
        time_repeats: timed runs per method (median reported) after one warm-up.
        figure_rows: images per set shown in the figure grid.

    Returns:
        dict with ``meta`` (command, seed, date, versions, ...), ``sets`` (per set: ``n``, ``notes``,
        ``metrics[method][metric] = {"mean", "std", "n", "values"}``, ``figure``), ``timing_ms``
        (per method: ``median_ms``, ``min_ms``), ``skipped`` (name -> reason) and ``report`` (path).

    Raises:
        ValueError: for an unknown method or set, a non-positive limit or image size.
        FileNotFoundError: if ``data_dir`` is given but does not exist.
    """
    from tqdm.auto import tqdm

    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be a positive number of images per set or None; got {limit}.")
    if int(image_size) < 16:
        raise ValueError(f"image_size must be at least 16 pixels; got {image_size}.")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"data folder {data_dir} does not exist; make it with `usdespeckle prepare-data {data_dir}` "
            "or leave --data out to use scikit-image photographs."
        )
    data_path = None if data_dir is None else Path(data_dir)
    out_path = Path(out_dir)
    chosen, skipped = resolve_methods(methods)
    set_names = resolve_sets(sets)
    skipped = dict(skipped)
    run_methods: dict[str, ArrayFn] = {INPUT: lambda image: np.asarray(image, dtype=np.float32)}
    run_methods.update({name: m.fn for name, m in chosen.items()})

    meta = {
        "command": _command_line(list(chosen), set_names, data_path, out_path, limit, seed),
        "seed": int(seed),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "limit": limit,
        "image_size": int(image_size),
        "time_repeats": int(time_repeats),
        "methods": list(run_methods),
        "versions": _versions(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()}",
        "load_average": _load_average(),
    }
    result: dict[str, Any] = {"meta": meta, "sets": {}, "timing_ms": {}, "skipped": skipped}

    with _Threads(TIMING_THREADS):
        loaded = {name: SETS[name].load(data_path, limit, seed, int(image_size)) for name in set_names}
        total = sum(len(ls.cases) for ls in loaded.values()) * len(run_methods)
        bar = tqdm(total=total, desc="benchmark", unit="run", disable=not progress, file=sys.stderr)
        for set_name, ls in loaded.items():
            spec = SETS[set_name]
            metric_fn = _reference_metrics if spec.kind == "reference" else _phantom_metrics
            per_method: dict[str, dict[str, list[float]]] = {m: {} for m in run_methods}
            shown: dict[str, list[np.ndarray]] = {m: [] for m in run_methods}
            for index, case in enumerate(ls.cases):
                for method_name, fn in run_methods.items():
                    bar.set_postfix_str(f"{set_name}/{case.name}/{method_name}")
                    output = np.asarray(fn(case.image), dtype=np.float32)
                    if output.shape != case.image.shape:
                        raise ValueError(
                            f"method {method_name!r} returned shape {output.shape} for input "
                            f"{case.image.shape}; methods must keep the shape."
                        )
                    for metric, value in metric_fn(output, case).items():
                        per_method[method_name].setdefault(metric, []).append(value)
                    if index < figure_rows:
                        shown[method_name].append(output)
                    bar.update(1)
            entry: dict[str, Any] = {
                "n": len(ls.cases),
                "notes": ls.notes,
                "cases": [c.name for c in ls.cases],
                "metrics": {
                    m: {metric: _summary(vals) for metric, vals in per_metric.items()}
                    for m, per_metric in per_method.items()
                },
                "figure": None,
            }
            if ls.cases:
                rows = []
                for i, case in enumerate(ls.cases[:figure_rows]):
                    rows.append([shown[m][i] for m in run_methods] + [_display(case.reference)])
                grid = compose_grid(
                    rows, [*run_methods, "reference"], [c.name for c in ls.cases[:figure_rows]]
                )
                figure = Path("figures") / f"{set_name}.png"
                _save_png(grid, out_path / figure)
                entry["figure"] = figure.as_posix()
            result["sets"][set_name] = entry
        bar.close()

        timing_image = _timing_image(seed)
        for method_name, fn in run_methods.items():
            if method_name == INPUT:
                continue
            result["timing_ms"][method_name] = _time_method(fn, timing_image, time_repeats)

    out_path.mkdir(parents=True, exist_ok=True)
    report = out_path / "benchmark.md"
    _atomic_write(report, _markdown(result))
    _atomic_write(out_path / "benchmark.json", json.dumps(result, indent=1, allow_nan=True) + "\n")
    result["report"] = str(report)
    return result


def _display(reference: np.ndarray) -> np.ndarray:
    """Stretch a reference (e.g. an echogenicity map) to [0, 1] for display only."""
    ref = np.asarray(reference, dtype=np.float64)
    lo, hi = float(ref.min()), float(ref.max())
    return ((ref - lo) / (hi - lo) if hi > lo else np.zeros_like(ref)).astype(np.float32)


def _timing_image(seed: int) -> np.ndarray:
    """A 256x256 speckled photograph (scikit-image's camera), the input every method is timed on."""
    from usdespeckle.speckle import rayleigh_speckle

    clean = _to_size(_skimage_photo("camera"), TIMING_SHAPE[0])
    return np.asarray(rayleigh_speckle(clean, _case_rng(seed, "timing", 0)), dtype=np.float32)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
