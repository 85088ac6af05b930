"""Notebook 05's report: the runs' own numbers read back, the method's claim checked against
them, and the report written as markdown.

    pretraining_summary   notebook 02's run: what it trained and what it reached
    finetuning_results    notebook 04's runs: the last evaluation of each (method, NPC)
    claim_checks          each statement of the claim, yes or no, with the measured margin
    search_table          how the search chose each method's settings (apl_core.tuning)
    seed_table, margin_table, seed_checks
                          the comparison over seeds that draw their own labels
                          (benchmarks/claim_seeds.py): means, per-seed paired margins, and the
                          claim checked on the smallest seed's margin
    FIGURES, copy_notebook_figures
                          the report's figures: those notebook 05 draws, and those of other
                          notebooks it copies next to report.md
    write_report          report.md: the provenance line, the tables and the figures

A difference counts only beyond the noise of the test set: the standard error of an accuracy
near p on n images is sqrt(p (1 - p) / n), at most sqrt(0.25 / n), and we ask for twice that, at
least 2 points (`noise_margin`). What pretraining is claimed to buy must be larger still: at
least 5 points (`gain_margin`).
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path
from typing import NamedTuple

from .rundir import last_evaluation, read_metrics
from .tuning import RESULTS_DIR, choose, load_results
from .viz import markdown_table

CHANCE = 0.1  # 10 classes
PAIRS = (
    ("APL fine-tune", "BENCHMARK", "APL fine-tune beats BENCHMARK (same model, random init)"),
    ("APL fine-tune", "BENCHMARK + positions", "APL fine-tune, without positions, beats the "
     "same transformer with positional embeddings from scratch (a ViT)"),
    ("APL linear probe", "BENCHMARK linear probe",
     "a linear probe on APL features beats one on random-init features"),
)


def noise_margin(test_images: int) -> float:
    """Two standard errors of an accuracy measured on `test_images` images, at least 2 points."""
    return max(0.02, 2 * math.sqrt(0.25 / test_images))


def gain_margin(test_images: int) -> float:
    return max(0.05, noise_margin(test_images))


def _points(share: float) -> str:
    """A threshold in points as the check uses it: 5, 3.16, 12.5 (never rounded below it)."""
    return f"{100 * share:.3g}"


def _check(statement: str, holds: bool, detail: str) -> dict:
    return {"statement": statement, "holds": "yes" if holds else "no", "measured": detail}


def claim_checks(accuracy: dict[tuple[str, int], float], knn: dict[str, float],
                 position_top1: float, positions: int, test_images: int) -> list[dict]:
    """One row (statement, holds: yes/no, measured) per statement of the claim.

    accuracy: test top-1 per (method, NPC); knn: {APL features: acc, random features: acc};
    position_top1: held-out position accuracy of pretraining with `positions` positions."""
    chance = 1 / positions
    margin, gain = noise_margin(test_images), gain_margin(test_images)
    npcs = sorted({n for _, n in accuracy})
    methods = list(dict.fromkeys(m for m, _ in accuracy))
    checks = [_check("the puzzle is learned: held-out position accuracy far above chance (> 3x)",
                     position_top1 > 3 * chance,
                     f"{position_top1:.1%} vs chance {chance:.1%} "
                     f"({position_top1 / chance:.1f}x)")]

    def gap(a: str, b: str, n: int) -> float:
        return accuracy.get((a, n), math.nan) - accuracy.get((b, n), math.nan)

    for n in npcs:
        best = max((m for m in methods if (m, n) in accuracy), key=lambda m: accuracy[(m, n)])
        checks.append(_check(f"the classes are learned at all at NPC {n}: the best method beats "
                             f"chance (10%) by more than {_points(margin)} points",
                             accuracy[(best, n)] > CHANCE + margin,
                             f"best: {best}, {accuracy[(best, n)]:.1%}"))
    low = npcs[0]
    for a, b, what in PAIRS:
        if (a, low) in accuracy and (b, low) in accuracy:
            d = gap(a, b, low)
            checks.append(_check(f"with few labels (NPC {low}), {what} by {_points(gain)} "
                                 f"points or more", d >= gain, f"{100 * d:+.1f} points"))
            wins = [n for n in npcs if gap(a, b, n) >= gain]
            margins = ", ".join(f"{100 * gap(a, b, n):+.1f}" for n in npcs)
            checks.append(_check("... and at every NPC of the sweep", wins == npcs,
                                 f"at NPC {wins} of {npcs}; margins {margins} points"))
    cnns = [m for m in ("S-CNN", "S-ResNet-18") if (m, low) in accuracy]
    if cnns and ("APL fine-tune", low) in accuracy:
        best = max(cnns, key=lambda m: accuracy[(m, low)])
        d = gap("APL fine-tune", best, low)
        learned = max(accuracy[(best, low)], accuracy[("APL fine-tune", low)]) > CHANCE + margin
        checks.append(_check(f"competitive with the CNN baselines at NPC {low} (within 5 points "
                             f"of the best, {best}, or better, with something above chance)",
                             d > -0.05 and learned, f"{100 * d:+.1f} points vs {best}"))
    if len(knn) == 2:
        (_, apl), (_, random) = list(knn.items())
        checks.append(_check(f"the features alone carry class information: kNN on APL features "
                             f"beats kNN on random features by {_points(gain)} points or more",
                             apl - random >= gain, f"{apl:.1%} vs {random:.1%}"))
    return checks


PERCENT = {"held-out top-1": ".1%", "held-out top-5": ".1%", "chance": ".1%", "minutes": ".1f"}


def pretraining_summary(run_dir: str | Path) -> dict:
    """Notebook 02's run, read back from its config.json and metrics.jsonl (a path to its
    checkpoint works too): {"run_dir", "config", "metrics", "positions", "chance", "minutes",
    "row": the report's table row}."""
    run_dir = Path(run_dir)
    run_dir = run_dir.parent if run_dir.suffix == ".pt" else run_dir
    config = json.loads((run_dir / "config.json").read_text())
    metrics = read_metrics(run_dir)
    last, positions = metrics[-1], config["grid"] ** 2
    minutes = sum(r["epoch_time_s"] for r in metrics) / 60
    row = {"dataset": config["dataset"], "image px": config["image_size"], "G": config["grid"],
           "K": config["crop"], "T": positions, "epochs": last["epoch"],
           "train images": config["num_images"] or "all",
           "held-out top-1": last.get("val_top1"), "held-out top-5": last.get("val_top5"),
           "chance": 1 / positions, "minutes": minutes}
    return {"run_dir": str(run_dir), "config": config, "metrics": metrics,
            "positions": positions, "chance": 1 / positions, "minutes": minutes, "row": row}


def finetuning_results(sweep_rows: list[dict]) -> list[dict]:
    """Each run of notebook 04's sweep ({"method", "npc", "run_dir"}) with the test top-1 of its
    last evaluation (`rundir.last_evaluation`), the last epoch's training top-1 and its
    training minutes."""
    rows = []
    for entry in sweep_rows:
        metrics = read_metrics(entry["run_dir"])
        rows.append({"method": entry["method"], "npc": entry["npc"],
                     "test_top1": last_evaluation(metrics, entry["run_dir"])["test_top1"],
                     "train_top1": metrics[-1]["train_top1"],
                     "minutes": sum(r["epoch_time_s"] for r in metrics) / 60})
    return rows


def accuracy_by_run(rows: list[dict]) -> dict[tuple[str, int], float]:
    return {(r["method"], r["npc"]): r["test_top1"] for r in rows}


def accuracy_table(rows: list[dict]) -> str:
    """Methods as rows, NPCs as columns: test top-1 (%) and, in brackets, the last epoch's
    training top-1 (augmented), so that under- and over-fitting show."""
    npcs = sorted({r["npc"] for r in rows})
    table = [{"method": m, **{f"NPC {r['npc']}: test (train)":
                              f"{100 * r['test_top1']:.1f} ({100 * r['train_top1']:.0f})"
                              for r in rows if r["method"] == m}}
             for m in dict.fromkeys(r["method"] for r in rows)]
    return markdown_table(table, columns=["method", *(f"NPC {n}: test (train)" for n in npcs)])


def search_table(search: dict) -> str:
    """Per method and NPC, the settings the search chose and their validation top-1, with
    the range over all candidates (how much the choice mattered)."""
    chosen = choose(search["rows"])
    npcs = sorted({r["npc"] for r in search["rows"]})
    table = []
    for method in dict.fromkeys(r["method"] for r in search["rows"]):
        row = {"method": method}
        for npc in npcs:
            runs = [r for r in search["rows"] if (r["method"], r["npc"]) == (method, npc)]
            pick = chosen.get((method, npc))
            if pick:
                best = max(r["val_top1"] for r in runs)
                worst = min(r["val_top1"] for r in runs)
                row[f"NPC {npc}"] = (f"lr {pick['lr']:g}, {pick['epochs']} ep: "
                                     f"{100 * best:.1f} ({100 * worst:.0f}-{100 * best:.0f})")
        table.append(row)
    return markdown_table(table, columns=["method", *(f"NPC {n}" for n in npcs)])


# ---------------------------------------------------------------- seeds

def load_seeds(profile: str) -> dict | None:
    """The committed comparison over seeds of `profile` (benchmarks/claim_seeds.py), or None."""
    return load_results(RESULTS_DIR / f"{profile}_seeds.json", "seeds",
                        {"profile", "npcs", "methods", "seeds"},
                        f"benchmarks/claim_seeds.py --profile {profile}")


def _spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_table(seeds: dict) -> str:
    """Test top-1 (%) per method and NPC: mean ± standard deviation over the seeds."""
    table = []
    for method in seeds["methods"]:
        row = {"method": method}
        for npc in seeds["npcs"]:
            mean, sd = _spread([s["test_top1"][f"{method}|{npc}"] for s in seeds["seeds"]])
            row[f"NPC {npc}"] = f"{100 * mean:.1f} ± {100 * sd:.1f}"
        table.append(row)
    return markdown_table(table, columns=["method", *(f"NPC {n}" for n in seeds["npcs"])])


def seed_margins(seeds: dict) -> list[dict]:
    """Each margin the claim rests on (PAIRS at every NPC, and kNN), per seed, paired: the
    two methods of a seed share its labelled images and pretraining."""
    margins = []
    for a, b, _ in PAIRS:
        for npc in seeds["npcs"]:
            margins.append({"margin": f"{a} - {b}", "npc": npc, "per_seed": [
                s["test_top1"][f"{a}|{npc}"] - s["test_top1"][f"{b}|{npc}"]
                for s in seeds["seeds"]]})
    knn = [list(s["knn"].values()) for s in seeds["seeds"]]
    margins.append({"margin": "kNN: APL - random-init features", "npc": max(seeds["npcs"]),
                    "per_seed": [apl - random for apl, random in knn]})
    return margins


def margin_table(seeds: dict) -> str:
    """Every paired margin (points) per seed, its mean ± sd and the smallest seed's."""
    rows = []
    for m in seed_margins(seeds):
        mean, sd = _spread(m["per_seed"])
        rows.append({"margin (points)": m["margin"], "NPC": m["npc"],
                     "per seed": ", ".join(f"{100 * v:+.1f}" for v in m["per_seed"]),
                     "mean ± sd": f"{100 * mean:+.1f} ± {100 * sd:.1f}",
                     "smallest": f"{100 * min(m['per_seed']):+.1f}"})
    return markdown_table(rows)


def seed_checks(seeds: dict) -> list[dict]:
    """The claim over seeds: a gain holds when the smallest seed's paired margin reaches
    gain_margin at every NPC (not the mean: one bad draw of labels is enough to doubt it)."""
    gain = gain_margin(seeds["seeds"][0]["test_images"])
    n = len(seeds["seeds"])
    checks = []
    by_margin: dict[str, list[dict]] = {}
    for m in seed_margins(seeds):
        by_margin.setdefault(m["margin"], []).append(m)
    for margin, entries in by_margin.items():
        smallest = {e["npc"]: min(e["per_seed"]) for e in entries}
        checks.append(_check(
            f"over {n} seeds that draw their own labels: {margin} >= {_points(gain)} points "
            f"on every seed" + (" at every NPC" if len(entries) > 1 else ""),
            all(v >= gain for v in smallest.values()),
            "smallest seed's margin " + ", ".join(f"{100 * v:+.1f} (NPC {npc})"
                                                  for npc, v in smallest.items())))
    return checks


def knn_table(knn: dict[str, float]) -> str:
    return markdown_table([{"features": k, "kNN top-1": v} for k, v in knn.items()],
                          formats={"kNN top-1": ".1%"})


class ReportFigure(NamedTuple):
    """One figure of report.md: its title, its file in report_dir, and the figure of another
    notebook (output_dir/<source>.png) that is copied to it, or None where notebook 05 draws
    it."""
    title: str
    file: str
    source: str | None


FIGURES = (
    ReportFigure("The puzzle on a photo", "puzzle_photo.png", "01_puzzle_photo"),
    ReportFigure("Pretraining curves", "pretraining_curves.png", None),
    ReportFigure("Position confusion (held-out)", "confusion.png", "03_confusion"),
    ReportFigure("Attention of one query patch", "attention.png", "03_attention"),
    ReportFigure("Puzzles reassembled by the model", "reassembled_puzzles.png",
                 "03_reassembled_puzzles"),
    ReportFigure("Test accuracy vs labelled images per class", "accuracy_vs_npc.png", None),
    ReportFigure("Validation accuracy of every candidate of the search", "search.png", None),
)


def copy_notebook_figures(output_dir: str | Path, report_dir: str | Path) -> list[Path]:
    """Copy the FIGURES that other notebooks drew from output_dir into report_dir, those that
    exist; returns the copies."""
    drawn = [(Path(output_dir) / f"{figure.source}.png", Path(report_dir) / figure.file)
             for figure in FIGURES if figure.source]
    return [Path(shutil.copy(source, copy)) for source, copy in drawn if source.is_file()]


def write_report(report_dir: str | Path, provenance: str, pretraining: dict, rows: list[dict],
                 sweep: dict, checks: list[dict], search: dict | None = None,
                 seeds: dict | None = None) -> Path:
    """report_dir/report.md: the provenance line, the pretraining, fine-tuning, kNN and claim
    tables, the search and the seeds when given (each says where it comes from), and the
    figures of FIGURES that are in report_dir. Returns its path."""
    report_dir = Path(report_dir)
    extra = []
    if search:
        extra += [f"## How each method's settings were chosen ({search['profile']} profile: "
                  f"validation top-1 (%) of the chosen candidate, range over all)",
                  search_table(search)]
    if seeds:
        extra += [f"## Over {len(seeds['seeds'])} seeds that draw their own labels "
                  f"({seeds['profile']} profile, `{seeds['command']}`)", seed_table(seeds),
                  margin_table(seeds)]
    text = "\n\n".join([
        "# APL reproduction report", provenance,
        "## Pretraining (APL puzzle, held-out images)",
        markdown_table([pretraining["row"]], formats=PERCENT),
        "## Fine-tuning: test top-1 (%) at the last epoch, training top-1 in brackets",
        accuracy_table(rows),
        f"## kNN (k = {sweep['knn_k']}) on frozen features, NPC {sweep['knn_npc']}",
        knn_table(sweep["knn"]),
        *extra,
        "## The claim, checked", markdown_table(checks),
        "## Figures", *[f"### {figure.title}\n\n![{figure.title}]({figure.file})"
                        for figure in FIGURES if (report_dir / figure.file).exists()],
    ]) + "\n"
    path = report_dir / "report.md"
    path.write_text(text)
    return path
