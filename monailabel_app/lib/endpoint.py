"""The app's own ``POST /infer/{model}`` endpoint, which replaces MONAI Label's stock one.

MONAI Label 0.8.5's endpoint trusts the request: it reads any path on the server named by
``?image=`` or by ``params={"image": ...}`` (the params are merged into the request), answers 500
for a missing image, an unknown model or params that are not JSON, keeps the temporary copy of an
upload whenever the task fails, takes uploads of any size, and runs the task on the event loop, so
``/info/`` waits while an inference runs. This endpoint keeps the stock URL, query parameters and
form fields (``file``, ``params``) and:

- accepts as image only the uploaded file or the id of an image in the datastore; a request that
  names anything else gets one uniform 404 that says nothing about the server's files;
- refuses params that would replace the image or the model (400), params that are not a JSON
  object (400), an unknown model (404), an upload over the size limit (413, checked on the stream);
- deletes the temporary upload after every request, failed or not;
- runs the task in a worker thread (``starlette.concurrency.run_in_threadpool``).

Hand-written because MONAI Label has no hook for any of this: the route is swapped in
:func:`install` when the app starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

logger = logging.getLogger(__name__)

#: Prefix of the temporary files that hold uploads while a request runs.
UPLOAD_PREFIX = "usdespeckle_upload_"
#: Request keys a client's ``params`` may not set: they name files or the task.
RESERVED_PARAMS = frozenset(
    {"image", "label", "model", "session", "session_id", "save_label", "label_tag", "description", "file"}
)
#: Result formats (``?output=``) this endpoint answers with.
OUTPUTS = ("image", "json", "all")
_CHUNK = 1 << 20
_SAFE_SUFFIX = re.compile(r"^(\.[A-Za-z0-9]{1,8}){1,2}$")
#: A datastore image id: letters, digits, ``_``, ``-`` and ``.`` (never ``..``); no path.
IMAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

_UPLOADS: set[str] = set()
_UPLOADS_LOCK = threading.Lock()


def is_upload(path: str) -> bool:
    """Whether ``path`` is the temporary copy of an upload of a request in progress."""
    with _UPLOADS_LOCK:
        return os.path.realpath(path) in _UPLOADS


def not_found(image: str) -> HTTPException:
    """The one answer for an image that is neither an upload nor in the datastore."""
    return HTTPException(
        status_code=404,
        detail=f"image {image[:100]!r} is not in this server's datastore; upload the file, or give the "
        "id of a stored image (GET /datastore/ lists them)",
    )


def _suffix(filename: str | None) -> str:
    """The upload's extension (``.nii.gz``, ``.nrrd``), if it looks like one; else none."""
    suffix = "".join(Path(Path(filename or "").name).suffixes[-2:]).lower()
    return suffix if _SAFE_SUFFIX.match(suffix) else ""


def _too_large(limit: int) -> HTTPException:
    """The one answer (HTTP 413) for an upload over ``limit`` bytes."""
    return HTTPException(status_code=413, detail=f"upload larger than the server's limit of {limit:,} bytes")


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        yield chunk


async def _save_upload(upload: UploadFile, limit: int) -> str:
    """Copy an upload into a new temporary file, registered as trusted; returns its path."""
    handle, path = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=_suffix(upload.filename))
    with _UPLOADS_LOCK:
        _UPLOADS.add(os.path.realpath(path))
    size = 0
    try:
        with os.fdopen(handle, "wb") as f:
            while chunk := await upload.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                f.write(chunk)
        if size == 0:
            raise HTTPException(status_code=400, detail="the uploaded file is empty")
    except BaseException:
        _remove_upload(path)
        raise
    return path


def _remove_upload(path: str | None) -> None:
    if not path:
        return
    with _UPLOADS_LOCK:
        _UPLOADS.discard(os.path.realpath(path))
    with contextlib.suppress(OSError):
        os.unlink(path)


