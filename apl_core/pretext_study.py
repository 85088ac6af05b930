"""Which puzzle? (notebook 07): APL against the pretext tasks of apl_core.pretext, on the same
transformer, images, image-epochs and seeds, judged the same way.

    study_pretraining    a task's pretraining at one seed: the profile's (notebook 02's), with
                         the task and the positional embedding it is defined with, a snapshot
                         after every epoch (the budget curve); or at the small budget of
                         notebook 06's controls (notebook 07's live run)
    features_row         the one linear probe and kNN on its frozen features at each NPC
                         (controls.feature_scores), its pretext curve and seconds per epoch,
                         the budget curve (controls.budget_curve)
    finetune_configs     fine-tuning at NPC 10 with the converged search's base recipe;
                         FINETUNES adds MP3 with positional embeddings added at fine-tuning
    pretraining_loss     the pretraining a fine-tuning starts from (trained where it is
                         missing) and its last held-out pretext loss, which names it
    search_finetune      the learning-rate bracket of apl_core.search on seed 0
    scored_row           the chosen rate on one seed, its best validation epoch scored once on
                         the test images
    run_study            all of it, `workers` runs at a time, every row stored as it finishes
                         (trial_store.TrialStore: a stopped study resumes row by row), the
                         fine-tunings of one pretraining together, seed 0's first
    task_table / paired_table / curve_rows / budget_rows      the results as tables: means
                         over seeds, each task's paired difference against APL with the
                         detectable difference (stats), and the curves the figures draw
    retrained / pretraining_note      the fine-tunings that started from a pretraining
                         trained again on resuming, not the one their features row judged
    cost_table           each task's seconds per pretraining epoch, measured alone
                         (benchmarks/pretext_cost.py)

Every row of the results file has a `kind`: 'features' (one per task and seed), 'trial' (one
per fine-tuning run of a bracket) or 'test' (one per fine-tuning and seed).

A study resumed where its runs are gone (another machine) trains the pretrainings its
fine-tunings still need again. On another CPU they compute differently (bf16 on AMX and on
AVX-512 round differently, and twelve epochs carry the difference on), so they are other
pretrainings of the same recipe and seed. Each fine-tuning row records `pretraining_loss`,
the last held-out pretext loss of the pretraining it started from, which tells them apart; a
row without it started from the pretraining its features row judged. A bracket is run on one
pretraining: a finished one stands (its rate is a choice made on validation images), an
unfinished one from a pretraining that is gone is set aside (kept in the file's `set_aside`)
and run again.
"""
from __future__ import annotations

import functools
import statistics
from pathlib import Path

from . import comparison
from .comparison import label_seed, method_config
from .config import PRETEXT_POSITIONS, PROFILES, profile_config, profile_npcs
from .controls import BUDGETS, LabelledImages, budget_curve, feature_scores
from .data import finetune_sets
from .device import resolve_device
from .pretext import JIGSAW_PERMUTATIONS, KEY_MASK_RATIO, MASK_RATIO
from .results import RESULTS_DIR, load_results
from .rundir import read_metrics, run_name
from .search import (
    START_RATES, best_trial, max_steps, search_done, search_method, searched_config, store_run,
    trial_row,
)
from .stats import detectable_difference, mean_sd, verdict
from .train import best_epoch_test_top1, finetune, load_pretrained, pretrain
from .trial_store import TrialStore

TASKS = ("apl", "rotation", "jigsaw", "mae", "mp3")
# each fine-tuning compared: the task it starts from, and whether positional embeddings are
# added at fine-tuning (MP3's variant: pretrained without, fine-tuned with)
FINETUNES = {task: (task, False) for task in TASKS}
FINETUNES["mp3 + positions"] = ("mp3", True)
FINETUNE_NPC = 10
SEARCHED = "APL fine-tune"  # every fine-tuning is a pretrained transformer's: its recipe
PROTOCOL = {"mask_ratio": MASK_RATIO, "key_mask_ratio": KEY_MASK_RATIO,
            "jigsaw_permutations": JIGSAW_PERMUTATIONS, "finetune_npc": FINETUNE_NPC,
            "recipe": "base", "start_rate": START_RATES[SEARCHED]}


def check_tasks(tasks) -> None:
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    if "apl" not in tasks:
        raise ValueError("every task is paired against APL: include 'apl'")


