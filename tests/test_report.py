"""Notebook 05's report: numbers read back from the runs' own files (the last evaluation, not
the best), and the claim checks: a margin counts only beyond the test set's noise and the
5-point bar, at every NPC, and a flat comparison is reported as 'no'."""
from __future__ import annotations

import json
import re

import pytest

from apl_core import report
from apl_core.report import (
    accuracy_table, claim_checks, finetuning_results, gain_margin, margin_table, noise_margin,
    pretraining_summary, search_table, seed_checks, seed_table, write_report,
)


def sweep(apl, benchmark, probe=0.3, random_probe=0.1, npcs=(10, 30, 100)):
    accuracy = {}
    for n in npcs:
        accuracy.update({("APL fine-tune", n): apl, ("BENCHMARK", n): benchmark,
                         ("APL linear probe", n): probe,
                         ("BENCHMARK linear probe", n): random_probe,
                         ("S-CNN", n): 0.2, ("S-ResNet-18", n): 0.25})
    return accuracy


def verdict(checks, words):
    rows = [c for c in checks if all(w in c["statement"] for w in words)]
    assert len(rows) == 1, (words, [c["statement"] for c in checks])
    return rows[0]["holds"]


def test_margins_follow_the_test_set_size():
    assert noise_margin(1000) == pytest.approx(2 * (0.25 / 1000) ** 0.5)  # 3.2 points
    assert noise_margin(100_000) == 0.02  # never below 2 points
    assert gain_margin(1000) == 0.05 and gain_margin(100) == pytest.approx(0.1)


def test_a_clear_gain_holds_and_a_flat_comparison_does_not():
    knn = {"APL": 0.35, "random": 0.1}
    good = claim_checks(sweep(0.30, 0.12), knn, 0.7, 16, 1000)
    assert verdict(good, ["APL fine-tune beats BENCHMARK", "few labels"]) == "yes"
    assert verdict(good, ["linear probe on APL", "few labels"]) == "yes"
    assert verdict(good, ["kNN"]) == "yes"
    assert all(c["holds"] == "yes" for c in good)
    flat = claim_checks(sweep(0.114, 0.115, probe=0.09, random_probe=0.1), {"a": 0.11, "r": 0.1},
                        0.3, 16, 1000)
    assert verdict(flat, ["APL fine-tune beats BENCHMARK", "few labels"]) == "no"
    assert verdict(flat, ["kNN"]) == "no"


def test_a_gain_below_five_points_or_at_one_npc_only_is_not_enough():
    accuracy = sweep(0.30, 0.12)
    accuracy[("APL fine-tune", 100)] = 0.15  # +3 points at NPC 100
    checks = claim_checks(accuracy, {}, 0.7, 16, 1000)
    every = [c for c in checks if c["statement"] == "... and at every NPC of the sweep"]
    assert [c["holds"] for c in every] == ["no", "yes"]
    assert "+3.0" in every[0]["measured"]


def test_the_puzzle_check_compares_with_three_times_chance():
    assert verdict(claim_checks(sweep(0.3, 0.1), {}, 0.19, 16, 1000), ["puzzle"]) == "yes"
    assert verdict(claim_checks(sweep(0.3, 0.1), {}, 0.18, 16, 1000), ["puzzle"]) == "no"


# 64 test images: both margins are 1 / sqrt(64) = 12.5 points,
# exact in binary like every accuracy below, so the margins can sit exactly on the thresholds.
AT_THRESHOLD = {("APL fine-tune", 10): 0.5, ("BENCHMARK", 10): 0.375,
                ("BENCHMARK + positions", 10): 0.4375, ("APL linear probe", 10): 0.25,
                ("BENCHMARK linear probe", 10): 0.125, ("S-CNN", 10): 0.5625,
                ("S-ResNet-18", 10): 0.25, ("APL fine-tune", 30): 0.75, ("BENCHMARK", 30): 0.625,
                ("BENCHMARK linear probe", 30): 0.25}


