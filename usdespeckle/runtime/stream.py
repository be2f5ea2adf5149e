"""Live despeckling of an OpenIGTLink image stream, and a recorded file played as such a stream.

:class:`Relay` connects to a source (PLUS, a scanner bridge, or :func:`replay`) as a client,
despeckles each IMAGE frame of one device with :func:`usdespeckle.runtime.inference.despeckle_array` and
serves the result under a device name of its own on an OpenIGTLink server, keeping the frame's
ijk-to-world matrix, coordinate system and timestamp; TRANSFORM messages are forwarded as they are,
so the output sits where the input does.

The relay always works on the newest frame: a thread receives while the previous frame is being
despeckled, into a slot that holds one frame; a frame replaced there before it was taken is
dropped (counted), never queued. Colour frames become grey (the first channel when the channels
are equal, else the BT.601 luminance, as :func:`usdespeckle.runtime.io.to_grey`); multi-slice frames are
despeckled slice by slice along k. Frames of any size and pixel type arrive in any order of sizes;
the output is float32 in the input's intensity units.

Imports numpy, pyigtl and the numpy core of the library (no torch: the denoiser runs in ONNX
Runtime by default, :data:`usdespeckle.runtime.options.STREAM_BACKEND`). The sockets are in
:mod:`usdespeckle.runtime.stream_link`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from usdespeckle.runtime.options import (
    DEFAULT_DEVICE,
    DEFAULT_METHOD,
    DEFAULT_PASSES,
    IGTL_DEVICE_NAME_BYTES,
    STREAM_BACKEND,
    STREAM_DEVICE,
    STREAM_MAX_MESSAGE_BYTES,
    STREAM_OUTPUT_DEVICE,
    STREAM_REPLAY_FPS,
)
from usdespeckle.runtime.stream_link import StreamReceiver, StreamServer

__all__ = [
    "Frame",
    "LatestFrame",
    "Relay",
    "StreamSettings",
    "StreamStats",
    "check_device_name",
    "despeckle_frame",
    "grey_frame",
    "replay",
    "replay_frames",
]

logger = logging.getLogger("usdespeckle.runtime.stream")

#: BT.601 luminance weights of R, G, B (as ``usdespeckle.runtime.io.to_grey``).
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_device_name(name: str) -> str:
    """Return ``name`` if it is a usable OpenIGTLink device name.

    Raises:
        ValueError: empty, or longer than 20 bytes in UTF-8 (it would arrive truncated, and a client
            waiting for the full name would never match it).
    """
    size = len(name.encode("utf-8"))
    if not name or size > IGTL_DEVICE_NAME_BYTES:
        raise ValueError(
            f"device name {name!r} is {size} bytes; OpenIGTLink allows 1 to {IGTL_DEVICE_NAME_BYTES} "
            f"(a longer one arrives truncated): use a shorter name such as {STREAM_OUTPUT_DEVICE!r}"
        )
    return name


@dataclass
class Frame:
    """One received image.

    Attributes:
        image: pyigtl's array, ``(k, j, i)`` or ``(k, j, i, components)``.
        matrix: 4x4 ijk-to-world matrix (mm), in ``coordinate_system``.
        timestamp: the sender's timestamp, seconds since 1970.
        device_name: the sender's device name.
        coordinate_system: ``"lps"`` or ``"ras"``.
        received: ``time.monotonic()`` at arrival, seconds.
    """

    image: np.ndarray
    matrix: np.ndarray
    timestamp: float
    device_name: str
    coordinate_system: str = "lps"
    received: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, message: Any, received: float) -> Frame:
        """The frame held by a pyigtl ``ImageMessage``."""
        return cls(
            image=message.image,
            matrix=np.asarray(message.ijk_to_world_matrix, dtype=np.float64),
            timestamp=float(message.timestamp),
            device_name=message.device_name,
            coordinate_system=message.world_coordinate_system,
            received=received,
        )


def grey_frame(image: np.ndarray) -> np.ndarray:
    """A frame's pixels as grey ``(k, j, i)`` values, in the input's units.

    Args:
        image: ``(k, j, i)`` scalar, or ``(k, j, i, c)`` with c = 1 (grey), 2 (grey + alpha),
            3 (RGB) or 4 (RGBA).

    Returns:
        The scalar input itself (no copy), the first channel when the colour channels are equal,
        else the float32 BT.601 luminance of R, G, B.

    Raises:
        ValueError: any other shape (the message says what arrived).
    """
    if image.ndim == 3:
        return image
    if image.ndim != 4 or not 1 <= image.shape[-1] <= 4:
        raise ValueError(f"an image of shape {image.shape} is not a (k, j, i[, 1-4 components]) frame")
    channels = image.shape[-1]
    if channels <= 2:
        return image[..., 0]
    colour = image[..., :3]
    if np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2]):
        return image[..., 0]
    return colour.astype(np.float32) @ LUMINANCE


@dataclass(frozen=True)
class StreamSettings:
    """How each frame is despeckled (see :func:`usdespeckle.runtime.inference.despeckle_array`).

    Attributes:
        method: ``"denoiser"`` or a classical method of :data:`usdespeckle.runtime.options.METHODS`.
        passes: denoiser mirrorings averaged per frame (1 for live use).
        strength: blend in [0, 1] with the input.
        backend: the denoiser's runtime, ``"onnx"`` (default: no torch) or ``"torch"``.
        device: ``"cpu"`` or ``"cuda"``.
        bundle_root: the bundle folder; None for the library's default.
    """

    method: str = DEFAULT_METHOD
    passes: int = DEFAULT_PASSES
    strength: float = 1.0
    backend: str = STREAM_BACKEND
    device: str = DEFAULT_DEVICE
    bundle_root: str | None = None

    def prepare(self) -> None:
        """Load (and check) the denoiser now, so a missing model fails before any connection."""
        if self.method == "denoiser":
            from usdespeckle.runtime.inference import load_denoiser

            load_denoiser(self.bundle_root, backend=self.backend, device=self.device, passes=self.passes)


def despeckle_frame(image: np.ndarray, settings: StreamSettings) -> np.ndarray:
    """Despeckle one frame: grey (see :func:`grey_frame`), then slice by slice along k.

    Returns:
        float32 ``(k, j, i)``, equal to ``despeckle_array(grey_frame(image), axis=0, ...)``.

    Raises:
        ValueError: as :func:`grey_frame` and :func:`usdespeckle.runtime.inference.despeckle_array`
            (e.g. slices under 8 pixels, non-finite values).
    """
    from usdespeckle.runtime.inference import despeckle_array

    grey = grey_frame(image)
    return despeckle_array(
        grey,
        settings.method,
        axis=0,
        batch_size=max(1, min(8, grey.shape[0])),
        strength=settings.strength,
        device=settings.device,
        backend=settings.backend,
        bundle_root=settings.bundle_root,
        passes=settings.passes,
    )


class LatestFrame:
    """A slot holding the newest frame: :meth:`put` replaces (the old one is dropped), :meth:`take` empties."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._ready = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._ready:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._ready.notify()

    def take(self, timeout: float) -> Frame | None:
        """The newest frame, or None after ``timeout`` seconds without one."""
        with self._ready:
            if self._frame is None:
                self._ready.wait(timeout)
            frame, self._frame = self._frame, None
            return frame


