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
