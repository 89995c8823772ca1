"""Where the models run: what llama.cpp was built for, what torch sees, and which catalogue
defaults fit the machine.

llama-cpp-python answers `llama_supports_gpu_offload()` (true for CUDA, Metal, Vulkan, HIP
builds) and describes its build in `llama_print_system_info()`; torch answers whether it
sees a CUDA GPU (and its memory) or Apple's Metal (MPS). A machine counts as a GPU machine
when llama.cpp can offload and the GPU has room for the 7B default (about 5 GB of weights
plus context): `GPU_MIN_BYTES`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ipo_cli.errors import IpoError

GPU_MIN_BYTES = 8 * 1024**3
CUDA_BUILD = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
METAL_BUILD = 'CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'


@functools.lru_cache(maxsize=1)
def llama_gpu_offload() -> bool:
    try:
        import llama_cpp
    except ImportError:
        return False
    try:
        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # noqa: BLE001 - an old or odd build: assume the CPU
        return False


@functools.lru_cache(maxsize=1)
def llama_backend() -> str:
    """CUDA, Metal, Vulkan, HIP or CPU: what this llama-cpp-python offloads to."""
    if not llama_gpu_offload():
        return "CPU"
    import llama_cpp

    try:
        info = llama_cpp.llama_print_system_info()
        info = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    except Exception:  # noqa: BLE001
        info = ""
    for name, pattern in (("CUDA", r"CUDA"), ("Metal", r"METAL|MTL"), ("HIP", r"HIP|ROCM"), ("Vulkan", r"VULKAN")):
        if re.search(pattern, info, re.IGNORECASE):
            return name
    return "GPU"


@dataclass(frozen=True)
class TorchGPU:
    kind: str  # "CUDA", "Metal" or "none"
    name: str = ""
    memory: int = 0  # bytes; 0 when unknown (Metal shares system memory)


@functools.lru_cache(maxsize=1)
def torch_gpu() -> TorchGPU:
    try:
        import torch
    except ImportError:
        return TorchGPU("none")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return TorchGPU("CUDA", props.name, int(props.total_memory))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return TorchGPU("Metal")
    return TorchGPU("none")


@dataclass(frozen=True)
class Machine:
    kind: str  # "gpu" or "cpu": which catalogue defaults apply
    llama: str  # where llama.cpp runs by default: CUDA, Metal, ..., CPU
    why: str
    warning: str | None = None  # torch sees a GPU that llama.cpp cannot use


def machine() -> Machine:
    backend, gpu = llama_backend(), torch_gpu()
    warning = None
    if backend == "CPU" and gpu.kind != "none":
        build = METAL_BUILD if gpu.kind == "Metal" else CUDA_BUILD
        warning = (f"torch sees a {gpu.kind} GPU{' (' + gpu.name + ')' if gpu.name else ''} but llama.cpp was built "
                   f"for the CPU only, so the LLM and the describer run on the CPU; to fix: {build}")
    if backend == "CPU":
        return Machine("cpu", "CPU", "llama.cpp has no GPU offload in this build", warning)
    if gpu.kind == "CUDA" and gpu.memory and gpu.memory < GPU_MIN_BYTES:
        return Machine("cpu", backend, f"the GPU has {gpu.memory / 1024**3:.1f} GB, less than the "
                       f"{GPU_MIN_BYTES // 1024**3} GB the GPU defaults need", warning)
    label = gpu.name or backend
    return Machine("gpu", backend, f"llama.cpp offloads to {backend}" + (f" ({label})" if label != backend else ""),
                   warning)


def resolve_gpu_layers(gpu_layers: int | None) -> int:
    """--gpu-layers: None means every layer when llama.cpp was built with GPU offload, else 0;
    -1 is llama.cpp's own "all layers"."""
    if gpu_layers is not None:
        if gpu_layers < -1:
            raise IpoError(f"--gpu-layers must be -1 (all), 0 (CPU) or a positive count, not {gpu_layers}")
        return gpu_layers
    return -1 if llama_gpu_offload() else 0


def where(gpu_layers: int | None) -> str:
    """Where a llama.cpp model with this --gpu-layers runs, for the plan line."""
    layers = resolve_gpu_layers(gpu_layers)
    if layers == 0 or not llama_gpu_offload():
        return "CPU"
    return f"{llama_backend()} ({'all' if layers < 0 else layers} layers)"
