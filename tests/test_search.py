"""The converged search (apl_core.search): each method's recipe, the learning-rate bracket
that moves toward an edge winner, the length read off the validation curve, the choice and
its edge checks, and a search that resumes trial by trial from its results file."""
from __future__ import annotations

import concurrent.futures
import json
import math
from pathlib import Path

import pytest
import torch

from apl_core.rundir import read_metrics, run_name
from apl_core.train import NonFiniteLossError, RunResult, correct_mask
from apl_core.config import FinetuneConfig, profile_config
from apl_core import device, search, trial_store
from apl_core.search import (
    EXTRA_TRIALS, LONGEST, OFF, RECIPE_NAMES, RECIPES, SMALL_DATA, START_RATES, TRIALS,
    adopted_config, best_trial, bracket, check_finished, check_lengths, check_precision,
    choose, chosen_configs, compare, epochs_for_steps, first_best, initial_rates,
    keyed_choices, learned_nothing, lengthening, lengthens, longer_config, max_steps,
    next_rate, recipe_of, recipe_settings, run_search, run_steps, search_configs, search_done,
    search_method, search_plan, searched_config, seconds_per_step, trial_row,
)
from apl_core.trial_store import TrialStore, load_search

from conftest import smoke_finetune_config


def trial(lr, val, method="BENCHMARK", npc=10, best_epoch=8, epochs=10, **extra):
    recipe = extra.get("recipe", "base")
    return dict(method=method, npc=npc, lr=lr, val_top1=val, best_epoch=best_epoch,
                epochs=epochs, train_top1=0.5,
                run=f"{method}-{npc}-{lr}" + ("" if recipe == "base" else f"-{recipe}"),
                **extra)


def right(*images, of=10) -> dict:
    """A row's per-image record: these validation images right, of `of`."""
    return {"val_correct": correct_mask(torch.tensor([i in images for i in range(of)])),
            "val_images": of}


# ---------------------------------------------------------------- recipes and lengths

def test_epochs_for_steps_rounds_up_to_whole_epochs():
    config = FinetuneConfig(npc=10, num_classes=10, batch_size=32)  # 100 images: 4 steps
    assert epochs_for_steps(400, config) == 100
    assert epochs_for_steps(401, config) == 101
    assert epochs_for_steps(960, config.replace(npc=100)) == 30  # 32 steps an epoch


@pytest.mark.parametrize("method,recipe", [("APL fine-tune", "transformer"),
                                           ("BENCHMARK", "transformer"),
                                           ("BENCHMARK + positions", "transformer"),
                                           ("S-CNN", "cnn"), ("S-ResNet-18", "cnn")])
def test_searched_config_applies_the_methods_recipe_and_hides_the_test_set(method, recipe):
    base = FinetuneConfig(npc=30, batch_size=32, val_per_class=5, evaluate_test=True)
    config = searched_config(base, method, 500)
    assert {k: getattr(config, k) for k in RECIPES[recipe]} == RECIPES[recipe]
    assert config.lr == START_RATES[method]
    assert (config.epochs, config.eval_every) == (50, 2)  # 10 steps an epoch; 25 validations
    assert config.select_best and not config.evaluate_test
    assert config.npc == 30 and config.val_per_class == 5  # the rest of base is kept


@pytest.mark.parametrize("method,kind", [("APL fine-tune", "transformer"),
                                         ("BENCHMARK + positions", "transformer"),
                                         ("S-ResNet-18", "cnn")])
def test_the_small_data_recipe_adds_its_regularisation_and_the_base_recipe_none(method, kind):
    base = FinetuneConfig(npc=10, batch_size=32, val_per_class=5,
                          model="apl" if kind == "transformer" else "s-resnet")
    small = searched_config(base, method, 400, "small-data")
    plain = searched_config(base, method, 400)
    assert {k: getattr(small, k) for k in OFF} == SMALL_DATA[kind] == recipe_settings(
        method, "small-data")
    assert {k: getattr(plain, k) for k in OFF} == OFF == recipe_settings(method, "base")
    assert small.replace(**OFF) == plain  # the same run otherwise
    assert (recipe_of(method, small), recipe_of(method, plain)) == ("small-data", "base")
    assert recipe_of(method, plain.replace(label_smoothing=0.2)) == "custom"
    with pytest.raises(ValueError, match=r"recipe='deit' is invalid: choose one of \('base', "
                                         r"'small-data'\)"):
        searched_config(base, method, 400, "deit")


def test_the_small_data_stacks_are_deits_for_transformers_and_without_depth_for_cnns():
    assert SMALL_DATA["transformer"] == dict(label_smoothing=0.1, mixup_alpha=0.8,
                                             cutmix_alpha=1.0, augment_policy="randaugment",
                                             drop_path=0.1)
    assert SMALL_DATA["cnn"] == {**SMALL_DATA["transformer"], "drop_path": 0.0,
                                 "augment_policy": "trivialaugment"}
    assert OFF == dict(label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0,
                       augment_policy="none", drop_path=0.0)
    # every field the recipes set is a config setting with that default
    assert {k: getattr(FinetuneConfig(), k) for k in OFF} == OFF


def test_transformers_are_clipped_with_decoupled_decay_and_cnns_use_nesterov_sgd():
    assert RECIPES["transformer"]["optimizer"] == "adamw"
    assert RECIPES["transformer"]["grad_clip"] > 0
    assert RECIPES["cnn"]["optimizer"] == "sgd"
    for recipe in RECIPES.values():
        assert recipe["warmup_frac"] > 0 and recipe["schedule_per_step"]
        assert recipe["final_lr_frac"] == 0.0


def test_short_runs_are_validated_every_epoch():
    config = searched_config(FinetuneConfig(npc=10, batch_size=32, val_per_class=5), "S-CNN", 30)
    assert (config.epochs, config.eval_every) == (8, 1)


def test_searched_config_refuses_a_method_that_is_not_searched():
    with pytest.raises(ValueError, match="'APL linear probe' is not searched: choose from"):
        searched_config(FinetuneConfig(), "APL linear probe", 100)


def test_a_run_is_max_steps_long_or_the_profiles_own_epochs_without_a_search():
    assert run_steps("quick", FinetuneConfig(npc=30)) == 500
    # the paper profile has no search: 20 epochs of 100 images at batch 32, 4 steps each
    assert run_steps("paper", FinetuneConfig(npc=10, epochs=20, batch_size=32)) == 80
    with pytest.raises(ValueError, match=r"NPC 7 has no max_steps in the 'quick' profile "
                                         r"\(it has \[10, 30, 100\]\)"):
        run_steps("quick", FinetuneConfig(npc=7))


def test_the_method_doc_states_the_quick_profiles_lengths():
    method_doc = (Path(__file__).parents[1] / "docs" / "method.md").read_text()
    lengths = ", ".join(f"{steps:,} at NPC {npc}" for npc, steps in max_steps("quick").items())
    assert f"({lengths} in the quick profile:" in " ".join(method_doc.split())


def test_max_steps_names_the_profiles_that_have_them():
    assert max_steps("quick") == {10: 400, 30: 500, 100: 3840}
    with pytest.raises(ValueError, match=r"'paper' profile has no max_steps for a search; "
                                         r"profiles with one: \['quick', 'smoke'\]"):
        max_steps("paper")
    with pytest.raises(ValueError, match="'nope' profile has no max_steps"):
        max_steps("nope")


# ---------------------------------------------------------------- the bracket

def test_the_first_rates_are_half_a_decade_apart_around_the_start():
    assert initial_rates(1e-3) == [3.16e-4, 1e-3, 3.16e-3]


