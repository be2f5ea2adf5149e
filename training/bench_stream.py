"""Live-stream benchmark of ``usdespeckle stream``: frames per second, latency, drops, memory.

A pyigtl ``OpenIGTLinkServer`` in this process plays the pydicom-data cardiac cine
(``color3d_jpeg_baseline.dcm``, 120 frames, as grey uint8) at its own frame size (480x640) and
resized to 256x256, at ``--fps`` frames per second, stamping each frame with the time it is sent.
``usdespeckle stream`` runs as a separate process (``OMP_NUM_THREADS=2``) connected to it, and a
pyigtl ``OpenIGTLinkClient`` here receives the despeckled frames. Measured per run: frames per
second received, latency from send to receive (the frame's timestamp to its arrival here; both
ends use this computer's clock), its median and 95th percentile, frames the relay dropped (it
always works on the newest frame), and the relay's resident memory. A long run reports latency
and memory per window, to show that neither grows.

pyigtl's client looks for messages every 10 ms and its server sends between 10 ms socket reads,
so up to about 20 ms of each latency is the two pyigtl ends, not the relay.

Usage::

    python training/bench_stream.py                        # 30 s per run + a 5-minute run
    python training/bench_stream.py --seconds 10 --long 60 --out /tmp/stream.md   # shorter
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyigtl  # noqa: E402

from usdespeckle.runtime.options import STREAM_DEVICE, STREAM_OUTPUT_DEVICE  # noqa: E402

STATS = re.compile(r"dropped=(\d+) refused=(\d+)")


def cine_frames(size: int | None) -> np.ndarray:
    """The cine's 120 frames as grey uint8 ``(120, H, W)``; resized to ``size`` x ``size`` when given."""
    import SimpleITK as sitk

    spec = importlib.util.find_spec("data_store")
    if spec is None:
        sys.exit("pip install pydicom-data (the cardiac cine comes from it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "color3d_jpeg_baseline.dcm"
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if size is not None:
        from skimage.transform import resize

        grey = np.stack([resize(f, (size, size), preserve_range=True, anti_aliasing=True) for f in grey])
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


_COMPUTE = """
import sys, time, numpy as np
from usdespeckle.runtime.stream import StreamSettings, despeckle_frame
frames = np.load(sys.argv[1])
settings = StreamSettings(method=sys.argv[2])
settings.prepare()
despeckle_frame(frames[:1], settings)
times = []
for frame in frames[1:21]:
    start = time.perf_counter()
    despeckle_frame(frame[np.newaxis], settings)
    times.append(time.perf_counter() - start)
print(1000 * float(np.median(times)))
"""


def compute_ms(frames: np.ndarray, method: str, work: Path) -> float:
    """Median milliseconds ``despeckle_frame`` takes per frame on 2 threads, without any network."""
    path = work / f"frames_{frames.shape[1]}.npy"
    np.save(path, frames[:21])
    env = dict(
        os.environ,
        OMP_NUM_THREADS="2",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run([sys.executable, "-c", _COMPUTE, str(path), method], env=env, capture_output=True,
                            text=True, check=True, timeout=600)  # fmt: skip
    return float(result.stdout.split()[-1])


def rss(pid: int) -> int:
    """Resident memory of process ``pid``, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_once(frames: np.ndarray, method: str, seconds: float, fps: float, window: float) -> dict:
    """One relay run: send ``frames`` in a loop for ``seconds``; returns the measurements."""
    source_port, relay_port = free_port(), free_port()
    server = pyigtl.OpenIGTLinkServer(port=source_port, local_server=True)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="2",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    relay = subprocess.Popen(
        [sys.executable, "-m", "usdespeckle", "stream", "--from", f"127.0.0.1:{source_port}",
         "--serve", str(relay_port), "--method", method, "--progress", "lines"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    last_stats: list[str] = []
    log: list[str] = []
    threading.Thread(target=lambda: last_stats.extend(relay.stdout), daemon=True).start()
    threading.Thread(target=lambda: log.extend(relay.stderr), daemon=True).start()
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", relay_port)
    stop = threading.Event()
    sent = [0]

    def send() -> None:
        start, n = time.monotonic(), 0
        while not stop.is_set():
            if server.is_connected():
                message = pyigtl.ImageMessage(
                    frames[n % len(frames)][np.newaxis], timestamp=time.time(), device_name=STREAM_DEVICE
                )
                # a scanner sends its newest frame: pyigtl's server would queue up to 100 while a
                # send is slow (seconds of stale frames), so anything still queued is replaced
                with server.lock_outgoing_messages:
                    server.outgoing_messages.clear()
                server.send_message(message, wait=False)
                sent[0] += 1
            n += 1
            stop.wait(max(0.0, start + n / fps - time.monotonic()))

    try:
        deadline = time.monotonic() + 120  # the relay's start (model load) and both connections
        while not (server.is_connected() and client.is_connected()):
            if time.monotonic() > deadline or relay.poll() is not None:
                raise RuntimeError("the relay did not connect")
            time.sleep(0.05)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while client.wait_for_message(STREAM_OUTPUT_DEVICE, timeout=0.5) is None:  # warm-up frame
            if time.monotonic() > deadline:
                raise RuntimeError("no despeckled frame came back")
        sent[0] = 0
        records: list[tuple[float, float]] = []  # (time since start, latency)
        memory: list[tuple[float, int]] = []
        start = time.monotonic()
        next_memory = start
        while (now := time.monotonic()) - start < seconds:
            message = client.wait_for_message(STREAM_OUTPUT_DEVICE, timeout=0.2)
            if message is not None:
                records.append((time.monotonic() - start, time.time() - message.timestamp))
            if now >= next_memory:
                memory.append((now - start, rss(relay.pid)))
                next_memory += 1.0
        stop.set()
        sender.join()
    finally:
        stop.set()
        client.stop()
        relay.terminate()
        relay.wait(30)
        server.stop()
    result = summarise(records, memory, last_stats, method=method, frames=frames, seconds=seconds,
                     sent_fps=sent[0] / seconds, window=window)  # fmt: skip
    # pyigtl's server drops a connection when one send takes over 10 ms (its socket timeout); the
    # relay then connects again: count those
    result["reconnects"] = max(0, sum("connected to the source" in line for line in log) - 1)
    return result


def summarise(
    records: list[tuple[float, float]],
    memory: list[tuple[float, int]],
    stats_lines: list[str],
    *,
    method: str,
    frames: np.ndarray,
    seconds: float,
    sent_fps: float,
    window: float,
) -> dict:
    """The run's numbers from (time, latency) records, (time, RSS) samples and the relay's stats lines."""
    latencies = np.array([lat for _, lat in records])
    dropped = refused = 0
    for line in stats_lines:
        if match := STATS.search(line):
            dropped, refused = int(match.group(1)), int(match.group(2))
    windows = []
    for w0 in np.arange(0, seconds, window):
        inside = [lat for t, lat in records if w0 <= t < w0 + window]
        mem = [m for t, m in memory if w0 <= t < w0 + window]
        if inside:
            windows.append(
                {
                    "from_s": float(w0),
                    "fps": len(inside) / window,
                    "median_ms": 1000 * float(np.median(inside)),
                    "p95_ms": 1000 * float(np.percentile(inside, 95)),
                    "rss_mb": max(mem) / 2**20 if mem else None,
                }
            )
    return {
        "method": method,
        "size": f"{frames.shape[1]}x{frames.shape[2]}",
        "seconds": seconds,
        "sent_fps": sent_fps,
        "received_fps": len(latencies) / seconds,
        "median_ms": 1000 * float(np.median(latencies)) if len(latencies) else None,
        "p95_ms": 1000 * float(np.percentile(latencies, 95)) if len(latencies) else None,
        "dropped": dropped,
        "refused": refused,
        "rss_mb_first": memory[0][1] / 2**20 if memory else None,
        "rss_mb_last": memory[-1][1] / 2**20 if memory else None,
        "windows": windows,
    }


def _row(r: dict) -> str:
    compute = f"{r['compute_ms']:.0f}" if "compute_ms" in r else "-"
    reconnects = r.get("reconnects", "-")
    load = f"{r['load']:.1f}" if "load" in r else "-"
    return (
        f"| {r['method']} | {r['size']} | {r['seconds']:.0f} | {r['sent_fps']:.1f} | {r['received_fps']:.1f} | "
        f"{r['median_ms']:.0f} | {r['p95_ms']:.0f} | {r['dropped']} | {reconnects} | "
        f"{r['rss_mb_first']:.0f} -> {r['rss_mb_last']:.0f} | {compute} | {load} |"
    )


def report(results: list[dict], long: dict | None, args: argparse.Namespace, load: tuple[float, ...]) -> str:
    lines = [
        "# Live stream (`usdespeckle stream`) on loopback",
        "",
        f"Written by `training/bench_stream.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, the relay on 2 threads "
        f"(`OMP_NUM_THREADS=2`), Python {platform.python_version()}, pyigtl {importlib.metadata.version('pyigtl')}. Load average "
        f"when it started: {load[0]:.1f} (other work shared the 2 cores; the numbers are lower bounds).",
        "",
        f"Source: a pyigtl server sending the pydicom-data cardiac cine (120 frames, grey uint8) in a loop at "
        f"{args.fps:g} frames/s, each stamped when sent; receiver: a pyigtl client. Latency is from that stamp to "
        "the despeckled frame's arrival (pyigtl's two ends add up to about 20 ms of polling). `dropped` "
        "counts frames the relay skipped to stay on the newest one; `reconnects` counts the times pyigtl's server "
        "dropped the relay's connection (it gives up on a send that takes over 10 ms, which happens when the "
        "relay's receiving thread gets no CPU time) and the relay connected again; memory is the relay process's RSS at the "
        "first and last second. *Despeckling alone* is `despeckle_frame` on one frame in a process of its own "
        "(2 threads, no network), measured right after the run: the relay cannot beat 1000 / that many frames "
        "per second. *load* is the 1-minute load average at the end of the run (2 cores: above 2, other "
        "programs took CPU time from the relay). The denoiser is the shipped one, one pass, in ONNX Runtime; "
        "`median` is the 5x5 median filter, for scale.",
        "",
        "| method | frame | s | sent/s | received/s | latency median ms | p95 ms | dropped | reconnects | relay RSS MB | despeckling alone, ms/frame | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(r) for r in results),
    ]
    if long is not None:
        lines += [
            "",
            f"## A {long['seconds']:.0f}-second run ({long['method']}, {long['size']}): latency and memory over time",
            "",
            "| method | frame | s | sent/s | received/s | latency median ms | p95 ms | dropped | reconnects | relay RSS MB | despeckling alone, ms/frame | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            _row(long),
            "",
            "| from s | received/s | latency median ms | p95 ms | relay RSS MB |",
            "|---|---|---|---|---|",
            *(
                f"| {w['from_s']:.0f} | {w['fps']:.1f} | {w['median_ms']:.0f} | {w['p95_ms']:.0f} | "
                f"{w['rss_mb']:.0f} |"
                for w in long["windows"]
            ),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each short run (default 30)")
    parser.add_argument(
        "--long", type=float, default=300.0, help="length of the long run, 0: none (default 300)"
    )
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second sent (default 30)")
    parser.add_argument("--methods", nargs="+", default=["denoiser", "median"])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "stream.md")
    args = parser.parse_args()
    load = os.getloadavg()
    sizes = {"480x640": cine_frames(None), "256x256": cine_frames(256)}
    results = []
    with tempfile.TemporaryDirectory() as work:
        for method in args.methods:
            for frames in sizes.values():
                results.append(run_once(frames, method, args.seconds, args.fps, window=args.seconds))
                results[-1]["load"] = os.getloadavg()[0]
                results[-1]["compute_ms"] = compute_ms(frames, method, Path(work))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "windows"}), flush=True)
    long = None
    if args.long > 0:
        long = run_once(
            sizes["256x256"], args.methods[0], args.long, args.fps, window=min(30.0, args.long / 5)
        )
        long["load"] = os.getloadavg()[0]
        print(json.dumps(long), flush=True)
    from usdespeckle.runtime.atomic import atomic_write

    text = report(results, long, args, load)
    atomic_write(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
