"""The training engine: it learns, every fine-tuning option runs, resume is exact, and bad
input fails before any work."""
from __future__ import annotations

import itertools
import math
import os
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from tqdm.auto import tqdm

import apl_core.train as train
from apl_core import pretext
from apl_core.augment import AugmentSpec, MixSpec
from apl_core.baselines import SCNN
from apl_core.checkpoint import read_checkpoint, save_checkpoint
from apl_core.config import FinetuneConfig, PretrainConfig
from apl_core.data import BatchLoader, ImageSet, splits
from apl_core.distributed import DistContext
from apl_core.model import APLClassifier, APLPretrainModel, build_pretrain_model
from apl_core.checkpoint import pretrain_architecture
from apl_core.rundir import read_metrics, run_name
from apl_core.stats import decode_mask
from apl_core.train import (
    RunResult, Runtime, best_epoch_test_top1, finetune, learning_rate, load_finetune_model,
    load_pretrained, make_trainer, pretrain, snapshot_path,
)
from conftest import SMOKE_ARCHITECTURE, smoke_finetune_config, smoke_pretrain_config

TIMING = ("images_per_s", "epoch_time_s")
CPU = Runtime(torch.device("cpu"), None, DistContext())  # fp32, one process
# 192 images, 64 held out: 4 training steps of 32 images an epoch (a fraction of a second)
TINY = dict(num_images=192, holdout_images=64, batch_size=32)


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def record_bars(monkeypatch) -> list:
    """The progress bars a run shows, in the order it opens them."""
    bars = []
    monkeypatch.setattr(train, "tqdm", lambda *args, **kwargs: bars.append(
        tqdm(*args, **kwargs)) or bars[-1])
    return bars


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One epoch of smoke pretraining on 128 images, under <tmp>/runs (read only)."""
    runs = tmp_path_factory.mktemp("tiny") / "runs"
    return pretrain(smoke_pretrain_config(runs, epochs=1, **TINY))


# ---------------------------------------------------------------- one run, epoch by epoch

def test_a_run_trains_every_weight_and_logs_each_epoch(tmp_path, monkeypatch, capsys):
    clock = itertools.count(step=2)  # each reading of the clock is two seconds later
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    bars = record_bars(monkeypatch)
    steps, real_loss = [], pretext.position_loss

    def recording_loss(model, images, labels):
        loss, hits, count = real_loss(model, images, labels)
        if model.training:
            steps.append((loss.item() * count.item(), *hits.tolist(), count.item()))
        return loss, hits, count

    monkeypatch.setitem(pretext.PRETEXT_LOSSES, "apl", recording_loss)
    initial, real_fit = {}, train.fit

    def fit(run, model, *args):
        initial.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_fit(run, model, *args)

    monkeypatch.setattr(train, "fit", fit)
    config = smoke_pretrain_config(tmp_path, epochs=2, quiet=False, **TINY)
    result = pretrain(config)

    run_dir = tmp_path / "pretrain" / run_name(config)
    rows = read_metrics(run_dir)
    assert result == RunResult(run_dir, run_dir / "last.pt", rows, config.replace(
        run_name=run_dir.name))
    printed = capsys.readouterr()
    assert printed.out == f"pretrain run: {run_dir}\n" and "pretrain: 100%" in printed.err
    assert [list(row) for row in rows] == 2 * [[
        "epoch", "step", "lr", "train_loss", "train_top1", "train_top3", "train_top5",
        "val_loss", "val_top1", "val_top3", "val_top5", "images_per_s", "epoch_time_s"]]
    assert [(row["epoch"], row["step"]) for row in rows] == [(1, 4), (2, 8)]
    assert [row["lr"] for row in rows] == [learning_rate(e, config) for e in (0, 1)]
    for row, epoch_steps in zip(rows, (steps[:4], steps[4:])):
        loss, top1, top3, top5, count = map(sum, zip(*epoch_steps))  # means over all images
        assert (row["train_loss"], row["train_top1"], row["train_top3"], row["train_top5"]) \
            == pytest.approx((loss / count, top1 / count, top3 / count, top5 / count))
        assert 0 <= row["val_top1"] <= row["val_top3"] <= row["val_top5"] <= 1
        # 128 images in the two seconds training took; two more to evaluate and save
        assert (row["images_per_s"], row["epoch_time_s"]) == (64, 4)

    last = read_checkpoint(run_dir / "last.pt")
    assert {key: last[key] for key in ("phase", "epoch", "step", "row", "metrics")} == dict(
        phase="pretrain", epoch=2, step=8, row=rows[-1], metrics=rows)
    assert last["config"] == result.config.to_dict()
    assert last["architecture"] == pretrain_architecture(config)
    assert last["optimizer"]["param_groups"][0]["lr"] == rows[-1]["lr"]
    assert last["scaler"] == {}  # fp32: no gradient scaling
    assert len(last["rng"]) == 1  # one process
    assert all(not torch.equal(last["model"][k], initial[k]) for k in initial)
    assert not (run_dir / "best.pt").exists()  # pretraining keeps no best epoch

    run, *epochs = bars
    assert (run.desc, run.unit, run.n, run.total) == ("pretrain", "epoch", 2, 2)
    assert [(bar.desc, bar.unit, bar.n, bar.total, bar.leave) for bar in epochs] == [
        ("epoch 1", "batch", 4, 4, False), ("epoch 2", "batch", 4, 4, False)]
    shown = ("train_loss", "train_top1", "val_top1", "images_per_s")
    assert run.postfix == ", ".join(f"{key}={tqdm.format_num(round(rows[-1][key], 4))}"
                                    for key in shown)


def test_a_quiet_run_prints_nothing_and_leaves_no_file_open(tmp_path, capsys):
    open_files = len(os.listdir("/proc/self/fd"))  # Linux: one entry per open file
    pretrain(smoke_pretrain_config(tmp_path, epochs=1, **TINY))
    assert capsys.readouterr() == ("", "")
    assert len(os.listdir("/proc/self/fd")) == open_files  # metrics.jsonl, TensorBoard events


def test_runtime_takes_the_device_precision_and_seed_of_the_config():
    rt = train.runtime(smoke_pretrain_config("unused", precision="bf16", seed=7))
    assert (rt.device, rt.dtype, rt.context) == (torch.device("cpu"), torch.bfloat16,
                                                 DistContext())
    assert torch.initial_seed() == 7


def test_training_loaders_shuffle_and_augment_evaluation_loaders_see_each_image_once(
        tmp_path, monkeypatch):
    built, real_loader = [], train._loader
    monkeypatch.setattr(train, "_loader", lambda *args, **kwargs: built.append(
        real_loader(*args, **kwargs)) or built[-1])
    monkeypatch.setattr(train, "fit", lambda *args: None)  # the loaders are all this needs
    pretrain(smoke_pretrain_config(tmp_path, seed=3, **TINY))
    finetune(smoke_finetune_config(tmp_path, seed=4, val_per_class=3, batch_size=16,
                                   architecture=SMOKE_ARCHITECTURE))
    options = [(len(b.data), b.batch_size, b.shuffle, b.drop_last, b.device,
                b.augment and b.augment.scale, b.augment and b.augment.policy, b.mix, b.seed,
                b.rank, b.world_size) for b in built]
    cpu = torch.device("cpu")
    assert options == [
        (64, 32, False, False, cpu, None, None, None, 3, 0, 1),  # held-out part
        (128, 32, True, True, cpu, (0.6, 1.0), "none", None, 3, 0, 1),  # whole batches only
        (200, 16, False, False, cpu, None, None, None, 4, 0, 1),  # test set
        (30, 16, False, False, cpu, None, None, None, 4, 0, 1),  # validation part
        (100, 16, True, False, cpu, (0.8, 1.0), "none", None, 4, 0, 1)]  # every image

    built.clear()
    finetune(smoke_finetune_config(tmp_path, val_per_class=3, augment_policy="trivialaugment",
                                   mixup_alpha=0.8, cutmix_alpha=1.0, model="s-cnn"))
    *evaluation, training = built
    assert all(b.augment is None and b.mix is None for b in evaluation)  # scored as they are
    assert training.augment == AugmentSpec(scale=(0.8, 1.0), policy="trivialaugment")
    assert training.mix == MixSpec(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10)
    built.clear()
    finetune(smoke_finetune_config(tmp_path, val_per_class=3, cutmix_alpha=1.0, model="s-cnn"))
    assert built[-1].mix == MixSpec(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=10)

    built.clear()
    finetune(smoke_finetune_config(tmp_path, val_per_class=3, evaluate_test=False,
                                   architecture=SMOKE_ARCHITECTURE))
    assert [len(loader.data) for loader in built] == [30, 100]  # no test images loaded

    def images(loaders) -> set[bytes]:
        return {image.numpy().tobytes() for loader in loaders for image in loader.data.images}

    built.clear()
    pretrain(smoke_pretrain_config(tmp_path, seed=3, **TINY))
    pretrain(smoke_pretrain_config(tmp_path, seed=4, **TINY))
    assert images(built[:2]) != images(built[-2:])  # the seed draws the images themselves


def test_pretraining_loads_num_images_of_the_unlabeled_split_drawn_with_its_seed(
        tmp_path, monkeypatch):
    asked = []

    def load_split(**kwargs):
        asked.append(kwargs)
        raise KeyboardInterrupt  # the arguments are all this needs

    monkeypatch.setattr(splits, "load_split", load_split)
    with pytest.raises(KeyboardInterrupt):
        pretrain(smoke_pretrain_config(tmp_path, seed=3, **TINY))
    assert asked == [dict(dataset="synthetic", split="unlabeled", data_dir="data", image_size=32,
                          unreadable_images="skip", cache_dir=None, limit=192, seed=3)]


def test_batch_size_larger_than_the_training_images_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"^batch_size=128 is larger than the 64 training "
                                         r"images; lower batch_size or raise num_images$"):
        pretrain(smoke_pretrain_config(tmp_path, num_images=96, holdout_images=32,
                                       batch_size=128))
    rows = pretrain(smoke_pretrain_config(tmp_path, num_images=64, holdout_images=0,
                                          batch_size=64, epochs=1)).metrics
    assert rows[0]["step"] == 1 and not any(key.startswith("val_") for key in rows[0])


def test_snapshots_keep_the_weights_of_every_snapshot_every_epochs(tmp_path):
    result = pretrain(smoke_pretrain_config(tmp_path, epochs=4, snapshot_every=2, **TINY))
    assert sorted(p.name for p in (result.run_dir / "snapshots").iterdir()) == \
        ["epoch2.pt", "epoch4.pt"]
    last = read_checkpoint(result.run_dir / "last.pt")
    fourth = read_checkpoint(snapshot_path(result.run_dir, 4))
    second = read_checkpoint(snapshot_path(result.run_dir, 2))
    assert (fourth["phase"], fourth["epoch"], second["epoch"]) == ("pretrain", 4, 2)
    assert all(torch.equal(fourth["model"][k], last["model"][k]) for k in last["model"])
    assert not all(torch.equal(second["model"][k], last["model"][k]) for k in last["model"])
    model, config = load_pretrained(snapshot_path(result.run_dir, 2))
    assert config.epochs == 4 and model.state_dict().keys() == last["model"].keys()


def test_no_snapshots_without_snapshot_every(tmp_path):
    result = pretrain(smoke_pretrain_config(tmp_path, epochs=1, **TINY))
    assert not (result.run_dir / "snapshots").exists()


def test_knn_monitor_runs_every_knn_every_epochs_and_at_the_last(tmp_path, monkeypatch):
    bank, queries = object(), object()
    asked = []
    monkeypatch.setattr(train, "knn_sets", lambda config: asked.append(config) or (bank, queries))
    probed = []

    def knn_accuracy(encoder, *sets, device):
        probed.append((encoder, sets, device))
        return 0.5

    monkeypatch.setattr(train, "knn_accuracy", knn_accuracy)
    result = pretrain(smoke_pretrain_config(tmp_path, epochs=3, knn_every=2, **TINY))
    assert [row.get("knn_top1") for row in result.metrics] == [None, 0.5, 0.5]
    assert asked == [result.config]
    model = train.load_pretrained(result.checkpoint)[0]
    assert all(type(encoder) is type(model.transformer) and sets == (bank, queries)
               and device == torch.device("cpu") for encoder, sets, device in probed)


class Compiled(nn.Module):
    """What torch.compile hands back, counting its training calls: the wrapped module's
    attributes read through, as torch's OptimizedModule does."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args, **kwargs):
        self.calls += self.inner.training
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


