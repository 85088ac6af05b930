"""The converged search (apl_core.search): each method's recipe, the learning-rate bracket
that moves toward an edge winner, the length read off the validation curve, the choice and
its edge checks, and a search that resumes trial by trial from its results file."""
from __future__ import annotations

import concurrent.futures
import json
import math
from pathlib import Path

import pytest

from apl_core.rundir import read_metrics, run_name
from apl_core.train import RunResult
from apl_core.config import FinetuneConfig, profile_config
from apl_core import device, search
from apl_core.search import (
    RECIPES, START_RATES, TRIALS, TrialStore, adopt_study, best_trial, check_finished,
    check_lengths, choose, chosen_configs, compare, doubled_config, epochs_for_steps,
    initial_rates, keyed_choices, late_check,
    late_runs, load_search, max_steps, next_rate, run_search, run_steps,
    search_configs, search_method, searched_config, trial_row,
)

from conftest import smoke_finetune_config


def trial(lr, val, method="BENCHMARK", npc=10, best_epoch=8, epochs=10, **extra):
    return dict(method=method, npc=npc, lr=lr, val_top1=val, best_epoch=best_epoch,
                epochs=epochs, train_top1=0.5, run=f"{method}-{npc}-{lr}", **extra)


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


def test_an_edge_winner_after_every_trial_is_reported_as_such():
    base = searched_config(FinetuneConfig(npc=10, batch_size=32, val_per_class=5), "BENCHMARK", 400)
    run_trial, _ = peaked_at(1e-9)
    chosen = choose(search_method(base, run_trial))[("BENCHMARK", 10)]
    assert chosen["rate_position"] == "lowest" and chosen["lr"] == min(chosen["rates"])


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
    config = FinetuneConfig(npc=10, lr=2e-4, epochs=6, run_name="r", device="cpu")
    row = trial_row("BENCHMARK", config, metrics([0.2, 0.4, 0.4], train={4: 0.7}, every=2))
    assert row == dict(method="BENCHMARK", npc=10, lr=2e-4, epochs=6, steps=24, best_epoch=4,
                       best_step=16, val_top1=0.4, train_top1=0.7,
                       val_curve=[[2, 0.2], [4, 0.4], [6, 0.4]], seconds=9.0,
                       precision="bf16", run="r")
    assert trial_row("BENCHMARK", config.replace(precision="fp32"),
                     metrics([0.2]))["precision"] == "fp32"


def test_trial_row_names_the_run_without_a_run_name():
    config = FinetuneConfig(npc=10, epochs=1)
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


def test_choose_marks_where_the_chosen_rate_sits_and_late_best_epochs():
    trials = [trial(1e-4, 0.2), trial(1e-3, 0.3, best_epoch=8), trial(1e-2, 0.1),
              trial(1e-4, 0.5, method="S-CNN", best_epoch=9), trial(1e-3, 0.4, method="S-CNN"),
              trial(1e-3, 0.1, npc=30), trial(1e-2, 0.2, npc=30)]
    chosen = choose(trials)
    assert chosen[("BENCHMARK", 10)] == dict(
        lr=1e-3, epochs=10, best_epoch=8, val_top1=0.3, train_top1=0.5,
        rates=[1e-4, 1e-3, 1e-2], rate_position="interior", late=False,
        run="BENCHMARK-10-0.001")
    assert chosen[("S-CNN", 10)]["rate_position"] == "lowest"
    assert chosen[("S-CNN", 10)]["late"]  # epoch 9 of 10: the run's last fifth
    assert chosen[("BENCHMARK", 30)]["rate_position"] == "highest"
    # as a seeds file's header records them: JSON keys are strings
    assert keyed_choices(trials) == {f"{m}|{npc}": pick for (m, npc), pick in chosen.items()}


def test_choose_refuses_a_method_whose_runs_differ_in_length():
    trials = [trial(1e-4, 0.2, epochs=30), trial(1e-3, 0.3, epochs=60, best_epoch=40),
              trial(1e-3, 0.4, method="S-CNN", epochs=30)]
    with pytest.raises(ValueError, match=r"BENCHMARK runs at NPC 10 differ in length: "
                                         r"BENCHMARK-10-0.001 has 60 epochs where 30 are "
                                         r"searched.*remove that NPC's trials"):
        choose(trials)
    assert choose(trials[:1] + trials[2:])  # one length per (method, NPC): no complaint
    double = {**trial(1e-4, 0.3, epochs=60), "run": "double", "doubled_of": trials[0]["run"]}
    assert choose(trials[:1] + [double])[("BENCHMARK", 10)]["doubled"]["epochs"] == 60
    with pytest.raises(ValueError, match="differ in length"):  # checked past a doubled run
        choose([double] + trials)


