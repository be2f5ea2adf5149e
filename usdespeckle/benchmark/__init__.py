"""Quality and speed benchmark of despeckling methods; writes ``reports/benchmark.md`` and figures.

Every method (the classical filters of :mod:`usdespeckle.runtime.filters` and, when its weights are shipped,
the trained ``denoiser``) runs on the same seeded test inputs, built from test splits only
(:mod:`usdespeckle.benchmark.sets`):

- ``rayleigh_mild`` / ``rayleigh_strong``: natural photographs (``datalist_natural.json`` test split,
  or scikit-image photographs when no prepared data is given) speckled with the method's Rayleigh
  model (Vieira et al., IEEE Access 12:45811, 2024); the reference is the clean photograph.
- ``gamma_looks_1`` / ``gamma_looks_4`` (group ``gamma_looks``): the same photographs with
  multiplicative L-look speckle on the amplitude, ``y = x * sqrt(Gamma(L, 1/L))``.
- ``correlated``: the photographs as echogenicity maps through the PSF-convolution simulator
  (spatially correlated speckle, log compression to 50 dB).
- ``mri_sim`` / ``mri_extra_sim``: MRI slices through the trained simulator
  (``datalist_mri_pairs.json``, made by the training recipe); the reference is the MRI slice.
- ``phantom``: cyst phantoms of graded contrast through the fast physics simulator; speckle
  statistics (ENL, CNR, gCNR) in the known regions and fidelity against the echogenicity map.
- ``real_bmode``: held-out real B-mode frames (``datalist_real_bmode.json`` test split), no
  reference: echogenicity fidelity, the ratio-image estimator M, gCNR/CNR of two tissue boxes chosen on the frame, ENL on stored boxes.
- ``cine``: the held-out block of the real cardiac cine (``cine_test``): temporal flicker.

The speckled input itself is the ``input`` row of every table, the baseline a method must beat.
Methods and sets are registries (:data:`SETS`, :func:`available_methods`), so the denoiser is just
another method and a new test set is one function.
"""

from __future__ import annotations

from usdespeckle.benchmark.cases import Case, SetSpec
from usdespeckle.benchmark.figures import compose_grid, compose_panels
from usdespeckle.benchmark.methods import (
    INPUT,
    Method,
    available_methods,
    register_method,
    resolve_methods,
)
from usdespeckle.benchmark.runner import run_benchmark
from usdespeckle.benchmark.scoring import METRICS
from usdespeckle.benchmark.sets import SET_GROUPS, SETS, resolve_sets

__all__ = [
    "INPUT",
    "METRICS",
    "SETS",
    "SET_GROUPS",
    "Case",
    "Method",
    "SetSpec",
    "available_methods",
    "compose_grid",
    "compose_panels",
    "register_method",
    "resolve_methods",
    "resolve_sets",
    "run_benchmark",
]
