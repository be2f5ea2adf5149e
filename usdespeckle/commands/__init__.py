"""Sub-commands of the ``usdespeckle`` command line, one module each.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``.
Modules are imported only when their command runs, so ``usdespeckle --help`` stays fast.
"""

from __future__ import annotations

# command name -> module name inside this package
COMMANDS: dict[str, str] = {
    "prepare-data": "prepare_data",
    "benchmark": "benchmark",
    "run": "run",
    "demo": "demo",
    "stream": "stream",
}
