"""Dataset preparation for training and testing (``usdespeckle prepare-data``).

Everything comes from data shipped inside installed packages (:mod:`usdespeckle.data.sources`); nothing
is downloaded. :class:`DatasetWriter` writes one datalist per source:

* MRI slices (``datalist_mri.json``, key ``label``): the MNI152 template's slices, split by slab
  (:func:`usdespeckle.data.sources.mri_slab_split`). Each kept slice is written once as a whole and
  ``mri_views - 1`` more times as a random zoomed, possibly flipped crop.
* Extra MRI test slices (``datalist_mri_extra_test.json``, key ``label``, test only): dipy's and
  nibabel's sample MRI.
* Natural photographs (``datalist_natural.json``, key ``label``): random crops with flips and
  90-degree rotations, split by source photograph.
* Simulator B-mode (``datalist_simulator.json``, key ``image``, plus ``echogenicity``): echogenicity
  maps from MRI slices, natural crops and random shapes (:data:`SIMULATOR_KINDS`, in turn), turned
  into B-mode images by a physics simulator (``FastBModeSimulator`` in the command line; any
  callable in the Python API); :data:`SIMULATOR_VALIDATION_FRACTION` and
  :data:`SIMULATOR_TEST_FRACTION` of them are for validation and testing. MRI and natural maps keep
  the split of their source, so the splits agree across all datalists. The stored
  ``echogenicity`` PNG is the grey-level map ``g``; the simulator receives the linear amplitude
  ``10 ** ((g - 1) * C / 20)`` with ``C ~ U(SIMULATOR_CONTRAST_DB)`` decibels (0 stays 0).
* Real B-mode (``datalist_real_bmode.json``): frames of pydicom-data's clinical scans
  (:mod:`usdespeckle.data.real_bmode`).

Every item draws its random numbers from its own stream, ``default_rng([seed, stream, *index])``
(:data:`RNG_MRI_VIEW`, :data:`RNG_NATURAL_CROP`, :data:`RNG_SIMULATOR`), so an item does not change
when the counts or the order of the others do.

Images are 8-bit grey PNG files of ``size x size`` pixels; datalist paths are relative to the
output folder (``monai.data.load_decathlon_datalist(path, base_dir=out_dir)``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from usdespeckle import __version__
from usdespeckle.data.sources import (
    MRI_SLAB_GAP,
    ORIENTATIONS,
    SPLITS,
    extra_mri_images,
    flip_rotate,
    load_mri_volume,
    load_natural_sources,
    mri_slices,
    mri_view,
    natural_crop,
    natural_split,
    oriented_slice,
    random_shapes_map,
)
from usdespeckle.runtime.atomic import atomic_write
from usdespeckle.runtime.bundle_utils import sha256_file
from usdespeckle.simulation.physics import echogenicity_to_amplitude  # data keeps the name

__all__ = [
    "RNG_MRI_VIEW",
    "RNG_NATURAL_CROP",
    "RNG_SIMULATOR",
    "SIMULATOR_CONTRAST_DB",
    "SIMULATOR_KINDS",
    "SIMULATOR_TEST_FRACTION",
    "SIMULATOR_VALIDATION_FRACTION",
    "BModeMaker",
    "DatasetExistsError",
    "DatasetWriter",
    "PrepareSettings",
    "prepare_dataset",
    "write_png",
]

BModeMaker = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# Random streams: the second number of each item's seed sequence ``[seed, stream, *index]``.
RNG_MRI_VIEW = 1  #: MRI views, indexed (axis, slice index, view)
RNG_NATURAL_CROP = 2  #: natural crops, indexed (source number, crop)
RNG_SIMULATOR = 3  #: simulator items, indexed (split number, item)

SIMULATOR_VALIDATION_FRACTION = 0.1  # of simulator_count, rounded; training takes the rest
SIMULATOR_TEST_FRACTION = 0.1
SIMULATOR_KINDS = ("mri", "natural", "shapes")  # echogenicity map of simulator item i: kind i % 3
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
            (``datalist_real_bmode.json``; see :mod:`usdespeckle.data.real_bmode`).
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


def write_png(path: Path, image: np.ndarray) -> str:
    """Write a [0, 1] grey image as an 8-bit PNG and return its sha256.

    Not atomic, on purpose (thousands of files, an fsync each would dominate): the manifest, written
    atomically last with every file's sha256, is what makes a dataset complete.

    Args:
        path: file to write (parent folders are created).
        image: 2D float image, values in [0, 1] (clipped).

    Returns:
        hex sha256 of the written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    encoded = io.BytesIO()  # hashed as written, not read back
    Image.fromarray(pixels, mode="L").save(encoded, format="PNG", optimize=False)
    path.write_bytes(encoded.getvalue())
    return hashlib.sha256(encoded.getvalue()).hexdigest()


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
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "different"
    if manifest.get("parameters") != parameters:
        return "different"
    for rel, digest in manifest.get("files", {}).items():
        path = out_dir / rel
        if not path.is_file() or sha256_file(path) != digest:
            return "different"
    return "same"


