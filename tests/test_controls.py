"""Notebook 06's controls: each changes one setting of the same small pretraining, and every
control is judged the same way."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from apl_core import controls
from apl_core.config import PROFILES, profile_config
from apl_core.controls import RANDOM_INIT, control_configs, labelled_sets, run_controls
from apl_core.model import build_pretrain_model
from apl_core.objective import position_loss
from apl_core.rundir import run_name
from apl_core.train import RunResult, load_pretrained, pretrain, snapshot_path


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


def test_the_default_seed_is_the_courses_own():
    """Without a seed the controls are seed 0's, the seed notebook 02 pretrains: at the main
    budget the APL control is that run, read back."""
    apl = next(iter(control_configs("quick", budget="main").values()))
    assert run_name(apl) == run_name(profile_config("quick", "pretrain"))


def _fake_finetune_sets(asked: list):
    def finetune_sets(config):
        asked.append(config)
        return tuple(SimpleNamespace(images=f"{part} images", labels=f"{part} labels")
                     for part in ("train", "val", "test"))
    return finetune_sets


def test_the_labelled_sets_are_notebook_04s_at_its_largest_npc(monkeypatch):
    """The run's data_dir and device reach the labelled sets; its pretraining settings do
    not, and a profile with a validation part keeps it."""
    asked = []
    monkeypatch.setattr(controls, "finetune_sets", _fake_finetune_sets(asked))
    sets = labelled_sets("smoke", runs_dir="elsewhere", epochs=1, data_dir="my_data",
                         device="cpu")
    assert sets == controls.LabelledImages(("train images", "train labels"),
                                           ("val images", "val labels"),
                                           ("test images", "test labels"))
    assert asked == [profile_config("smoke", "finetune", npc=10, label_seed=42,
                                    data_dir="my_data", device="cpu")]
    assert asked[0].val_per_class == PROFILES["smoke"]["finetune"]["val_per_class"] == 2


@pytest.mark.parametrize("npcs, val_per_class", [((10, 500), 250), ((3,), 1)])
def test_a_profile_without_a_validation_part_gets_half_its_npc(monkeypatch, npcs,
                                                               val_per_class):
    """The probe chooses its penalty on a validation part: the paper's profile has none, so
    half the NPC is held out (at least one image per class)."""
    asked = []
    monkeypatch.setattr(controls, "finetune_sets", _fake_finetune_sets(asked))
    monkeypatch.setitem(PROFILES["paper"], "npcs", npcs)
    labelled_sets("paper", seed=2)
    assert asked == [profile_config("paper", "finetune", npc=max(npcs), label_seed=44,
                                    val_per_class=val_per_class)]


def _features(images0: int, images1: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes told apart by their features' direction, class 1's `scale` times as long."""
    class0 = torch.stack([torch.ones(images0), 0.3 + torch.linspace(0, 0.2, images0)], dim=1)
    class1 = torch.stack([0.3 + torch.linspace(0, 0.2, images1), torch.ones(images1)], dim=1)
    return torch.cat([class0, class1 * scale]), torch.tensor([0] * images0 + [1] * images1)


@pytest.fixture
def features_are_the_images(monkeypatch) -> list:
    """A transformer whose pooled features are its images; the devices it was asked for."""
    devices = []

    def pooled_features(transformer, images, device="cpu"):
        devices.append(device)
        return images.float()
    monkeypatch.setattr(controls, "pooled_features", pooled_features)
    return devices


def test_the_knn_votes_with_the_cosine_similarity(features_are_the_images):
    """Class 1's features are 100 times as long as class 0's, and class 0 has 5 training
    images to class 1's 30: a class-0 test image's 20 nearest include 15 of class 1, which
    only votes weighted by the cosine similarity outweigh. A dot product, or features scaled
    over the images, puts every test image in class 1."""
    sets = controls.LabelledImages(_features(5, 30, 100.0), _features(10, 10, 100.0),
                                   _features(10, 10, 100.0))
    assert controls.feature_scores("transformer", sets, "cuda") == {
        "knn_top1": 1.0, "probe_top1": 1.0, "probe_penalty": 1e-4}
    assert features_are_the_images == ["cuda"] * 3