def study_pretraining(profile: str, task: str, seed: int, budget: str = "main", **settings):
    """Seed `seed`'s pretraining on `task`, with the positional embedding the task is defined
    with. budget 'main': the profile's (APL's is notebook 02's run), a snapshot after every
    epoch; 'small': the profile's controls budget (notebook 07's live run; APL's is notebook
    06's APL control)."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r} is invalid: choose one of {BUDGETS}")
    values = ({"snapshot_every": 1} if budget == "main"
              else {**PROFILES[profile]["controls"]["budget"], "knn_every": 0})
    return profile_config(profile, "pretrain", **{
        **values, "seed": seed, "pretext": task,
        "positional_embedding": PRETEXT_POSITIONS.get(task, False), **settings})


def labelled_images(profile: str, seed: int, npc: int, **settings) -> LabelledImages:
    """The NPC-`npc` labelled images of `seed` (label seed 42 + seed), its validation part
    and the test images: the sets notebook 04 fine-tunes on."""
    keep = {k: v for k, v in settings.items() if k in ("data_dir", "device")}
    config = profile_config(profile, "finetune", npc=npc, label_seed=label_seed(seed), **keep)
    train, val, test = finetune_sets(config)
    return LabelledImages(*((part.images, part.labels) for part in (train, val, test)))


def features_row(profile: str, task: str, seed: int, **settings) -> dict:
    """Pretrain `task` at `seed` (read back when finished) and judge its frozen features at
    every NPC of the profile; its pretext curve (held-out loss and top-1 per epoch), seconds
    per epoch, and the budget curve at the profile's largest NPC."""
    result = pretrain(study_pretraining(profile, task, seed, **settings), resume="auto")
    device = resolve_device(settings.get("device", "auto"))
    model, _ = load_pretrained(result.checkpoint, device=device)
    sets = {npc: labelled_images(profile, seed, npc, **settings)
            for npc in profile_npcs(profile)}
    judged = {str(npc): feature_scores(model.transformer, labelled, device)
              for npc, labelled in sets.items()}
    metrics = read_metrics(result.run_dir)
    curve = budget_curve(result.run_dir, sets[max(sets)], device)
    return {"kind": "features", "run": result.run_dir.name, "task": task, "seed": seed,
            "features": judged, "test_images": len(sets[max(sets)].test[1]),
            "pretext_curve": [{"epoch": row["epoch"], "loss": row.get("val_loss"),
                               "top1": row.get("val_top1")} for row in metrics],
            "seconds_per_epoch": statistics.mean(row["epoch_time_s"] for row in metrics),
            "budget_curve": [{"epoch": row["epoch"], "knn_top1": row["knn_top1"],
                              "probe_top1": row["probe_top1"]} for row in curve]}


def finetune_config(profile: str, finetune: str, seed: int, **settings):
    """`finetune` (a FINETUNES name) at NPC 10 on seed `seed`'s labels: the converged search's
    base recipe for a pretrained transformer, the profile's steps at NPC 10, from `seed`'s
    pretraining of the task."""
    task, positions = FINETUNES[finetune]
    pretraining = study_pretraining(profile, task, seed, **settings)
    pretrain_run = str(Path(pretraining.runs_dir) / "pretrain" / run_name(pretraining))
    base = method_config(SEARCHED, FINETUNE_NPC, profile, pretrain_run, pretraining, seed=seed,
                         positional_embedding=positions, **settings)
    return searched_config(base, SEARCHED, max_steps(profile)[FINETUNE_NPC], "base")


def pretraining_loss(profile: str, task: str, seed: int, **settings) -> float:
    """The last held-out pretext loss of seed `seed`'s pretraining of `task`, trained first
    where its run is missing: which pretraining a fine-tuning of it starts from."""
    result = pretrain(study_pretraining(profile, task, seed, **settings), resume="auto")
    return result.metrics[-1]["val_loss"]


def started_from(row: dict, trials: list[dict]) -> float:
    """The held-out pretext loss of the pretraining fine-tuning `row` started from: its own
    record, or (a row from before the record) its features row's last one."""
    if "pretraining_loss" in row:
        return row["pretraining_loss"]
    return _judged_loss(_features({"trials": trials})[(FINETUNES[row["finetune"]][0],
                                                        row["seed"])])


def _judged_loss(features: dict) -> float:
    """The last held-out pretext loss of the pretraining a features row judged."""
    return features["pretext_curve"][-1]["loss"]


