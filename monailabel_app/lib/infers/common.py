"""Shared parts of the app's infer tasks: request parameters, HTTP errors, reading and writing images.

MONAI Label's ``/infer/{model}`` endpoint has no handler for task errors: any exception becomes an
HTTP 500 with no message. Our tasks therefore turn the library's ``ValueError`` (bad input) into
HTTP 400 and ``FileNotFoundError`` for missing weights into HTTP 503, both with the library's
message as ``detail`` (file paths replaced by ``<server file>``), by raising FastAPI's ``HTTPException`` (the task runs inside the endpoint).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import SimpleITK as sitk
from fastapi import HTTPException

from usdespeckle.runtime.io import read_image, write_image
from usdespeckle.runtime.options import MAX_VOXELS

logger = logging.getLogger(__name__)

#: Result formats a client may ask for with ``result_extension``; all keep float32 pixels.
RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


_PATH = re.compile(r"(?<![\w.<])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])*[^\s'\",;:()/\\]+")


def scrub_paths(message: str) -> str:
    """``message`` with every absolute file path replaced by ``<server file>`` (answers never name them)."""
    return _PATH.sub("<server file>", message)


def bad_request(message: str) -> HTTPException:
    """An HTTP 400 whose ``detail`` is ``message``."""
    return HTTPException(status_code=400, detail=message)


@contextlib.contextmanager
def http_errors(task: str, hide: str | None = None) -> Iterator[None]:
    """Turn library errors into HTTP errors with the library's message.

    Args:
        task: the task name, prefixed to messages (``despeckle``, ``simulate``).
        hide: a server-side path (the upload's temporary file) replaced by "the image" in messages.

    Raises:
        HTTPException: 400 for ``ValueError`` (bad image or parameter), 503 for ``FileNotFoundError``
            (model weights missing on the server).
    """
    try:
        yield
    except HTTPException:
        raise
    except ImportError as err:  # a filter's package is not installed on the server
        logger.warning("%s: %s", task, err)
        raise HTTPException(status_code=503, detail=f"{task}: {scrub_paths(str(err))}") from None
    except FileNotFoundError as err:
        logger.warning("%s: %s", task, err)
        raise HTTPException(
            status_code=503, detail=f"{task}: {scrub_paths(str(err))} (the server log names the file)"
        ) from None
    except ValueError as err:
        logger.warning("%s: %s", task, err)
        message = str(err)
        if hide:
            for path in dict.fromkeys((hide, os.path.realpath(hide))):
                message = message.replace(path, "the image")
        raise bad_request(f"{task}: {scrub_paths(message)}") from None


def get_int(params: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """An integer parameter in ``[low, high]``; raises HTTP 400 otherwise."""
    value = params.get(key, default)
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise bad_request(f"parameter {key!r} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise bad_request(f"parameter {key!r} must be in [{low}, {high}], got {number}")
    return number


def get_float(params: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    """A finite float parameter in ``[low, high]``; raises HTTP 400 otherwise."""
    value = params.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad_request(f"parameter {key!r} must be a number, got {value!r}") from None
    if not low <= number <= high:  # also rejects NaN
        raise bad_request(f"parameter {key!r} must be in [{low}, {high}], got {value!r}")
    return number


def get_choice(params: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    """A string parameter among ``choices``; raises HTTP 400 otherwise."""
    value = params.get(key, default)
    if value not in choices:
        raise bad_request(f"parameter {key!r} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def read_request_image(
    request: dict[str, Any], task: str, *, datastore_root: str | None, max_voxels: int = MAX_VOXELS
) -> sitk.Image:
    """Read and validate the request's image: an upload in progress or an image of the datastore.

    Any other path (a client naming a file on the server) gets the same 404 as an unknown id, so
    answers tell nothing about the server's files.

    Args:
        request: the task request; ``request["image"]`` is a path set by the app's endpoint.
        task: the task name, prefixed to messages.
        datastore_root: the datastore folder; images under it are trusted.
        max_voxels: largest number of values the image's header may declare (checked before the
            pixels are read).

    Raises:
        HTTPException: 400 when there is no image, it cannot be read, or it fails validation
            (4D, NaN, truncated, constant, too small, over ``max_voxels``, an upload whose header
            names another file or whose extension is not an upload format ...); 404 when the path
            is neither an upload nor in the datastore.
    """
    from lib.endpoint import is_upload, not_found

    path = request.get("image")
    if not isinstance(path, str) or not path:
        raise bad_request(f"{task}: no image: upload a file or give the id of a stored image")
    real = os.path.realpath(path)
    root = os.path.realpath(datastore_root) if datastore_root else None
    in_datastore = root is not None and os.path.commonpath([real, root]) == root and real != root
    upload = is_upload(real)
    if not (upload or in_datastore) or not os.path.exists(real):
        raise not_found(os.path.basename(path))
    with http_errors(task, hide=path):  # an upload must hold its own pixels, in a format named by its suffix
        return read_image(path, max_voxels=max_voxels, self_contained=upload)


def write_result(image: sitk.Image, extension: str) -> str:
    """Write ``image`` (float32, with its geometry) to a new temporary file and return its path.

    MONAI Label sends the file back and deletes it after the response.
    """
    handle, path = tempfile.mkstemp(suffix=extension, prefix="usdespeckle_")
    os.close(handle)
    write_image(image, path, force=True)
    return path


def run_timed(fn: Callable[[], sitk.Image]) -> tuple[sitk.Image, float]:
    """Call ``fn`` and return its result and the wall time, seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def describe(image: sitk.Image) -> dict[str, Any]:
    """JSON-serialisable geometry and intensity range of an image, for the result ``params``."""
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "range": [stats.GetMinimum(), stats.GetMaximum()],
    }