def test_claim_rows_state_each_threshold_and_a_margin_exactly_at_it_holds():
    checks = claim_checks(AT_THRESHOLD, {"APL features": 0.5, "random features": 0.375},
                          position_top1=3 / 16, positions=16, test_images=64)
    by = "by 12.5 points or more"
    assert checks == [
        {"statement": "the puzzle is learned: held-out position accuracy far above chance (> 3x)",
         "holds": "no", "measured": "18.8% vs chance 6.2% (3.0x)"},
        {"statement": "the classes are learned at all at NPC 10: the best method beats chance "
                      "(10%) by more than 12.5 points", "holds": "yes",
         "measured": "best: S-CNN, 56.2%"},
        {"statement": "the classes are learned at all at NPC 30: the best method beats chance "
                      "(10%) by more than 12.5 points", "holds": "yes",
         "measured": "best: APL fine-tune, 75.0%"},
        {"statement": f"with few labels (NPC 10), APL fine-tune beats BENCHMARK (same model, "
                      f"random init) {by}", "holds": "yes", "measured": "+12.5 points"},
        {"statement": "... and at every NPC of the sweep", "holds": "yes",
         "measured": "at NPC [10, 30] of [10, 30]; margins +12.5, +12.5 points"},
        {"statement": f"with few labels (NPC 10), APL fine-tune, without positions, beats the "
                      f"same transformer with positional embeddings from scratch (a ViT) {by}",
         "holds": "no", "measured": "+6.2 points"},
        # BENCHMARK + positions and the APL linear probe did not run at NPC 30: no margin
        # there, so no win
        {"statement": "... and at every NPC of the sweep", "holds": "no",
         "measured": "at NPC [] of [10, 30]; margins +6.2, +nan points"},
        {"statement": f"with few labels (NPC 10), a linear probe on APL features beats one on "
                      f"random-init features {by}", "holds": "yes", "measured": "+12.5 points"},
        {"statement": "... and at every NPC of the sweep", "holds": "no",
         "measured": "at NPC [10] of [10, 30]; margins +12.5, +nan points"},
        {"statement": "competitive with the CNN baselines at NPC 10 (within 5 points of the best, "
                      "S-CNN, or better, with something above chance)", "holds": "no",
         "measured": "-6.2 points vs S-CNN"},
        {"statement": f"the features alone carry class information: kNN on APL features beats "
                      f"kNN on random features {by}", "holds": "yes", "measured": "50.0% vs 37.5%"},
    ]


def test_accuracy_by_run_keys_each_runs_test_top1_by_method_and_npc():
    rows = [{"method": "APL fine-tune", "npc": 10, "test_top1": 0.3, "train_top1": 0.9},
            {"method": "BENCHMARK", "npc": 10, "test_top1": 0.2, "train_top1": 0.8}]
    assert report.accuracy_by_run(rows) == {("APL fine-tune", 10): 0.3, ("BENCHMARK", 10): 0.2}


COMPETITIVE = ("competitive with the CNN baselines at NPC 10 (within 5 points of the best, {}, "
               "or better, with something above chance)")
LEARNED = ("the classes are learned at all at NPC 10: the best method beats chance (10%) by more "
           "than 3.16 points")
AT_CHANCE_MARGIN = report.CHANCE + noise_margin(1000)  # 13.2%: not above it


@pytest.mark.parametrize("apl, cnn, resnet, expected", [
    (0.12, 0.11, 0.16, [(LEARNED, "yes", "best: S-ResNet-18, 16.0%"),
                        (COMPETITIVE.format("S-ResNet-18"), "yes", "-4.0 points vs S-ResNet-18")]),
    # 0.11 - 0.16 is exactly -0.05 in floating point: 5 points behind is not within 5 points
    (0.11, 0.12, 0.16, [(LEARNED, "yes", "best: S-ResNet-18, 16.0%"),
                        (COMPETITIVE.format("S-ResNet-18"), "no", "-5.0 points vs S-ResNet-18")]),
    (AT_CHANCE_MARGIN, 0.12, 0.11, [(LEARNED, "no", "best: APL fine-tune, 13.2%"),
                                    (COMPETITIVE.format("S-CNN"), "no", "+1.2 points vs S-CNN")]),
    (0.3, None, None, [(LEARNED, "yes", "best: APL fine-tune, 30.0%")]),
])
def test_apl_is_competitive_within_five_points_of_the_best_cnn_when_something_is_learned(
        apl, cnn, resnet, expected):
    accuracy = {("APL fine-tune", 10): apl}
    accuracy.update({(m, 10): acc for m, acc in [("S-CNN", cnn), ("S-ResNet-18", resnet)] if acc})
    rows = claim_checks(accuracy, {}, 0.7, 16, 1000)[1:]  # after the puzzle's row
    assert [(r["statement"], r["holds"], r["measured"]) for r in rows] == expected


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