def test_compile_trains_the_compiled_model(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(Compiled(model))
                        or compiled[-1])
    result = pretrain(smoke_pretrain_config(tmp_path, epochs=1, compile=True, **TINY))
    assert len(compiled) == 1 and isinstance(compiled[0].inner, APLPretrainModel)
    assert compiled[0].calls == 4  # every training step went through the compiled model
    assert result.metrics[0]["epoch"] == 1


def test_make_trainer_optimizes_the_trainable_weights_and_scales_only_under_fp16():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)  # a frozen part, as a head-only fine-tune has
    config = smoke_finetune_config("unused", optimizer="sgd", lr=0.25)
    trainer = make_trainer(model, "the loss", config, CPU)
    assert trainer.model is model and trainer.loss_fn == "the loss" and trainer.rt is CPU
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert [id(p) for p in optimized] == [id(p) for p in model[1].parameters()]
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.optimizer.param_groups[0]["lr"] == learning_rate(0, config)
    assert not trainer.scaler.is_enabled()
    wrapped = nn.Sequential(model)  # what DDP or torch.compile would hand back
    for dtype, scaled in ((torch.bfloat16, False), (torch.float16, True)):
        rt = Runtime(torch.device("cpu"), dtype, DistContext())
        trainer = make_trainer(model, "the loss", config, rt, wrapped)
        assert trainer.model is wrapped and trainer.scaler.is_enabled() == scaled
        assert len(trainer.optimizer.param_groups[0]["params"]) == 2  # the wrapper adds none


