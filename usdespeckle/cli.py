"""The ``usdespeckle`` command line: a thin dispatcher over ``usdespeckle.commands``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from usdespeckle import __version__
from usdespeckle.commands import COMMANDS
from usdespeckle.runtime.errors import UserError

__all__ = [
    "build_parser",
    "main",
]


def _shipped(name: str) -> bool:
    """Whether ``name``'s module is part of this copy of the package.

    The Slicer extension ships only ``run`` and ``stream``; a command whose module file is absent is not offered.
    A module that is present but fails to import is an error, raised as it is.
    """
    return importlib.util.find_spec(f"usdespeckle.commands.{COMMANDS[name]}") is not None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``command``'s module is imported (all of them when None)."""
    parser = argparse.ArgumentParser(prog="usdespeckle", description="Ultrasound despeckling tools.")
    parser.add_argument("--version", action="version", version=f"usdespeckle {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if not _shipped(name):
            continue
        if command is not None and name != command:
            sub.add_parser(name)
            continue
        module = importlib.import_module(f"usdespeckle.commands.{COMMANDS[name]}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.main(args) or 0)
    except UserError as err:
        print(f"usdespeckle {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"usdespeckle {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
