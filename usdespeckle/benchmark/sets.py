"""The benchmark's test sets: seeded, built from test splits only (nothing here trains or tunes).

A set is a :class:`SetSpec` in :data:`SETS` whose ``load`` returns :class:`Case` objects (the types
and shared readers are in :mod:`usdespeckle.benchmark.cases`; the loaders in
:mod:`usdespeckle.benchmark.sets_synthetic` and :mod:`usdespeckle.benchmark.sets_real`). Kinds:

- ``reference``: the clean image is known (photographs speckled by a model, MRI through the
  simulator); scored with PSNR/SSIM/EPI against it;
- ``phantom``: cyst phantoms with known regions (ENL, CNR, gCNR) and a speckle-free reference;
- ``real``: held-out real B-mode frames, no reference: scored inside the imaging field against the
  input itself (echogenicity fidelity, ratio-image estimator M) and on regions (gCNR, CNR, ENL);
- ``cine``: a held-out block of consecutive real frames, one case of shape (T, H, W): temporal
  flicker and per-frame fidelity.
"""

from __future__ import annotations

from collections.abc import Sequence

from usdespeckle.benchmark.cases import SetSpec
from usdespeckle.benchmark.sets_real import load_cine, load_real
from usdespeckle.benchmark.sets_synthetic import (
    gamma_loader,
    load_correlated,
    load_phantoms,
    pairs_loader,
    rayleigh_loader,
)

__all__ = [
    "SETS",
    "SET_GROUPS",
    "resolve_sets",
]

SETS: dict[str, SetSpec] = {
    spec.name: spec
    for spec in (
        SetSpec(
            "rayleigh_mild",
            "natural photographs, mild Rayleigh speckle (decimation 2; a ~ U(60, 70), b ~ U(-135, -120) "
            "map the envelope's log range onto about [0, 1], so little is clipped)",
            "reference",
            rayleigh_loader(
                "rayleigh_mild", decimation=2, gain_range=(60.0, 70.0), offset_range=(-135.0, -120.0)
            ),
            default_limit=3,
        ),
        SetSpec(
            "rayleigh_strong",
            "natural photographs, the paper's Rayleigh speckle (a ~ U(10, 50), b ~ U(-50, 50), decimation 4)",
            "reference",
            rayleigh_loader(
                "rayleigh_strong", decimation=4, gain_range=(10.0, 50.0), offset_range=(-50.0, 50.0)
            ),
            default_limit=3,
        ),
        SetSpec(
            "gamma_looks_1",
            "natural photographs, multiplicative single-look Gamma speckle on the amplitude (L = 1)",
            "reference",
            gamma_loader("gamma_looks_1", 1.0),
            default_limit=3,
        ),
        SetSpec(
            "gamma_looks_4",
            "natural photographs, multiplicative 4-look Gamma speckle on the amplitude (L = 4)",
            "reference",
            gamma_loader("gamma_looks_4", 4.0),
            default_limit=3,
        ),
        SetSpec(
            "correlated",
            "natural photographs as echogenicity, PSF-correlated speckle, log compression to 50 dB",
            "reference",
            load_correlated,
            default_limit=3,
        ),
        SetSpec(
            "mri_sim",
            "MRI slices (test split) through the trained simulator; reference = the MRI slice",
            "reference",
            pairs_loader([("datalist_mri_pairs.json", "test")]),
            default_limit=3,
        ),
        SetSpec(
            "mri_extra_sim",
            "extra MRI (dipy, nibabel samples) through the trained simulator; reference = the MRI slice",
            "reference",
            pairs_loader(
                [("datalist_mri_extra_test_pairs.json", "test"), ("datalist_mri_pairs.json", "extra_test")]
            ),
            default_limit=3,
        ),
        SetSpec(
            "phantom",
            "cyst phantoms of graded contrast through the fast physics B-mode simulator",
            "phantom",
            load_phantoms,
            default_limit=3,
        ),
        SetSpec(
            "real_bmode",
            "held-out real B-mode frames (pydicom-data scans), no reference, scored inside the imaging field",
            "real",
            load_real,
            default_limit=4,
        ),
        SetSpec(
            "cine",
            "the held-out block of the real cardiac cine loop, as a sequence",
            "cine",
            load_cine,
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
