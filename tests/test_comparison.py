"""Notebook 04's methods: every method sees the same labelled and test images and the same
schedule, each is what its name says, runs train in worker processes, and the frozen features
are judged by kNN and a probe whose penalty is chosen on validation."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from apl_core import comparison
from apl_core.analysis import knn_accuracy
from apl_core.comparison import (
    FEATURES, METHODS, feature_comparison, label_seed, method_config, train_all,
)
from apl_core.config import ARCHITECTURE_FIELDS, profile_config
from apl_core.data import finetune_sets
from apl_core.rundir import read_metrics, run_name
from apl_core.train import load_pretrained
from conftest import smoke_finetune_config

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(device="cpu", precision="fp32", epochs=1, npc=10)


def configs(pretrained_run, npc=10, **settings):
    _, pre = load_pretrained(pretrained_run.run_dir)
    settings = dict(runs_dir=str(pretrained_run.run_dir.parent.parent), device="cpu", **settings)
    return {m: method_config(m, npc, "smoke", str(pretrained_run.run_dir), pre, **settings)
            for m in METHODS}


def test_every_method_gets_the_same_images_and_schedule(pretrained_run):
    by_method = configs(pretrained_run, npc=10, test_per_class=5)
    shared = ("npc", "label_seed", "test_per_class", "val_per_class", "epochs", "lr",
              "batch_size", "warmup_frac", "weight_decay", "image_size", "crop_scale")
    reference = by_method["APL fine-tune"]
    for method, config in by_method.items():
        assert {k: getattr(config, k) for k in shared} == \
               {k: getattr(reference, k) for k in shared}, method
    train_sets = [finetune_sets(c)[0] for c in by_method.values()]
    assert all((s.labels == train_sets[0].labels).all() and
               (s.images == train_sets[0].images).all() for s in train_sets)


def test_methods_are_what_their_names_say(pretrained_run):
    c = configs(pretrained_run)
    pre = pretrained_run.config
    assert c["APL fine-tune"].pretrained and not c["APL fine-tune"].head_only
    assert c["BENCHMARK"].benchmark and not c["BENCHMARK"].head_only
    assert c["BENCHMARK + positions"].benchmark and c["BENCHMARK + positions"].positional_embedding
    for method in ("APL fine-tune", "BENCHMARK", "BENCHMARK + positions"):
        assert c[method].architecture["heads"] == pre.heads  # the pretrained architecture
        assert c[method].architecture["blocks"] == pre.blocks
    assert (c["S-CNN"].model, c["S-ResNet-18"].model) == ("s-cnn", "s-resnet")
    assert len({config.run_name or id(config) for config in c.values()}) == len(METHODS)
    with pytest.raises(ValueError, match="choose from"):
        method_config("APL", 10, "smoke", str(pretrained_run.run_dir), pre)


def test_feature_comparison_judges_both_features_by_knn_and_a_validated_probe(
        pretrained_run, monkeypatch):
    kwargs = dict(runs_dir=str(pretrained_run.run_dir.parent.parent), device="cpu")
    probes = []
    real_probe = comparison.feature_probe

    def probe(train, val, test):
        probes.append((train, val, test))
        return real_probe(train, val, test)

    monkeypatch.setattr(comparison, "feature_probe", probe)
    judged = feature_comparison("smoke", str(pretrained_run.run_dir), 10, k=5, seed=1,
                                val_per_class=2, **kwargs)
    assert list(judged) == list(FEATURES)
    apl_model, pretrained = load_pretrained(str(pretrained_run.run_dir),
                                            runs_dir=kwargs["runs_dir"])
    config = method_config("APL fine-tune", 10, "smoke", str(pretrained_run.run_dir),
                           pretrained, seed=1, val_per_class=2, **kwargs)
    labelled, val, test = finetune_sets(config)
    assert judged["APL-pretrained features"]["knn_top1"] == knn_accuracy(
        apl_model.transformer, labelled, test, k=5)
    for (train_part, val_part, test_part), row in zip(probes, judged.values()):
        # the penalty is chosen on the validation part of the seed's labels; test only scores
        assert torch.equal(train_part[1], labelled.labels)
        assert torch.equal(val_part[1], val.labels) and torch.equal(test_part[1], test.labels)
        assert row["probe_val_top1"] == max(real_probe(train_part, val_part,
                                                       test_part).val_top1.values())
        assert 0 <= row["probe_top1"] <= 1
    assert probes[0][0][0].shape == probes[1][0][0].shape  # the same images, other weights
    assert not torch.equal(probes[0][0][0], probes[1][0][0])


def test_feature_comparison_needs_a_validation_part_for_the_probes_penalty(pretrained_run):
    with pytest.raises(ValueError, match="the linear probe chooses its penalty on a validation "
                                         "part: set val_per_class > 0"):
        feature_comparison("smoke", str(pretrained_run.run_dir), 10, device="cpu", val_per_class=0,
                           runs_dir=str(pretrained_run.run_dir.parent.parent))


@pytest.mark.slow
def test_train_all_finishes_every_run_in_worker_processes(tmp_path):
    """The search's and the seeds' runs, two at a time: each run is finished and reads back
    exactly as a run trained in this process would."""
    configs = [smoke_finetune_config(tmp_path, model="s-cnn", epochs=1, lr=lr)
               for lr in (1e-3, 3e-3)]
    train_all(configs, workers=2)
    for config in configs:
        metrics = read_metrics(tmp_path / "finetune" / run_name(config))
        assert [m["epoch"] for m in metrics] == [1] and "test_top1" in metrics[0]


# A pretraining config with an architecture and image size of its own, for the configs alone.
PRETRAINED = profile_config("smoke", "pretrain", grid=3, heads=1, blocks=3, image_size=24)


def test_method_config_takes_the_pretrained_architecture_and_the_seeds_labels():
    for method in ("APL fine-tune", "BENCHMARK", "BENCHMARK + positions"):
        config = method_config(method, 30, "smoke", "runs/pre", PRETRAINED, seed=2)
        assert config.architecture == {k: getattr(PRETRAINED, k) for k in ARCHITECTURE_FIELDS}
        assert (config.model, config.npc, config.image_size) == ("apl", 30, 24), method
        assert config.label_seed == label_seed(2) == 44 and config.seed == 2
    assert method_config("S-CNN", 10, "smoke", "runs/pre", PRETRAINED).label_seed == 42


def test_method_config_pretrained_positions_and_cnns_by_name():
    def config(method):
        return method_config(method, 10, "smoke", "runs/pre", PRETRAINED)

    assert config("APL fine-tune").pretrained == "runs/pre"
    assert config("BENCHMARK").pretrained == config("BENCHMARK + positions").pretrained == ""
    assert [config(m).positional_embedding for m in METHODS] == [False, False, True, False, False]
    assert (config("S-CNN").model, config("S-ResNet-18").model) == ("s-cnn", "s-resnet")
    assert config("S-CNN").pretrained == "" and not config("S-CNN").head_only
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['ViT'\]; choose from .*'S-CNN'"):
        config("ViT")


class InlinePool:
    """concurrent.futures.ProcessPoolExecutor's part train_all uses, run in this process."""

    created = []

    def __init__(self, workers, mp_context, initializer, initargs):
        self.created.append(dict(workers=workers, start_method=mp_context.get_start_method(),
                                 threads=initargs))
        initializer(*initargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, function, *args):
        future = concurrent.futures.Future()
        future.set_result(function(*args))
        return future