def test_next_rate_goes_past_the_edge_that_holds_the_best():
    lowest = [trial(1e-4, 0.30), trial(3.16e-4, 0.20), trial(1e-3, 0.10)]
    assert next_rate(lowest) == 3.16e-5
    highest = [trial(1e-4, 0.10), trial(3.16e-4, 0.20), trial(1e-3, 0.30)]
    assert next_rate(highest) == 3.16e-3


def test_next_rate_refines_toward_the_better_neighbour_of_an_interior_best():
    better_above = [trial(1e-4, 0.10), trial(1e-3, 0.30), trial(1e-2, 0.20)]
    assert next_rate(better_above) == pytest.approx(3.16e-3)
    better_below = [trial(1e-4, 0.20), trial(1e-3, 0.30), trial(1e-2, 0.10)]
    assert next_rate(better_below) == pytest.approx(3.16e-4)
    # a tie between the neighbours refines toward the lower rate
    tie = [trial(1e-4, 0.20), trial(1e-3, 0.30), trial(1e-2, 0.20)]
    assert next_rate(tie) == pytest.approx(3.16e-4)


def test_best_trial_is_the_first_tried_among_equals():
    first, second = trial(1e-3, 0.3), trial(1e-4, 0.3)
    assert best_trial([first, second]) is first
    assert best_trial([trial(1e-3, 0.2), second]) is second


def test_first_best_is_the_first_of_the_highest_scores():
    first, second = trial(1e-3, 0.3), trial(1e-4, 0.3)
    assert first_best([trial(1e-2, 0.1), first, second]) is first
    assert first_best(["base", "small-data", "other"], {"base": 1, "small-data": 2,
                                                        "other": 2}.get) == "small-data"


def peaked_at(best_rate):
    """A fake run whose validation top-1 peaks at best_rate on a log scale."""
    tried = []

    def run_trial(config):
        tried.append(config)
        val = 0.9 - 0.2 * abs(math.log10(config.lr / best_rate))
        return trial(config.lr, val, npc=config.npc, epochs=config.epochs)

    return run_trial, tried


@pytest.mark.parametrize("best_rate", [2e-6, 2e-5, 1e-4, 8e-4, 5e-3])
def test_a_search_ends_with_its_best_rate_inside_the_range_it_tried(best_rate):
    base = searched_config(FinetuneConfig(npc=10, batch_size=32, val_per_class=5), "BENCHMARK", 400)
    run_trial, tried = peaked_at(best_rate)
    trials = search_method(base.replace(lr=1e-4), run_trial, trials=7)
    assert len(trials) == len(tried) == 7
    assert {(c.epochs, c.eval_every, c.npc) for c in tried} == {(100, 5, 10)}
    assert [c.lr for c in tried[:3]] == [3.16e-5, 1e-4, 3.16e-4]
    assert len({c.lr for c in tried}) == 7  # never the same rate twice
    chosen = choose(trials)[("BENCHMARK", 10)]
    assert chosen["rate_position"] == "interior"
    assert abs(math.log10(chosen["lr"] / best_rate)) < 0.5


def test_a_search_makes_the_same_number_of_trials_for_every_method():
    base = searched_config(FinetuneConfig(npc=10, batch_size=32, val_per_class=5), "S-CNN", 400)
    run_trial, tried = peaked_at(0.03)
    assert len(search_method(base, run_trial)) == TRIALS == 5


def test_an_edge_winner_is_searched_past_the_edge_up_to_the_cap_and_flagged():
    base = searched_config(FinetuneConfig(npc=10, batch_size=32, val_per_class=5), "BENCHMARK", 400)
    run_trial, tried = peaked_at(1e-9)
    trials = search_method(base, run_trial)
    assert len(trials) == TRIALS + EXTRA_TRIALS == 8  # extended toward the edge, then stopped
    assert [c.lr for c in tried] == [9.49e-5, 3e-4, 9.49e-4, 3e-5, 9.49e-6, 3e-6, 9.49e-7, 3e-7]
    chosen = choose(trials)[("BENCHMARK", 10)]
    assert chosen["rate_position"] == "lowest" and chosen["lr"] == min(chosen["rates"])
    assert chosen["bracket"] == "edge"
    assert chosen["flag"] == (f"the chosen rate {chosen['lr']:g} is bounded by the edge of the "
                              f"rates tried, not by a finite, worse trial on each side")


def diverging_above(limit, best_rate):
    """A fake run that peaks at best_rate and diverges (non-finite loss) above `limit`."""
    tried = []

    def run_trial(config):
        tried.append(config.lr)
        if config.lr > limit:
            return trial(config.lr, 0.0, npc=config.npc, epochs=config.epochs,
                         diverged="non-finite loss")
        return trial(config.lr, 0.9 - 0.2 * abs(math.log10(config.lr / best_rate)),
                     npc=config.npc, epochs=config.epochs)

    return run_trial, tried


def test_a_diverged_trial_is_no_bound_the_search_probes_between_it_and_the_best():
    """The best finite rate (1e-3) sits next to a diverged one (3.16e-3): the search probes
    halfway toward it until the best has a finite, worse neighbour above too."""
    base = searched_config(FinetuneConfig(npc=10, batch_size=32, val_per_class=5), "BENCHMARK", 400)
    run_trial, tried = diverging_above(2e-3, best_rate=1e-2)
    trials = search_method(base.replace(lr=1e-3), run_trial)
    assert tried[:3] == [3.16e-4, 1e-3, 3.16e-3]
    assert tried[3] == 1.78e-3  # sqrt(1e-3 x 3.16e-3): toward the diverged neighbour
    assert tried[4:] == [2.37e-3, 2.05e-3, 1.91e-3, 1.98e-3]  # ever finer at the boundary
    pick = choose(trials)[("BENCHMARK", 10)]
    assert pick["lr"] == 1.98e-3 and pick["bracket"] == "diverged"  # 2.05e-3 diverged
    assert pick["flag"].startswith("the chosen rate 0.00198 is bounded by a diverged trial")
    assert len(trials) == TRIALS + EXTRA_TRIALS
    # where the peak lies below the divergence, the search ends bracketed by finite trials
    run_trial, tried = diverging_above(2e-3, best_rate=1e-3)
    trials = search_method(base.replace(lr=1e-3), run_trial)
    pick = choose(trials)[("BENCHMARK", 10)]
    assert pick["lr"] == 1e-3 and pick["bracket"] == "finite" and "flag" not in pick
    # the probe at 1.78e-3 gave the finite, worse neighbour; the fifth trial refines
    assert tried == [3.16e-4, 1e-3, 3.16e-3, 1.78e-3, 1.33e-3] and len(trials) == TRIALS


def test_next_rate_probes_toward_a_diverged_neighbour_the_lower_one_first():
    above = [trial(1e-4, 0.2), trial(3.16e-4, 0.4), trial(1e-3, 0.0, diverged="learned nothing")]
    assert next_rate(above) == 5.62e-4
    both = [trial(1e-4, 0.0, diverged="learned nothing"), trial(3.16e-4, 0.4),
            trial(1e-3, 0.0, diverged="non-finite loss")]
    assert next_rate(both) == 1.78e-4
    # a diverged trial scoring higher than every finite one is still no choice
    assert best_trial([trial(1e-4, 0.2), trial(1e-3, 0.9, diverged="x")])["lr"] == 1e-4
    every = [trial(1e-3, 0.1, diverged="non-finite loss"), trial(1e-2, 0.1, diverged="x")]
    assert next_rate(every) == 3.16e-4  # all diverged: below the lowest
    assert best_trial(every) is every[0] and bracket(every) == "diverged"


def test_when_every_trial_diverged_the_next_rate_is_below_the_lowest():
    diverged = [{**trial(lr, 0.1), "diverged": "non-finite loss"} for lr in (1e-3, 3e-3)]
    assert next_rate(diverged) == 3.16e-4
    assert next_rate([diverged[0], trial(3e-3, 0.1)]) == 9.49e-3  # past the finite edge

