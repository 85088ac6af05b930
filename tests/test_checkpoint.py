"""Checkpoints are written atomically, read with weights_only=True, and fail clearly."""
from __future__ import annotations

import pytest
import torch

import apl_core.checkpoint as checkpoint
from apl_core.checkpoint import (
    CheckpointError, check_architecture, load_checkpoint, read_checkpoint, resolve_checkpoint,
    save_checkpoint,
)


def state(value: float) -> dict:
    return {"phase": "pretrain", "epoch": 1, "config": {"lr": 1e-3}, "architecture": {"grid": 4},
            "model": {"w": torch.full((256, 256), value)}, "rng": {"torch": torch.get_rng_state()}}


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(state(1.0), path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["model"]["w"], state(1.0)["model"]["w"])
    assert loaded["config"] == {"lr": 1e-3}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_crash_during_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(state(1.0), path)
    real_save = torch.save

    def crash_half_way(obj, file):
        real_save(obj, file)
        file.truncate(file.tell() // 2)
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(checkpoint.torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(state(2.0), path)
    monkeypatch.undo()
    assert read_checkpoint(path)["model"]["w"][0, 0] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(state(1.0), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{path}.*truncated or corrupted"):
        read_checkpoint(path)


def test_resolve_by_path_run_directory_or_name(tmp_path):
    run = tmp_path / "pretrain" / "my-run"
    run.mkdir(parents=True)
    save_checkpoint(state(1.0), run / "last.pt")
    assert resolve_checkpoint(run / "last.pt") == run / "last.pt"
    assert resolve_checkpoint(run) == run / "last.pt"
    assert resolve_checkpoint("my-run", runs_dir=tmp_path) == run / "last.pt"
    with pytest.raises(FileNotFoundError, match=r"no-run.*my-run.*ls "):
        load_checkpoint("no-run", runs_dir=tmp_path)


def test_architecture_mismatch_names_every_field():
    check_architecture({"grid": 4, "heads": 3}, {"grid": 4, "heads": 3}, "x.pt")
    with pytest.raises(ValueError, match="grid: checkpoint has 4.*heads: checkpoint has 3"):
        check_architecture({"grid": 4, "heads": 3}, {"grid": 7, "heads": 16}, "x.pt")


class _CreatesMarker:
    """Unpickling this object would create a file: what a malicious checkpoint could do."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(run_dir, marker):
    """A real-looking last.pt whose pickle would run code (open a file) when loaded."""
    evil = _CreatesMarker()
    evil.marker = str(marker)
    run_dir.mkdir(parents=True)
    bad = {**state(1.0), "phase": "pretrain", "metrics": [], "payload": evil}
    torch.save(bad, run_dir / "last.pt")  # plain torch.save: pickles the object
    return run_dir / "last.pt"


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(tmp_path, pretrained_run,
                                                                 capsys):
    from apl_core.cli import main
    from apl_core.train import finetune, pretrain

    marker = tmp_path / "code_ran"
    path = malicious_checkpoint(tmp_path / "runs" / "pretrain" / "evil", marker)
    with pytest.raises(CheckpointError, match="refused to load .*could run code"):
        read_checkpoint(path)
    config = pretrained_run.config.replace(runs_dir=str(tmp_path / "runs"), run_name="evil")
    with pytest.raises(CheckpointError, match="refused"):
        pretrain(config, resume=True)
    from conftest import smoke_finetune_config

    with pytest.raises(CheckpointError, match="refused"):
        finetune(smoke_finetune_config(tmp_path / "ft", pretrained=str(path)))
    for argv in (["pretrain", "--config", str(pretrained_run.run_dir / "config.json"),
                  "--runs-dir", str(tmp_path / "runs"), "--run-name", "evil", "--resume"],
                 ["finetune", "--profile", "smoke", "--pretrained", str(path),
                  "--runs-dir", str(tmp_path / "ft2")]):
        assert main(argv) == 2
        assert "refused to load" in capsys.readouterr().err
    assert not marker.exists(), "loading the checkpoint ran its code"
    torch.load(path, weights_only=False)  # the control: an unsafe load does run it
    assert marker.exists()
