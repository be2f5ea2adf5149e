"""Is there a GPU the denoiser can use here? The panel offers ``cuda`` only when there is.

Standard library only; the runtimes are imported when asked about, never installed. The denoiser
runs on a CUDA GPU through either backend:

- ``onnx``: ONNX Runtime with its CUDA execution provider, which only the ``onnxruntime-gpu``
  package has (the module installs the CPU package ``onnxruntime``; it never installs a GPU runtime
  without asking: a user who wants one installs ``onnxruntime-gpu`` knowingly);
- ``torch``: a CUDA build of PyTorch that sees a GPU (the PyTorch extension picks the build that
  matches the computer's GPU, after asking).

When ``cuda`` is asked for and is not usable, the run goes to the CPU and the panel says why
(:func:`choose_device`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from SlicerDespeckleLib.process import library_module

#: The devices ``usdespeckle run`` accepts (the runtime's options.py); ``cuda`` is offered only when usable.
DEVICES: tuple[str, ...] = library_module("options").DEVICES

#: What each backend needs to run on a GPU, said when it is missing.
GPU_HINTS: dict[str, str] = {
    "onnx": "ONNX Runtime here has no CUDA execution provider (only the onnxruntime-gpu package has one, "
    "with a CUDA toolkit that matches it)",
    "torch": "PyTorch here is a CPU build or sees no CUDA GPU (the PyTorch extension installs a CUDA build "
    "when it finds one)",
}


@dataclass(frozen=True)
class GpuStatus:
    """Whether a backend can run on a CUDA GPU here.

    Attributes:
        backend: ``"onnx"`` or ``"torch"``.
        usable: True when ``cuda`` works with that backend.
        reason: why not (empty when usable).
    """

    backend: str
    usable: bool
    reason: str = ""


def gpu_status(
    backend: str,
    *,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
    import_module: Callable[[str], ModuleType] = importlib.import_module,
) -> GpuStatus:
    """Ask the backend's runtime whether it can use a CUDA GPU (imports it; installs nothing).

    Args:
        backend: ``"onnx"`` (ONNX Runtime's ``CUDAExecutionProvider``) or ``"torch"``
            (``torch.cuda.is_available()``).
        find_spec, import_module: how modules are found and imported (replaced by the tests).

    Returns:
        The status; a runtime that is missing or fails to import is "not usable", with the reason.
    """
    module = {"onnx": "onnxruntime", "torch": "torch"}.get(backend)
    if module is None:
        return GpuStatus(backend, False, f"unknown backend {backend!r}")
    if find_spec(module) is None:
        return GpuStatus(backend, False, f"{module} is not installed")
    try:
        runtime = import_module(module)
        if backend == "onnx":
            usable = "CUDAExecutionProvider" in runtime.get_available_providers()
        else:
            usable = bool(runtime.cuda.is_available())
    except Exception as err:  # a broken runtime (missing CUDA libraries...) is no GPU
        return GpuStatus(backend, False, f"{module} could not be asked ({type(err).__name__}: {err})")
    return GpuStatus(backend, usable, "" if usable else GPU_HINTS[backend])


def offered_devices(status: GpuStatus) -> tuple[str, ...]:
    """The devices to offer in the panel: ``cpu``, and ``cuda`` only when it is usable."""
    return DEVICES if status.usable else tuple(d for d in DEVICES if d != "cuda")


def choose_device(requested: str, status: GpuStatus) -> tuple[str, str]:
    """The device a run uses, and a message when it differs from the one asked for.

    Returns:
        ``("cuda", "")`` when asked and usable; ``("cpu", message)`` when ``cuda`` was asked for and
        is not usable (the message says why and that the run goes to the CPU); else ``("cpu", "")``.
    """
    if requested != "cuda":
        return "cpu", ""
    if status.usable:
        return "cuda", ""
    return "cpu", f"No usable GPU for the {status.backend} backend: {status.reason}. Running on the CPU."
