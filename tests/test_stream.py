"""``usdespeckle stream``: the live relay on loopback (127.0.0.1, free ports, a few seconds each).

The sources are the library's own ``StreamServer`` or raw sockets writing bytes (for damaged
messages); the relay's output is read with pyigtl's own client where its behaviour (one newest
message per device) does not matter, so the bytes are checked by another implementation.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pyigtl = pytest.importorskip("pyigtl", reason="usdespeckle stream needs pyigtl: pip install -e '.[stream]'")

from pyigtl.messages import CRC64, ImageMessage, TransformMessage  # noqa: E402

from usdespeckle.runtime.inference import despeckle_array  # noqa: E402
from usdespeckle.runtime.stream import (  # noqa: E402
    LatestFrame,
    Relay,
    StreamSettings,
    check_device_name,
    despeckle_frame,
    grey_frame,
    replay,
    replay_frames,
)
from usdespeckle.runtime.stream_link import HEADER, StreamReceiver, StreamServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MEDIAN = StreamSettings(method="median")
#: An oblique, anisotropic ijk-to-world matrix (mm).
MATRIX = np.array(
    [[0.0, -0.4, 0.1, 12.5], [0.3, 0.0, 0.0, -7.0], [0.0, 0.05, 0.9, 31.0], [0.0, 0.0, 0.0, 1.0]]
)


def wait_until(condition, timeout: float = 20.0, what: str = "the stream") -> None:
    """Poll ``condition`` until it is true; fail (not a timing assert: a hang) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Collector:
    """A StreamReceiver keeping every message it gets, in order."""

    def __init__(self, port: int) -> None:
        self.messages: list = []
        self.receiver = StreamReceiver("127.0.0.1", port, lambda m, t: self.messages.append(m)).start()

    def images(self, device: str = "Despeckled_Reference") -> list:
        return [m for m in list(self.messages) if m.message_type == "IMAGE" and m.device_name == device]

    def close(self) -> None:
        self.receiver.close()


@pytest.fixture
def relay_on():
    """``relay_on(source_port, settings, **kw)``: a running Relay (closed after the test)."""
    started: list[tuple[Relay, threading.Thread]] = []

    def start(source_port: int, settings: StreamSettings = MEDIAN, **kwargs) -> Relay:
        relay = Relay(("127.0.0.1", source_port), 0, settings, **kwargs)
        thread = threading.Thread(target=relay.run, daemon=True)
        thread.start()
        started.append((relay, thread))
        return relay

    yield start
    for relay, thread in started:
        relay.stop()
        thread.join(10)
        assert not thread.is_alive()


def image(
    array: np.ndarray, timestamp: float, device: str = "Image_Reference", matrix=MATRIX
) -> ImageMessage:
    return ImageMessage(array, ijk_to_world_matrix=matrix, timestamp=timestamp, device_name=device)


def speckle(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    values = 40 + 60 * rng.rayleigh(1.0, shape)
    return np.clip(values, 0, 255).astype(dtype)


def send_until_received(server: StreamServer, collector: Collector, message, count: int = 1) -> None:
    """Send ``message`` until ``collector`` holds ``count`` outputs (the relay may drop some)."""
    deadline = time.monotonic() + 20
    while len(collector.images()) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"no output for {message.device_name} after 20 s")
        if server.clients:
            server.send(message)
        time.sleep(0.05)


def test_relay_keeps_order_geometry_names_and_equals_despeckle_array(rng, relay_on):
    """The shipped denoiser (one-pass ONNX) on a few small frames, read back by pyigtl's client."""
    settings = StreamSettings(method="denoiser", backend="onnx")
    settings.prepare()
    frames = [speckle(rng, (1, 48, 56)) for _ in range(12)]
    stamps = [1_700_000_000.0 + 0.04 * n for n in range(len(frames))]
    with StreamServer(0) as source:
        relay = relay_on(source.port, settings)
        client = pyigtl.OpenIGTLinkClient("127.0.0.1", relay.port)
        try:
            wait_until(lambda: source.clients == 1 and relay.server.clients == 1, what="connections")
            received = []
            for frame, stamp in zip(frames, stamps, strict=True):
                source.send(image(frame, stamp))
                message = client.wait_for_message("Despeckled_Reference", timeout=0.15)
                if message is not None:
                    received.append(message)
            while (message := client.wait_for_message("Despeckled_Reference", timeout=1.0)) is not None:
                received.append(message)
        finally:
            client.stop()
    assert len(received) >= 2
    times = [m.timestamp for m in received]
    assert times == sorted(set(times)), "a frame older than one already sent was sent after it"
    assert received[-1].timestamp == pytest.approx(stamps[-1], abs=1e-6)  # the newest is never lost
    for message in received:
        n = int(np.argmin(np.abs(np.array(stamps) - message.timestamp)))
        assert message.timestamp == pytest.approx(stamps[n], abs=1e-6)
        assert message.device_name == "Despeckled_Reference"
        assert message.world_coordinate_system == "lps"
        np.testing.assert_allclose(message.ijk_to_world_matrix, MATRIX, atol=1e-5)
        assert message.image.shape == (1, 48, 56)
        expected = despeckle_array(frames[n].astype(np.float32), "denoiser", axis=0, backend="onnx")
        np.testing.assert_allclose(message.image, expected, rtol=1e-6, atol=1e-4)
        assert not np.allclose(message.image, frames[n])


