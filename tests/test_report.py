"""Notebook 05's report: the pretraining read back from its run, notebook 04's comparison and
features as tables, the converged search's choices with where they sit and what the small-data
recipe changes, the seeds read back with their means, and report.md written with its tables
and figures."""
from __future__ import annotations

import json
import platform
import re

import pytest
import torch

from apl_core import report
from apl_core.report import (
    accuracy_table, feature_table, pretraining_summary, recipe_table, search_table, seed_table,
    write_report,
)
from apl_core.tables import markdown_table
from test_claims import features, seeds_results


def test_accuracy_by_run_keys_each_runs_test_top1_by_method_and_npc():
    rows = [{"method": "APL fine-tune", "npc": 10, "test_top1": 0.3, "train_top1": 0.9},
            {"method": "BENCHMARK", "npc": 10, "test_top1": 0.2, "train_top1": 0.8}]
    assert report.accuracy_by_run(rows) == {("APL fine-tune", 10): 0.3, ("BENCHMARK", 10): 0.2}


def fake_run(path, config, metrics):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return path


def test_pretraining_summary_reads_the_last_epoch_of_the_run(tmp_path):
    config = {"dataset": "synthetic", "image_size": 48, "grid": 4, "crop": 1, "num_images": 0,
              "device": "cpu"}
    metrics = [{"epoch": 1, "epoch_time_s": 30.0, "val_top1": 0.4, "val_top5": 0.8},
               {"epoch": 2, "epoch_time_s": 60.0, "val_top1": 0.5, "val_top5": 0.85},
               {"epoch": 3, "epoch_time_s": 90.0, "val_top1": 0.6, "val_top5": 0.9}]
    run = fake_run(tmp_path / "run", config, metrics)
    for where in (run, run / "last.pt"):
        summary = pretraining_summary(where)
        assert summary["run_dir"] == str(run) and summary["metrics"] == metrics
        assert summary["config"] == config
        assert summary["positions"] == 16 and summary["chance"] == 1 / 16
        assert summary["minutes"] == 3.0
        assert summary["row"] == {"dataset": "synthetic", "image px": 48, "G": 4, "K": 1, "T": 16,
                                  "epochs": 3, "train images": "all", "held-out top-1": 0.6,
                                  "held-out top-5": 0.9, "chance": 1 / 16, "minutes": 3.0}


def test_accuracy_table_has_one_row_per_method_and_test_and_train_per_npc():
    rows = [{"method": m, "npc": n, "test_top1": acc, "train_top1": train}
            for m, n, acc, train in [("APL", 10, 0.25, 0.9), ("APL", 30, 0.5, 0.8),
                                     ("BENCH", 10, 0.125, 0.126), ("BENCH", 100, 0.2, 0.3)]]
    lines = markdown_table(accuracy_table(rows)).splitlines()
    assert lines[0] == ("| method | NPC 10: test (train) | NPC 30: test (train) "
                        "| NPC 100: test (train) |")
    assert lines[2:] == ["| APL | 25.0 (90) | 50.0 (80) | – |",
                         "| BENCH | 12.5 (13) | – | 20.0 (30) |"]


def mask(*images, of=10) -> str:
    return f"{sum(1 << i for i in images):x}"


def search_trials():
    """APL: 3 rates, the middle one best, the highest diverged, and a small-data recipe that
    scores less; CNN: best at its highest rate, and its 2x run, which gets 6 more of 10
    validation images right (adopted), and its 4x run, none more (the 2x run kept)."""
    rows = [dict(method=m, npc=n, lr=lr, epochs=10, best_epoch=e, val_top1=v, train_top1=0.9,
                 run=f"{m}-{lr}{'-sd' if recipe == 'small-data' else ''}", recipe=recipe,
                 val_correct=mask(0, 1, 2), val_images=10, **extra)
            for m, n, lr, e, v, recipe, extra in [
                ("APL", 10, 1e-4, 5, 0.60, "base", {}), ("APL", 10, 3e-4, 5, 0.71, "base", {}),
                ("APL", 10, 1e-3, 5, 0.1, "base", {"diverged": "non-finite loss"}),
                ("APL", 10, 3e-4, 5, 0.64, "small-data", {}),
                ("CNN", 30, 1e-3, 9, 0.55, "base", {}), ("CNN", 30, 3e-3, 10, 0.58, "base", {})]]
    for multiple, right in ((2, range(9)), (4, range(9))):
        rows.append(dict(method="CNN", npc=30, lr=3e-3, epochs=10 * multiple,
                         best_epoch=6 * multiple, val_top1=0.9, train_top1=0.95,
                         run=f"CNN-x{multiple}", longer_of="CNN-0.003", multiple=multiple,
                         val_correct=mask(*right), val_images=10))
    return rows