def test_bracket_says_what_bounds_the_best_finite_rate():
    assert bracket([trial(1e-4, 0.2), trial(1e-3, 0.3), trial(1e-2, 0.1)]) == "finite"
    assert bracket([trial(1e-4, 0.2), trial(1e-3, 0.3),
                    trial(1e-2, 0.1, diverged="x")]) == "diverged"
    assert bracket([trial(1e-4, 0.0, diverged="x"), trial(1e-3, 0.3),
                    trial(1e-2, 0.1)]) == "diverged"
    assert bracket([trial(1e-4, 0.2), trial(1e-3, 0.3)]) == "edge"
    assert bracket([trial(1e-4, 0.4), trial(1e-3, 0.3)]) == "edge"
    # the neighbour is the next rate tried, not the next finite one
    assert bracket([trial(1e-5, 0.1), trial(1e-4, 0.0, diverged="x"), trial(1e-3, 0.3),
                    trial(1e-2, 0.1)]) == "diverged"


def test_search_done_after_the_minimum_once_bracketed_at_the_cap_or_out_of_digits():
    five = [trial(lr, 0.1 + (lr == 1e-3) * 0.2) for lr in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)]
    assert search_done(five) and not search_done(five[:4])
    assert not search_done(five[:4], minimum=5) and search_done(five[1:4], minimum=3)
    edge = [trial(lr, 1 - lr) for lr in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)]
    assert not search_done(edge)  # the best at an edge: one more, up to the cap
    assert search_done(edge, extra=0)
    more = edge + [trial(lr, 1 - lr) for lr in (3e-6, 1e-6, 3e-7)]
    assert search_done(more)  # TRIALS + EXTRA_TRIALS
    diverged = [trial(1e-4, 0.2), trial(2e-4, 0.3), trial(3e-4, 0.25), trial(3.16e-4, 0.35),
                trial(3.17e-4, 0.0, diverged="x")]
    # next would be sqrt(3.16e-4 x 3.17e-4) = 3.16e-4 at three digits: tried, so done
    assert next_rate(diverged) == 3.16e-4 and search_done(diverged)
    all_diverged = [trial(lr, 0.0, diverged="x") for lr in (1e-3, 1e-2, 1e-1, 1e0, 1e1)]
    assert not search_done(all_diverged)


# ---------------------------------------------------------------- a finished run, and the choice

