"""The examples in the library's docstrings run and print what they show (``doctest``).

Every module of the package with a ``>>>`` example is collected here, so a new example is run
without being listed; the README's test command (and CI) runs them with the rest of the suite.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "usdespeckle"
WITH_EXAMPLES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    for path in PACKAGE.rglob("*.py")
    if ">>> " in path.read_text(encoding="utf-8") and path.name != "__main__.py"
)


def test_the_library_has_examples():
    assert WITH_EXAMPLES, "no docstring examples found: was the package moved?"


@pytest.mark.parametrize("module", WITH_EXAMPLES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, (
        f"{module}: {result.failed} of {result.attempted} examples failed (run doctest -v)"
    )