def test_auto_resume_returns_a_finished_run_at_once(tiny_run, monkeypatch):
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a finished run trained"))
    for resume in ("auto", True):
        assert pretrain(tiny_run.config, resume=resume) == tiny_run


def test_new_run_over_an_existing_one_is_refused(tiny_run):
    with pytest.raises(FileExistsError, match="resume"):
        pretrain(tiny_run.config)


def test_resume_into_another_architecture_names_the_field(tiny_run):
    other = tiny_run.config.replace(grid=2, heads=3, epochs=2)
    with pytest.raises(ValueError, match=re.escape(
            f"checkpoint {tiny_run.checkpoint} holds another architecture (grid: checkpoint "
            f"has 4, config asks for 2)")):
        pretrain(other, resume=True)


def test_load_pretrained_gives_the_trained_model_in_eval_mode(tiny_run, monkeypatch):
    weights = read_checkpoint(tiny_run.checkpoint)["model"]
    runs_dir = tiny_run.run_dir.parents[1]
    loaded = [load_pretrained(tiny_run.checkpoint),
              load_pretrained(tiny_run.run_dir.name, runs_dir=runs_dir)]
    monkeypatch.chdir(runs_dir.parent)
    loaded.append(load_pretrained(tiny_run.run_dir.name))  # runs/ is the default runs_dir
    for model, config in loaded:
        assert config == tiny_run.config and not model.training
        assert model.state_dict().keys() == weights.keys()
        assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())


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