def test_transforms_are_forwarded_and_other_devices_ignored(rng, relay_on):
    with StreamServer(0) as source:
        relay = relay_on(source.port)
        out = Collector(relay.port)
        try:
            wait_until(lambda: source.clients == 1 and relay.server.clients == 1, what="connections")
            probe = TransformMessage(MATRIX, timestamp=5.0, device_name="ProbeToReference")
            source.send(image(speckle(rng, (1, 32, 32)), 1.0, device="Image_Other"))
            send_until_received(source, out, image(speckle(rng, (1, 32, 32)), 2.0))
            wait_until(
                lambda: source.send(probe) and any(m.message_type == "TRANSFORM" for m in out.messages)
            )
        finally:
            out.close()
    transforms = [m for m in out.messages if m.message_type == "TRANSFORM"]
    assert transforms[0].device_name == "ProbeToReference"
    np.testing.assert_allclose(transforms[0].matrix, MATRIX, atol=1e-6)
    assert transforms[0].timestamp == pytest.approx(5.0)
    assert {m.device_name for m in out.messages} == {"Despeckled_Reference", "ProbeToReference"}


def test_source_that_starts_later_and_restarts(rng, relay_on):
    port = free_port()
    relay = relay_on(port)  # nothing listens there yet
    out = Collector(relay.port)
    try:
        time.sleep(0.3)
        assert relay.receiver.connections == 0
        for restart in range(2):
            with StreamServer(port) as source:
                wait_until(lambda: source.clients == 1, what="the relay to (re)connect")
                send_until_received(
                    source, out, image(speckle(rng, (1, 24, 24)), 10.0 + restart), restart + 1
                )
        assert relay.receiver.connections == 2
    finally:
        out.close()
    assert [m.timestamp for m in out.images()] == pytest.approx([10.0, 11.0])


def test_frame_size_pixel_type_rgb_and_multislice_changes(rng, relay_on):
    rgb = speckle(rng, (1, 40, 44, 3))
    grey_rgb = np.repeat(speckle(rng, (1, 20, 30))[..., None], 3, axis=-1)
    frames = [
        speckle(rng, (1, 32, 40)),
        speckle(rng, (1, 64, 24), np.int16) - 100,
        rng.normal(50.0, 10.0, (1, 36, 36)).astype(np.float32),
        rgb,
        grey_rgb,
        speckle(rng, (3, 20, 28), np.uint16),
    ]
    with StreamServer(0) as source:
        relay = relay_on(source.port)
        out = Collector(relay.port)
        try:
            for n, frame in enumerate(frames):
                send_until_received(source, out, image(frame, 100.0 + n), n + 1)
        finally:
            out.close()
    outputs = out.images()
    assert [m.timestamp for m in outputs] == pytest.approx([100.0 + n for n in range(len(frames))])
    for frame, message in zip(frames, outputs, strict=True):
        assert message.image.dtype == np.float32
        assert message.image.shape == frame.shape[:3]
    luminance = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    np.testing.assert_allclose(outputs[3].image, despeckle_array(luminance, "median", axis=0), atol=1e-4)
    np.testing.assert_allclose(
        outputs[4].image, despeckle_array(grey_rgb[..., 0], "median", axis=0), atol=1e-4
    )
    np.testing.assert_allclose(outputs[5].image, despeckle_array(frames[5], "median", axis=0), atol=1e-3)


def test_grey_frame_refuses_what_is_not_a_frame():
    with pytest.raises(ValueError, match=r"\(5, 4\)"):
        grey_frame(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="components"):
        grey_frame(np.zeros((1, 5, 4, 6)))
    alpha = np.stack([np.full((1, 4, 4), 7), np.full((1, 4, 4), 255)], axis=-1)
    assert np.array_equal(grey_frame(alpha), np.full((1, 4, 4), 7))