def test_check_lengths_compares_the_trials_with_the_searched_configs():
    config = FinetuneConfig(npc=10, epochs=30)
    check_lengths([trial(1e-4, 0.2, epochs=30), trial(1e-4, 0.2, npc=30, epochs=5)],
                  [("BENCHMARK", config)])
    with pytest.raises(ValueError, match="BENCHMARK-10-0.0001 has 30 epochs where 60 are"):
        check_lengths([trial(1e-4, 0.2, epochs=30)], [("BENCHMARK", config.replace(epochs=60))])
    check_lengths([trial(1e-4, 0.2, epochs=30)], [("S-CNN", config.replace(epochs=60))])


# ---------------------------------------------------------------- the results file

def test_trial_store_adds_finds_and_replaces_trials(tmp_path):
    path = tmp_path / "results" / "in_progress" / "search.json"  # its folders made
    store = TrialStore(path, {"profile": "smoke"})
    assert store.read() == {"profile": "smoke", "trials": []} and store.find("a") is None
    store.add(trial(1e-3, 0.2))
    store.add(trial(1e-2, 0.3))
    store.add(trial(1e-3, 0.25))  # the same run again: replaced, not repeated
    assert [t["val_top1"] for t in store.read()["trials"]] == [0.3, 0.25]
    assert store.find("BENCHMARK-10-0.01")["val_top1"] == 0.3
    # another process's header (a later date, say) wins; the trials are kept
    TrialStore(path, {"profile": "smoke", "date": "later"}).add(trial(1e-4, 0.1))
    results = json.loads(path.read_text())
    assert results["date"] == "later" and len(results["trials"]) == 3
    # a rerun that has nothing left to add still names itself
    TrialStore(path, {"profile": "smoke", "date": "final"}).write_header()
    results = json.loads(path.read_text())
    assert results["date"] == "final" and len(results["trials"]) == 3


@pytest.mark.parametrize("text", ["{not json", '{"profile": "quick"}', "[]"])
def test_a_damaged_results_file_is_named_with_how_to_restore_it(tmp_path, text):
    path = tmp_path / "search.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path} is not a search results file .*restore it "
                                         f"with git checkout, or delete it"):
        TrialStore(path, {}).find("a")


# ---------------------------------------------------------------- the search on real runs

def test_search_configs_build_each_method_at_each_npc(pretrained_run, tmp_path):
    configs = search_configs("smoke", str(pretrained_run.run_dir), [10], ("BENCHMARK", "S-CNN"),
                             runs_dir=str(pretrained_run.run_dir.parent.parent),
                             val_per_class=2, device="cpu")
    assert [(m, c.model, c.optimizer, c.epochs, c.select_best, c.evaluate_test)
            for m, c in configs] == [("BENCHMARK", "apl", "adamw", 3, True, False),
                                     ("S-CNN", "s-cnn", "sgd", 3, True, False)]
    longer = search_configs("smoke", str(pretrained_run.run_dir), [10], ("S-CNN",), {10: 12},
                            runs_dir=str(pretrained_run.run_dir.parent.parent),
                            val_per_class=2, device="cpu")
    assert [c.epochs for _, c in longer] == [6]
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
        ("APL fine-tune", by_name[0][1].replace(runs_dir="runs"))]
    with pytest.raises(FileNotFoundError, match=f"no checkpoint found for '{name}'"):
        search_configs("smoke", name, [10], method, runs_dir=str(tmp_path / "elsewhere"),
                       val_per_class=2)