def test_search_table_shows_where_each_choice_sits_and_its_longer_runs():
    assert search_table(search_trials()[::-1], val_images=10) == [
        {"method": "APL", "NPC": 10, "val top-1: base / small-data": "71.0 / 64.0",
         "chosen": "base", "lr": "0.0003", "position": "interior of 0.0001 .. 0.001 (3 trials)",
         "bounded by": "a diverged trial (flagged)", "best epoch": "5/10", "val top-1": "71.0",
         "train top-1": "90", "longer runs": "2x not run yet"},
        {"method": "CNN", "NPC": 30, "val top-1: base / small-data": "58.0 / not searched",
         "chosen": "base", "lr": "0.003", "position": "highest of 0.001 .. 0.003 (2 trials)",
         "bounded by": "the edge of the rates (flagged)", "best epoch": "10/10",
         "val top-1": "58.0", "train top-1": "90",
         "longer runs": "2x: 12/20, 90.0 (+6/-0 of 10 images, p 0.016); 4x: 24/40, 90.0 "
                        "(+0/-0 of 10 images, p 1); 2x adopted"}]
    in_file_order = [dict(method=m, npc=n, lr=1e-3, epochs=10, best_epoch=5, val_top1=0.5,
                          train_top1=0.9, run=f"{m}-{n}")
                     for m, n in [("APL fine-tune", 30), ("S-CNN", 10), ("BENCHMARK", 10)]]
    assert [(row["method"], row["NPC"]) for row in search_table(in_file_order, 500)] == [
        ("BENCHMARK", 10), ("S-CNN", 10), ("APL fine-tune", 30)]  # by NPC, then METHODS


def test_search_table_says_when_a_recipe_diverged_at_every_rate():
    rows = [dict(method="BENCHMARK", npc=10, lr=lr, epochs=10, best_epoch=5, val_top1=v,
                 train_top1=0.9, run=f"{recipe}-{lr}", recipe=recipe, **extra)
            for lr, v, recipe, extra in [
                (1e-4, 0.2, "base", {}), (1e-3, 0.3, "base", {}), (1e-2, 0.2, "base", {}),
                (1e-4, 0.11, "small-data", {"diverged": "learned nothing"}),
                (1e-3, 0.12, "small-data", {"diverged": "learned nothing"})]]
    row, = search_table(rows[::-1], val_images=500)
    assert row["val top-1: base / small-data"] == "30.0 / 12.0 (all diverged)"
    assert row["chosen"] == "base" and row["position"].startswith("interior")
    assert row["bounded by"] == "finite trials"
    only = [dict(r, recipe="small-data") for r in rows[3:]]
    assert search_table(only, val_images=500)[0]["bounded by"] == "every trial diverged (flagged)"


def test_the_longer_runs_cell_says_what_each_run_showed_and_what_was_adopted():
    pick = {"longer": [], "adopted": {"multiple": 1}, "convergence": "pending", "next": 4}
    assert report.longer_runs_cell(pick, 500) == "4x not run yet"
    untested = {"longer": [dict(multiple=2, epochs=200, best_epoch=130, val_top1=0.368,
                                run="d", better=None)],
                "adopted": {"multiple": 1}, "convergence": "untested", "next": None}
    assert report.longer_runs_cell(untested, 500) == (
        "2x: 130/200, 36.8; no per-image record: untested")
    diverged = {"longer": [dict(multiple=2, epochs=20, best_epoch=3, val_top1=0.1, run="d",
                                better=False, diverged="non-finite loss")],
                "adopted": {"multiple": 1}, "convergence": "shown", "next": None}
    assert report.longer_runs_cell(diverged, 500) == (
        "2x: 3/20, 10.0 (diverged: non-finite loss); 1x adopted")
    capped = {"longer": [dict(multiple=16, epochs=160, best_epoch=160, val_top1=0.5, run="e",
                              wins=30, losses=3, p=1.2e-6, better=True)],
              "adopted": {"multiple": 16}, "convergence": "still improving at the cap",
              "next": None}
    assert report.longer_runs_cell(capped, 500) == (
        "16x: 160/160, 50.0 (+30/-3 of 500 images, p 1.2e-06); still improving at 16x")


