"""The panel's run state: buttons, progress bar and status line around one background job.

Toolkit-neutral: it calls only Qt methods that PythonQt (Slicer) and PySide6 share (``setEnabled``,
``setVisible``, ``setText``, ``setValue``, ``setMaximum``), so the same code drives the panel in
Slicer and in the tests, which load the panel's ``.ui`` file with PySide6.

Whatever a start or a finish raises, the panel returns to its idle state (Apply enabled, Cancel
disabled, no progress bar) with a status line that says what happened. Slicer's
``slicer.util.tryWithErrorDisplay`` shows the error and then re-raises it; :meth:`RunPanel.guard`
catches it after the display, so no code after a failure is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("Despeckle")

#: ``show_error(message)`` returns a context manager that shows an exception raised inside it and
#: re-raises it, as ``slicer.util.tryWithErrorDisplay(message)`` does.
ShowError = Callable[[str], contextlib.AbstractContextManager]


def _identity(text: str) -> str:
    return text


def _log_and_reraise(message: str) -> contextlib.AbstractContextManager:
    @contextlib.contextmanager
    def manager():
        try:
            yield
        except Exception:
            logger.exception(message)
            raise

    return manager()


class RunPanel:
    """Run state of the panel's Apply / Preview / Cancel buttons, progress bar and status label.

    Args:
        ui: object with ``applyButton``, ``previewButton``, ``cancelButton``, ``progressBar`` and
            ``statusLabel`` widgets.
        show_error: see :data:`ShowError`; default: log the error and re-raise.
        tr: translation function for the texts shown (Slicer's ``slicer.i18n.tr``).
    """

    def __init__(self, ui: Any, show_error: ShowError | None = None, tr: Callable[[str], str] | None = None):
        self.ui = ui
        self.show_error = show_error or _log_and_reraise
        self.tr = tr or _identity
        self.job = None
        self._ready = False
        self._describe = ""

    @property
    def running(self) -> bool:
        return self.job is not None

    def set_ready(self, ready: bool) -> None:
        """Enable Apply and Preview when an input is chosen and nothing runs."""
        self._ready = bool(ready)
        self._update_buttons()
        self.ui.applyButton.setToolTip(
            self.tr("Despeckle the whole input (every frame of a sequence).")
            if ready
            else self.tr("Select an input volume or sequence.")
        )

    def _update_buttons(self) -> None:
        self.ui.applyButton.setEnabled(self._ready and not self.running)
        self.ui.previewButton.setEnabled(self._ready and not self.running)
        self.ui.cancelButton.setEnabled(self.running)

    def _idle(self, status: str) -> None:
        self.job = None
        self.ui.progressBar.setVisible(False)
        self.ui.statusLabel.setText(status)
        self._update_buttons()

    def guard(self, action: Callable[[], Any], message: str, failure_status: str) -> tuple[bool, Any]:
        """Run ``action`` with errors shown; on any error the panel goes back to idle.

        Returns:
            ``(True, result)`` on success, ``(False, None)`` after an error (already shown).
        """
        try:
            with self.show_error(message):
                return True, action()
        except Exception:
            if self.job is not None:
                with contextlib.suppress(Exception):
                    self.job.cancel()
            self._idle(failure_status)
            return False, None

    def begin(self, start: Callable[[], Any], describe: str, ask: Callable[[], bool] | None = None) -> bool:
        """Ask first (``ask``), then start a job with ``start()`` (which may install what the user agreed to).

        ``ask`` runs before the error display of ``show_error`` (in Slicer, before its wait cursor), so
        a question it shows is never hidden under a busy cursor.

        Args:
            start: returns a running job (``poll``, ``done``, ``total``, ``cancel``) or None (declined).
            describe: what runs, e.g. "Despeckling 'cine' (120 frames) with denoiser".
            ask: shows any question (install these packages?); False means the user declined.

        Returns:
            True when a job runs.
        """
        if self.running:
            return False
        if ask is not None:
            try:
                agreed = ask()
            except Exception:
                logger.exception("Despeckle: asking before the start failed")
                agreed = False
            if not agreed:
                self._idle(self.tr("Nothing was run."))
                return False
        ok, job = self.guard(
            start, self.tr("Failed to start despeckling."), self.tr("Could not start; nothing changed.")
        )
        if not ok or job is None:
            if ok:
                self._idle(self.tr("Nothing was run."))
            return False
        self.job = job
        self._describe = describe
        self.ui.progressBar.setMaximum(max(1, int(job.total)))
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.setText(
            self.tr("{what}: reading the input and loading the method...").format(what=describe)
        )
        self._update_buttons()
        return True

    def poll(self, finish: Callable[[Any], Any], succeeded: Callable[[Any, Any, float], str]) -> bool:
        """Read the job's progress; once it has ended, finish it and go back to idle.

        Args:
            finish: turns the ended job into the output (``DespeckleLogic.finish``).
            succeeded: ``succeeded(job, output, seconds)`` shows the output and returns the status line.

        Returns:
            True when no job runs any more (the caller stops its timer).
        """
        job = self.job
        if job is None:
            return True
        ok, ended = self.guard(
            job.poll,
            self.tr("Despeckling failed."),
            self.tr("Despeckling failed; the scene was not changed."),
        )
        if not ok:
            return True
        if job.total:
            self.ui.progressBar.setMaximum(int(job.total))
            self.ui.progressBar.setValue(int(job.done))
        if not ended:
            if job.done:
                self.ui.statusLabel.setText(
                    self.tr("{what}: {done} of {total} slices").format(
                        what=self._describe, done=job.done, total=job.total
                    )
                )
            return False

        def complete():
            output = finish(job)
            return succeeded(job, output, time.monotonic() - job.started)

        ok, status = self.guard(
            complete,
            self.tr("Despeckling failed."),
            self.tr("Despeckling failed; the scene was not changed."),
        )
        if ok:
            self._idle(status)
        return True

    def cancel(self) -> None:
        """Kill the job's process tree (without waiting); the scene stays as it was."""
        job = self.job
        if job is not None:
            with contextlib.suppress(Exception):
                job.cancel()
        self._idle(self.tr("Cancelled; the scene was not changed."))