def test_clients_connect_and_disconnect_while_it_runs(rng, relay_on):
    with StreamServer(0) as source:
        relay = relay_on(source.port)
        first, second = Collector(relay.port), Collector(relay.port)
        try:
            send_until_received(source, first, image(speckle(rng, (1, 24, 24)), 1.0))
            wait_until(lambda: len(second.images()) >= 1 or relay.server.clients == 2)
            first.close()
            wait_until(lambda: relay.server.clients == 1, what="the relay to notice the client left")
            send_until_received(source, second, image(speckle(rng, (1, 24, 24)), 2.0), 2)
            third = Collector(relay.port)
            send_until_received(source, third, image(speckle(rng, (1, 24, 24)), 3.0))
            third.close()
        finally:
            second.close()
    assert relay.server.connections == 3
    assert relay.stats.sent >= 3


def _raw(kind: str, device: str, body: bytes, *, crc: int | None = None, size: int | None = None) -> bytes:
    header = HEADER.pack(
        1,
        kind.encode(),
        device.encode(),
        0,
        0,
        len(body) if size is None else size,
        CRC64(body) if crc is None else crc,
    )
    return header + body


def test_damaged_and_oversized_messages_are_refused_and_the_stream_goes_on(rng, relay_on, caplog):
    good = image(speckle(rng, (1, 24, 24)), 7.0).pack()
    body = good[HEADER.size :]
    damaged = [
        _raw("IMAGE", "Image_Reference", body, crc=12345),  # bad CRC
        _raw("IMAGE", "Image_Reference", body[:100]),  # image header says more pixels than sent
        _raw("IMAGE", "Image_Reference", b"\x00\x01"),  # no image header
        _raw("STATUS", "Image_Reference", b"anything"),  # a type the relay skips
        _raw(
            "IMAGE", "Image_Reference", image(speckle(rng, (1, 4, 4)), 6.0).pack()[HEADER.size :]
        ),  # too small
    ]
    oversized = _raw("IMAGE", "Image_Reference", b"", size=10_000_000)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        relay = relay_on(listener.getsockname()[1], max_bytes=1_000_000)
        out = Collector(relay.port)
        try:
            wait_until(lambda: relay.server.clients == 1, what="the client")
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"".join(damaged))  # the small frame last: refused when despeckled
                wait_until(lambda: "at least 8" in caplog.text, what="the small frame to be refused")
                conn.sendall(good)
                wait_until(lambda: len(out.images()) == 1, what="the good frame after damaged ones")
                conn.sendall(oversized)  # the relay closes this connection and opens another
                second, _ = listener.accept()
            with second:
                second.sendall(good)
                wait_until(lambda: len(out.images()) == 2, what="a frame after the oversized message")
        finally:
            out.close()
    relay.stop()
    # 3 damaged messages, 1 oversized, 1 frame too small to despeckle; STATUS is skipped quietly
    wait_until(lambda: relay.stats.refused == 5, what="the counts")
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("CRC" in r for r in refusals)
    assert any("10000000 bytes" in r for r in refusals)
    assert any("at least 8" in r for r in refusals), refusals


def test_latest_frame_drops_older_frames_never_queues():
    from usdespeckle.runtime.stream import Frame

    slot = LatestFrame()
    for n in range(5):
        slot.put(Frame(np.zeros((1, 8, 8)), np.eye(4), float(n), "Image_Reference"))
    assert slot.take(0.0).timestamp == 4.0
    assert slot.dropped == 4
    assert slot.take(0.01) is None


def test_burst_every_frame_is_sent_or_dropped_and_the_newest_is_sent(rng, relay_on):
    frames = [image(speckle(rng, (1, 128, 128)), 50.0 + n).pack() for n in range(30)]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        relay = relay_on(listener.getsockname()[1])
        out = Collector(relay.port)
        try:
            wait_until(lambda: relay.server.clients == 1)
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"".join(frames))
                wait_until(lambda: out.images() and out.images()[-1].timestamp == 79.0, what="the newest")
        finally:
            out.close()
    relay.stop()
    stats = relay.stats
    assert stats.received == 30
    wait_until(lambda: relay._slot.dropped + stats.sent == 30, what="counts to settle")
    times = [m.timestamp for m in out.images()]
    assert times == sorted(set(times))


def test_device_names_over_20_bytes_are_refused():
    assert check_device_name("Despeckled_Reference") == "Despeckled_Reference"
    with pytest.raises(ValueError, match="21 bytes"):
        check_device_name("Image_Reference_despe")
    with pytest.raises(ValueError, match="differ"):
        Relay(("127.0.0.1", free_port()), 0, MEDIAN, output_device="Image_Reference")