def test_resume_with_nothing_to_resume(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        pretrain(smoke_pretrain_config(tmp_path), resume=True)


def test_resume_at_epoch_boundary_matches_uninterrupted_run(tmp_path, monkeypatch, capsys):
    config = dict(epochs=3, schedule_per_step=True, optimizer="adamw", weight_decay=0.05,
                  grad_clip=0.5, **TINY)
    clipped, real_clip = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: clipped.append(
        (len(params), max_norm)) or real_clip(params, max_norm))
    whole = pretrain(smoke_pretrain_config(tmp_path / "whole", **config))
    parameters = sum(1 for _ in train.load_pretrained(whole.checkpoint)[0].parameters())
    assert clipped == 12 * [(parameters, 0.5)]  # every step clips all the weights' gradients
    steps = whole.metrics[0]["step"]  # per step: a row reports the rate of its last step
    assert [row["lr"] for row in whole.metrics] == [
        learning_rate(epoch + (steps - 1) / steps, whole.config) for epoch in range(3)]

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
    run_dir = tmp_path / "parts" / "pretrain" / run_name(interrupted)
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == 2
    capsys.readouterr()
    bars = record_bars(monkeypatch)
    resumed = pretrain(interrupted.replace(quiet=False), resume=True)
    assert capsys.readouterr().out == f"pretrain run: {run_dir} (resuming after epoch 2)\n"
    assert (bars[0].n, bars[0].total, [bar.desc for bar in bars[1:]]) == (3, 3, ["epoch 3"])

    assert without_timing(resumed.metrics) == without_timing(whole.metrics)
    assert read_metrics(run_dir) == resumed.metrics
    whole_weights = read_checkpoint(whole.checkpoint)["model"]
    resumed_weights = read_checkpoint(resumed.checkpoint)["model"]
    assert whole_weights.keys() == resumed_weights.keys()
    for key in whole_weights:
        assert torch.equal(whole_weights[key], resumed_weights[key]), key


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss = pretext.position_loss

    def loss_that_explodes_at(step):
        training_steps = []

        def loss(model, images, labels):
            loss, hits, count = real_loss(model, images, labels)
            training_steps.extend([1] if model.training else [])
            return (loss * math.nan if len(training_steps) >= step else loss), hits, count
        return loss

    monkeypatch.setitem(pretext.PRETEXT_LOSSES, "apl", loss_that_explodes_at(5))  # in epoch 2
    config = smoke_pretrain_config(tmp_path, epochs=3, **TINY)
    last = tmp_path / "pretrain" / run_name(config) / "last.pt"
    with pytest.raises(train.NonFiniteLossError) as error:
        pretrain(config)
    assert str(error.value) == (
        f"the pretrain loss became nan in epoch 2; the run stopped and {last} still holds "
        f"epoch 1. Try a lower lr (now 0.002), grad_clip > 0 (e.g. 1.0) or precision='fp32' "
        f"(now 'fp32')")
    assert (error.value.epoch, error.value.run_dir, math.isnan(error.value.loss)) == (
        2, last.parent, True)
    checkpoint = read_checkpoint(last)
    assert checkpoint["epoch"] == 1 and read_metrics(last.parent) == checkpoint["metrics"]
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())

    monkeypatch.setitem(pretext.PRETEXT_LOSSES, "apl", loss_that_explodes_at(1))
    with pytest.raises(train.NonFiniteLossError, match="epoch 1; the run stopped and no "
                                                       "checkpoint was written. Try"):
        pretrain(config.replace(run_name="first"))
    assert not (tmp_path / "pretrain" / "first" / "last.pt").exists()


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