@dataclass
class StreamStats:
    """Counts since the relay started, and the latencies of the frames sent in the last report.

    Attributes:
        received: frames of the device received.
        sent: despeckled frames served.
        dropped: frames replaced by a newer one before they could be despeckled.
        refused: frames or messages refused (damaged, oversized, unusable).
        transforms: TRANSFORM messages forwarded.
        latencies: seconds from a frame's arrival to its despeckled frame being served.
        clients: clients connected to the relay's server now.
        connected: whether the source is connected now.
    """

    received: int = 0
    sent: int = 0
    dropped: int = 0
    refused: int = 0
    transforms: int = 0
    latencies: list[float] = field(default_factory=list)
    clients: int = 0
    connected: bool = False

    def line(self, previous: StreamStats | None, seconds: float) -> str:
        """``in=.. out=.. dropped=.. latency_ms=..`` for the interval since ``previous`` (rates per second)."""
        before = previous or StreamStats()
        latency = f"{1000 * float(np.median(self.latencies)):.1f}" if self.latencies else "-"
        seconds = max(seconds, 1e-9)
        return (
            f"in={(self.received - before.received) / seconds:.1f}/s "
            f"out={(self.sent - before.sent) / seconds:.1f}/s "
            f"dropped={self.dropped} refused={self.refused} latency_ms={latency} "
            f"clients={self.clients} source={'connected' if self.connected else 'waiting'}"
        )


