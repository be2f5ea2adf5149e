"""Benchmark the two B-mode simulators: speed, speckle statistics, cyst contrast; writes a report.

Run from the repository root::

    python training/bench_simulation.py --out reports/simulation.md

The fast path (``FastBModeSimulator``) is timed on full 256x256 cyst phantoms. The faithful pymust
path is simulated on a small homogeneous region (``--physics-shape``) at the same pixel size and
depth; its speed for a 256x256 image is extrapolated from the measured time per scatterer
(its cost is linear in the number of scatterers), and reported as such.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import numpy as np

from usdespeckle.metrics import speckle_snr
from usdespeckle.simulation.phantoms import make_cyst_phantom
from usdespeckle.simulation.physics import (
    FastBModeSimulator,
    count_physics_scatterers,
    simulate_envelope_physics,
)
from usdespeckle.simulation.psf import autocorrelation_fwhm

RAYLEIGH_SNR = float(np.sqrt(np.pi / (4 - np.pi)))


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", default="L11-5v")
    parser.add_argument("--size", type=int, default=256, help="image side (pixels) for the fast path")
    parser.add_argument("--fast-images", type=int, default=40, help="images timed for the fast path")
    parser.add_argument("--physics-shape", type=int, nargs=2, default=(40, 48), help="faithful region (H W)")
    parser.add_argument("--physics-density", type=float, default=20.0, help="scatterers per resolution cell")
    parser.add_argument("--physics-runs", type=int, default=1, help="faithful regions simulated")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, default=Path("reports/simulation.md"))
    args = parser.parse_args(argv)

    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:  # torch is not needed here; only keep other helpers' thread settings equal
        pass

    rng = np.random.default_rng(args.seed)
    shape = (args.size, args.size)
    lines: list[str] = []

    # ---- fast path: construction (PSF with pymust) and throughput on cyst phantoms
    start = time.perf_counter()
    simulator = FastBModeSimulator(args.probe, shape)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    FastBModeSimulator(args.probe, shape)
    rebuild_s = time.perf_counter() - start
    phantom, masks = make_cyst_phantom(shape, rng)
    simulator.simulate(phantom, rng)  # warm-up
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(args.fast_images):
        bmode = simulator.simulate(phantom, rng)
    fast_s = (time.perf_counter() - start) / args.fast_images
    fast_cpu_s = (time.process_time() - start_cpu) / args.fast_images
    print(f"fast path: {simulator}")
    print(
        f"fast path: build {build_s:.2f} s, rebuild {rebuild_s * 1e3:.1f} ms, "
        f"{fast_s * 1e3:.1f} ms/image wall, {fast_cpu_s * 1e3:.1f} ms/image CPU"
    )

    background = float(bmode[masks["background"]].mean())
    contrast_rows = []
    for name, mask in masks.items():
        if name.startswith("cyst_"):
            measured_db = (float(bmode[mask].mean()) - background) * simulator.dynamic_range_db
            contrast_rows.append(f"| {name[5:]} | {measured_db:+.1f} |")

    homogeneous = np.full(shape, 0.5)
    fast_snr, fast_axial, fast_lateral = [], [], []
    for _ in range(8):
        envelope = simulator.envelope(homogeneous, rng)
        fast_snr.append(speckle_snr(envelope))
        axial, lateral = autocorrelation_fwhm(envelope)
        fast_axial.append(axial)
        fast_lateral.append(lateral)
    print(
        f"fast path: SNR {_mean_std(fast_snr)}, FWHM axial {_mean_std(fast_axial)} px, lateral {_mean_std(fast_lateral)} px"
    )

    # ---- faithful path on a small region at the same pixel grid and depth
    physics_shape = tuple(args.physics_shape)
    count = count_physics_scatterers(
        physics_shape, probe=args.probe, scatterers_per_cell=args.physics_density
    )
    count_full = count_physics_scatterers(shape, probe=args.probe, scatterers_per_cell=args.physics_density)
    physics_snr, physics_axial, physics_lateral, physics_s, physics_cpu_s = [], [], [], [], []
    for _ in range(args.physics_runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        envelope = simulate_envelope_physics(
            np.full(physics_shape, 0.5), rng, probe=args.probe, scatterers_per_cell=args.physics_density
        )
        physics_s.append(time.perf_counter() - start)
        physics_cpu_s.append(time.process_time() - start_cpu)
        physics_snr.append(speckle_snr(envelope))
        axial, lateral = autocorrelation_fwhm(envelope)
        physics_axial.append(axial)
        physics_lateral.append(lateral)
    # Upper bounds: the fixed costs (demodulation, DAS matrix) are charged to the scatterers too.
    per_scatterer_s = float(np.mean(physics_s)) / count
    physics_full_s = per_scatterer_s * count_full
    per_scatterer_cpu_s = float(np.mean(physics_cpu_s)) / count
    physics_full_cpu_s = per_scatterer_cpu_s * count_full
    print(
        f"faithful path: {count} scatterers in {np.mean(physics_s):.1f} s; SNR {_mean_std(physics_snr)}, "
        f"FWHM axial {_mean_std(physics_axial)} px, lateral {_mean_std(physics_lateral)} px"
    )
    print(
        f"images per minute ({args.size}x{args.size}), wall / CPU time: fast {60 / fast_s:.0f} / "
        f"{60 / fast_cpu_s:.0f}, faithful {60 / physics_full_s:.4f} / {60 / physics_full_cpu_s:.4f} "
        f"(extrapolated, {count_full} scatterers)"
    )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += [
        "# B-mode simulation: speed and speckle statistics",
        "",
        f"Made by `python training/bench_simulation.py` on {time.strftime('%Y-%m-%d')} "
        f"(Python {platform.python_version()}, {os.cpu_count()} cores, OMP_NUM_THREADS=2, "
        f"load average {load:.1f} at the end: the cores were shared with other jobs, so times are upper bounds).",
        f"Probe {args.probe}, pixel {simulator.pixel_size_m[0] * 1e3:.2f} x {simulator.pixel_size_m[1] * 1e3:.2f} mm "
        f"(axial x lateral), region centred at {simulator.depth_m * 1e3:.0f} mm depth, single unsteered plane wave, "
        f"delay-and-sum with pymust's automatic f-number.",
        "",
        "## Speed",
        "",
        "Wall time is what this shared machine gave; CPU time (`time.process_time`, all threads of the "
        "process) is what the work costs on one free core.",
        "",
        "| path | what was timed | wall time | CPU time | images of "
        f"{args.size}x{args.size} per minute (wall / CPU) |",
        "|---|---|---|---|---|",
        f"| fast (PSF convolution) | {args.fast_images} cyst phantoms {args.size}x{args.size} | "
        f"{fast_s * 1e3:.1f} ms/image | {fast_cpu_s * 1e3:.1f} ms/image | {60 / fast_s:.0f} / {60 / fast_cpu_s:.0f} |",
        f"| fast, construction | PSF with pymust (first time / cached) | {build_s:.2f} s / {rebuild_s * 1e3:.1f} ms | | |",
        f"| faithful (pymust simus + DAS) | {physics_shape[0]}x{physics_shape[1]} region, {count} scatterers "
        f"({args.physics_density:g} per cell) | {np.mean(physics_s):.1f} s ({per_scatterer_s * 1e3:.1f} ms/scatterer) | "
        f"{np.mean(physics_cpu_s):.1f} s ({per_scatterer_cpu_s * 1e3:.1f} ms/scatterer) | "
        f"{60 / physics_full_s:.4f} / {60 / physics_full_cpu_s:.4f} (extrapolated to {count_full} scatterers: "
        f"{physics_full_s / 60:.0f} / {physics_full_cpu_s / 60:.0f} min/image) |",
        "",
        "## Speckle statistics (homogeneous region, echogenicity 0.5)",
        "",
        f"Envelope SNR = mean/std (Rayleigh: {RAYLEIGH_SNR:.3f}); speckle grain = FWHM of the normalised "
        "envelope autocorrelation, in pixels.",
        "",
        "| path | region | SNR | FWHM axial (px) | FWHM lateral (px) |",
        "|---|---|---|---|---|",
        f"| fast | 8 x {args.size}x{args.size} | {_mean_std(fast_snr)} | {_mean_std(fast_axial)} | {_mean_std(fast_lateral)} |",
        f"| faithful | {args.physics_runs} x {physics_shape[0]}x{physics_shape[1]} | {_mean_std(physics_snr)} | "
        f"{_mean_std(physics_axial)} | {_mean_std(physics_lateral)} |",
        "",
        f"PSF half-maximum widths (fine grid): axial {simulator.psf_fwhm_m[0] * 1e3:.3f} mm, "
        f"lateral {simulator.psf_fwhm_m[1] * 1e3:.3f} mm. The fast path simulates on a grid "
        f"{simulator.upsample[0]}x{simulator.upsample[1]} finer (axial x lateral) and samples the pixel centres.",
        "",
        f"## Cyst contrast in the fast B-mode (dynamic range {simulator.dynamic_range_db:g} dB)",
        "",
        "Mean B-mode level in each cyst (inner 80 % of its radius) minus the background's, in dB. "
        "Speckle averaging of the log envelope and the plane-wave side lobes fill dark cysts in.",
        "",
        "| cyst (set contrast) | measured (dB) |",
        "|---|---|",
        *contrast_rows,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
