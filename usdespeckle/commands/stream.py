"""``usdespeckle stream``: despeckle a live OpenIGTLink image stream, or play a file as one."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable

from usdespeckle.runtime.errors import UserError
from usdespeckle.runtime.options import (
    BACKENDS,
    DEFAULT_DEVICE,
    DEFAULT_METHOD,
    DEFAULT_PASSES,
    DEVICES,
    METHODS,
    PASSES,
    STREAM_BACKEND,
    STREAM_DEVICE,
    STREAM_MAX_MESSAGE_BYTES,
    STREAM_OUTPUT_DEVICE,
    STREAM_REPLAY_FPS,
    STREAM_SERVE_PORT,
    STREAM_SOURCE_PORT,
)

HELP = (
    "Despeckle a live OpenIGTLink image stream (--from HOST:PORT, e.g. PLUS) and serve the result, "
    "or play a recorded file as a live source (--replay FILE)."
)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT such as 127.0.0.1:{STREAM_SOURCE_PORT}, got {text!r}"
        )
    return host, number


def _port(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535 (0: any free one), got {text!r}")
    return number


def _number(kind: type, low: float, high: float | None = None) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high) or value != value:
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}")
        return value

    return parse


def _device_name(text: str) -> str:
    from usdespeckle.runtime.stream import check_device_name

    try:
        return check_device_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``stream`` options to ``parser``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from",
        dest="source",
        type=_address,
        metavar="HOST:PORT",
        help=f"the OpenIGTLink server sending the images (PLUS: 127.0.0.1:{STREAM_SOURCE_PORT}); "
        "waited for and reconnected to when it starts later or restarts",
    )
    source.add_argument(
        "--replay",
        metavar="FILE",
        help="instead: serve FILE's frames (a cine DICOM, a volume, an image) in a loop as a live source",
    )
    parser.add_argument(
        "--serve",
        type=_port,
        metavar="PORT",
        help=f"port to serve on (default {STREAM_SERVE_PORT}; with --replay {STREAM_SOURCE_PORT})",
    )
    parser.add_argument(
        "--serve-host",
        default="127.0.0.1",
        metavar="HOST",
        help="interface to serve on: 127.0.0.1 (this computer only, default) or 0.0.0.0 (the network)",
    )
    parser.add_argument(
        "--device",
        type=_device_name,
        default=STREAM_DEVICE,
        help=f"device name of the images to despeckle, or with --replay to send (default {STREAM_DEVICE})",
    )
    parser.add_argument(
        "--name",
        type=_device_name,
        default=STREAM_OUTPUT_DEVICE,
        help=f"device name of the despeckled images, at most 20 bytes (default {STREAM_OUTPUT_DEVICE})",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help=f"'denoiser' (the shipped model, default {DEFAULT_METHOD}) or a classical filter with its "
        "defaults; a fast one (median) keeps up with more frames per second",
    )
    parser.add_argument(
        "--passes",
        type=int,
        choices=PASSES,
        default=DEFAULT_PASSES,
        help=f"denoiser mirrorings averaged per frame; time grows with passes (default {DEFAULT_PASSES})",
    )
    parser.add_argument(
        "--strength",
        type=_number(float, 0.0, 1.0),
        default=1.0,
        metavar="S",
        help="blend in [0, 1]: output = (1 - S) * input + S * despeckled (default 1)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=STREAM_BACKEND,
        help=f"denoiser runtime (default {STREAM_BACKEND}: ONNX Runtime, no PyTorch)",
    )
    parser.add_argument(
        "--compute",
        choices=DEVICES,
        default=DEFAULT_DEVICE,
        help=f"where the denoiser runs (--device names the image here; default {DEFAULT_DEVICE})",
    )
    parser.add_argument(
        "--fps",
        type=_number(float, 0.1),
        default=STREAM_REPLAY_FPS,
        help=f"--replay: frames per second (default {STREAM_REPLAY_FPS:g})",
    )
    parser.add_argument(
        "--seconds", type=_number(float, 0.0), metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    parser.add_argument(
        "--max-message-bytes",
        type=_number(int, 1024),
        default=STREAM_MAX_MESSAGE_BYTES,
        metavar="N",
        help=f"refuse messages larger than N bytes (default {STREAM_MAX_MESSAGE_BYTES})",
    )
    parser.add_argument(
        "--progress",
        choices=("bar", "lines", "none"),
        default="bar",
        help="'bar': frames in, out, dropped and latency once a second on stderr; 'lines': the same "
        "as 'stats: in=...' lines on stdout (for programs); 'none' (default bar)",
    )


def _reporter(mode: str) -> Callable | None:
    if mode == "none":
        return None
    last: list = [None, None]  # previous stats copy, its time

    def report(stats) -> None:
        import copy
        import time

        now = time.monotonic()
        line = stats.line(last[0], now - last[1] if last[1] is not None else 1.0)
        last[0], last[1] = copy.copy(stats), now
        if mode == "lines":
            print(f"stats: {line}", flush=True)
        else:
            print(f"usdespeckle stream: {line}", file=sys.stderr, flush=True)

    return report


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    """Run the relay (or the replay) until Ctrl-C, SIGTERM or ``--seconds``; returns 0."""
    try:
        import pyigtl  # noqa: F401
    except ImportError:
        raise UserError(
            "usdespeckle stream needs pyigtl: pip install 'usdespeckle[stream]' (or pip install pyigtl)"
        ) from None
    logging.basicConfig(level=logging.INFO, format="usdespeckle stream: %(message)s", stream=sys.stderr)
    if args.progress == "none":
        logging.getLogger("usdespeckle.runtime.stream").setLevel(logging.WARNING)
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)  # Slicer's Stop: a clean exit
    try:
        if args.replay:
            return _replay(args)
        return _relay(args)
    except (ValueError, OSError) as err:
        raise UserError(" ".join(str(err).split())) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _replay(args: argparse.Namespace) -> int:
    from usdespeckle.runtime.stream import replay

    port = STREAM_SOURCE_PORT if args.serve is None else args.serve
    try:
        sent = replay(
            args.replay, port, fps=args.fps, device=args.device, host=args.serve_host, seconds=args.seconds
        )
    except KeyboardInterrupt:
        sent = None
    print(
        f"usdespeckle stream: replay stopped{'' if sent is None else f' after {sent} frames'}",
        file=sys.stderr,
    )
    return 0


def _relay(args: argparse.Namespace) -> int:
    from usdespeckle.runtime.stream import Relay, StreamSettings

    settings = StreamSettings(
        method=args.method,
        passes=args.passes,
        strength=args.strength,
        backend=args.backend,
        device=args.compute,
    )
    settings.prepare()  # a missing or damaged model fails now, before any connection
    relay = Relay(
        args.source,
        STREAM_SERVE_PORT if args.serve is None else args.serve,
        settings,
        device=args.device,
        output_device=args.name,
        serve_host=args.serve_host,
        max_bytes=args.max_message_bytes,
    )
    print(
        f"usdespeckle stream: {args.device} from {args.source[0]}:{args.source[1]} -> {args.name} "
        f"on {args.serve_host}:{relay.port} ({args.method})",
        file=sys.stderr,
        flush=True,
    )
    try:
        stats = relay.run(report=_reporter(args.progress), seconds=args.seconds)
    except KeyboardInterrupt:
        stats = relay.stats
    print(
        f"usdespeckle stream: stopped; {stats.received} frames in, {stats.sent} out, "
        f"{stats.dropped} dropped, {stats.refused} refused",
        file=sys.stderr,
    )
    return 0