def test_train_all_finishes_each_run_in_workers_that_share_the_threads(monkeypatch):
    finished = []
    monkeypatch.setattr(comparison.concurrent.futures, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(comparison, "finetune",
                        lambda config, resume="never": finished.append((config, resume)))
    monkeypatch.setattr(comparison.torch, "get_num_threads", lambda: 5)
    monkeypatch.setattr(comparison.torch, "set_num_threads", lambda threads: None)
    monkeypatch.setattr(comparison, "end_with_parent", lambda parent: None)
    InlinePool.created.clear()
    ended = []
    train_all(["a", "b", "c"], workers=2, finished=ended.append)
    assert finished == [("a", "auto"), ("b", "auto"), ("c", "auto")], "finished runs are kept"
    assert sorted(ended) == [0, 1, 2], "each run's index reported as it ends"
    # spawned, not forked: a fork of a process that has run torch can deadlock
    assert InlinePool.created == [dict(workers=2, start_method="spawn",
                                       threads=(2, os.getpid()))]
    train_all(["a"], workers=8)
    assert InlinePool.created[-1]["threads"] == (1, os.getpid()), "at least one thread each"


def test_a_worker_takes_its_threads_and_asks_to_end_with_its_parent(monkeypatch):
    """In process, with the kernel faked: the spawned workers' start, which the test of the
    real processes below sees only from outside."""
    calls = []

    class Libc:
        def prctl(self, option, sig):
            calls.append(("prctl", option, sig))

    def cdll(name, use_errno=False):
        calls.append(("CDLL", name, use_errno))
        return Libc()

    monkeypatch.setattr(comparison.ctypes, "CDLL", cdll)
    monkeypatch.setattr(comparison.os, "getppid", lambda: 41)
    monkeypatch.setattr(comparison.os, "kill", lambda pid, sig: calls.append(("kill", pid, sig)))
    monkeypatch.setattr(comparison.sys, "platform", "linux")
    comparison.end_with_parent(41)  # the parent is alive: the request is enough
    # the C library of this process, errno kept; PR_SET_PDEATHSIG is 1 in linux/prctl.h
    assert calls == [("CDLL", None, True), ("prctl", 1, signal.SIGTERM)]
    calls.clear()
    comparison.end_with_parent(40)  # the parent ended before the request: end now
    assert calls[-1] == ("kill", os.getpid(), signal.SIGTERM)
    calls.clear()
    monkeypatch.setattr(comparison.sys, "platform", "darwin")
    comparison.end_with_parent(40)
    assert calls == [], "prctl is Linux's: elsewhere nothing is asked"
    started = []
    monkeypatch.setattr(comparison.torch, "set_num_threads", started.append)
    monkeypatch.setattr(comparison, "end_with_parent", started.append)
    comparison._start_worker(3, 41)
    assert started == [3, 41]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_worker_ends_with_the_process_that_started_it(tmp_path):
    """A study stopped with `kill` takes its workers with it (they would train on, and write
    the same runs as the restarted study)."""
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time
sys.path.insert(0, {str(ROOT)!r})
from apl_core.comparison import end_with_parent
pid = os.fork()
if pid == 0:
    end_with_parent(os.getppid())
    open({str(pid_file)!r}, "w").write(str(os.getpid()))
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    stat = Path(f"/proc/{worker}/stat")
    while time.monotonic() < deadline:
        try:  # ended: gone, or a zombie where nothing reaps orphans
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived the process that started it")


def test_feature_comparison_probes_the_pretrained_and_a_seeded_random_transformer(
        monkeypatch):
    """On the labelled images of the seed's NPC (the bank), with the features of the
    pretraining run (looked up by name in runs_dir) and of the same architecture with seeded
    random weights; the test images are the queries."""
    from apl_core.data import ImageSet
    from apl_core.model import build_pretrain_model

    pre = profile_config("smoke", "pretrain", image_size=16, grid=2, crop=1, blocks=1)
    torch.manual_seed(5)
    pretrained = build_pretrain_model(pre).eval()  # stands in for the trained run
    looked_up, asked, resolved, pooled_on, neighbours = [], [], [], [], []

    def load(run, runs_dir="runs", device="cpu"):
        looked_up.append((run, runs_dir))
        assert device == "cpu:0", "the pretrained weights go to the device resolved"
        return pretrained, pre

    def resolve(name):
        resolved.append(name)
        return "cpu:0"

    def pool(transformer, images, device="cpu"):
        pooled_on.append(device)
        return real_pool(transformer, images, device)

    def sets(config):
        asked.append((config.npc, config.val_per_class, config.pretrained, config.label_seed))
        # a colour per class under strong noise: neither features place every image
        labels = torch.arange(60) % 10
        colours = torch.randint(0, 256, (10, 3), generator=torch.Generator().manual_seed(1))
        noise = torch.randint(-100, 100, (60, 3, 16, 16),
                              generator=torch.Generator().manual_seed(0))
        images = (colours[labels][..., None, None] + noise).clamp(0, 255).to(torch.uint8)
        labelled, val, test = (ImageSet(images[i::3], labels[i::3], list("abcdefghij"))
                               for i in range(3))
        return labelled, val, test

    real_pool, real_vote = comparison.pooled_features, comparison.knn_vote

    def vote(bank, bank_labels, queries, query_labels, k):
        neighbours.append(k)
        return real_vote(bank, bank_labels, queries, query_labels, k)

    monkeypatch.setattr(comparison, "knn_vote", vote)
    monkeypatch.setattr(comparison, "load_pretrained", load)
    monkeypatch.setattr(comparison, "finetune_sets", sets)
    monkeypatch.setattr(comparison, "resolve_device", resolve)
    monkeypatch.setattr(comparison, "pooled_features", pool)
    labelled, _, test = sets(profile_config("smoke", "finetune", val_per_class=2))
    judged = feature_comparison("smoke", "pre", 2, k=3, seed=3, runs_dir="elsewhere",
                                device="cpu", val_per_class=2)
    torch.manual_seed(3)
    random_model = build_pretrain_model(pre)
    assert {name: row["knn_top1"] for name, row in judged.items()} == {
        name: knn_accuracy(m.transformer, labelled, test, k=3)
        for name, m in (("APL-pretrained features", pretrained),
                        ("random-init features", random_model))}
    # the bank is the labelled images of the seed (label seed 42 + 3)
    assert looked_up == [("pre", "elsewhere")] and asked[1:] == [(2, 2, "pre", 45)]
    assert resolved == ["cpu"] and pooled_on == ["cpu:0"] * 6  # 3 parts x 2 feature sets
    assert all(set(row) == {"knn_top1", "probe_top1", "probe_penalty", "probe_val_top1"}
               for row in judged.values())
    by_default = feature_comparison("smoke", "pre", 2, val_per_class=2)  # seed 0, k = 20
    torch.manual_seed(0)
    random_model = build_pretrain_model(pre)
    assert by_default["random-init features"]["knn_top1"] == knn_accuracy(
        random_model.transformer, labelled, test, k=20)
    assert feature_comparison("smoke", "pre", 2, seed=1, val_per_class=2) != by_default
    assert looked_up[-1] == ("pre", "runs") and resolved[-1] == "auto"  # the defaults
    assert neighbours == [3, 3, 20, 20, 20, 20]