def test_run_search_trains_each_trial_once_and_resumes_from_its_results_file(tmp_path):
    base = searched_config(smoke_finetune_config(tmp_path / "runs", model="s-cnn", npc=2,
                                                 val_per_class=1, test_per_class=1),
                           "S-CNN", 4)
    store = TrialStore(tmp_path / "search.json", {"profile": "smoke"})
    reported = []
    trials = run_search([("S-CNN", base)], store, workers=1, report=reported.append)
    searched = [t for t in trials if "doubled_of" not in t]
    late = choose(trials)[("S-CNN", 2)]["late"]  # then its run is doubled too
    assert reported == trials and len(searched) == TRIALS and len(trials) == TRIALS + late
    assert store.read()["trials"] == trials  # written as each trial finished
    assert all(t["epochs"] == 4 and len(t["val_curve"]) == 4 for t in searched)
    # the runs are gone: a second search reads every trial back from the file
    for run in (tmp_path / "runs" / "finetune").iterdir():
        (run / "last.pt").unlink()
    assert run_search([("S-CNN", base)], store, workers=1) == trials
    assert not any((tmp_path / "runs" / "finetune").glob("*/last.pt"))
    # the profile's runs made longer: refused before anything trains
    with pytest.raises(ValueError, match="S-CNN runs at NPC 2 differ in length"):
        run_search([("S-CNN", base.replace(epochs=8))], store, workers=1)
    assert len(list((tmp_path / "runs" / "finetune").iterdir())) == len(trials)



# ---------------------------------------------------------------- the late check

def test_doubled_config_is_twice_as_long_and_validated_as_often_per_run():
    config = searched_config(FinetuneConfig(npc=10, batch_size=32, val_per_class=5), "S-CNN",
                             400)
    doubled = doubled_config(config)
    assert (doubled.epochs, doubled.eval_every) == (200, 10)
    assert doubled.replace(epochs=100, eval_every=5) == config


def test_choose_leaves_doubled_runs_out_of_the_search_and_reports_them():
    late = trial(1e-3, 0.3, best_epoch=10, epochs=10)
    trials = [trial(1e-4, 0.2), late, trial(1e-2, 0.1), trial(3e-3, 0.25, method="S-CNN",
                                                               best_epoch=10)]
    assert late_runs(trials) == [late["run"], "S-CNN-10-0.003"]
    double = {**trial(1e-3, 0.9, best_epoch=12, epochs=20), "run": "double",
              "doubled_of": late["run"]}
    chosen = choose(trials + [double])
    pick = chosen[("BENCHMARK", 10)]
    assert pick["lr"] == 1e-3 and pick["val_top1"] == 0.3  # the doubled run chooses nothing
    assert pick["rates"] == [1e-4, 1e-3, 1e-2]
    assert pick["doubled"] == {"epochs": 20, "best_epoch": 12, "val_top1": 0.9, "run": "double"}
    assert "doubled" not in chosen[("S-CNN", 10)]
    assert late_runs(trials + [double]) == ["S-CNN-10-0.003"]


@pytest.mark.parametrize("doubled_top1, rising", [(0.56, False), (0.57, True), (0.45, False)])
def test_a_doubled_run_is_still_rising_only_beyond_the_validation_noise(doubled_top1, rising):
    pick = {"val_top1": 0.5, "doubled": {"val_top1": doubled_top1}}
    check = late_check(pick, val_images=500)
    assert check["noise"] == pytest.approx(0.0632, abs=1e-4)  # two standard errors, 500 images
    assert check["gain"] == pytest.approx(doubled_top1 - 0.5)
    assert check["still_rising"] is rising
    assert late_check({"val_top1": 0.5}, val_images=500) is None  # not doubled


def test_a_study_refuses_a_search_that_is_not_finished():
    five = [trial(lr, 0.1 + lr) for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)]
    check_finished(five, {10}, "quick")
    with pytest.raises(ValueError, match=r"not finished: BENCHMARK at NPC 10 has 4 of 5 trials\. "
                                         r"Run experiments/converged_search.py --profile quick "
                                         r"again"):
        check_finished(five[:4], {10}, "quick")
    check_finished(five[:4], {30}, "quick")  # only the NPCs the study runs count
    doubled_fourth = {**five[3], "run": "double", "epochs": 20, "doubled_of": five[3]["run"]}
    with pytest.raises(ValueError, match=r"4 of 5 trials\."):  # a doubled run is no trial
        check_finished(five[:4] + [doubled_fourth], {10}, "quick")
    with pytest.raises(ValueError, match=r"BENCHMARK at NPC 10 has 4 of 5 trials; S-CNN at NPC "
                                         r"10 has 1 of 5 trials\."):
        check_finished(five[:4] + [trial(1e-2, 0.1, method="S-CNN")], {10}, "quick")
    late = five[:4] + [trial(1e-2, 0.5, best_epoch=10, epochs=10)]
    with pytest.raises(ValueError, match=r"BENCHMARK at NPC 10's late choice is not doubled yet"):
        check_finished(late, {10}, "quick")
    double = {**trial(1e-2, 0.5, best_epoch=12, epochs=20), "run": "double",
              "doubled_of": late[-1]["run"]}
    check_finished(late + [double], {10}, "quick")


