"""experiments/adopt_study.py folds a finished study at some NPCs into the committed search and
seeds, saying per NPC which protocol made its rows, and refuses, naming each reason, a study
that is not finished, not at the profile's length, run with other recipes, or whose seeds do
not cover what they replace or what they planned."""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import pytest
import torch

from apl_core import report, search, trial_store
from apl_core.results import REPOSITORY, how_it_ran, recorded_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import adopt_study  # noqa: E402

RATES = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)


def trials(npc: int, epochs: int, best: float) -> list[dict]:
    """A finished search of BENCHMARK at `npc`: five runs of each recipe, the best at rate
    `best` of the base recipe, and its 2x run, which gets no image more right (not adopted)."""
    rows = [dict(method="BENCHMARK", npc=npc, recipe=recipe, lr=lr, epochs=epochs,
                 best_epoch=epochs // 2, val_top1=(0.5 if lr == best else 0.3) - 0.1 * small,
                 train_top1=0.6, val_correct="1", val_images=4,
                 run=f"BENCHMARK-{npc}-{epochs}-{lr}-{recipe}")
            for small, recipe in enumerate(("base", "small-data")) for lr in RATES]
    chosen = f"BENCHMARK-{npc}-{epochs}-{best}-base"
    rows.append(dict(rows[RATES.index(best)], epochs=2 * epochs, run=f"{chosen}-x2",
                     longer_of=chosen, multiple=2))
    return rows


def seed_rows(npc: int, epochs: int, lr: float, seeds=(0, 1)) -> list[dict]:
    rows = []
    for seed in seeds:
        rows.append(dict(method="BENCHMARK", npc=npc, recipe="base", lr=lr, epochs=epochs,
                         seed=seed, test_top1=0.4 + epochs / 1000, test_images=1000,
                         run=f"seed{seed}-{npc}-{epochs}"))
        rows.append({"run": f"features-seed{seed}-npc{npc}", "seed": seed, "npc": npc,
                     "features": {name: {"knn_top1": 0.3, "probe_top1": 0.4}
                                  for name in ("APL-pretrained features",
                                               "random-init features")}})
    return rows


def provenance(command: str) -> dict:
    return {"profile": "quick", "command": command, "machine": "a CPU", "torch": "2.x",
            "date": "2026-12-04"}