def test_a_run_without_the_test_set_evaluates_only_validation(tmp_path, monkeypatch):
    """evaluate_test=False (the hyper-parameter search): no test image is scored."""
    scored = []
    evaluate, evaluate_correct = train.evaluate, train.evaluate_correct
    monkeypatch.setattr(train, "evaluate", lambda model, loss, loader, *args:
                        scored.append(len(loader.data)) or evaluate(model, loss, loader, *args))
    monkeypatch.setattr(train, "evaluate_correct", lambda model, loader, *args:
                        scored.append(len(loader.data)) or evaluate_correct(model, loader, *args))
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
        assert all(args[0].loss_fn.func is train.class_loss and args[0].loss_fn.keywords == {
            "label_smoothing": 0.0} for args, _ in calls["epoch"]), model
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
    model, _ = load_finetune_model(config.replace(freeze_encoder=True))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("transformer.encoder.") for name in frozen)
    model, _ = load_finetune_model(config.replace(head_only=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("class_head.") for name in trainable)
    model, _ = load_finetune_model(config.replace(dropout=0.3, patch_dropout=0.2))
    assert {m.p for m in model.transformer.blocks.modules() if isinstance(m, nn.Dropout)} == {0.3}
    assert model.transformer.patch_dropout.p == 0.2


def scripted_evaluation(monkeypatch, val_top1s):
    """The validation part (40 images) is scored with these top-1s in turn, its first images
    right; evaluate() scores the test set alike every time."""
    scores = iter(val_top1s)

    def evaluate(model, loss_fn, loader, *args):
        assert len(loader.data) == 200  # the test subset, 20 per class
        return {"loss": 1.5, "top1": 0.25, "top3": 0.5, "top5": 0.75}

    def evaluate_correct(model, loader, *args):
        assert len(loader.data) == 40
        return torch.arange(40) < round(40 * next(scores))

    monkeypatch.setattr(train, "evaluate", evaluate)
    monkeypatch.setattr(train, "evaluate_correct", evaluate_correct)


def first_right(top1: float) -> str:
    """The mask of 40 validation images whose first 40 x top1 are right."""
    return train.correct_mask(torch.arange(40) < round(40 * top1))


def test_finetuning_evaluates_every_eval_every_epochs_and_at_the_last(tmp_path, monkeypatch):
    scripted_evaluation(monkeypatch, [0.5, 0.5, 0.25])
    result = finetune(smoke_finetune_config(tmp_path, epochs=5, eval_every=2, val_per_class=4,
                                            architecture=SMOKE_ARCHITECTURE))
    scored = dict(test_top1=0.25, test_top3=0.5, test_top5=0.75, test_nll=1.5)
    half = {"val_top1": 0.5, "val_correct": first_right(0.5)}
    assert [{k: v for k, v in row.items() if k.startswith(("test_", "val_"))}
            for row in result.metrics] == [{}, {**scored, **half}, {}, {**scored, **half},
                                           {**scored, "val_top1": 0.25,
                                            "val_correct": first_right(0.25)}]
    assert first_right(0.25) == "00000003ff"  # images 0-9 of 40
    assert not (result.run_dir / "best.pt").exists()  # only select_best keeps one


def test_select_best_keeps_the_first_best_validation_epoch(tmp_path, monkeypatch):
    scripted_evaluation(monkeypatch, [0.5, 0.5, 0.25])  # epochs 2, 4 (a tie) and 5
    result = finetune(smoke_finetune_config(tmp_path, epochs=5, eval_every=2, val_per_class=4,
                                            select_best=True, architecture=SMOKE_ARCHITECTURE))
    best, last = (read_checkpoint(result.run_dir / name) for name in ("best.pt", "last.pt"))
    assert (best["phase"], best["epoch"], best["row"]) == ("finetune", 2, result.metrics[1])
    assert (best["config"], best["architecture"]) == (last["config"], last["architecture"])
    assert best["model"].keys() == last["model"].keys()


def test_best_epoch_test_top1_scores_the_weights_of_the_best_validation_epoch(tmp_path):
    result = finetune(smoke_finetune_config(tmp_path, epochs=3, eval_every=1, val_per_class=3,
                                            select_best=True, lr=3e-3, npc=4,
                                            architecture=SMOKE_ARCHITECTURE))
    best = read_checkpoint(result.run_dir / "best.pt")
    assert best_epoch_test_top1(result.run_dir, device="cpu") == best["row"]["test_top1"]


def test_best_epoch_test_top1_of_a_run_without_a_best_epoch_says_how_to_keep_one(tmp_path):
    result = finetune(smoke_finetune_config(tmp_path, epochs=1,
                                            architecture=SMOKE_ARCHITECTURE))
    with pytest.raises(FileNotFoundError, match="best.pt does not exist: only a run with "
                                                "select_best=True and a validation part"):
        best_epoch_test_top1(result.run_dir, device="cpu")


def test_resuming_finetuning_continues_its_run_in_its_own_architecture(tmp_path,
                                                                         monkeypatch):
    config = smoke_finetune_config(tmp_path, epochs=1, architecture=SMOKE_ARCHITECTURE,
                                   run_name="benchmark")
    done = finetune(config)
    with pytest.raises(ValueError, match=re.escape(
            f"checkpoint {done.checkpoint} holds another architecture (blocks: checkpoint has "
            f"2, config asks for 3)")):
        finetune(config.replace(epochs=2, architecture={**SMOKE_ARCHITECTURE, "blocks": 3}),
                 resume=True)
    resumed = finetune(config.replace(epochs=2), resume=True)
    assert resumed.metrics[0] == done.metrics[0] and resumed.metrics[1]["epoch"] == 2
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a finished run trained"))
    assert finetune(config.replace(epochs=2), resume="auto") == resumed


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
        load_finetune_model(FinetuneConfig(pretrained=str(path)))


def test_bf16_autocast_trains_and_evaluates_on_cpu(tmp_path, monkeypatch):
    autocast = set()

    def recording(loss_fn):
        def loss(model, images, labels, **options):
            autocast.add((loss_fn.__name__, model.training, len(images),
                          torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))
            return loss_fn(model, images, labels, **options)
        return loss

    monkeypatch.setitem(pretext.PRETEXT_LOSSES, "apl", recording(pretext.position_loss))
    monkeypatch.setattr(train, "class_loss", recording(train.class_loss))
    top1_correct = train.top1_correct
    monkeypatch.setattr(train, "top1_correct", lambda logits, labels: autocast.add(
        ("top1_correct", len(logits), logits.dtype)) or top1_correct(logits, labels))
    result = pretrain(smoke_pretrain_config(tmp_path, precision="bf16", epochs=1, **TINY))
    finetune(smoke_finetune_config(tmp_path, precision="bf16", epochs=1, val_per_class=3,
                                   batch_size=100, architecture=SMOKE_ARCHITECTURE))
    bf16 = torch.bfloat16
    assert autocast == {("position_loss", True, 32, bf16), ("position_loss", False, 32, bf16),
                        ("class_loss", True, 100, bf16), ("class_loss", False, 100, bf16),
                        ("top1_correct", 30, bf16)}  # train, test and validation batches
    assert math.isfinite(result.metrics[0]["train_loss"])
    weights = read_checkpoint(result.checkpoint)["model"]
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast, fp32 weights


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


def test_a_finetuned_run_loads_back_without_its_pretrained_run(tiny_run, tmp_path,
                                                               monkeypatch):
    """load_finetuned rebuilds the model from the checkpoint alone (notebook 06 reads notebook
    04's runs), with the positional embedding a leak-pretrained model carries."""
    from apl_core.train import load_finetuned

    runs = tmp_path / "runs"
    config = smoke_finetune_config(runs, epochs=1, pretrained=str(tiny_run.checkpoint))
    result = finetune(config)
    found = [load_finetuned(result.run_dir), load_finetuned(result.run_dir.name, runs_dir=runs)]
    monkeypatch.chdir(tmp_path)
    found.append(load_finetuned(result.run_dir.name))  # runs/ is the default runs_dir
    for model, loaded in found:
        assert loaded == result.config and not model.training
        saved = read_checkpoint(result.checkpoint)["model"]
        assert model.state_dict().keys() == saved.keys()
        assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())
    with pytest.raises(ValueError, match="is a pretrain checkpoint, not a fine-tuning one"):
        load_finetuned(tiny_run.checkpoint)

    leak = pretrain(smoke_pretrain_config(runs, epochs=1, positional_embedding=True, **TINY))
    tuned = finetune(smoke_finetune_config(runs, epochs=1, pretrained=str(leak.checkpoint)))
    pretrained_embedding = read_checkpoint(leak.checkpoint)["model"][
        "transformer.position_embedding"]
    fresh, _ = load_finetune_model(smoke_finetune_config(runs, epochs=1,
                                                         pretrained=str(leak.checkpoint)))
    assert torch.equal(fresh.transformer.position_embedding, pretrained_embedding)
    leak.checkpoint.unlink()  # the pretrained run is gone: the fine-tuned one still loads
    model, _ = load_finetuned(tuned.run_dir)
    assert torch.equal(model.transformer.position_embedding,
                       read_checkpoint(tuned.checkpoint)["model"]["transformer.position_embedding"])


