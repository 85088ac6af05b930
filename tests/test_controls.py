"""Notebook 06's controls: each changes one setting of the same small pretraining, and every
control is judged the same way."""
from __future__ import annotations

import pytest
import torch

from apl_core import controls
from apl_core.config import PROFILES, profile_config
from apl_core.controls import RANDOM_INIT, control_configs, labelled_sets, run_controls
from apl_core.model import build_pretrain_model
from apl_core.objective import position_loss
from apl_core.rundir import run_name
from apl_core.train import load_pretrained, pretrain, snapshot_path


def _differences(config, base) -> dict:
    return {k: v for k, v in config.to_dict().items() if base.to_dict()[k] != v}


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_each_control_changes_one_setting_of_the_same_budget(profile, tmp_path):
    configs = control_configs(profile, seed=3, runs_dir=str(tmp_path))
    base = next(iter(configs.values()))
    budget = PROFILES[profile]["controls"]["budget"]
    assert all(getattr(base, k) == v for k, v in budget.items())
    assert base.seed == 3 and base.runs_dir == str(tmp_path) and base.knn_every == 0
    assert _differences(base, profile_config(profile, "pretrain")).keys() <= {
        *budget, "seed", "runs_dir", "knn_every"}
    changed = {name: _differences(config, base) for name, config in configs.items()}
    assert changed.pop(next(iter(configs))) == {}
    assert changed.pop("positional leak") == {"positional_embedding": True}
    assert changed.pop("original scaling") == {"attention_scale": "original"}
    grids, crops = (PROFILES[profile]["controls"][k] for k in ("grids", "crops"))
    assert changed == {**{f"K = {k}": {"crop": k} for k in crops if k != base.crop},
                       **{f"G = {g}": {"grid": g} for g in grids if g != base.grid}}


def test_the_main_budget_is_the_profiles_own_pretraining(tmp_path):
    configs = control_configs("quick", seed=2, budget="main", runs_dir=str(tmp_path))
    apl = next(iter(configs.values()))
    # the APL control at the main budget is notebook 02's run of that seed: read back, not
    # trained again
    assert run_name(apl) == run_name(profile_config("quick", "pretrain", seed=2))
    assert configs["positional leak"] == apl.replace(positional_embedding=True)
    small = control_configs("quick", seed=2, runs_dir=str(tmp_path))
    assert list(configs) == list(small)
    with pytest.raises(ValueError, match="budget='large' is invalid: choose one of "
                                         r"\('small', 'main'\)"):
        control_configs("quick", budget="large")


def test_a_budget_is_recorded_as_the_settings_its_controls_ran_at():
    assert controls.budget_settings("quick") == {"num_images": 4000, "epochs": 4}
    assert controls.budget_settings("quick", "main") == {"num_images": 12_500, "epochs": 12}
    assert controls.budget_settings("smoke", "main") == {
        "num_images": 1024, "holdout_images": 256, "epochs": 3}
    with pytest.raises(ValueError, match="budget='large' is invalid"):
        controls.budget_settings("quick", "large")


@pytest.mark.parametrize("budget", controls.BUDGETS)
def test_each_committed_controls_file_records_the_budget_its_rows_ran_at(budget):
    """Every pretrained control's held-out curve has one point per epoch of the budget the
    header records, which is the one the header names."""
    committed = controls.load_controls("quick", budget)
    recorded = committed["controls"]["budget"]
    assert recorded == controls.budget_settings("quick", budget)
    for seed in committed["seeds"]:
        for row in seed["rows"]:
            if row["control"] != RANDOM_INIT:
                assert len(row["position_curve"]) == recorded["epochs"], row["control"]


def test_the_budget_curve_judges_every_snapshot_of_one_run(tmp_path):
    from apl_core.controls import budget_curve, feature_scores

    config = profile_config("smoke", "pretrain", runs_dir=str(tmp_path), device="cpu",
                            precision="fp32", epochs=2, snapshot_every=1, num_images=192,
                            holdout_images=64, batch_size=32)
    result = pretrain(config)
    sets = labelled_sets("smoke", seed=0)
    curve = budget_curve(result.run_dir, sets)
    assert [row["epoch"] for row in curve] == [1, 2]
    assert [row["position_top1"] for row in curve] == [r["val_top1"] for r in result.metrics]
    for row, weights in zip(curve, (snapshot_path(result.run_dir, 1), result.checkpoint)):
        model, _ = load_pretrained(weights)
        assert {k: row[k] for k in ("knn_top1", "probe_top1", "probe_penalty")} == \
            feature_scores(model.transformer, sets, "cpu")
    plain = pretrain(config.replace(snapshot_every=0, epochs=1))
    assert budget_curve(plain.run_dir, sets) == []


