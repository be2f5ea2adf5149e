"""Atomic writes: a temporary name beside the destination, flushed to disk, moved into place.

Every file the library writes for a user (images, checkpoints, reports, figures, server answers,
dataset manifests) goes through here, so one rule holds everywhere: an existing file is replaced
only by a complete one (``os.replace`` is atomic on POSIX and Windows within one folder), and a
failed or interrupted write leaves the old file as it was and no temporary behind.

Temporaries are named after their destination and the writing process, so that those of killed
runs can be told from writes in progress and removed later (:func:`remove_stale_temporaries`):

* ``.{name}.{pid}.{random}.tmp``: a unique file or folder (:func:`atomic_write`,
  :func:`temporary_folder`);
* ``.{name}.{pid}.tmp``: a fixed name, for writers that own their destination (``unique=False``:
  one checkpoint file at a time per process).

The standard library makes the names (``tempfile``, ``secrets``); nothing here is specific to one file format.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "TMP_SUFFIX",
    "atomic_write",
    "fsync_path",
    "parse_temporary",
    "remove_stale_temporaries",
    "temporary_folder",
]

#: The suffix of every temporary name this module makes.
TMP_SUFFIX = ".tmp"


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def parse_temporary(name: str) -> tuple[str, int] | None:
    """The destination name and writer's process id of a temporary name, or None for other names.

    Args:
        name: a file or folder name, e.g. ``.out.nii.gz.4242.k3j9x1qa.tmp`` or ``.model.pt.4242.tmp``.

    Returns:
        ``(destination name, pid)``, e.g. ``("out.nii.gz", 4242)``, or None if ``name`` does not
        follow either naming rule.
    """
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return None
    body = name[1 : -len(TMP_SUFFIX)]
    unique = body.rsplit(".", 2)  # name, pid, random
    if len(unique) == 3 and unique[0] and unique[1].isdigit():
        return unique[0], int(unique[1])
    fixed = body.rsplit(".", 1)  # name, pid
    if len(fixed) == 2 and fixed[0] and fixed[1].isdigit():
        return fixed[0], int(fixed[1])
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):  # another user's process, or not checkable
        return True
    return True


def remove_stale_temporaries(
    folder: str | os.PathLike,
    *,
    older_than_s: float | None = 3600.0,
    destination: Callable[[str], bool] | None = None,
) -> list[Path]:
    """Remove the temporaries (files or folders) that killed writes left in ``folder``.

    A temporary is stale when its process no longer runs or, unless ``older_than_s`` is None, when
    it is older than ``older_than_s`` seconds (its pid reused by another program).

    Args:
        folder: a folder (it may not exist).
        older_than_s: age beyond which a temporary is removed even if its pid runs, seconds; None
            to trust the pid alone.
        destination: keep only temporaries whose destination name this returns True for (e.g.
            checkpoint files); all when None.

    Returns:
        The paths removed.
    """
    removed = []
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            parsed = parse_temporary(entry.name)
            if parsed is None or (destination is not None and not destination(parsed[0])):
                continue
            with contextlib.suppress(OSError):
                old = (
                    older_than_s is not None
                    and now - entry.stat(follow_symlinks=False).st_mtime > older_than_s
                )
                if _pid_alive(parsed[1]) and not old:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or a folder (a rename's folder entry) to disk; a no-op where the system refuses."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_temporary(path: Path, unique: bool) -> tuple[int, Path]:
    """Create the temporary file for ``path`` (mode 0o666 less the umask, as a plain ``open`` makes it)."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0)
    if not unique:
        tmp = path.with_name(f"{_prefix(path)[:-1]}{TMP_SUFFIX}")
        return os.open(tmp, flags | os.O_TRUNC, 0o666), tmp
    for _ in range(100):
        tmp = path.with_name(f"{_prefix(path)}{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            return os.open(tmp, flags | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def temporary_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A new folder ``.{name}.{pid}.{random}.tmp`` beside ``path``, removed with what is left in it.

    For writers that make several files (two-file image formats): write into it, then move the
    parts into place with ``os.replace``.

    Args:
        path: the destination file.

    Yields:
        The temporary folder (in ``path``'s folder, so a rename out of it is atomic).

    Raises:
        OSError: if the folder cannot be made (a read-only or missing parent folder).
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


def atomic_write(
    path: str | os.PathLike,
    content: bytes | str | Callable[[BinaryIO], object],
    *,
    unique: bool = True,
) -> Path:
    """Write a file atomically: a temporary beside ``path``, flushed and fsynced, then ``os.replace``.

    Args:
        path: the destination file (its folder must exist).
        content: the bytes, a text (written as UTF-8), or ``write(binary_file)`` that writes the
            content (``lambda f: torch.save(obj, f)``, ``lambda f: image.save(f, format="PNG")``).
        unique: a unique temporary ``.{name}.{pid}.{random}.tmp`` (default), or the fixed
            ``.{name}.{pid}.tmp`` for a writer that owns its destination.

    Returns:
        ``path`` as a Path.

    Raises:
        OSError: if writing fails (a full disk, a read-only folder); ``path`` is then unchanged
            and the temporary removed. Anything ``content`` raises is re-raised the same way.
    """
    path = Path(path)
    handle, tmp = _create_temporary(path, unique)
    try:
        with os.fdopen(handle, "wb") as file:
            if isinstance(content, str):
                file.write(content.encode("utf-8"))
            elif isinstance(content, bytes | bytearray | memoryview):
                file.write(content)
            else:
                content(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)
    return path
