"""usdespeckle: ultrasound despeckling with pix2pix GANs and cross-modality transfer learning.

The importable core of SlicerDespeckle, in layers (docs/ARCHITECTURE.md), lowest first: ``runtime``
(options, image I/O, the slice-wise runner, the denoiser's loader, the classical filters: what the
Slicer extension runs), ``simulation`` (speckle, PSF, physics B-mode, the acquisition chain),
``metrics``, ``data``, ``gan`` (networks, trainer, the trained simulator), ``benchmark`` and
``commands``. The MONAI bundle, the Slicer module, the MONAI Label app and the ``usdespeckle``
command are thin front doors over it.

The names users call are importable from here: ``usdespeckle.despeckle_array``,
``usdespeckle.despeckle_image``, ``usdespeckle.load_denoiser``, ``usdespeckle.despeckle`` and the
classical filters ``usdespeckle.despeckle_<name>`` (with their table ``FILTERS``). Each is imported
from its module on first use, so ``import usdespeckle`` loads nothing else.
"""

from __future__ import annotations

from typing import Any

__version__ = "1.0.0"

_INFERENCE = "usdespeckle.runtime.inference"
_FILTERS = "usdespeckle.runtime.filters"
#: Public name -> the module that defines it.
_PUBLIC: dict[str, str] = {
    "despeckle_array": _INFERENCE,
    "despeckle_image": _INFERENCE,
    "load_denoiser": _INFERENCE,
    "FILTERS": _FILTERS,
    "despeckle": _FILTERS,
    "despeckle_bm3d": _FILTERS,
    "despeckle_frost": _FILTERS,
    "despeckle_kuan": _FILTERS,
    "despeckle_lee": _FILTERS,
    "despeckle_median": _FILTERS,
    "despeckle_mulog": _FILTERS,
    "despeckle_nlm": _FILTERS,
    "despeckle_obnlm": _FILTERS,
    "despeckle_srad": _FILTERS,
    "despeckle_tv": _FILTERS,
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported from its module on first use."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'usdespeckle' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
