"""Notebook 06's tables of the controls (apl_core.control_tables): one run's against chance,
by grid and by attention scaling, what each control pretrains, and over seeds each control's
mean, its paired difference from APL with the verdict, and what the border ring is worth."""
from __future__ import annotations

from apl_core.control_tables import (
    border_table, configs_table, control_table, grid_table, run_table, scaling_table,
    verdict_table,
)
from apl_core.controls import control_configs, load_controls


def control_row(control, grid=4, crop=1, position=0.4, knn=0.2, probe=0.3):
    return {"control": control, "grid": grid, "crop": crop, "position_top1": position,
            "chance": 1 / grid ** 2, "knn_top1": knn, "probe_top1": probe,
            "probe_penalty": 0.01}


RUN = [control_row("APL (G = 4, K = 1)"), control_row("positional leak", position=1.0),
       control_row("K = 0", crop=0), control_row("G = 6", grid=6, position=0.125),
       control_row("G = 3", grid=3, position=0.5), control_row("original scaling", knn=0.25),
       control_row("random init", position=None, knn=0.1, probe=0.15)]


def test_the_run_table_shows_percentages_and_a_dash_for_the_floors_puzzle():
    table = run_table(RUN)
    assert table[0] == {"control": "APL (G = 4, K = 1)", "G": 4, "K": 1,
                        "position top-1": "40.0", "chance": "6.2", "kNN top-1": "20.0",
                        "probe top-1": "30.0", "probe L2 penalty": "0.01"}
    assert table[-1]["position top-1"] == "–"


def test_the_grid_table_orders_the_grids_at_the_crop_without_the_other_controls():
    assert [(r["G"], r["x chance"]) for r in grid_table(RUN, crop=1)] == [
        (3, "4.5"), (4, "6.4"), (6, "4.5")]


def test_the_scaling_table_sets_the_original_scaling_beside_apl():
    assert [(r["attention"], r["kNN top-1"]) for r in scaling_table(RUN, "APL (G = 4, K = 1)")] \
        == [("standard, 1/sqrt(D/H)", "20.0"), ("original, q k v / D^(1/4)", "25.0")]


def test_the_configs_table_names_each_controls_change_and_budget():
    table = configs_table(control_configs("smoke"))
    assert table[0]["control"].startswith("APL") and table[0]["images x epochs"] == "256 x 1"
    assert [r["positional embedding"] for r in table[:2]] == [False, True]


def test_the_main_budget_tables_read_every_seed_of_the_committed_study():
    """The committed main-budget study as notebook 06 and docs/results.md show it; the
    numbers were checked against the runs' own printed lines when the study finished."""
    study = load_controls("quick", budget="main")
    assert control_table(study) == [
        {"control": "APL (G = 4, K = 1)", "seeds": 3, "position top-1": "76.7 ± 1.4",
         "chance": "6.2", "kNN top-1": "31.1 ± 3.6", "probe top-1": "53.7 ± 0.9"},
        {"control": "positional leak", "seeds": 3, "position top-1": "100.0 ± 0.0",
         "chance": "6.2", "kNN top-1": "11.9 ± 1.2", "probe top-1": "22.0 ± 1.8"},
        {"control": "K = 0", "seeds": 3, "position top-1": "85.1 ± 1.9", "chance": "6.2",
         "kNN top-1": "30.8 ± 1.0", "probe top-1": "55.4 ± 1.4"},
        {"control": "random init", "seeds": 3, "position top-1": "–", "chance": "6.2",
         "kNN top-1": "10.6 ± 1.4", "probe top-1": "15.0 ± 0.6"}]
    assert [(r["control"], r["measure"], r["− APL, per seed"], r["detectable"], r["verdict"])
            for r in verdict_table(study, test_images=1000)] == [
        ("positional leak", "kNN", "-17.6, -22.0, -17.9", "6.1", "below APL"),
        ("positional leak", "probe", "-34.3, -30.9, -29.9", "5.7", "below APL"),
        ("K = 0", "kNN", "+2.6, -5.3, +2.0", "10.9", "no detectable difference"),
        ("K = 0", "probe", "+1.3, -0.3, +4.0", "5.4", "no detectable difference"),
        ("random init", "kNN", "-19.7, -23.1, -18.7", "5.7", "below APL"),
        ("random init", "probe", "-39.8, -39.5, -37.0", "4.2", "below APL")]
    assert border_table(study) == [
        {"control": "K = 0", "K": 0, "intact": "85.1 ± 1.9", "ring blanked": "7.6 ± 1.8",
         "drop, per seed": "76.5, 80.6, 75.5", "drop mean": "77.5",
         "control's drop mean": "6.4", "reliance, per seed": "+69.8, +75.8, +67.8",
         "reliance mean": "+71.1"},
        {"control": "APL (G = 4, K = 1)", "K": 1, "intact": "76.7 ± 1.4",
         "ring blanked": "10.0 ± 1.0", "drop, per seed": "66.5, 67.7, 65.9",
         "drop mean": "66.7", "control's drop mean": "8.3",
         "reliance, per seed": "+58.1, +59.0, +57.9", "reliance mean": "+58.4"}]


