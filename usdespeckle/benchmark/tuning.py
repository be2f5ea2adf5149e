"""Tuned settings of the benchmark's parametric methods: per set, and one setting for all sets.

``training/tune_filters.py`` scores every setting of a small grid, for each classical filter and
learned peer, on the validation version of each tunable benchmark set (:attr:`SetSpec.tunable`),
and stores two choices in :data:`TUNED_SETTINGS_FILE`:

- per set: the setting with the best mean PSNR after the affine fit on that set's tuning images,
  what an expert with a clean reference for that kind of speckle would pick;
- one setting for all sets (a user's yardstick, since a user never has a clean reference to
  tune against per scan): the setting with the best mean over the sets of that per-set mean
  (each set weighted equally).

The benchmark runs a method ``m`` with its per-set setting as the row ``m`` and with the single
setting as the row ``m@1`` (:data:`SINGLE_SUFFIX`); on a set without tuning images (real frames,
the cine, the extra MRI) ``m`` runs at the single setting and no ``m@1`` row is added.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SELECTION_METRIC",
    "SINGLE_SUFFIX",
    "TUNED_SETTINGS_FILE",
    "TunedSettings",
    "load_tuned_settings",
    "parametric_methods",
    "save_tuned_settings",
    "select_settings",
]

TUNED_SETTINGS_FILE = Path(__file__).with_name("tuned_settings.json")
SINGLE_SUFFIX = "@1"  # the row of a method at its one setting for all sets
SELECTION_METRIC = "psnr_affine"  # what tuning maximises (dB, after the affine fit)

Row = Mapping[str, Any]  # {"params": {...}, "sets": {set_name: {metric: value}}}


@dataclass
class TunedSettings:
    """Settings chosen by tuning.

    Attributes:
        single: method -> its one setting for all sets.
        per_set: set name -> method -> its setting for that set.
        provenance: how they were made (command, images, metric), for the report.
    """

    single: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_set: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    provenance: str = ""

    def for_set(self, method: str, set_name: str) -> dict[str, Any] | None:
        """The per-set setting of ``method`` on ``set_name``, or None if that set was not tuned."""
        return self.per_set.get(set_name, {}).get(method)


def _mean_over_sets(row: Row, metric: str) -> float:
    values = [float(scores[metric]) for scores in row["sets"].values()]
    return float(np.mean(values)) if values else -math.inf


def select_settings(rows: Sequence[Row], metric: str = SELECTION_METRIC) -> tuple[dict, dict[str, dict]]:
    """The one setting for all sets and the best setting per set, from a grid's scores.

    Args:
        rows: one per setting: ``{"params": {...}, "sets": {set: {metric: mean over its images}}}``,
            every row scored on the same sets.
        metric: the score to maximise (higher is better).

    Returns:
        ``(single, per_set)``: the params of the row with the best mean over the sets (first of
        equals in grid order), and set name -> the params of the best row on that set.

    Raises:
        ValueError: no rows, or rows scored on different sets.
    """
    if not rows:
        raise ValueError("select_settings needs at least one scored setting.")
    set_names = list(rows[0]["sets"])
    if any(list(r["sets"]) != set_names for r in rows):
        raise ValueError("select_settings: every setting must be scored on the same sets.")
    single = max(rows, key=lambda r: _mean_over_sets(r, metric))["params"]
    per_set = {
        name: max(rows, key=lambda r, n=name: float(r["sets"][n][metric]))["params"] for name in set_names
    }
    return dict(single), {name: dict(p) for name, p in per_set.items()}


def save_tuned_settings(
    choices: Mapping[str, tuple[dict, dict[str, dict]]],
    provenance: str,
    path: Path = TUNED_SETTINGS_FILE,
) -> TunedSettings:
    """Store the choices of :func:`select_settings` per method, merged into what ``path`` holds.

    Methods not in ``choices`` keep their stored settings, so tuning a few methods again does not
    forget the others.
    """
    from usdespeckle.runtime.atomic import atomic_write

    settings = load_tuned_settings(path)
    for method, (single, per_set) in choices.items():
        settings.single[method] = dict(single)
        for set_name in settings.per_set:
            settings.per_set[set_name].pop(method, None)
        for set_name, params in per_set.items():
            settings.per_set.setdefault(set_name, {})[method] = dict(params)
    settings.provenance = provenance
    payload = {"provenance": settings.provenance, "single": settings.single, "per_set": settings.per_set}
    atomic_write(path, json.dumps(payload, indent=1) + "\n")
    return settings


def load_tuned_settings(path: Path = TUNED_SETTINGS_FILE) -> TunedSettings:
    """The stored settings (empty when the file does not exist: methods then run at their defaults).

    Raises:
        ValueError: the file is not the JSON :func:`save_tuned_settings` writes.
    """
    if not Path(path).is_file():
        return TunedSettings()
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        return TunedSettings(dict(payload["single"]), dict(payload["per_set"]), str(payload["provenance"]))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is not a tuned-settings file ({err}); rerun training/tune_filters.py."
        ) from err


def parametric_methods() -> dict[str, Callable[..., np.ndarray]]:
    """Every method tuning can set: ``name -> fn(image, **params)``, the classical filters and the learned peers.

    The peers' packages are imported only when a peer runs (see :mod:`usdespeckle.benchmark.peers`).
    """
    from usdespeckle.benchmark.peers import PEERS
    from usdespeckle.runtime import filters

    return {**filters.FILTERS, **PEERS}
