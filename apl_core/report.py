"""Notebook 05's report: the runs' own numbers read back as tables, and the report written as
markdown (the claim itself is apl_core.claims').

    pretraining_summary   notebook 02's run: what it trained and what it reached
    accuracy_table        notebook 04's comparison: test top-1 at each run's chosen epoch
    feature_table         the frozen features: kNN and the linear probe, APL against random init
    search_table, recipe_table, protocol_line
                          where the converged search's every choice sits (apl_core.search),
                          what the small-data recipe changes, and which protocol made each NPC
    sweep_plan, load_sweep, sweep_over_seeds
                          notebook 04's NPCs, live NPCs and methods from its parameters, the
                          results it wrote, and its sweep beside every committed seed
    load_seeds, rows_of_seed, seed_table
                          the converged experiment over seeds that draw their own labels
                          (experiments/converged_seeds.py): one seed's rows as notebook 04
                          measures them live, and the means over the seeds
    FIGURES, copy_notebook_figures
                          the report's figures: those notebook 05 draws, and those of other
                          notebooks it copies next to report.md
    write_report          report.md: the provenance line, the tables and the figures
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path
from typing import NamedTuple

from .claims import MEASURES, margin_table, top1_by_seed
from .comparison import FEATURES, METHODS, check_methods
from .config import profile_config, profile_npcs
from .results import RESULTS_DIR, load_results
from .rundir import read_metrics, train_seconds
from .search import LONGEST, RECIPE_NAMES, choose
from .stats import mcnemar_two_sided_p, mean_sd, paired_counts, verdict
from .tables import markdown_table
from .trial_store import describe_protocol, npc_protocols


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
    minutes = train_seconds(metrics) / 60
    row = {"dataset": config["dataset"], "image px": config["image_size"], "G": config["grid"],
           "K": config["crop"], "T": positions, "epochs": last["epoch"],
           "train images": config["num_images"] or "all",
           "held-out top-1": last.get("val_top1"), "held-out top-5": last.get("val_top5"),
           "chance": 1 / positions, "minutes": minutes}
    return {"run_dir": str(run_dir), "config": config, "metrics": metrics,
            "positions": positions, "chance": 1 / positions, "minutes": minutes, "row": row}


def puzzle_scores(last: dict, positions: int) -> list[dict]:
    """The last epoch of a pretraining run against a uniform guess: loss and top-1/3/5 on the
    training images and on the held-out images."""
    chance = 1 / positions
    return [{"": "training images", "loss": last["train_loss"], "top-1": last["train_top1"],
             "top-3": last["train_top3"], "top-5": last["train_top5"]},
            {"": "held-out images", "loss": last.get("val_loss"), "top-1": last.get("val_top1"),
             "top-3": last.get("val_top3"), "top-5": last.get("val_top5")},
            {"": "chance (uniform)", "loss": math.log(positions), "top-1": chance,
             "top-3": 3 * chance, "top-5": 5 * chance}]


SCORE_FORMATS = {"loss": ".3f", "top-1": ".1%", "top-3": ".1%", "top-5": ".1%"}


def pretraining_record(result, profile: str, device) -> dict:
    """What notebook 02 records of its run for the notebooks after it: where the run and its
    checkpoint are, what it reached, how long it took, and on what."""
    import platform

    import torch

    config, last = result.config, result.metrics[-1]
    return {"profile": profile, "run_dir": str(result.run_dir.resolve()),
            "checkpoint": str(result.checkpoint.resolve()), "epochs": last["epoch"],
            "tokens": config.num_tokens, "chance": 1 / config.num_tokens,
            "train_top1": last["train_top1"], "val_top1": last.get("val_top1"),
            "val_top5": last.get("val_top5"), "val_loss": last.get("val_loss"),
            "train_time_s": train_seconds(result.metrics),
            "images_per_s": last["images_per_s"], "device": str(device),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if str(device).startswith("cuda") else None,
            "config": config.to_dict()}


def accuracy_by_run(rows: list[dict]) -> dict[tuple[str, int], float]:
    return {(r["method"], r["npc"]): r["test_top1"] for r in rows}


def accuracy_table(rows: list[dict]) -> list[dict]:
    """Methods as rows, NPCs as columns: test top-1 (%) at the run's chosen epoch and, in
    brackets, that epoch's training top-1 (augmented), so that under- and over-fitting show."""
    npcs = sorted({r["npc"] for r in rows})
    return [{"method": m, **{f"NPC {n}: test (train)": next(
                (f"{100 * r['test_top1']:.1f} ({100 * r['train_top1']:.0f})" for r in rows
                 if (r["method"], r["npc"]) == (m, n)), None) for n in npcs}}
            for m in dict.fromkeys(r["method"] for r in rows)]


