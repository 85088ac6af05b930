"""The pretext study's configs and tables (apl_core.pretext_study); the study itself runs at
the smoke profile in tests/test_experiments.py."""
from __future__ import annotations

import pytest

from apl_core import pretext_study
from apl_core.config import profile_config
from apl_core.controls import control_configs
from apl_core.pretext_study import (
    FINETUNES, chosen_rate, finetune_config, measures, paired_table, study_pretraining,
    task_table,
)
from apl_core.rundir import run_name
from apl_core.search import RECIPES


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
        assert config.pretrained.endswith(run_name(pretraining))
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


def test_the_task_table_gives_means_over_seeds_and_the_seconds_per_epoch():
    rows = {row["task"]: row for row in task_table(RESULTS)}
    assert set(rows) == {"apl", "mae"}
    assert rows["apl"]["probe NPC 10"] == "41.0 ± 1.0"
    assert rows["mae"]["fine-tune NPC 10"] == "50.0 ± 10.0"
    assert rows["apl"]["s / epoch"] == "20"


def test_the_chosen_rate_is_the_best_finite_trial_of_that_fine_tuning():
    trials = [{"kind": "trial", "finetune": "mae", "lr": 1e-4, "val_top1": 0.3},
              {"kind": "trial", "finetune": "mae", "lr": 3e-4, "val_top1": 0.5,
               "diverged": "learned nothing"},
              {"kind": "trial", "finetune": "mae", "lr": 3e-5, "val_top1": 0.4},
              {"kind": "trial", "finetune": "apl", "lr": 1e-3, "val_top1": 0.9},
              features("mae", 0, 0.2, 0.3)]
    assert chosen_rate(trials, "mae") == 3e-5
