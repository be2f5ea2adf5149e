"""Tests of the one atomic writer: a failed write keeps the old file and leaves no temporary."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from usdespeckle.runtime.atomic import (
    atomic_write,
    parse_temporary,
    remove_stale_temporaries,
    temporary_folder,
)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("content", [b"new bytes", "new text", lambda f: f.write(b"new bytes")])
def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path, content):
    target = tmp_path / "report.md"
    target.write_text("old")
    assert atomic_write(target, content) == target
    assert target.read_bytes() in (b"new bytes", b"new text")
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


@pytest.mark.parametrize("unique", [True, False])
def test_written_file_has_the_mode_a_plain_write_gives(tmp_path, unique):
    plain = tmp_path / "plain.json"
    plain.write_text("{}")  # 0o666 less the umask, readable by the group as the user expects
    written = atomic_write(tmp_path / "atomic.json", "{}", unique=unique)
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


@pytest.mark.parametrize("unique", [True, False])
def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, unique):
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_fail, unique=unique)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_temporary_names_follow_one_rule(tmp_path):
    seen = []
    atomic_write(tmp_path / "a.json", lambda f: seen.extend(os.listdir(tmp_path)))
    (name,) = seen
    assert parse_temporary(name) == ("a.json", os.getpid())
    with temporary_folder(tmp_path / "out.nii.gz") as folder:
        assert parse_temporary(folder.name) == ("out.nii.gz", os.getpid())
        (folder / "out.nii.gz").write_bytes(b"partial")
    assert not folder.exists()
    assert parse_temporary(f".model.pt.{os.getpid()}.tmp") == ("model.pt", os.getpid())
    assert parse_temporary(".config.tmp") is None
    assert parse_temporary("out.nii.gz.12.tmp") is None  # not hidden: not one of ours


def test_only_stale_temporaries_are_removed(tmp_path):
    dead = _dead_pid()
    stale_file = tmp_path / f".model.pt.{dead}.tmp"
    stale_file.write_bytes(b"half")
    stale_folder = tmp_path / f".out.nrrd.{dead}.abcd1234.tmp"
    stale_folder.mkdir()
    (stale_folder / "out.nrrd").write_bytes(b"half")
    running = tmp_path / f".report.md.{os.getpid()}.efgh5678.tmp"
    running.write_bytes(b"being written")
    other = tmp_path / f".notes.txt.{dead}.tmp"
    other.write_bytes(b"kept: not a checkpoint")
    removed = remove_stale_temporaries(tmp_path, older_than_s=None, destination=lambda n: n.endswith(".pt"))
    assert removed == [stale_file]
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale_folder, other])
    assert running.exists()
    assert remove_stale_temporaries(tmp_path, older_than_s=-1.0) == [running]  # its pid reused, say
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_server_answer_is_written_atomically(tmp_path, monkeypatch):
    """The MONAI Label client writes the answer through atomic_write: a failed rename keeps the old result."""
    import http.server
    import threading

    from usdespeckle.runtime import client

    answer = b"\x00result bytes\xff" * 100

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # a stand-in for the app's /infer endpoint
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    image = tmp_path / "in.nrrd"
    image.write_bytes(b"an image")
    out = tmp_path / "out.nii.gz"
    try:
        assert client.despeckle_via_server(url, image, out, timeout=10) == {
            "path": str(out),
            "bytes": len(answer),
        }
        assert out.read_bytes() == answer
        out.write_bytes(b"previous result")

        def refuse(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", refuse)
        with pytest.raises(ValueError, match=r"No space left.*left unchanged"):
            client.despeckle_via_server(url, image, out, force=True, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd", "out.nii.gz"]
