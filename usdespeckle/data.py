"""Dataset preparation for training and testing (``usdespeckle prepare-data``).

Everything comes from data shipped inside installed packages; nothing is downloaded.

* MRI slices (``datalist_mri.json``, key ``label``): nilearn's MNI152 2009a symmetric T1 template
  in its three orientations. The template is a single volume, so items are split by *slab*:
  contiguous ranges of slices with a gap of :data:`MRI_SLAB_GAP` slices (1 mm each) between the
  training, validation and test slabs, so that no validation or test slice neighbours a training
  slice. The template is left-right symmetric, so sagittal slabs are chosen by distance from the
  midline (test: the central slab; validation: the next slabs on both sides; training: the lateral
  slabs); a sagittal slice and its mirror image therefore always fall in the same split. Axial and
  coronal slabs follow the slice index (training, then validation, then test). Each kept slice is
  written once as a whole and ``mri_views - 1`` more times as a random zoomed, possibly flipped crop.
* Extra MRI test slices (``datalist_mri_extra_test.json``, key ``label``, test only): dipy's
  ``t1_coronal_slice.npy`` and ``S0_10slices.nii.gz``, nibabel's ``tests/data/anatomical.nii``.
* Natural photographs (``datalist_natural.json``, key ``label``): scikit-image's offline sample
  images and scikit-learn's sample images, converted to grey; random crops with flips and
  90-degree rotations, split by source photograph (fixed lists :data:`NATURAL_TEST`,
  :data:`NATURAL_VALIDATION`; images that are the same photograph share a source).
* Simulator B-mode (``datalist_simulator.json``, key ``image``, plus ``echogenicity``): echogenicity
  maps from MRI slices, natural crops and random shapes, turned into B-mode images by a physics
  simulator (``FastBModeSimulator`` in the command line; any callable in the Python API). MRI and
  natural maps keep the split of their source, so the splits agree across all datalists. The
  stored ``echogenicity`` PNG is the grey-level map ``g``; the simulator receives the linear
  amplitude ``10 ** ((g - 1) * C / 20)`` with ``C ~ U(SIMULATOR_CONTRAST_DB)`` decibels (0 stays 0).

Images are 8-bit grey PNG files of ``size x size`` pixels; datalist paths are relative to the
output folder (``monai.data.load_decathlon_datalist(path, base_dir=out_dir)``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage.transform import resize
from tqdm import tqdm

from usdespeckle import __version__

__all__ = [
    "BModeMaker",
    "DatasetExistsError",
    "MRI_SLAB_GAP",
    "NATURAL_TEST",
    "NATURAL_VALIDATION",
    "PrepareSettings",
    "SIMULATOR_CONTRAST_DB",
    "SPLITS",
    "load_mri_volume",
    "load_natural_sources",
    "mri_slab_split",
    "prepare_dataset",
    "random_shapes_map",
    "write_png",
]

SPLITS = ("training", "validation", "test")
BModeMaker = Callable[[np.ndarray, np.random.Generator], np.ndarray]

MNI_T1 = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"  # inside the nilearn package
MRI_SLAB_GAP = 6  # slices (mm) left out between training, validation and test slabs
MRI_MIN_FOREGROUND = 0.15  # keep slices with at least this fraction of pixels above 10% of the maximum
ORIENTATIONS = ("sagittal", "coronal", "axial")  # volume axes 0, 1, 2 of the RAS template

SKIMAGE_SOURCES = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom",
    "stereo_motorcycle", "text",
)  # fmt: skip
# Different names for the same photograph (or a crop of it) share one source.
SOURCE_ALIASES = {"skimage:cat": "skimage:chelsea", "skimage:microaneurysms": "skimage:retina"}
NATURAL_TEST = ("skimage:camera", "skimage:coins", "skimage:moon", "skimage:chelsea", "sklearn:china")
NATURAL_VALIDATION = ("skimage:astronaut", "skimage:gravel", "skimage:page")

SIMULATOR_CONTRAST_DB = (20.0, 40.0)  # range of the decibel span given to an echogenicity map's grey levels
_FORMAT = 3  # bump when the layout or the generation changes in a way that makes old data different
_OWNED = ("mri", "mri_extra", "natural", "bmode", "echogenicity", "real_bmode")
_DATALISTS = (
    "datalist_mri.json",
    "datalist_natural.json",
    "datalist_simulator.json",
    "datalist_mri_extra_test.json",
    "datalist_real_bmode.json",
)


class DatasetExistsError(ValueError):
    """The output folder holds something else than the dataset asked for."""


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that determines the dataset's content (stored in the manifest).

    Args:
        seed: seed of all random choices.
        size: image side, pixels (>= 32).
        mri_step: keep every ``mri_step``-th template slice (>= 1).
        mri_views: images per kept MRI slice: the whole slice, then random zoomed crops (>= 1).
        natural_crops: crops per natural source photograph (>= 1).
        simulator_count: simulator B-mode images in all (split 80/10/10, thirds MRI/natural/shapes).
        real_bmode: add the real B-mode frames of pydicom-data's clinical scans
            (``datalist_real_bmode.json``; see :mod:`usdespeckle.real_bmode`).
    """

    seed: int = 0
    size: int = 256
    mri_step: int = 1
    mri_views: int = 4
    natural_crops: int = 80
    simulator_count: int = 1500
    real_bmode: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the setting that is out of range."""
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels; got {self.size}.")
        for name in ("mri_step", "mri_views", "natural_crops"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}.")
        if self.simulator_count < 0:
            raise ValueError(f"simulator_count must be >= 0; got {self.simulator_count}.")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0; got {self.seed}.")


# ----------------------------------------------------------------------------- image helpers


def _to_unit(image: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] as float64 (a constant image gives zeros)."""
    arr = np.asarray(image, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _square(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad to a centred square, then resize to ``size x size`` (bilinear, anti-aliased)."""
    h, w = image.shape
    side = max(h, w)
    padded = np.zeros((side, side), dtype=np.float64)
    top, left = (side - h) // 2, (side - w) // 2
    padded[top : top + h, left : left + w] = image
    return np.clip(resize(padded, (size, size), order=1, anti_aliasing=True), 0.0, 1.0)


def _crop_resize(image: np.ndarray, rng: np.random.Generator, size: int, min_fraction: float) -> np.ndarray:
    """A random square crop of side ``U(min_fraction, 1) * min(H, W)``, resized to ``size``."""
    h, w = image.shape
    side = max(8, int(round(rng.uniform(min_fraction, 1.0) * min(h, w))))
    side = min(side, h, w)
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = image[top : top + side, left : left + side]
    return np.clip(resize(crop, (size, size), order=1, anti_aliasing=True), 0.0, 1.0)


def _flip_rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random one of the 8 flips/90-degree rotations."""
    out = np.rot90(image, k=int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def write_png(path: Path, image: np.ndarray) -> str:
    """Write a [0, 1] grey image as an 8-bit PNG and return its sha256.

    Args:
        path: file to write (parent folders are created).
        image: 2D float image, values in [0, 1] (clipped).

    Returns:
        hex sha256 of the written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path, format="PNG", optimize=False)
    return _sha256(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- MRI


@functools.lru_cache(maxsize=1)
def load_mri_volume() -> tuple[np.ndarray, str]:
    """Load nilearn's MNI152 T1 template from the installed package (no network).

    Returns:
        (volume scaled to [0, 1] by its 99.9th percentile, float32 (197, 233, 189); path).
        Cached: the same read-only array is returned on every call.

    Raises:
        FileNotFoundError: if nilearn or its template file is missing.
    """
    import nibabel as nib

    try:
        import nilearn
    except ImportError as err:
        raise FileNotFoundError(
            "nilearn is not installed; `pip install nilearn` provides the MRI template."
        ) from err
    path = Path(nilearn.__file__).parent / MNI_T1
    if not path.is_file():
        raise FileNotFoundError(f"MNI152 template not found at {path}; reinstall nilearn (>= 0.10).")
    volume = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    scale = float(np.percentile(volume, 99.9))
    volume = np.clip(volume / scale, 0.0, 1.0)
    volume.flags.writeable = False
    return volume, str(path)


def _oriented_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` of a RAS volume, rotated so superior (or anterior) is up."""
    return np.rot90(np.take(volume, index, axis=axis))


def mri_slab_split(indices: Sequence[int], orientation: str, gap: int = MRI_SLAB_GAP) -> dict[int, str]:
    """Assign kept slice indices of one orientation to splits by slab, leaving gaps out.

    Args:
        indices: sorted slice indices that passed the foreground test.
        orientation: "sagittal" (symmetric slabs around the midline), "coronal" or "axial".
        gap: slices left out at each slab boundary.

    Returns:
        {slice index: split name} for the slices kept (those in the gaps are absent).
    """
    idx = np.asarray(sorted(indices))
    first, last = int(idx.min()), int(idx.max())
    result: dict[int, str] = {}
    if orientation == "sagittal":
        centre = 0.5 * (first + last)
        half = max(1.0, 0.5 * (last - first))
        # distance from the midline, in slices: test |d| < 0.2 half, validation up to 0.4 half
        bounds = (0.2 * half, 0.4 * half)
        for i in idx:
            d = abs(i - centre)
            if d < bounds[0] - gap / 2:
                result[int(i)] = "test"
            elif bounds[0] + gap / 2 <= d < bounds[1] - gap / 2:
                result[int(i)] = "validation"
            elif d >= bounds[1] + gap / 2:
                result[int(i)] = "training"
    else:
        span = last - first
        cut_val, cut_test = first + 0.65 * span, first + 0.82 * span
        for i in idx:
            if i < cut_val - gap / 2:
                result[int(i)] = "training"
            elif cut_val + gap / 2 <= i < cut_test - gap / 2:
                result[int(i)] = "validation"
            elif i >= cut_test + gap / 2:
                result[int(i)] = "test"
    return result


def _mri_slices(volume: np.ndarray, step: int) -> list[tuple[str, int, str]]:
    """(orientation, slice index, split) of every kept template slice, in a fixed order."""
    threshold = 0.1 * float(volume.max())
    out = []
    for axis, orientation in enumerate(ORIENTATIONS):
        moved = np.moveaxis(volume, axis, 0)
        foreground = (moved > threshold).mean(axis=(1, 2))
        kept = [int(i) for i in np.nonzero(foreground >= MRI_MIN_FOREGROUND)[0]]
        split = mri_slab_split(kept, orientation)
        out.extend((orientation, i, split[i]) for i in kept[::step] if i in split)
    return out


def _mri_view(slice_image: np.ndarray, view: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """View 0 is the whole padded slice; other views are random zoomed crops, flipped left-right at random."""
    whole = _square(slice_image, size)
    if view == 0:
        return whole
    out = _crop_resize(whole, rng, size, min_fraction=0.6)
    return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out


def _mri_extra_images(size: int) -> Iterable[tuple[str, str, np.ndarray]]:
    """(source, name, image) of dipy's and nibabel's sample MRI, for testing only."""
    import dipy
    import nibabel as nib

    files = Path(dipy.__file__).parent / "data" / "files"
    coronal = files / "t1_coronal_slice.npy"
    if coronal.is_file():
        yield (
            "dipy:t1_coronal_slice",
            "dipy_t1_coronal",
            _square(_to_unit(np.load(coronal)), size),
        )  # stored superior-up
    volumes = [
        ("dipy:S0_10slices", "dipy_s0", files / "S0_10slices.nii.gz"),
        (
            "nibabel:anatomical",
            "nibabel_anatomical",
            Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii",
        ),
    ]
    for source, name, path in volumes:
        if not path.is_file():
            continue
        canonical = nib.as_closest_canonical(nib.load(str(path)))  # RAS axes, like the template
        volume = np.asarray(canonical.dataobj, dtype=np.float64)
        volume = volume.reshape(volume.shape[:3])
        volume = np.clip(volume / max(float(np.percentile(volume, 99.9)), 1e-12), 0.0, 1.0)
        threshold = 0.1 * float(volume.max())
        axes = (2,) if volume.shape[2] < 16 else (0, 1, 2)  # the 10-slice volume is axial only
        for axis in axes:
            for i in range(volume.shape[axis]):
                image = _oriented_slice(volume, axis, i)
                if (image > threshold).mean() >= MRI_MIN_FOREGROUND:
                    yield source, f"{name}_{ORIENTATIONS[axis]}_{i:03d}", _square(image, size)


# ----------------------------------------------------------------------------- natural photographs


@functools.lru_cache(maxsize=1)
def load_natural_sources() -> dict[str, np.ndarray]:
    """Grey [0, 1] photographs shipped with scikit-image and scikit-learn (no network).

    Images that fail to load (those that need a download) are skipped. Aliases of one photograph
    are merged under one source name (:data:`SOURCE_ALIASES`).

    Returns:
        {source name: float64 (H, W) image in [0, 1]}, sorted by name. Cached: the same read-only
        arrays are returned on every call.
    """
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb

    def grey(image: np.ndarray) -> np.ndarray:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = rgba2rgb(arr)
        if arr.ndim == 3 and arr.shape[-1] == 3:
            arr = rgb2gray(arr)
        return _to_unit(arr.astype(np.float64))

    sources: dict[str, np.ndarray] = {}
    for name in SKIMAGE_SOURCES:
        source = SOURCE_ALIASES.get(f"skimage:{name}", f"skimage:{name}")
        if source in sources:
            continue
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a sample that needs a download is simply left out
            continue
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        image = grey(image)
        if image.ndim == 2 and min(image.shape) >= 64:
            sources[source] = image
    try:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        for filename, image in zip(bunch.filenames, bunch.images, strict=True):
            sources[f"sklearn:{Path(filename).stem}"] = grey(image)
    except Exception:  # noqa: BLE001 - scikit-learn is optional here
        pass
    for image in sources.values():
        image.flags.writeable = False
    return dict(sorted(sources.items()))


def natural_split(source: str) -> str:
    """The split of a natural source photograph: fixed lists, everything else is training."""
    if source in NATURAL_TEST:
        return "test"
    if source in NATURAL_VALIDATION:
        return "validation"
    return "training"


# ----------------------------------------------------------------------------- random shapes


def random_shapes_map(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random echogenicity map: 1-8 shapes of random grey levels on a random background.

    Args:
        size: image side, pixels.
        rng: random generator.

    Returns:
        float64 (size, size) map in [0, 1].
    """
    from skimage.draw import random_shapes

    labels, _ = random_shapes(
        (size, size),
        max_shapes=8,
        min_shapes=1,
        min_size=max(4, size // 10),
        max_size=size // 2,
        channel_axis=None,
        intensity_range=(0, 254),
        allow_overlap=True,
        rng=int(rng.integers(0, 2**31 - 1)),
    )
    image = labels.astype(np.float64) / 254.0
    image[labels == 255] = rng.uniform(0.1, 0.9)  # background
    return np.clip(image, 0.0, 1.0)


# ----------------------------------------------------------------------------- the whole dataset


def _manifest_parameters(settings: PrepareSettings) -> dict[str, Any]:
    return {"format": _FORMAT, "version": __version__, **asdict(settings)}


def _existing_state(out_dir: Path, parameters: dict[str, Any]) -> str:
    """'absent', 'same' or 'different' for what ``out_dir`` holds."""
    if not out_dir.exists():
        return "absent"
    if not out_dir.is_dir():
        raise DatasetExistsError(f"{out_dir} exists and is not a folder; choose another OUT_DIR.")
    manifest_path = out_dir / "manifest.json"
    if not manifest_path.is_file():
        return "absent" if not any(out_dir.iterdir()) else "different"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return "different"
    if manifest.get("parameters") != parameters:
        return "different"
    for rel, digest in manifest.get("files", {}).items():
        path = out_dir / rel
        if not path.is_file() or _sha256(path) != digest:
            return "different"
    return "same"


def _clear(out_dir: Path) -> None:
    """Remove only what this module writes (never other files in ``out_dir``)."""
    for name in _OWNED:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in (*_DATALISTS, "manifest.json"):
        (out_dir / name).unlink(missing_ok=True)


def prepare_dataset(
    out_dir: str | os.PathLike,
    settings: PrepareSettings | None = None,
    *,
    bmode_maker: BModeMaker | None = None,
    force: bool = False,
    command: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], bool]:
    """Build the training/validation/test dataset in ``out_dir`` (see the module docstring).

    Args:
        out_dir: output folder (created).
        settings: content settings (defaults of :class:`PrepareSettings` when None).
        bmode_maker: ``f(echogenicity, rng) -> B-mode``, both (size, size) in [0, 1]; required when
            ``settings.simulator_count > 0``.
        force: replace a different dataset already in ``out_dir``.
        command: the command line, recorded in the manifest.
        progress: show tqdm progress bars.

    Returns:
        (manifest dict, True if written or False if ``out_dir`` already held this exact dataset).

    Raises:
        DatasetExistsError: ``out_dir`` holds other data and ``force`` is False.
        ValueError: invalid settings or a missing ``bmode_maker``.
        FileNotFoundError: the MRI template is not installed.
    """
    settings = settings or PrepareSettings()
    settings.validate()
    if settings.simulator_count > 0 and bmode_maker is None:
        raise ValueError("simulator_count > 0 needs a bmode_maker (e.g. FastBModeSimulator(...).simulate).")
    out = Path(out_dir)
    parameters = _manifest_parameters(settings)
    state = _existing_state(out, parameters)
    if state == "same":
        return json.loads((out / "manifest.json").read_text()), False
    if state == "different":
        if not force:
            raise DatasetExistsError(
                f"{out} already holds other files or a dataset made with other settings; "
                "choose another OUT_DIR or pass --force to replace it."
            )
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)

    size, seed = settings.size, settings.seed
    files: dict[str, str] = {}
    datalists: dict[str, dict[str, list[dict[str, str]]]] = {
        "mri": {s: [] for s in SPLITS},
        "natural": {s: [] for s in SPLITS},
        "simulator": {s: [] for s in SPLITS},
        "mri_extra_test": {"test": []},
    }

    def rng_for(kind: int, *index: int) -> np.random.Generator:
        # one independent, reproducible stream per item, whatever the order or the counts
        return np.random.default_rng([seed, kind, *index])

    def save(rel: str, image: np.ndarray) -> str:
        files[rel] = write_png(out / rel, image)
        return rel

    # disable=None lets tqdm switch itself off when stderr is not a terminal (logs, CI)
    bar = {"disable": None if progress else True, "unit": "img", "leave": False, "mininterval": 1.0}

    # MRI slices ------------------------------------------------------------------------------
    volume, template_path = load_mri_volume()
    slices = _mri_slices(volume, settings.mri_step)
    mri_pool: dict[str, list[tuple[str, np.ndarray]]] = {
        s: [] for s in SPLITS
    }  # whole slices, for the simulator
    for orientation, index, split in tqdm(slices, desc="MRI slices", **bar):
        axis = ORIENTATIONS.index(orientation)
        image = _oriented_slice(volume, axis, index)
        source = f"mni152:{orientation}:{split}-slab"
        for view in range(settings.mri_views):
            picture = _mri_view(image, view, rng_for(1, axis, index, view), size)
            rel = save(f"mri/{orientation}_{index:03d}_v{view}.png", picture)
            datalists["mri"][split].append({"label": rel, "source": source})
            if view == 0:
                mri_pool[split].append((source, picture))

    for source, name, image in tqdm(list(_mri_extra_images(size)), desc="extra MRI", **bar):
        rel = save(f"mri_extra/{name}.png", image)
        datalists["mri_extra_test"]["test"].append({"label": rel, "source": source})

    # natural photographs ----------------------------------------------------------------------
    natural = load_natural_sources()
    natural_names = list(natural)
    for k, name in enumerate(tqdm(natural_names, desc="natural sources", **bar)):
        split = natural_split(name)
        for crop in range(settings.natural_crops):
            rng = rng_for(2, k, crop)
            picture = _flip_rotate(_crop_resize(natural[name], rng, size, min_fraction=0.35), rng)
            rel = save(f"natural/{name.replace(':', '_')}_{crop:03d}.png", picture)
            datalists["natural"][split].append({"label": rel, "source": name})

    # simulator B-mode ---------------------------------------------------------------------------
    natural_by_split = {s: [n for n in natural_names if natural_split(n) == s] for s in SPLITS}
    n_total = settings.simulator_count
    n_split = {"validation": int(round(0.1 * n_total)), "test": int(round(0.1 * n_total))}
    n_split["training"] = n_total - n_split["validation"] - n_split["test"]
    jobs = [(split, i) for split in SPLITS for i in range(n_split[split])]
    kinds = ("mri", "natural", "shapes")
    for split, i in tqdm(jobs, desc="simulator B-mode", **bar):
        rng = rng_for(3, SPLITS.index(split), i)
        kind = kinds[i % 3]
        if kind == "mri" and not mri_pool[split]:
            kind = "shapes"
        if kind == "natural" and not natural_by_split[split]:
            kind = "shapes"
        if kind == "mri":
            j = int(rng.integers(0, len(mri_pool[split])))
            source, whole = mri_pool[split][j]
            echogenicity = _flip_rotate(whole, rng)
        elif kind == "natural":
            name = natural_by_split[split][int(rng.integers(0, len(natural_by_split[split])))]
            echogenicity = _flip_rotate(_crop_resize(natural[name], rng, size, min_fraction=0.35), rng)
            source = name
        else:
            echogenicity = random_shapes_map(size, rng)
            source = f"random-shapes:{split}:{i:05d}"
        # The map is a grey-level (log-domain) picture; B-mode grey levels are log-compressed, so
        # it becomes a linear scatterer amplitude spanning ``contrast_db`` decibels (zero stays
        # anechoic). A linear use of the grey levels would leave e.g. grey/white matter 2 dB apart,
        # invisible under speckle.
        contrast_db = rng.uniform(*SIMULATOR_CONTRAST_DB)
        amplitude = np.where(echogenicity > 0, 10.0 ** ((echogenicity - 1.0) * contrast_db / 20.0), 0.0)
        bmode = np.asarray(bmode_maker(amplitude.astype(np.float32), rng), dtype=np.float64)  # type: ignore[misc]
        if bmode.shape != (size, size):
            raise ValueError(f"bmode_maker returned shape {bmode.shape}; expected {(size, size)}.")
        stem = f"{split}_{i:05d}_{kind}"
        echo_rel = save(f"echogenicity/{stem}.png", echogenicity)
        rel = save(f"bmode/{stem}.png", bmode)
        datalists["simulator"][split].append({"image": rel, "echogenicity": echo_rel, "source": source})

    # real B-mode from pydicom-data's clinical scans (usdespeckle.real_bmode) -----------------------
    real_scans: list[dict] = []
    if settings.real_bmode:
        from usdespeckle.real_bmode import real_bmode_items

        datalists["real_bmode"], real_scans = real_bmode_items(save, progress=progress)

    # datalists and manifest (written last: a folder without a manifest is an unfinished run) ---
    for name, content in datalists.items():
        (out / f"datalist_{name}.json").write_text(json.dumps(content, indent=1) + "\n")
    manifest = {
        "parameters": parameters,
        "command": list(command) if command is not None else None,
        "sources": {
            "mri": template_path,
            "mri_extra_test": sorted({item["source"] for item in datalists["mri_extra_test"]["test"]}),
            "natural": {s: natural_by_split[s] for s in SPLITS},
            "simulator": "echogenicity maps from MRI slices, natural crops and skimage.draw.random_shapes; "
            f"amplitude 10**((g-1)*C/20), C ~ U{SIMULATOR_CONTRAST_DB} dB",
            "mri_split": f"slabs per orientation, {MRI_SLAB_GAP}-slice gaps between splits",
            "real_bmode": real_scans,
        },
        "counts": {
            name: {s: len(items) for s, items in content.items()} for name, content in datalists.items()
        },
        "files": dict(sorted(files.items())),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest, True
