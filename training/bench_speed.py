"""Speed and memory benchmark of despeckle_array: denoiser (torch, ONNX Runtime) vs classical filters.

Measures slices per second at 256x256 and 512x512 (one timed run after warm-up, 2 threads)
and the peak memory of a 512x512x300 volume through ``despeckle_array`` (in a subprocess, with
resident memory from ``/proc/self/status`` and ``tracemalloc`` for numpy allocations). Writes
``reports/speed.md``.

If the bundle ships no weights yet, a randomly initialised generator (train.json's ``network_def``)
is exported into a temporary bundle by ``training/export_bundle.py``, as the shipped one is; speed
does not depend on the weights' values. The report says which was used.

Usage::

    python training/bench_speed.py                 # full run, writes reports/speed.md
    python training/bench_speed.py --quick --out /tmp/speed.md   # fewer slices, smaller volume
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse
import contextlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "training"))  # export_bundle.py

from usdespeckle.runtime.bundle_utils import default_bundle_root  # noqa: E402
from usdespeckle.runtime.inference import despeckle_array, load_denoiser  # noqa: E402
from usdespeckle.runtime.options import CLASSICAL_METHODS, DEFAULT_BATCH_SIZE, PASSES  # noqa: E402

# the bundle's generator, as train.json builds it (used when the shipped weights cannot be loaded)
_TRAIN = json.loads((REPO / "monai_bundle" / "configs" / "train.json").read_text(encoding="utf-8"))
NGF, NUM_DOWNS, UPSAMPLE = _TRAIN["ngf"], _TRAIN["num_downs"], _TRAIN.get("upsample")
EXPORT_MIRRORINGS = int(_TRAIN.get("export_mirrorings", 1))  # mirrorings averaged by the exported model

_MEMORY_SCRIPT = r"""
import os, sys, json, tracemalloc, time
os.environ.setdefault("OMP_NUM_THREADS", "{threads}")
sys.path.insert(0, {repo!r})
import numpy as np, torch
torch.set_num_threads({threads})
from usdespeckle.runtime.inference import despeckle_array, load_denoiser

def status(key):  # resident memory from /proc, bytes (ru_maxrss would count the parent's peak too)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

