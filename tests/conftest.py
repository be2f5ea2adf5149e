"""Shared test settings: two CPU threads, like the machines CI runs on."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

# These folders run in their own environments (slicer-core; the MONAI Label server), started by
# tests/test_slicer_module.py and tests/test_monailabel.py; the main interpreter does not collect them.
collect_ignore = ["slicer", "monailabel"]


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator, so every test is repeatable."""
    return np.random.default_rng(1234)
