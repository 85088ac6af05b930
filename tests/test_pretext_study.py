"""The pretext study's configs and tables (apl_core.pretext_study), and the study run with its
pretraining, feature scores, fine-tuning and test scoring replaced by fakes (FakeRuns): which
rows it writes, what it reads back and what it reports. The study with real runs, through its
script, runs at the smoke profile in tests/test_experiments.py."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from apl_core import pretext_study, search
from apl_core.config import profile_config
from apl_core.controls import control_configs
from apl_core.pretext_study import (
    FINETUNES, chosen_rate, curve_rows, finetune_config, finetunes_of, measures, paired_table,
    study_pretraining, task_table,
)
from apl_core.rundir import run_name
from apl_core.search import RECIPES
from apl_core.train import RunResult
from apl_core.trial_store import TrialStore


def test_apl_is_notebook_02s_pretraining_and_each_task_has_its_positional_embedding():
    apl = study_pretraining("quick", "apl", 1)
    assert run_name(apl) == run_name(profile_config("quick", "pretrain", seed=1))
    for task, positions in (("rotation", False), ("jigsaw", True), ("mae", True),
                            ("mp3", False)):
        config = study_pretraining("quick", task, 1)
        assert (config.pretext, config.positional_embedding) == (task, positions)
        assert (config.num_images, config.epochs, config.seed) == (apl.num_images, apl.epochs, 1)


def test_the_small_budget_is_notebook_06s_and_its_apl_run_is_the_apl_control():
    apl_control = next(iter(control_configs("quick", seed=1).values()))
    small = study_pretraining("quick", "apl", 1, budget="small")
    assert run_name(small) == run_name(apl_control)
    mae = study_pretraining("quick", "mae", 1, budget="small")
    assert (mae.num_images, mae.epochs, mae.pretext) == (4000, 4, "mae")
    assert mae.snapshot_every == 0 and study_pretraining("quick", "mae", 1).snapshot_every == 1
    with pytest.raises(ValueError, match="budget='tiny' is invalid"):
        study_pretraining("quick", "mae", 1, budget="tiny")


def test_the_fine_tuning_is_the_searched_base_recipe_from_the_tasks_own_pretraining(tmp_path):
    for name, (task, positions) in FINETUNES.items():
        config = finetune_config("quick", name, 2, runs_dir=str(tmp_path))
        pretraining = study_pretraining("quick", task, 2, runs_dir=str(tmp_path))
        assert config.pretrained == str(tmp_path / "pretrain" / run_name(pretraining))
        assert config.runs_dir == str(tmp_path)
        assert config.positional_embedding is positions
        assert config.npc == 10 and config.label_seed == 44 and config.select_best
        assert not config.evaluate_test
        assert {k: getattr(config, k) for k in RECIPES["transformer"]} == RECIPES["transformer"]
        assert config.mixup_alpha == 0 and config.augment_policy == "none"
    assert finetune_config("quick", "mp3 + positions", 0).positional_embedding


def test_unknown_tasks_and_a_study_without_apl_are_refused():
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['sudoku'\]"):
        pretext_study.check_tasks(["apl", "sudoku"])
    with pytest.raises(ValueError, match="include 'apl'"):
        pretext_study.check_tasks(["mae"])


def features(task: str, seed: int, probe: float, knn: float) -> dict:
    return {"kind": "features", "task": task, "seed": seed, "test_images": 1000,
            "seconds_per_epoch": 10.0 * (seed + 1),
            "features": {"10": {"probe_top1": probe, "knn_top1": knn}},
            "pretext_curve": [], "budget_curve": []}


def scored(name: str, seed: int, top1: float) -> dict:
    return {"kind": "test", "finetune": name, "seed": seed, "test_top1": top1,
            "test_images": 1000}


RESULTS = {"trials": [
    features("apl", 0, 0.40, 0.30), features("apl", 1, 0.42, 0.31), features("apl", 2, 0.41, 0.29),
    features("mae", 0, 0.20, 0.30), features("mae", 1, 0.21, 0.32), features("mae", 2, 0.22, 0.28),
    scored("apl", 0, 0.5), scored("apl", 1, 0.5), scored("apl", 2, 0.5),
    scored("mae", 0, 0.6), scored("mae", 1, 0.4), scored("mae", 2, 0.5),
]}


def test_every_measure_is_keyed_by_task_and_seed():
    found = measures(RESULTS)
    assert set(found) == {"probe NPC 10", "kNN NPC 10", "fine-tune NPC 10"}
    assert found["probe NPC 10"][("mae", 1)] == 0.21
    assert found["fine-tune NPC 10"][("apl", 2)] == 0.5


def test_fine_tunings_from_a_retrained_pretraining_are_named_with_their_brackets():
    def judged(task, seed, loss):
        return {**features(task, seed, 0.4, 0.3), "pretext_curve": [{"epoch": 1, "loss": loss}]}

    def trial(name, **loss):
        return {"kind": "trial", "finetune": name, "seed": 0, "lr": 1e-4, **loss}

    rows = [judged("apl", 0, 1.0), judged("apl", 1, 1.1), judged("rotation", 0, 3.0),
            judged("mae", 0, 4.0), judged("mp3", 0, 2.0),
            scored("apl", 0, 0.5), scored("apl", 1, 0.5), scored("rotation", 0, 0.5),
            scored("mae", 0, 0.5), {**scored("mp3", 0, 0.5), "pretraining_loss": 2.0},
            {**scored("mp3 + positions", 0, 0.5), "pretraining_loss": 2.0},
            trial("apl"), trial("rotation"), trial("mae"), trial("mp3"),
            trial("mp3 + positions", pretraining_loss=2.0)]
    assert pretext_study.retrained({"trials": rows}) == []  # each from its features' pretraining
    assert pretext_study.pretraining_note({"trials": rows}) == ""
    rows[7] = {**rows[7], "pretraining_loss": 3.5}  # rotation and mp3 retrained, their
    rows[10] = {**rows[10], "pretraining_loss": 2.5}  # brackets not
    rows[13] = {**rows[13], "pretraining_loss": 4.5}  # mae bracketed on a second pretraining
    assert pretext_study.retrained({"trials": rows}) == [("rotation", 0), ("mp3", 0)]
    note = " ".join(pretext_study.pretraining_note({"trials": rows}).split())
    assert note.startswith("The fine-tunings of rotation seed 0, mp3 seed 0 started from a "
                           "second pretraining of the same task, recipe and seed")
    assert note.endswith("fine-tuning the second. The learning rates of rotation, mae, "
                         "mp3 + positions were bracketed on another pretraining of seed 0 than "
                         "the one their test fine-tuned: a rate chosen on validation images "
                         "carries over as it does to seeds 1 and 2.")
    retested = {(row["finetune"], row["seed"]): row for row in rows if row["kind"] == "test"}
    for (name, seed), row in retested.items():
        row["pretraining_loss"] = 9.0 + seed
    for row in rows[11:]:
        row["pretraining_loss"] = 9.0  # every bracket on the second pretraining too
    note = pretext_study.pretraining_note({"trials": rows})
    assert note.startswith("The fine-tunings of every task and seed started")
    assert note.endswith("fine-tuning the second.")


def test_the_paired_table_calls_a_difference_only_beyond_the_detectable_one():
    rows = {row["measure"]: row for row in paired_table(RESULTS)}
    assert {row["task"] for row in rows.values()} == {"mae"}
    probe = rows["probe NPC 10"]
    assert probe["difference (points)"] == "-20.0" and probe["verdict"] == "lower"
    assert probe["seeds"] == 3
    assert rows["kNN NPC 10"]["verdict"] == "no detectable difference"
    assert rows["fine-tune NPC 10"]["difference (points)"] == "+0.0"
    assert float(rows["probe NPC 10"]["detectable (points)"]) >= 100 * 2 * (
        2 * 0.41 * 0.59 / 1000) ** 0.5 - 0.05


COST = {"profile": "quick", "tasks": [
    {"task": "apl", "epoch_seconds": 31.4, "relative_to_apl": 1.0},
    {"task": "mae", "epoch_seconds": 20.6, "relative_to_apl": 0.656}]}


def test_the_task_table_gives_means_over_seeds_and_the_cost_table_each_epoch_alone():
    rows = {row["task"]: row for row in task_table(RESULTS)}
    assert set(rows) == {"apl", "mae"}
    assert rows["apl"] == {"task": "apl", "probe NPC 10": "41.0 ± 1.0",
                           "kNN NPC 10": "30.0 ± 1.0", "fine-tune NPC 10": "50.0 ± 0.0"}
    assert rows["mae"]["fine-tune NPC 10"] == "50.0 ± 10.0"
    assert pretext_study.cost_table(COST) == [
        {"task": "apl", "s / epoch": "31", "x APL's": "1.00"},
        {"task": "mae", "s / epoch": "21", "x APL's": "0.66"}]
    without_apl = {**COST, "tasks": [{**COST["tasks"][1], "relative_to_apl": None}]}
    assert pretext_study.cost_table(without_apl) == [
        {"task": "mae", "s / epoch": "21", "x APL's": ""}]


def test_the_chosen_rate_is_the_best_finite_trial_of_that_fine_tuning():
    trials = [{"kind": "trial", "finetune": "mae", "lr": 1e-4, "val_top1": 0.3},
              {"kind": "trial", "finetune": "mae", "lr": 3e-4, "val_top1": 0.5,
               "diverged": "learned nothing"},
              {"kind": "trial", "finetune": "mae", "lr": 3e-5, "val_top1": 0.4},
              {"kind": "trial", "finetune": "apl", "lr": 1e-3, "val_top1": 0.9},
              features("mae", 0, 0.2, 0.3)]
    assert chosen_rate(trials, "mae") == 3e-5


def test_check_tasks_accepts_known_tasks_with_apl_and_says_what_is_missing():
    pretext_study.check_tasks(["apl", "mae"])
    with pytest.raises(ValueError, match=r"^every task is paired against APL: include 'apl'$"):
        pretext_study.check_tasks(["mae", "jigsaw"])


def test_each_task_brings_its_fine_tunings():
    assert finetunes_of(["apl", "mae"]) == ["apl", "mae"]
    assert finetunes_of(["mp3", "apl"]) == ["apl", "mp3", "mp3 + positions"]


def test_the_paired_table_has_one_row_per_task_and_measure_against_apl():
    assert paired_table(RESULTS) == [
        {"task": "mae", "measure": "probe NPC 10", "seeds": 3, "difference (points)": "-20.0",
         "detectable (points)": "4.4", "verdict": "lower"},
        {"task": "mae", "measure": "kNN NPC 10", "seeds": 3, "difference (points)": "+0.0",
         "detectable (points)": "4.1", "verdict": "no detectable difference"},
        {"task": "mae", "measure": "fine-tune NPC 10", "seeds": 3,
         "difference (points)": "+0.0", "detectable (points)": "24.8",
         "verdict": "no detectable difference"}]


def test_the_task_table_lists_a_fine_tuning_without_a_pretraining_of_its_own():
    rows = {row["task"]: row for row in task_table(
        {"trials": RESULTS["trials"] + [scored("mp3 + positions", 0, 0.7)]})}
    assert rows["mp3 + positions"]["fine-tune NPC 10"] == "70.0"  # one seed: no sd
    assert rows["mp3 + positions"]["probe NPC 10"] == ""


def test_the_curves_come_in_the_order_of_the_tasks_each_task_by_seed():
    def judged(task, seed):
        return {**features(task, seed, 0.4, 0.3), "pretext_curve": [
            {"epoch": 1, "loss": 1.0, "top1": 0.5}], "budget_curve": [
            {"epoch": 1, "knn_top1": 0.2, "probe_top1": 0.3}] if seed else []}

    results = {"trials": [judged("jigsaw", 1), judged("rotation", 1), judged("rotation", 0),
                          judged("apl", 0)]}
    order = [("apl", 0), ("rotation", 0), ("rotation", 1), ("jigsaw", 1)]
    assert [(row["task"], row["seed"]) for row in curve_rows(results)] == order
    budget = pretext_study.budget_rows(results)
    assert [(row["control"], row["seed"]) for row in budget] == order
    assert budget[2]["budget_curve"] == [{"epoch": 1, "knn_top1": 0.2, "probe_top1": 0.3}]
    assert budget[0]["budget_curve"] == []  # a reused run without snapshots


def test_curve_rows_join_each_pretext_epoch_with_its_budget_point():
    apl = {**features("apl", 1, 0.4, 0.3),
           "pretext_curve": [{"epoch": 1, "loss": 2.0, "top1": 0.1},
                             {"epoch": 2, "loss": 1.5, "top1": 0.3}],
           "budget_curve": [{"epoch": 2, "knn_top1": 0.25, "probe_top1": 0.35}]}
    mae = {**features("apl", 0, 0.4, 0.3),
           "pretext_curve": [{"epoch": 1, "loss": 0.9, "top1": None}],
           "budget_curve": [{"epoch": 1, "knn_top1": 0.2, "probe_top1": 0.3}]}
    assert curve_rows({"trials": [apl, scored("apl", 0, 0.5), mae]}) == [
        {"task": "apl", "seed": 0, "epoch": 1, "pretext_loss": 0.9, "pretext_top1": None,
         "knn_top1": 0.2, "probe_top1": 0.3},
        {"task": "apl", "seed": 1, "epoch": 1, "pretext_loss": 2.0, "pretext_top1": 0.1,
         "knn_top1": None, "probe_top1": None},
        {"task": "apl", "seed": 1, "epoch": 2, "pretext_loss": 1.5, "pretext_top1": 0.3,
         "knn_top1": 0.25, "probe_top1": 0.35}]


# ---------------------------------------------------------------- the study, with fake runs

@dataclasses.dataclass
class Part:
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


class FakeRuns:
    """Every expensive call of the study replaced, each call recorded: the worker pool
    (threads), the device (resolved as named), the data sets (npc images per class,
    label_seed in the labels), pretraining (3 epochs, a metrics file and a checkpoint; a
    finished one read back, its last held-out loss seed / 4), the
    frozen features' scores (from the number of training images), the budget curve,
    fine-tuning (the best validation at 1e-4, or at 3.16e-4 with positional embeddings; the
    best epoch the second) and the test scoring."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(pretext_study.comparison, "worker_pool", self.worker_pool)
        monkeypatch.setattr(pretext_study, "resolve_device", lambda name: f"resolved {name}")
        for module, name in ((pretext_study, "finetune_sets"), (pretext_study, "pretrain"),
                             (pretext_study, "load_pretrained"),
                             (pretext_study, "feature_scores"), (pretext_study, "budget_curve"),
                             (pretext_study, "finetune"), (search, "finetune"),
                             (pretext_study, "best_epoch_test_top1")):
            monkeypatch.setattr(module, name, getattr(self, name))

    def named(self, name: str) -> list[tuple]:
        return [call[1:] for call in self.calls if call[0] == name]

    def worker_pool(self, workers):
        """`workers` threads: the runs in this process, where the fakes reach them."""
        self.calls.append(("worker_pool", workers))
        return concurrent.futures.ThreadPoolExecutor(workers)

    def finetune_sets(self, config):
        self.calls.append(("finetune_sets", config))
        sizes = (config.npc, config.val_per_class, config.test_per_class)
        return tuple(Part(torch.zeros(n * config.num_classes, 1),
                          torch.full((n * config.num_classes,), config.label_seed))
                     for n in sizes)

    def pretrain(self, config, resume=None):
        self.calls.append(("pretrain", run_name(config), resume))
        self.calls.append(("pretrained_in", config.runs_dir))
        run_dir = Path(config.runs_dir) / "pretrain" / run_name(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        rows = [{"epoch": epoch, "step": 10 * epoch, "val_loss": 3.0 - epoch + config.seed / 4,
                 "val_top1": 0.2 * epoch, "epoch_time_s": 10.0 * epoch} for epoch in (1, 2, 3)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run_dir / "last.pt").touch()
        return RunResult(run_dir, run_dir / "last.pt", rows, config)

    def load_pretrained(self, checkpoint, device="cpu"):
        self.calls.append(("load_pretrained", checkpoint, device))
        return SimpleNamespace(transformer=f"transformer of {checkpoint.parent.name}"), None

    def feature_scores(self, transformer, labelled, device):
        self.calls.append(("feature_scores", transformer, labelled, device))
        images = len(labelled.train[1])
        return {"knn_top1": images / 10_000, "probe_top1": images / 5_000,
                "probe_penalty": 0.01}

    def budget_curve(self, run_dir, labelled, device):
        self.calls.append(("budget_curve", run_dir, labelled, device))
        return [{"epoch": epoch, "position_top1": 0.5, "knn_top1": 0.1 * epoch,
                 "probe_top1": 0.15 * epoch, "probe_penalty": 0.01} for epoch in (1, 3)]

    def finetune(self, config, resume=None):
        self.calls.append(("finetune", config, resume))
        run_dir = Path(config.runs_dir) / "finetune" / run_name(config)
        best = 3.16e-4 if config.positional_embedding else 1e-4
        val = 0.6 - 0.1 * abs(math.log10(config.lr / best)) + 0.01 * (config.label_seed - 42)
        rows = [{"epoch": epoch, "step": 5 * epoch, "train_top1": 0.9, "epoch_time_s": 2.0,
                 "val_top1": round(val - 0.1 * (epoch != 2), 4)} for epoch in (1, 2, 3)]
        return RunResult(run_dir, run_dir / "last.pt", rows, config)

    def best_epoch_test_top1(self, run_dir, device="auto"):
        self.calls.append(("best_epoch_test_top1", run_dir, device))
        return 0.55


@pytest.fixture
def fake_runs(monkeypatch):
    return FakeRuns(monkeypatch)


class Terminal:
    """sys.stdout: what was written, and what of it had been flushed at each flush."""

    def __init__(self):
        self.text = ""
        self.flushed = []

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        self.flushed.append(self.text)


def test_the_labelled_images_are_the_fine_tuning_sets_of_the_seeds_labels(fake_runs):
    labelled = pretext_study.labelled_images("quick", 2, 30, data_dir="/data", device="cpu",
                                             runs_dir="/elsewhere", test_per_class=7)
    [(config,)] = fake_runs.named("finetune_sets")
    assert (config.npc, config.label_seed, config.data_dir, config.device) == (30, 44, "/data",
                                                                               "cpu")
    assert (config.test_per_class, config.runs_dir) == (
        profile_config("quick", "finetune").test_per_class, "runs")  # data settings only
    assert config.dataset == profile_config("quick", "finetune").dataset
    assert [len(part[1]) for part in (labelled.train, labelled.val, labelled.test)] == [
        300, 500, 1000]
    assert all(part[0].shape == (len(part[1]), 1) and part[1][0] == 44
               for part in (labelled.train, labelled.val, labelled.test))


def test_features_row_judges_the_frozen_features_at_every_npc_of_the_profile(fake_runs,
                                                                              tmp_path):
    row = pretext_study.features_row("quick", "mae", 1, runs_dir=str(tmp_path), device="cpu",
                                     data_dir="/data")
    config = study_pretraining("quick", "mae", 1, runs_dir=str(tmp_path))
    run = tmp_path / "pretrain" / run_name(config)
    assert fake_runs.named("pretrain") == [(run_name(config), "auto")]
    assert fake_runs.named("load_pretrained") == [(run / "last.pt", "resolved cpu")]
    assert row == {
        "kind": "features", "run": run_name(config), "task": "mae", "seed": 1,
        "features": {"10": {"knn_top1": 0.01, "probe_top1": 0.02, "probe_penalty": 0.01},
                     "30": {"knn_top1": 0.03, "probe_top1": 0.06, "probe_penalty": 0.01},
                     "100": {"knn_top1": 0.1, "probe_top1": 0.2, "probe_penalty": 0.01}},
        "test_images": 1000,
        "pretext_curve": [{"epoch": 1, "loss": 2.25, "top1": 0.2},
                          {"epoch": 2, "loss": 1.25, "top1": 0.4},
                          {"epoch": 3, "loss": 0.25, "top1": 0.6000000000000001}],
        "seconds_per_epoch": 20.0,
        "budget_curve": [{"epoch": 1, "knn_top1": 0.1, "probe_top1": 0.15},
                         {"epoch": 3, "knn_top1": 0.30000000000000004,
                          "probe_top1": 0.44999999999999996}]}
    judged = fake_runs.named("feature_scores")
    assert [(transformer, device) for transformer, _, device in judged] == [
        (f"transformer of {run.name}", "resolved cpu")] * 3
    assert {labelled.train[1][0].item() for _, labelled, _ in judged} == {43}  # seed 1's labels
    [(run_dir, labelled, device)] = fake_runs.named("budget_curve")
    assert (run_dir, len(labelled.train[1]), device) == (run, 1000, "resolved cpu")
    assert [(config.data_dir, config.device) for (config,) in fake_runs.named(
        "finetune_sets")] == [("/data", "cpu")] * 3


def test_scored_row_scores_the_best_epoch_once_on_the_test_images_and_stores_it(fake_runs,
                                                                                tmp_path):
    store = TrialStore(tmp_path / "study.json", {"profile": "quick"})
    row = pretext_study.scored_row("quick", "mp3 + positions", 2, 3.16e-4, store,
                                   runs_dir=str(tmp_path), device="cpu")
    config = finetune_config("quick", "mp3 + positions", 2, runs_dir=str(tmp_path),
                             device="cpu").replace(lr=3.16e-4)
    [(trained, resume)] = fake_runs.named("finetune")
    assert (trained, resume) == (config, "auto")
    assert fake_runs.named("best_epoch_test_top1") == [
        (tmp_path / "finetune" / run_name(config), "cpu")]
    assert row == {"kind": "test", "run": run_name(config) + "#test",
                   "finetune": "mp3 + positions", "seed": 2, "lr": 3.16e-4, "val_top1": 0.62,
                   "best_epoch": 2, "test_top1": 0.55, "test_images": 1000,
                   "pretraining_loss": 0.5}  # seed 2's pretraining's, which names it
    pretraining = study_pretraining("quick", "mp3", 2, runs_dir=str(tmp_path), device="cpu")
    assert fake_runs.named("pretrain") == [(run_name(pretraining), "auto")]  # trained if gone
    assert store.read()["trials"] == [row]
    fake_runs.calls.clear()
    assert pretext_study.scored_row("quick", "mp3 + positions", 2, 3.16e-4, store,
                                    runs_dir=str(tmp_path), device="cpu") == row
    assert fake_runs.calls == []  # read back: nothing trained or scored


def test_search_finetune_brackets_the_rate_on_seed_0_and_stores_each_trial(fake_runs,
                                                                           tmp_path):
    store = TrialStore(tmp_path / "study.json", {"profile": "quick"})
    trials = pretext_study.search_finetune("quick", "mae", store, runs_dir=str(tmp_path),
                                           device="cpu")
    base = finetune_config("quick", "mae", 0, runs_dir=str(tmp_path), device="cpu")
    trained = [config for config, _ in fake_runs.named("finetune")]
    assert trained == [base.replace(lr=trial["lr"]) for trial in trials]
    assert store.read()["trials"] == trials and len(trials) >= 5
    assert all((t["kind"], t["finetune"], t["seed"], t["method"], t["pretraining_loss"]) ==
               ("trial", "mae", 0, "APL fine-tune", 0.0) for t in trials)
    assert chosen_rate(trials, "mae") == 1e-4


def test_a_study_runs_every_row_once_and_a_finished_study_trains_nothing(fake_runs, tmp_path,
                                                                         monkeypatch):
    """Each run's line is flushed as it finishes: a study's workers report to a log for days."""
    store = TrialStore(tmp_path / "study.json", {"profile": "quick"})
    settings = dict(runs_dir=str(tmp_path / "runs"))
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    pretext_study.run_study("quick", (0, 1), ("apl", "mp3"), store, workers=1, **settings)
    rows = store.read()["trials"]
    features_rows = [(r["task"], r["seed"]) for r in rows if r["kind"] == "features"]
    assert features_rows == [("apl", 0), ("apl", 1), ("mp3", 0), ("mp3", 1)]
    trials = [r for r in rows if r["kind"] == "trial"]
    names = ["apl", "mp3", "mp3 + positions"]
    assert sorted({t["finetune"] for t in trials}) == names
    assert {t["seed"] for t in trials} == {0}
    tests = {(r["finetune"], r["seed"]): r for r in rows if r["kind"] == "test"}
    assert sorted(tests) == [(name, seed) for name in names for seed in (0, 1)]
    assert {name: tests[(name, 1)]["lr"] for name in names} == {
        "apl": 1e-4, "mp3": 1e-4, "mp3 + positions": 3.16e-4}
    assert all(row["lr"] == chosen_rate(trials, name) for (name, _), row in tests.items())
    assert {config.runs_dir for config, _ in fake_runs.named("finetune")} == {
        settings["runs_dir"]}
    assert {runs for (runs,) in fake_runs.named("pretrained_in")} == {settings["runs_dir"]}
    runs = [(call[0], call[1].seed if call[0] == "finetune" else call[1])
            for call in fake_runs.calls if call[0] in ("pretrain", "finetune")]
    features_runs = [run_name(study_pretraining("quick", task, seed, **settings))
                     for task in ("apl", "mp3") for seed in (0, 1)]
    assert runs[:4] == [("pretrain", name) for name in features_runs]  # features first
    finetuned = [seed for kind, seed in runs if kind == "finetune"]
    assert finetuned == [0] * (len(trials) + 3) + [1] * 3  # seed by seed
    assert {device for _, device in fake_runs.named("load_pretrained")} == {"resolved auto"}
    printed = terminal.text.splitlines()
    assert terminal.flushed == ["".join(line + "\n" for line in printed[:i])
                                for i in range(1, len(printed) + 1)]
    assert printed[0] == ("apl        seed 0: NPC 10 probe 2.0% kNN 1.0%, NPC 30 probe 6.0% "
                          "kNN 3.0%, NPC 100 probe 20.0% kNN 10.0%  20 s/epoch")
    bracket = [t for t in trials if t["finetune"] == "mp3 + positions"]
    assert printed[8] == "mp3 + positions  bracket: " + ", ".join(
        f"lr {t['lr']:g} val {t['val_top1']:.1%}" for t in bracket)
    assert printed[5] == "apl              seed 0: lr 0.0001 test 55.0%"  # after its bracket
    assert len(printed) == 4 + 3 + 6

    plan = pretext_study.study_plan("quick", (0, 1), ("apl", "mp3"), rows, **settings)
    assert [(row["run"], row["seed"], row["checkpoint"], row["done"]) for row in plan] == [
        ("pretraining + features: apl", 0, "yes", "yes"),
        ("pretraining + features: apl", 1, "yes", "yes"),
        ("pretraining + features: mp3", 0, "yes", "yes"),
        ("pretraining + features: mp3", 1, "yes", "yes")] + [
        row for name in names for row in (
            (f"fine-tuning bracket: {name}", 0, "",
             f"{sum(t['finetune'] == name for t in trials)} trials"),
            (f"fine-tuning at the chosen rate: {name}", "0 1", "", "2/2 seeds"))]

    for module, name in ((pretext_study, "pretrain"), (pretext_study, "finetune"),
                         (search, "finetune"), (pretext_study, "feature_scores")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("trained again"))
    pretext_study.run_study("quick", (0, 1), ("apl", "mp3"), store, **settings)
    assert store.read()["trials"] == rows
    assert fake_runs.named("worker_pool") == [(1,), (1,)]  # by default one run at a time


def test_a_study_resumed_where_its_runs_are_gone_retrains_only_what_its_fine_tunings_need(
        fake_runs, tmp_path):
    """Another machine: the features rows and apl's finished bracket stand; mp3's unfinished
    bracket, from a pretraining that is gone (its features row's held-out loss, 9.9, is not
    the retrained one's, 0), is set aside and run again; each row says which pretraining it
    fine-tuned."""
    store = TrialStore(tmp_path / "study.json", {"profile": "quick"})
    pretext_study.run_study("quick", (0, 1), ("apl", "mp3"), store, runs_dir=str(tmp_path / "a"))
    done = store.read()["trials"]
    for row in done:
        row.pop("pretraining_loss", None)  # rows from before the record: their features row's
        if row["kind"] == "features":
            row["pretext_curve"][-1]["loss"] = 9.9
    apl_bracket = [r for r in done if r["kind"] == "trial" and r["finetune"] == "apl"]
    mp3_started = [r for r in done if r["kind"] == "trial" and r["finetune"] == "mp3"][:1]
    begun_here = {**[r for r in done if r["kind"] == "trial"
                     and r["finetune"] == "mp3 + positions"][0], "pretraining_loss": 0.0}
    elsewhere = TrialStore(tmp_path / "elsewhere.json", {"profile": "quick"})
    for row in [r for r in done if r["kind"] == "features"] + apl_bracket + mp3_started + [
            begun_here]:
        elsewhere.add(row)
    fake_runs.calls.clear()
    settings = dict(runs_dir=str(tmp_path / "b"))
    pretext_study.run_study("quick", (0, 1), ("apl", "mp3"), elsewhere, **settings)

    assert fake_runs.named("feature_scores") == []  # the features stand
    pretrained = {name for name, _ in fake_runs.named("pretrain")}
    assert pretrained == {run_name(study_pretraining("quick", task, seed, **settings))
                          for task in ("apl", "mp3") for seed in (0, 1)}
    assert {runs for (runs,) in fake_runs.named("pretrained_in")} == {settings["runs_dir"]}
    results = elsewhere.read()
    assert [(r["run"], r["reason"]) for r in results["set_aside"]] == [
        (r["run"], "an unfinished bracket from a pretraining that is gone (held-out loss "
                   "9.9); run again from the one trained here (0)") for r in mp3_started]
    rows = results["trials"]
    assert [r for r in rows if r["kind"] == "trial" and r["finetune"] == "apl"] == apl_bracket
    retried = [r for r in rows if r["kind"] == "trial" and r["finetune"] == "mp3"]
    assert len(retried) >= 5 and {r["pretraining_loss"] for r in retried} == {0.0}
    continued = [r for r in rows if r["kind"] == "trial" and r["finetune"] == "mp3 + positions"]
    assert continued[0] == begun_here and len(continued) >= 5  # begun here: continued
    trained = {config.lr for config, _ in fake_runs.named("finetune")
               if config.seed == 0 and not config.positional_embedding
               and "mp3" not in config.pretrained}
    assert trained == {chosen_rate(rows, "apl")}  # apl's bracket not run again, only its test
    tests = [r for r in rows if r["kind"] == "test"]
    assert len(tests) == 6
    assert all(r["pretraining_loss"] == r["seed"] / 4 for r in tests)  # their own seed's
    assert [pretext_study.started_from(r, rows) for r in apl_bracket] == [9.9] * len(apl_bracket)


def test_the_plan_lists_every_run_and_what_the_results_file_already_holds(tmp_path):
    settings = dict(runs_dir=str(tmp_path), batch_size=50)  # 2 fine-tuning steps an epoch
    checkpoint = (tmp_path / "pretrain" / run_name(study_pretraining("quick", "mae", 1,
                                                                     **settings)) / "last.pt")
    checkpoint.parent.mkdir(parents=True)
    checkpoint.touch()
    held = [features("mae", 0, 0.2, 0.3), features("apl", 1, 0.2, 0.3),
            {"kind": "trial", "finetune": "mae", "seed": 0, "lr": 1e-4},
            {"kind": "trial", "finetune": "mae", "seed": 0, "lr": 3e-4},
            {"kind": "trial", "finetune": "apl", "seed": 0, "lr": 3e-4},
            scored("mae", 1, 0.5), scored("mae", 7, 0.5), scored("apl", 0, 0.5),
            scored("apl", 1, 0.5)]
    plan = pretext_study.study_plan("quick", (0, 1), ("mae", "apl"), held, **settings)
    pretraining = dict(epochs=12, images=12500)
    fine_tuning = dict(epochs=200, images=100, checkpoint="")
    assert plan == [
        dict(run="pretraining + features: mae", seed=0, **pretraining, checkpoint="no",
             done="yes"),
        dict(run="pretraining + features: mae", seed=1, **pretraining, checkpoint="yes",
             done="no"),
        dict(run="pretraining + features: apl", seed=0, **pretraining, checkpoint="no",
             done="no"),
        dict(run="pretraining + features: apl", seed=1, **pretraining, checkpoint="no",
             done="yes"),
        dict(run="fine-tuning bracket: apl", seed=0, **fine_tuning, done="1 trials"),
        dict(run="fine-tuning at the chosen rate: apl", seed="0 1", epochs="", images="",
             checkpoint="", done="2/2 seeds"),
        dict(run="fine-tuning bracket: mae", seed=0, **fine_tuning, done="2 trials"),
        dict(run="fine-tuning at the chosen rate: mae", seed="0 1", epochs="", images="",
             checkpoint="", done="1/2 seeds")]
    with pytest.raises(ValueError, match="include 'apl'"):
        pretext_study.study_plan("quick", (0,), ("mae",), [])


def test_a_study_is_read_from_its_profiles_committed_file_or_from_the_path_given(tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setattr(pretext_study, "RESULTS_DIR", tmp_path)
    assert pretext_study.study_path("smoke") == tmp_path / "smoke_pretext_study.json"
    assert pretext_study.load_study("smoke") is None
    study = {"profile": "smoke", "trials": [scored("apl", 0, 0.5)]}
    (tmp_path / "smoke_pretext_study.json").write_text(json.dumps(study))
    assert pretext_study.load_study("smoke") == study
    own = tmp_path / "own.json"
    own.write_text(json.dumps({**study, "profile": "own"}))
    assert pretext_study.load_study("smoke", str(own))["profile"] == "own"
    for lacking in ("profile", "trials"):
        own.write_text(json.dumps({k: v for k, v in study.items() if k != lacking}))
        with pytest.raises(ValueError, match=re.escape(
                f"{own} is not a pretext study results file (it lacks ['{lacking}']); restore "
                f"it with git checkout, or rerun python experiments/pretext_study.py "
                f"--profile smoke")):
            pretext_study.load_study("smoke", own)


def test_the_cost_is_read_from_its_profiles_committed_file_or_from_the_path_given(tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setattr(pretext_study, "RESULTS_DIR", tmp_path)
    assert pretext_study.cost_path("smoke") == tmp_path / "smoke_pretext_cost.json"
    assert pretext_study.load_cost("smoke") is None
    (tmp_path / "smoke_pretext_cost.json").write_text(json.dumps(COST))
    assert pretext_study.load_cost("smoke") == COST
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"tasks": []}))
    with pytest.raises(ValueError, match=re.escape(
            f"{own} is not a pretext cost results file (it lacks ['profile']); restore it with "
            f"git checkout, or rerun python benchmarks/pretext_cost.py --profile smoke")):
        pretext_study.load_cost("smoke", own)
