"""Shared test settings: two CPU threads, like the machines CI runs on."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest
import torch

torch.set_num_threads(2)

# tests/slicer runs in its own environment (slicer-core), started by tests/test_slicer_module.py;
# the main interpreter does not collect it.
collect_ignore = ["slicer"]


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator, so every test is repeatable."""
    return np.random.default_rng(1234)
