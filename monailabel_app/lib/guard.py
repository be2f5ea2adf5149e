"""What the app's server exposes: an allow-list of routes, a body-read timeout, no cross-origin callers.

MONAI Label 0.8.5 serves, without authentication unless its Keycloak settings are on, routes that
read, write and delete files named by the client (``/datastore/...``), start subprocesses
(``/train``, ``/scoring``, ``/batch/infer``), disclose paths and logs (``/logs``, ``/session``,
``/activelearning``), and a ``/infer/wsi_v2`` that tells whether a server file exists. This app
needs none of them, so at start-up:

- :func:`restrict_routes` rebuilds the route table from the allow-list (:data:`ALLOWED`): ``GET
  /info/`` (MONAI Label's handler), the app's own ``POST /infer/{model}`` (``lib/endpoint.py``),
  and the ``/auth`` routes only when MONAI Label's authentication is on. Everything else,
  including the OpenAPI pages and static files, is gone.
- :class:`Guard` wraps the whole ASGI application: a request for anything else gets 404 before any
  route or middleware sees it (should a route come back), a request carrying an ``Origin`` header
  (a web page in a browser, DNS rebinding included) gets 403 unless ``--conf allow_origins``
  names it, and a request whose body does not arrive within ``--conf body_timeout_s`` (or stalls
  for 30 s) gets 408 and its connection is closed (slow-body attacks).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

#: (method, path pattern below the API prefix) the server answers; ``{model}`` is one path segment.
ALLOWED = (("GET", "/info/"), ("GET", "/info"), ("POST", "/infer/{model}"))
#: Added when MONAI Label's authentication is on (``MONAI_LABEL_AUTH_ENABLE``): its login routes.
ALLOWED_WITH_AUTH = (("GET", "/auth/"), ("POST", "/auth/token"), ("GET", "/auth/token/valid"))
#: Longest a body may stall between two chunks, seconds (the whole body has ``body_timeout_s``).
IDLE_TIMEOUT_S = 30.0
_SEGMENT = "[A-Za-z0-9_.-]{1,64}"


def allowed_routes(auth: bool) -> tuple[tuple[str, str], ...]:
    """The (method, path pattern) pairs served, with or without MONAI Label's authentication."""
    return ALLOWED + (ALLOWED_WITH_AUTH if auth else ())


def _pattern(prefix: str, path: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix + path).replace(re.escape("{model}"), _SEGMENT) + "$")


def restrict_routes(app: Any, prefix: str, auth: bool) -> list[tuple[str, str]]:
    """Rebuild ``app``'s route table from the allow-list; returns the (method, path) pairs kept.

    The app's ``POST /infer/{model}`` must already be installed (``endpoint.install``); ``GET
    /info/`` is re-added with MONAI Label's own handler (stock routes sit inside included-router
    wrappers that cannot be kept one by one), and the ``/auth`` routes when ``auth``.
    """
    from monailabel.endpoints import info

    wanted = {(m, prefix + p) for m, p in allowed_routes(auth) if p != "/info"}
    ours = [
        r
        for r in app.router.routes
        if (getattr(r, "path", None), tuple(sorted(getattr(r, "methods", None) or ())))
        == (f"{prefix}/infer/{{model}}", ("POST",))
    ]
    if len(ours) != 1:
        raise RuntimeError("the app's POST /infer/{model} endpoint is not installed")
    app.router.routes[:] = ours
    app.add_api_route(f"{prefix}/info/", info.api_app_info, methods=["GET"], tags=["App"],
                      summary="Get App Info")  # fmt: skip
    if auth:
        from monailabel.endpoints import login

        for route in login.router.routes:  # paths hold the router's /auth prefix already
            app.add_api_route(prefix + route.path, route.endpoint, methods=sorted(route.methods),
                              response_model=route.response_model, tags=["Auth"])  # fmt: skip
    changed = getattr(app.router, "_mark_routes_changed", None)
    if changed is not None:
        changed()
    kept = sorted((m, r.path) for r in app.router.routes for m in r.methods if m != "HEAD")
    unexpected = [pair for pair in kept if pair not in wanted]
    if unexpected:
        raise RuntimeError(f"routes outside the allow-list: {unexpected}")
    logger.info("serving only %s", ", ".join(f"{m} {p}" for m, p in kept))
    return kept


async def _answer(send: Callable[[Message], Awaitable[None]], status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI wrapper: allow-listed routes only, no foreign origins, a deadline for request bodies.

    Args:
        app: the ASGI application (MONAI Label's middleware stack).
        prefix: MONAI Label's API prefix (``settings.MONAI_LABEL_API_STR``, usually empty).
        auth: whether MONAI Label's authentication is on (its ``/auth`` routes are then allowed).
        body_timeout_s: seconds a request's whole body may take to arrive (> 0).
        allow_origins: ``Origin`` header values accepted (browser callers); none by default.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str,
        auth: bool,
        body_timeout_s: float,
        allow_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.routes = [(m, _pattern(prefix, p)) for m, p in allowed_routes(auth)]
        self.body_timeout_s = float(body_timeout_s)
        self.allow_origins = {o.rstrip("/") for o in allow_origins if o}

    def allows(self, method: str, path: str) -> bool:
        """Whether ``method path`` is on the allow-list (OPTIONS too, for an allowed origin's preflight)."""
        return any((m == method or method == "OPTIONS") and p.match(path) for m, p in self.routes)

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # websockets: none served
            await send({"type": "websocket.close", "code": 1008})
            return None
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
        if not self.allows(scope["method"], scope["path"]):
            return await _answer(send, 404, "Not Found")
        if origin and origin not in self.allow_origins:
            return await _answer(send, 403, "requests from web pages are refused (--conf allow_origins)")
        if scope["method"] == "OPTIONS" and not origin:
            return await _answer(send, 404, "Not Found")
        return await self._with_deadline(scope, receive, send)

    async def _with_deadline(self, scope: Scope, receive, send) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        state = {"started": False, "timed_out": False, "body_done": False}

        async def timed_receive() -> Message:
            if state["timed_out"]:
                return {"type": "http.disconnect"}
            if state["body_done"]:  # after the body: disconnect watchers wait as long as they like
                return await receive()
            wait = max(min(IDLE_TIMEOUT_S, deadline - loop.time()), 0.0)
            try:
                message = await asyncio.wait_for(receive(), timeout=wait)
            except asyncio.TimeoutError:
                state["timed_out"] = True
                logger.warning(
                    "cut a request whose body did not arrive in time: %s %s", scope["method"], scope["path"]
                )
                if not state["started"]:
                    state["started"] = True
                    await _answer(
                        send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s"
                    )
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def guarded_send(message: Message) -> None:
            if state["timed_out"]:
                return  # the 408 went out; the application's late answer is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not state["timed_out"]:
                raise
            # the application saw the disconnect; its error is the expected end of a cut request


def install(
    app: Any, *, prefix: str, auth: bool, body_timeout_s: float, allow_origins: Iterable[str] = ()
) -> None:
    """Restrict ``app``'s routes and put a :class:`Guard` in front of its middleware stack (at start-up)."""
    restrict_routes(app, prefix, auth)
    stack = app.middleware_stack if app.middleware_stack is not None else app.build_middleware_stack()
    app.middleware_stack = Guard(
        stack, prefix=prefix, auth=auth, body_timeout_s=body_timeout_s, allow_origins=allow_origins
    )