def test_trial_row_of_a_doubled_run_names_the_run_it_doubles():
    row = trial_row("S-CNN", FinetuneConfig(run_name="d", epochs=1), metrics([0.3]),
                    doubled_of="r")
    assert row["doubled_of"] == "r"
    assert "doubled_of" not in trial_row("S-CNN", FinetuneConfig(run_name="d", epochs=1),
                                         metrics([0.3]))


def test_run_search_doubles_a_late_choice_as_soon_as_its_search_ends(tmp_path, monkeypatch):
    base = searched_config(smoke_finetune_config(tmp_path / "runs", model="s-cnn", npc=2,
                                                 val_per_class=1, test_per_class=1),
                           "S-CNN", 4)
    store = TrialStore(tmp_path / "search.json", {"profile": "smoke"})

    def stored(config):  # the search's trials, already run: 0.03 wins, at its last epoch
        row = {**trial(config.lr, 0.5 if config.lr == 0.03 else 0.2, method="S-CNN", npc=2,
                       best_epoch=4 if config.lr == 0.03 else 2, epochs=4),
               "run": run_name(config)}
        store.add(row)
        return row

    searched = search_method(base, stored)
    # the worker in this process (the other run_search test spawns one), so that `make
    # mutation` sees which test runs the per-method search
    monkeypatch.setattr(search, "worker_pool", concurrent.futures.ThreadPoolExecutor)
    trials = run_search([("S-CNN", base)], store, workers=1)
    double = trials[-1]
    assert trials[:-1] == searched  # read back, not trained again
    assert double["doubled_of"] == run_name(base.replace(lr=0.03))
    assert (double["lr"], double["epochs"], len(double["val_curve"])) == (0.03, 8, 8)
    assert choose(store.read()["trials"])[("S-CNN", 2)]["doubled"]["run"] == double["run"]
    assert run_search([("S-CNN", base)], store, workers=1) == trials  # done once
    assert len(store.read()["trials"]) == TRIALS + 1
    assert double["method"] == "S-CNN"
    # stopped after the doubled run finished, before its row was written: read back from its
    # run, not refused as an existing run nor trained again
    results = json.loads(store.path.read_text())
    store.path.write_text(json.dumps({**results, "trials": results["trials"][:-1]}))
    assert run_search([("S-CNN", base)], store, workers=1) == trials


def test_adopt_study_replaces_only_its_npcs_rows_and_keeps_its_provenance():
    committed = {"profile": "quick", "command": "search", "machine": "A", "torch": "1",
                 "protocol": {"trials": 5, "max_steps": {"10": 400, "100": 960}},
                 "trials": [trial(1e-4, 0.2), trial(1e-4, 0.3, npc=100, epochs=30)]}
    study = {"profile": "quick", "command": "study", "machine": "B", "torch": "2",
             "precision": "fp32", "date": "2026-12-04", "workers": 2,
             "protocol": {"trials": 5, "max_steps": {"10": 400, "100": 3840}},
             "trials": [trial(3e-4, 0.5, npc=100, epochs=120), trial(3e-4, 0.9, npc=30)]}
    adopted = adopt_study(committed, study, [100])
    assert adopted["trials"] == [trial(1e-4, 0.2), trial(3e-4, 0.5, npc=100, epochs=120)]
    assert adopted["protocol"] == {"trials": 5, "max_steps": {"10": 400, "100": 3840}}
    assert (adopted["command"], adopted["machine"], "workers" in adopted) == ("search", "A", False)
    assert adopted["studies"] == [{"npcs": [100], "command": "study", "machine": "B",
                                   "precision": "fp32", "torch": "2", "date": "2026-12-04"}]
    again = adopt_study(adopted, {**study, "command": "study again"}, [100])
    assert [s["command"] for s in again["studies"]] == ["study again"]  # it replaces the last
    at_30 = adopt_study(adopted, {**study, "command": "study at 30",
                                  "protocol": {"trials": 5, "max_steps": {"30": 1000}}}, [30])
    assert [s["command"] for s in at_30["studies"]] == ["study", "study at 30"]  # one per NPC
    seeds = adopt_study({"trials": [{"seed": 1, "npc": 100, "run": "old"}]},
                        {**study, "trials": [{"seed": 1, "npc": 100, "run": "new"}]}, [100])
    assert seeds["trials"] == [{"seed": 1, "npc": 100, "run": "new"}] and "protocol" not in seeds
    with pytest.raises(ValueError, match=r"no rows at NPC \[10\]"):
        adopt_study(committed, study, [10, 100])