def test_finetuning_results_take_the_last_evaluation_not_the_best(tmp_path):
    run = fake_run(tmp_path / "ft", {}, [
        {"epoch": 1, "epoch_time_s": 6.0, "test_top1": 0.5},
        {"epoch": 2, "epoch_time_s": 6.0},
        {"epoch": 3, "epoch_time_s": 6.0, "test_top1": 0.4, "train_top1": 0.9}])
    rows = finetuning_results([{"method": "APL fine-tune", "npc": 10, "run_dir": str(run)}])
    assert rows == [{"method": "APL fine-tune", "npc": 10, "test_top1": 0.4, "train_top1": 0.9,
                     "minutes": 0.3}]
    unfinished = fake_run(tmp_path / "cut", {}, [{"epoch": 1, "epoch_time_s": 6.0}])
    with pytest.raises(ValueError, match=re.escape(f"{unfinished} has no test evaluation")
                       + ".*rerun notebook 04"):
        finetuning_results([{"method": "BENCHMARK", "npc": 10, "run_dir": str(unfinished)}])


def test_accuracy_table_has_one_row_per_method_and_test_and_train_per_npc():
    rows = [{"method": m, "npc": n, "test_top1": acc, "train_top1": train}
            for m, n, acc, train in [("APL", 10, 0.25, 0.9), ("APL", 30, 0.5, 0.8),
                                     ("BENCH", 10, 0.125, 0.126), ("BENCH", 100, 0.2, 0.3)]]
    lines = accuracy_table(rows).splitlines()
    assert lines[0] == ("| method | NPC 10: test (train) | NPC 30: test (train) "
                        "| NPC 100: test (train) |")
    assert lines[2:] == ["| APL | 25.0 (90) | 50.0 (80) | – |",
                         "| BENCH | 12.5 (13) | – | 20.0 (30) |"]


def search_results():
    rows = [dict(method=m, npc=n, lr=lr, epochs=e, val_top1=v)
            for m, n, lr, e, v in [("APL", 10, 1e-4, 50, 0.60), ("APL", 10, 3e-4, 50, 0.71),
                                   ("APL", 10, 1e-4, 150, 0.65), ("CNN", 10, 1e-3, 50, 0.52),
                                   ("CNN", 30, 1e-3, 50, 0.55), ("CNN", 30, 3e-3, 50, 0.58)]]
    return {"profile": "quick", "rows": rows}


def test_search_table_shows_the_choice_and_how_much_it_mattered():
    lines = search_table(search_results()).splitlines()
    assert lines[0] == "| method | NPC 10 | NPC 30 |"
    assert lines[2:] == ["| APL | lr 0.0003, 50 ep: 71.0 (60-71) | – |",
                         "| CNN | lr 0.001, 50 ep: 52.0 (52-52) | lr 0.003, 50 ep: 58.0 (55-58) |"]


def seeds_results(margins=(0.15, 0.12, 0.03)):
    """Three seeds: APL fine-tune ahead of both BENCHMARKs by `margins` at every NPC."""
    seeds = []
    for seed, margin in enumerate(margins):
        test = {}
        for npc in (10, 100):
            test.update({f"APL fine-tune|{npc}": 0.3 + margin, f"BENCHMARK|{npc}": 0.3,
                         f"BENCHMARK + positions|{npc}": 0.3, f"APL linear probe|{npc}": 0.4,
                         f"BENCHMARK linear probe|{npc}": 0.1})
        seeds.append({"seed": seed, "test_top1": test, "test_images": 1000,
                      "knn": {"APL": 0.3, "random": 0.1 + 0.01 * seed}})
    return {"profile": "quick", "command": "python benchmarks/claim_seeds.py", "npcs": [10, 100],
            "methods": ["APL fine-tune", "BENCHMARK", "BENCHMARK + positions",
                        "APL linear probe", "BENCHMARK linear probe"], "seeds": seeds}


