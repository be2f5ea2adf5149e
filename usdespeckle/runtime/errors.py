"""The library's own exceptions (a leaf module: it imports nothing from the package)."""

from __future__ import annotations

__all__ = ["DespeckleCancelled", "UserError"]


class UserError(Exception):
    """A problem with the user's input, reported by the front doors as one line without a traceback."""


class DespeckleCancelled(Exception):
    """Raised when a ``cancel`` callable or event asks a running despeckle or simulation to stop."""
