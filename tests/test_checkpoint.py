"""Checkpoints are written atomically, read with weights_only=True, and fail clearly."""
from __future__ import annotations

import pytest
import torch

import apl_core.checkpoint as checkpoint
from apl_core.checkpoint import (
    CheckpointError, check_architecture, list_runs, load_checkpoint, load_phase_checkpoint,
    pretrain_architecture, read_checkpoint, resolve_checkpoint, restore_rng_state, rng_state,
    save_checkpoint, write_atomic,
)
from apl_core.config import PretrainConfig


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


def make_dir(path):
    path.mkdir(parents=True)
    return path


def test_write_atomic_writes_text_and_leaves_no_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "notes.txt"
    write_atomic(path, "first\n")
    assert path.read_text() == "first\n"

    def fails(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "new.txt", fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_checkpoint_written_on_a_gpu_loads_on_a_cpu_only_machine(tmp_path, monkeypatch):
    # torch.save tags each tensor with its device; tag them CUDA, as a GPU run writes them
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    save_checkpoint(state(3.0), tmp_path / "last.pt")
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    weights = read_checkpoint(tmp_path / "last.pt")["model"]["w"]
    assert weights.device.type == "cpu" and weights[0, 0] == 3.0


def test_a_file_that_is_not_a_checkpoint_is_named_in_the_error(tmp_path):
    for name, content in (("weights.pt", {"w": torch.ones(1)}), ("no-model.pt", {"phase": "x"}),
                          ("no-phase.pt", {"model": {}}), ("tensor.pt", torch.ones(1))):
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name} is not an apl_core checkpoint"):
            read_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")


def test_truncated_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(state(1.0), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{path}.*truncated or corrupted"):
        read_checkpoint(path)


def test_a_damaged_pickle_is_called_damaged_not_dangerous(tmp_path):
    """Random bytes are a broken file, not an attack: the error says to delete it."""
    path = tmp_path / "last.pt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match=f"{path}: its pickle is damaged. Delete it") as err:
        read_checkpoint(path)
    assert "could run code" not in str(err.value)


def test_resolve_by_path_run_directory_or_name(tmp_path):
    run = tmp_path / "pretrain" / "my-run"
    run.mkdir(parents=True)
    save_checkpoint(state(1.0), run / "last.pt")
    assert resolve_checkpoint(run / "last.pt") == run / "last.pt"
    assert resolve_checkpoint(run) == run / "last.pt"
    assert resolve_checkpoint("my-run", runs_dir=tmp_path) == run / "last.pt"
    with pytest.raises(FileNotFoundError, match=r"no-run.*my-run.*ls "):
        load_checkpoint("no-run", runs_dir=tmp_path)


def test_resolve_a_run_directory_outside_the_runs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths, as typed on the command line
    save_checkpoint(state(1.0), make_dir(tmp_path / "elsewhere" / "run") / "last.pt")
    assert resolve_checkpoint("elsewhere/run").resolve() == tmp_path / "elsewhere/run/last.pt"


def test_defaults_look_under_runs_pretrain_of_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(state(1.0), make_dir(tmp_path / "runs" / "pretrain" / "a") / "last.pt")
    make_dir(tmp_path / "runs" / "pretrain" / "unfinished")  # no last.pt: not a run to load
    assert list_runs() == ["a"]
    assert resolve_checkpoint("a").resolve() == tmp_path / "runs/pretrain/a/last.pt"
    assert load_checkpoint("a")["phase"] == "pretrain"
    assert load_phase_checkpoint("a", "pretrain")["phase"] == "pretrain"


def test_finetune_runs_are_found_under_their_own_phase(tmp_path):
    for name in ("b", "a"):
        save_checkpoint({**state(1.0), "phase": "finetune"},
                        make_dir(tmp_path / "finetune" / name) / "last.pt")
    assert list_runs(tmp_path, "finetune") == ["a", "b"] and list_runs(tmp_path) == []
    assert load_checkpoint("b", tmp_path, "finetune")["epoch"] == 1
    assert load_phase_checkpoint("b", "finetune", tmp_path)["phase"] == "finetune"
    with pytest.raises(FileNotFoundError, match=r"finetune: \['a', 'b'\]"):
        resolve_checkpoint("c", tmp_path, "finetune")


def test_missing_checkpoint_error_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        resolve_checkpoint("gone", "runs")
    message = str(error.value)
    assert message.startswith("no checkpoint found for 'gone'")
    places = ("gone", "gone/last.pt", "runs/pretrain/gone/last.pt")
    assert "looked at " + ", ".join(places) in message
    assert "runs/pretrain: none" in message and "ls runs/pretrain" in message


def test_architecture_mismatch_names_every_field():
    check_architecture({"grid": 4, "heads": 3}, {"grid": 4, "heads": 3}, "x.pt")
    with pytest.raises(ValueError, match="x.pt holds another architecture .grid: checkpoint has "
                                         "4, config asks for 7; heads: checkpoint has 3"):
        check_architecture({"grid": 4, "heads": 3}, {"grid": 7, "heads": 16}, "x.pt")


# ---------------------------------------------------------------- random generator states

def test_a_checkpoint_loads_only_as_its_own_phase(tmp_path):
    save_checkpoint(state(1.0), tmp_path / "pretrained.pt")
    assert load_phase_checkpoint(tmp_path / "pretrained.pt", "pretrain")["phase"] == "pretrain"
    save_checkpoint({**state(1.0), "phase": "finetune"}, tmp_path / "finetuned.pt")
    with pytest.raises(ValueError, match="finetuned.pt' is a finetune checkpoint, not a "
                                         "pretraining one; give a pretraining run"):
        load_phase_checkpoint(tmp_path / "finetuned.pt", "pretrain")
    with pytest.raises(ValueError, match="pretrained.pt' is a pretrain checkpoint, not a "
                                         "fine-tuning one; give a fine-tuning run"):
        load_phase_checkpoint(tmp_path / "pretrained.pt", "finetune")


def test_restoring_the_rng_state_repeats_the_random_draws(tmp_path):
    save_checkpoint({**state(1.0), "rng": rng_state()}, tmp_path / "last.pt")
    first = torch.rand(8), torch.randint(0, 1000, (8,))
    restore_rng_state(read_checkpoint(tmp_path / "last.pt")["rng"])
    again = torch.rand(8), torch.randint(0, 1000, (8,))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


class FakeCuda:
    """The torch.cuda generator functions of a machine with two GPUs, or with none."""

    def __init__(self, monkeypatch, gpus: int):
        self.states = [torch.full((4,), i, dtype=torch.uint8) for i in range(gpus)]
        self.restored = None
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: self.states)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_rng_state_all)

    def set_rng_state_all(self, states):
        self.restored = states


