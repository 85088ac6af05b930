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


def test_rows_are_looked_up_by_name_and_a_missing_name_lists_the_known_ones():
    from apl_core.controls import by_name

    rows = [{"control": "APL (G = 4, K = 1)", "position_top1": 0.4},
            {"control": "positional leak", "position_top1": 1.0}]
    assert by_name(rows, "positional leak")["position_top1"] == 1.0
    with pytest.raises(KeyError, match="no control 'K = 9' in these rows; they have "
                                       r"\['APL \(G = 4, K = 1\)', 'positional leak'\]"):
        by_name(rows, "K = 9")


def test_the_main_budget_study_has_its_floor_and_a_budget_curve_per_control():
    """The committed main-budget study's random-init floor and, for notebook 06's budget
    curve, every pretrained control judged after each of its epochs."""
    from apl_core.controls import floor, load_controls

    study = load_controls("quick", budget="main")
    assert floor(study) == pytest.approx({"knn_top1": 0.106, "probe_top1": 0.150}, abs=5e-4)
    assert {(seed["seed"], row["control"]): len(row["budget_curve"]) for seed in study["seeds"]
            for row in seed["rows"] if row["control"] != "random init"} == {
        (seed, control): 12 for seed in (0, 1, 2)
        for control in ("APL (G = 4, K = 1)", "positional leak", "K = 0")}