def test_feature_table_gives_knn_and_probe_per_npc():
    table = markdown_table(feature_table(features(0.35, 0.1, 0.4, 0.125, npc=30)
                                         + features(0.5, 0.2, npc=10)))
    assert table.splitlines()[0] == "| features | NPC 10: kNN / probe | NPC 30: kNN / probe |"
    assert table.splitlines()[2:] == ["| APL-pretrained features | 50.0 / 40.0 | 35.0 / 40.0 |",
                                      "| random-init features | 20.0 / 10.0 | 10.0 / 12.5 |"]


def test_seed_table_gives_mean_and_spread_over_the_seeds():
    table = markdown_table(seed_table(seeds_results()))
    assert table.splitlines()[0] == "| method | NPC 10 | NPC 100 |"
    assert "| APL fine-tune | 40.0 ± 6.2 | 40.0 ± 6.2 |" in table
    assert "| BENCHMARK | 30.0 ± 0.0 | 30.0 ± 0.0 |" in table
    assert "| kNN, random-init features | 11.0 ± 1.0 | 11.0 ± 1.0 |" in table
    assert "| APL fine-tune | 45.0 | 45.0 |" in markdown_table(seed_table(seeds_results((0.15,))))


def test_a_seed_that_lacks_a_run_is_counted_in_the_seed_table():
    seeds = seeds_results()
    seeds["trials"] = [r for r in seeds["trials"]
                       if (r.get("method"), r["npc"], r["seed"]) != ("BENCHMARK", 10, 2)]
    assert "| BENCHMARK | 30.0 ± 0.0 (2) | 30.0 ± 0.0 |" in markdown_table(seed_table(seeds))


def test_seed_table_has_a_column_for_every_npc_and_methods_in_their_order():
    """Methods in the file's order S-CNN, BENCHMARK, ALEXNET (not one of METHODS: last); a
    BENCHMARK run at NPC 30 of one seed alone; the features at NPC 100 only."""
    def run(method, npc, seed, test_top1):
        return {"method": method, "npc": npc, "seed": seed, "test_top1": test_top1,
                "test_images": 1000, "run": f"{method}-{npc}-{seed}"}

    trials = [run("S-CNN", 10, 0, 0.2), run("S-CNN", 10, 1, 0.3),
              run("BENCHMARK", 10, 0, 0.3), run("BENCHMARK", 10, 1, 0.3),
              run("BENCHMARK", 30, 0, 0.4),
              run("ALEXNET", 10, 0, 0.1), run("ALEXNET", 10, 1, 0.2)]
    trials += [{"run": f"features-{seed}", "seed": seed, "npc": 100,
                "features": features(0.3, 0.1 + 0.01 * seed)[0]["features"]}
               for seed in (0, 1)]
    lines = markdown_table(seed_table({"trials": trials})).splitlines()
    assert lines[0] == "| method | NPC 10 | NPC 30 | NPC 100 |"
    assert lines[2:] == [
        "| BENCHMARK | 30.0 ± 0.0 | 40.0 (1) | – |", "| S-CNN | 25.0 ± 7.1 | – | – |",
        "| ALEXNET | 15.0 ± 7.1 | – | – |",
        "| linear probe, APL-pretrained features | – | – | 40.0 ± 0.0 |",
        "| linear probe, random-init features | – | – | 10.0 ± 0.0 |",
        "| kNN, APL-pretrained features | – | – | 30.0 ± 0.0 |",
        "| kNN, random-init features | – | – | 10.5 ± 0.7 |"]