def test_controls_are_judged_on_the_labelled_split_with_the_seeds_labels():
    sets = labelled_sets("smoke", seed=0)
    other = labelled_sets("smoke", seed=1)
    npc = PROFILES["smoke"]["npcs"][-1]
    assert len(sets.train[1]) == 10 * npc and sets.train[1].bincount().tolist() == [npc] * 10
    assert len(sets.val[1]) > 0
    assert torch.equal(sets.test[0], other.test[0])  # one fixed test subset
    assert not torch.equal(sets.train[0], other.train[0])  # each seed draws its labels


def test_run_controls_rows_and_the_random_init_floor(tmp_path):
    rows = run_controls("smoke", names=["positional leak", "K = 0"], runs_dir=str(tmp_path),
                        device="cpu")
    assert [row["control"] for row in rows] == ["positional leak", "K = 0", RANDOM_INIT]
    for row in rows:
        assert 0 <= row["knn_top1"] <= 1 and 0 <= row["probe_top1"] <= 1
        blocks, heads = (PROFILES["smoke"]["pretrain"][k] for k in ("blocks", "heads"))
        assert len(row["attention_distance"]) == blocks
        assert len(row["attention_distance_heads"][0]) == heads
    assert rows[1]["crop"] == 0 and rows[1]["chance"] == 1 / 16
    assert rows[-1]["position_top1"] is None
    assert len(rows[0]["position_curve"]) == PROFILES["smoke"]["controls"]["budget"]["epochs"]
    again = run_controls("smoke", names=["K = 0"], runs_dir=str(tmp_path), device="cpu")
    assert again[0]["run_dir"] == rows[1]["run_dir"]  # read back, not retrained
    assert again[0]["probe_top1"] == rows[1]["probe_top1"]


def test_an_unknown_control_is_named():
    with pytest.raises(ValueError, match=r"unknown control\(s\) \['K = 9'\]; known: .*K = 0"):
        run_controls("smoke", names=["K = 9"])


