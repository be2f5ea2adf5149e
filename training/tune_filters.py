"""Tune the classical despecklers' parameters on validation images and write reports/filter_tuning.md.

Each method in ``usdespeckle.runtime.filters.FILTERS`` is run over a small grid on a few speckled
validation images of several speckle sets; the setting with the best mean affine-fitted PSNR over
the sets (each set weighted equally) wins (the affine fit keeps a filter from being judged on a
global gain/offset, e.g. BM3D's log-domain bias). The winners are the defaults in the filters'
signatures (copied by hand). Also measured: ms per 256x256 slice.

Data: ``--data DIR`` with ``DIR/datalist_natural.json`` (made by ``usdespeckle prepare-data``): its
validation split's ``label`` images, one per source photograph first (so that a few images cover
several photographs), centre-cropped to ``--size``. Without it, scikit-image's bundled photographs.
Speckle sets (seeded):

- ``rayleigh``: ``usdespeckle.simulation.speckle.rayleigh_speckle`` (the method's model: decimated Rayleigh
  envelope, random log compression); reference the clean photograph.
- ``gamma1``, ``gamma4``: multiplicative L-look speckle on amplitude, ``y = x sqrt(Gamma(L, 1/L))``
  (``usdespeckle.simulation.speckle.gamma_speckle``); reference the clean photograph.
- ``correlated``: a circular complex Gaussian field weighted by the photograph (as echogenicity),
  blurred by an anisotropic Gaussian PSF (std 1 px axial, 2.5 px lateral), envelope, log
  compression to 50 dB (``usdespeckle.simulation.physics.log_compress``, 6 dB headroom); reference the clean
  photograph through the same log compression (the display a perfect despeckler would show).

Results are checkpointed per method in ``--checkpoint`` (JSON) so an interrupted run resumes.

    python training/tune_filters.py                    # photographs
    python training/tune_filters.py --data /work/data-v0 --images 3 --size 128 --checkpoint /tmp/tuning.json
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
from scipy import ndimage
from skimage import color, data, io, transform

from usdespeckle import metrics
from usdespeckle.runtime import filters
from usdespeckle.runtime.atomic import atomic_write
from usdespeckle.simulation import speckle
from usdespeckle.simulation.physics import log_compress

# Small grids: a few values around each paper's recommendation. Lee and Kuan need small Cu on
# log-compressed images (their local coefficient of variation is about 0.1-0.3 there).
# A method's grid is one dict (a product of value lists) or a list of such dicts (their union).
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
}

PHOTOS = ("camera", "moon", "coins", "astronaut", "chelsea", "coffee", "brick", "text")
CORRELATED_PSF_STD_PX = (1.0, 2.5)  # axial, lateral
CORRELATED_DR_DB = 50.0


def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3])
    img = img.astype(np.float64)
    return img / 255.0 if img.max() > 1.0 else img


def _square(image: np.ndarray, size: int) -> np.ndarray:
    """Grey, centre-cropped to a square, resized to ``size`` x ``size``, in [0, 1] (float64)."""
    img = _grey(image)
    side = min(img.shape)
    top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    img = img[top : top + side, left : left + side]
    return np.clip(transform.resize(img, (size, size), anti_aliasing=True), 0.0, 1.0)


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Grey centre crop of ``size`` x ``size`` (keeps the pixel scale of the dataset's images)."""
    img = _grey(image)
    if min(img.shape) < size:
        return _square(img, size)
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return np.clip(img[top : top + size, left : left + size], 0.0, 1.0)


def load_clean(data_dir: Path | None, n_images: int, size: int) -> tuple[list[np.ndarray], str]:
    """Clean validation images (one per source first) and a description of where they came from."""
    if data_dir is not None:
        datalist = data_dir / "datalist_natural.json"
        if not datalist.is_file():
            raise FileNotFoundError(f"{datalist} not found; run `usdespeckle prepare-data {data_dir}` first")
        items = json.loads(datalist.read_text(encoding="utf-8"))["validation"]
        if not items:
            raise ValueError(f"{datalist} has an empty validation split")
        by_source: dict[str, list[dict]] = {}
        for item in items:
            by_source.setdefault(item.get("source", item["label"]), []).append(item)
        chosen = []
        for rank in range(max(len(v) for v in by_source.values())):
            chosen += [v[rank] for v in by_source.values() if rank < len(v)]
        chosen = chosen[:n_images]
        images = [_centre_crop(io.imread(data_dir / item["label"]), size) for item in chosen]
        names = ", ".join(Path(item["label"]).stem for item in chosen)
        return images, f"{len(images)} validation images of {datalist} ({names})"
    names = PHOTOS[:n_images]
    return [_square(getattr(data, name)(), size) for name in names], "scikit-image photos: " + ", ".join(
        names
    )


def correlated_speckle(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """PSF-correlated, log-compressed speckle of a clean photograph; returns (speckled, reference)."""
    field = (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)) / np.sqrt(2.0)
    weighted = clean * field
    echo = ndimage.gaussian_filter(weighted.real, CORRELATED_PSF_STD_PX, mode="reflect") + 1j * (
        ndimage.gaussian_filter(weighted.imag, CORRELATED_PSF_STD_PX, mode="reflect")
    )
    impulse = np.zeros((41, 41))
    impulse[20, 20] = 1.0
    kernel = ndimage.gaussian_filter(impulse, CORRELATED_PSF_STD_PX)
    envelope = np.abs(echo) / np.sqrt(np.sum(kernel**2))  # echogenicity 1 -> RMS envelope 1
    return (
        log_compress(envelope, dynamic_range_db=CORRELATED_DR_DB).astype(np.float64),
        log_compress(clean, dynamic_range_db=CORRELATED_DR_DB).astype(np.float64),
    )