def run_line(row: dict) -> str:
    """One finished run of the comparison, as notebook 04 prints it."""
    return (f"NPC {row['npc']:>4}  {row['method']:<22} lr {row['lr']:<8g} best epoch "
            f"{row['best_epoch']:>3}/{row['epochs']:<3}  val top-1 {row['val_top1']:6.1%}  "
            f"test top-1 {row['test_top1']:6.1%}  ({row['seconds']:.0f} s)")


def live_against_committed(live: list[dict], committed: list[dict]) -> list[dict]:
    """Each live run next to the committed run of the same (method, NPC): the chosen epoch
    and test top-1 of both, and whether they are the same."""
    by_run = {(r["method"], r["npc"]): r for r in committed}
    table = []
    for row in live:
        other = by_run.get((row["method"], row["npc"]))
        table.append({"method": row["method"], "NPC": row["npc"],
                      "live: epoch, test": f"{row['best_epoch']}, {100 * row['test_top1']:.1f}",
                      "committed: epoch, test": (f"{other['best_epoch']}, "
                                                 f"{100 * other['test_top1']:.1f}"
                                                 if other else "–"),
                      "same": ("–" if other is None else "yes" if
                               (row["best_epoch"], row["test_top1"]) ==
                               (other["best_epoch"], other["test_top1"]) else "no")})
    return table


def feature_rows(features: list[dict]) -> list[dict]:
    """The feature rows as curves over NPC for viz.npc_figure: one 'method' per measure and
    features, its test top-1 at every NPC."""
    return [{"method": f"{measure}, {name}", "npc": entry["npc"],
             "test_top1": entry["features"][name][key]}
            for key, measure in MEASURES for name in FEATURES
            for entry in sorted(features, key=lambda r: r["npc"])]


def feature_table(features: list[dict]) -> list[dict]:
    """The frozen features per NPC: kNN and linear-probe test top-1 (%), APL against random
    init. features: one row per NPC, {"npc", "features": feature_comparison's result}."""
    table = []
    for name in FEATURES:
        row = {"features": name}
        for entry in sorted(features, key=lambda r: r["npc"]):
            judged = entry["features"][name]
            row[f"NPC {entry['npc']}: kNN / probe"] = (f"{100 * judged['knn_top1']:.1f} / "
                                                       f"{100 * judged['probe_top1']:.1f}")
        table.append(row)
    return table


def validation_images(profile: str) -> int:
    """How many labelled images `profile` holds out for validation."""
    config = profile_config(profile, "finetune")
    return config.val_per_class * config.num_classes


def longer_runs_cell(pick: dict, val_images: int) -> str:
    """A choice's longer runs as the search table shows them: each multiple's best epoch and
    validation top-1 with its paired test against the run adopted before it (validation
    images won and lost of `val_images`, McNemar's p), then what was adopted."""
    parts = []
    for run in pick["longer"]:
        shown = (f"{run['multiple']}x: {run['best_epoch']}/{run['epochs']}, "
                 f"{100 * run['val_top1']:.1f}")
        if run.get("diverged"):
            shown += f" (diverged: {run['diverged']})"
        elif run["better"] is not None:
            shown += (f" (+{run['wins']}/-{run['losses']} of {val_images} images, "
                      f"p {run['p']:.2g})")
        parts.append(shown)
    status = {"shown": f"{pick['adopted']['multiple']}x adopted",
              "pending": f"{pick['next']}x not run yet",
              "untested": "no per-image record: untested",
              "still improving at the cap": f"still improving at {LONGEST}x"}
    return "; ".join(parts + [status[pick["convergence"]]])


def _recipe_best(found: dict | None) -> str:
    """A recipe's best validation top-1 as the search table shows it."""
    if found is None:
        return "not searched"
    return (f"{100 * found['val_top1']:.1f}"
            + (" (all diverged)" if found["diverged"] == found["trials"] else ""))


BOUNDS = {"finite": "finite trials", "diverged": "a diverged trial (flagged)",
          "edge": "the edge of the rates (flagged)"}