def test_write_report_holds_every_table_and_only_the_figures_that_exist(tmp_path):
    pre = {"row": {"dataset": "synthetic", "held-out top-1": 0.75, "chance": 0.0625,
                   "minutes": 4.0}}
    rows = [{"method": "APL fine-tune", "npc": 10, "test_top1": 0.3, "train_top1": 0.5}]
    checks = [{"statement": "the puzzle is learned", "holds": "yes", "measured": "75%"}]
    (tmp_path / "confusion.png").write_bytes(b"png")
    search = {"profile": "quick", "command": "python experiments/converged_search.py",
              "protocol": {"small_data": {}, "alpha": 0.05}, "trials": search_trials()}
    path = write_report(tmp_path, "profile **quick**, device **cpu**", pre, rows,
                        features(0.3, 0.1), checks, search=search, seeds=seeds_results())
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert text.startswith("# APL reproduction report\n\nprofile **quick**, device **cpu**")
    for expected in ("| synthetic | 75.0% | 6.2% | 4.0 |", "| APL fine-tune | 30.0 (50) |",
                     "NPC 10 / 30: base and small-data recipes, lengths by the paired test.",
                     "| APL | 10 | 71.0 / 64.0 | base | 0.0003 | interior of 0.0001 .. 0.001 "
                     "(3 trials) | a diverged trial (flagged) | 5/10 |",
                     "(+6/-0 of 500 images, p 0.016)",  # the quick profile's validation set
                     "| method | NPC | val top-1: base / small-data | small-data - base (val) "
                     "| adopted | test now |",
                     "| APL | 10 | 71.0 / 64.0 | -7.0 (+0/-0 of 10 images, p 1) | base | – |",
                     "| BENCHMARK | 30.0 ± 0.0 | 30.0 ± 0.0 |",
                     "| APL fine-tune - BENCHMARK | 10 | +15.0 (seed 0), +12.0 (seed 1), ",
                     "| APL-pretrained features | 30.0 / 40.0 |",
                     "| the puzzle is learned | yes | 75% |", "![Position confusion (held-out)]"
                     "(confusion.png)"):
        assert expected in text, expected
    assert "accuracy_vs_npc.png" not in text
    assert [line for line in text.splitlines() if line.startswith("#")] == [
        "# APL reproduction report",
        "## Pretraining (APL puzzle, held-out images)",
        "## Fine-tuning: test top-1 (%) at the chosen epoch, training top-1 in brackets",
        "## Frozen features: kNN / linear probe test top-1 (%)",
        "## Where each choice of the converged search sits (quick profile, "
        "`python experiments/converged_search.py`)",
        "## What the small-data recipe changes",
        "## Over the seeds that draw their own labels (quick profile, "
        "`python experiments/converged_seeds.py`)",
        "## The claim, checked",
        "## Figures",
        "### Position confusion (held-out)"]
    assert text.endswith("![Position confusion (held-out)](confusion.png)\n")


def test_a_search_that_records_no_protocol_has_no_protocol_line_in_the_report(tmp_path):
    search = {"profile": "quick", "command": "python experiments/converged_search.py",
              "trials": search_trials()}
    text = write_report(tmp_path, "profile **quick**", {"row": {"dataset": "synthetic"}}, [],
                        [], [], search=search).read_text()
    assert ("## Where each choice of the converged search sits (quick profile, "
            "`python experiments/converged_search.py`)\n\n| method | NPC |") in text


def test_the_figures_of_other_notebooks_are_copied_and_shown_in_the_report(tmp_path):
    figures, report_dir = tmp_path / "figures", tmp_path / "report"
    figures.mkdir()
    report_dir.mkdir()
    for name in ("03_confusion", "03_attention", "04_features"):
        (figures / f"{name}.png").write_bytes(name.encode())
    copies = report.copy_notebook_figures(figures, report_dir)
    assert copies == [report_dir / "confusion.png", report_dir / "attention.png"]
    assert (report_dir / "attention.png").read_bytes() == b"03_attention"
    pre = {"row": {"dataset": "synthetic"}}
    text = write_report(report_dir, "profile **quick**", pre, [], [], []).read_text()
    assert "![Attention of one query patch](attention.png)" in text
    assert "puzzle_photo.png" not in text


