"""A standard-library client for the app's MONAI Label server (``usdespeckle run --server URL``, the Slicer module).

Only ``urllib`` and a hand-written multipart/form-data body (the standard library has no multipart
encoder), so it runs in any Python, Slicer's included, with no extra package.

Example::

    from usdespeckle.runtime.client import despeckle_via_server
    despeckle_via_server("http://127.0.0.1:8000", "in.nii.gz", "out.nii.gz", strength=0.8)
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from usdespeckle.runtime.atomic import atomic_write
from usdespeckle.runtime.io_headers import SELF_CONTAINED_SUFFIXES

__all__ = [
    "RESULT_SUFFIXES",
    "ServerError",
    "despeckle_via_server",
    "infer_via_server",
    "server_info",
    "uploadable",
]

_SUFFIXES = (
    ".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".img",
    ".png", ".jpg", ".jpeg", ".bmp", ".dcm", ".dicom", ".tif", ".tiff",
)  # fmt: skip
#: Result formats the server writes (float32 pixels); other outputs need a local conversion
#: (``usdespeckle run --server`` does it).
RESULT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


class ServerError(RuntimeError):
    """The server answered with an error, or could not be reached.

    Attributes:
        status: the HTTP status code (0 when the server could not be reached).
        detail: the server's message.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"server error {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def uploadable(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one file of a format the server accepts as an upload (not a folder, not
    .mhd/.raw or .hdr/.img, not a file without extension): see ``io_headers.SELF_CONTAINED_SUFFIXES``."""
    path = Path(path)
    return path.is_file() and _suffix(path) in SELF_CONTAINED_SUFFIXES


def _unreachable(url: str, err: BaseException, timeout: float) -> ServerError:
    """The one-line error for a request that got no answer: busy (timed out) or not reachable."""
    reason = getattr(err, "reason", err)
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return ServerError(
            0,
            f"no answer from the MONAI Label server at {url} in {timeout:g} s: it may be busy; try "
            "again later",
        )
    return ServerError(0, f"cannot reach MONAI Label server at {url}: {reason}")


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """Encode a multipart/form-data body (RFC 7578); returns the body and its Content-Type."""
    boundary = f"----usdespeckle{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, data) in files.items():
        header = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(header.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _error_detail(err: urllib.error.HTTPError) -> str:
    body = err.read().decode("utf-8", "replace")
    try:
        detail = json.loads(body).get("detail", body)
    except (json.JSONDecodeError, AttributeError):
        detail = body
    return detail if isinstance(detail, str) else json.dumps(detail)


def server_info(url: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """``GET /info/``: the app's name, version and models.

    Raises:
        ServerError: the server is unreachable or answered with an error.
    """
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/info/", timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise ServerError(err.code, _error_detail(err)) from None
    except (urllib.error.URLError, OSError) as err:
        raise _unreachable(url, err, timeout) from None


def infer_via_server(
    url: str,
    task: str,
    image_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    force: bool = False,
    timeout: float = 600.0,
    **params: Any,
) -> dict[str, Any]:
    """Upload an image to ``POST /infer/<task>?output=image`` and save the returned image.

    Args:
        url: server address, e.g. ``http://127.0.0.1:8000``.
        task: ``despeckle`` or ``simulate``.
        image_path: an image file the server's ``usdespeckle.runtime.io.read_image`` reads (NIfTI, NRRD, MHA, ...).
        out_path: where to write the result: ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``
            (:data:`RESULT_SUFFIXES`), asked of the server as ``result_extension``.
        force: overwrite ``out_path`` if it exists.
        timeout: seconds to wait for the answer.
        **params: task parameters sent as the ``params`` JSON (``axis``, ``strength``, ...).

    Returns:
        ``{"path": out_path, "bytes": size}``.

    Raises:
        FileNotFoundError: ``image_path`` does not exist.
        ValueError: ``image_path`` is a folder, a two-file format (.mhd, .hdr) or has an extension
            the server does not accept as an upload; ``out_path`` has
            another extension than :data:`RESULT_SUFFIXES`, exists and ``force`` is False, its
            folder does not exist, or it cannot be written (full disk: nothing is replaced).
        ServerError: the server is unreachable, gave no answer within ``timeout`` ("no answer in
            N s": busy), or answered with an error (its message included).
    """
    image_path, out_path = Path(image_path), Path(out_path)
    if image_path.is_dir():
        raise ValueError(
            f"{image_path} is a folder; the server takes one image file (usdespeckle run --server "
            "converts DICOM folders)"
        )
    if not image_path.is_file():
        raise FileNotFoundError(f"{image_path}: no such file")
    if not uploadable(image_path):
        raise ValueError(
            f"{image_path} is not one self-contained file of a format the server reads "
            f"({', '.join(SELF_CONTAINED_SUFFIXES)}); convert it to .nrrd or .nii.gz first "
            "(usdespeckle run --server does that)"
        )
    out_suffix = _suffix(out_path)
    if out_suffix not in RESULT_SUFFIXES:
        raise ValueError(
            f"output {out_path}: the server answers in {', '.join(RESULT_SUFFIXES)} only; choose one of "
            "those (usdespeckle run --server converts to other formats)"
        )
    if out_path.exists() and not force:
        raise ValueError(f"output {out_path} exists; pass force=True (--force) to overwrite it")
    if not out_path.parent.is_dir():
        raise ValueError(f"output folder {out_path.parent} does not exist; create it first")
    params = dict(params)
    params["result_extension"] = out_suffix
    body, content_type = _multipart(
        {"params": json.dumps(params)}, {"file": (f"upload{_suffix(image_path)}", image_path.read_bytes())}
    )
    endpoint = f"{url.rstrip('/')}/infer/{urllib.parse.quote(task, safe='')}?output=image"
    request = urllib.request.Request(
        endpoint, data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()  # raises IncompleteRead when fewer bytes than Content-Length come
    except urllib.error.HTTPError as err:
        raise ServerError(err.code, _error_detail(err)) from None
    except http.client.IncompleteRead as err:
        raise ServerError(0, f"the answer from {url} was cut off ({len(err.partial)} bytes)") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _unreachable(url, err, timeout) from None
    if not data:
        raise ServerError(0, f"the server at {url} answered with an empty file")
    try:
        atomic_write(out_path, data)
    except OSError as err:
        raise ValueError(
            f"cannot write {out_path}: {err.strerror or err}; an existing output was left unchanged"
        ) from None
    return {"path": str(out_path), "bytes": len(data)}


def despeckle_via_server(
    url: str, image_path: str | os.PathLike, out_path: str | os.PathLike, **params: Any
) -> dict[str, Any]:
    """Despeckle ``image_path`` on a MONAI Label server running this app; write ``out_path``.

    Args:
        url: server address, e.g. ``http://127.0.0.1:8000``.
        image_path: the ultrasound image or volume.
        out_path: the float32 result (same geometry as the input).
        **params: ``method``, ``axis``, ``strength``, ``batch_size``, ``backend``, ``device``,
            ``passes`` (choices and defaults: ``usdespeckle.runtime.options``; a parameter left out takes
            the server's default), and the client options ``force`` and ``timeout`` (see
            :func:`infer_via_server`).

    Returns:
        ``{"path": out_path, "bytes": size}``.

    Raises:
        FileNotFoundError, ValueError, ServerError: as :func:`infer_via_server`.
    """
    return infer_via_server(url, "despeckle", image_path, out_path, **params)