def metrics(vals, train=None, every=1):
    rows = []
    for epoch in range(1, len(vals) * every + 1):
        row = {"epoch": epoch, "step": 4 * epoch, "train_top1": (train or {}).get(epoch, 0.1),
               "epoch_time_s": 1.5}
        if epoch % every == 0:
            row["val_top1"] = vals[epoch // every - 1]
        rows.append(row)
    return rows


def test_trial_row_keeps_the_validation_curve_and_its_first_best_epoch(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    config = FinetuneConfig(npc=10, lr=2e-4, epochs=6, run_name="r", device="cpu",
                            val_per_class=5)
    rows = metrics([0.2, 0.4, 0.4], train={4: 0.7, 6: 0.8}, every=2)
    rows[3]["val_correct"] = "3"  # epoch 4: images 0 and 1
    rows[5]["val_correct"] = "c"
    row = trial_row("BENCHMARK", config, rows)
    assert row == dict(method="BENCHMARK", npc=10, recipe="base", lr=2e-4, epochs=6, steps=24,
                       best_epoch=4, best_step=16, val_top1=0.4, train_top1=0.7,
                       last_train_top1=0.8, val_curve=[[2, 0.2], [4, 0.4], [6, 0.4]],
                       val_images=50, seconds=9.0, precision="bf16", run="r",
                       val_correct="3")
    assert trial_row("BENCHMARK", config.replace(precision="fp32"),
                     metrics([0.2]))["precision"] == "fp32"
    small = config.replace(**SMALL_DATA["transformer"])
    assert trial_row("BENCHMARK", small, rows)["recipe"] == "small-data"
    assert "val_correct" not in trial_row("BENCHMARK", config, metrics([0.2]))


def test_trial_row_names_the_run_without_a_run_name():
    config = FinetuneConfig(npc=10, epochs=1, val_per_class=5)
    assert trial_row("BENCHMARK", config, metrics([0.3]))["run"] == run_name(config)


def test_trial_row_of_a_run_never_validated_is_an_error():
    rows = metrics([0.2])
    del rows[0]["val_top1"]
    with pytest.raises(ValueError, match="run r has no validation evaluation: a searched run "
                                         "needs val_per_class > 0"):
        trial_row("S-CNN", FinetuneConfig(run_name="r", epochs=1), rows)
    unnamed = FinetuneConfig(epochs=1)
    with pytest.raises(ValueError, match=f"run {run_name(unnamed)} has no validation"):
        trial_row("S-CNN", unnamed, rows)


def test_a_run_that_stopped_on_a_non_finite_loss_is_a_diverged_trial_with_its_curve():
    config = FinetuneConfig(npc=10, epochs=6, run_name="r", val_per_class=5, model="s-cnn")
    row = trial_row("S-CNN", config, metrics([0.3, 0.35]), non_finite=True)
    assert row["diverged"] == "non-finite loss"
    assert (row["val_curve"], row["best_epoch"], row["val_top1"], row["steps"]) == (
        [[1, 0.3], [2, 0.35]], 2, 0.35, 8)
    first = trial_row("S-CNN", config, [], non_finite=True)  # in its first epoch
    assert (first["diverged"], first["val_curve"], first["val_top1"], first["steps"],
            first["seconds"], first["best_epoch"]) == ("non-finite loss", [], 0.0, 0, 0, 0)


def test_a_run_that_diverged_before_its_first_epoch_is_a_trial_of_nothing():
    config = FinetuneConfig(npc=10, num_classes=10, val_per_class=5, epochs=10, lr=0.3)
    row = trial_row("S-CNN", config, [], non_finite=True)
    assert {k: row[k] for k in ("steps", "best_epoch", "best_step", "val_top1", "train_top1",
                                "last_train_top1", "val_curve", "seconds", "diverged")} == dict(
        steps=0, best_epoch=0, best_step=0, val_top1=0.0, train_top1=0.0, last_train_top1=0.0,
        val_curve=[], seconds=0, diverged="non-finite loss")


def test_learning_nothing_is_judged_on_the_runs_own_training_images():
    """Validation at chance and the last training top-1 at 25 %: beyond chance's noise on the
    100 labelled images of NPC 10, so the run learned something (it overfits)."""
    config = FinetuneConfig(npc=10, num_classes=10, val_per_class=5, epochs=2)
    row = trial_row("S-CNN", config, metrics([0.1, 0.1], train={2: 0.25}))
    assert "diverged" not in row
    assert trial_row("S-CNN", config, metrics([0.1, 0.1]))["diverged"] == "learned nothing"

@pytest.mark.parametrize("val, last_train, diverged", [
    (0.12, 0.16, True),  # both within two standard errors of chance
    (0.12, 0.90, False),  # a model that memorises its training images learned something
    (0.14, 0.10, False),  # validation beyond the noise of 500 images (12.7 %)
    (0.126, 0.16, True),  # just within: 0.1 + 2 sqrt(0.09 / 500) = 0.1268...
])
def test_learning_nothing_is_validation_and_training_top1_both_at_chance(val, last_train,
                                                                         diverged):
    # NPC 10, 10 classes: 100 training images (chance + 2 SE = 16 %), 500 validation images
    assert learned_nothing(val, 500, last_train, 100, 10) is diverged
    config = FinetuneConfig(npc=10, epochs=2, run_name="r", val_per_class=50)
    row = trial_row("BENCHMARK", config, metrics([0.05, val], train={2: last_train}))
    assert (row.get("diverged") == "learned nothing") is diverged
    assert row["last_train_top1"] == last_train
    # the last epoch's training top-1 decides, not the best validation epoch's
    early = trial_row("BENCHMARK", config, metrics([val, 0.05], train={1: 0.05, 2: 0.9}))
    assert "diverged" not in early and early["train_top1"] == 0.05


def test_learning_nothing_at_the_edge_of_the_noise_and_with_other_chances():
    assert not learned_nothing(0.1 + 2 * math.sqrt(0.09 / 500) + 1e-9, 500, 0.1, 100, 10)
    assert learned_nothing(0.1 + 2 * math.sqrt(0.09 / 500), 500, 0.16, 100, 10)
    assert not learned_nothing(0.1, 500, 0.1601, 100, 10)
    # two classes: chance 50 %, 2 SE on 100 images = 10 points
    assert learned_nothing(0.6, 100, 0.55, 400, 2) and not learned_nothing(0.61, 100, 0.5, 400, 2)


def test_choose_marks_where_the_chosen_rate_sits_and_how_it_is_bracketed():
    trials = [trial(1e-4, 0.2), trial(1e-3, 0.3, best_epoch=8), trial(1e-2, 0.1),
              trial(1e-4, 0.5, method="S-CNN", best_epoch=9), trial(1e-3, 0.4, method="S-CNN"),
              trial(1e-3, 0.1, npc=30), trial(1e-2, 0.2, npc=30)]
    chosen = choose(trials)
    assert chosen[("BENCHMARK", 10)] == dict(
        lr=1e-3, recipe="base", epochs=10, best_epoch=8, val_top1=0.3, train_top1=0.5,
        rates=[1e-4, 1e-3, 1e-2], rate_position="interior", bracket="finite",
        run="BENCHMARK-10-0.001",
        recipes={"base": dict(lr=1e-3, val_top1=0.3, run="BENCHMARK-10-0.001",
                              rates=[1e-4, 1e-3, 1e-2], rate_position="interior",
                              bracket="finite", trials=3, diverged=0)},
        longer=[], adopted=dict(multiple=1, epochs=10, best_epoch=8, val_top1=0.3,
                                run="BENCHMARK-10-0.001"),
        convergence="pending", next=2)
    assert chosen[("S-CNN", 10)]["rate_position"] == "lowest"
    assert chosen[("S-CNN", 10)]["bracket"] == "edge" and "flag" in chosen[("S-CNN", 10)]
    assert chosen[("BENCHMARK", 30)]["rate_position"] == "highest"
    # as a seeds file's header records them: JSON keys are strings
    assert keyed_choices(trials) == {f"{m}|{npc}": pick for (m, npc), pick in chosen.items()}


def test_the_choice_is_the_best_validation_over_both_recipes():
    base = [trial(1e-4, 0.2), trial(1e-3, 0.3), trial(1e-2, 0.1)]
    small = [trial(1e-4, 0.25, recipe="small-data"), trial(1e-3, 0.35, recipe="small-data",
                                                           best_epoch=9),
             trial(1e-2, 0.0, recipe="small-data", diverged="non-finite loss")]
    pick = choose(base + small)[("BENCHMARK", 10)]
    assert (pick["recipe"], pick["lr"], pick["val_top1"], pick["best_epoch"]) == (
        "small-data", 1e-3, 0.35, 9)
    assert pick["run"] == "BENCHMARK-10-0.001-small-data"
    assert pick["bracket"] == "diverged" and "flag" in pick  # its own recipe's neighbours
    assert pick["recipes"]["base"]["val_top1"] == 0.3 and pick["recipes"]["base"]["bracket"] \
        == "finite"
    assert pick["recipes"]["small-data"]["diverged"] == 1
    # a tie goes to the base recipe (the first); a small-data recipe that diverged everywhere
    # leaves the base recipe's choice
    tie = [trial(1e-3, 0.3, recipe="small-data")] + base
    assert choose(tie)[("BENCHMARK", 10)]["recipe"] == "base"
    gone = base + [trial(lr, 0.0, recipe="small-data", diverged="learned nothing")
                   for lr in (1e-4, 1e-3)]
    chosen = choose(gone)[("BENCHMARK", 10)]
    assert chosen["recipe"] == "base" and "flag" not in chosen
    assert chosen["recipes"]["small-data"] == dict(
        lr=1e-4, val_top1=0.0, run="BENCHMARK-10-0.0001-small-data", rates=[1e-4, 1e-3],
        rate_position="lowest", bracket="diverged", trials=2, diverged=2)
    # a diverged trial scoring higher is no choice while a finite trial exists elsewhere
    higher = base + [trial(1e-4, 0.9, recipe="small-data", diverged="learned nothing")]
    assert choose(higher)[("BENCHMARK", 10)]["recipe"] == "base"
    # every trial diverged: the best of them, flagged, so that a study is never stopped by it
    nothing = [trial(1e-3, 0.0, diverged="x"), trial(1e-2, 0.05, diverged="learned nothing")]
    pick = choose(nothing)[("BENCHMARK", 10)]
    assert (pick["lr"], pick["bracket"]) == (1e-2, "diverged")
    assert pick["flag"] == ("every trial diverged; the chosen rate 0.01 is the best of them "
                            "(learned nothing)")


def test_choose_refuses_a_method_whose_runs_differ_in_length():
    trials = [trial(1e-4, 0.2, epochs=30), trial(1e-3, 0.3, epochs=60, best_epoch=40),
              trial(1e-3, 0.4, method="S-CNN", epochs=30)]
    with pytest.raises(ValueError, match=r"BENCHMARK runs at NPC 10 differ in length: "
                                         r"BENCHMARK-10-0.001 has 60 epochs where 30 are "
                                         r"searched.*remove that NPC's trials"):
        choose(trials)
    assert choose(trials[:1] + trials[2:])  # one length per (method, NPC): no complaint
    double = {**trial(1e-4, 0.3, epochs=60), "run": "double", "longer_of": trials[0]["run"],
              "multiple": 2}
    assert choose(trials[:1] + [double])[("BENCHMARK", 10)]["longer"][0]["epochs"] == 60
    with pytest.raises(ValueError, match="differ in length"):  # checked past a longer run
        choose([double] + trials)
    small = trial(1e-3, 0.3, epochs=60, recipe="small-data")
    with pytest.raises(ValueError, match="differ in length"):  # both recipes: one length
        choose(trials[:1] + [small])


def test_check_lengths_compares_the_trials_with_the_searched_configs():
    config = FinetuneConfig(npc=10, epochs=30)
    check_lengths([trial(1e-4, 0.2, epochs=30), trial(1e-4, 0.2, npc=30, epochs=5)],
                  [("BENCHMARK", config)])
    with pytest.raises(ValueError, match="BENCHMARK-10-0.0001 has 30 epochs where 60 are"):
        check_lengths([trial(1e-4, 0.2, epochs=30)], [("BENCHMARK", config.replace(epochs=60))])
    check_lengths([trial(1e-4, 0.2, epochs=30)], [("S-CNN", config.replace(epochs=60))])


def test_a_study_computed_in_one_precision_is_not_resumed_in_another(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    config = FinetuneConfig(npc=10, device="cpu")
    stored = [trial(1e-4, 0.2, precision="bf16"), trial(1e-4, 0.2, npc=30, precision="fp32")]
    with pytest.raises(ValueError) as error:
        check_precision(stored, [("BENCHMARK", config)])
    assert str(error.value) == (
        "the search's BENCHMARK trials at NPC 10 computed in bf16 (BENCHMARK-10-0.0001) and "
        "this machine computes them in fp32: resume the study where it ran, or give --out a "
        "new file")
    check_precision(stored, [("BENCHMARK", config.replace(npc=30))])  # fp32 there
    check_precision(stored, [("S-CNN", config)])  # another method's trials
    check_precision([trial(1e-4, 0.2)], [("BENCHMARK", config)])  # a row that does not say
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    check_precision(stored[:1], [("BENCHMARK", config)])


# ---------------------------------------------------------------- convergence by budget

def test_longer_config_is_multiple_times_as_long_and_validated_as_often_per_run():
    config = searched_config(FinetuneConfig(npc=10, batch_size=32, val_per_class=5), "S-CNN",
                             400)
    doubled = longer_config(config)
    assert (doubled.epochs, doubled.eval_every) == (200, 10)
    assert doubled.replace(epochs=100, eval_every=5) == config
    assert (longer_config(config, 8).epochs, longer_config(config, 8).eval_every) == (800, 40)


def test_a_short_longer_run_is_still_validated_every_epoch():
    config = FinetuneConfig(npc=10, epochs=4, eval_every=1)
    assert (longer_config(config, 2).epochs, longer_config(config, 2).eval_every) == (8, 1)

def longer(of: dict, multiple: int, val: float, *images, of_images=10, **extra) -> dict:
    return {**trial(of["lr"], val, method=of["method"], npc=of["npc"],
                    epochs=of["epochs"] * multiple, best_epoch=5 * multiple),
            "run": f"{of['run']}-x{multiple}", "longer_of": of["run"], "multiple": multiple,
            **right(*images, of=of_images), **extra}


def test_a_longer_run_is_adopted_only_when_it_wins_the_paired_test():
    chosen = {**trial(1e-3, 0.3), **right(0, 1, 2)}
    twice = longer(chosen, 2, 0.9, *range(9))  # 6 more right, none lost: p = 1/64
    four = longer(chosen, 4, 0.9, *range(9))  # the same images: no gain
    result = lengthening(chosen, [twice, four])
    assert result["convergence"] == "shown" and result["next"] is None
    assert result["adopted"] == dict(multiple=2, epochs=20, best_epoch=10, val_top1=0.9,
                                     run=twice["run"])
    assert result["longer"] == [
        dict(multiple=2, epochs=20, best_epoch=10, val_top1=0.9, run=twice["run"], wins=6,
             losses=0, p=1 / 64, better=True),
        dict(multiple=4, epochs=40, best_epoch=20, val_top1=0.9, run=four["run"], wins=0,
             losses=0, p=1.0, better=False)]
    # 8 wins and 2 losses: p = 56/1024 = 0.055, just short of the 0.05 the rule asks
    edge = {**trial(1e-3, 0.3), **right(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, of=20)}
    short = longer(edge, 2, 0.8, 0, 1, 2, 3, 4, 5, 6, 7, *range(10, 18), of_images=20)
    assert lengthening(edge, [short])["longer"][0]["p"] == pytest.approx(56 / 1024)
    assert lengthening(edge, [short])["adopted"]["multiple"] == 1
    # a higher accuracy on too few images decides nothing: 2 wins, p = 0.25
    close = longer(chosen, 2, 0.5, 0, 1, 2, 3, 4)
    assert lengthening(chosen, [close])["adopted"]["multiple"] == 1
    assert lengthening(chosen, [close])["convergence"] == "shown"


def test_a_longer_run_from_a_file_before_multiples_were_recorded_is_the_2x_run():
    chosen = {**trial(1e-3, 0.3), **right(0, 1, 2)}
    doubled = longer(chosen, 2, 0.9, *range(9))
    del doubled["multiple"], doubled["longer_of"]
    result = lengthening(chosen, [{**doubled, "doubled_of": chosen["run"]}])
    assert result["adopted"] == dict(multiple=2, epochs=20, best_epoch=10, val_top1=0.9,
                                     run=doubled["run"])
    assert result["convergence"] == "pending" and result["next"] == 4

def test_lengthening_waits_for_the_next_run_and_stops_at_the_cap():
    chosen = {**trial(1e-3, 0.1), **right(*range(5), of=40)}
    assert lengthening(chosen, []) == {"longer": [], "adopted": dict(
        multiple=1, epochs=10, best_epoch=8, val_top1=0.1, run=chosen["run"]),
        "convergence": "pending", "next": 2}
    runs = [longer(chosen, 2 ** k, 0.1 + 0.1 * k, *range(5 + 5 * k), of_images=40)
            for k in (1, 2, 3, 4)]  # each 5 images more, none lost: p = 1/32 each time
    assert lengthening(chosen, runs[:1])["next"] == 4
    assert lengthening(chosen, runs[:1])["adopted"]["multiple"] == 2
    capped = lengthening(chosen, runs)
    assert capped["convergence"] == "still improving at the cap" and capped["next"] is None
    assert capped["adopted"]["multiple"] == LONGEST == 16
    assert [run["multiple"] for run in capped["longer"]] == [2, 4, 8, 16]


def test_a_longer_run_without_a_per_image_record_or_that_diverged_is_not_adopted():
    chosen = {**trial(1e-3, 0.3), **right(0, 1, 2)}
    # a file from before the record: its doubled run is read as 2x, untested
    old = {**trial(1e-3, 0.9, epochs=20), "run": "double", "doubled_of": chosen["run"]}
    result = lengthening(chosen, [old])
    assert result["convergence"] == "untested" and result["adopted"]["multiple"] == 1
    assert result["longer"] == [dict(multiple=2, epochs=20, best_epoch=8, val_top1=0.9,
                                     run="double", better=None)]
    assert lengthens(old) == chosen["run"] and lengthens(chosen) is None
    assert lengthening({**chosen, "val_correct": None} | {}, [])["next"] == 2
    gone = longer(chosen, 2, 0.0, diverged="non-finite loss")
    result = lengthening(chosen, [gone])
    assert result["convergence"] == "shown" and result["adopted"]["multiple"] == 1
    assert result["longer"][0]["diverged"] == "non-finite loss"
    assert not result["longer"][0]["better"]


def test_choose_reports_a_choices_longer_runs_and_leaves_them_out_of_the_search():
    trials = [trial(1e-4, 0.2), {**trial(1e-3, 0.3), **right(0, 1, 2)}, trial(1e-2, 0.1)]
    twice = longer(trials[1], 2, 0.95, *range(10))
    pick = choose(trials + [twice])[("BENCHMARK", 10)]
    assert pick["lr"] == 1e-3 and pick["val_top1"] == 0.3  # the longer run chooses nothing
    assert pick["rates"] == [1e-4, 1e-3, 1e-2]
    assert pick["adopted"]["run"] == twice["run"] and pick["next"] == 4
    # a longer run of a trial that is not the choice is no part of the choice
    other = longer(trials[0], 2, 0.99, *range(10))
    assert choose(trials + [other])[("BENCHMARK", 10)]["longer"] == []


def test_a_study_refuses_a_search_that_is_not_finished():
    def five(recipe="base"):
        return [{**trial(lr, 0.1 + (lr == 1e-3) * 0.2, recipe=recipe), **right(0)}
                for lr in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)]

    chosen = five()[2]
    done = five() + five("small-data") + [longer(chosen, 2, 0.3, 0)]
    check_finished(done, {10}, "quick")
    check_finished(done[:4], {30}, "quick")  # only the NPCs the study runs count
    with pytest.raises(ValueError, match=r"not finished: BENCHMARK at NPC 10's base search has "
                                         r"4 trials and is not done\. Run "
                                         r"experiments/converged_search.py --profile quick "
                                         r"again"):
        check_finished(done[1:], {10}, "quick")
    with pytest.raises(ValueError, match=r"BENCHMARK at NPC 10 has no small-data trials; "
                                         r"S-CNN at NPC 10 has no base trials; S-CNN at NPC 10 "
                                         r"has no small-data trials\."):
        check_finished(five() + [trial(1e-2, 0.1, method="S-CNN", recipe="other")], {10},
                       "quick")
    with pytest.raises(ValueError, match=r"BENCHMARK at NPC 10's choice has no 2x run yet"):
        check_finished(done[:-1], {10}, "quick")
    untested = {**done[-1], "run": "old"}
    del untested["val_correct"]
    with pytest.raises(ValueError, match=r"longer run has no per-image validation record"):
        check_finished(done[:-1] + [untested], {10}, "quick")


def test_a_finished_search_from_before_the_recipes_reads_as_the_base_recipe():
    base = [{**trial(lr, 0.1 + (lr == 0.03) * 0.2, method="S-CNN"), **right(0)}
            for lr in (0.001, 0.003, 0.03, 0.1, 0.3)]
    small = [{**t, "recipe": "small-data", "run": t["run"] + "sd"} for t in base]
    assert not any("recipe" in t for t in base)
    twice = longer(base[2], 2, 0.1, 0)
    check_finished(base + small + [twice], [10], "quick")
    with pytest.raises(ValueError, match="S-CNN at NPC 10 has no small-data trials"):
        check_finished(base + [twice], [10], "quick")

def test_trial_row_of_a_longer_run_names_the_run_it_lengthens():
    config = FinetuneConfig(run_name="d", epochs=1, val_per_class=5)
    row = trial_row("S-CNN", config, metrics([0.3]), longer_of="r", multiple=4)
    assert (row["longer_of"], row["multiple"]) == ("r", 4)
    assert "longer_of" not in trial_row("S-CNN", config, metrics([0.3]))


# ---------------------------------------------------------------- the search on real runs

def test_search_configs_build_each_method_at_each_npc(pretrained_run, tmp_path):
    configs = search_configs("smoke", str(pretrained_run.run_dir), [10], ("BENCHMARK", "S-CNN"),
                             runs_dir=str(pretrained_run.run_dir.parent.parent),
                             val_per_class=2, device="cpu")
    assert [(m, recipe_of(m, c), c.model, c.optimizer, c.epochs, c.select_best,
             c.evaluate_test) for m, c in configs] == [
        ("BENCHMARK", "base", "apl", "adamw", 3, True, False),
        ("BENCHMARK", "small-data", "apl", "adamw", 3, True, False),
        ("S-CNN", "base", "s-cnn", "sgd", 3, True, False),
        ("S-CNN", "small-data", "s-cnn", "sgd", 3, True, False)]
    longer = search_configs("smoke", str(pretrained_run.run_dir), [10], ("S-CNN",), {10: 12},
                            recipes=("small-data",),
                            runs_dir=str(pretrained_run.run_dir.parent.parent),
                            val_per_class=2, device="cpu")
    assert [(c.epochs, recipe_of("S-CNN", c)) for _, c in longer] == [(6, "small-data")]
    # a plan made before the pretraining exists: its config stands in for its checkpoint
    planned = search_configs("smoke", "runs/pretrain/not-yet", [10], ("APL fine-tune",),
                             pretrained=pretrained_run.config, val_per_class=2, device="cpu")
    assert planned[0][1].pretrained == "runs/pretrain/not-yet"
    assert planned[0][1].image_size == pretrained_run.config.image_size
    with pytest.raises(ValueError, match=r"NPC 30 has no max_steps in the 'smoke' profile "
                                         r"\(it has \[10\]\)"):
        search_configs("smoke", str(pretrained_run.run_dir), [30],
                       runs_dir=str(pretrained_run.run_dir.parent.parent), val_per_class=2)
    with pytest.raises(ValueError, match="'smoke' profile has no validation part to choose"):
        search_configs("smoke", str(pretrained_run.run_dir), [10], val_per_class=0,
                       runs_dir=str(pretrained_run.run_dir.parent.parent))


def test_search_configs_find_a_pretraining_run_by_name_in_runs_dir(pretrained_run, tmp_path,
                                                                   monkeypatch):
    name, runs = pretrained_run.run_dir.name, pretrained_run.run_dir.parent.parent
    method = ("APL fine-tune",)
    by_name = search_configs("smoke", name, [10], method, runs_dir=str(runs), val_per_class=2,
                             device="cpu")
    assert by_name[0][1].pretrained == name
    monkeypatch.chdir(tmp_path)  # without runs_dir: ./runs, where the CLI writes its runs
    (tmp_path / "runs").symlink_to(runs)
    assert search_configs("smoke", name, [10], method, val_per_class=2, device="cpu") == [
        ("APL fine-tune", config.replace(runs_dir="runs")) for _, config in by_name]
    with pytest.raises(FileNotFoundError, match=f"no checkpoint found for '{name}'"):
        search_configs("smoke", name, [10], method, runs_dir=str(tmp_path / "elsewhere"),
                       val_per_class=2)


@pytest.fixture
def in_process(monkeypatch):
    """The search's workers in this process (threads), so that monkeypatches reach them and
    `make mutation` sees which test runs the per-method search."""
    monkeypatch.setattr(search, "worker_pool", concurrent.futures.ThreadPoolExecutor)


def test_run_search_trains_each_trial_once_and_resumes_from_its_results_file(
        tmp_path, monkeypatch, in_process):
    """S-CNN on the smoke profile, both recipes, real runs: each recipe's bracket to its end,
    then its choice's longer runs; a second search reads every trial back, and trains none.
    (Runs this short learn nothing: the rule is switched off here, tested on its own.)"""
    monkeypatch.setattr(search, "learned_nothing", lambda *args: False)
    base = searched_config(smoke_finetune_config(tmp_path / "runs", model="s-cnn", npc=2,
                                                 val_per_class=1, test_per_class=1),
                           "S-CNN", 4)
    configs = [("S-CNN", base), ("S-CNN", base.replace(**SMALL_DATA["cnn"]))]
    store = TrialStore(tmp_path / "search.json", {"profile": "smoke"})
    reported = []
    trials = run_search(configs, store, workers=1, report=reported.append)
    searched = [t for t in trials if lengthens(t) is None]
    assert reported == trials and store.read()["trials"] == trials  # written as they finished
    for recipe in ("base", "small-data"):
        group = [t for t in searched if t["recipe"] == recipe]
        assert search_done(group) and TRIALS <= len(group) <= TRIALS + EXTRA_TRIALS
    assert all(t["epochs"] == 4 and len(t["val_curve"]) == 4 for t in searched)
    pick = choose(trials)[("S-CNN", 2)]
    assert pick["convergence"] in ("shown", "still improving at the cap")
    assert len(trials) - len(searched) == len(pick["longer"]) >= 1
    assert pick["longer"][0]["epochs"] == 8
    assert all(t["val_images"] == 10 and len(t["val_correct"]) == 3 for t in trials)
    # the runs are gone: a second search reads every trial back from the file
    for run in (tmp_path / "runs" / "finetune").iterdir():
        (run / "last.pt").unlink()
    assert run_search(configs, store, workers=1) == trials
    assert not any((tmp_path / "runs" / "finetune").glob("*/last.pt"))
    # the profile's runs made longer: refused before anything trains
    with pytest.raises(ValueError, match="S-CNN runs at NPC 2 differ in length"):
        run_search([("S-CNN", base.replace(epochs=8))], store, workers=1)
    assert len(list((tmp_path / "runs" / "finetune").iterdir())) == len(trials)


def scripted_runs(monkeypatch, tmp_path, outcome):
    """search.finetune replaced: a run of `config` ends as outcome(config) says: a list of
    (val_top1, images right of 10) per epoch, or 'nan' for a non-finite loss in its second
    epoch. Returns the configs trained, in order."""
    trained = []

    def finetune(config, resume):
        trained.append(config)
        run_dir = tmp_path / "runs" / run_name(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        scripted = outcome(config)
        rows = []
        for epoch, (val, images) in enumerate(scripted if scripted != "nan" else [(0.3, 3)], 1):
            rows.append({"epoch": epoch, "step": epoch, "train_top1": 0.9, "epoch_time_s": 1.0,
                         "val_top1": val, **right(*range(images))})
            del rows[-1]["val_images"]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if scripted == "nan":
            raise NonFiniteLossError(config, 2, run_dir, math.nan)
        return RunResult(run_dir, run_dir / "last.pt", rows, config)

    monkeypatch.setattr(search, "finetune", finetune)
    return trained


def test_run_search_lengthens_the_choice_while_the_longer_run_wins(tmp_path, monkeypatch,
                                                                   in_process):
    """The best of both recipes is small-data at 0.03; its 2x run gets 6 more validation
    images right (p = 1/64, adopted), its 4x run none more (2x kept); a rate whose loss goes
    non-finite is recorded as diverged with its curve, and probed below."""
    base = searched_config(smoke_finetune_config(tmp_path / "runs", model="s-cnn", npc=2,
                                                 val_per_class=1), "S-CNN", 4)

    def outcome(config):
        if config.lr > 0.05:
            return "nan"
        small = recipe_of("S-CNN", config) == "small-data"
        right_now = 3 if config.lr == 0.03 and small else 2
        if config.epochs > 4:
            right_now = 9
        return [(right_now / 10, right_now)] * 2

    trained = scripted_runs(monkeypatch, tmp_path, outcome)
    store = TrialStore(tmp_path / "search.json", {"profile": "smoke"})
    configs = [("S-CNN", base), ("S-CNN", base.replace(**SMALL_DATA["cnn"]))]
    trials = run_search(configs, store, workers=1)
    pick = choose(trials)[("S-CNN", 2)]
    assert (pick["recipe"], pick["lr"]) == ("small-data", 0.03)
    assert [(run["multiple"], run["better"]) for run in pick["longer"]] == [(2, True),
                                                                            (4, False)]
    assert pick["adopted"]["multiple"] == 2 and pick["convergence"] == "shown"
    longer = [c for c in trained if c.epochs > 4]
    assert [(c.epochs, c.lr, recipe_of("S-CNN", c)) for c in longer] == [
        (8, 0.03, "small-data"), (16, 0.03, "small-data")]
    assert {t["longer_of"] for t in trials if lengthens(t)} == {pick["run"]}
    nan = [t for t in trials if t["lr"] == 0.0949]
    assert [t["diverged"] for t in nan] == ["non-finite loss"] * 2  # both recipes' 3rd rate
    assert nan[0]["val_curve"] == [[1, 0.3]] and nan[0]["steps"] == 1
    # the study stopped after a trial's run, before its row was written: the row comes
    # from the run, not from training it again
    results = json.loads(store.path.read_text())
    store.path.write_text(json.dumps({**results, "trials": results["trials"][:-1]}))
    trained.clear()
    monkeypatch.setattr(search, "finetune", lambda config, resume: RunResult(
        tmp_path, tmp_path / "last.pt", [{"epoch": 1, "step": 16, "train_top1": 0.9,
                                          "epoch_time_s": 1.0, "val_top1": 0.9,
                                          **{k: v for k, v in right(*range(9)).items()
                                             if k == "val_correct"}}], config))
    again = run_search(configs, store, workers=1)
    assert len(again) == len(trials) and again[-1]["run"] == trials[-1]["run"]


def test_a_search_plan_counts_the_runs_and_steps_left(tmp_path):
    config = searched_config(FinetuneConfig(npc=10, batch_size=32, val_per_class=5,
                                            model="s-cnn"), "S-CNN", 400)  # 4 steps an epoch
    configs = [("S-CNN", config), ("S-CNN", config.replace(**SMALL_DATA["cnn"]))]
    plan = search_plan(configs, [])
    assert plan == [
        dict(method="S-CNN", npc=10, runs="base", done=0, least=5, most=8, least_steps=2000,
             most_steps=3200),
        dict(method="S-CNN", npc=10, runs="small-data", done=0, least=5, most=8,
             least_steps=2000, most_steps=3200),
        dict(method="S-CNN", npc=10, runs="longer runs", done=0, least=1, most=4,
             least_steps=800, most_steps=12000)]
    five = [{**trial(lr, 0.1 + (lr == 0.03) * 0.2, method="S-CNN", epochs=100), **right(0)}
            for lr in (0.001, 0.003, 0.03, 0.1, 0.3)]
    four_small = [{**t, "recipe": "small-data", "run": t["run"] + "sd"} for t in five[:4]]
    plan = search_plan(configs, five + four_small)
    assert [(row["done"], row["least"], row["most"]) for row in plan] == [
        (5, 0, 0), (4, 1, 4), (0, 1, 4)]
    both = five + [{**t, "recipe": "small-data", "run": t["run"] + "sd"} for t in five]
    twice = longer(five[2], 2, 0.9, *range(9))
    plan = search_plan(configs, both + [twice])
    assert plan[-1] == dict(method="S-CNN", npc=10, runs="longer runs", done=1, least=1,
                            most=3, least_steps=1600, most_steps=11200)  # 4x, 8x, 16x
    lost = longer(five[2], 2, 0.3, 0)  # no better than the choice: convergence shown
    assert search_plan(configs, both + [lost])[-1] == dict(
        method="S-CNN", npc=10, runs="longer runs", done=1, least=0, most=0, least_steps=0,
        most_steps=0)


def test_seconds_per_step_of_a_search_per_method_and_npc():
    trials = [dict(trial(1e-3, 0.2), seconds=30.0, steps=100),
              dict(trial(1e-2, 0.2), seconds=50.0, steps=100),
              dict(trial(1e-2, 0.2, npc=30), seconds=10.0, steps=0)]
    assert seconds_per_step({"trials": trials}) == {("BENCHMARK", 10): 0.4}
    assert seconds_per_step(None) == {}


# ---------------------------------------------------------------- the choice, applied

def test_the_committed_quick_search_holds_the_small_data_study_at_npc_10_and_30():
    """The committed search as the course reads it: at NPC 10 and 30, the small-data study
    (issue 44): both recipes searched alike for every method, every choice interior and
    bracketed by finite trials, and its length settled by the paired test (a longer run that
    lost, or S-ResNet-18 at NPC 30 still winning at the cap). NPC 100 is the earlier
    protocol's: the base recipe, its doubled runs without a per-image record (untested), every
    choice at its searched length, and a study cannot build on it until it is searched again."""
    trials = load_search("quick")["trials"]
    steps = max_steps("quick")
    chosen = choose(trials)
    assert sorted({npc for _, npc in chosen}) == sorted(steps)
    check_finished(trials, {10, 30}, "quick")
    doubled = {lengthens(t) for t in trials if lengthens(t) is not None}
    for (method, npc), pick in chosen.items():
        config = profile_config("quick", "finetune", npc=npc)
        assert pick["epochs"] == epochs_for_steps(steps[npc], config), (method, npc)
        assert pick["rate_position"] == "interior" and pick["bracket"] == "finite"
        assert "flag" not in pick
        if npc == 100:
            assert list(pick["recipes"]) == ["base"] and pick["adopted"]["multiple"] == 1
            assert pick["convergence"] == ("untested" if pick["run"] in doubled else "pending")
            continue
        assert sorted(pick["recipes"]) == sorted(RECIPE_NAMES)
        assert all(TRIALS <= r["trials"] <= TRIALS + EXTRA_TRIALS
                   for r in pick["recipes"].values()), (method, npc)
        assert pick["longer"], (method, npc)  # every choice was run longer
        assert pick["adopted"]["multiple"] == 2 ** sum(run["better"] for run in pick["longer"])
    capped = {key for key, pick in chosen.items() if pick["convergence"] != "shown"
              and key[1] != 100}
    assert capped == {("S-ResNet-18", 30)}
    assert chosen[("S-ResNet-18", 30)]["convergence"] == "still improving at the cap"
    with pytest.raises(ValueError, match="has no small-data trials"):
        check_finished(trials, {100}, "quick")


def test_chosen_configs_are_the_searched_runs_at_the_chosen_rate(pretrained_run, tmp_path,
                                                                 monkeypatch):
    runs = str(pretrained_run.run_dir.parent.parent)
    settings = dict(runs_dir=runs, val_per_class=2, device="cpu")
    searched = search_configs("smoke", str(pretrained_run.run_dir), [10],
                              ("BENCHMARK", "S-CNN"), **settings)
    monkeypatch.setattr(trial_store, "RESULTS_DIR", tmp_path)
    # no search for smoke: every method at its base recipe's start rate
    assert chosen_configs("smoke", str(pretrained_run.run_dir), [10], ("BENCHMARK", "S-CNN"),
                          **settings) == [(m, c) for m, c in searched
                                          if recipe_of(m, c) == "base"]
    store = TrialStore(tmp_path / "smoke_converged_search.json", {"profile": "smoke"})
    for lr, val in ((1e-4, 0.2), (3e-4, 0.3), (1e-3, 0.4), (3e-3, 0.1)):
        store.add(trial(lr, val, method="BENCHMARK"))  # 1e-3 wins, not the start rate
    chosen = chosen_configs("smoke", str(pretrained_run.run_dir), [10], ("BENCHMARK", "S-CNN"),
                            seed=1, **settings)
    assert [(m, c.lr, c.label_seed) for m, c in chosen] == [
        ("BENCHMARK", 1e-3, 43), ("S-CNN", START_RATES["S-CNN"], 43)]
    assert chosen[0][1] == search_configs("smoke", str(pretrained_run.run_dir), [10],
                                          ("BENCHMARK",), seed=1, **settings)[0][1].replace(
                                              lr=1e-3)
    # a study's own file: its choice, as long as its header says the search ran
    study = {**store.read(), "protocol": {"max_steps": {"10": 12}},
             "trials": [trial(1e-4, 0.2, method="S-CNN", epochs=6),
                        trial(1e-3, 0.1, method="S-CNN", epochs=6)]}
    chosen = chosen_configs("smoke", str(pretrained_run.run_dir), [10], ("BENCHMARK", "S-CNN"),
                            study, **settings)
    assert [(m, c.lr, c.epochs) for m, c in chosen] == [
        ("BENCHMARK", START_RATES["BENCHMARK"], 6), ("S-CNN", 1e-4, 6)]
    # the small-data recipe chosen, and its 2x run adopted: that recipe, twice as long
    first = {**trial(1e-3, 0.3, method="S-CNN", epochs=6, recipe="small-data"), **right(0)}
    adopted = {**study, "trials": study["trials"] + [first, longer(first, 2, 0.9, *range(9))]}
    (method, config), = chosen_configs("smoke", str(pretrained_run.run_dir), [10], ("S-CNN",),
                                       adopted, **settings)
    assert (config.lr, config.epochs, recipe_of("S-CNN", config)) == (1e-3, 12, "small-data")
    assert config == longer_config(searched_config(
        search_configs("smoke", str(pretrained_run.run_dir), [10], ("S-CNN",), {10: 12},
                       recipes=("small-data",), **settings)[0][1], "S-CNN", 12,
        "small-data").replace(lr=1e-3), 2)


def test_an_adopted_config_takes_the_choices_recipe_rate_and_length():
    config = searched_config(FinetuneConfig(npc=10, batch_size=32, val_per_class=5),
                             "BENCHMARK", 400)
    pick = {"recipe": "small-data", "lr": 5e-4, "adopted": {"multiple": 4}}
    adopted = adopted_config("BENCHMARK", config, pick)
    assert adopted == longer_config(searched_config(config, "BENCHMARK", 400, "small-data")
                                    .replace(lr=5e-4), 4)
    assert (adopted.epochs, adopted.eval_every) == (400, 20)
    plain = adopted_config("BENCHMARK", config.replace(**SMALL_DATA["transformer"]),
                           {"recipe": "base", "lr": 1e-4, "adopted": {"multiple": 1}})
    assert plain == config.replace(lr=1e-4)


def test_compare_scores_each_runs_best_epoch_once_on_the_test_set(tmp_path):
    """Two S-CNN runs: each row is the run's trial_row with the test top-1 of its best
    validation epoch, read back without training again."""
    base = searched_config(smoke_finetune_config(tmp_path / "runs", model="s-cnn", npc=2,
                                                 val_per_class=1, test_per_class=3),
                           "S-CNN", 3)
    configs = [("S-CNN", base.replace(lr=lr)) for lr in (0.01, 0.1)]
    reported = []
    rows = compare(configs, workers=1, report=reported.append)
    assert reported == rows and [r["lr"] for r in rows] == [0.01, 0.1]
    for (method, config), row in zip(configs, rows):
        run_dir = tmp_path / "runs" / "finetune" / run_name(config)
        assert row["run_dir"] == str(run_dir.resolve()) and row["test_images"] == 30
        assert row["test_top1"] == search.best_epoch_test_top1(run_dir, "cpu")
        assert {k: row[k] for k in ("method", "best_epoch", "val_curve")} == {
            k: v for k, v in trial_row(method, config, read_metrics(run_dir)).items()
            if k in ("method", "best_epoch", "val_curve")}
        assert not any("test_top1" in m for m in read_metrics(run_dir)), "test seen in training"
    stamps = [(Path(r["run_dir"]) / "last.pt").stat().st_mtime_ns for r in rows]
    assert compare(configs) == rows
    assert [(Path(r["run_dir"]) / "last.pt").stat().st_mtime_ns for r in rows] == stamps


def test_compare_trains_ahead_in_workers_when_asked(monkeypatch, tmp_path):
    calls = []
    def train_all(configs, workers, finished):
        calls.append((list(configs), workers))
        for index in reversed(range(len(configs))):  # the last run may end first
            finished(index)

    monkeypatch.setattr(search, "train_all", train_all)
    base = smoke_finetune_config(tmp_path, model="s-cnn", npc=2, val_per_class=1)
    monkeypatch.setattr(search, "finetune", lambda config, resume: calls.append(resume) or
                        RunResult(tmp_path, tmp_path / "last.pt", metrics([0.2, 0.4]), config))
    monkeypatch.setattr(search, "best_epoch_test_top1", lambda run_dir, device: 0.5)
    monkeypatch.setattr(search, "finetune_sets", lambda config: (None, None, [0] * 7))
    other = base.replace(lr=0.5)
    reported = []
    rows = compare([("S-CNN", base), ("S-CNN", other)], workers=2, report=reported.append)
    assert calls == [([base, other], 2), "auto", "auto"]
    assert (rows[0]["test_top1"], rows[0]["test_images"], rows[0]["best_epoch"]) == (0.5, 7, 2)
    # each row reported as its run ends, the rows returned in the order asked
    assert [r["lr"] for r in reported] == [0.5, base.lr] and [r["lr"] for r in rows] == [
        base.lr, 0.5]
    calls.clear()
    compare([("S-CNN", base)])
    assert calls == ["auto"], "one worker: each run trained as it is asked for"