class Relay:
    """Despeckle a live OpenIGTLink image stream and serve the result (see the module's docstring).

    Args:
        source: ``(host, port)`` of the OpenIGTLink server sending the images.
        serve_port: port of the relay's own server; 0 picks a free one (read :attr:`port`).
        settings: how frames are despeckled.
        device: the device name of the images to despeckle (others are ignored).
        output_device: the device name the despeckled images are served under.
        serve_host: interface the relay's server listens on (``127.0.0.1``: this computer only).
        max_bytes: largest message body accepted, bytes.
    """

    def __init__(
        self,
        source: tuple[str, int],
        serve_port: int,
        settings: StreamSettings | None = None,
        *,
        device: str = STREAM_DEVICE,
        output_device: str = STREAM_OUTPUT_DEVICE,
        serve_host: str = "127.0.0.1",
        max_bytes: int = STREAM_MAX_MESSAGE_BYTES,
    ) -> None:
        self.settings = settings or StreamSettings()
        self.device = check_device_name(device)
        self.output_device = check_device_name(output_device)
        if self.output_device == self.device:
            raise ValueError(f"the output device name must differ from the input's ({device!r})")
        self.stats = StreamStats()
        self._slot = LatestFrame()
        self._stop = threading.Event()
        self._last_kind: tuple[tuple[int, ...], str] | None = None
        self._last_error = ""
        self._refused_frames = 0  # frames the despeckling refused (too small, non-finite, ...)
        self.server = StreamServer(serve_port, serve_host)
        self.port = self.server.port
        self.receiver = StreamReceiver(source[0], source[1], self._on_message, max_bytes=max_bytes)

    def _on_message(self, message: Any, received: float) -> None:
        """From the receiving thread: keep the newest frame of the device, forward transforms."""
        if message.message_type == "TRANSFORM":
            self.server.send(message)
            self.stats.transforms += 1
        elif message.device_name == self.device:
            self.stats.received += 1
            self._slot.put(Frame.of(message, received))

    def stop(self) -> None:
        """Ask :meth:`run` to return (from any thread)."""
        self._stop.set()

    def run(
        self,
        *,
        report: Callable[[StreamStats], None] | None = None,
        interval: float = 1.0,
        seconds: float | None = None,
    ) -> StreamStats:
        """Relay until :meth:`stop`, ``seconds`` or Ctrl-C; always closes both connections.

        Args:
            report: called with the stats every ``interval`` seconds (their ``latencies`` are those
                of that interval) and once at the end.
            interval: seconds between reports.
            seconds: stop after this long; None: until stopped.

        Returns:
            The final stats.
        """
        self.receiver.start()
        start = next_report = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if seconds is not None and now - start >= seconds:
                    break
                if now >= next_report:
                    self._report(report)
                    next_report = now + interval
                frame = self._slot.take(timeout=min(0.1, max(0.0, next_report - now)))
                if frame is not None:
                    self._process(frame)
        finally:
            self.receiver.close()
            self.server.close()
            self._report(report)
        return self.stats

    def _report(self, report: Callable[[StreamStats], None] | None) -> None:
        self.stats.dropped = self._slot.dropped
        self.stats.refused = self.receiver.refused + self._refused_frames
        self.stats.clients = self.server.clients
        self.stats.connected = self.receiver.connected.is_set()
        if report is not None:
            report(self.stats)
        self.stats.latencies = []

    def _process(self, frame: Frame) -> None:
        kind = (tuple(frame.image.shape), str(frame.image.dtype))
        if kind != self._last_kind:
            if self._last_kind is not None:
                logger.info("frames changed from %s %s to %s %s", *self._last_kind, *kind)
            self._last_kind = kind
        try:
            output = despeckle_frame(frame.image, self.settings)
        except ValueError as err:
            self._refused_frames += 1
            text = " ".join(str(err).split())
            if text != self._last_error:  # one line per kind of problem, not one per frame
                logger.warning(
                    "refused a %s frame of shape %s: %s", frame.device_name, frame.image.shape, text
                )
                self._last_error = text
            return
        self._last_error = ""
        from pyigtl.messages import ImageMessage

        message = ImageMessage(
            output,
            ijk_to_world_matrix=frame.matrix,
            world_coordinate_system=frame.coordinate_system,
            timestamp=frame.timestamp,
            device_name=self.output_device,
        )
        self.server.send(message)
        self.stats.sent += 1
        self.stats.latencies.append(time.monotonic() - frame.received)