def test_load_seeds_reads_the_committed_experiment(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    (tmp_path / "quick_converged_seeds.json").write_text(json.dumps(seeds_results()))
    assert report.load_seeds("quick") == seeds_results()


def test_load_seeds_reads_a_studys_own_file_where_given(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path / "results")
    study = tmp_path / "study_seeds.json"
    study.write_text(json.dumps(seeds_results((0.2,))))
    assert report.load_seeds("quick") is None
    assert report.load_seeds("quick", study) == seeds_results((0.2,))


@pytest.mark.parametrize("text, lacks", [
    ("{cut", "valid JSON"), (json.dumps({"profile": "quick"}), "['command', 'trials']"),
    ("[1, 2]", "a JSON object")])
def test_a_damaged_seeds_file_names_itself_what_it_lacks_and_the_fix(tmp_path, monkeypatch,
                                                                    text, lacks):
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    assert report.load_seeds("quick") is None
    (tmp_path / "quick_converged_seeds.json").write_text(text)
    with pytest.raises(ValueError, match=f"quick_converged_seeds.json is not a seeds results "
                                         f"file \\(it lacks {re.escape(lacks)}.*git checkout"
                                         f".*converged_seeds.py --profile quick"):
        report.load_seeds("quick")


def test_rows_of_seed_give_one_seed_as_notebook_04_measures_it():
    seeds = seeds_results()
    in_reverse = {**seeds, "trials": seeds["trials"][::-1]}
    tests, feature_rows = report.rows_of_seed(in_reverse, 1)
    assert [(r["method"], r["npc"]) for r in tests] == [
        (method, npc) for npc in (10, 100) for method in report.METHODS]
    assert {r["seed"] for r in tests} == {1}
    assert feature_rows == [r for r in seeds["trials"] if "features" in r and r["seed"] == 1]
    assert report.rows_of_seed(None, 0) == ([], [])


def test_a_seeds_file_with_a_stale_run_is_refused_where_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    seeds = seeds_results()
    seeds["trials"].append({"method": "S-CNN", "npc": 100, "seed": 1, "test_top1": 0.9,
                            "run": "S-CNN-100-1-shorter"})
    (tmp_path / "quick_converged_seeds.json").write_text(json.dumps(seeds))
    with pytest.raises(ValueError, match=r"two S-CNN runs at NPC 100 for seed 1 \(S-CNN-100-1 "
                                         r"and S-CNN-100-1-shorter\).*converged_seeds.py again"):
        report.load_seeds("quick")
    seeds["trials"][-1]["seed"] = 3  # another seed of the same method and NPC is no stale run
    (tmp_path / "quick_converged_seeds.json").write_text(json.dumps(seeds))
    assert report.load_seeds("quick") == seeds


def test_puzzle_scores_set_training_and_held_out_against_a_uniform_guess():
    last = {"train_loss": 1.0, "train_top1": 0.5, "train_top3": 0.8, "train_top5": 0.9,
            "val_loss": 1.2, "val_top1": 0.4, "val_top3": 0.6, "val_top5": 0.7}
    assert report.puzzle_scores(last, 16) == [
        {"": "training images", "loss": 1.0, "top-1": 0.5, "top-3": 0.8, "top-5": 0.9},
        {"": "held-out images", "loss": 1.2, "top-1": 0.4, "top-3": 0.6, "top-5": 0.7},
        {"": "chance (uniform)", "loss": pytest.approx(2.7726, abs=1e-4), "top-1": 0.0625,
         "top-3": 0.1875, "top-5": 0.3125}]
    without_held_out = {key: value for key, value in last.items() if key.startswith("train")}
    assert report.puzzle_scores(without_held_out, 16)[1] == {
        "": "held-out images", "loss": None, "top-1": None, "top-3": None, "top-5": None}


def test_pretraining_record_says_where_the_run_is_and_what_it_reached(pretrained_run,
                                                                       monkeypatch):
    monkeypatch.setattr(platform, "processor", lambda: "Xeon")
    last = pretrained_run.metrics[-1]
    record = report.pretraining_record(pretrained_run, "smoke", "cpu")
    assert record == {
        "profile": "smoke", "run_dir": str(pretrained_run.run_dir.resolve()),
        "checkpoint": str(pretrained_run.checkpoint.resolve()), "epochs": 4, "tokens": 16,
        "chance": 1 / 16, "train_top1": last["train_top1"], "val_top1": last["val_top1"],
        "val_top5": last["val_top5"], "val_loss": last["val_loss"],
        "train_time_s": sum(m["epoch_time_s"] for m in pretrained_run.metrics),
        "images_per_s": last["images_per_s"], "device": "cpu", "torch": torch.__version__,
        "machine": "Xeon", "cpu_threads": torch.get_num_threads(), "gpu": None,
        "config": pretrained_run.config.to_dict()}
    assert None not in (last["val_top5"], last["val_loss"])
    json.dumps(record)  # written as the notebook's JSON


def test_pretraining_record_names_the_gpu_and_the_machine_type_without_a_processor_name(
        pretrained_run, monkeypatch):
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU {index}")
    record = report.pretraining_record(pretrained_run, "smoke", torch.device("cuda"))
    assert (record["device"], record["gpu"], record["machine"]) == ("cuda", "GPU 0", "x86_64")


def test_run_line_prints_one_finished_run_in_aligned_columns():
    rows = [dict(npc=10, method="BENCHMARK", lr=3e-4, best_epoch=7, epochs=50, val_top1=0.4567,
                 test_top1=0.4321, seconds=12.6),
            dict(npc=1000, method="APL fine-tune", lr=0.01, best_epoch=120, epochs=200,
                 val_top1=0.9, test_top1=0.875, seconds=3601)]
    assert [report.run_line(row) for row in rows] == [
        "NPC   10  BENCHMARK              lr 0.0003   best epoch   7/50   val top-1  45.7%  "
        "test top-1  43.2%  (13 s)",
        "NPC 1000  APL fine-tune          lr 0.01     best epoch 120/200  val top-1  90.0%  "
        "test top-1  87.5%  (3601 s)"]


def test_live_runs_are_set_beside_the_committed_run_of_the_same_method_and_npc():
    def run(method, npc, best_epoch, test_top1):
        return {"method": method, "npc": npc, "best_epoch": best_epoch, "test_top1": test_top1,
                "lr": 1e-3}

    live = [run("BENCHMARK", 10, 7, 0.432), run("BENCHMARK", 30, 9, 0.5),
            run("S-CNN", 10, 4, 0.25), run("S-CNN", 100, 3, 0.6)]
    committed = [run("S-CNN", 30, 4, 0.25), run("S-CNN", 10, 5, 0.25),
                 run("BENCHMARK", 30, 9, 0.52), run("BENCHMARK", 10, 7, 0.432)]
    assert report.live_against_committed(live, committed) == [
        {"method": "BENCHMARK", "NPC": 10, "live: epoch, test": "7, 43.2",
         "committed: epoch, test": "7, 43.2", "same": "yes"},
        {"method": "BENCHMARK", "NPC": 30, "live: epoch, test": "9, 50.0",
         "committed: epoch, test": "9, 52.0", "same": "no"},
        {"method": "S-CNN", "NPC": 10, "live: epoch, test": "4, 25.0",
         "committed: epoch, test": "5, 25.0", "same": "no"},
        {"method": "S-CNN", "NPC": 100, "live: epoch, test": "3, 60.0",
         "committed: epoch, test": "–", "same": "–"}]
    assert report.live_against_committed([], committed) == []


def test_feature_rows_give_each_measure_and_features_a_curve_over_npc():
    entries = features(0.35, 0.1, 0.4, 0.125, npc=30) + features(0.5, 0.2, npc=10)
    assert report.feature_rows(entries) == [
        {"method": "linear probe, APL-pretrained features", "npc": 10, "test_top1": 0.4},
        {"method": "linear probe, APL-pretrained features", "npc": 30, "test_top1": 0.4},
        {"method": "linear probe, random-init features", "npc": 10, "test_top1": 0.1},
        {"method": "linear probe, random-init features", "npc": 30, "test_top1": 0.125},
        {"method": "kNN, APL-pretrained features", "npc": 10, "test_top1": 0.5},
        {"method": "kNN, APL-pretrained features", "npc": 30, "test_top1": 0.35},
        {"method": "kNN, random-init features", "npc": 10, "test_top1": 0.2},
        {"method": "kNN, random-init features", "npc": 30, "test_top1": 0.1}]


def test_validation_images_count_every_class_of_the_profile():
    assert report.validation_images("smoke") == 20  # 2 per class, 10 classes
    assert report.validation_images("quick") == 500  # 50 per class, 10 classes


def test_sweep_plan_trains_the_smallest_npc_live_where_a_study_is_committed():
    npcs = list(report.profile_npcs("quick"))
    assert report.sweep_plan("quick", None) == (npcs, npcs, list(report.METHODS))
    seeds = seeds_results()
    assert report.sweep_plan("quick", seeds) == (npcs, npcs[:1], list(report.METHODS))
    assert report.sweep_plan("quick", seeds, [30, 100], [], ["S-CNN"]) == ([30, 100], [30],
                                                                          ["S-CNN"])
    assert report.sweep_plan("quick", seeds, [30], [10, 30])[1] == [10, 30]


def test_sweep_plan_names_an_unknown_method_and_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['ViT'\]; choose from .*"
                                         r"'APL fine-tune'"):
        report.sweep_plan("quick", None, methods=["ViT", "S-CNN"])


