"""The methods a benchmark runs: the classical filters, the learned peers, the shipped denoiser, and extras.

The filters and the peers have settings; :func:`rows_for_set` gives each its tuned setting per set
and adds its one-setting row (``name@1``, see :mod:`usdespeckle.benchmark.tuning`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from usdespeckle.benchmark.tuning import SINGLE_SUFFIX, TunedSettings

__all__ = [
    "DENOISER",
    "INPUT",
    "Method",
    "available_methods",
    "register_method",
    "resolve_methods",
    "rows_for_set",
]

INPUT = "input"  # the name of the baseline row: the speckled input, unchanged
DENOISER = "denoiser"  # the shipped network's row

ArrayFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Method:
    """A despeckling method: a function from a 2D float image in [0, 1] to a float32 image.

    Attributes:
        name: registry name (``median``, ``bm3d``, ``denoiser``, ...).
        fn: ``fn(image) -> image``, both 2D float in [0, 1], same shape.
        description: one line for the report.
        settable: ``settable(image, **params)`` for a method with tunable settings (the filters,
            the peers); None otherwise.
    """

    name: str
    fn: ArrayFn
    description: str = ""
    settable: Callable[..., np.ndarray] | None = None


_EXTRA_METHODS: dict[str, Method] = {}


def register_method(name: str, fn: ArrayFn, description: str = "") -> None:
    """Add (or replace) a method in the registry, e.g. a new filter or a second network.

    Args:
        name: registry name; must not be ``"input"``.
        fn: ``fn(image2d float [0, 1]) -> float32 image`` of the same shape.
        description: one line shown in the report.

    Raises:
        ValueError: if the name is ``"input"`` or empty.
    """
    if not name or name == INPUT:
        raise ValueError(f"method name must be a non-empty name other than {INPUT!r}; got {name!r}.")
    _EXTRA_METHODS[name] = Method(name, fn, description)


def _classical_methods() -> dict[str, Method]:
    from usdespeckle.runtime import filters

    return {name: Method(name, fn, _first_line(fn), settable=fn) for name, fn in filters.FILTERS.items()}


def _first_line(fn: Callable) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""


def _peer_methods() -> tuple[dict[str, Method], dict[str, str]]:
    """The learned peers whose packages are installed, and the others with the reason."""
    from usdespeckle.benchmark.peers import PEERS, missing_peer

    methods, skipped = {}, {}
    for name, fn in PEERS.items():
        why = missing_peer(name)
        if why is None:
            methods[name] = Method(name, fn, _first_line(fn), settable=fn)
        else:
            skipped[name] = why
    return methods, skipped


def _denoiser_method() -> tuple[Method | None, str]:
    """The shipped denoiser as a method, or ``(None, why it is skipped)``."""
    from usdespeckle.runtime import inference

    try:
        loaded = inference.load_denoiser()  # checks the weights exist and match the bundle's metadata
    except (FileNotFoundError, ValueError) as err:
        return None, str(err)

    def run_denoiser(image: np.ndarray) -> np.ndarray:
        # The test images are already in [0, 1]: map them as they are, not by robust percentiles.
        return inference.despeckle_array(image, method=DENOISER, intensity_range=(0.0, 1.0))

    return Method(DENOISER, run_denoiser, f"the shipped pix2pix denoiser ({loaded.path})"), ""


def available_methods() -> tuple[dict[str, Method], dict[str, str]]:
    """All methods that can run here, and the skipped ones with the reason.

    Returns:
        ``(methods, skipped)``: name -> :class:`Method` (classical filters, the learned peers when
        the ``peers`` extra is installed, the denoiser when its weights exist, and anything added by
        :func:`register_method`), and name -> reason.
    """
    methods: dict[str, Method] = _classical_methods()
    peers, skipped = _peer_methods()
    methods.update(peers)
    denoiser, why = _denoiser_method()
    if denoiser is None:
        skipped[DENOISER] = why
    else:
        methods[DENOISER] = denoiser
    methods.update(_EXTRA_METHODS)
    return methods, skipped


def resolve_methods(names: Sequence[str] | None) -> tuple[dict[str, Method], dict[str, str]]:
    """Pick methods by name (None or ``["all"]``: every available one).

    Returns:
        ``(methods, skipped)`` where skipped maps unavailable names to the reason.

    Raises:
        ValueError: for a name that is neither available nor a known-but-skipped method.
    """
    available, skipped = available_methods()
    if names is None or list(names) == ["all"]:
        return available, skipped
    chosen: dict[str, Method] = {}
    chosen_skipped: dict[str, str] = {}
    for name in names:
        if name == INPUT:
            continue  # always included as the baseline
        if name in available:
            chosen[name] = available[name]
        elif name in skipped:
            chosen_skipped[name] = skipped[name]
        else:
            known = sorted(set(available) | set(skipped))
            raise ValueError(f"unknown method {name!r}; choose from {known} (or 'all').")
    return chosen, chosen_skipped


def rows_for_set(methods: dict[str, Method], set_name: str, tuned: TunedSettings) -> dict[str, ArrayFn]:
    """The table rows of one set: row name -> ``fn(image)``.

    A method with settings that tuning chose (``tuned.single``) runs at its setting for
    ``set_name`` as the row of its own name, plus the row ``name@1`` at its one setting for all
    sets; on a set that was not tuned, only the row of its name, at the one setting. Every other
    method runs as it is.
    """
    rows: dict[str, ArrayFn] = {}
    for name, method in methods.items():
        if method.settable is None or name not in tuned.single:
            rows[name] = method.fn
            continue
        own = tuned.for_set(name, set_name)
        rows[name] = functools.partial(method.settable, **(tuned.single[name] if own is None else own))
        if own is not None:
            rows[name + SINGLE_SUFFIX] = functools.partial(method.settable, **tuned.single[name])
    return rows