@pytest.fixture
def committed(tmp_path, monkeypatch):
    monkeypatch.setattr(trial_store, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    search_file = {**provenance("search"), "workers": 2,  # the earlier protocol's header
                   "protocol": {"trials": 5, "late_fraction": 0.8,
                                "max_steps": {"10": 400, "100": 960}},
                   "trials": trials(10, 100, 1e-4) + trials(100, 30, 3e-3)}
    seeds_file = {**provenance("seeds"), "chosen": {},
                  "trials": seed_rows(10, 100, 1e-4) + seed_rows(100, 30, 3e-3)}
    trial_store.search_path("quick").write_text(json.dumps(search_file))
    report.seeds_path("quick").write_text(json.dumps(seeds_file))
    study = tmp_path / "in_progress"
    study.mkdir()
    (study / "search.json").write_text(json.dumps(
        {**provenance("study search"), "protocol": STUDY_PROTOCOL,
         "trials": trials(100, 120, 3e-4)}))
    (study / "seeds.json").write_text(json.dumps(
        {**provenance("study seeds"), "seeds_at": {"100": [0, 1]},
         "trials": seed_rows(100, 120, 3e-4, seeds=(0,))}))
    return study


# the header converged_search.py writes now: both recipes, lengths by the paired test
STUDY_PROTOCOL = {"max_steps": {"10": 400, "100": 3840}, "recipes": search.RECIPES,
                  "small_data": search.SMALL_DATA, "longest": 8, "alpha": 0.05}


def adopt(study: Path) -> None:
    adopt_study.main(["--profile", "quick", "--npcs", "100", "--search",
                      str(study / "search.json"), "--seeds", str(study / "seeds.json")])


def test_a_study_is_refused_with_every_reason_until_it_can_replace_the_npc(committed,
                                                                          monkeypatch):
    monkeypatch.setattr(search, "max_steps", lambda profile: {10: 400, 100: 960})
    with pytest.raises(SystemExit) as refused:
        adopt(committed)
    message = str(refused.value)
    assert "runs at NPC 100 are 3840 steps long and the 'quick' profile's 960" in message
    assert "set its max_steps at NPC 100 to 3840 in apl_core/config.py first" in message
    assert "lack seed 1's BENCHMARK at NPC 100" in message
    assert "lack seed 1's features at NPC 100" in message
    assert (committed / "search.json").exists()  # nothing is written or removed
    assert report.load_seeds("quick")["trials"][-1]["npc"] == 100
    assert trial_store.load_search("quick")["trials"][-1]["epochs"] == 60

    monkeypatch.setattr(search, "max_steps", lambda profile: {10: 400, 100: 3840})
    seeds = json.loads((committed / "seeds.json").read_text())
    seeds["trials"] += seed_rows(100, 120, 1e-3, seeds=(1,))
    (committed / "seeds.json").write_text(json.dumps(seeds))
    with pytest.raises(SystemExit, match=r"seed 1 ran BENCHMARK at NPC 100 with lr 0\.001, the "
                                         r"base recipe and 120 epochs, not at the study's "
                                         r"choice \(0\.0003, base, 120 epochs\)"):
        adopt(committed)
    seeds["trials"] = [dict(row, lr=3e-4, recipe="small-data") if row.get("lr") == 1e-3
                       else row for row in seeds["trials"]]
    (committed / "seeds.json").write_text(json.dumps(seeds))
    with pytest.raises(SystemExit, match=r"with lr 0\.0003, the small-data recipe and 120 "
                                         r"epochs, not at the study's choice"):
        adopt(committed)


def test_a_finished_study_replaces_its_npc_in_the_committed_search_and_seeds(committed,
                                                                           monkeypatch):
    monkeypatch.setattr(search, "max_steps", lambda profile: {10: 400, 100: 3840})
    seeds = json.loads((committed / "seeds.json").read_text())
    seeds["trials"] += seed_rows(100, 120, 3e-4, seeds=(1,))
    (committed / "seeds.json").write_text(json.dumps(seeds))
    adopt(committed)
    found = trial_store.load_search("quick")
    assert {(t["npc"], t["epochs"]) for t in found["trials"]} == {(10, 100), (10, 200),
                                                                   (100, 120), (100, 240)}
    assert found["protocol"]["max_steps"] == {"10": 400, "100": 3840}
    assert found["command"] == "search" and found["studies"][0]["command"] == "study search"
    adopted = report.load_seeds("quick")
    assert sorted((row["seed"], row["npc"], row.get("epochs", 0)) for row in adopted["trials"]) == [
        (0, 10, 0), (0, 10, 100), (0, 100, 0), (0, 100, 120),
        (1, 10, 0), (1, 10, 100), (1, 100, 0), (1, 100, 120)]
    assert adopted["chosen"]["BENCHMARK|100"]["lr"] == 3e-4
    assert adopted["chosen"]["BENCHMARK|10"]["lr"] == 1e-4
    # each file says which protocol made each NPC's rows: NPC 10 kept the earlier one's
    both = {"recipes": ["base", "small-data"], "lengths": "paired test"}
    earlier = {"recipes": ["base"], "lengths": "late check"}
    for results in (found, adopted):
        assert results["protocols"] == {"10": earlier, "100": both}
        assert trial_store.npc_protocols(results) == {10: earlier, 100: both}
    assert trial_store.describe_protocol(earlier) == (
        "base recipe only, length by the earlier late check (a doubled run never adopted)")
    # the seeds rows the study replaced, kept for the paired comparison with the new choice
    assert sorted((row["seed"], row.get("epochs", 0)) for row in adopted["replaced_trials"]) == [
        (0, 0), (0, 30), (1, 0), (1, 30)]
    assert (committed / "search.json").exists() and (committed / "seeds.json").exists()
    # the tables read it: NPC 100's test now and before, on the same two seeds
    at_100 = report.recipe_table(found, adopted)[1]
    assert (at_100["NPC"], at_100["test now"], at_100["test before"]) == (
        100, "52.0 ± 0.0 (2 seeds)", "43.0 ± 0.0 (2 seeds)")
    assert report.protocol_line(found) == (
        "NPC 10: base recipe only, length by the earlier late check (a doubled run never "
        "adopted); NPC 100: base and small-data recipes, lengths by the paired test")


def test_an_unfinished_study_search_is_refused(committed, monkeypatch):
    monkeypatch.setattr(search, "max_steps", lambda profile: {10: 400, 100: 3840})
    study = json.loads((committed / "search.json").read_text())
    study["trials"] = study["trials"][:4]
    (committed / "search.json").write_text(json.dumps(study))
    with pytest.raises(SystemExit, match="BENCHMARK at NPC 100's base search has 4 trials and "
                                         "is not done"):
        adopt(committed)


def test_seeds_that_lack_a_row_of_their_own_plan_are_refused(committed, monkeypatch):
    """The study's seeds planned seeds 0-3 at NPC 100 (its header's seeds_at), more than the
    committed seeds have: the adoption waits for every one of them."""
    monkeypatch.setattr(search, "max_steps", lambda profile: {10: 400, 100: 3840})
    seeds = json.loads((committed / "seeds.json").read_text())
    seeds["seeds_at"] = {"100": [0, 1, 2, 3]}
    seeds["trials"] += seed_rows(100, 120, 3e-4, seeds=(1, 2))
    (committed / "seeds.json").write_text(json.dumps(seeds))
    with pytest.raises(SystemExit) as refused:
        adopt(committed)
    lines = str(refused.value).splitlines()
    assert lines[1:] == ["- the study's seeds lack seed 3's BENCHMARK at NPC 100",
                         "- the study's seeds lack seed 3's features at NPC 100"]


def test_a_study_run_with_other_recipes_than_the_codes_is_refused(committed, monkeypatch):
    monkeypatch.setattr(search, "max_steps", lambda profile: {10: 400, 100: 3840})
    study = json.loads((committed / "search.json").read_text())
    study["protocol"]["small_data"]["cnn"]["label_smoothing"] = 0.2
    (committed / "search.json").write_text(json.dumps(study))
    seeds = json.loads((committed / "seeds.json").read_text())
    seeds["trials"] += seed_rows(100, 120, 3e-4, seeds=(1,))
    (committed / "seeds.json").write_text(json.dumps(seeds))
    with pytest.raises(SystemExit, match=r"the study ran with small_data .*'label_smoothing': "
                                         r"0\.2.* and apl_core/search\.py now has"):
        adopt(committed)


def test_a_recorded_command_runs_from_any_clone():
    inside = REPOSITORY / "apl_core" / "results" / "in_progress" / "search.json"
    assert recorded_command(["python", "experiments/converged_search.py", "--methods",
                             "APL fine-tune", "--out", str(inside), "--runs-dir",
                             "/scratch/runs"]) == (
        "python experiments/converged_search.py --methods 'APL fine-tune' --out "
        "apl_core/results/in_progress/search.json --runs-dir /scratch/runs")


def test_a_study_records_how_it_ran_with_its_workers_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    ran = how_it_ran("experiments/converged_seeds.py", ["--workers", "3"], "cpu", workers=3)
    assert ran["command"] == "python experiments/converged_seeds.py --workers 3"
    assert (ran["workers"], ran["threads_per_run"]) == (3, 2)  # 8 threads shared by 3 runs
    assert ran["date"] == datetime.date.today().isoformat() and ran["torch"] == torch.__version__
    assert {"machine", "precision"} <= set(ran)
    assert how_it_ran("x.py", [], "cpu", workers=16)["threads_per_run"] == 1
    one = how_it_ran("experiments/controls_seeds.py", None, "cpu")
    assert "workers" not in one and "threads_per_run" not in one
    assert one["command"].startswith("python experiments/controls_seeds.py")  # sys.argv's


def test_an_adopted_study_is_listed_with_a_command_that_runs_from_any_clone(committed,
                                                                           monkeypatch):
    monkeypatch.setattr(search, "max_steps", lambda profile: {10: 400, 100: 3840})
    study = json.loads((committed / "search.json").read_text())
    study["command"] = (f"python experiments/converged_search.py --npcs 100 --methods 'APL "
                        f"fine-tune' --out {REPOSITORY}/apl_core/results/in_progress/s.json")
    adopted = trial_store.adopt_study(trial_store.load_search("quick"), study, {100})
    assert adopted["studies"] == [{
        "npcs": [100], "command": "python experiments/converged_search.py --npcs 100 --methods "
        "'APL fine-tune' --out apl_core/results/in_progress/s.json", "machine": "a CPU",
        "torch": "2.x", "date": "2026-12-04"}]