def test_judge_features_measures_how_far_each_head_looks(monkeypatch,
                                                         features_are_the_images):
    """G = 2: block 0's head 0 attends to its own cell, head 1 to every cell alike; block 1's
    heads attend to the horizontal neighbour. Attention is averaged over the first
    ATTENTION_IMAGES test images."""
    asked = []
    own = torch.eye(4)
    uniform = torch.full((4, 4), 0.25)
    neighbour = own[[1, 0, 3, 2]]

    def attention_maps(transformer, images, device="cpu"):
        asked.append((transformer, len(images), device))
        return [torch.stack([own, uniform]).expand(len(images), 2, 4, 4),
                torch.stack([neighbour, neighbour]).expand(len(images), 2, 4, 4)]
    monkeypatch.setattr(controls, "attention_maps", attention_maps)
    transformer = SimpleNamespace(grid=2)
    sets = controls.LabelledImages(_features(30, 30, 1.0), _features(10, 10, 1.0),
                                   _features(150, 150, 1.0))
    judged = controls.judge_features(transformer, sets, "cuda")
    every_cell = (0 + 1 + 1 + 2 ** 0.5) / 4
    assert judged == {"knn_top1": 1.0, "probe_top1": 1.0, "probe_penalty": 1e-4,
                      "attention_distance": pytest.approx([every_cell / 2, 1.0], abs=1e-5),
                      "attention_distance_heads": [pytest.approx([0, every_cell], abs=1e-5),
                                                   [1.0, 1.0]]}
    assert asked == [(transformer, controls.ATTENTION_IMAGES, "cuda")]
    assert features_are_the_images == ["cuda"] * 3


def _fake_load_pretrained(path, device="cpu"):
    return SimpleNamespace(transformer=("weights", str(path), str(device))), None


def test_the_budget_curve_has_a_row_per_snapshot_in_epoch_order(monkeypatch, tmp_path):
    """Snapshots are judged in the order of their epochs (10 after 3), each with the
    held-out position top-1 of its epoch, None where the metrics lack the epoch."""
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": epoch, "val_top1": epoch / 4}) + "\n" for epoch in (1, 2, 3)))
    for epoch in (3, 10, 1):
        snapshot_path(tmp_path, epoch).parent.mkdir(exist_ok=True)
        snapshot_path(tmp_path, epoch).touch()
    monkeypatch.setattr(controls, "load_pretrained", _fake_load_pretrained)
    monkeypatch.setattr(controls, "feature_scores", lambda transformer, sets, device: {
        "knn_top1": (transformer, sets, device)})
    curve = controls.budget_curve(str(tmp_path), "sets", device="cuda")
    assert curve == [
        {"epoch": epoch, "position_top1": top1,
         "knn_top1": (("weights", str(snapshot_path(tmp_path, epoch)), "cuda"), "sets", "cuda")}
        for epoch, top1 in ((1, 0.25), (3, 0.75), (10, None))]


