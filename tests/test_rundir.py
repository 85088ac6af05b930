"""Run directories: a run's name says what it computes, a run is never started over another or
resumed from nothing, and what a run writes there (config.json, metrics.jsonl, TensorBoard
scalars) holds exactly the epochs of its checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from apl_core.checkpoint import read_checkpoint, save_checkpoint
from apl_core.config import PretrainConfig, profile_config
from apl_core.rundir import (
    RunLog, last_evaluation, open_run, read_metrics, run_name, train_seconds,
)
from conftest import SMOKE_ARCHITECTURE, smoke_finetune_config, smoke_pretrain_config


def readable(config) -> str:
    """The run name without its digest."""
    name, digest = run_name(config).rsplit("-", 1)
    assert len(digest) == 8 and int(digest, 16) >= 0
    return name


def test_run_names_of_the_smoke_profile_are_stable():
    """Finished runs are found again by name (the notebooks' cache): the name of the same
    settings never changes."""
    assert run_name(smoke_pretrain_config("runs")) == \
        "synthetic32-G4K1-flatten-b2h3m2-n1024-do0.15-pdo0.1-lr0.002-bs64-e3-s0-c0c4a68a"
    assert run_name(smoke_finetune_config("runs")) == \
        "synthetic32-benchmark-npc10-do0.1-pdo0.1-lr0.001-wd0.0001-bs64-e2-s0-b8bcb996"
    assert run_name(smoke_finetune_config("runs", pretrained="runs/pretrain/a-run")) == \
        "synthetic32-from-a-run-npc10-do0.1-pdo0.1-lr0.001-wd0.0001-bs64-e2-s0-3c98d6d4"


def test_the_pretext_field_leaves_the_apl_run_names_as_they_were():
    """The quick profile's APL pretraining in bf16 (the small-data study's, trained before the
    field existed) is found again under this name (the notebooks' cache). Another task names
    itself and has its own digest."""
    config = profile_config("quick", "pretrain", precision="bf16")
    assert run_name(config) == ("synthetic48-G4K1-flatten-b4h3m3-n12500-do0.15-pdo0.1-lr0.001-"
                                "bs128-e12-s0-f8535d4c")
    other = run_name(config.replace(pretext="mp3"))
    assert other.startswith("synthetic48-G4K1-flatten-b4h3m3-mp3-n12500-")
    assert other.rsplit("-", 1)[1] != run_name(config).rsplit("-", 1)[1]


def test_pretraining_run_name_shows_the_settings_that_differ():
    base = smoke_pretrain_config("runs")
    assert readable(base.replace(mlp_head=True, num_images=0, optimizer="adamw",
                                 weight_decay=0.05, lr=1e-5, seed=3)) == \
        "synthetic32-G4K1-flatten-b2h3m2-mlphead-do0.15-pdo0.1-adamw-lr1e-05-wd0.05-bs64-e3-s3"


def test_finetuning_run_name_shows_the_model_its_source_and_its_options(tmp_path):
    base = smoke_finetune_config("runs", weight_decay=0.0)
    assert readable(base.replace(model="s-cnn")) == "synthetic32-s-cnn-npc10-lr0.001-bs64-e2-s0"
    tuned = base.replace(pretrained=str(tmp_path / "pretrain" / "a-run" / "last.pt"),
                         positional_embedding=True, head_only=True, freeze_encoder=True,
                         mlp_head=True, npc=20)
    assert readable(tuned) == ("synthetic32-from-a-run-posemb-probe-frozenenc-mlphead-npc20-"
                               "do0.1-pdo0.1-lr0.001-bs64-e2-s0")
    assert readable(base.replace(pretrained="a-run")) == \
        "synthetic32-from-a-run-npc10-do0.1-pdo0.1-lr0.001-bs64-e2-s0"
    small_data = dict(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0)
    assert readable(base.replace(**small_data, augment_policy="randaugment", drop_path=0.1)) == (
        "synthetic32-benchmark-npc10-ls0.1-mixup0.8-cutmix1-dpath0.1-randaugment-do0.1-pdo0.1-"
        "lr0.001-bs64-e2-s0")
    assert readable(base.replace(model="s-cnn", cutmix_alpha=1.0,
                                 augment_policy="trivialaugment")) == \
        "synthetic32-s-cnn-npc10-cutmix1-trivialaugment-lr0.001-bs64-e2-s0"


def test_run_name_changes_with_every_setting_that_changes_the_result(tmp_path):
    pretrained = tmp_path / "pretrain" / "a-run"
    base = smoke_finetune_config("runs", pretrained=str(pretrained))
    name = run_name(base)
    for change in (dict(test_per_class=7), dict(val_per_class=3), dict(crop_scale=0.5),
                   dict(label_seed=1), dict(warmup_frac=0.2), dict(select_best=True,
                   val_per_class=3), dict(architecture={**SMOKE_ARCHITECTURE, "heads": 1}),
                   dict(pretrained=str(tmp_path / "pretrain" / "b-run")),
                   dict(label_smoothing=0.1), dict(mixup_alpha=0.8), dict(cutmix_alpha=1.0),
                   dict(augment_policy="trivialaugment"), dict(drop_path=0.1)):
        assert run_name(base.replace(**change)) != name, change
    for same in (dict(device="cuda"), dict(runs_dir="elsewhere"), dict(quiet=False),
                 dict(compile=True), dict(pretrained=str(pretrained / "last.pt")),
                 dict(pretrained="a-run")):
        assert run_name(base.replace(**same)) == name, same


def test_snapshots_do_not_change_a_pretraining_runs_name():
    base = smoke_pretrain_config("runs")
    assert run_name(base.replace(snapshot_every=2)) == run_name(base)
    assert run_name(base.replace(knn_every=2)) != run_name(base)


def test_the_data_folder_names_a_run_only_when_images_are_read_from_it():
    synthetic = smoke_pretrain_config("runs")
    assert run_name(synthetic.replace(data_dir="elsewhere")) == run_name(synthetic)
    folder = smoke_pretrain_config("runs", dataset="folder", data_dir="photos")
    assert run_name(folder.replace(data_dir="other-photos")) != run_name(folder)


def test_a_given_run_name_is_used_as_is():
    assert run_name(smoke_pretrain_config("runs", run_name="mine")) == "mine"


def test_benchmark_run_name_depends_on_its_architecture():
    small = smoke_finetune_config("runs", architecture=SMOKE_ARCHITECTURE)
    wider = small.replace(architecture={**SMOKE_ARCHITECTURE, "blocks": 3})
    assert run_name(small) != run_name(wider)


# ---------------------------------------------------------------- open_run

def write_run(config, precision=None, **saved) -> dict:
    """A run of `config` with a checkpoint after epoch 1 (no training needed to open it),
    computed in `precision` (None: a checkpoint that does not say)."""
    checkpoint = {"phase": config.phase, "epoch": 1, "model": {},
                  "config": {**config.to_dict(), **saved},
                  **({"precision": precision} if precision else {})}
    run_dir = Path(config.runs_dir) / config.phase / config.run_name
    run_dir.mkdir(parents=True)
    save_checkpoint(checkpoint, run_dir / "last.pt")
    return checkpoint


def test_a_new_run_is_opened_with_its_name_filled_in(tmp_path):
    config = smoke_pretrain_config(tmp_path)
    for resume in (False, "auto"):
        opened, run_dir, checkpoint = open_run(config, resume)
        assert opened == config.replace(run_name=run_name(config))  # config.json names its run
        assert run_dir == tmp_path / "pretrain" / run_name(config) and checkpoint is None


def test_resume_must_be_false_true_or_auto(tmp_path):
    with pytest.raises(ValueError, match="^resume='yes' is invalid: use False, True or 'auto'$"):
        open_run(smoke_pretrain_config(tmp_path), "yes")


def test_a_new_run_over_an_existing_one_says_how_to_continue_it(tmp_path):
    config = smoke_pretrain_config(tmp_path, run_name="taken")
    write_run(config)
    with pytest.raises(FileExistsError) as error:
        open_run(config, False)
    assert str(error.value) == (
        f"{tmp_path / 'pretrain' / 'taken'} already holds a run; continue it with resume=True "
        f"(--resume) or start another one with a different run_name (--run-name)")


def test_resume_with_nothing_to_resume_lists_the_runs_that_can_be(tmp_path):
    config = smoke_finetune_config(tmp_path, run_name="missing")
    message = (f"nothing to resume: {tmp_path / 'finetune' / 'missing' / 'last.pt'} does not "
               f"exist. Runs with a checkpoint under {tmp_path / 'finetune'}: {{}}; pass their "
               f"run_name (--run-name), or start a new run without resume (--resume)")
    write_run(smoke_pretrain_config(tmp_path, run_name="a-pretraining"))  # not resumable here
    with pytest.raises(FileNotFoundError) as error:
        open_run(config, True)
    assert str(error.value) == message.format("none")
    write_run(config.replace(run_name="other"))
    with pytest.raises(FileNotFoundError) as error:
        open_run(config, True)
    assert str(error.value) == message.format("['other']")


def test_resume_returns_the_checkpoint_and_names_the_changed_settings(tmp_path, capsys):
    config = smoke_pretrain_config(tmp_path, run_name="run", quiet=False)
    # a setting this version no longer has is not a change
    saved = write_run(config, epochs=2, lr=0.01, retired_setting=1)
    for resume in (True, "auto"):
        opened, run_dir, checkpoint = open_run(config, resume)
        assert (opened, run_dir) == (config, tmp_path / "pretrain" / "run")
        assert checkpoint["config"] == saved["config"] and checkpoint["epoch"] == 1
        assert capsys.readouterr().out == (
            f"resuming {run_dir} with changed settings: epochs 2 -> 3, lr 0.01 -> 0.002\n")
    open_run(config.replace(quiet=True), True)
    assert capsys.readouterr().out == ""
    open_run(config.replace(epochs=2, lr=0.01), True)
    assert capsys.readouterr().out == ""  # nothing changed
    # another device, thread count or folder of rendered images computes the same run
    open_run(config.replace(epochs=2, lr=0.01, device="auto", data_dir="elsewhere"), True)
    assert capsys.readouterr().out == ""
    open_run(config.replace(epochs=2, lr=0.01, dataset="stl10", data_dir="elsewhere"), True)
    assert capsys.readouterr().out == (f"resuming {run_dir} with changed settings: dataset "
                                       f"'synthetic' -> 'stl10'\n")


def test_a_run_is_not_resumed_in_another_precision_than_it_computed_in(tmp_path,
                                                                        monkeypatch):
    """A run named by hand (the name then digests nothing) that computed in bf16 on one CPU
    is refused on a CPU where 'auto' computes in fp32, and resumed where it is bf16 again."""
    from apl_core import device

    config = smoke_pretrain_config(tmp_path, run_name="run", precision="auto")
    write_run(config, precision="bf16")
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(ValueError) as error:
        open_run(config, "auto")
    assert str(error.value) == (
        f"{tmp_path / 'pretrain' / 'run'} computed in bf16 and would resume in fp32 here "
        f"(precision='auto' on device='cpu'): one run would mix the two. Resume it on a "
        f"machine that computes in bf16, or start another run (another run_name)")
    with pytest.raises(ValueError, match="computed in bf16 and would resume in fp32"):
        open_run(config.replace(precision="fp32"), True)
    assert open_run(config.replace(precision="bf16"), True)[2]["precision"] == "bf16"
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert open_run(config, True)[2]["epoch"] == 1
    write_run(config.replace(run_name="older"))  # a checkpoint that does not say: resumed
    assert open_run(config.replace(run_name="older", precision="fp32"), True)[2]["epoch"] == 1


def test_a_run_name_digests_the_precision_computed_not_auto(monkeypatch):
    """'auto' is bf16 on a CPU with fast bf16 and fp32 on another: the two runs of one
    config never share a name; each is named as the precision it computes in."""
    from apl_core import device

    auto = smoke_finetune_config("runs", precision="auto")
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    on_bf16 = run_name(auto)
    assert on_bf16 == run_name(auto.replace(precision="bf16"))
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    on_fp32 = run_name(auto)
    assert on_fp32 == run_name(auto.replace(precision="fp32")) != on_bf16
    assert on_fp32.rsplit("-", 1)[0] == on_bf16.rsplit("-", 1)[0]  # only the digest differs
    # an explicit precision names the same run on any machine, also without its device here
    assert run_name(auto.replace(precision="bf16", device="cuda")) == on_bf16


def test_a_checkpoint_records_the_precision_its_run_computed_in(tmp_path):
    from apl_core.train import pretrain

    config = smoke_pretrain_config(tmp_path, epochs=1, num_images=96, holdout_images=32,
                                   batch_size=32)
    result = pretrain(config)
    assert read_checkpoint(result.checkpoint)["precision"] == "fp32"
    assert read_checkpoint(result.run_dir / "last.pt")["config"]["precision"] == "fp32"


# ---------------------------------------------------------------- metrics

def test_read_metrics_skips_a_line_cut_short_by_a_kill(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "lo\n{"epoch": 3}\n')
    assert read_metrics(tmp_path) == [{"epoch": 1}, {"epoch": 3}]


def test_a_runs_seconds_are_the_sum_of_its_epochs_times():
    rows = [{"epoch": 1, "epoch_time_s": 1.5}, {"epoch": 2, "epoch_time_s": 2.0}]
    assert train_seconds(rows) == 3.5
    assert train_seconds([]) == 0


def test_the_last_evaluation_is_the_last_row_with_a_test_score():
    rows = [{"epoch": 1, "test_top1": 0.5}, {"epoch": 2, "test_top1": 0.6},
            {"epoch": 3, "test_top1": 0.4}, {"epoch": 4}]
    assert last_evaluation(rows, "run") == {"epoch": 3, "test_top1": 0.4}
    with pytest.raises(ValueError, match="^runs/x has no test evaluation in metrics.jsonl: the "
                                         "run did not finish; rerun notebook 04 to complete it$"):
        last_evaluation([{"epoch": 1}], "runs/x")


def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    """What TensorBoard shows for `tag`: (epoch, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    return [(event.step, pytest.approx(event.value)) for event in events.Scalars(tag)]


def test_run_log_writes_the_config_and_one_row_per_epoch_as_it_goes(tmp_path):
    run_dir = tmp_path / "pretrain" / "run"
    config = smoke_pretrain_config(tmp_path)
    log = RunLog(run_dir, config, [])
    text = (run_dir / "config.json").read_text()
    assert PretrainConfig.from_dict(json.loads(text)) == config
    assert '  "lr": 0.002,' in text.splitlines() and text.endswith("}\n")  # one setting a line
    row = {"epoch": 1, "step": 12, "lr": 0.002, "train_loss": 2.5, "val_correct": "0f3"}
    log.add(row)
    assert read_metrics(run_dir) == [row]  # on disk before the run ends (a kill keeps it)
    assert scalars(run_dir, "train_loss") == [(1, 2.5)] and scalars(run_dir, "lr") == [(1, 0.002)]
    assert scalars(run_dir, "epoch") == scalars(run_dir, "step") == []
    assert scalars(run_dir, "val_correct") == []  # a mask of images is no scalar
    log.close()


def test_a_resumed_run_log_holds_only_the_checkpoints_epochs(tmp_path):
    run_dir = tmp_path / "run"
    config = smoke_pretrain_config(tmp_path)
    rows = [{"epoch": epoch, "step": 12 * epoch, "train_loss": 3.0 - epoch} for epoch in (1, 2, 3)]
    log = RunLog(run_dir, config, [])
    for row in rows:
        log.add(row)
    log.close()
    # killed after saving epoch 2's checkpoint, with epoch 3 logged since
    resumed_row = {"epoch": 3, "step": 36, "train_loss": 0.5}
    log = RunLog(run_dir, config, rows[:2])
    assert read_metrics(run_dir) == rows[:2]
    log.add(resumed_row)
    log.close()
    assert read_metrics(run_dir) == [*rows[:2], resumed_row]
    assert scalars(run_dir, "train_loss") == [(1, 2.0), (2, 1.0), (3, 0.5)]