def search_finetune(profile: str, finetune_name: str, store: TrialStore,
                    **settings) -> list[dict]:
    """The learning-rate bracket (search.search_method) of `finetune_name` on seed 0, on one
    pretraining: an unfinished bracket from a pretraining that is no longer the one here is
    set aside and run again."""
    loss = pretraining_loss(profile, FINETUNES[finetune_name][0], 0, **settings)
    trials = store.read()["trials"]
    bracket = [t for t in trials if t.get("kind") == "trial" and t["finetune"] == finetune_name]
    if not search_done(bracket) and any(started_from(t, trials) != loss for t in bracket):
        store.set_aside({t["run"] for t in bracket},
                        f"an unfinished bracket from a pretraining that is gone (held-out "
                        f"loss {started_from(bracket[0], trials):.6g}); run again from the one "
                        f"trained here ({loss:.6g})")
    base = finetune_config(profile, finetune_name, 0, **settings)
    return search_method(base, lambda config: store_run(
        SEARCHED, store, config, {"kind": "trial", "finetune": finetune_name,
                                  "seed": config.seed, "pretraining_loss": loss}))


def scored_row(profile: str, finetune_name: str, seed: int, lr: float, store: TrialStore,
             **settings) -> dict:
    """`finetune_name` at rate `lr` on seed `seed` (seed 0's is the bracket's own run), its
    best validation epoch scored once on the test images; stored."""
    config = finetune_config(profile, finetune_name, seed, **settings).replace(lr=lr)
    key = run_name(config) + "#test"
    found = store.find(key)
    if found is not None:
        return found
    loss = pretraining_loss(profile, FINETUNES[finetune_name][0], seed, **settings)
    result = finetune(config, resume="auto")
    best = trial_row(SEARCHED, result.config, result.metrics)
    row = {"kind": "test", "run": key, "finetune": finetune_name, "seed": seed, "lr": lr,
           "val_top1": best["val_top1"], "best_epoch": best["best_epoch"],
           "test_top1": best_epoch_test_top1(result.run_dir, config.device),
           "test_images": len(finetune_sets(config)[2]), "pretraining_loss": loss}
    store.add(row)
    return row


def chosen_rate(trials: list[dict], finetune_name: str) -> float:
    return best_trial([t for t in trials if t.get("kind") == "trial"
                       and t["finetune"] == finetune_name])["lr"]


def finetunes_of(tasks) -> list[str]:
    return [name for name, (task, _) in FINETUNES.items() if task in tasks]


def run_study(profile: str, seeds, tasks, store: TrialStore, workers: int = 1,
              **settings) -> None:
    """Every task at every seed (pretraining and features), then every task's fine-tunings
    on seed 0 (its brackets and their chosen rates), then on the other seeds; `workers` at a
    time, one (task, seed) each: its pretraining (trained again where its run is gone) and
    then every fine-tuning that starts from it, so that a pretraining is used up before the
    next is trained. Rows found in the store are not run again."""
    check_tasks(tasks)
    common = dict(profile=profile, path=store.path, header=store.header, settings=settings)
    with comparison.worker_pool(workers) as pool:
        list(pool.map(functools.partial(_features_unit, **common),
                      [(task, seed) for task in tasks for seed in seeds]))
        for group in ([0], [seed for seed in seeds if seed != 0]):
            list(pool.map(functools.partial(_finetunes_unit, names=finetunes_of(tasks),
                                            **common),
                          [(task, seed) for seed in group for task in tasks]))


def _features_unit(unit: tuple[str, int], profile: str, path: Path, header: dict,
                   settings: dict) -> None:
    task, seed = unit
    store = TrialStore(path, header)
    if (task, seed) in _features(store.read()):
        return
    row = features_row(profile, task, seed, **settings)
    store.add(row)
    print(f"{task:<10} seed {seed}: " + ", ".join(
        f"NPC {npc} probe {s['probe_top1']:.1%} kNN {s['knn_top1']:.1%}"
        for npc, s in row["features"].items())
        + f"  {row['seconds_per_epoch']:.0f} s/epoch", flush=True)


def _finetunes_unit(unit: tuple[str, int], profile: str, path: Path, header: dict,
                    names: list[str], settings: dict) -> None:
    """The fine-tunings of `names` that start from (task, seed)'s pretraining and have no
    test row: on seed 0 each one's bracket first, then its chosen rate."""
    task, seed = unit
    store = TrialStore(path, header)
    tested = _tests(store.read())
    for name in [name for name in names if FINETUNES[name][0] == task
                 and (name, seed) not in tested]:
        if seed == 0:
            trials = search_finetune(profile, name, store, **settings)
            print(f"{name:<16} bracket: " + ", ".join(
                f"lr {t['lr']:g} val {t['val_top1']:.1%}" for t in trials), flush=True)
        lr = chosen_rate(store.read()["trials"], name)
        row = scored_row(profile, name, seed, lr, store, **settings)
        print(f"{name:<16} seed {seed}: lr {lr:g} test {row['test_top1']:.1%}", flush=True)


