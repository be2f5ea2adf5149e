"""The MONAI Label app's ASGI guard (``monailabel_app/lib/guard.py``) on its own, with a stand-in app.

The guard imports only the standard library, so this runs in the project's environment; the
started server is tested end to end in ``tests/test_monailabel.py``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "despeckle_guard", Path(__file__).resolve().parents[1] / "monailabel_app" / "lib" / "guard.py"
)
guard = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(guard)


async def _reading_app(scope, receive, send) -> None:
    """Reads the whole body, then answers 200 with its length (as an endpoint would)."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")  # as Starlette's ClientDisconnect
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _call(method: str, path: str, chunks: list[bytes | None], headers=(), timeout_s: float = 0.3, auth=False):
    """Send a request through the guard; ``None`` in ``chunks`` is a body that stalls forever."""
    sent: list[dict] = []

    async def run() -> None:
        queue = list(chunks)

        async def receive():
            if not queue:
                await asyncio.sleep(3600)  # a client that waits for the answer
            chunk = queue.pop(0)
            if chunk is None:
                await asyncio.sleep(3600)  # the slow client
            return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

        async def send(message):
            sent.append(message)

        wrapped = guard.Guard(_reading_app, prefix="", auth=auth, body_timeout_s=timeout_s,
                              allow_origins=["https://viewer.example"])  # fmt: skip
        scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
        await asyncio.wait_for(wrapped(scope, receive, send), timeout=60)

    asyncio.run(run())
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/info/", 200),
        ("POST", "/infer/despeckle", 200),
        ("POST", "/infer/simulate", 200),
        ("PUT", "/datastore/image", 404),
        ("DELETE", "/datastore/image", 404),
        ("GET", "/datastore/", 404),
        ("POST", "/infer/wsi_v2/despeckle", 404),
        ("GET", "/infer/despeckle", 404),
        ("GET", "/logs/", 404),
        ("POST", "/train/x", 404),
        ("GET", "/openapi.json", 404),
        ("GET", "/", 404),
        ("POST", "/auth/token", 404),  # without MONAI Label's authentication there are no /auth routes
        ("OPTIONS", "/info/", 404),
    ],
)
def test_only_allow_listed_routes_pass(method, path, status):
    assert _call(method, path, [b"x"])[0] == status


def test_auth_routes_pass_only_with_authentication():
    assert _call("POST", "/auth/token", [b"x"], auth=True)[0] == 200
    assert _call("GET", "/auth/", [b""], auth=True)[0] == 200


def test_web_pages_are_refused_unless_allowed():
    status, body = _call("GET", "/info/", [b""], headers=[(b"origin", b"http://evil.example")])
    assert status == 403
    assert "web pages" in body["detail"]
    assert _call("GET", "/info/", [b""], headers=[(b"origin", b"https://viewer.example")])[0] == 200


def test_a_stalled_body_is_cut_with_408_and_a_complete_one_passes():
    status, body = _call("POST", "/infer/despeckle", [b"--b\r\n", None])
    assert status == 408
    assert "did not arrive within 0.3 s" in body["detail"]
    assert _call("POST", "/infer/despeckle", [b"a" * 10, b"b" * 10, b"c"])[1] == {"size": 21}