load_denoiser({bundle!r}, backend={backend!r})
volume = np.random.default_rng(0).uniform(0, 255, size=({slices}, {size}, {size})).astype(np.float32)
despeckle_array(volume[:1], bundle_root={bundle!r}, backend={backend!r})  # warm-up: runtime buffers
try:  # reset the peak (VmHWM) to the current resident size, Linux >= 4.0
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
base = status("VmRSS")
tracemalloc.start()
t = time.perf_counter()
out = despeckle_array(volume, bundle_root={bundle!r}, backend={backend!r}, batch_size={batch})
seconds = time.perf_counter() - t
_, traced = tracemalloc.get_traced_memory()
peak = status("VmHWM")
print(json.dumps(dict(base=base, peak=peak, traced=traced, seconds=seconds, volume=volume.nbytes)))
"""


def export_random_bundle(root: Path) -> Path:
    """Export a randomly initialised generator of the bundle's size as a TorchScript + ONNX bundle.

    The generator is train.json's ``network_def`` (MONAI's ConfigParser, as training builds it),
    seeded; ``training/export_bundle.py``'s :func:`export` writes the exports and their checksums
    as for the shipped bundle.
    """
    from export_bundle import export
    from monai.bundle import ConfigParser

    shutil.copytree(REPO / "monai_bundle" / "configs", root / "configs")
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser["bundle_root"] = str(root)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    (root / "models").mkdir(parents=True)
    torch.save(network.state_dict(), root / "models" / "model.pt")
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():  # export prints its changes
        warnings.simplefilter("ignore")
        export(root)
    return root


def slices_per_second(method: str, size: int, slices: int, **kwargs) -> float:
    """Warm-up, then one timed run over ``slices`` slices of ``size``x``size``.

    Classical filters warm up on one slice. The denoiser warms up twice on the whole volume: TorchScript's
    profiling executor records shapes on the first call and optimises on the second, per batch shape,
    so a one-slice warm-up left the optimisation inside the timed run (229 ms instead of 26 ms a slice).
    """
    volume = np.random.default_rng(size).uniform(0, 255, size=(slices, size, size)).astype(np.float32)
    for _ in range(2 if method == "denoiser" else 1):
        despeckle_array(volume if method == "denoiser" else volume[:1], method, **kwargs)
    start = time.perf_counter()
    despeckle_array(volume, method, **kwargs)
    return slices / (time.perf_counter() - start)


def measure_memory(bundle: Path, backend: str, slices: int, size: int, batch: int, threads: int) -> dict:
    """Run the 3D volume through despeckle_array in a fresh process; returns bytes and seconds."""
    script = _MEMORY_SCRIPT.format(
        threads=threads,
        repo=str(REPO),
        bundle=str(bundle),
        backend=backend,
        slices=slices,
        size=size,
        batch=batch,
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "speed.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--quick", action="store_true", help="fewer slices and a 512x512x30 volume (a smoke test)"
    )
    parser.add_argument("--memory-slices", type=int, default=300, help="slices of the 512x512 memory volume")
    parser.add_argument("--memory-backends", nargs="+", choices=("torch", "onnx"), default=["torch", "onnx"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    bundle = default_bundle_root()
    weights = "the shipped weights"
    tmp = None
    try:
        load_denoiser(bundle, "torch")
        load_denoiser(bundle, "onnx")
    except (FileNotFoundError, ValueError) as err:
        tmp = tempfile.TemporaryDirectory()
        bundle = export_random_bundle(Path(tmp.name) / "bundle")
        weights = (
            f"a randomly initialised generator of the bundle's size (ngf={NGF}, num_downs={NUM_DOWNS}, "
            f"upsample={UPSAMPLE}, "
            f"{EXPORT_MIRRORINGS} mirrorings averaged), "
            f"because the shipped weights could not be loaded ({type(err).__name__}). Speed does not depend on "
            "the weights' values; re-run with the real weights to confirm"
        )
        print(f"note: using {weights}", file=sys.stderr)

    counts = {256: (2, 1), 512: (2, 1)} if args.quick else {256: (16, 2), 512: (8, 1)}
    rows = []
    exported = f"{EXPORT_MIRRORINGS} pass{'es' if EXPORT_MIRRORINGS > 1 else ''}"  # averaged by the export
    variants = [
        ("torch", None, f"TorchScript, {exported}"),
        ("onnx", None, f"ONNX Runtime, {exported}"),
        ("torch", max(PASSES), f"TorchScript, `--passes {max(PASSES)}` (the library mirrors)"),
    ]
    for backend, passes, label in variants:
        speeds = [
            slices_per_second(
                "denoiser", size, n, backend=backend, bundle_root=bundle, batch_size=args.batch, passes=passes
            )
            for size, (n, _) in counts.items()
        ]
        rows.append((f"denoiser ({label})", *speeds))
        print(rows[-1], file=sys.stderr)
    for method in CLASSICAL_METHODS:
        try:
            speeds = [slices_per_second(method, size, n) for size, (_, n) in counts.items()]
        except ValueError as err:
            rows.append((method, None, None, str(err)))
        else:
            rows.append((method, *speeds))
        print(rows[-1], file=sys.stderr)

    memory_slices = 30 if args.quick else args.memory_slices
    memory = {
        backend: measure_memory(bundle, backend, memory_slices, 512, args.batch, args.threads)
        for backend in args.memory_backends
    }
    if tmp is not None:
        tmp.cleanup()

    mib = 1 / 2**20
    lines = [
        "# Inference speed and memory",
        "",
        f"Written by `training/bench_speed.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d')}: {platform.machine()}, {os.cpu_count()} cores visible, "
        f"{args.threads} threads, torch {torch.__version__}, onnxruntime "
        f"{__import__('onnxruntime').__version__}, Python {platform.python_version()}.",
        "",
        f"Denoiser: {weights}.",
        "",
        "Slices per second through `despeckle_array` (intensity mapping, reflection padding to the "
        f"divisor, batch {args.batch} for the denoiser, one slice at a time for classical filters with "
        "their default parameters), one timed run after warm-up (the denoiser: two runs over the same slices); "
        + ", ".join(f"{size}x{size}: {n} denoiser / {c} classical slices" for size, (n, c) in counts.items())
        + f". Load average {os.getloadavg()[0]:.1f} when the report was written (above {os.cpu_count()} means "
        "other processes shared the cores and the numbers are slower than the machine can do).",
        "",
        "| method | 256x256 slices/s | 512x512 slices/s |",
        "|---|---:|---:|",
    ]
    for row in rows:
        if row[1] is None:
            lines.append(f"| {row[0]} | n/a | n/a ({row[3]}) |")
        else:
            lines.append(f"| {row[0]} | {row[1]:.2f} | {row[2]:.2f} |")
    lines += [
        "",
        f"## Peak memory, 512x512x{memory_slices} float32 volume (batch {args.batch})",
        "",
        "Measured in a fresh process after importing, loading the denoiser, allocating the input and a "
        "one-slice warm-up: resident memory (`VmRSS`) before, and its peak (`VmHWM`, reset before the "
        "run) during `despeckle_array`; both count the whole process (Python, torch, the model, the input). The increase during "
        "`despeckle_array` should be near output + one batch. `tracemalloc` counts numpy allocations "
        "only (not torch's or ONNX Runtime's).",
        "",
        "| backend | input MiB | RSS before MiB | RSS peak MiB | increase MiB | numpy peak (tracemalloc) MiB | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, m in memory.items():
        lines.append(
            f"| {backend} | {m['volume'] * mib:.0f} | {m['base'] * mib:.0f} | {m['peak'] * mib:.0f} | "
            f"{(m['peak'] - m['base']) * mib:.0f} | {m['traced'] * mib:.0f} | {m['seconds']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