def test_replay_plays_a_file_with_its_geometry(tmp_path, rng):
    import SimpleITK as sitk

    cine = sitk.GetImageFromArray(speckle(rng, (5, 30, 40)))
    cine.SetSpacing((0.2, 0.3, 1.0))
    cine.SetOrigin((1.0, -2.0, 3.0))
    path = tmp_path / "cine.nrrd"
    sitk.WriteImage(cine, str(path))
    frames, matrix = replay_frames(path)
    assert frames.shape == (5, 30, 40)
    np.testing.assert_allclose(matrix[:3, :3], np.diag([0.2, 0.3, 1.0]))
    stop, servers = threading.Event(), []
    thread = threading.Thread(
        target=replay, args=(path, 0), kwargs={"fps": 50, "stop": stop, "ready": servers.append}, daemon=True
    )
    thread.start()
    wait_until(lambda: servers)
    out = Collector(servers[0].port)
    try:
        wait_until(lambda: len(out.images("Image_Reference")) >= 7, what="replayed frames")
    finally:
        out.close()
        stop.set()
        thread.join(10)
    got = out.images("Image_Reference")
    assert [m.timestamp for m in got] == sorted(m.timestamp for m in got)
    frame_of = {frames[n].tobytes(): n for n in range(5)}
    order = [frame_of[m.image[0].tobytes()] for m in got]
    assert all((b - a) % 5 in (1, 2, 3) for a, b in itertools.pairwise(order))  # in a loop
    np.testing.assert_allclose(got[0].ijk_to_world_matrix, matrix, atol=1e-5)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _lines_until(process: subprocess.Popen, needle: str, timeout: float = 60) -> None:
    """Read the process's stdout until a line contains ``needle``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if needle in line:
            return
        if not line and process.poll() is not None:
            pytest.fail(f"the process ended ({process.returncode}): {process.stderr.read()}")
    pytest.fail(f"no {needle!r} line in {timeout} s")


@pytest.mark.parametrize("mode", ["relay", "replay"])
def test_ctrl_c_exits_cleanly_and_frees_the_port(tmp_path, mode):
    port = free_port()
    if mode == "relay":
        args = ["--from", f"127.0.0.1:{free_port()}", "--method", "median"]
    else:
        path = tmp_path / "frame.png"
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(np.arange(400, dtype=np.uint8).reshape(20, 20)), str(path))
        args = ["--replay", str(path)]
    process = subprocess.Popen(
        [sys.executable, "-m", "usdespeckle", "stream", *args, "--serve", str(port), "--progress", "lines"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        if mode == "relay":
            _lines_until(process, "stats:")
        out = Collector(port)
        wait_until(lambda: out.receiver.connected.is_set() or process.poll() is not None, what="a connection")
        assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        out.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "stopped" in process.stderr.read()
    with StreamServer(port):  # the port is free again
        pass


def test_command_line_errors_are_one_line(capsys):
    from usdespeckle.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["stream", "--from", "127.0.0.1:18944", "--name", "Image_Reference_despeckled"])
    assert exit_info.value.code == 2
    assert "bytes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stream", "--from", "nohost:notaport"])
    assert "HOST:PORT" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as taken:
        code = main(
            ["stream", "--from", "127.0.0.1:1", "--method", "median", "--serve", str(taken.getsockname()[1])]
        )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("usdespeckle stream: error: cannot serve on")
    assert len(err.splitlines()) == 1


def test_the_relay_never_imports_torch():
    code = (
        "import sys; import usdespeckle.runtime.stream, usdespeckle.commands.stream; "
        "from usdespeckle.runtime.stream import StreamSettings; StreamSettings(backend='onnx').prepare(); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_despeckle_frame_matches_the_library_on_each_slice(rng):
    frame = speckle(rng, (2, 24, 30, 3))
    result = despeckle_frame(frame, MEDIAN)
    assert result.shape == (2, 24, 30)
    assert np.array_equal(result, despeckle_array(grey_frame(frame), "median", axis=0))


def test_readme_stream_commands_parse():
    import shlex

    from usdespeckle.cli import build_parser

    lines = [
        line.split("#")[0]
        for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("usdespeckle stream")
    ]
    assert len(lines) >= 4
    parser = build_parser("stream")
    for line in lines:
        args = parser.parse_args(shlex.split(line)[1:])
        assert args.source or args.replay


def test_without_pyigtl_the_command_says_how_to_install_it(monkeypatch, capsys):
    from usdespeckle.cli import main

    monkeypatch.setitem(sys.modules, "pyigtl", None)  # as if not installed: importing it fails
    assert main(["stream", "--from", "127.0.0.1:18944", "--method", "median"]) == 1
    assert "pip install 'usdespeckle[stream]'" in capsys.readouterr().err