def _clear(out_dir: Path) -> None:
    """Remove only what this module writes (never other files in ``out_dir``)."""
    for name in _OWNED:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in (*_DATALISTS, "manifest.json"):
        (out_dir / name).unlink(missing_ok=True)


def _manifest_parameters(settings: PrepareSettings) -> dict[str, Any]:
    return {"format": _FORMAT, "version": __version__, **asdict(settings)}


def simulator_split_counts(total: int) -> dict[str, int]:
    """How many of ``total`` simulator items each split gets (validation and test rounded, training the rest)."""
    validation = round(SIMULATOR_VALIDATION_FRACTION * total)
    test = round(SIMULATOR_TEST_FRACTION * total)
    return {"training": total - validation - test, "validation": validation, "test": test}


class DatasetWriter:
    """Writes one dataset into a folder: the PNG files with their sha256, the datalists, the manifest.

    One ``write_*`` method per source, in the order :func:`prepare_dataset` calls them (the
    simulator uses the MRI slices and natural photographs written before it); :meth:`finish` writes
    the datalists and, last, the manifest.

    Args:
        out_dir: the output folder (created by the caller).
        settings: what to write (validated by the caller).
        progress: show tqdm progress bars.
    """

    def __init__(self, out_dir: Path, settings: PrepareSettings, *, progress: bool = True) -> None:
        self.out = out_dir
        self.settings = settings
        self.progress = progress
        self.files: dict[str, str] = {}  # relative path -> sha256
        self.datalists: dict[str, dict[str, list[dict[str, Any]]]] = {
            "mri": {s: [] for s in SPLITS},
            "natural": {s: [] for s in SPLITS},
            "simulator": {s: [] for s in SPLITS},
            "mri_extra_test": {"test": []},
        }
        self.sources: dict[str, Any] = {}  # what the manifest says of each source
        self._mri_pool: dict[str, list[tuple[str, np.ndarray]]] = {s: [] for s in SPLITS}  # whole slices
        self._natural: dict[str, np.ndarray] = {}
        self._natural_by_split: dict[str, list[str]] = {s: [] for s in SPLITS}

    def rng(self, stream: int, *index: int) -> np.random.Generator:
        """The random generator of one item: ``default_rng([seed, stream, *index])``."""
        return np.random.default_rng([self.settings.seed, stream, *index])

    def save(self, rel: str, image: np.ndarray) -> str:
        """Write a [0, 1] grey image as ``out_dir / rel`` (PNG), record its sha256, return ``rel``."""
        self.files[rel] = write_png(self.out / rel, image)
        return rel

    def _bar(self, items: Iterable, desc: str) -> tqdm:
        # disable=None lets tqdm switch itself off when stderr is not a terminal (logs, CI)
        disable = None if self.progress else True
        return tqdm(items, desc=desc, disable=disable, unit="img", leave=False, mininterval=1.0)

    def write_mri(self) -> None:
        """The template's kept slices, each as ``mri_views`` views (the first whole)."""
        volume, template_path = load_mri_volume()
        self.sources["mri"] = template_path
        for orientation, index, split in self._bar(mri_slices(volume, self.settings.mri_step), "MRI slices"):
            axis = ORIENTATIONS.index(orientation)
            image = oriented_slice(volume, axis, index)
            source = f"mni152:{orientation}:{split}-slab"
            for view in range(self.settings.mri_views):
                picture = mri_view(image, view, self.rng(RNG_MRI_VIEW, axis, index, view), self.settings.size)
                rel = self.save(f"mri/{orientation}_{index:03d}_v{view}.png", picture)
                self.datalists["mri"][split].append({"label": rel, "source": source})
                if view == 0:
                    self._mri_pool[split].append((source, picture))

    def write_extra_mri(self) -> None:
        """dipy's and nibabel's sample MRI slices, for testing only."""
        items = self.datalists["mri_extra_test"]["test"]
        for source, name, image in self._bar(list(extra_mri_images(self.settings.size)), "extra MRI"):
            items.append({"label": self.save(f"mri_extra/{name}.png", image), "source": source})
        self.sources["mri_extra_test"] = sorted({item["source"] for item in items})

    def write_natural(self) -> None:
        """``natural_crops`` random crops of every natural photograph, in its source's split."""
        self._natural = load_natural_sources()
        for k, name in enumerate(self._bar(list(self._natural), "natural sources")):
            split = natural_split(name)
            self._natural_by_split[split].append(name)
            for crop in range(self.settings.natural_crops):
                picture = natural_crop(
                    self._natural[name], self.rng(RNG_NATURAL_CROP, k, crop), self.settings.size
                )
                rel = self.save(f"natural/{name.replace(':', '_')}_{crop:03d}.png", picture)
                self.datalists["natural"][split].append({"label": rel, "source": name})
        self.sources["natural"] = {s: self._natural_by_split[s] for s in SPLITS}

    def _echogenicity(
        self, kind: str, split: str, i: int, rng: np.random.Generator
    ) -> tuple[str, np.ndarray]:
        """(source, echogenicity map) of simulator item ``i`` of ``split``, of ``kind``."""
        if kind == "mri":
            source, whole = self._mri_pool[split][int(rng.integers(0, len(self._mri_pool[split])))]
            return source, flip_rotate(whole, rng)
        if kind == "natural":
            names = self._natural_by_split[split]
            name = names[int(rng.integers(0, len(names)))]
            return name, natural_crop(self._natural[name], rng, self.settings.size)
        return f"random-shapes:{split}:{i:05d}", random_shapes_map(self.settings.size, rng)

    def write_simulator(self, bmode_maker: BModeMaker) -> None:
        """``simulator_count`` (echogenicity map, simulated B-mode) pairs; needs the MRI and natural sources.

        Raises:
            ValueError: if ``bmode_maker`` returns an image of another shape.
        """
        size = self.settings.size
        counts = simulator_split_counts(self.settings.simulator_count)
        jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
        for split, i in self._bar(jobs, "simulator B-mode"):
            rng = self.rng(RNG_SIMULATOR, SPLITS.index(split), i)
            kind = SIMULATOR_KINDS[i % len(SIMULATOR_KINDS)]
            if (kind == "mri" and not self._mri_pool[split]) or (
                kind == "natural" and not self._natural_by_split[split]
            ):
                kind = "shapes"
            source, echogenicity = self._echogenicity(kind, split, i, rng)
            amplitude = echogenicity_to_amplitude(echogenicity, rng.uniform(*SIMULATOR_CONTRAST_DB))
            bmode = np.asarray(bmode_maker(amplitude.astype(np.float32), rng), dtype=np.float64)
            if bmode.shape != (size, size):
                raise ValueError(f"bmode_maker returned shape {bmode.shape}; expected {(size, size)}.")
            stem = f"{split}_{i:05d}_{kind}"
            echo_rel = self.save(f"echogenicity/{stem}.png", echogenicity)
            rel = self.save(f"bmode/{stem}.png", bmode)
            self.datalists["simulator"][split].append(
                {"image": rel, "echogenicity": echo_rel, "source": source}
            )

    def write_real_bmode(self) -> None:
        """The real B-mode frames of pydicom-data's clinical scans (:mod:`usdespeckle.data.real_bmode`)."""
        from usdespeckle.data.real_bmode import real_bmode_items

        self.datalists["real_bmode"], self.sources["real_bmode"] = real_bmode_items(
            self.save, progress=self.progress
        )

    def finish(self, parameters: dict[str, Any], command: Sequence[str] | None) -> dict[str, Any]:
        """Write the datalists, then the manifest (a folder without a manifest is an unfinished run).

        Returns:
            The manifest.
        """
        for name, content in self.datalists.items():
            atomic_write(self.out / f"datalist_{name}.json", json.dumps(content, indent=1) + "\n")
        sources = {
            "mri": self.sources.get("mri"),
            "mri_extra_test": self.sources.get("mri_extra_test", []),
            "natural": self.sources.get("natural", {s: [] for s in SPLITS}),
            "simulator": "echogenicity maps from MRI slices, natural crops and skimage.draw.random_shapes; "
            f"amplitude 10**((g-1)*C/20), C ~ U{SIMULATOR_CONTRAST_DB} dB",
            "mri_split": f"slabs per orientation, {MRI_SLAB_GAP}-slice gaps between splits",
            "real_bmode": self.sources.get("real_bmode", []),
        }
        manifest = {
            "parameters": parameters,
            "command": list(command) if command is not None else None,
            "sources": sources,
            "counts": {
                name: {s: len(items) for s, items in content.items()}
                for name, content in self.datalists.items()
            },
            "files": dict(sorted(self.files.items())),
        }
        atomic_write(self.out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
        return manifest


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
        return json.loads((out / "manifest.json").read_text(encoding="utf-8")), False
    if state == "different":
        if not force:
            raise DatasetExistsError(
                f"{out} already holds other files or a dataset made with other settings; "
                "choose another OUT_DIR or pass --force to replace it."
            )
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)

    writer = DatasetWriter(out, settings, progress=progress)
    writer.write_mri()
    writer.write_extra_mri()
    writer.write_natural()
    if settings.simulator_count > 0:
        writer.write_simulator(bmode_maker)  # type: ignore[arg-type]
    if settings.real_bmode:
        writer.write_real_bmode()
    return writer.finish(parameters, command), True
