"""The training engine: it learns, every fine-tuning option runs, resume is exact, and bad
input fails before any work."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

import apl_core.train as train
from apl_core.checkpoint import read_checkpoint, save_checkpoint
from apl_core.config import FinetuneConfig, PretrainConfig
from apl_core.model import build_finetune_model
from apl_core.rundir import read_metrics, run_name
from apl_core.train import finetune, learning_rate, pretrain, profile_pretrain_run
from conftest import SMOKE_ARCHITECTURE, smoke_finetune_config, smoke_pretrain_config

TIMING = ("images_per_s", "epoch_time_s")


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


# ---------------------------------------------------------------- pretraining

def test_pretraining_lowers_loss_and_localizes_positions(pretrained_run):
    rows = pretrained_run.metrics
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    chance = 1 / 16
    assert rows[-1]["val_top1"] > 2.5 * chance
    assert rows[-1]["val_top1"] <= rows[-1]["val_top3"] <= rows[-1]["val_top5"] <= 1
    assert read_metrics(pretrained_run.run_dir) == rows
    assert ["knn_top1" in row for row in rows] == [False, True, False, True]
    assert 0 <= rows[-1]["knn_top1"] <= 1
    run_dir = pretrained_run.run_dir
    assert (run_dir / "config.json").is_file() and (run_dir / "last.pt").is_file()
    assert any((run_dir / "tb").iterdir())
    readable, digest = run_dir.name.rsplit("-", 1)
    assert readable == "synthetic32-G4K1-flatten-b2h3m2-n1024-do0.15-pdo0.1-lr0.002-bs64-e4-s0"
    assert re.fullmatch("[0-9a-f]{8}", digest)
    assert pretrained_run.config.run_name == run_dir.name  # config.json names its own run


def test_last_checkpoint_loads_with_weights_only(pretrained_run):
    state = torch.load(pretrained_run.checkpoint, weights_only=True)
    assert state["phase"] == "pretrain" and state["epoch"] == 4
    assert state["architecture"]["grid"] == 4
    assert PretrainConfig.from_dict(state["config"]) == pretrained_run.config
    assert state["metrics"] == pretrained_run.metrics


def test_auto_resume_returns_a_finished_run_at_once(pretrained_run, monkeypatch):
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a finished run trained"))
    result = pretrain(pretrained_run.config, resume="auto")
    assert result.metrics == pretrained_run.metrics


def test_the_pretrain_run_to_analyse_is_the_given_one_then_02s_then_the_profiles(
        pretrained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a finished run trained"))
    runs_dir = pretrained_run.run_dir.parents[1]
    settings = dict(runs_dir=str(runs_dir), device="cpu", precision="fp32", epochs=4,
                    knn_every=2)  # the settings of the pretrained_run fixture
    summary = tmp_path / "02_pretraining.json"
    assert profile_pretrain_run("smoke", "runs/given", summary, **settings) == "runs/given"
    assert profile_pretrain_run("smoke", "", summary, **settings) == \
        str(pretrained_run.run_dir)  # no summary yet: the profile's run, read back
    summary.write_text(json.dumps({"run_dir": "runs/of-02"}))
    assert profile_pretrain_run("smoke", "", summary, **settings) == "runs/of-02"


def test_new_run_over_an_existing_one_is_refused(pretrained_run):
    with pytest.raises(FileExistsError, match="resume"):
        pretrain(pretrained_run.config)


def test_resume_with_nothing_to_resume(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        pretrain(smoke_pretrain_config(tmp_path), resume=True)


def test_resume_into_another_architecture_names_the_field(pretrained_run):
    other = pretrained_run.config.replace(grid=2, heads=3, run_name=pretrained_run.run_dir.name,
                                          epochs=5)
    with pytest.raises(ValueError, match="grid: checkpoint has 4, config asks for 2"):
        pretrain(other, resume=True)


def test_resume_at_epoch_boundary_matches_uninterrupted_run(tmp_path, monkeypatch):
    config = dict(epochs=3, num_images=512, holdout_images=128, schedule_per_step=True,
                  optimizer="adamw", weight_decay=0.05, grad_clip=0.5)
    whole = pretrain(smoke_pretrain_config(tmp_path / "whole", **config))
    steps = whole.metrics[0]["step"]  # per step: a row reports the rate of its last step
    assert whole.metrics[0]["lr"] == pytest.approx(
        learning_rate((steps - 1) / steps, whole.config))

    saves = []
    real_save = train.save_checkpoint

    def stop_after_second_epoch(state, path):
        real_save(state, path)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt  # the user stops the run right after epoch 2 is saved

    monkeypatch.setattr(train, "save_checkpoint", stop_after_second_epoch)
    interrupted = smoke_pretrain_config(tmp_path / "parts", **config)
    with pytest.raises(KeyboardInterrupt):
        pretrain(interrupted)
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    assert read_checkpoint(tmp_path / "parts" / "pretrain" / run_name(interrupted) / "last.pt")[
        "epoch"] == 2
    resumed = pretrain(interrupted, resume=True)

    assert without_timing(resumed.metrics) == without_timing(whole.metrics)
    whole_weights = read_checkpoint(whole.checkpoint)["model"]
    resumed_weights = read_checkpoint(resumed.checkpoint)["model"]
    assert whole_weights.keys() == resumed_weights.keys()
    for key in whole_weights:
        assert torch.equal(whole_weights[key], resumed_weights[key]), key


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = smoke_pretrain_config(tmp_path, epochs=3, num_images=512, holdout_images=128)
    steps_per_epoch = (512 - 128) // config.batch_size
    real_loss, training_steps = train.position_loss, []

    def loss_that_explodes_in_epoch_two(model, images, labels):
        loss, hits, count = real_loss(model, images, labels)
        training_steps.extend([1] if model.training else [])
        return (loss * math.nan if len(training_steps) > steps_per_epoch else loss), hits, count

    monkeypatch.setattr(train, "position_loss", loss_that_explodes_in_epoch_two)
    with pytest.raises(RuntimeError, match="epoch 2.*lower lr"):
        pretrain(config)
    last = read_checkpoint(tmp_path / "pretrain" / run_name(config) / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in last["model"].values())


# ---------------------------------------------------------------- fine-tuning

FINETUNE_OPTIONS = {
    "full": dict(),
    "head_only": dict(head_only=True),
    "mlp_head": dict(mlp_head=True),
    "freeze_encoder": dict(freeze_encoder=True),
    "dropout": dict(dropout=0.3),
}


@pytest.mark.parametrize("option", FINETUNE_OPTIONS)
def test_finetuning_from_pretrained_run(option, pretrained_run, tmp_path):
    config = smoke_finetune_config(tmp_path, pretrained=str(pretrained_run.checkpoint),
                                   **FINETUNE_OPTIONS[option])
    result = finetune(config)
    rows = result.metrics
    assert [row["epoch"] for row in rows] == [1, 2]
    test_images = 10 * config.test_per_class
    for row in rows:  # eval_every = 1: every epoch is evaluated on the whole test subset
        assert 0 <= row["test_top1"] <= row["test_top3"] <= row["test_top5"] <= 1
        assert math.isfinite(row["test_nll"])
        correct = row["test_top1"] * test_images
        assert abs(correct - round(correct)) < 1e-6  # each test image counted once
    pretrained = read_checkpoint(pretrained_run.checkpoint)["model"]
    tuned = read_checkpoint(result.checkpoint)["model"]
    key = "transformer.blocks.0.attn.qkv.weight"
    assert torch.equal(tuned[key], pretrained[key]) == (option == "head_only")


def test_pretrained_run_by_name(pretrained_run):
    config = smoke_finetune_config(pretrained_run.run_dir.parents[1], epochs=1,
                                   pretrained=pretrained_run.run_dir.name, head_only=True)
    model, architecture = build_finetune_model(config)
    assert architecture["grid"] == 4
    pretrained = read_checkpoint(pretrained_run.checkpoint)["model"]
    assert torch.equal(model.transformer.blocks[0].attn.qkv.weight,
                       pretrained["transformer.blocks.0.attn.qkv.weight"])


def test_positions_added_to_a_pretrained_model_are_new_the_rest_is_loaded(pretrained_run):
    config = smoke_finetune_config(pretrained_run.run_dir.parents[1], epochs=1,
                                   pretrained=pretrained_run.run_dir.name,
                                   positional_embedding=True)
    model, architecture = build_finetune_model(config)
    assert architecture["positional_embedding"]
    pretrained = read_checkpoint(pretrained_run.checkpoint)["model"]
    for name, value in model.transformer.state_dict().items():
        if name != "position_embedding":
            assert torch.equal(value, pretrained["transformer." + name]), name
    assert model.transformer.position_embedding.requires_grad
    assert 0 < model.transformer.position_embedding.std() < 0.05


def test_a_run_without_the_test_set_evaluates_only_validation(tmp_path, monkeypatch):
    """evaluate_test=False (the hyper-parameter search): no test image is scored."""
    scored = []
    evaluate = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda model, loss, loader, *args:
                        scored.append(len(loader.data)) or evaluate(model, loss, loader, *args))
    config = smoke_finetune_config(tmp_path, epochs=2, val_per_class=3, evaluate_test=False,
                                   architecture=SMOKE_ARCHITECTURE)
    rows = finetune(config).metrics
    assert all("val_top1" in row and not any(k.startswith("test") for k in row) for row in rows)
    assert scored == [30, 30]  # the validation part, each epoch; never the 200 test images


def test_from_scratch_models_train_on_the_same_recipe(tmp_path, monkeypatch):
    """BENCHMARK and the CNN baselines: the same optimizer and settings, the same schedule, the
    same loss, and the same labelled images, batch for batch."""
    seen = {}

    def recording(name, original):
        def wrapper(*args, **kwargs):
            seen.setdefault(current, {}).setdefault(name, []).append((args, kwargs))
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(train, "make_optimizer", recording("optimizer", train.make_optimizer))
    monkeypatch.setattr(train, "train_one_epoch", recording("epoch", train.train_one_epoch))
    monkeypatch.setattr(train, "_loader", recording("loader", train._loader))
    results = {}
    for current in ("benchmark", "s-cnn", "s-resnet"):
        options = ({"architecture": SMOKE_ARCHITECTURE} if current == "benchmark"
                   else {"model": current})
        results[current] = finetune(smoke_finetune_config(tmp_path, epochs=3, **options))
    for model, calls in seen.items():
        (params, config, _), _ = calls["optimizer"][0]
        optimizer = train.make_optimizer(params, config, torch.device("cpu"))
        assert isinstance(optimizer, torch.optim.Adam)
        assert optimizer.param_groups[0]["weight_decay"] == config.weight_decay == 1e-4
        assert all(args[1] is train.class_loss for args, _ in calls["epoch"]), model
        rows = results[model].metrics
        assert [r["lr"] for r in rows] == [learning_rate(e, config) for e in range(3)], model
    training_sets = {model: [args[0] for args, kwargs in calls["loader"] if kwargs.get("train")]
                     for model, calls in seen.items()}
    reference = training_sets["benchmark"][0]
    for model, sets in training_sets.items():
        assert len(sets) == 1 and torch.equal(sets[0].images, reference.images), model
        assert torch.equal(sets[0].labels, reference.labels), model


def test_options_freeze_what_they_say():
    config = smoke_finetune_config("unused", architecture={**SMOKE_ARCHITECTURE,
                                                           "encoder": "cnn", "heads": 4})
    model, _ = build_finetune_model(config.replace(freeze_encoder=True))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("transformer.encoder.") for name in frozen)
    model, _ = build_finetune_model(config.replace(head_only=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("class_head.") for name in trainable)
    model, _ = build_finetune_model(config.replace(dropout=0.3, patch_dropout=0.2))
    assert {m.p for m in model.transformer.blocks.modules() if isinstance(m, nn.Dropout)} == {0.3}
    assert model.transformer.patch_dropout.p == 0.2


def test_select_best_keeps_the_best_validation_weights(tmp_path):
    config = smoke_finetune_config(tmp_path, epochs=3, val_per_class=5, select_best=True,
                                   architecture=SMOKE_ARCHITECTURE)
    result = finetune(config)
    best = read_checkpoint(result.run_dir / "best.pt")
    best_row = max(result.metrics, key=lambda row: row["val_top1"])  # first of the ties
    assert best["epoch"] == best_row["epoch"] and best["row"] == best_row


def test_missing_pretrained_checkpoint_says_where_it_looked(tmp_path):
    config = smoke_finetune_config(tmp_path, pretrained="no-such-run")
    with pytest.raises(FileNotFoundError, match="no-such-run.*ls "):
        finetune(config)


def test_pretrained_checkpoint_of_another_architecture(pretrained_run, tmp_path):
    config = smoke_finetune_config(tmp_path, pretrained=str(pretrained_run.checkpoint),
                                   architecture={**SMOKE_ARCHITECTURE, "blocks": 3})
    with pytest.raises(ValueError, match="blocks: checkpoint has 2, config asks for 3"):
        finetune(config)
    with pytest.raises(ValueError, match="image_size"):
        finetune(smoke_finetune_config(tmp_path, pretrained=str(pretrained_run.checkpoint),
                                       image_size=48))


def test_npc_larger_than_a_class_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError):
        finetune(smoke_finetune_config(tmp_path, npc=100_000, architecture=SMOKE_ARCHITECTURE))


def test_a_finetune_checkpoint_is_not_taken_for_a_pretrained_model(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"phase": "finetune", "model": {}}, path)
    with pytest.raises(ValueError, match="is a finetune checkpoint, not a pretraining one"):
        train.load_pretrained(path)
    with pytest.raises(ValueError, match="is a finetune checkpoint, not a pretraining one"):
        build_finetune_model(FinetuneConfig(pretrained=str(path)))


def test_bf16_autocast_trains_on_cpu(tmp_path):
    result = pretrain(smoke_pretrain_config(tmp_path, precision="bf16", epochs=1,
                                            num_images=192, holdout_images=64))
    assert math.isfinite(result.metrics[0]["train_loss"])
    weights = read_checkpoint(result.checkpoint)["model"]
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast, fp32 weights


def test_run_reports_the_scheduled_rates(pretrained_run):
    config = pretrained_run.config
    assert [row["lr"] for row in pretrained_run.metrics] == [
        pytest.approx(learning_rate(epoch, config)) for epoch in range(config.epochs)]


def test_pretraining_on_a_folder_with_a_corrupt_file_warns_and_trains(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(40):
        pixels = torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy()).save(photos / f"{i}.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    config = smoke_pretrain_config(tmp_path / "runs", dataset="folder", data_dir=str(photos),
                                   num_images=0, holdout_images=8, batch_size=16, epochs=1)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\) of 41.*broken"):
        result = pretrain(config)
    assert result.metrics[-1]["epoch"] == 1
    assert len(list((tmp_path / "runs" / "cache").glob("folder-unlabeled-32px-*.pt"))) == 1


def test_a_finetuned_run_loads_back_without_its_pretrained_run(pretrained_run, tmp_path):
    """load_finetuned rebuilds the model from the checkpoint alone (notebook 06 reads notebook
    04's runs), with the positional embedding a leak-pretrained model carries."""
    from apl_core.train import load_finetuned

    config = smoke_finetune_config(tmp_path, epochs=1, pretrained=str(pretrained_run.checkpoint))
    result = finetune(config)
    model, loaded = load_finetuned(result.run_dir)
    assert loaded == result.config and not model.training
    saved = read_checkpoint(result.checkpoint)["model"]
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())
    with pytest.raises(ValueError, match="is a pretrain checkpoint, not a fine-tuning one"):
        load_finetuned(pretrained_run.checkpoint)

    leak = pretrain(smoke_pretrain_config(tmp_path, epochs=1, positional_embedding=True))
    tuned = finetune(smoke_finetune_config(tmp_path, epochs=1, pretrained=str(leak.checkpoint)))
    model, _ = load_finetuned(tuned.run_dir)
    assert torch.equal(model.transformer.position_embedding,
                       read_checkpoint(tuned.checkpoint)["model"]["transformer.position_embedding"])
    pretrained_embedding = read_checkpoint(leak.checkpoint)["model"][
        "transformer.position_embedding"]
    fresh, _ = build_finetune_model(smoke_finetune_config(tmp_path, epochs=1,
                                                          pretrained=str(leak.checkpoint)))
    assert torch.equal(fresh.transformer.position_embedding, pretrained_embedding)