def test_load_sweep_names_the_missing_file_and_the_notebook_that_writes_it(tmp_path):
    missing = tmp_path / "04_fine_tuning.json"
    with pytest.raises(FileNotFoundError, match=r"04_fine_tuning.json does not exist: run "
                                                r"notebook 04_fine_tuning first .*--profile "
                                                r"smoke\), or pass finetune_results"):
        report.load_sweep(missing, "smoke")
    missing.write_text(json.dumps({"rows": [1]}))
    assert report.load_sweep(str(missing), "smoke") == {"rows": [1]}


def recipe_search():
    """BENCHMARK at NPC 10 searched with both recipes (of 20 validation images, small-data's
    best gets 5 right that base's best gets wrong, none the other way, and its 2x run 8 more:
    adopted), S-CNN at NPC 100 with the base recipe alone, under the earlier protocol."""
    rows = [dict(method="BENCHMARK", npc=10, lr=lr, epochs=10, best_epoch=5, val_top1=v,
                 train_top1=0.9, run=f"{recipe}-{lr}", recipe=recipe, val_correct=right,
                 val_images=20)
            for lr, v, recipe, right in [
                (1e-4, 0.05, "base", mask(0)), (3e-4, 0.15, "base", mask(0, 1, 2)),
                (1e-3, 0.05, "base", mask(1)), (1e-4, 0.05, "small-data", mask(0)),
                (3e-4, 0.4, "small-data", mask(*range(8))),
                (1e-3, 0.05, "small-data", mask(2))]]
    rows.append(dict(rows[4], epochs=20, val_top1=0.8, run="small-data-x2",
                     longer_of="small-data-0.0003", multiple=2, val_correct=mask(*range(16))))
    rows += [dict(method="S-CNN", npc=100, lr=lr, epochs=10, best_epoch=5, val_top1=v,
                  train_top1=0.9, run=f"cnn-{lr}") for lr, v in ((0.01, 0.5), (0.03, 0.6))]
    return {"protocol": {"small_data": {}, "alpha": 0.05},
            "protocols": {"10": {"recipes": ["base", "small-data"], "lengths": "paired test"},
                          "100": {"recipes": ["base"], "lengths": "late check"}},
            "trials": rows}


