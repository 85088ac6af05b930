"""Where and in what precision a run computes.

    resolve_device      a device name ('auto', 'cpu', 'cuda', 'cuda:N') -> torch.device
    autocast_dtype      a precision ('auto', 'fp32', 'bf16', 'fp16') -> the autocast dtype
    cpu_has_fast_bf16   whether this CPU computes bf16 faster than fp32
    cuda_has_native_bf16 whether a GPU computes bf16 in hardware (not emulated)
    autocast            the autocast context for a device and dtype (disabled for fp32)
    machine_description what a run's numbers were measured on ('AMD EPYC (2 threads)')
    computed_in         what a precision ('auto' included) computes in on a device
    measured_on         that, with the precision and torch's version, for a timing
"""
from __future__ import annotations

import platform
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; an unavailable CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return device


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX make bf16 matmuls faster than fp32; elsewhere bf16 only costs.
    (get_cpu_capability() reports just 'AVX512', so ask torch.cpu's feature probes.)"""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes bf16 in hardware: NVIDIA from compute capability 8.0 (Ampere)
    on, and the AMD GPUs that ROCm builds of torch run on. An older GPU such as the T4 (7.5)
    emulates bf16, slower than its fp16; torch.cuda.is_bf16_supported() still answers yes
    there, counting the emulation."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision`, None for full fp32. 'auto' takes bf16 where the
    device computes it natively, fp16 (with gradient scaling) on other CUDA GPUs, else
    fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_has_native_bf16(device) else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def cpu_name() -> str:
    """The processor's model name ('AMD EPYC'), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: str) -> str:
    """'NVIDIA H200' or 'AMD EPYC (2 threads)': what the numbers of a run were measured on."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def computed_in(precision: str, device: str) -> str:
    """What a run of `precision` ('auto' included) computes in on `device`: 'fp32', 'bf16'
    or 'fp16'."""
    names = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return names[autocast_dtype(precision, resolve_device(device))]


def measured_on(device: str) -> dict:
    """The machine, the precision 'auto' computes in there, and torch's version: what a timing
    depends on."""
    return {"machine": machine_description(device), "precision": computed_in("auto", device),
            "torch": torch.__version__}