def study_plan(profile: str, seeds, tasks, trials: list[dict], **settings) -> list[dict]:
    """One row per pretraining (task, seed) and per fine-tuning: what the study runs and
    what the results file already holds."""
    check_tasks(tasks)
    rows = []
    for task in tasks:
        for seed in seeds:
            config = study_pretraining(profile, task, seed, **settings)
            done = any(t.get("kind") == "features" and (t["task"], t["seed"]) == (task, seed)
                       for t in trials)
            trained = (Path(config.runs_dir) / "pretrain" / run_name(config) / "last.pt")
            rows.append({"run": f"pretraining + features: {task}", "seed": seed,
                         "epochs": config.epochs, "images": config.num_images,
                         "checkpoint": "yes" if trained.exists() else "no",
                         "done": "yes" if done else "no"})
    for name in finetunes_of(tasks):
        bracket = [t for t in trials if t.get("kind") == "trial" and t["finetune"] == name]
        tested = {t["seed"] for t in trials if t.get("kind") == "test" and t["finetune"] == name}
        config = finetune_config(profile, name, 0, **settings)
        rows.append({"run": f"fine-tuning bracket: {name}", "seed": 0, "epochs": config.epochs,
                     "images": config.npc * config.num_classes, "checkpoint": "",
                     "done": f"{len(bracket)} trials"})
        rows.append({"run": f"fine-tuning at the chosen rate: {name}",
                     "seed": " ".join(map(str, seeds)), "epochs": "", "images": "",
                     "checkpoint": "", "done": f"{len(tested & set(seeds))}/{len(seeds)} seeds"})
    return rows


# ---------------------------------------------------------------- the results

def study_path(profile: str) -> Path:
    return RESULTS_DIR / f"{profile}_pretext_study.json"


def load_study(profile: str, path: str | Path | None = None) -> dict | None:
    """The committed study of `profile` (experiments/pretext_study.py), or the one at `path`,
    or None where there is none."""
    return load_results(Path(path) if path else study_path(profile), "pretext study",
                        {"profile", "trials"},
                        f"python experiments/pretext_study.py --profile {profile}")


def cost_path(profile: str) -> Path:
    return RESULTS_DIR / f"{profile}_pretext_cost.json"


def load_cost(profile: str, path: str | Path | None = None) -> dict | None:
    """Each task's training cost measured alone (benchmarks/pretext_cost.py), or None where
    it is not committed."""
    return load_results(Path(path) if path else cost_path(profile), "pretext cost",
                        {"profile", "tasks"},
                        f"python benchmarks/pretext_cost.py --profile {profile}")


def _features(results: dict) -> dict[tuple[str, int], dict]:
    return {(row["task"], row["seed"]): row for row in results["trials"]
            if row.get("kind") == "features"}


def _tests(results: dict) -> dict[tuple[str, int], dict]:
    return {(row["finetune"], row["seed"]): row for row in results["trials"]
            if row.get("kind") == "test"}


def measures(results: dict) -> dict[str, dict[tuple[str, int], float]]:
    """Every measure of the study by name ('probe NPC 10', 'kNN NPC 10', ..., 'fine-tune NPC
    10'), each {(task or fine-tuning, seed): test top-1}."""
    found: dict[str, dict] = {}
    for (task, seed), row in _features(results).items():
        for npc, scores in row["features"].items():
            for key, name in (("probe_top1", "probe"), ("knn_top1", "kNN")):
                found.setdefault(f"{name} NPC {npc}", {})[(task, seed)] = scores[key]
    for (name, seed), row in _tests(results).items():
        found.setdefault(f"fine-tune NPC {FINETUNE_NPC}", {})[(name, seed)] = row["test_top1"]
    return found


def retrained(results: dict) -> list[tuple[str, int]]:
    """The (task, seed) pairs whose fine-tunings (test rows) started from a pretraining other
    than the one their features row judged: trained again where a resumed study found its
    run gone (started_from)."""
    features = _features(results)
    found = set()
    for (name, seed), row in _tests(results).items():
        pair = (FINETUNES[name][0], seed)
        if pair in features and started_from(row, results["trials"]) != _judged_loss(
                features[pair]):
            found.add(pair)
    return sorted(found, key=lambda pair: (TASKS.index(pair[0]), pair[1]))


