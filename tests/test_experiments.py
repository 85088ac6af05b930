"""The study scripts of experiments/: what their results files record about the run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from apl_core import control_tables, controls

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import controls_seeds  # noqa: E402


def test_the_controls_header_records_the_budget_the_controls_ran_at(tmp_path, monkeypatch):
    """--budget main pretrains every control as long as the profile's own pretraining: the
    header says so (images and epochs), beside the grids and crops the profile tries."""
    ran = []
    monkeypatch.setattr(controls, "run_controls", lambda profile, seed, names, budget, **kw:
                        ran.append((seed, budget)) or [{"control": "APL", "run_dir": "x"}])
    monkeypatch.setattr(controls, "border_reliance", lambda rows, device: [])
    monkeypatch.setattr(controls, "labelled_sets", lambda profile, seed: type(
        "Sets", (), {"test": (None, [0] * 10)})())
    for table in ("control_table", "verdict_table", "border_table"):
        monkeypatch.setattr(control_tables, table, lambda *args: [])
    monkeypatch.setattr(controls_seeds, "markdown_table", lambda rows: "")
    for budget, expected in (("main", {"num_images": 12_500, "epochs": 12}),
                             ("small", {"num_images": 4000, "epochs": 4})):
        out = tmp_path / f"{budget}.json"
        controls_seeds.main(["--profile", "quick", "--seeds", "0", "1", "--budget", budget,
                             "--device", "cpu", "--out", str(out)])
        written = json.loads(out.read_text())
        assert written["budget"] == budget
        assert written["controls"] == {"budget": expected, "grids": [3, 4, 6],
                                       "crops": [0, 1, 2]}
        assert [s["seed"] for s in written["seeds"]] == [0, 1]
        assert written["seeds"][0]["rows"] == [{"control": "APL"}]  # no run folder kept
    assert ran == [(0, "main"), (1, "main"), (0, "small"), (1, "small")]


# ---------------------------------------------------------------- the converged search's CLI

import concurrent.futures  # noqa: E402

import pytest  # noqa: E402

from apl_core import search, trial_store  # noqa: E402
import converged_search  # noqa: E402
import converged_seeds  # noqa: E402


@pytest.fixture(scope="module")
def smoke_search(tmp_path_factory):
    """S-CNN searched on the smoke profile through the script, in this process: its runs
    folder and results file."""
    root = tmp_path_factory.mktemp("study")
    patch = pytest.MonkeyPatch()
    patch.setattr(search, "worker_pool", concurrent.futures.ThreadPoolExecutor)
    out = root / "in_progress" / "search.json"
    converged_search.main(["--profile", "smoke", "--methods", "S-CNN", "--device", "cpu",
                           "--runs-dir", str(root / "runs"), "--out", str(out)])
    patch.undo()
    return root, out


def test_the_search_script_writes_every_trial_and_a_rerun_trains_none(smoke_search, monkeypatch,
                                                                      capsys):
    root, out = smoke_search
    written = json.loads(out.read_text())
    assert written["profile"] == "smoke" and written["protocol"]["longest"] == search.LONGEST
    assert written["command"].startswith("python experiments/converged_search.py --profile "
                                         "smoke --methods S-CNN")
    assert "late_fraction" not in written["protocol"]
    assert trial_store.npc_protocols(written) == {10: {"recipes": ["base", "small-data"],
                                                  "lengths": "paired test"}}
    trials = written["trials"]
    assert {t.get("recipe") for t in trials if search.lengthens(t) is None} == {
        "base", "small-data"}
    search.check_finished(trials, {10}, "smoke")  # searched and lengthened to the end
    monkeypatch.setattr(search, "worker_pool", concurrent.futures.ThreadPoolExecutor)
    monkeypatch.setattr(search, "finetune", lambda *args, **kwargs: pytest.fail("trained"))
    converged_search.main(["--profile", "smoke", "--methods", "S-CNN", "--device", "cpu",
                           "--runs-dir", str(root / "runs"), "--out", str(out)])
    assert json.loads(out.read_text())["trials"] == trials
    printed = capsys.readouterr().out
    assert f"{len(trials)} runs" in printed
    pick = search.choose(trials)[("S-CNN", 10)]
    # a choice bounded by a diverged trial or an edge is named at the end, never passed over
    assert (f"flagged: S-CNN at NPC 10: {pick['flag']}" in printed) == ("flag" in pick)


def test_a_dry_run_prints_the_plan_and_trains_nothing(smoke_search, tmp_path, monkeypatch,
                                                      capsys):
    root, out = smoke_search
    monkeypatch.setattr(converged_search, "pretrain", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(search, "finetune", lambda *a, **k: pytest.fail("trained"))
    fresh = tmp_path / "plan.json"
    converged_search.main(["--profile", "smoke", "--methods", "S-CNN", "S-ResNet-18",
                           "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
                           "--out", str(fresh), "--dry-run", "--reference", str(out)])
    printed = capsys.readouterr().out
    assert "(new); pretraining" in printed and "(not needed: APL fine-tune is not searched)" \
        in printed
    assert "| S-CNN | 10 | base | 0 | 5-8 | 30-48 |" in printed  # 3 epochs of 2 steps
    assert "| S-ResNet-18 | 10 | longer runs | 0 | 1-4 | 12-180 | ? |" in printed  # no reference
    assert "22-40 runs left" in printed
    assert not fresh.exists() and not (tmp_path / "runs").exists()
    converged_search.main(["--profile", "smoke", "--methods", "S-CNN", "--device", "cpu",
                           "--runs-dir", str(root / "runs"), "--out", str(out), "--dry-run"])
    printed = capsys.readouterr().out
    assert "(exists); pretraining" in printed and "0-0 runs left" in printed
    converged_search.main(["--profile", "smoke", "--device", "cpu", "--runs-dir",
                           str(tmp_path / "runs"), "--out", str(fresh), "--dry-run"])
    assert "(to train first)" in capsys.readouterr().out


def test_a_search_without_apl_trains_no_pretraining(smoke_search):
    root, _ = smoke_search
    assert (root / "runs").is_dir() and not (root / "runs" / "pretrain").exists()


@pytest.mark.parametrize("argv, message", [
    (["--npcs", "7"], "--npcs 7: the 'quick' profile has no max_steps at NPC 7 (it has "
                      "[10, 30, 100]); give --max-steps"),
    (["--npcs", "0", "--max-steps", "10"], "--npcs 0: an NPC is a positive number"),
    (["--workers", "0"], "--workers 0: give 1 or more"),
    (["--max-steps", "0"], "--max-steps 0: give a positive number of steps"),
    (["--profile", "paper"], "the 'paper' profile has no max_steps for a search"),
    (["--methods", "ViT"], "invalid choice: 'ViT'"),
])
def test_the_search_script_refuses_bad_input_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        converged_search.parse_args(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_the_search_scripts_help_gives_every_default(capsys):
    with pytest.raises(SystemExit):
        converged_search.parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for default in ("(default: quick)", "(default: runs/search)", "(default: auto)",
                    "(default: 1)", "(default: the profile's sweep)", "(default: all)",
                    "apl_core/results/<profile>_converged_search.json"):
        assert default in shown, default


# ---------------------------------------------------------------- the seeds' CLI

def test_npc_seeds_give_each_npc_its_own_seeds():
    assert converged_seeds.parse_npc_seeds(["10:0-4", "30:0,1,2"]) == {
        10: [0, 1, 2, 3, 4], 30: [0, 1, 2]}
    assert converged_seeds.parse_npc_seeds(["10:3,0-1,1"]) == {10: [0, 1, 3]}
    for bad in ("10", "ten:0-2", "10:a", "0:1", "10:"):
        with pytest.raises(ValueError, match=f"--npc-seeds '{bad}'"):
            converged_seeds.parse_npc_seeds([bad])


@pytest.mark.parametrize("argv, message", [
    (["--npc-seeds", "10-0"], "--npc-seeds '10-0': write NPC:SEEDS"),
    (["--npc-seeds", "10:0-4", "--npcs", "10"], "--npcs and --npc-seeds both name the NPCs"),
    (["--workers", "0"], "--workers 0: give 1 or more"),
    (["--seeds", "-1"], "--seeds -1: seeds are 0 or more"),
])
def test_the_seeds_script_refuses_bad_input_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        converged_seeds.parse_args(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_the_seeds_script_plans_each_npcs_seeds_at_the_adopted_choice(smoke_search, monkeypatch,
                                                                      capsys):
    root, out = smoke_search
    monkeypatch.setattr(converged_seeds, "pretrain", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(search, "finetune", lambda *a, **k: pytest.fail("trained"))
    seeds_out = root / "in_progress" / "seeds.json"
    converged_seeds.main(["--profile", "smoke", "--methods", "S-CNN", "--device", "cpu",
                          "--runs-dir", str(root / "runs"), "--search", str(out),
                          "--out", str(seeds_out), "--npc-seeds", "10:0-1", "--dry-run"])
    printed = capsys.readouterr().out
    pick = search.choose(json.loads(out.read_text())["trials"])[("S-CNN", 10)]
    for seed in (0, 1):
        assert (f"| {seed} | S-CNN | 10 | {pick['recipe']} | {pick['lr']:g} | "
                f"{pick['adopted']['epochs']} | no |") in printed
        assert f"| {seed} | features | 10 |" in printed
    assert "2 fine-tuning runs left" in printed and not seeds_out.exists()


def test_the_seeds_script_refuses_a_search_that_is_not_finished_or_not_there(
        smoke_search, tmp_path):
    root, out = smoke_search
    trials = json.loads(out.read_text())
    unfinished = tmp_path / "unfinished.json"
    unfinished.write_text(json.dumps({**trials, "trials": [
        t for t in trials["trials"] if search.lengthens(t) is None]}))
    with pytest.raises(SystemExit, match="S-CNN at NPC 10's choice has no 2x run yet"):
        converged_seeds.main(["--profile", "smoke", "--methods", "S-CNN", "--search",
                              str(unfinished), "--dry-run"])
    with pytest.raises(SystemExit, match="no search results in .*nothing.json: run "
                                         "experiments/converged_search.py --profile smoke"):
        converged_seeds.main(["--profile", "smoke", "--search", str(tmp_path / "nothing.json")])
    with pytest.raises(SystemExit, match=r"the search chose nothing at NPC \[30\]: it searched "
                                         r"NPC \[10\]"):
        converged_seeds.main(["--profile", "smoke", "--search", str(out), "--npcs", "30"])


def test_the_seeds_script_stores_each_row_and_a_rerun_trains_none(smoke_search, monkeypatch):
    """Seed 0's chosen run is the search's own (read back, not trained); its row and the
    features' row are written; a second call adds nothing and trains nothing."""
    root, out = smoke_search
    seeds_out = root / "in_progress" / "seeds_rows.json"
    argv = ["--profile", "smoke", "--methods", "S-CNN", "--device", "cpu", "--runs-dir",
            str(root / "runs"), "--search", str(out), "--out", str(seeds_out), "--seeds", "0"]
    trained = []
    real = search.finetune
    monkeypatch.setattr(search, "finetune", lambda config, resume: trained.append(
        config) or real(config, resume=resume))
    converged_seeds.main(argv)
    pick = search.choose(json.loads(out.read_text())["trials"])[("S-CNN", 10)]
    written = json.loads(seeds_out.read_text())
    row, features = written["trials"]
    assert (row["method"], row["seed"], row["lr"], row["recipe"], row["epochs"]) == (
        "S-CNN", 0, pick["lr"], pick["recipe"], pick["adopted"]["epochs"])
    assert row["run"] == pick["adopted"]["run"]  # the search's own run
    assert features["run"] == "features-seed0-npc10"
    assert written["seeds_at"] == {"10": [0]} and written["chosen"]["S-CNN|10"]["lr"] == pick["lr"]
    assert written["protocols"] == {"10": {"recipes": ["base", "small-data"],
                                           "lengths": "paired test"}}  # the search's
    monkeypatch.setattr(search, "finetune", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(converged_seeds, "feature_comparison",
                        lambda *a, **k: pytest.fail("judged again"))
    converged_seeds.main(argv)
    assert json.loads(seeds_out.read_text())["trials"] == written["trials"]


# ---------------------------------------------------------------- the pretext study's CLI

import functools  # noqa: E402

from apl_core import pretext_study  # noqa: E402
import pretext_study as pretext_study_script  # noqa: E402


@pytest.fixture(scope="module")
def smoke_pretext_study(tmp_path_factory):
    """APL and MP3 at seed 0 through the script on the smoke profile, in this process, each
    bracket cut to three trials: its runs folder and results file."""
    root = tmp_path_factory.mktemp("pretext")
    patch = pytest.MonkeyPatch()
    patch.setattr(pretext_study.comparison, "worker_pool", concurrent.futures.ThreadPoolExecutor)
    patch.setattr(pretext_study, "search_method",
                  functools.partial(search.search_method, trials=3, extra=0))
    out = root / "study.json"
    pretext_study_script.main(["--profile", "smoke", "--seeds", "0", "--tasks", "apl", "mp3",
                               "--device", "cpu", "--runs-dir", str(root / "runs"),
                               "--out", str(out)])
    patch.undo()
    return root, out


def test_the_pretext_study_writes_every_row_and_a_rerun_trains_none(smoke_pretext_study,
                                                                    monkeypatch, capsys):
    root, out = smoke_pretext_study
    written = json.loads(out.read_text())
    assert written["command"].startswith("python experiments/pretext_study.py --profile smoke")
    assert written["protocol"] == pretext_study.PROTOCOL
    rows = written["trials"]
    features = {row["task"]: row for row in rows if row["kind"] == "features"}
    assert set(features) == {"apl", "mp3"}
    for row in features.values():
        assert set(row["features"]) == {"10"} and row["seconds_per_epoch"] > 0
        assert [point["epoch"] for point in row["pretext_curve"]] == [1, 2, 3]
        assert [point["epoch"] for point in row["budget_curve"]] == [1, 2, 3]
    trials = [row for row in rows if row["kind"] == "trial"]
    assert sorted(row["finetune"] for row in trials) == ["apl"] * 3 + ["mp3"] * 3 + [
        "mp3 + positions"] * 3
    scored = {row["finetune"]: row for row in rows if row["kind"] == "test"}
    assert set(scored) == {"apl", "mp3", "mp3 + positions"}
    assert all(row["lr"] == pretext_study.chosen_rate(rows, name) for name, row in scored.items())
    # one seed shows no difference: its seeds' half-width is unbounded
    paired = pretext_study.paired_table(written)
    assert {(row["task"], row["measure"]) for row in paired} == {
        ("mp3", "probe NPC 10"), ("mp3", "kNN NPC 10"), ("mp3", "fine-tune NPC 10"),
        ("mp3 + positions", "fine-tune NPC 10")}
    assert {(row["detectable (points)"], row["verdict"]) for row in paired} == {
        ("inf", "no detectable difference")}
    monkeypatch.setattr(pretext_study, "pretrain", lambda *a, **k: pytest.fail("pretrained"))
    monkeypatch.setattr(pretext_study, "finetune", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(pretext_study.comparison, "worker_pool",
                        concurrent.futures.ThreadPoolExecutor)
    monkeypatch.setattr(pretext_study, "search_method",
                        functools.partial(search.search_method, trials=3, extra=0))
    pretext_study_script.main(["--profile", "smoke", "--seeds", "0", "--tasks", "apl", "mp3",
                               "--device", "cpu", "--runs-dir", str(root / "runs"),
                               "--out", str(out)])
    assert json.loads(out.read_text())["trials"] == rows
    assert "| mp3 + positions | fine-tune NPC 10 | 1 |" in capsys.readouterr().out


def test_the_pretext_studys_dry_run_prints_the_plan_and_trains_nothing(smoke_pretext_study,
                                                                       capsys):
    root, out = smoke_pretext_study
    pretext_study_script.main(["--profile", "smoke", "--seeds", "0", "1", "--tasks", "apl",
                               "mp3", "--runs-dir", str(root / "runs"), "--out", str(out),
                               "--dry-run"])
    printed = capsys.readouterr().out
    assert "(exists)" in printed
    assert "| pretraining + features: mp3 | 0 | 3 | 1024 | yes | yes |" in printed
    assert "| pretraining + features: mp3 | 1 | 3 | 1024 | no | no |" in printed
    assert "| fine-tuning bracket: mp3 + positions | 0 | 3 | 100 | – | 3 trials |" in printed
    assert "| fine-tuning at the chosen rate: apl | 0 1 | – | – | – | 1/2 seeds |" in printed
    assert not list((root / "runs" / "pretrain").glob("*-s1-*"))


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "mae"], "--tasks: include apl"),
    (["--seeds", "1", "2"], "--seeds: include 0"),
    (["--workers", "0"], "--workers 0: give 1 or more"),
    (["--tasks", "apl", "sudoku"], "invalid choice: 'sudoku'"),
    (["--profile", "paper"], "invalid choice: 'paper'"),
])
def test_the_pretext_study_refuses_bad_input_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        pretext_study_script.parse_args(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_the_pretext_studys_help_gives_every_default(capsys):
    with pytest.raises(SystemExit):
        pretext_study_script.parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for default in ("(default: quick)", "(default: 0 1 2)", "(default: runs/search)",
                    "(default: auto)", "(default: 1)",
                    "apl_core/results/<profile>_pretext_study.json"):
        assert default in shown, default
