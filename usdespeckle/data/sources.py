"""The sources of the dataset, all shipped inside installed packages (nothing is downloaded).

* MRI: nilearn's MNI152 2009a symmetric T1 template in its three orientations. The template is a
  single volume, so items are split by *slab*: contiguous ranges of slices with a gap of
  :data:`MRI_SLAB_GAP` slices (1 mm each) between the training, validation and test slabs, so that
  no validation or test slice neighbours a training slice. The template is left-right symmetric,
  so sagittal slabs are chosen by distance from the midline (:data:`MRI_SAGITTAL_BOUNDS`: test is
  the central slab, validation the next slabs on both sides, training the lateral slabs); a
  sagittal slice and its mirror image therefore always fall in the same split. Axial and coronal
  slabs follow the slice index (:data:`MRI_SLAB_CUTS`: training, then validation, then test).
* Extra MRI (test only): dipy's ``t1_coronal_slice.npy`` and ``S0_10slices.nii.gz``, nibabel's
  ``tests/data/anatomical.nii``.
* Natural photographs: scikit-image's offline sample images and scikit-learn's sample images,
  converted to grey, split by source photograph (fixed lists :data:`NATURAL_TEST`,
  :data:`NATURAL_VALIDATION`; images that are the same photograph share a source).
* Random shapes: echogenicity maps drawn with ``skimage.draw.random_shapes``.

:mod:`usdespeckle.data.dataset` turns them into the dataset's images and datalists.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from skimage.transform import resize

__all__ = [
    "MRI_SAGITTAL_BOUNDS",
    "MRI_SLAB_CUTS",
    "MRI_SLAB_GAP",
    "NATURAL_TEST",
    "NATURAL_VALIDATION",
    "SPLITS",
    "extra_mri_images",
    "flip_rotate",
    "load_mri_volume",
    "load_natural_sources",
    "mri_slab_split",
    "mri_slices",
    "mri_view",
    "natural_crop",
    "natural_split",
    "oriented_slice",
    "random_shapes_map",
]

SPLITS = ("training", "validation", "test")

MNI_T1 = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"  # inside the nilearn package
MRI_SLAB_GAP = 6  # slices (mm) left out between training, validation and test slabs
#: Sagittal slabs by distance from the midline, as fractions of the half-width: test below the
#: first, validation up to the second, training beyond.
MRI_SAGITTAL_BOUNDS = (0.2, 0.4)
#: Axial and coronal slabs by slice index, as fractions of the span: training below the first,
#: validation up to the second, test beyond.
MRI_SLAB_CUTS = (0.65, 0.82)
MRI_MIN_CROP = 0.6  # zoomed MRI views: crop side at least this fraction of the slice
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


def flip_rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random one of the 8 flips/90-degree rotations."""
    out = np.rot90(image, k=int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------- MRI


def package_file(package: str, relative: str, pip_name: str) -> Path:
    """A data file shipped inside an installed package (nothing is downloaded).

    Args:
        package: the importable package that ships it (``nilearn``, ``data_store``).
        relative: its path inside the package's folder.
        pip_name: what to ``pip install`` when the package is missing.

    Raises:
        FileNotFoundError: the package is not installed, or holds no such file.
    """
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise FileNotFoundError(
            f"{Path(relative).name} comes from the {pip_name} package: pip install {pip_name}"
        ) from err
    path = Path(next(iter(module.__path__))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the installed {pip_name}; reinstall it")
    return path


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

    path = package_file("nilearn", MNI_T1, "nilearn")
    volume = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    scale = float(np.percentile(volume, 99.9))
    volume = np.clip(volume / scale, 0.0, 1.0)
    volume.flags.writeable = False
    return volume, str(path)


def oriented_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
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
        bounds = (MRI_SAGITTAL_BOUNDS[0] * half, MRI_SAGITTAL_BOUNDS[1] * half)
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
        cut_val, cut_test = first + MRI_SLAB_CUTS[0] * span, first + MRI_SLAB_CUTS[1] * span
        for i in idx:
            if i < cut_val - gap / 2:
                result[int(i)] = "training"
            elif cut_val + gap / 2 <= i < cut_test - gap / 2:
                result[int(i)] = "validation"
            elif i >= cut_test + gap / 2:
                result[int(i)] = "test"
    return result


def mri_slices(volume: np.ndarray, step: int) -> list[tuple[str, int, str]]:
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


def mri_view(slice_image: np.ndarray, view: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """View 0 is the whole padded slice; other views are random zoomed crops, flipped left-right at random."""
    whole = _square(slice_image, size)
    if view == 0:
        return whole
    out = _crop_resize(whole, rng, size, min_fraction=MRI_MIN_CROP)
    return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out


def extra_mri_images(size: int) -> Iterable[tuple[str, str, np.ndarray]]:
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
                image = oriented_slice(volume, axis, i)
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
        except Exception:  # a sample that needs a download is simply left out
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
    except Exception:  # scikit-learn is optional here
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


NATURAL_MIN_CROP = 0.35  # natural crops: side at least this fraction of the photograph's shorter side


def natural_crop(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop of a photograph, resized to ``size x size``, randomly flipped and rotated."""
    return flip_rotate(_crop_resize(image, rng, size, min_fraction=NATURAL_MIN_CROP), rng)


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
