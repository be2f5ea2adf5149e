"""GPU detection: ``cuda`` is offered only when the backend's runtime can use a GPU (runtimes faked)."""

from __future__ import annotations

import types

import pytest
from SlicerDespeckleLib.gpu import choose_device, gpu_status, offered_devices


def _fake(modules: dict[str, types.ModuleType | None]):
    """find_spec / import_module over a dict of fake modules (None: not installed)."""

    def find_spec(name):
        return object() if modules.get(name) is not None else None

    def import_module(name):
        return modules[name]

    return {"find_spec": find_spec, "import_module": import_module}


def _onnxruntime(providers):
    return types.SimpleNamespace(get_available_providers=lambda: list(providers))


def _torch(available):
    def is_available():
        if isinstance(available, Exception):
            raise available
        return available

    return types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=is_available))


def test_onnx_gpu_only_with_the_cuda_provider():
    gpu = gpu_status(
        "onnx", **_fake({"onnxruntime": _onnxruntime(["CUDAExecutionProvider", "CPUExecutionProvider"])})
    )
    assert gpu.usable
    assert offered_devices(gpu) == ("cpu", "cuda")
    assert choose_device("cuda", gpu) == ("cuda", "")
    cpu_only = gpu_status("onnx", **_fake({"onnxruntime": _onnxruntime(["CPUExecutionProvider"])}))
    assert not cpu_only.usable
    assert "onnxruntime-gpu" in cpu_only.reason
    assert offered_devices(cpu_only) == ("cpu",)
    device, message = choose_device("cuda", cpu_only)
    assert device == "cpu"
    assert "Running on the CPU" in message
    assert "onnxruntime-gpu" in message


def test_torch_gpu_only_when_cuda_is_available():
    assert gpu_status("torch", **_fake({"torch": _torch(True)})).usable
    cpu_build = gpu_status("torch", **_fake({"torch": _torch(False)}))
    assert not cpu_build.usable
    assert "CPU build" in cpu_build.reason
    broken = gpu_status("torch", **_fake({"torch": _torch(RuntimeError("libcudart.so.12 missing"))}))
    assert not broken.usable
    assert "libcudart" in broken.reason


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_missing_runtime_is_no_gpu_and_nothing_is_installed(backend):
    status = gpu_status(backend, **_fake({}))
    assert not status.usable
    assert "not installed" in status.reason
    assert offered_devices(status) == ("cpu",)
    assert choose_device("cpu", status) == ("cpu", "")


def test_unknown_backend():
    assert not gpu_status("tensorrt", **_fake({})).usable
