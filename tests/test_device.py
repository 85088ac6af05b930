"""Device and precision: which autocast dtype each precision setting takes where."""
from __future__ import annotations

import pytest
import torch

from apl_core import device


def test_precision_choice(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert device.autocast_dtype("auto", cpu) is None
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert device.autocast_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(device, "cuda_has_native_bf16", lambda gpu: False)
    assert device.autocast_dtype("auto", cuda) == torch.float16
    assert device.autocast_dtype("bf16", cuda) == torch.bfloat16  # asked for: given
    assert device.autocast_dtype("fp32", cuda) is None
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        device.autocast_dtype("fp16", cpu)


def test_a_timing_names_the_precision_auto_computes_in(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    measured = device.measured_on("cpu")
    assert measured["precision"] == "fp32" and measured["torch"] == torch.__version__
    assert measured["machine"] == device.machine_description("cpu")
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert device.measured_on("cpu")["precision"] == "bf16"
    assert device.computed_in("fp32", "cpu") == "fp32"  # a pinned precision stays as it is


@pytest.mark.parametrize("gpu, capability, rocm, computes_in", [
    ("T4", (7, 5), None, "fp16"),  # bf16 only emulated, though is_bf16_supported() says yes
    ("V100", (7, 0), None, "fp16"),
    ("A100", (8, 0), None, "bf16"),
    ("H100", (9, 0), None, "bf16"),
    ("MI300X", (9, 4), "6.4", "bf16"),  # ROCm
])
def test_auto_precision_on_a_gpu_takes_bf16_only_where_it_is_native(
        gpu, capability, rocm, computes_in, monkeypatch):
    asked = []

    def get_device_capability(index=None):
        asked.append(index)
        return capability

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    monkeypatch.setattr(torch.version, "hip", rocm)
    assert device.computed_in("auto", "cuda:1") == computes_in, gpu
    if rocm is None:  # the capability of the run's own GPU, not of the current one
        assert asked == [torch.device("cuda:1")]
