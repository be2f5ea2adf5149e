"""The benchmark's synthetic test sets: photographs with a speckle model, MRI through the simulator, phantoms.

Each loader has the signature ``load(data_dir, limit, seed, size, split="test") -> LoadedSet`` of
:class:`usdespeckle.benchmark.cases.SetSpec`; every case knows its clean reference. The benchmark
reads the ``test`` split; ``training/tune_filters.py`` tunes the methods' settings on the same sets
made from the ``validation`` split (other images, other phantoms).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usdespeckle.benchmark.cases import (
    Case,
    LoadedSet,
    case_rng,
    datalist_split,
    read_grey,
    spread,
    to_size,
)

# --------------------------------------------------------------------------------------------------
# Photographs with a speckle model
# --------------------------------------------------------------------------------------------------
# Photographs that scikit-image ships (no download), the fallback natural test set.
_SKIMAGE_PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "brick", "gravel", "moon", "clock", "rocket")
# Other scikit-image photographs, the fallback tuning (validation) set: none of the test fallback's.
_SKIMAGE_TUNING_PHOTOS = ("coins", "page", "text", "grass", "hubble_deep_field", "immunohistochemistry")


def skimage_photo(name: str) -> np.ndarray:
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    img = getattr(data, name)()
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    return img_as_float(img).astype(np.float32)


def _natural_references(
    data_dir: Path | None, limit: int | None, size: int, split: str = "test"
) -> tuple[list, list[str]]:
    """(name, clean image) pairs of the natural photographs of ``split``, and notes."""
    notes: list[str] = []
    entries = datalist_split(data_dir, "datalist_natural.json", split)
    refs = []
    if entries is not None:
        for entry in spread(entries, limit):
            path = Path(data_dir) / entry["label"]
            refs.append((path.stem, to_size(read_grey(path), size)))
        notes.append(f"clean photographs: {split} split of {Path(data_dir) / 'datalist_natural.json'}")
    else:
        where = (
            "no --data given" if data_dir is None else f"{Path(data_dir) / 'datalist_natural.json'} missing"
        )
        photos = _SKIMAGE_PHOTOS if split == "test" else _SKIMAGE_TUNING_PHOTOS
        notes.append(
            f"FALLBACK ({where}): clean photographs are scikit-image's {', '.join(photos[:limit])}, "
            f"grey, shorter side scaled to {size} and centre-cropped"
        )
        for name in photos[:limit]:
            refs.append((name, to_size(skimage_photo(name), size)))
    return refs, notes


def rayleigh_loader(set_name: str, **speckle_kwargs: Any) -> Callable[..., LoadedSet]:
    def load(
        data_dir: Path | None, limit: int | None, seed: int, size: int, split: str = "test"
    ) -> LoadedSet:
        from usdespeckle.simulation.speckle import rayleigh_speckle

        refs, notes = _natural_references(data_dir, limit, size, split)
        cases = []
        for index, (name, clean) in enumerate(refs):
            # The gain a and offset b are drawn inside from this per-image generator: fixed by the seed.
            speckled = rayleigh_speckle(clean, case_rng(seed, set_name, index), **speckle_kwargs)
            cases.append(Case(name, np.asarray(speckled, dtype=np.float32), clean))
        settings = ", ".join(f"{k}={v}" for k, v in speckle_kwargs.items())
        notes.append(f"Rayleigh speckle: {settings}; a and b drawn per image from the seed")
        return LoadedSet(cases, notes)

    return load


def gamma_loader(set_name: str, looks: float) -> Callable[..., LoadedSet]:
    def load(
        data_dir: Path | None, limit: int | None, seed: int, size: int, split: str = "test"
    ) -> LoadedSet:
        from usdespeckle.simulation.speckle import gamma_speckle

        refs, notes = _natural_references(data_dir, limit, size, split)
        cases = [
            Case(name, gamma_speckle(clean, looks, case_rng(seed, set_name, index)), clean)
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


def load_correlated(
    data_dir: Path | None, limit: int | None, seed: int, size: int, split: str = "test"
) -> LoadedSet:
    from usdespeckle.simulation.physics import FastBModeSimulator, log_compress

    refs, notes = _natural_references(data_dir, limit, size, split)
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
        image = simulator.simulate(echogenicity, case_rng(seed, "correlated", index))
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
def pairs_loader(filenames: Sequence[tuple[str, str]]) -> Callable[..., LoadedSet]:
    """Loader of (simulated B-mode ``image``, MRI ``label``) pairs from the first datalist found.

    ``filenames`` are the (datalist, split) pairs the benchmark reads; another ``split`` (tuning)
    reads that split of the datalists listed with ``test``.
    """

    def load(
        data_dir: Path | None, limit: int | None, seed: int, size: int, split: str = "test"
    ) -> LoadedSet:
        chosen = filenames if split == "test" else [(f, split) for f, s in filenames if s == "test"]
        for filename, split in chosen:
            entries = datalist_split(data_dir, filename, split)
            if entries is None:
                continue
            cases = []
            for entry in spread(entries, limit):
                image = to_size(read_grey(Path(data_dir) / entry["image"]), size)
                label = to_size(read_grey(Path(data_dir) / entry["label"]), size)
                cases.append(Case(Path(entry["image"]).stem, image, label))
            return LoadedSet(cases, [f"pairs: {split!r} split of {Path(data_dir) / filename}"])
        looked = " or ".join(f"{name} [{split!r}]" for name, split in chosen)
        where = "no --data given" if data_dir is None else f"no {looked} in {data_dir}"
        return LoadedSet([], [f"SKIPPED: {where}; the training recipe makes these pairs with the simulator"])

    return load


_PHANTOM_CONTRASTS_DB = (-20.0, -12.0, -6.0, -3.0, 6.0)
_PHANTOM_COUNT = 8  # phantoms when no limit at all is given
_PHANTOM_PROBE = "L11-5v"


def load_phantoms(
    data_dir: Path | None, limit: int | None, seed: int, size: int, split: str = "test"
) -> LoadedSet:
    from usdespeckle.simulation.phantoms import make_cyst_phantom
    from usdespeckle.simulation.physics import FastBModeSimulator, log_compress

    simulator = FastBModeSimulator(probe=_PHANTOM_PROBE, shape=(size, size))
    count = _PHANTOM_COUNT if limit is None else limit
    cases = []
    for index in range(count):
        rng = case_rng(seed, "phantom" if split == "test" else f"phantom_{split}", index)
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
