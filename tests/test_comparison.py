"""Notebook 04's experiment: every method sees the same labelled and test images and the same
schedule; results are the runs' own; finished runs are read back, not retrained."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apl_core import comparison
from apl_core.comparison import (
    FEATURES, feature_comparison,
    METHODS, compare, knn_comparison, label_seed, method_config, search, train_all,
)
from apl_core.config import ARCHITECTURE_FIELDS, profile_config
from apl_core.data import finetune_sets
from apl_core.rundir import read_metrics, run_name
from apl_core.train import RunResult, load_pretrained
from apl_core.tuning import candidates, tuned_settings
from conftest import smoke_finetune_config

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
    assert c["APL linear probe"].pretrained and c["APL linear probe"].head_only
    assert c["BENCHMARK"].benchmark and not c["BENCHMARK"].head_only
    assert c["BENCHMARK linear probe"].benchmark and c["BENCHMARK linear probe"].head_only
    for method in ("APL fine-tune", "BENCHMARK", "BENCHMARK linear probe"):
        assert c[method].architecture["heads"] == pre.heads  # the pretrained architecture
        assert c[method].architecture["blocks"] == pre.blocks
    assert (c["S-CNN"].model, c["S-ResNet-18"].model) == ("s-cnn", "s-resnet")
    assert len({config.run_name or id(config) for config in c.values()}) == len(METHODS)
    with pytest.raises(ValueError, match="choose from"):
        method_config("APL", 10, "smoke", str(pretrained_run.run_dir), pre)


def test_compare_reports_the_runs_own_metrics_and_reuses_them(pretrained_run, tmp_path):
    methods = ("APL linear probe", "BENCHMARK linear probe")
    kwargs = dict(runs_dir=str(pretrained_run.run_dir.parent.parent), device="cpu",
                  precision="fp32", epochs=1, quiet=True)
    rows = compare("smoke", str(pretrained_run.run_dir), [10], methods, **kwargs)
    assert [r["method"] for r in rows] == list(methods)
    for row in rows:
        last = [m for m in read_metrics(row["run_dir"]) if "test_top1" in m][-1]
        assert row["test_top1"] == last["test_top1"] and row["test_images"] == 200
    stamps = [(Path(r["run_dir"]) / "last.pt").stat().st_mtime_ns for r in rows]
    again = compare("smoke", str(pretrained_run.run_dir), [10], methods, **kwargs)
    assert [r["test_top1"] for r in again] == [r["test_top1"] for r in rows]
    assert [(Path(r["run_dir"]) / "last.pt").stat().st_mtime_ns
            for r in again] == stamps, "a finished run was trained again"


def test_knn_comparison_apl_against_random_features(pretrained_run):
    kwargs = dict(runs_dir=str(pretrained_run.run_dir.parent.parent), device="cpu")
    knn = knn_comparison("smoke", str(pretrained_run.run_dir), 10, k=5, **kwargs)
    assert list(knn) == ["APL-pretrained features", "random-init features"]
    assert all(0 <= v <= 1 for v in knn.values()) and len(set(knn.values())) == 2
    with pytest.raises(ValueError, match="val_per_class"):
        knn_comparison("smoke", str(pretrained_run.run_dir), 10, queries="val", **kwargs)


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
    knn = knn_comparison("smoke", str(pretrained_run.run_dir), 10, k=5, seed=1,
                         val_per_class=2, **kwargs)
    assert {name: row["knn_top1"] for name, row in judged.items()} == knn
    _, pretrained = load_pretrained(str(pretrained_run.run_dir), runs_dir=kwargs["runs_dir"])
    config = method_config("APL fine-tune", 10, "smoke", str(pretrained_run.run_dir),
                           pretrained, seed=1, val_per_class=2, **kwargs)
    labelled, val, test = finetune_sets(config)
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
        feature_comparison("smoke", str(pretrained_run.run_dir), 10, device="cpu",
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
    for method in ("APL fine-tune", "APL linear probe", "BENCHMARK", "BENCHMARK + positions"):
        config = method_config(method, 30, "smoke", "runs/pre", PRETRAINED, seed=2)
        assert config.architecture == {k: getattr(PRETRAINED, k) for k in ARCHITECTURE_FIELDS}
        assert (config.model, config.npc, config.image_size) == ("apl", 30, 24), method
        assert config.label_seed == label_seed(2) == 44 and config.seed == 2
    assert method_config("S-CNN", 10, "smoke", "runs/pre", PRETRAINED).label_seed == 42


def test_method_config_pretrained_positions_and_cnns_by_name():
    def config(method):
        return method_config(method, 10, "smoke", "runs/pre", PRETRAINED)

    assert config("APL fine-tune").pretrained == config("APL linear probe").pretrained == \
        "runs/pre"
    assert config("BENCHMARK").pretrained == config("BENCHMARK + positions").pretrained == ""
    assert [config(m).positional_embedding for m in METHODS[:5]] == [False] * 4 + [True]
    assert (config("S-CNN").model, config("S-ResNet-18").model) == ("s-cnn", "s-resnet")
    assert config("S-CNN").pretrained == "" and not config("S-CNN").head_only
    with pytest.raises(ValueError, match="method='ViT' is invalid: choose from .*'S-CNN'"):
        config("ViT")


def test_method_config_probes_take_the_profiles_probe_settings_and_the_searchs_choice():
    def config(method, **kwargs):
        return method_config(method, 10, "quick", "runs/pre", PRETRAINED, **kwargs)

    untuned = {m: config(m, tuned=False) for m in METHODS}
    assert untuned["APL linear probe"].head_only and untuned["BENCHMARK linear probe"].head_only
    assert untuned["APL linear probe"].lr == profile_config("quick", "probe").lr != \
        untuned["APL fine-tune"].lr == profile_config("quick", "finetune").lr
    chosen = tuned_settings("quick")
    for method in METHODS:
        tuned = config(method)
        assert {k: getattr(tuned, k) for k in ("lr", "epochs", "eval_every")} == \
            chosen[(method, 10)], method
    assert config("BENCHMARK", lr=0.5, epochs=3).lr == 0.5, "a setting given wins"
    npc_without_choice = method_config("S-CNN", 7, "quick", "runs/pre", PRETRAINED)
    assert npc_without_choice.lr == untuned["S-CNN"].lr


def _fake_run(config, tmp_path, step=0):
    """A finished run's RunResult: 3 epochs, the second evaluated on the test set (its numbers
    follow config.lr), the last on the validation part only."""
    metrics = [
        dict(epoch=1, step=step, train_top1=0.1, epoch_time_s=1.0),
        dict(epoch=2, step=2 * step, train_top1=0.15, epoch_time_s=1.5, test_top1=config.lr,
             test_top5=2 * config.lr, test_nll=3 * config.lr, val_top1=config.lr / 2),
        dict(epoch=3, step=3 * step, train_top1=0.2, epoch_time_s=2.0, val_top1=config.lr / 4),
    ]
    run_dir = tmp_path / f"run-{config.npc}-{config.lr}-{config.epochs}"
    return RunResult(run_dir, run_dir / "last.pt", metrics, config)


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """compare and search without training: a stand-in pretraining run (PRETRAINED, looked up
    by name), test sets of test_per_class images per class (without making the images) and
    fake finished runs; records the lookups and the workers asked for."""
    calls = {"load_pretrained": [], "workers": []}

    def load(run, runs_dir="runs", device="cpu"):
        calls["load_pretrained"].append((run, runs_dir))
        return None, PRETRAINED

    def results(configs, workers):
        calls["workers"].append(workers)
        return (_fake_run(config, tmp_path, step=10) for config in configs)

    monkeypatch.setattr(comparison, "load_pretrained", load)
    monkeypatch.setattr(comparison, "_results", results)
    monkeypatch.setattr(comparison, "finetune_sets", lambda config: (
        None, None, [None] * (config.test_per_class * config.num_classes)))
    return calls


def test_compare_makes_a_row_per_method_and_npc_from_each_runs_last_evaluation(
        fake_training, tmp_path):
    reported = []
    methods = ("APL linear probe", "S-CNN")
    rows = compare("smoke", "pre", [10, 20], methods, report=reported.append, workers=2,
                   runs_dir=str(tmp_path), device="cpu", test_per_class=3)
    assert fake_training == {"load_pretrained": [("pre", str(tmp_path))], "workers": [2]}
    assert reported == rows
    assert [(r["method"], r["npc"]) for r in rows] == [
        ("APL linear probe", 10), ("S-CNN", 10), ("APL linear probe", 20), ("S-CNN", 20)]
    lr = method_config("S-CNN", 20, "smoke", "pre", PRETRAINED).lr  # the profile's
    assert rows[3] == dict(
        method="S-CNN", npc=20, lr=lr, epochs=3, test_images=30, test_top1=lr,
        test_top5=2 * lr, test_nll=3 * lr, train_top1=0.2, train_time_s=4.5,
        run_dir=str((tmp_path / f"run-20-{lr}-2").resolve()), val_top1=lr / 2)


def test_compare_rows_have_no_validation_accuracy_without_a_validation_part(
        fake_training, monkeypatch, tmp_path):
    def results(configs, workers):
        fake_training["workers"].append(workers)
        for config in configs:
            run = _fake_run(config, tmp_path)
            del run.metrics[1]["val_top1"]
            yield run

    monkeypatch.setattr(comparison, "_results", results)
    rows = compare("smoke", "pre", [10], ("S-CNN",), test_per_class=3)
    assert "val_top1" not in rows[0] and rows[0]["test_top1"] == rows[0]["lr"]
    # by default from runs/, one run at a time
    assert fake_training == {"load_pretrained": [("pre", "runs")], "workers": [1]}


def test_search_scores_every_candidate_on_the_validation_part_only(fake_training, tmp_path):
    reported = []
    rows = search("smoke", "pre", [10], ("APL fine-tune", "S-CNN"), report=reported.append,
                  workers=3, runs_dir=str(tmp_path), device="cpu", val_per_class=2)
    assert fake_training == {"load_pretrained": [("pre", str(tmp_path))], "workers": [3]}
    assert reported == rows
    expected = []
    for method in ("APL fine-tune", "S-CNN"):
        base = method_config(method, 10, "smoke", "pre", PRETRAINED, tuned=False,
                             runs_dir=str(tmp_path), device="cpu", val_per_class=2)
        for candidate in candidates(base):
            lr, epochs = candidate["lr"], candidate["epochs"]
            expected.append(dict(method=method, npc=10, lr=lr, epochs=epochs, steps=30,
                                 val_top1=lr / 4, train_top1=0.2, seconds=4.5,
                                 run=f"run-10-{lr}-{epochs}"))
    assert rows == expected


def test_search_runs_untuned_configs_that_never_see_the_test_set(fake_training, monkeypatch):
    seen = []

    def results(configs, workers):
        fake_training["workers"].append(workers)
        seen.extend(configs)
        return iter([])

    monkeypatch.setattr(comparison, "_results", results)
    assert search("quick", "pre", [10], ("BENCHMARK",), val_per_class=2) == []
    base = method_config("BENCHMARK", 10, "quick", "pre", PRETRAINED, tuned=False)
    assert [(c.lr, c.epochs, c.eval_every) for c in seen] == \
        [(c["lr"], c["epochs"], c["eval_every"]) for c in candidates(base)]
    assert all(not c.evaluate_test and c.val_per_class == 2 for c in seen)
    assert fake_training == {"load_pretrained": [("pre", "runs")], "workers": [1]}


def test_search_needs_a_validation_part(fake_training):
    with pytest.raises(ValueError, match="the smoke profile has no validation part to search "
                                         "on: give val_per_class > 0"):
        search("smoke", "pre", [10], ("S-CNN",))


def test_results_train_ahead_in_workers_or_one_run_as_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(comparison, "train_all", lambda configs, workers: calls.append(
        ("train_all", list(configs), workers)))
    monkeypatch.setattr(comparison, "finetune", lambda config, resume="never": calls.append(
        ("finetune", config, resume)) or config.upper())
    results = comparison._results(["a", "b"], workers=1)
    assert next(results) == "A" and calls == [("finetune", "a", "auto")]
    assert list(results) == ["B"] and calls[1:] == [("finetune", "b", "auto")]
    calls.clear()
    assert list(comparison._results(["a", "b"], workers=2)) == ["A", "B"]
    assert calls == [("train_all", ["a", "b"], 2), ("finetune", "a", "auto"),
                     ("finetune", "b", "auto")]


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

    def map(self, function, items):
        return map(function, items)


def test_train_all_finishes_each_run_in_workers_that_share_the_threads(monkeypatch):
    finished = []
    monkeypatch.setattr(comparison.concurrent.futures, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(comparison, "finetune",
                        lambda config, resume="never": finished.append((config, resume)))
    monkeypatch.setattr(comparison.torch, "get_num_threads", lambda: 5)
    monkeypatch.setattr(comparison.torch, "set_num_threads", lambda threads: None)
    InlinePool.created.clear()
    train_all(["a", "b", "c"], workers=2)
    assert finished == [("a", "auto"), ("b", "auto"), ("c", "auto")], "finished runs are kept"
    # spawned, not forked: a fork of a process that has run torch can deadlock
    assert InlinePool.created == [dict(workers=2, start_method="spawn", threads=(2,))]
    train_all(["a"], workers=8)
    assert InlinePool.created[-1]["threads"] == (1,), "at least one thread each"


def test_knn_comparison_names_the_valid_queries():
    with pytest.raises(ValueError, match="queries='train' is invalid: use 'test' or 'val'"):
        knn_comparison("smoke", "pre", 10, queries="train")


def test_knn_comparison_probes_the_pretrained_and_a_seeded_random_transformer(monkeypatch):
    """On the labelled images of the NPC (the bank) and the chosen queries, with the features
    of the pretraining run (looked up by name in runs_dir) and of the same architecture with
    seeded random weights."""
    from apl_core.analysis import knn_accuracy
    from apl_core.data import ImageSet
    from apl_core.model import build_pretrain_model

    pre = profile_config("smoke", "pretrain", image_size=16, grid=2, crop=1, blocks=1)
    torch.manual_seed(5)
    pretrained = build_pretrain_model(pre).eval()  # stands in for the trained run
    looked_up, asked = [], []

    def load(run, runs_dir="runs", device="cpu"):
        looked_up.append((run, runs_dir))
        return pretrained, pre

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
        return labelled, val if config.val_per_class else None, test

    monkeypatch.setattr(comparison, "load_pretrained", load)
    monkeypatch.setattr(comparison, "finetune_sets", sets)
    labelled, val, test = sets(profile_config("smoke", "finetune", val_per_class=2))
    torch.manual_seed(3)
    random_model = build_pretrain_model(pre)
    for queries, query_set in (("val", val), ("test", test)):
        knn = knn_comparison("smoke", "pre", 2, k=3, seed=3, queries=queries, runs_dir="elsewhere",
                             device="cpu", val_per_class=2)
        assert knn == {name: knn_accuracy(m.transformer, labelled, query_set, k=3)
                       for name, m in (("APL-pretrained features", pretrained),
                                       ("random-init features", random_model))}, queries
    # the bank is the labelled images of the seed (label seed 42 + 3)
    assert looked_up == [("pre", "elsewhere")] * 2 and asked[1:] == [(2, 2, "pre", 45)] * 2
    torch.manual_seed(0)
    random_model = build_pretrain_model(pre)
    by_default = knn_comparison("smoke", "pre", 2)  # seed 0, the test images
    assert by_default == {name: knn_accuracy(m.transformer, labelled, test)
                          for name, m in (("APL-pretrained features", pretrained),
                                          ("random-init features", random_model))}
    assert knn_comparison("smoke", "pre", 2, seed=1) != by_default
    assert looked_up[-1] == ("pre", "runs")
    with pytest.raises(ValueError, match="^queries='val' needs a validation part: set "
                                         "val_per_class > 0$"):
        knn_comparison("smoke", "pre", 2, queries="val")