def pretraining_note(results: dict) -> str:
    """Which pretrainings the fine-tunings started from, in words: '' where every one is the
    pretraining its features row judged."""
    pairs = retrained(results)
    if not pairs:
        return ""
    tests = _tests(results)
    tested = {(FINETUNES[name][0], seed) for name, seed in tests}
    named = ("every task and seed" if set(pairs) == tested
             else ", ".join(f"{task} seed {seed}" for task, seed in pairs))
    elsewhere = sorted({row["finetune"] for row in results["trials"]
                        if row.get("kind") == "trial" and (row["finetune"], 0) in tests
                        and started_from(row, results["trials"])
                        != started_from(tests[(row["finetune"], 0)], results["trials"])},
                       key=list(FINETUNES).index)
    brackets = (f" The learning rates of {', '.join(elsewhere)} were bracketed on another "
                f"pretraining of seed 0 than the one their test fine-tuned: a rate chosen on "
                f"validation images carries over as it does to seeds 1 and 2."
                if elsewhere else "")
    return (f"The fine-tunings of {named} started from a second pretraining of the same task, "
            f"recipe and seed, trained again where the study was resumed after the first one's "
            f"runs were lost with their machine (bf16 rounds differently on another CPU, so "
            f"the two differ): there the probe and kNN judge the first pretraining and "
            f"fine-tuning the second.{brackets}")


def cost_table(cost: dict) -> list[dict]:
    """One row per task of `cost` (load_cost): the seconds of one pretraining epoch, measured
    alone, and their ratio to APL's."""
    return [{"task": row["task"], "s / epoch": f"{row['epoch_seconds']:.0f}",
             "x APL's": ("" if row["relative_to_apl"] is None
                         else f"{row['relative_to_apl']:.2f}")} for row in cost["tasks"]]


def task_table(results: dict) -> list[dict]:
    """One row per task (and fine-tuning variant): each measure's mean ± sd over seeds in
    percent."""
    every = measures(results)
    rows = []
    for name in FINETUNES:
        row = {"task": name}
        for measure, values in every.items():
            mine = [v for (task, _), v in sorted(values.items()) if task == name]
            row[measure] = mean_sd(mine) if mine else ""
        if any(row[measure] for measure in every):
            rows.append(row)
    return rows


def images_scored(results: dict) -> int:
    """The fewest test images any row of the study was scored on."""
    counts = [row["test_images"] for row in results["trials"] if "test_images" in row]
    return min(counts)


def paired_table(results: dict) -> list[dict]:
    """One row per (task, measure): the mean paired difference against APL over the seeds
    both have, in points, the detectable difference (stats.detectable_difference, at APL's
    accuracy on the study's test images) and the verdict: 'higher' or 'lower' only beyond it
    with every seed's difference of one sign."""
    images = images_scored(results)
    rows = []
    for measure, values in measures(results).items():
        for name in FINETUNES:
            if name == "apl":
                continue
            seeds = sorted(seed for task, seed in values if task == name
                           and ("apl", seed) in values)
            if not seeds:
                continue
            differences = [values[(name, s)] - values[("apl", s)] for s in seeds]
            accuracy = statistics.mean(values[("apl", s)] for s in seeds)
            detectable = detectable_difference(differences, accuracy, images)
            rows.append({"task": name, "measure": measure, "seeds": len(seeds),
                         "difference (points)": f"{100 * statistics.mean(differences):+.1f}",
                         "detectable (points)": f"{100 * detectable:.1f}",
                         "verdict": verdict(differences, accuracy, images)})
    return rows


def _in_task_order(results: dict) -> list[tuple[tuple[str, int], dict]]:
    """The features rows by (task, seed), the tasks in TASKS' order."""
    return sorted(_features(results).items(),
                  key=lambda item: (TASKS.index(item[0][0]), item[0][1]))


def budget_rows(results: dict) -> list[dict]:
    """Each features row as viz.budget_curve_figure draws it ('control' is the task), in
    TASKS' order; a pretraining reused from a run without snapshots has no budget curve."""
    return [{"control": task, "seed": seed, "budget_curve": row["budget_curve"]}
            for (task, seed), row in _in_task_order(results)]


def curve_rows(results: dict) -> list[dict]:
    """Every task's pretext curve and budget curve, one row per (task, seed, epoch), the
    tasks in TASKS' order."""
    rows = []
    for (task, seed), row in _in_task_order(results):
        budget = {point["epoch"]: point for point in row["budget_curve"]}
        for point in row["pretext_curve"]:
            scores = budget.get(point["epoch"], {})
            rows.append({"task": task, "seed": seed, "epoch": point["epoch"],
                         "pretext_loss": point["loss"], "pretext_top1": point["top1"],
                         "knn_top1": scores.get("knn_top1"),
                         "probe_top1": scores.get("probe_top1")})
    return rows