def test_the_recipe_table_pairs_the_small_data_recipe_with_the_base_one_on_validation():
    found = recipe_search()
    bench, cnn = recipe_table(found)
    assert bench == {"method": "BENCHMARK", "NPC": 10, "val top-1: base / small-data":
                     "15.0 / 40.0", "small-data - base (val)": "+25.0 (+5/-0 of 20 images, "
                     "p 0.062)", "adopted": "small-data, 2x"}
    assert cnn["small-data - base (val)"] == "–"
    assert cnn["val top-1: base / small-data"] == "60.0 / not searched"
    assert report.protocol_line(found) == (
        "NPC 10: base and small-data recipes, lengths by the paired test; NPC 100: base recipe "
        "only, length by the earlier late check (a doubled run never adopted)")


def test_the_recipe_table_gives_the_test_now_and_before_over_the_same_seeds():
    """At NPC 10 a study replaced the seeds' BENCHMARK runs (test 30 %): the small-data choice
    scores 45, 44 and 46 % on the same three seeds."""
    seeds = {"trials": [{"method": "BENCHMARK", "npc": 10, "seed": s, "test_top1": acc,
                         "test_images": 1000, "run": f"now-{s}"}
                        for s, acc in enumerate((0.45, 0.44, 0.46))],
             "replaced_trials": [{"method": "BENCHMARK", "npc": 10, "seed": s, "test_top1": 0.3,
                                  "test_images": 1000, "run": f"before-{s}"} for s in range(3)]}
    bench, cnn = recipe_table(recipe_search(), seeds)
    assert (bench["test now"], bench["test before"]) == ("45.0 ± 1.0 (3 seeds)",
                                                         "30.0 ± 0.0 (3 seeds)")
    assert bench["now - before (paired)"] == "15.0 ± 1.0 over 3 seeds: higher"
    assert cnn["test now"] == "–" and "test before" not in cnn  # nothing replaced there
    seeds["replaced_trials"] = seeds["replaced_trials"][:1]
    assert recipe_table(recipe_search(), seeds)[0]["now - before (paired)"] == (
        "1 seed in common: not tested")