def search_table(trials: list[dict], val_images: int) -> list[dict]:
    """Per (method, NPC) of the converged search: each recipe's best validation top-1 (base /
    small-data), the chosen recipe and rate, where the rate sits among the rates its recipe
    searched and what bounds it (finite, worse trials on both sides; a diverged trial or the
    edge, both flagged), the best epoch out of the run's length, the validation and training
    top-1 there, and its longer runs with the paired test against the noise of `val_images`
    validation images (longer_runs_cell)."""
    table = []
    for (method, npc), pick in sorted(choose(trials).items(),
                                      key=lambda item: (item[0][1], _method_order(item[0][0]))):
        found = pick["recipes"][pick["recipe"]]
        bound = ("every trial diverged (flagged)" if found["diverged"] == found["trials"]
                 else BOUNDS[pick["bracket"]])
        table.append({"method": method, "NPC": npc,
                      "val top-1: base / small-data": " / ".join(
                          _recipe_best(pick["recipes"].get(recipe)) for recipe in RECIPE_NAMES),
                      "chosen": pick["recipe"], "lr": f"{pick['lr']:g}",
                      "position": f"{pick['rate_position']} of {pick['rates'][0]:g} .. "
                                  f"{pick['rates'][-1]:g} ({found['trials']} trials)",
                      "bounded by": bound,
                      "best epoch": f"{pick['best_epoch']}/{pick['epochs']}",
                      "val top-1": f"{100 * pick['val_top1']:.1f}",
                      "train top-1": f"{100 * pick['train_top1']:.0f}",
                      "longer runs": longer_runs_cell(pick, val_images)})
    return table


def protocol_line(results: dict) -> str:
    """Which protocol made each NPC's rows of a search's results
    (trial_store.npc_protocols), NPCs of the same protocol together: 'NPC 10 / 30: ...; NPC
    100: ...'."""
    groups: dict[str, list[int]] = {}
    for npc, summary in npc_protocols(results).items():
        groups.setdefault(describe_protocol(summary), []).append(npc)
    return "; ".join(f"NPC {' / '.join(map(str, npcs))}: {words}"
                     for words, npcs in groups.items())


def _paired_validation(trials: list[dict], pick: dict) -> str:
    """The small-data recipe's best against the base recipe's, on the same validation images:
    the difference in points and the two-sided McNemar test of it."""
    base, small = (pick["recipes"][recipe] for recipe in RECIPE_NAMES)
    runs = {trial["run"]: trial for trial in trials}
    first, second = runs[base["run"]], runs[small["run"]]
    shown = f"{100 * (second['val_top1'] - first['val_top1']):+.1f}"
    if "val_correct" not in first or "val_correct" not in second:
        return f"{shown} (no per-image record)"
    wins, losses = paired_counts(first, second)
    return (f"{shown} (+{wins}/-{losses} of {first['val_images']} images, p "
            f"{mcnemar_two_sided_p(wins, losses):.2g})")


def _test_cell(runs: dict[int, float]) -> str:
    """Test top-1 over seeds: mean ± sd, and how many seeds."""
    return f"{mean_sd(list(runs.values()))} ({len(runs)} seed{'s' * (len(runs) > 1)})"


def recipe_table(found: dict, seeds: dict | None = None) -> list[dict]:
    """What the small-data recipe changes, per (method, NPC) of the search `found`: each
    recipe's best validation top-1, the small-data recipe's difference on the same validation
    images (points, two-sided McNemar; a dash where the search did not run it: protocol_line
    says where), and the recipe and length adopted. With `seeds` (run at the search's choices): the
    adopted choice's test top-1 over its seeds and, at an NPC where the seeds file keeps the
    rows a study replaced (`replaced_trials`: the same seeds under the earlier choice), their
    test top-1 and the paired difference now - before with its verdict on the test images the
    seeds were scored on (stats.verdict)."""
    now = top1_by_seed(seeds)[0] if seeds else {}
    before = top1_by_seed({"trials": seeds.get("replaced_trials", [])})[0] if seeds else {}
    table = []
    for (method, npc), pick in sorted(choose(found["trials"]).items(),
                                      key=lambda item: (item[0][1], _method_order(item[0][0]))):
        both = all(recipe in pick["recipes"] for recipe in RECIPE_NAMES)
        row = {"method": method, "NPC": npc,
               "val top-1: base / small-data": " / ".join(
                   _recipe_best(pick["recipes"].get(recipe)) for recipe in RECIPE_NAMES),
               "small-data - base (val)": (_paired_validation(found["trials"], pick) if both
                                           else "–"),
               "adopted": pick["recipe"] + (f", {pick['adopted']['multiple']}x"
                                            if pick["adopted"]["multiple"] > 1 else "")}
        if seeds:
            ours, earlier = now.get((method, npc), {}), before.get((method, npc), {})
            row["test now"] = _test_cell(ours) if ours else "–"
            if earlier:
                row["test before"] = _test_cell(earlier)
                row["now - before (paired)"] = _paired_seeds(
                    ours, earlier, next(r["test_images"] for r in seeds["trials"]
                                        if "test_images" in r))
        table.append(row)
    return table


