"""Scores of one output per set kind, their summaries, and the strongest method per metric."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from usdespeckle.benchmark.cases import Case

__all__ = ["HIGHER_IS_BETTER", "KEY_METRICS", "METRICS", "METRIC_LABELS", "score", "strongest", "summary"]

METRICS: dict[str, tuple[str, ...]] = {
    "reference": ("psnr", "ssim", "psnr_affine", "ssim_affine", "epi"),
    "phantom": (
        "enl",
        "cnr_mean",
        "gcnr_mean",
        "cnr_weakest",
        "gcnr_weakest",
        "epi",
        "psnr_affine",
        "ssim_affine",
    ),
    "real": ("fidelity_corr", "fidelity_psnr", "gcnr", "cnr", "enl", "ratio_m", "ratio_first", "ratio_dh"),
    "cine": ("flicker", "fidelity_corr", "fidelity_psnr"),
}
METRIC_LABELS = {
    "psnr": "PSNR dB",
    "ssim": "SSIM",
    "psnr_affine": "PSNR aff. dB",
    "ssim_affine": "SSIM aff.",
    "epi": "EPI",
    "enl": "ENL",
    "cnr_mean": "CNR mean",
    "gcnr_mean": "gCNR mean",
    "cnr_weakest": "CNR weakest",
    "gcnr_weakest": "gCNR weakest",
    "fidelity_corr": "fidelity corr.",
    "fidelity_psnr": "fidelity PSNR dB",
    "gcnr": "gCNR",
    "cnr": "CNR",
    "ratio_m": "M (lower better)",
    "ratio_first": "M 1st order",
    "ratio_dh": "M δh %",
    "flicker": "flicker (rel.)",
}
#: Direction of each metric: True when a larger value is better.
HIGHER_IS_BETTER = {name: True for name in METRIC_LABELS} | {
    "ratio_m": False,
    "ratio_first": False,
    "ratio_dh": False,
    "flicker": False,
}
#: The metrics the summary table names the strongest classical method for, per kind.
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "reference": ("psnr_affine", "ssim_affine"),
    "phantom": ("gcnr_mean", "psnr_affine"),
    "real": ("fidelity_corr", "gcnr", "ratio_m"),
    "cine": ("flicker", "fidelity_corr"),
}


def _reference(output: np.ndarray, case: Case) -> dict[str, float]:
    from usdespeckle import metrics

    ref = case.reference
    fitted = metrics.affine_fit(output, ref)  # one fit for both affine scores
    return {
        "psnr": float(metrics.psnr(output, ref)),
        "ssim": float(metrics.ssim(output, ref)),
        "psnr_affine": float(metrics.psnr(fitted, ref)),
        "ssim_affine": float(metrics.ssim(fitted, ref)),
        "epi": float(metrics.edge_preservation_index(output, ref)),
    }


def _phantom(output: np.ndarray, case: Case) -> dict[str, float]:
    from usdespeckle import metrics

    background = case.masks["background"]
    cnr = {k: float(metrics.cnr(output, case.masks[k], background)) for k in case.contrasts_db}
    gcnr = {k: float(metrics.gcnr(output, case.masks[k], background)) for k in case.contrasts_db}
    weakest = min(case.contrasts_db, key=lambda k: abs(case.contrasts_db[k]))
    ref = case.reference
    fitted = metrics.affine_fit(output, ref)  # one fit for both affine scores
    return {
        "enl": float(metrics.enl(output, background)),
        "cnr_mean": float(np.mean(list(cnr.values()))),
        "gcnr_mean": float(np.mean(list(gcnr.values()))),
        "cnr_weakest": cnr[weakest],
        "gcnr_weakest": gcnr[weakest],
        "epi": float(metrics.edge_preservation_index(output, ref)),
        "psnr_affine": float(metrics.psnr(fitted, ref)),
        "ssim_affine": float(metrics.ssim(fitted, ref)),
    }


def _real(output: np.ndarray, case: Case) -> dict[str, float]:
    from usdespeckle import metrics

    fidelity = metrics.echogenicity_fidelity(output, case.image, case.field, sigma=case.sigma)
    contrast = metrics.region_contrast(output, case.regions, case.field)
    homogeneous = case.regions.get("homogeneous", [])
    if homogeneous:
        ratio = metrics.ratio_image_quality(
            case.image, output, homogeneous, case.field, distance=case.glcm_distance
        )
        ratio_terms = {"ratio_m": ratio.m, "ratio_first": ratio.first_order, "ratio_dh": ratio.delta_h}
    else:
        ratio_terms = dict.fromkeys(("ratio_m", "ratio_first", "ratio_dh"), float("nan"))
    return {
        "fidelity_corr": fidelity.correlation,
        "fidelity_psnr": fidelity.psnr,
        "gcnr": contrast["gcnr"],
        "cnr": contrast["cnr"],
        "enl": contrast["enl"],
        **ratio_terms,
    }


def _cine(output: np.ndarray, case: Case) -> dict[str, float]:
    from usdespeckle import metrics

    fidelity = [
        metrics.echogenicity_fidelity(out, obs, case.field, sigma=case.sigma)
        for out, obs in zip(output, case.image, strict=True)
    ]
    return {
        "flicker": metrics.temporal_flicker(output, case.image, case.field),
        "fidelity_corr": float(np.mean([f.correlation for f in fidelity])),
        "fidelity_psnr": float(np.mean([f.psnr for f in fidelity])),
    }


_SCORERS: dict[str, Callable[[np.ndarray, Case], dict[str, float]]] = {
    "reference": _reference,
    "phantom": _phantom,
    "real": _real,
    "cine": _cine,
}


def score(kind: str, output: np.ndarray, case: Case) -> dict[str, float]:
    """The metrics of ``METRICS[kind]`` for one method's output on one case."""
    return _SCORERS[kind](output, case)


def summary(values: Iterable[float]) -> dict[str, Any]:
    """Mean and sample standard deviation over the values that are not NaN (NaN if none).

    Infinite values count: a method whose metric is infinite on one image (PSNR of an exact
    copy, M of the identity) has an infinite mean.
    """
    vals = [float(v) for v in values]
    finite = [v for v in vals if not math.isnan(v)]
    mean = float(np.mean(finite)) if finite else float("nan")
    with np.errstate(invalid="ignore"):
        std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0 if finite else float("nan")
    return {"mean": mean, "std": std, "n": len(finite), "values": vals}


def strongest(
    table: dict[str, dict[str, dict[str, Any]]], metric: str, candidates: Sequence[str]
) -> str | None:
    """The candidate method with the best mean of ``metric`` in a set's table (None if none scored)."""
    scored = [
        (table[m][metric]["mean"], m)
        for m in candidates
        if m in table and metric in table[m] and math.isfinite(table[m][metric]["mean"])
    ]
    if not scored:
        return None
    pick = max if HIGHER_IS_BETTER.get(metric, True) else min
    return pick(scored)[1]
