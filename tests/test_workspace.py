"""The one call that turns a notebook's common parameters into its folder, device and
settings."""
from __future__ import annotations

import pytest

from apl_core.workspace import workspace


def test_workspace_creates_the_output_folder_and_resolves_the_device(tmp_path):
    out, hardware, settings = workspace(tmp_path / "a" / "figures", data_dir="d",
                                        runs_dir="r", device="cpu")
    assert out == tmp_path / "a" / "figures" and out.is_dir()
    assert hardware == "cpu"
    assert settings == {"data_dir": "d", "runs_dir": "r", "device": "cpu"}


def test_workspace_keeps_auto_in_the_settings_and_resolves_it_for_the_cells(tmp_path):
    _, hardware, settings = workspace(tmp_path, data_dir="d", runs_dir="r")
    assert settings["device"] == "auto" and hardware in ("cpu", "cuda")


def test_an_unavailable_device_fails_before_any_folder_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available here"):
        workspace(tmp_path / "never", data_dir="d", runs_dir="r", device="cuda")
    assert not (tmp_path / "never").exists()
