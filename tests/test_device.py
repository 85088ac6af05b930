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
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert device.autocast_dtype("auto", cuda) == torch.float16
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