def _paired_seeds(ours: dict[int, float], theirs: dict[int, float], test_images: int) -> str:
    """ours - theirs over the seeds both have: mean ± sd and stats.verdict's word."""
    shared = [s for s in sorted(ours) if s in theirs]
    if len(shared) < 2:
        return f"{len(shared)} seed{'s' * (len(shared) != 1)} in common: not tested"
    differences = [ours[s] - theirs[s] for s in shared]
    level = statistics.mean([ours[s] for s in shared] + [theirs[s] for s in shared])
    return (f"{mean_sd(differences)} over {len(shared)} seeds: "
            f"{verdict(differences, level, test_images)}")


# ---------------------------------------------------------------- seeds

def seeds_path(profile: str) -> Path:
    return RESULTS_DIR / f"{profile}_converged_seeds.json"


def load_seeds(profile: str, path: str | Path | None = None) -> dict | None:
    """The committed converged experiment over seeds of `profile`
    (experiments/converged_seeds.py), or the one at `path` (a study's own file), or None;
    refused if it holds two runs of one (method, NPC, seed)."""
    seeds = load_results(Path(path) if path else seeds_path(profile), "seeds",
                         {"profile", "command", "trials"},
                         f"experiments/converged_seeds.py --profile {profile}")
    if seeds:
        _one_run_each(seeds["trials"])
    return seeds


def sweep_plan(profile: str, seeds: dict | None, npcs=(), live_npcs=(),
               methods=()) -> tuple[list, list, list]:
    """Notebook 04's (npcs, live_npcs, methods) from its parameters: empty npcs and methods
    are the profile's sweep and every method; empty live_npcs (the NPCs trained live) are the
    smallest NPC where `seeds` (the committed experiment over seeds, load_seeds) can give the
    others, and every NPC where it is None."""
    npcs = list(npcs) or list(profile_npcs(profile))
    check_methods(methods)
    live = list(live_npcs) or (npcs[:1] if seeds else npcs)
    return npcs, live, list(methods) or list(METHODS)


def load_sweep(path: str | Path, profile: str) -> dict:
    """Notebook 04's results JSON, with a clear error naming what to run where it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run notebook 04_fine_tuning first (or the whole course: "
            f"python -m apl_core course --profile {profile}), or pass finetune_results")
    return json.loads(path.read_text())


def sweep_over_seeds(sweep: list[dict], seeds: dict | None, seed: int) -> list[dict]:
    """Notebook 04's sweep (the runs of seed `seed`) and every other committed seed's runs of
    its methods and NPCs: what the accuracy-vs-NPC figure draws, each seed a point."""
    drawn = {(row["method"], row["npc"]) for row in sweep}
    return sweep + [row for row in (seeds or {}).get("trials", [])
                    if "test_top1" in row and row["seed"] != seed
                    and (row["method"], row["npc"]) in drawn]


def _method_order(method: str) -> int:
    """Where `method` comes in METHODS (others after them): the order of every table."""
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _one_run_each(rows: list[dict]) -> None:
    """Refuse two trained runs of one (method, NPC, seed): one of them is left from an older
    search, and which one a table shows would depend on the file's order."""
    seen: dict[tuple, str] = {}
    for row in rows:
        if "test_top1" not in row:
            continue
        key = (row["method"], row["npc"], row["seed"])
        if key in seen:
            raise ValueError(
                f"the seeds file has two {row['method']} runs at NPC {row['npc']} for seed "
                f"{row['seed']} ({seen[key]} and {row['run']}): one is left from an older "
                f"search. Remove the rows that are not at the search's choice, then run "
                f"experiments/converged_seeds.py again")
        seen[key] = row["run"]


