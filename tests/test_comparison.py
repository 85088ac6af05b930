"""Notebook 04's experiment: every method sees the same labelled and test images and the same
schedule; results are the runs' own; finished runs are read back, not retrained."""
from __future__ import annotations

from pathlib import Path

import pytest

from apl_core.comparison import METHODS, compare, knn_comparison, method_config, train_all
from apl_core.data import finetune_sets
from apl_core.rundir import read_metrics, run_name
from apl_core.train import load_pretrained
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