def _remove_file(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _params(text: Any) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    if not isinstance(text, str):
        raise HTTPException(status_code=400, detail="params must be a form field holding a JSON object")
    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise HTTPException(status_code=400, detail=f"params is not valid JSON: {err}") from None
    if not isinstance(params, dict):
        raise HTTPException(
            status_code=400, detail=f"params must be a JSON object, got {type(params).__name__}"
        )
    reserved = sorted(RESERVED_PARAMS & set(params))
    if reserved:
        raise HTTPException(
            status_code=400,
            detail=f"params may not set {', '.join(reserved)}: upload the image as 'file' or give "
            "?image=<id of a stored image>",
        )
    return params


def _respond(result: dict[str, Any], output: str | None) -> Response:
    path = result.get("file")
    params = result.get("params") or {}
    if not path or not os.path.isfile(path):
        return JSONResponse(params)
    cleanup = BackgroundTask(_remove_file, path)
    if output == "image":
        return FileResponse(path, media_type="application/octet-stream", filename=os.path.basename(path),
                            background=cleanup)  # fmt: skip
    if output == "json":
        _remove_file(path)
        return JSONResponse(params)
    from requests_toolbelt import MultipartEncoder  # MONAI Label's own multipart answer

    with open(path, "rb") as f:
        encoder = MultipartEncoder(
            fields={
                "params": (None, json.dumps(params), "application/json"),
                "image": (os.path.basename(path), f, "application/octet-stream"),
            }
        )
        body = encoder.to_string()
    _remove_file(path)
    return Response(content=body, media_type=encoder.content_type)


def _check_request(
    request: Request, model: str, tasks: dict, output: str | None, session_id: str, max_upload_bytes: int
) -> None:
    """Refuse, before reading the body, a request the endpoint cannot serve (HTTP 404, 400 or 413)."""
    if model not in tasks:
        raise HTTPException(
            status_code=404,
            detail=f"no model {model[:100]!r} on this server; it has {', '.join(sorted(tasks))}",
        )
    if output is not None and output not in OUTPUTS:
        raise HTTPException(status_code=400, detail=f"output must be one of {', '.join(OUTPUTS)}")
    if session_id:
        raise HTTPException(status_code=400, detail="sessions are not supported; upload the image as 'file'")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_upload_bytes + _CHUNK:
        raise _too_large(max_upload_bytes)


def _stored_image(instance, image: str) -> str:
    """The file of the datastore image ``image`` (an id, never a path); HTTP 400/404 otherwise."""
    if not image:
        raise HTTPException(
            status_code=400,
            detail="no image: upload a file as 'file' or give ?image=<id of a stored image>",
        )
    path = (
        instance.datastore().get_image_uri(image) if IMAGE_ID.fullmatch(image) and ".." not in image else ""
    )
    if not path or not os.path.isfile(path):
        raise not_found(image)
    return path


def make_endpoint(max_upload_bytes: int):
    """The ``POST /infer/{model}`` handler; uploads over ``max_upload_bytes`` get HTTP 413."""
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.utils.app import app_instance

    authorised = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))  # as the stock endpoint

    async def infer(
        request: Request,
        model: str,
        image: str = "",
        session_id: str = "",
        output: str | None = None,
        user: User = authorised,
    ) -> Response:
        instance = app_instance()
        info = instance.info()  # walks every task and the datastore: once per request
        _check_request(request, model, info.get("models", {}), output, session_id, max_upload_bytes)
        upload_path: str | None = None
        form = None
        try:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                parser = MultiPartParser(request.headers, _limited(request, max_upload_bytes + _CHUNK),
                                         max_files=2, max_fields=8)  # fmt: skip
                try:
                    form = await parser.parse()
                except MultiPartException as err:
                    raise HTTPException(
                        status_code=400, detail=f"bad multipart body: {err.message}"
                    ) from None
            params = _params(form.get("params") if form is not None else None)
            upload = form.get("file") if form is not None else None
            if upload is not None and not isinstance(upload, UploadFile):
                raise HTTPException(status_code=400, detail="'file' must be an uploaded file")
            if upload is not None and image:
                raise HTTPException(status_code=400, detail="give an uploaded file or ?image=<id>, not both")
            if upload is not None:
                upload_path = await _save_upload(upload, max_upload_bytes)
                path = upload_path
            else:
                path = _stored_image(instance, image)
            task_request = {**info.get("config", {}).get("infer", {}), **params}
            task_request.update(model=model, image=path)
            logger.info("infer %s on %s with %s", model, "an upload" if upload_path else image, params)
            try:
                result = await run_in_threadpool(instance.infer, task_request)
            except HTTPException:
                raise
            except Exception:  # a bug or a server fault: logged here, never sent (it may hold paths)
                logger.exception("infer %s failed", model)
                raise HTTPException(
                    status_code=500, detail=f"{model} failed on the server; the server log has the details"
                ) from None
        finally:
            if form is not None:
                await form.close()
            _remove_upload(upload_path)
        return _respond(result, output)

    return infer


def install(app: FastAPI, max_upload_bytes: int) -> None:
    """Put this module's endpoint in front of the stock ``POST /infer/{model}`` route of ``app``.

    Routers try their routes in order and take the first full match, so the new route goes first
    (FastAPI 0.165 keeps included routers as wrappers, whose routes cannot be removed one by one);
    a stock route listed directly (older FastAPI) is removed too.
    """
    from monailabel.config import settings

    path = f"{settings.MONAI_LABEL_API_STR}/infer/{{model}}"
    routes = app.router.routes
    routes[:] = [
        route
        for route in routes
        if not (getattr(route, "path", None) == path and "POST" in (getattr(route, "methods", None) or ()))
    ]
    app.add_api_route(
        path,
        make_endpoint(max_upload_bytes),
        methods=["POST"],
        tags=["Infer"],
        summary="Run inference on an uploaded image or a stored one",
    )
    routes.insert(0, routes.pop())
    logger.info("installed the checked /infer endpoint (uploads up to %d bytes)", max_upload_bytes)