def replay_frames(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file as frames to play: ``(frames, j, i[, components])`` and a 4x4 LPS matrix.

    A 2D image is one frame; a 3D image's k slices (a cine loop's frames) are the frames, all
    shown at the first slice's position.

    Raises:
        ValueError, FileNotFoundError: as :func:`usdespeckle.runtime.io.read_image`.
    """
    import SimpleITK as sitk

    from usdespeckle.runtime.io import read_image

    image = read_image(path)
    array = sitk.GetArrayFromImage(image)
    dims = image.GetDimension()
    if dims == 2:
        array = array[np.newaxis]
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dims, dims)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    matrix = np.eye(4)
    matrix[:dims, :dims] = direction * spacing
    matrix[:dims, 3] = image.GetOrigin()
    return array, matrix


def replay(
    path: str | Path,
    port: int,
    *,
    fps: float = STREAM_REPLAY_FPS,
    device: str = STREAM_DEVICE,
    host: str = "127.0.0.1",
    seconds: float | None = None,
    stop: threading.Event | None = None,
    ready: Callable[[StreamServer], None] | None = None,
) -> int:
    """Serve a recorded file's frames as a live OpenIGTLink source, in a loop, at ``fps`` frames/s.

    Each frame is sent as an IMAGE message (its pixels as in the file, colour included) stamped
    with the time it is sent. A late frame is skipped rather than sent in a burst.

    Args:
        path: any image SimpleITK reads (a multi-frame DICOM cine, a volume, a 2D image).
        port: port to serve on; 0 picks a free one (``ready`` receives the server).
        fps: frames per second, > 0.
        device: the device name of the images.
        host: interface to listen on.
        seconds: stop after this long; None: until ``stop`` or Ctrl-C.
        stop: an event that ends the replay.
        ready: called with the server once it listens.

    Returns:
        The number of frames sent.
    """
    from pyigtl.messages import ImageMessage

    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    check_device_name(device)
    frames, matrix = replay_frames(path)
    stop = stop or threading.Event()
    sent = 0
    with StreamServer(port, host) as server:
        logger.info("serving %d frames of %s as %r on %s:%d", len(frames), path, device, host, server.port)
        if ready is not None:
            ready(server)
        start = time.monotonic()
        tick = 0
        while not stop.is_set():
            now = time.monotonic()
            if seconds is not None and now - start >= seconds:
                break
            tick = max(tick, int((now - start) * fps))  # behind: skip ahead, never burst
            frame = frames[tick % len(frames)][np.newaxis]
            message = ImageMessage(
                frame, ijk_to_world_matrix=matrix, timestamp=time.time(), device_name=device
            )
            if server.send(message):
                sent += 1
            tick += 1
            stop.wait(max(0.0, start + tick / fps - time.monotonic()))
    return sent