def rows_of_seed(seeds: dict | None, seed: int) -> tuple[list[dict], list[dict]]:
    """One seed of the committed experiment, as notebook 04 measures it live: its comparison
    rows (method, npc, test_top1, train_top1, ...) in METHODS order, and its feature rows
    ({"npc", "features"}); ([], []) without committed seeds."""
    rows = [row for row in (seeds or {}).get("trials", []) if row.get("seed") == seed]
    tests = sorted((row for row in rows if "test_top1" in row),
                   key=lambda row: (row["npc"], _method_order(row["method"])))
    features = sorted((row for row in rows if "features" in row), key=lambda row: row["npc"])
    return tests, features



def seed_table(seeds: dict) -> list[dict]:
    """Test top-1 (%) per method and NPC, mean ± standard deviation over the seeds committed
    (their number in brackets where not all have it), then the frozen features."""
    tests, features = top1_by_seed(seeds)
    npcs = sorted({n for _, n in tests} | {n for _, n in features})
    everyone = {seed for runs in tests.values() for seed in runs}

    def cell(values: list[float]) -> str:
        shown = mean_sd(values)
        return shown if len(values) == len(everyone) else f"{shown} ({len(values)})"

    table = []
    for method in sorted(dict.fromkeys(m for m, _ in tests), key=_method_order):
        table.append({"method": method, **{
            f"NPC {n}": cell(list(tests[(method, n)].values())) if (method, n) in tests
            else None for n in npcs}})
    for _, measure in MEASURES:
        for i, name in enumerate(FEATURES):
            table.append({"method": f"{measure}, {name}", **{
                f"NPC {n}": cell([pair[i] for pair in features[(measure, n)].values()])
                if (measure, n) in features else None for n in npcs}})
    return table



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
    ReportFigure("Is every choice inside its search?", "convergence.png", "04_convergence"),
)


def copy_notebook_figures(output_dir: str | Path, report_dir: str | Path) -> list[Path]:
    """Copy the FIGURES that other notebooks drew from output_dir into report_dir, those that
    exist; returns the copies."""
    drawn = [(Path(output_dir) / f"{figure.source}.png", Path(report_dir) / figure.file)
             for figure in FIGURES if figure.source]
    return [Path(shutil.copy(source, copy)) for source, copy in drawn if source.is_file()]


def write_report(report_dir: str | Path, provenance: str, pretraining: dict, rows: list[dict],
                 features: list[dict], checks: list[dict], search: dict | None = None,
                 seeds: dict | None = None) -> Path:
    """report_dir/report.md: the provenance line, the pretraining, fine-tuning, feature and
    claim tables, the search and the seeds when given (each says where it comes from), and
    the figures of FIGURES that are in report_dir. Returns its path."""
    report_dir = Path(report_dir)
    extra = []
    if search:
        protocols = protocol_line(search)
        extra += [f"## Where each choice of the converged search sits ({search['profile']} "
                  f"profile, `{search['command']}`)", *([protocols + "."] if protocols else []),
                  markdown_table(search_table(search["trials"],
                                              validation_images(search["profile"]))),
                  "## What the small-data recipe changes",
                  markdown_table(recipe_table(search, seeds))]
    if seeds:
        extra += [f"## Over the seeds that draw their own labels ({seeds['profile']} profile, "
                  f"`{seeds['command']}`)", markdown_table(seed_table(seeds)),
                  markdown_table(margin_table(seeds))]
    text = "\n\n".join([
        "# APL reproduction report", provenance,
        "## Pretraining (APL puzzle, held-out images)",
        markdown_table([pretraining["row"]], formats=PERCENT),
        "## Fine-tuning: test top-1 (%) at the chosen epoch, training top-1 in brackets",
        markdown_table(accuracy_table(rows)),
        "## Frozen features: kNN / linear probe test top-1 (%)",
        markdown_table(feature_table(features)),
        *extra,
        "## The claim, checked", markdown_table(checks),
        "## Figures", *[f"### {figure.title}\n\n![{figure.title}]({figure.file})"
                        for figure in FIGURES if (report_dir / figure.file).exists()],
    ]) + "\n"
    path = report_dir / "report.md"
    path.write_text(text)
    return path