def test_seed_tables_give_mean_and_spread_and_every_paired_margin():
    table = seed_table(seeds_results())
    assert "| APL fine-tune | 40.0 ± 6.2 | 40.0 ± 6.2 |" in table
    assert "| BENCHMARK | 30.0 ± 0.0 | 30.0 ± 0.0 |" in table
    margins = margin_table(seeds_results())
    assert ("| APL fine-tune - BENCHMARK | 10 | +15.0, +12.0, +3.0 | +10.0 ± 6.2 | +3.0 |"
            in margins)
    assert margins.splitlines()[0] == "| margin (points) | NPC | per seed | mean ± sd | smallest |"
    assert margins.splitlines()[-1] == ("| kNN: APL - random-init features | 100 "
                                        "| +20.0, +19.0, +18.0 | +19.0 ± 1.0 | +18.0 |")
    assert "| APL fine-tune | 40.0 ± 7.1 |" in seed_table(seeds_results((0.15, 0.05)))


def test_the_claim_over_seeds_rests_on_the_smallest_seed():
    weak = {c["statement"]: c for c in seed_checks(seeds_results((0.15, 0.12, 0.03)))}
    strong = {c["statement"]: c for c in seed_checks(seeds_results((0.15, 0.12, 0.06)))}
    key = ("over 3 seeds that draw their own labels: APL fine-tune - BENCHMARK >= 5 points "
           "on every seed at every NPC")
    assert weak[key]["holds"] == "no" and "+3.0 (NPC 10)" in weak[key]["measured"]
    assert strong[key]["holds"] == "yes"  # the mean is 10 points in both: it does not decide
    assert [c["holds"] for c in strong.values()] == ["yes", "yes", "yes", "yes"]


def one_seed():
    """`--seeds 0`: one seed of 64 test images (margins 12.5 points, exact in binary)."""
    test = {}
    accuracies = {10: (0.5, 0.375, 0.375, 0.25, 0.125), 100: (0.75, 0.625, 0.75, 0.5, 0.25)}
    for npc, (apl, bench, vit, probe, random_probe) in accuracies.items():
        test.update({f"APL fine-tune|{npc}": apl, f"BENCHMARK|{npc}": bench,
                     f"BENCHMARK + positions|{npc}": vit, f"APL linear probe|{npc}": probe,
                     f"BENCHMARK linear probe|{npc}": random_probe})
    return {**seeds_results(), "seeds": [{"seed": 0, "test_top1": test, "test_images": 64,
                                          "knn": {"APL": 0.5, "random": 0.375}}]}


def test_one_seed_has_no_spread_and_a_smallest_margin_exactly_at_the_gain_holds():
    assert "| BENCHMARK | 37.5 ± 0.0 | 62.5 ± 0.0 |" in seed_table(one_seed())
    assert "| kNN: APL - random-init features | 100 | +12.5 | +12.5 ± 0.0 | +12.5 |" in (
        margin_table(one_seed()))
    over = "over 1 seeds that draw their own labels:"
    assert seed_checks(one_seed()) == [
        {"statement": f"{over} APL fine-tune - BENCHMARK >= 12.5 points on every seed at every NPC",
         "holds": "yes", "measured": "smallest seed's margin +12.5 (NPC 10), +12.5 (NPC 100)"},
        {"statement": f"{over} APL fine-tune - BENCHMARK + positions >= 12.5 points on every seed "
                      f"at every NPC",
         "holds": "no", "measured": "smallest seed's margin +12.5 (NPC 10), +0.0 (NPC 100)"},
        {"statement": f"{over} APL linear probe - BENCHMARK linear probe >= 12.5 points on every "
                      f"seed at every NPC",
         "holds": "yes", "measured": "smallest seed's margin +12.5 (NPC 10), +25.0 (NPC 100)"},
        {"statement": f"{over} kNN: APL - random-init features >= 12.5 points on every seed",
         "holds": "yes", "measured": "smallest seed's margin +12.5 (NPC 100)"},
    ]