def test_seed_tables_pair_each_control_with_apl_on_the_same_seed():
    def row(control, seed, probe):
        return {"control": control, "position_top1": 0.4, "chance": 1 / 16,
                "knn_top1": 0.1, "probe_top1": probe + seed / 100}

    results = {"seeds": [
        {"seed": seed, "rows": [row("APL", seed, 0.20), row("leak", seed, 0.25 - 0.1 * seed)],
         "borders": [{"control": "K = 0", "crop": 0, "intact": 0.5, "blanked": 0.2,
                      "drop": 0.3}]}
        for seed in (0, 1)]}
    assert [r["probe top-1"] for r in control_table(results)] == ["20.5 ± 0.7", "20.5 ± 6.4"]
    assert border_table(results) == [{"control": "K = 0", "K": 0, "intact": "50.0 ± 0.0",
                                      "ring blanked": "20.0 ± 0.0", "drop, per seed": "30.0, 30.0",
                                      "drop mean": "30.0"}]
    with_control = {"seeds": [{"borders": [
        {"control": "K = 0", "crop": 0, "intact": 0.5, "blanked": 0.2, "drop": 0.3,
         "interior_blanked": 0.5 - d, "interior_drop": d, "reliance": 0.3 - d}]}
        for d in (0.1, 0.2)]}
    assert border_table(with_control) == [{
        "control": "K = 0", "K": 0, "intact": "50.0 ± 0.0", "ring blanked": "20.0 ± 0.0",
        "drop, per seed": "30.0, 30.0", "drop mean": "30.0", "control's drop mean": "15.0",
        "reliance, per seed": "+20.0, +10.0", "reliance mean": "+15.0"}]
    # one seed (a live run), and a seed without the border test
    one_seed = {"seeds": results["seeds"][:1] + [{"seed": 1, "rows": []}]}
    assert [r["chance"] for r in control_table(one_seed)] == ["6.2", "6.2"]
    assert border_table(one_seed)[0]["drop, per seed"] == "30.0"
    assert border_table({"seeds": [{"seed": 0, "rows": []}]}) == []


def test_verdict_table_calls_a_difference_only_beyond_the_noise_on_every_seed():
    def row(control, knn, probe):
        return {"control": control, "knn_top1": knn, "probe_top1": probe}

    results = {"seeds": [{"seed": seed, "rows": [
        row("APL", 0.30, 0.40), row("leak", 0.30 + knn, 0.40 + probe),
        row("better", 0.30 - knn, 0.40 - probe)]}
        for seed, knn, probe in ((0, 0.02, -0.10), (1, -0.01, -0.11), (2, 0.01, -0.12))]}
    knn, probe, _, better_probe = verdict_table(results, test_images=1000)
    assert better_probe["verdict"] == "above APL"
    assert probe == {"control": "leak", "measure": "probe",
                     "− APL, per seed": "-10.0, -11.0, -12.0", "detectable": "4.3",
                     "verdict": "below APL"}
    assert knn["− APL, per seed"] == "+2.0, -1.0, +1.0"
    assert knn["verdict"] == "no detectable difference"
    # the same differences on 100 test images are inside the test set's noise
    assert verdict_table(results, test_images=100)[1]["verdict"] == "no detectable difference"


DISTINCT = [control_row("APL (G = 4, K = 1)", knn=0.21, probe=0.31),
            control_row("positional leak", position=1.0, knn=0.22, probe=0.32),
            control_row("K = 0", crop=0, knn=0.23, probe=0.33),
            control_row("G = 6", grid=6, position=0.125, knn=0.24, probe=0.34),
            control_row("G = 3", grid=3, position=0.5, knn=0.25, probe=0.35),
            control_row("original scaling", position=0.39, knn=0.26, probe=0.36)]


def test_the_grid_and_scaling_tables_carry_each_controls_own_numbers():
    assert grid_table(DISTINCT, crop=1) == [
        {"G": 3, "tokens T": 9, "position top-1": "50.0", "x chance": "4.5",
         "kNN top-1": "25.0", "probe top-1": "35.0"},
        {"G": 4, "tokens T": 16, "position top-1": "40.0", "x chance": "6.4",
         "kNN top-1": "21.0", "probe top-1": "31.0"},
        {"G": 6, "tokens T": 36, "position top-1": "12.5", "x chance": "4.5",
         "kNN top-1": "24.0", "probe top-1": "34.0"}]
    assert scaling_table(DISTINCT, "APL (G = 4, K = 1)") == [
        {"attention": "standard, 1/sqrt(D/H)", "position top-1": "40.0", "kNN top-1": "21.0",
         "probe top-1": "31.0"},
        {"attention": "original, q k v / D^(1/4)", "position top-1": "39.0",
         "kNN top-1": "26.0", "probe top-1": "36.0"}]


def test_the_configs_table_shows_every_setting_a_control_changes():
    table = configs_table(control_configs("smoke"))
    assert [r["control"] for r in table] == ["APL (G = 4, K = 1)", "positional leak", "K = 0",
                                             "G = 2", "original scaling"]
    assert table[0] == {"control": "APL (G = 4, K = 1)", "G": 4, "K": 1, "tokens T": 16,
                        "D": 147, "positional embedding": False,
                        "attention scale": "standard", "images x epochs": "256 x 1"}
    assert {(r["control"], r["K"], r["D"]) for r in table if r["control"] == "K = 0"} == \
        {("K = 0", 0, 192)}
    assert table[-1]["attention scale"] == "original"
    assert configs_table(control_configs("quick", budget="main"))[0]["images x epochs"] == \
        "12,000 x 12"