def test_evaluate_averages_over_every_image_in_eval_mode_without_gradients():
    """Each batch's loss is weighted by its number of images, hits are summed, and the model
    runs in eval mode with gradients off."""
    model = nn.Linear(1, 1).train()
    seen = []

    def scripted_loss(model, images, labels):
        seen.append((model.training, torch.is_grad_enabled()))
        count = torch.tensor(float(len(images)))
        return images.mean() * model.weight.sum(), labels.float()[:3].sum() + torch.zeros(3), count

    with torch.no_grad():
        model.weight.fill_(1.0)
    loader = [(torch.full((3, 1), 2.0), torch.tensor([1, 0, 1])),
              (torch.full((1, 1), 6.0), torch.tensor([1]))]
    result = train.evaluate(model, scripted_loss, loader, CPU)
    # loss: (2 x 3 + 6 x 1) / 4 images; hits@k: (2 + 1) / 4 for every k here
    assert result == {"loss": 3.0, "top1": 0.75, "top3": 0.75, "top5": 0.75}
    assert seen == [(False, False), (False, False)] and torch.is_grad_enabled()


def test_evaluate_correct_marks_each_image_in_its_place_in_the_data():
    """The model below is right on images whose number is even; with two ranks each rank sees
    part of every batch, and the marks are in the data's order either way."""
    images = (torch.arange(37) % 256).to(torch.uint8).view(37, 1, 1, 1).expand(37, 3, 4, 4)
    data = ImageSet(images.clone(), torch.zeros(37, dtype=torch.int64), [])

    class EvenIsClassZero(nn.Module):
        def forward(self, batch):  # pixel value v -> class 0 when v is even, else class 1
            number = torch.round((batch[:, 0, 0, 0] + 1) * 255 / 2)
            return torch.stack([(number % 2 == 0).float(), (number % 2).float()], dim=1)

    model = EvenIsClassZero().train()
    loader = BatchLoader(data, 8, shuffle=False, drop_last=False)
    correct = train.evaluate_correct(model, loader, CPU)
    assert correct.dtype == torch.bool and correct.tolist() == [i % 2 == 0 for i in range(37)]
    assert not model.training
    halves = [train.evaluate_correct(model, BatchLoader(data, 8, shuffle=False, drop_last=False,
                                                        rank=rank, world_size=2), CPU)
              for rank in range(2)]
    assert (halves[0] | halves[1]).tolist() == correct.tolist()
    assert not (halves[0] & halves[1]).any()  # no image on both ranks