def test_write_report_holds_every_table_and_only_the_figures_that_exist(tmp_path):
    pre = {"row": {"dataset": "synthetic", "held-out top-1": 0.75, "chance": 0.0625,
                   "minutes": 4.0}}
    rows = [{"method": "APL fine-tune", "npc": 10, "test_top1": 0.3, "train_top1": 0.5}]
    sweep = {"knn_k": 20, "knn_npc": 100, "knn": {"APL features": 0.3, "random features": 0.1}}
    checks = [{"statement": "the puzzle is learned", "holds": "yes", "measured": "75%"}]
    (tmp_path / "confusion.png").write_bytes(b"png")
    path = write_report(tmp_path, "profile **quick**, device **cpu**", pre, rows, sweep, checks,
                        search=search_results(), seeds=seeds_results())
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert text.startswith("# APL reproduction report\n\nprofile **quick**, device **cpu**")
    for expected in ("| synthetic | 75.0% | 6.2% | 4.0 |", "| APL fine-tune | 30.0 (50) |",
                     "| APL | lr 0.0003, 50 ep: 71.0 (60-71) | – |",
                     "| BENCHMARK | 30.0 ± 0.0 | 30.0 ± 0.0 |",
                     "| APL fine-tune - BENCHMARK | 10 | +15.0, +12.0, +3.0 |",
                     "## kNN (k = 20) on frozen features, NPC 100", "| APL features | 30.0% |",
                     "| the puzzle is learned | yes | 75% |", "![Position confusion (held-out)]"
                     "(confusion.png)"):
        assert expected in text, expected
    assert "accuracy_vs_npc.png" not in text
    assert [line for line in text.splitlines() if line.startswith("#")] == [
        "# APL reproduction report",
        "## Pretraining (APL puzzle, held-out images)",
        "## Fine-tuning: test top-1 (%) at the last epoch, training top-1 in brackets",
        "## kNN (k = 20) on frozen features, NPC 100",
        "## How each method's settings were chosen (quick profile: validation top-1 (%) of the "
        "chosen candidate, range over all)",
        "## Over 3 seeds that draw their own labels (quick profile, "
        "`python benchmarks/claim_seeds.py`)",
        "## The claim, checked",
        "## Figures",
        "### Position confusion (held-out)"]
    assert "| features | kNN top-1 |" in text
    assert text.endswith("![Position confusion (held-out)](confusion.png)\n")


def test_the_figures_of_other_notebooks_are_copied_and_shown_in_the_report(tmp_path):
    figures, report_dir = tmp_path / "figures", tmp_path / "report"
    figures.mkdir()
    report_dir.mkdir()
    for name in ("03_confusion", "03_attention", "04_knn"):
        (figures / f"{name}.png").write_bytes(name.encode())
    copies = report.copy_notebook_figures(figures, report_dir)
    assert copies == [report_dir / "confusion.png", report_dir / "attention.png"]
    assert (report_dir / "attention.png").read_bytes() == b"03_attention"
    pre = {"row": {"dataset": "synthetic"}}
    sweep = {"knn_k": 20, "knn_npc": 100, "knn": {}}
    text = write_report(report_dir, "profile **quick**", pre, [], sweep, []).read_text()
    assert "![Attention of one query patch](attention.png)" in text
    assert "puzzle_photo.png" not in text


def test_load_seeds_reads_the_committed_comparison(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    (tmp_path / "quick_seeds.json").write_text(json.dumps(seeds_results()))
    assert report.load_seeds("quick") == seeds_results()


@pytest.mark.parametrize("text, lacks", [
    ("{cut", "valid JSON"), (json.dumps({"profile": "quick"}), "['methods', 'npcs', 'seeds']"),
    ("[1, 2]", "a JSON object")])
def test_a_damaged_seeds_file_names_itself_what_it_lacks_and_the_fix(tmp_path, monkeypatch,
                                                                    text, lacks):
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    assert report.load_seeds("quick") is None
    (tmp_path / "quick_seeds.json").write_text(text)
    with pytest.raises(ValueError, match=f"quick_seeds.json is not a seeds results file "
                                         f"\\(it lacks {re.escape(lacks)}.*git checkout"
                                         f".*claim_seeds.py --profile quick"):
        report.load_seeds("quick")