@pytest.fixture
def faked_training(monkeypatch, tmp_path):
    """run_controls on a machine with a GPU, every control's pretraining taking 3 seconds
    and judged by fakes that say what they were given."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    clock = [100.0]
    monkeypatch.setattr(controls.time, "perf_counter", lambda: clock[0])
    trained = []

    def pretrain(config, resume):
        trained.append((config, resume))
        clock[0] += 3
        run_dir = tmp_path / f"run{len(trained)}"
        metrics = [{"epoch": 1, "val_top1": 0.25, "epoch_time_s": 1.5},
                   {"epoch": 2, "val_top1": 0.5, "epoch_time_s": 2.0}]
        return RunResult(run_dir, run_dir / "last.pt", metrics, config)

    def labelled_sets(profile, seed, **settings):
        return ("sets", profile, seed, settings)

    class RandomInit:
        def __init__(self, config):
            self.seed = torch.initial_seed()

        def to(self, device):
            return SimpleNamespace(transformer=("random init", self.seed, str(device)))
    monkeypatch.setattr(controls, "pretrain", pretrain)
    monkeypatch.setattr(controls, "load_pretrained", _fake_load_pretrained)
    monkeypatch.setattr(controls, "labelled_sets", labelled_sets)
    monkeypatch.setattr(controls, "judge_features", lambda transformer, sets, device: {
        "judged": (transformer, sets, str(device))})
    monkeypatch.setattr(controls, "budget_curve", lambda run_dir, sets, device: [
        ("curve", run_dir, sets, str(device))])
    monkeypatch.setattr(controls, "build_pretrain_model", RandomInit)
    return trained, tmp_path


def _trained_row(name, config, run_dir, judged):
    return {"control": name, "grid": config.grid, "crop": config.crop, "position_top1": 0.5,
            "chance": 1 / config.num_tokens, "position_curve": [0.25, 0.5],
            "train_seconds": 3.5, "run_dir": str(run_dir.resolve()), "judged": judged,
            "seconds": 3.0}


def test_run_controls_trains_the_named_controls_and_judges_them_on_the_gpu(faked_training):
    trained, tmp_path = faked_training
    settings = {"runs_dir": str(tmp_path), "snapshot_every": 1}
    reported = []
    rows = run_controls("smoke", seed=2, names=["K = 0", "positional leak"],
                        report=reported.append, budget="main", **settings)
    every = control_configs("smoke", 2, "main", **settings)
    assert trained == [(every["K = 0"], "auto"), (every["positional leak"], "auto")]
    sets = ("sets", "smoke", 2, settings)
    expected = []
    for number, name in enumerate(["K = 0", "positional leak"], start=1):
        run_dir = tmp_path / f"run{number}"
        weights = ("weights", str(run_dir / "last.pt"), "cuda")
        expected.append({**_trained_row(name, every[name], run_dir, (weights, sets, "cuda")),
                         "budget_curve": [("curve", run_dir, sets, "cuda")]})
    floor_row = {"control": RANDOM_INIT, "grid": 4, "crop": 1, "position_top1": None,
                 "chance": 1 / 16, "judged": (("random init", 2, "cuda"), sets, "cuda")}
    assert rows == [*expected, floor_row]
    assert reported == expected


def test_run_controls_runs_every_control_of_seed_0_on_the_device_asked_for(faked_training):
    """device='cpu' is kept on a machine with a GPU; without snapshots there is no budget
    curve."""
    trained, tmp_path = faked_training
    settings = {"runs_dir": str(tmp_path), "device": "cpu"}
    rows = run_controls("smoke", **settings)
    every = control_configs("smoke", 0, **settings)
    assert trained == [(config, "auto") for config in every.values()]
    sets = ("sets", "smoke", 0, settings)
    expected = []
    for number, (name, config) in enumerate(every.items(), start=1):
        run_dir = tmp_path / f"run{number}"
        weights = ("weights", str(run_dir / "last.pt"), "cpu")
        expected.append(_trained_row(name, config, run_dir, (weights, sets, "cpu")))
    assert rows[:-1] == expected
    assert rows[-1]["judged"] == (("random init", 0, "cpu"), sets, "cpu")


def _border_rows() -> list[dict]:
    """A seed's rows: the K = 2 run is not at hand (a committed row), and the random init
    has no run."""
    return [{"control": "APL (G = 4, K = 1)", "grid": 4, "crop": 1, "run_dir": "runs/apl"},
            {"control": "positional leak", "grid": 4, "crop": 1, "run_dir": "runs/leak"},
            {"control": "K = 0", "grid": 4, "crop": 0, "run_dir": "runs/k0"},
            {"control": "K = 2", "grid": 4, "crop": 2},
            {"control": "G = 2", "grid": 2, "crop": 1, "run_dir": "runs/g2"},
            {"control": "original scaling", "grid": 4, "crop": 1, "run_dir": "runs/scaling"},
            {"control": RANDOM_INIT, "grid": 4, "crop": 1}]


@pytest.fixture
def fake_blanking(monkeypatch) -> list:
    """Every run's model intact finds 3/4 of the positions; the ring blanked, 1/2 (APL's run)
    or 1/4 (any other); as many pixels blanked inside the ring, 5/8. Returns what the
    blanking was asked."""
    asked = []

    def load_pretrained(run_dir, device="cpu"):
        return f"model of {run_dir}", SimpleNamespace(seed=7, run_dir=run_dir)

    def held_out_images(config):
        return SimpleNamespace(images=[f"{config.run_dir} image {i}" for i in range(600)])

    def border_blanking(model, images, device="cpu"):
        asked.append(("ring", model, images[0], len(images), device))
        return {"intact": 0.75, "blanked": 0.5 if model == "model of runs/apl" else 0.25}

    def interior_blanking(model, images, seed=0, device="cpu"):
        asked.append(("interior", model, images[0], len(images), seed, device))
        return {"intact": 0.75, "blanked": 0.625}
    for fake in (load_pretrained, held_out_images, border_blanking, interior_blanking):
        monkeypatch.setattr(controls, fake.__name__, fake)
    return asked


def test_border_reliance_compares_the_crops_at_hand_in_crop_order(fake_blanking):
    assert controls.border_reliance(_border_rows(), device="cuda", images=64) == [
        {"control": "K = 0", "crop": 0, "intact": 0.75, "blanked": 0.25, "drop": 0.5,
         "interior_blanked": 0.625, "interior_drop": 0.125, "reliance": 0.375},
        {"control": "APL (G = 4, K = 1)", "crop": 1, "intact": 0.75, "blanked": 0.5,
         "drop": 0.25, "interior_blanked": 0.625, "interior_drop": 0.125, "reliance": 0.125}]
    assert fake_blanking == [("ring", "model of runs/k0", "runs/k0 image 0", 64, "cuda"),
                             ("interior", "model of runs/k0", "runs/k0 image 0", 64, 7, "cuda"),
                             ("ring", "model of runs/apl", "runs/apl image 0", 64, "cuda"),
                             ("interior", "model of runs/apl", "runs/apl image 0", 64, 7,
                              "cuda")]


def test_border_reliance_uses_500_held_out_images_on_the_cpu_by_default(fake_blanking):
    controls.border_reliance(_border_rows()[:1])
    assert fake_blanking == [("ring", "model of runs/apl", "runs/apl image 0", 500, "cpu"),
                             ("interior", "model of runs/apl", "runs/apl image 0", 500, 7,
                              "cpu")]


def test_border_reliance_blanks_the_runs_own_held_out_images(pretrained_run):
    """Intact, the model finds on its held-out images what its last epoch measured there."""
    apl = {"control": "APL (G = 4, K = 1)", "grid": 4, "crop": 1,
           "run_dir": str(pretrained_run.run_dir)}
    [row] = controls.border_reliance([apl])
    assert row["intact"] == pretrained_run.metrics[-1]["val_top1"]
    assert row["reliance"] == pytest.approx(row["drop"] - row["interior_drop"])


def test_finetuned_transformers_are_notebook_04s_at_its_largest_npc(monkeypatch):
    monkeypatch.setattr(controls, "load_finetuned", lambda run_dir, device="cpu": (
        SimpleNamespace(transformer=("transformer of", run_dir, device)), "config"))
    rows = [{"method": method, "npc": npc, "run_dir": f"{method} {npc}"}
            for npc in (10, 100) for method in ("APL fine-tune", "BENCHMARK", "S-CNN")]
    assert controls.finetuned_transformers(rows) == {
        "APL fine-tune": ("transformer of", "APL fine-tune 100", "cpu"),
        "BENCHMARK": ("transformer of", "BENCHMARK 100", "cpu")}
    assert controls.finetuned_transformers(rows, methods=("BENCHMARK",), device="cuda") == {
        "BENCHMARK": ("transformer of", "BENCHMARK 100", "cuda")}


def test_rows_by_control_gathers_each_controls_rows_with_their_seed():
    results = {"seeds": [{"seed": seed, "rows": [{"control": "APL", "knn_top1": seed / 4},
                                                 {"control": RANDOM_INIT, "knn_top1": 0.1}]}
                         for seed in (3, 5)]}
    assert controls.rows_by_control(results) == {
        "APL": [{"control": "APL", "knn_top1": 0.75, "seed": 3},
                {"control": "APL", "knn_top1": 1.25, "seed": 5}],
        RANDOM_INIT: [{"control": RANDOM_INIT, "knn_top1": 0.1, "seed": 3},
                      {"control": RANDOM_INIT, "knn_top1": 0.1, "seed": 5}]}
