"""A notebook's two ends: `setup` turns its parameters into its folder, device and pretraining;
`record` writes what it measured."""
from __future__ import annotations

import json

import pytest

from apl_core import train, workspace
from apl_core.config import profile_config
from apl_core.workspace import profile_pretrain_run, setup


def test_setup_creates_the_output_folder_and_resolves_the_device(tmp_path):
    nb = setup("01_x", "smoke", tmp_path / "a" / "figures", data_dir="d", runs_dir="r",
               device="cpu")
    assert nb.out == tmp_path / "a" / "figures" and nb.out.is_dir()
    assert nb.device == "cpu" and nb.name == "01_x" and nb.profile == "smoke"
    assert nb.settings == {"data_dir": "d", "runs_dir": "r", "device": "cpu"}
    assert nb.pretrain_run == "" and nb.model is None


def test_setup_keeps_auto_in_the_settings_and_resolves_it_for_the_cells(tmp_path):
    nb = setup("01_x", "smoke", tmp_path, data_dir="d", runs_dir="r")
    assert nb.settings["device"] == "auto" and nb.config.device == "auto"
    assert nb.device in ("cpu", "cuda")


def test_an_unavailable_device_fails_before_any_folder_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available here"):
        setup("01_x", "smoke", tmp_path / "never", data_dir="d", runs_dir="r", device="cuda")
    assert not (tmp_path / "never").exists()


def test_the_config_is_the_profiles_with_the_overrides_and_epochs_0_is_the_profiles(tmp_path):
    settings = {"data_dir": "d", "runs_dir": "r", "device": "cpu"}
    nb = setup("02_x", "smoke", tmp_path, **settings, overrides={"seed": 3, "epochs": 0})
    assert nb.config == profile_config("smoke", "pretrain", seed=3, **settings)
    nb = setup("02_x", "smoke", tmp_path, **settings, overrides={"epochs": 5, "run_name": "a"})
    assert (nb.config.epochs, nb.config.run_name) == (5, "a")


def test_epochs_done_counts_the_epochs_the_run_has_checkpointed(tmp_path):
    nb = setup("02_x", "smoke", tmp_path / "out", data_dir="d", runs_dir=tmp_path / "runs",
               device="cpu", overrides={"run_name": "mine"})
    run_dir = tmp_path / "runs" / "pretrain" / "mine"
    assert nb.epochs_done() == 0  # no run yet
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    assert nb.epochs_done() == 0  # metrics without a checkpoint: nothing to read back
    (run_dir / "last.pt").write_bytes(b"")
    assert nb.epochs_done() == 2


def test_an_analysing_notebook_gets_the_given_run_its_config_and_model(tmp_path,
                                                                     pretrained_run):
    nb = setup("03_x", "smoke", tmp_path, data_dir="d", runs_dir="r", device="cpu",
               pretrain_run=str(pretrained_run.run_dir))
    assert nb.pretrain_run == str(pretrained_run.run_dir)
    assert nb.config == pretrained_run.config
    assert not nb.model.training and nb.model.transformer.grid == pretrained_run.config.grid


@pytest.mark.parametrize("recorded_profile, found", [("smoke", "recorded"), ("quick", "own")])
def test_notebook_02s_record_is_used_only_for_its_own_profile(tmp_path, monkeypatch,
                                                             recorded_profile, found):
    asked = []

    def profile_pretrain_run(profile, pretrain_run, summary, **settings):
        asked.append((profile, pretrain_run, summary, settings))
        return "the run"

    monkeypatch.setattr(workspace, "profile_pretrain_run", profile_pretrain_run)
    monkeypatch.setattr(workspace, "load_pretrained", lambda run, runs_dir, device:
                        ("model", profile_config("smoke", "pretrain")))
    record = tmp_path / "02_pretraining.json"
    record.write_text(json.dumps({"profile": recorded_profile, "run_dir": "x"}))
    nb = setup("03_x", "smoke", tmp_path, data_dir="d", runs_dir="r", device="cpu",
               pretrain_run="")
    settings = {"data_dir": "d", "runs_dir": "r", "device": "cpu"}
    assert asked == [("smoke", "", record if found == "recorded" else None, settings)]
    assert (nb.pretrain_run, nb.model) == ("the run", "model")


def test_the_pretrain_run_to_analyse_is_the_given_one_then_02s_then_the_profiles(
        pretrained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a finished run trained"))
    settings = dict(runs_dir=str(pretrained_run.run_dir.parents[1]), device="cpu",
                    precision="fp32", epochs=4, knn_every=2)  # the pretrained_run fixture's
    summary = tmp_path / "02_pretraining.json"
    assert profile_pretrain_run("smoke", "runs/given", summary, **settings) == "runs/given"
    assert profile_pretrain_run("smoke", summary=summary, **settings) == \
        str(pretrained_run.run_dir)  # no summary yet: the profile's run, read back
    summary.write_text(json.dumps({"run_dir": "runs/of-02"}))
    assert profile_pretrain_run("smoke", summary=summary, **settings) == "runs/of-02"
    assert profile_pretrain_run("smoke", **settings) == str(pretrained_run.run_dir)


def test_fine_tuning_reads_notebook_04s_results_or_names_the_notebook_to_run(tmp_path):
    nb = setup("05_x", "smoke", tmp_path, data_dir="d", runs_dir="r", device="cpu")
    with pytest.raises(FileNotFoundError, match="run notebook 04_fine_tuning first .*"
                                                 "course --profile smoke"):
        nb.fine_tuning()
    assert nb.fine_tuning(required=False) is None
    (tmp_path / "04_fine_tuning.json").write_text('{"rows": [1]}')
    assert nb.fine_tuning() == {"rows": [1]}
    other = tmp_path / "elsewhere.json"
    other.write_text('{"rows": [2]}')
    assert nb.fine_tuning(other, required=False) == {"rows": [2]}


def test_record_writes_the_results_and_their_copies(tmp_path, capsys):
    nb = setup("05_x", "smoke", tmp_path / "out", data_dir="d", runs_dir="r", device="cpu")
    path = nb.record({"a": 1}, tmp_path / "copy.json")
    assert path == tmp_path / "out" / "05_x.json"
    for written in (path, tmp_path / "copy.json"):
        assert written.read_text() == '{\n  "a": 1\n}'  # indented, readable in a diff
    assert capsys.readouterr().out == f"results written to {path.resolve()}\n"