def _position_accuracy_after_training(positional_embedding: bool) -> float:
    """Train on images of pure noise, where no patch says where it belongs."""
    torch.manual_seed(0)
    config = profile_config("smoke", "pretrain", positional_embedding=positional_embedding,
                            dropout=0.0, patch_dropout=0.0)
    model = build_pretrain_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss, _, _ = position_loss(model, torch.randn(32, 3, 32, 32), None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits, _ = model(torch.randn(64, 3, 32, 32))
    return (logits.argmax(-1) == torch.arange(16)).float().mean().item()


def test_the_positional_leak_solves_the_puzzle_without_looking_at_the_image():
    """With a positional embedding each token carries its position, so the puzzle is solved
    on noise; without one the model can only guess (chance 1/16)."""
    assert _position_accuracy_after_training(positional_embedding=True) > 0.9
    assert _position_accuracy_after_training(positional_embedding=False) < 0.2


def test_seed_tables_pair_each_control_with_apl_on_the_same_seed():
    from apl_core.controls import border_table, control_table

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
    from apl_core.controls import verdict_table

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


def test_floor_is_the_random_init_rows_mean():
    from apl_core.controls import floor

    results = {"seeds": [{"seed": seed, "rows": [
        {"control": "APL", "knn_top1": 0.5, "probe_top1": 0.5},
        {"control": RANDOM_INIT, "knn_top1": 0.1 + seed / 10, "probe_top1": 0.2}]}
        for seed in (0, 1)]}
    assert floor(results) == pytest.approx({"knn_top1": 0.15, "probe_top1": 0.2})
    with pytest.raises(ValueError, match="^these results have no random-init rows to take "
                                         "the floor from$"):
        floor({"seeds": [{"seed": 0, "rows": [{"control": "APL"}]}]})


def test_each_budgets_controls_have_their_file_and_a_damaged_one_says_how_to_rerun_it(
        tmp_path, monkeypatch):
    from apl_core import controls

    monkeypatch.setattr(controls, "RESULTS_DIR", tmp_path)
    assert controls.results_path("quick") == tmp_path / "quick_controls.json"
    assert controls.results_path("quick", "main") == tmp_path / "quick_controls_main.json"
    assert controls.load_controls("quick", "main") is None
    with pytest.raises(FileNotFoundError, match=r"quick_controls_main.json does not exist: "
                                                r"restore it with git checkout, or rerun python "
                                                r"experiments/controls_seeds.py --profile quick "
                                                r"--budget main$"):
        controls.load_controls("quick", "main", required=True)
    (tmp_path / "quick_controls_main.json").write_text("{}")
    with pytest.raises(ValueError, match=r"quick_controls_main.json is not a controls over "
                                         r"seeds results file \(it lacks .*rerun python "
                                         r"experiments/controls_seeds.py --profile quick "
                                         r"--budget main$"):
        controls.load_controls("quick", "main")


def test_committed_controls_cover_every_control_on_three_seeds():
    from apl_core.controls import load_controls

    committed = load_controls("quick")
    assert [s["seed"] for s in committed["seeds"]] == [0, 1, 2]
    names = [*control_configs("quick"), RANDOM_INIT]
    for seed in committed["seeds"]:
        assert [row["control"] for row in seed["rows"]] == names


def control_row(control, grid=4, crop=1, position=0.4, knn=0.2, probe=0.3):
    return {"control": control, "grid": grid, "crop": crop, "position_top1": position,
            "chance": 1 / grid ** 2, "knn_top1": knn, "probe_top1": probe,
            "probe_penalty": 0.01}


RUN = [control_row("APL (G = 4, K = 1)"), control_row("positional leak", position=1.0),
       control_row("K = 0", crop=0), control_row("G = 6", grid=6, position=0.125),
       control_row("G = 3", grid=3, position=0.5), control_row("original scaling", knn=0.25),
       control_row("random init", position=None, knn=0.1, probe=0.15)]


def test_rows_are_looked_up_by_name_and_a_missing_name_lists_the_known_ones():
    from apl_core.controls import by_name

    assert by_name(RUN, "positional leak")["position_top1"] == 1.0
    with pytest.raises(KeyError, match="no control 'K = 9' in these rows; they have "
                                       r"\['APL \(G = 4, K = 1\)', 'positional leak'"):
        by_name(RUN, "K = 9")


def test_the_run_table_shows_percentages_and_a_dash_for_the_floors_puzzle():
    from apl_core.controls import run_table

    table = run_table(RUN)
    assert table[0] == {"control": "APL (G = 4, K = 1)", "G": 4, "K": 1,
                        "position top-1": "40.0", "chance": "6.2", "kNN top-1": "20.0",
                        "probe top-1": "30.0", "probe L2 penalty": "0.01"}
    assert table[-1]["position top-1"] == "–"


def test_the_grid_table_orders_the_grids_at_the_crop_without_the_other_controls():
    from apl_core.controls import grid_table

    assert [(r["G"], r["x chance"]) for r in grid_table(RUN, crop=1)] == [
        (3, "4.5"), (4, "6.4"), (6, "4.5")]


def test_the_scaling_table_sets_the_original_scaling_beside_apl():
    from apl_core.controls import scaling_table

    assert [(r["attention"], r["kNN top-1"]) for r in scaling_table(RUN, "APL (G = 4, K = 1)")] \
        == [("standard, 1/sqrt(D/H)", "20.0"), ("original, q k v / D^(1/4)", "25.0")]


def test_the_configs_table_names_each_controls_change_and_budget():
    from apl_core.controls import configs_table, control_configs

    table = configs_table(control_configs("smoke"))
    assert table[0]["control"].startswith("APL") and table[0]["images x epochs"] == "256 x 1"
    assert [r["positional embedding"] for r in table[:2]] == [False, True]


def test_the_main_budget_tables_read_every_seed_of_the_committed_study():
    """The committed main-budget study as notebook 06 and docs/results.md show it; the
    numbers were checked against the runs' own printed lines when the study finished."""
    from apl_core.controls import border_table, control_table, floor, load_controls, \
        verdict_table

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
    assert floor(study) == pytest.approx({"knn_top1": 0.106, "probe_top1": 0.150}, abs=5e-4)
    # the budget curve (notebook 06): every pretrained control judged after each of its epochs
    assert {(seed["seed"], row["control"]): len(row["budget_curve"]) for seed in study["seeds"]
            for row in seed["rows"] if row["control"] != "random init"} == {
        (seed, control): 12 for seed in (0, 1, 2)
        for control in ("APL (G = 4, K = 1)", "positional leak", "K = 0")}


DISTINCT = [control_row("APL (G = 4, K = 1)", knn=0.21, probe=0.31),
            control_row("positional leak", position=1.0, knn=0.22, probe=0.32),
            control_row("K = 0", crop=0, knn=0.23, probe=0.33),
            control_row("G = 6", grid=6, position=0.125, knn=0.24, probe=0.34),
            control_row("G = 3", grid=3, position=0.5, knn=0.25, probe=0.35),
            control_row("original scaling", position=0.39, knn=0.26, probe=0.36)]


def test_the_grid_and_scaling_tables_carry_each_controls_own_numbers():
    from apl_core.controls import grid_table, scaling_table

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
    from apl_core.controls import configs_table, control_configs

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