# ---------------------------------------------------------------- the choice, applied

def test_the_committed_quick_search_is_read_and_a_damaged_one_named(tmp_path, monkeypatch):
    committed = load_search("quick")
    assert committed["profile"] == "quick" and len(committed["trials"]) >= 25
    study = tmp_path / "study" / "quick_npc100_search.json"
    assert load_search("quick", study) is None
    TrialStore(study, {"profile": "quick"}).add(trial(1e-4, 0.2))
    assert load_search("quick", study)["trials"] == [trial(1e-4, 0.2)]
    monkeypatch.setattr(search, "RESULTS_DIR", tmp_path)
    assert load_search("quick") is None
    (tmp_path / "quick_converged_search.json").write_text("{cut")
    with pytest.raises(ValueError, match="quick_converged_search.json is not a converged search "
                                         "results file.*git checkout.*converged_search.py "
                                         "--profile quick"):
        load_search("quick")


def test_the_committed_quick_search_is_converged_at_the_profiles_lengths():
    trials = load_search("quick")["trials"]
    steps = max_steps("quick")
    for (method, npc), pick in choose(trials).items():
        config = profile_config("quick", "finetune", npc=npc)
        assert pick["epochs"] == epochs_for_steps(steps[npc], config), (method, npc)
        assert pick["rate_position"] == "interior" and len(pick["rates"]) == TRIALS
        assert not pick["late"] or pick["doubled"]["epochs"] == 2 * pick["epochs"]
    assert sorted({npc for _, npc in choose(trials)}) == sorted(steps)


def test_chosen_configs_are_the_searched_runs_at_the_chosen_rate(pretrained_run, tmp_path,
                                                                 monkeypatch):
    runs = str(pretrained_run.run_dir.parent.parent)
    settings = dict(runs_dir=runs, val_per_class=2, device="cpu")
    searched = search_configs("smoke", str(pretrained_run.run_dir), [10],
                              ("BENCHMARK", "S-CNN"), **settings)
    monkeypatch.setattr(search, "RESULTS_DIR", tmp_path)
    # no search for smoke: every method at its recipe's start rate
    assert chosen_configs("smoke", str(pretrained_run.run_dir), [10], ("BENCHMARK", "S-CNN"),
                          **settings) == searched
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
    monkeypatch.setattr(search, "train_all", lambda configs, workers: calls.append(
        (list(configs), workers)))
    base = smoke_finetune_config(tmp_path, model="s-cnn", npc=2, val_per_class=1)
    monkeypatch.setattr(search, "finetune", lambda config, resume: calls.append(resume) or
                        RunResult(tmp_path, tmp_path / "last.pt", metrics([0.2, 0.4]), config))
    monkeypatch.setattr(search, "best_epoch_test_top1", lambda run_dir, device: 0.5)
    monkeypatch.setattr(search, "finetune_sets", lambda config: (None, None, [0] * 7))
    rows = compare([("S-CNN", base)], workers=2)
    assert calls == [([base], 2), "auto"]
    assert (rows[0]["test_top1"], rows[0]["test_images"], rows[0]["best_epoch"]) == (0.5, 7, 2)
    calls.clear()
    compare([("S-CNN", base)])
    assert calls == ["auto"], "one worker: each run trained as it is asked for"