def test_correct_mask_is_hex_with_bit_i_for_image_i():
    assert train.correct_mask(torch.tensor([True, False, True])) == "5"
    assert train.correct_mask(torch.tensor([False] * 8)) == "00"
    assert train.correct_mask(torch.tensor([True] * 9)) == "1ff"
    assert train.correct_mask(torch.tensor([], dtype=torch.bool)) == "0"
    marks = [i % 3 == 0 or i == 499 for i in range(500)]
    mask = train.correct_mask(torch.tensor(marks))
    assert len(mask) == 125 and decode_mask(mask, 500) == marks


def test_the_small_data_recipe_trains_and_scores_each_validation_image(tmp_path):
    """Label smoothing, MixUp and CutMix, a policy and stochastic depth together: the run
    trains with finite losses, and every validation records which images it got right."""
    config = smoke_finetune_config(tmp_path, epochs=2, val_per_class=3, evaluate_test=False,
                                   architecture=SMOKE_ARCHITECTURE, label_smoothing=0.1,
                                   mixup_alpha=0.8, cutmix_alpha=1.0,
                                   augment_policy="randaugment", drop_path=0.1)
    rows = finetune(config).metrics
    for row in rows:
        assert math.isfinite(row["train_loss"]) and 0 <= row["train_top1"] <= 1
        marks = decode_mask(row["val_correct"], 30)
        assert sum(marks) / 30 == row["val_top1"]
    again = finetune(config.replace(run_name="again")).metrics
    assert [row["train_loss"] for row in again] == [row["train_loss"] for row in rows]


def test_label_smoothing_reaches_the_training_loss_only(tmp_path, monkeypatch):
    losses = []
    real = train.class_loss
    monkeypatch.setattr(train, "class_loss", lambda *args, **kwargs: losses.append(
        kwargs.get("label_smoothing")) or real(*args, **kwargs))
    finetune(smoke_finetune_config(tmp_path, epochs=1, model="s-cnn", label_smoothing=0.2))
    # two training batches smoothed; the test set scored on the plain loss
    assert losses[:2] == [0.2, 0.2] and set(losses[2:]) == {None}


# ---------------------------------------------------------------- a fine-tuning run's start

def save_pretrained(runs_dir, name="tiny", weights=None, **changes):
    """A pretraining run's last.pt as train.pretrain writes it, without the training: the
    untrained model's weights (or `weights`), under runs_dir/pretrain/name."""
    torch.manual_seed(0)
    config = PretrainConfig(image_size=32, **{**SMOKE_ARCHITECTURE, **changes})
    model = build_pretrain_model(config)
    run = runs_dir / "pretrain" / name
    run.mkdir(parents=True)
    save_checkpoint({"phase": "pretrain", "config": config.to_dict(),
                     "architecture": pretrain_architecture(config),
                     "model": model.state_dict() if weights is None else weights},
                    run / "last.pt")
    return model


