"""Classical ultrasound despecklers with one shared signature.

Every filter is ``despeckle_<name>(image, <params>, *, axis=0) -> numpy.ndarray``:

- ``image`` is a grey image, 2D ``(H, W)`` or 3D; a 3D volume is processed slice by slice along
  ``axis`` (the filters are 2D, like the denoiser). Any finite float range is accepted; images in
  [0, 1] are the project's convention.
- The result is a new float32 array of the same shape, never the input object.
- NaN/inf values, 1D or 4D+ input raise ``ValueError``.

Default parameters were tuned by ``training/tune_filters.py`` (see ``reports/filter_tuning.md``).
``FILTERS`` maps the names of ``usdespeckle.runtime.options.CLASSICAL_METHODS`` (the command line's
``--method`` names) to the functions and :func:`despeckle` dispatches by name. The BM3D-based
filters (BM3D with a correlated-noise spectrum, MuLoG + BM3D) live in :mod:`usdespeckle.runtime.filters.bm3d`
and the non-local means filters (OBNLM, NLM) in :mod:`usdespeckle.runtime.filters.nlm`.
The local-statistics and diffusion filters are in :mod:`usdespeckle.runtime.filters.local`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from usdespeckle.runtime.filters.bm3d import despeckle_bm3d, despeckle_mulog
from usdespeckle.runtime.filters.local import (
    despeckle_frost,
    despeckle_kuan,
    despeckle_lee,
    despeckle_median,
    despeckle_srad,
    despeckle_tv,
)
from usdespeckle.runtime.filters.nlm import despeckle_nlm, despeckle_obnlm
from usdespeckle.runtime.options import CLASSICAL_METHODS

__all__ = [
    "FILTERS",
    "checked_registry",
    "despeckle",
    "despeckle_bm3d",
    "despeckle_frost",
    "despeckle_kuan",
    "despeckle_lee",
    "despeckle_median",
    "despeckle_mulog",
    "despeckle_nlm",
    "despeckle_obnlm",
    "despeckle_srad",
    "despeckle_tv",
]


def checked_registry(
    table: dict[str, Callable[..., np.ndarray]], methods: tuple[str, ...] = CLASSICAL_METHODS
) -> dict[str, Callable[..., np.ndarray]]:
    """``table`` if it holds exactly the filters named by ``methods``, in their order.

    Raises:
        ImportError: a method without its filter, a filter without its method, or another order;
            the message names what to add where.
    """
    missing = [name for name in methods if name not in table]
    extra = [name for name in table if name not in methods]
    if missing or extra:
        raise ImportError(
            "usdespeckle.runtime.filters.FILTERS and usdespeckle.runtime.options.CLASSICAL_METHODS differ: "
            + "; ".join(
                [f"FILTERS lacks {', '.join(missing)}"] * bool(missing)
                + [f"CLASSICAL_METHODS lacks {', '.join(extra)}"] * bool(extra)
            )
        )
    if tuple(table) != tuple(methods):
        raise ImportError(
            "usdespeckle.runtime.filters.FILTERS must list the filters in CLASSICAL_METHODS' order"
        )
    return table


#: The classical filters by ``--method`` name, in the order of ``options.CLASSICAL_METHODS``. A new
#: filter is one ``despeckle_<name>`` function and its line here and in ``options.CLASSICAL_METHODS``.
FILTERS: dict[str, Callable[..., np.ndarray]] = checked_registry(
    {
        "median": despeckle_median,
        "lee": despeckle_lee,
        "frost": despeckle_frost,
        "kuan": despeckle_kuan,
        "srad": despeckle_srad,
        "obnlm": despeckle_obnlm,
        "bm3d": despeckle_bm3d,
        "mulog": despeckle_mulog,
        "nlm": despeckle_nlm,
        "tv": despeckle_tv,
    }
)


def despeckle(image: np.ndarray, method: str, **params: object) -> np.ndarray:
    """Despeckle with the filter named ``method`` (a key of :data:`FILTERS`).

    Args:
        image: grey image (H, W) or volume.
        method: one of ``FILTERS`` (median, lee, frost, kuan, srad, obnlm, bm3d, mulog, nlm, tv).
        **params: that filter's parameters (and ``axis``).

    Returns:
        float32 array, same shape as ``image``.

    Raises:
        ValueError: an unknown method or parameter, or invalid input.

    Examples:
        >>> import numpy as np
        >>> despeckle(np.ones((16, 16)), "median", size=3).dtype
        dtype('float32')
    """
    if method not in FILTERS:
        raise ValueError(f"unknown despeckling method {method!r}; valid names: {', '.join(FILTERS)}")
    function = FILTERS[method]
    valid = [name for name in inspect.signature(function).parameters if name != "image"]
    unknown = [name for name in params if name not in valid]
    if unknown:
        raise ValueError(
            f"despeckle {method!r}: no parameter {', '.join(unknown)}; valid parameters: {', '.join(valid)}"
        )
    return function(image, **params)