def test_rng_state_keeps_every_gpu_generator(monkeypatch):
    gpus = FakeCuda(monkeypatch, gpus=2)
    saved = rng_state()
    assert saved["cuda"] == gpus.states
    restore_rng_state(saved)
    assert gpus.restored == gpus.states


def test_a_gpu_run_resumes_on_a_cpu_and_a_cpu_run_on_a_gpu(monkeypatch):
    gpu_state = rng_state() | {"cuda": FakeCuda(monkeypatch, gpus=2).states}
    cpu = FakeCuda(monkeypatch, gpus=0)
    assert rng_state()["cuda"] == []
    restore_rng_state(gpu_state)  # no GPU to restore to: the CPU generator only
    assert cpu.restored is None
    cpu_state = rng_state()
    gpu = FakeCuda(monkeypatch, gpus=2)
    restore_rng_state(cpu_state)  # nothing saved for the GPUs: theirs stay as they are
    assert gpu.restored is None


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


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(tmp_path, capsys):
    from apl_core.cli import main
    from apl_core.train import finetune, pretrain
    from conftest import smoke_finetune_config, smoke_pretrain_config

    marker = tmp_path / "code_ran"
    path = malicious_checkpoint(tmp_path / "runs" / "pretrain" / "evil", marker)
    with pytest.raises(CheckpointError, match="refused to load .*could run code"):
        read_checkpoint(path)
    config = smoke_pretrain_config(tmp_path / "runs", run_name="evil")
    with pytest.raises(CheckpointError, match="refused"):
        pretrain(config, resume=True)
    with pytest.raises(CheckpointError, match="refused"):
        finetune(smoke_finetune_config(tmp_path / "ft", pretrained=str(path)))
    for argv in (["pretrain", "--profile", "smoke", "--device", "cpu",
                  "--runs-dir", str(tmp_path / "runs"), "--run-name", "evil", "--resume"],
                 ["finetune", "--profile", "smoke", "--pretrained", str(path),
                  "--runs-dir", str(tmp_path / "ft2")]):
        assert main(argv) == 2
        assert "refused to load" in capsys.readouterr().err
    assert not marker.exists(), "loading the checkpoint ran its code"
    torch.load(path, weights_only=False)  # the control: an unsafe load does run it
    assert marker.exists()


def test_pretrain_architecture_is_what_the_weights_fit():
    """The image size and the architecture fields, not the recipe (lr, dropout, ...)."""
    config = PretrainConfig(image_size=32, grid=4, crop=1, heads=3, blocks=2, hidden_mult=2,
                            attention_scale="original", mlp_head=True, lr=1e-2,
                            dropout=0.3)
    assert pretrain_architecture(config) == {
        "image_size": 32, "grid": 4, "crop": 1, "encoder": "flatten", "blocks": 2, "heads": 3,
        "hidden_mult": 2, "attention_scale": "original", "positional_embedding": False,
        "mlp_head": True}