def test_finetuning_starts_from_the_pretrained_transformer_of_a_run_name(tmp_path):
    """The pretrained run's transformer, weights and architecture (from its checkpoint, not
    the fine-tuning config), under the fine-tuning config's own head."""
    pretrained = save_pretrained(tmp_path, attention_scale="original", mlp_head=True)
    config = FinetuneConfig(image_size=32, num_classes=7, pretrained="tiny",
                            runs_dir=str(tmp_path))
    model, architecture = load_finetune_model(config)
    assert architecture == {
        "model": "apl", "image_size": 32, "num_classes": 7, "grid": 4, "crop": 1,
        "encoder": "flatten", "blocks": 2, "heads": 3, "hidden_mult": 2,
        "attention_scale": "original", "positional_embedding": False, "mlp_head": False}
    assert isinstance(model, APLClassifier) and isinstance(model.class_head, torch.nn.Linear)
    assert model.class_head.out_features == 7
    weights = pretrained.state_dict()
    assert all(torch.equal(value, weights["transformer." + name])
               for name, value in model.transformer.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_positions_added_to_a_pretrained_model_are_new_the_rest_is_loaded(tmp_path):
    """positional_embedding=True on a model pretrained without one: the embedding keeps its
    initialisation and trains, every other weight is loaded; a model pretrained with one
    keeps its own."""
    pretrained = save_pretrained(tmp_path).state_dict()
    config = FinetuneConfig(image_size=32, pretrained="tiny", runs_dir=str(tmp_path),
                            positional_embedding=True)
    model, architecture = load_finetune_model(config)
    assert architecture["positional_embedding"]
    for name, value in model.transformer.state_dict().items():
        if name != "position_embedding":
            assert torch.equal(value, pretrained["transformer." + name]), name
    assert model.transformer.position_embedding.requires_grad
    assert 0 < model.transformer.position_embedding.std() < 0.05
    leak = save_pretrained(tmp_path, "leak", positional_embedding=True)
    model, architecture = load_finetune_model(config.replace(pretrained="leak"))
    assert architecture["positional_embedding"]
    assert torch.equal(model.transformer.position_embedding,
                       leak.transformer.position_embedding)


def test_finetuning_options_freeze_the_pretrained_parts_they_name(tmp_path):
    save_pretrained(tmp_path, encoder="cnn", heads=4)
    config = FinetuneConfig(image_size=32, pretrained="tiny", runs_dir=str(tmp_path),
                            architecture={**SMOKE_ARCHITECTURE, "encoder": "cnn", "heads": 4})
    model, _ = load_finetune_model(config.replace(freeze_encoder=True))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters()
                      if name.startswith("transformer.encoder.")}
    model, _ = load_finetune_model(config.replace(head_only=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"class_head.weight", "class_head.bias"}


def test_a_pretrained_run_of_another_architecture_is_refused_with_the_field(tmp_path):
    save_pretrained(tmp_path)
    config = FinetuneConfig(image_size=32, pretrained="tiny", runs_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"^checkpoint tiny holds another architecture "
                                         r"\(blocks: checkpoint has 2, config asks for 3\)"):
        load_finetune_model(config.replace(architecture={**SMOKE_ARCHITECTURE, "blocks": 3}))
    with pytest.raises(ValueError, match=r"^checkpoint tiny holds another architecture "
                                         r"\(image_size: checkpoint has 32, config asks for 48\)"):
        load_finetune_model(config.replace(image_size=48))


@pytest.mark.parametrize("change,missing,unexpected", [
    ("drop", ["blocks.1.attn.proj.bias"], []),
    ("add", [], ["extra"]),
])
def test_pretrained_weights_that_do_not_fit_the_transformer_are_refused(
        tmp_path, change, missing, unexpected):
    pretraining = PretrainConfig(image_size=32, **SMOKE_ARCHITECTURE)
    weights = build_pretrain_model(pretraining).state_dict()
    if change == "drop":
        del weights["transformer.blocks.1.attn.proj.bias"]
    else:
        weights["transformer.extra"] = torch.zeros(1)
    save_pretrained(tmp_path, weights=weights)
    config = FinetuneConfig(image_size=32, pretrained="tiny", runs_dir=str(tmp_path))
    with pytest.raises(ValueError) as error:
        load_finetune_model(config)
    assert str(error.value) == (f"pretrained='tiny' does not fit the transformer: "
                                f"missing {missing}, unexpected {unexpected}")


def test_benchmark_is_a_fresh_apl_classifier_on_the_configured_architecture():
    config = FinetuneConfig(image_size=32, num_classes=7,
                            architecture={**SMOKE_ARCHITECTURE, "blocks": 1})
    model, architecture = load_finetune_model(config)
    assert architecture == {
        "model": "apl", "image_size": 32, "num_classes": 7, "grid": 4, "crop": 1,
        "encoder": "flatten", "blocks": 1, "heads": 3, "hidden_mult": 2,
        "attention_scale": "standard", "positional_embedding": False, "mlp_head": False}
    assert isinstance(model, APLClassifier) and len(model.transformer.blocks) == 1
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    # the architecture dict is checked when the config is made; changed later, it is checked here
    config.architecture["heads"] = 5
    with pytest.raises(ValueError) as error:
        load_finetune_model(config)
    assert str(error.value) == (
        "BENCHMARK builds the APL architecture from `architecture` (else PretrainConfig's "
        "defaults): heads=5 is invalid: must divide the token dimension D = 147; head counts "
        "that would: [1, 3, 7, 21, 49]")


@pytest.mark.parametrize("name", ["s-cnn", "s-resnet"])
def test_cnn_baselines_are_built_for_the_image_size_and_classes(name):
    model, architecture = load_finetune_model(FinetuneConfig(model=name, image_size=32,
                                                              num_classes=7))
    assert architecture == {"model": name, "image_size": 32, "num_classes": 7}
    assert isinstance(model, SCNN) == (name == "s-cnn")
    assert not isinstance(model, APLClassifier)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
