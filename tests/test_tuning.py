"""The hyper-parameter search: the same grid for every method, lengths counted in steps,
the choice made on validation only, the committed choice applied by the comparison."""
from __future__ import annotations

import json

import pytest
import torch

from apl_core import tuning
from apl_core.comparison import METHODS, method_config, search
from apl_core.config import profile_config
from apl_core.data import finetune_sets
from apl_core.rundir import read_metrics
from apl_core.train import load_pretrained


def test_every_method_searches_a_10x_learning_rate_span_and_two_step_budgets():
    for phase in ("finetune", "probe"):
        for npc in (10, 30, 100):
            config = profile_config("quick", phase, npc=npc)
            grid = tuning.candidates(config)
            rates = sorted({c["lr"] for c in grid})
            assert len(rates) == 3 and rates[-1] / rates[0] == pytest.approx(10)
            assert config.lr in rates
            steps_per_epoch = -(-npc * 10 // config.batch_size)
            lengths = sorted({c["epochs"] for c in grid})
            assert all(e * steps_per_epoch >= s for e, s in zip(lengths, tuning.STEP_BUDGETS))
            assert all((e - 1) * steps_per_epoch < s
                       for e, s in zip(lengths, tuning.STEP_BUDGETS))
            assert all(c["eval_every"] == c["epochs"] for c in grid)
    # NPC 10 at batch 32 is 4 steps an epoch: not 20 epochs (80 steps) but 25 and 75
    short, long = sorted({c["epochs"] for c in tuning.candidates(
        profile_config("quick", "finetune", npc=10))})
    assert (short, long) == (25, 75)


def test_choice_is_the_best_validation_accuracy_first_of_equals():
    rows = [dict(method="m", npc=10, lr=1e-4, epochs=5, val_top1=0.30, test_top1=0.9),
            dict(method="m", npc=10, lr=3e-4, epochs=5, val_top1=0.40, test_top1=0.1),
            dict(method="m", npc=10, lr=1e-3, epochs=15, val_top1=0.40, test_top1=0.2),
            dict(method="m", npc=30, lr=1e-3, epochs=15, val_top1=0.20, test_top1=0.2)]
    assert tuning.choose(rows) == {("m", 10): dict(lr=3e-4, epochs=5, eval_every=5),
                                   ("m", 30): dict(lr=1e-3, epochs=15, eval_every=15)}


def write_search(directory, rows, profile="smoke"):
    directory.mkdir(exist_ok=True)
    (directory / f"{profile}_search.json").write_text(json.dumps({"rows": rows}))


def test_the_committed_choice_is_applied_and_explicit_settings_win(pretrained_run, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(tuning, "RESULTS_DIR", tmp_path)
    _, pre = load_pretrained(pretrained_run.run_dir)
    run = str(pretrained_run.run_dir)
    untuned = method_config("BENCHMARK", 10, "smoke", run, pre)
    write_search(tmp_path, [dict(method="BENCHMARK", npc=10, lr=7e-4, epochs=9, val_top1=0.5)])
    tuned = method_config("BENCHMARK", 10, "smoke", run, pre)
    assert (tuned.lr, tuned.epochs, tuned.eval_every) == (7e-4, 9, 9)
    assert (untuned.lr, untuned.epochs) != (7e-4, 9)
    assert method_config("BENCHMARK", 10, "smoke", run, pre, epochs=2).epochs == 2
    assert method_config("BENCHMARK", 10, "smoke", run, pre, tuned=False) == untuned
    other = method_config("BENCHMARK", 30, "smoke", run, pre)  # not searched: the profile's
    assert (other.lr, other.epochs) == (untuned.lr, untuned.epochs)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"rows": [{"method": "m"}]}),
                                  json.dumps({"no rows": []})])
def test_a_damaged_search_file_names_itself_and_the_fix(tmp_path, monkeypatch, text):
    monkeypatch.setattr(tuning, "RESULTS_DIR", tmp_path)
    (tmp_path / "smoke_search.json").write_text(text)
    with pytest.raises(ValueError, match="smoke_search.json.*git checkout.*benchmarks/search.py"):
        tuning.tuned_settings("smoke")


def test_search_scores_candidates_on_validation_only(pretrained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "RESULTS_DIR", tmp_path)  # no committed choice for smoke
    monkeypatch.setattr(tuning, "STEP_BUDGETS", (2,))
    monkeypatch.setattr(tuning, "LR_FACTORS", (1.0, 3.0))
    settings = dict(runs_dir=str(tmp_path), device="cpu", precision="fp32", quiet=True,
                    val_per_class=2)
    rows = search("smoke", str(pretrained_run.run_dir), [10], ("APL linear probe", "S-CNN"),
                  **settings)
    assert [(r["method"], r["epochs"], r["steps"]) for r in rows] == [
        ("APL linear probe", 1, 2)] * 2 + [("S-CNN", 1, 2)] * 2
    assert rows[1]["lr"] == pytest.approx(3 * rows[0]["lr"])
    for row in rows:
        metrics = read_metrics(tmp_path / "finetune" / row["run"])
        assert metrics[-1]["val_top1"] == row["val_top1"]
        assert not any(key.startswith("test") for m in metrics for key in m)
    assert set(tuning.choose(rows)) == {("APL linear probe", 10), ("S-CNN", 10)}
    with pytest.raises(ValueError, match="no validation part"):
        search("smoke", str(pretrained_run.run_dir), [10], ("S-CNN",),
               **{**settings, "val_per_class": 0})


def test_seed_draws_its_own_labels_on_the_same_test_images(pretrained_run):
    _, pre = load_pretrained(pretrained_run.run_dir)
    run = str(pretrained_run.run_dir)
    sets = {seed: finetune_sets(method_config(METHODS[0], 10, "smoke", run, pre, seed=seed,
                                              val_per_class=2))
            for seed in (0, 1)}
    assert method_config(METHODS[0], 10, "smoke", run, pre, seed=1).label_seed == 43
    (train0, val0, test0), (train1, val1, test1) = sets[0], sets[1]
    assert not torch.equal(train0.images, train1.images)
    assert not torch.equal(val0.images, val1.images)
    assert torch.equal(test0.images, test1.images)