def make_sets(
    cleans: list[np.ndarray], rng: np.random.Generator
) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """Speckled inputs and references per set (see the module docstring)."""
    sets: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    sets["rayleigh"] = ([speckle.rayleigh_speckle(c, rng).astype(np.float64) for c in cleans], cleans)
    for looks in (1, 4):
        sets[f"gamma{looks}"] = (
            [speckle.gamma_speckle(c, looks, rng).astype(np.float64) for c in cleans],
            cleans,
        )
    pairs = [correlated_speckle(c, rng) for c in cleans]
    sets["correlated"] = ([p[0] for p in pairs], [p[1] for p in pairs])
    return sets


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
    filters.despeckle(image, method, **params)  # warm-up (imports, caches)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        filters.despeckle(image, method, **params)
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
    sets: dict[str, tuple[list[np.ndarray], list[np.ndarray]]],
    log: Callable[[str], None],
    known: list[dict] | None = None,
    save: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Every grid setting of ``method`` scored on every set: [{"params", "sets": {set: scores}}].

    Settings found in ``known`` (a partial earlier run) are reused; ``save`` is called after each
    new setting with the rows so far.
    """
    rows = []
    for params in grid_settings(method):
        reused = [r for r in known or [] if r["params"] == params]
        if reused:
            rows.append(reused[0])
            continue
        start = time.perf_counter()
        per_set = {}
        for name, (noisy, refs) in sets.items():
            per_set[name] = score([filters.despeckle(n, method, **params) for n in noisy], refs)
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
    source: str,
    sets: dict,
    baseline: dict,
    done: dict[str, dict],
) -> list[str]:
    """The lines of reports/filter_tuning.md: the setup, the best settings, each set, every setting tried."""
    command = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Classical despeckler tuning",
        "",
        f"Made by `python training/tune_filters.py {command}` ({platform.processor() or platform.machine()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, machine shared with other jobs; "
        f"{sum(d.get('seconds', 0) for d in done.values()) / 60:.0f} min of tuning wall time).",
        "",
        f"- Images: {source}; {args.size}x{args.size}, seed {args.seed}. The same clean images in every set.",
        "- Sets: `rayleigh` (the method's speckle model, `speckle.rayleigh_speckle`), `gamma1` / `gamma4` "
        "(amplitude speckle `x sqrt(Gamma(L, 1/L))`, L = 1 and 4), `correlated` (complex Gaussian field "
        f"weighted by the photograph, Gaussian PSF std {CORRELATED_PSF_STD_PX} px (axial, lateral), envelope, "
        f"log compression to {CORRELATED_DR_DB:.0f} dB; reference: the clean photograph log-compressed the "
        "same way). References of the other sets: the clean photograph.",
        "- Selection: best mean over the sets (equal weights) of the mean PSNR after a least-squares affine "
        "intensity fit of the output to the reference (`metrics.psnr_affine`). PSNR/SSIM without the fit "
        "use data_range=1. EPI: Laplacian correlation with the reference.",
        "- Time: median CPU time of one call on a 256x256 slice (camera with Rayleigh speckle), best "
        "parameters (BM3D, MuLoG: one run); every filter runs on one thread, so this is about the wall "
        "time on an idle core (the shared machine's wall time was several times longer).",
        "",
        "## Best parameters (the defaults of the filters in `usdespeckle/runtime/filters/`)",
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
            f"## Set `{name}` with the chosen defaults",
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
    parser.add_argument("--out", type=Path, default=Path("reports/filter_tuning.md"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="JSON of finished methods (resume)")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    cleans, source = load_clean(args.data, args.images, args.size)
    sets = make_sets(cleans, rng)
    timing_image = speckle.rayleigh_speckle(_square(data.camera(), 256), np.random.default_rng(args.seed))
    baseline = {name: score(noisy, refs) for name, (noisy, refs) in sets.items()}

    done: dict[str, dict] = {}
    if args.checkpoint is not None and args.checkpoint.is_file():
        done = json.loads(args.checkpoint.read_text(encoding="utf-8"))

    def save_checkpoint() -> None:
        if args.checkpoint is not None:
            args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(args.checkpoint, json.dumps(done, indent=1))  # a kill never truncates it

    for method in args.methods:
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
            best = max(rows, key=lambda r: _overall(r["sets"], "psnr_affine"))
            done[method] = {"rows": rows, "best": best, "seconds": time.perf_counter() - method_start}
        if "cpu_ms" not in done[method]:
            repeats = 1 if method in ("bm3d", "mulog") else 3
            done[method]["cpu_ms"] = time_ms(method, done[method]["best"]["params"], timing_image, repeats)
        print(
            f"{method:7s} {_fmt(done[method]['best']['params']):50s} {done[method]['cpu_ms']:.0f} CPU ms",
            flush=True,
        )
        save_checkpoint()
    done = {m: e for m, e in done.items() if "best" in e}
    elapsed = time.perf_counter() - t_start

    lines = _report(args, argv, source, sets, baseline, done)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, "\n".join(lines))
    print(f"wrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
