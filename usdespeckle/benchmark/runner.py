"""Running every method on every set: the benchmark's entry point :func:`run_benchmark`."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usdespeckle.benchmark.cases import Case, case_rng, to_size
from usdespeckle.benchmark.figures import compose_grid, compose_panels, display, save_png
from usdespeckle.benchmark.methods import DENOISER, INPUT, resolve_methods, rows_for_set
from usdespeckle.benchmark.peers import PEERS
from usdespeckle.benchmark.report import (
    TIMING_SHAPE,
    TIMING_THREADS,
    command_line,
    load_average,
    markdown,
    versions,
)
from usdespeckle.benchmark.scoring import score, strongest, summary
from usdespeckle.benchmark.sets import SETS, resolve_sets
from usdespeckle.benchmark.sets_synthetic import skimage_photo
from usdespeckle.benchmark.tuning import (
    SINGLE_SUFFIX,
    TUNED_SETTINGS_FILE,
    TunedSettings,
    load_tuned_settings,
)
from usdespeckle.runtime.atomic import atomic_write
from usdespeckle.runtime.options import CLASSICAL_METHODS

__all__ = ["run_benchmark"]

ArrayFn = Callable[[np.ndarray], np.ndarray]
REAL_FIGURES = 2  # real frames shown (one figure each, every method)
PANEL_COLUMNS = 5  # tiles per row in the real-frame figures


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


def _timing_image(seed: int) -> np.ndarray:
    """A 256x256 speckled photograph (scikit-image's camera), the input every method is timed on."""
    from usdespeckle.simulation.speckle import rayleigh_speckle

    clean = to_size(skimage_photo("camera"), TIMING_SHAPE[0])
    return np.asarray(rayleigh_speckle(clean, case_rng(seed, "timing", 0)), dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Figures of one set
# --------------------------------------------------------------------------------------------------
def _figures(
    set_name: str,
    kind: str,
    cases: list[Case],
    shown: dict[str, list[np.ndarray]],
    table: dict[str, dict[str, dict[str, Any]]],
    out_path: Path,
    classical: Sequence[str],
) -> list[str]:
    """Write the set's figure grids under ``out_path/figures``; returns their paths relative to it."""
    written: list[str] = []
    methods = list(shown)
    if kind in ("reference", "phantom"):
        shown_cases = cases[: len(shown[INPUT])]
        rows = [
            [shown[m][i] for m in methods] + [display(case.reference)] for i, case in enumerate(shown_cases)
        ]
        grid = compose_grid(rows, [*methods, "reference"], [c.name for c in cases[: len(rows)]])
        figure = Path("figures") / f"{set_name}.png"
        save_png(grid, out_path / figure)
        return [figure.as_posix()]
    for i, case in enumerate(cases[: len(shown[INPUT])]):
        tiles = [shown[m][i] for m in methods]
        if kind == "cine":
            labels = [f"{m} (flicker {table[m]['flicker']['mean']:.2f})" for m in methods]
            name = f"{set_name}.png"
        else:
            labels = list(methods)
            name = f"{set_name}_{case.name}.png"
        figure = Path("figures") / name
        save_png(compose_panels(tiles, labels, columns=PANEL_COLUMNS), out_path / figure)
        written.append(figure.as_posix())
    if kind == "real" and DENOISER in shown:
        # The README's figure: one held-out frame, the input, the strongest classical method by M, the denoiser.
        best = strongest(table, "ratio_m", [m for m in classical if m in shown])
        if best is not None:
            tiles = [shown[INPUT][0], shown[best][0], shown[DENOISER][0]]
            labels = [f"input ({cases[0].name})", f"{best} (best classical by M)", DENOISER]
            figure = Path("figures") / f"{set_name}_summary.png"
            save_png(compose_panels(tiles, labels, columns=3), out_path / figure)
            written.insert(0, figure.as_posix())
    return written


def _apply(fn: ArrayFn, image: np.ndarray, method_name: str) -> np.ndarray:
    """Run a method on an image, or frame by frame on a (T, H, W) cine; checks the shape."""
    if image.ndim == 3:
        output = np.stack([np.asarray(fn(frame), dtype=np.float32) for frame in image])
    else:
        output = np.asarray(fn(image), dtype=np.float32)
    if output.shape != image.shape:
        raise ValueError(
            f"method {method_name!r} returned shape {output.shape} for input {image.shape}; "
            "methods must keep the shape."
        )
    return output


def _run_set(
    set_name: str, cases: list[Case], rows: dict[str, ArrayFn], figure_rows: int, bar: Any
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[np.ndarray]]]:
    """Every row's scores on every case of one set, and the outputs its figures show."""
    kind = SETS[set_name].kind
    shown_count = min(figure_rows, 2) if kind == "real" else figure_rows
    per_method: dict[str, dict[str, list[float]]] = {m: {} for m in rows}
    # The figures show each method once, at its setting for this set (not the @1 rows).
    shown: dict[str, list[np.ndarray]] = {m: [] for m in rows if not m.endswith(SINGLE_SUFFIX)}
    for index, case in enumerate(cases):
        for method_name, fn in rows.items():
            bar.set_postfix_str(f"{set_name}/{case.name}/{method_name}")
            output = _apply(fn, case.image, method_name)
            for metric, value in score(kind, output, case).items():
                per_method[method_name].setdefault(metric, []).append(value)
            if index < shown_count and method_name in shown:
                shown[method_name].append(_shown_frame(output, kind))
            bar.update(case.image.shape[0] if case.image.ndim == 3 else 1)
    return per_method, shown


def _setting_note(settable: Sequence[str], set_name: str, tuned: TunedSettings) -> list[str]:
    """The report's line on which settings the filters and peers ran at on this set."""
    if not settable:
        return []
    if any(tuned.for_set(m, set_name) is not None for m in settable):
        return [
            f"{', '.join(settable)}: the settings tuned on this set's validation images; "
            f"`name{SINGLE_SUFFIX}` rows: the one setting for all sets (usdespeckle/benchmark/tuned_settings.json)"
        ]
    return [f"{', '.join(settable)}: no tuning images for this set, the one setting for all sets"]


def _shown_frame(output: np.ndarray, kind: str) -> np.ndarray:
    """The image a figure shows of an output: the middle frame of a cine, else the image."""
    return output[output.shape[0] // 2] if kind == "cine" else output


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def run_benchmark(
    methods: Sequence[str] | None,
    sets: Sequence[str] | None,
    *,
    data_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    image_size: int = 256,
    time_repeats: int = 3,
    figure_rows: int = 3,
    tuned_settings: str | os.PathLike | TunedSettings | None = None,
) -> dict[str, Any]:
    """Run every method on every test set, write ``benchmark.md``, ``benchmark.json`` and figures.

    Args:
        methods: method names (see :func:`usdespeckle.benchmark.available_methods`); None or
            ``["all"]`` for all available. The speckled ``input`` is always added as the baseline row.
        sets: test-set names from :data:`SETS` or groups from :data:`SET_GROUPS`; None or ``["all"]``
            for all.
        data_dir: folder made by ``usdespeckle prepare-data`` (datalists), or None to use
            scikit-image photographs for the natural sets and skip the MRI and real sets.
        out_dir: where ``benchmark.md``, ``benchmark.json`` and ``figures/*.png`` are written.
        limit: at most this many images per set (frames for the cine); None: each set's
            ``default_limit``, chosen so that a full run stays under 15 minutes on 2 cores.
        seed: seed of every random draw (speckle, phantoms); same seed, same numbers.
        progress: show a tqdm progress bar on stderr.
        image_size: side of the square synthetic test images, pixels (real frames keep their size;
            timings always use 256x256).
        time_repeats: timed runs per method (median reported) after one warm-up.
        figure_rows: images per set shown in the figure grids (real frames: at most 2 figures).
        tuned_settings: the JSON of tuned settings (default
            ``usdespeckle/benchmark/tuned_settings.json``), or the settings themselves; filters and
            peers run per set at the stored setting, plus ``name@1`` rows at the one setting for all
            sets; ``TunedSettings()`` runs every method at its defaults.

    Returns:
        dict with ``meta`` (command, seed, date, versions, limits, elapsed_s, ...), ``sets`` (per set:
        ``n``, ``notes``, ``cases``, ``metrics[method][metric] = {"mean", "std", "n", "values"}``,
        ``figures``), ``summary`` (per set and key metric: input, strongest classical method,
        denoiser), ``timing_ms`` (per method: ``median_ms``, ``min_ms``, ``cpu_ms``), ``skipped``
        (name -> reason) and ``report`` (path).

    Raises:
        ValueError: for an unknown method or set, a non-positive limit or image size.
        FileNotFoundError: if ``data_dir`` is given but does not exist.
    """
    from tqdm.auto import tqdm

    from usdespeckle.benchmark.report import summary_rows

    started, started_cpu = time.perf_counter(), time.process_time()
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
    if isinstance(tuned_settings, TunedSettings):
        tuned = tuned_settings
    else:
        tuned = load_tuned_settings(TUNED_SETTINGS_FILE if tuned_settings is None else Path(tuned_settings))

    def identity(image: np.ndarray) -> np.ndarray:
        return np.asarray(image, dtype=np.float32)

    def set_rows(set_name: str) -> dict[str, ArrayFn]:
        return {INPUT: identity, **rows_for_set(chosen, set_name, tuned)}

    run_methods = set_rows("")  # every method at its one setting: the timed rows
    limits = {name: (int(limit) if limit is not None else SETS[name].default_limit) for name in set_names}

    meta = {
        "command": command_line(list(chosen), set_names, data_path, out_path, limit, seed),
        "seed": int(seed),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "limit": limit,
        "limits": limits,
        "image_size": int(image_size),
        "time_repeats": int(time_repeats),
        "methods": list(run_methods),
        "classical": [m for m in chosen if m in CLASSICAL_METHODS],
        "peers": [m for m in chosen if m in PEERS],
        "tuned": tuned.provenance or "no tuned settings stored: every filter and peer at its defaults",
        "versions": versions(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()}",
        "load_average": load_average(),
    }
    result: dict[str, Any] = {"meta": meta, "sets": {}, "timing_ms": {}, "skipped": skipped}

    with _Threads(TIMING_THREADS):
        loaded = {name: SETS[name].load(data_path, limits[name], seed, int(image_size)) for name in set_names}
        rows_per_set = {name: set_rows(name) for name in loaded}
        frames = sum(
            (c.image.shape[0] if c.image.ndim == 3 else 1) * len(rows_per_set[name])
            for name, ls in loaded.items()
            for c in ls.cases
        )
        bar = tqdm(
            total=frames,
            desc="benchmark",
            unit="image",
            disable=not progress,
            file=sys.stderr,
        )
        for set_name, ls in loaded.items():
            kind = SETS[set_name].kind
            per_method, shown = _run_set(set_name, ls.cases, rows_per_set[set_name], figure_rows, bar)
            table = {
                m: {metric: summary(vals) for metric, vals in per_metric.items()}
                for m, per_metric in per_method.items()
            }
            entry: dict[str, Any] = {
                "n": len(ls.cases) if kind != "cine" else sum(c.image.shape[0] for c in ls.cases),
                "notes": ls.notes + _setting_note([m for m in chosen if m in tuned.single], set_name, tuned),
                "cases": [c.name for c in ls.cases],
                "metrics": table,
                "figures": [],
            }
            if ls.cases:
                entry["figures"] = _figures(
                    set_name, kind, ls.cases, shown, table, out_path, meta["classical"]
                )
            entry["figure"] = entry["figures"][0] if entry["figures"] else None
            result["sets"][set_name] = entry
        bar.close()

        timing_image = _timing_image(seed)
        for method_name, fn in run_methods.items():
            if method_name == INPUT:
                continue
            result["timing_ms"][method_name] = _time_method(fn, timing_image, time_repeats)

    meta["elapsed_s"] = time.perf_counter() - started
    meta["cpu_s"] = time.process_time() - started_cpu
    result["summary"] = summary_rows(result)
    out_path.mkdir(parents=True, exist_ok=True)
    report = out_path / "benchmark.md"
    atomic_write(report, markdown(result))
    atomic_write(out_path / "benchmark.json", json.dumps(result, indent=1, allow_nan=True) + "\n")
    result["report"] = str(report)
    return result