def test_the_recipe_table_orders_its_rows_by_npc_then_methods():
    in_file_order = [dict(method=m, npc=n, lr=1e-3, epochs=10, best_epoch=5, val_top1=0.5,
                          train_top1=0.9, run=f"{m}-{n}")
                     for m, n in [("APL fine-tune", 30), ("S-CNN", 10), ("BENCHMARK", 10)]]
    assert recipe_table({"trials": in_file_order}) == [
        {"method": method, "NPC": npc, "val top-1: base / small-data": "50.0 / not searched",
         "small-data - base (val)": "–", "adopted": "base"}
        for method, npc in [("BENCHMARK", 10), ("S-CNN", 10), ("APL fine-tune", 30)]]


def test_the_recipe_table_gives_the_difference_alone_where_a_recipe_has_no_per_image_record():
    found = recipe_search()
    for trial in found["trials"]:
        if trial["run"] == "small-data-0.0003":
            del trial["val_correct"]
    assert recipe_table(found)[0] == {
        "method": "BENCHMARK", "NPC": 10, "val top-1: base / small-data": "15.0 / 40.0",
        "small-data - base (val)": "+25.0 (no per-image record)", "adopted": "small-data"}


def test_the_recipe_table_pairs_now_and_before_only_over_the_seeds_both_have():
    """BENCHMARK at NPC 10: two seeds now and before; S-CNN at NPC 100: one seed before and
    none run at the search's choice yet."""
    def run(method, npc, seed, test_top1, when):
        return {"method": method, "npc": npc, "seed": seed, "test_top1": test_top1,
                "test_images": 1000, "run": f"{when}-{method}-{seed}"}

    seeds = {"trials": [run("BENCHMARK", 10, 0, 0.45, "now"),
                        run("BENCHMARK", 10, 1, 0.47, "now")],
             "replaced_trials": [run("BENCHMARK", 10, 0, 0.30, "before"),
                                 run("BENCHMARK", 10, 1, 0.31, "before"),
                                 run("S-CNN", 100, 0, 0.6, "before")]}
    assert recipe_table(recipe_search(), seeds) == [
        {"method": "BENCHMARK", "NPC": 10, "val top-1: base / small-data": "15.0 / 40.0",
         "small-data - base (val)": "+25.0 (+5/-0 of 20 images, p 0.062)",
         "adopted": "small-data, 2x", "test now": "46.0 ± 1.4 (2 seeds)",
         "test before": "30.5 ± 0.7 (2 seeds)",
         "now - before (paired)": "15.5 ± 0.7 over 2 seeds: higher"},
        {"method": "S-CNN", "NPC": 100, "val top-1: base / small-data": "60.0 / not searched",
         "small-data - base (val)": "–", "adopted": "base", "test now": "–",
         "test before": "60.0 (1 seed)",
         "now - before (paired)": "0 seeds in common: not tested"}]


def test_notebook_04s_figure_draws_every_committed_seed_beside_its_own():
    sweep = [{"method": "S-CNN", "npc": 10, "test_top1": 0.5, "seed": 0}]
    seeds = seeds_results()
    drawn = report.sweep_over_seeds(sweep, seeds, 0)
    assert drawn[0] is sweep[0]
    assert [(r["method"], r["npc"], r["seed"]) for r in drawn[1:]] == [
        ("S-CNN", 10, 1), ("S-CNN", 10, 2)]  # other seeds, the sweep's methods and NPCs
    assert report.sweep_over_seeds(sweep, None, 0) == sweep
