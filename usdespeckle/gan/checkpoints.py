"""Checkpoints that survive a killed run: atomic saves, and the old checkpoint kept until the new one is on disk.

MONAI's ``CheckpointSaver`` writes with ignite's ``DiskSaver(atomic=False)``: a run killed during a
save leaves a truncated newest checkpoint. And ignite's ``Checkpoint`` removes the oldest file
*before* it saves the new one, so with ``n_saved: 1`` a kill at that moment leaves none.
:class:`AtomicCheckpointSaver` is MONAI's handler with one change: each file is written to a
temporary name beside its destination, flushed to disk, and moved into place with ``os.replace``
(:func:`usdespeckle.runtime.atomic.atomic_write`); the file it replaces is removed only after that. Temporary files of killed runs are removed when
the next saver starts.

Resume (:func:`usdespeckle.runtime.bundle_utils.latest_checkpoint`) falls back to the newest checkpoint
that reads, with a warning, when the newest is damaged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from usdespeckle.runtime.atomic import atomic_write, remove_stale_temporaries

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver", "remove_stale_checkpoint_temporaries"]


def remove_stale_checkpoint_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary checkpoint files that killed runs left in ``folder``.

    Args:
        folder: a checkpoint folder (it may not exist).

    Returns:
        The files removed: those named ``.{name}.pt.{pid}.tmp`` whose process no longer runs.
    """
    return remove_stale_temporaries(folder, older_than_s=None, destination=lambda name: name.endswith(".pt"))


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` writing atomically and removing replaced files only after a save.

    Args:
        dirname: the checkpoint folder.
        filename: a fixed file name for every save (MONAI's ``final_filename`` and
            ``key_metric_filename``), or None for ignite's names.
        clean: remove the stale temporaries of killed runs from ``dirname`` now (False when the
            caller has done it, as :class:`AtomicCheckpointSaver` does once for its savers).
    """

    def __init__(
        self, dirname: str | os.PathLike, filename: str | None = None, *, clean: bool = True
    ) -> None:
        # require_empty=False: resuming runs write into a folder that holds checkpoints
        super().__init__(dirname=dirname, require_empty=False, atomic=False)
        self.filename = filename
        self._pending_removal: list[str] = []
        if clean:
            remove_stale_checkpoint_temporaries(self.dirname)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Save ``checkpoint`` as ``filename`` (or the fixed name), then remove the files it replaces."""
        import ignite.distributed as idist

        if idist.get_rank() != self.save_on_rank:
            return
        name = self.filename or filename
        path = Path(self.dirname) / name
        # the fixed name ``.{name}.{pid}.tmp``: one save per checkpoint file at a time
        atomic_write(path, lambda f: torch.save(checkpoint, f, **self.kwargs), unique=False)
        pending, self._pending_removal = self._pending_removal, []
        for old in pending:
            if old != name:
                with contextlib.suppress(FileNotFoundError):
                    (Path(self.dirname) / old).unlink()

    def remove(self, filename: str) -> None:
        """Remove ``filename`` after the next successful save (ignite asks before it saves)."""
        name = self.filename or filename
        self._pending_removal.append(name)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) with :class:`AtomicDiskSaver` for every file it writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        checkpoints = [
            checkpoint
            for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint)
            if checkpoint is not None
        ]
        if checkpoints:  # up to three savers share the folder: scan it for stale temporaries once
            remove_stale_checkpoint_temporaries(self.save_dir)
        for checkpoint in checkpoints:
            fixed = getattr(checkpoint.save_handler, "filename", None)
            checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename=fixed, clean=False)
