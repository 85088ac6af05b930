"""The converged search: every trained method of notebook 04 with its field's recipe, with
and without the small-data regularisation, its learning rate searched on a log scale until the
best one has a finite, worse neighbour on each side, and its length shown sufficient by runs of
twice as many steps.

    RECIPES / SMALL_DATA   each kind of model's optimizer and schedule, and its small-data
                           regularisation; RECIPE_NAMES: 'base' (the first alone) and
                           'small-data' (both)
    START_RATES      the rate each method's search starts from (its recipe's usual rate)
    searched_config  a method's config at one NPC: a recipe, max_steps long, validated often
    initial_rates / next_rate / search_done   the learning-rate bracket
    search_method    one (method, NPC, recipe): the next rate chosen from the trials so far
    trial_row        what a finished run contributes: its validation curve, best epoch, which
                     validation images that epoch got right, and whether it diverged
    choose           per (method, NPC) the best (recipe, rate, epoch) over both recipes, where
                     it sits in its range, and its longer runs judged by the paired test
    keyed_choices    the same, keyed 'method|NPC' for a results file's header
    check_lengths / check_precision   every trial of a (method, NPC) as long as the profile
                     makes its runs, and computed in the precision this machine computes in
    check_finished   every (method, NPC) searched and lengthened to the end before a study
                     uses its choice
    run_search       every (method, NPC, recipe) searched in parallel, its trials added to
                     a results file (trial_store.TrialStore), each (method, NPC) lengthened
                     as soon as both of its recipes are searched
    longer_config    a chosen run made `multiple` times as long
    search_plan / seconds_per_step     what a search still runs, and what a step costs
    chosen_configs   every method at the adopted choice of a search (by default the
                     committed one, trial_store.load_search)
    compare          train chosen configs and score each run's best epoch once on the test set

The protocol is the same for every method at a given NPC. Each recipe gets the same bracket:
runs of the same number of optimizer steps (the profile's max_steps for that NPC), each
validated about 20 times along the way, keeping the weights of its best validation epoch
(select_best). The first three rates are the method's start rate times 10^-0.5, 1 and 10^0.5;
each further rate extends the range past an edge that holds the best rate, probes halfway (on
a log scale) toward a diverged neighbour of the best rate, or else halves the log-distance
between the best rate and its better neighbour; TRIALS trials, then up to EXTRA_TRIALS more
while the best rate lacks a finite, worse neighbour on either side. The choice per (method, NPC)
is the best validation over both recipes. The test set is never evaluated here
(evaluate_test=False).

A trial *diverged* when its loss went non-finite (the run stops; its curve so far is kept) or
when it learned nothing: its best validation top-1 and its last epoch's training top-1 are both
within CHANCE_NOISE standard errors of chance on their images. Both halves are needed: a
transformer from scratch at NPC 10 that memorises its training images (training top-1 far
above chance) while its validation stays near chance has learned something, too little to
generalise; that is a result to report, not a failed run. A diverged trial is no bound: the
search probes between it and the best finite rate.

Convergence is shown by budget, the same way for every choice: the chosen run is run again
with twice its steps, and the longer run is adopted when it is better on the same validation
images by the exact one-sided McNemar test (stats.longer_wins, alpha 0.05); it is doubled
again while it keeps winning, up to LONGEST times the searched length.

A hand-written bracket rather than a general optimiser (Optuna's TPE, Hyperband): one
variable on a log scale with five trials is a line search, and a bracket that moves toward an
edge winner guarantees what the experiment needs (an interior best rate) where five samples of
TPE do not; pruning runs early would judge them before their cosine schedule has annealed,
which favours fast starters, and the length is chosen from each full validation curve anyway.
Resuming trial by trial needs no database either: finished trials are read back from the
results file (and finished runs from runs_dir).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

from .comparison import METHODS, method_config, train_all, worker_pool
from .config import PROFILES, FinetuneConfig, PretrainConfig
from .data import finetune_sets
from .rundir import computed_precision, read_metrics, run_name, train_seconds
from .stats import longer_wins
from .train import NonFiniteLossError, best_epoch_test_top1, finetune, load_pretrained
from .trial_store import TrialStore, load_search


# Transformers, pretrained or not: AdamW with decoupled weight decay 0.05, linear warm-up over
# the first 10 % of the steps, cosine decay to zero stepped per batch, gradients clipped at
# norm 1 (DeiT's and MAE's fine-tuning recipe). CNNs: SGD with Nesterov momentum 0.9, weight
# decay 5e-4, a short warm-up and cosine decay to zero (the standard ResNet recipe on small
# images).
RECIPES = {
    "transformer": dict(optimizer="adamw", weight_decay=0.05, warmup_frac=0.1,
                        warmup_start=0.01, final_lr_frac=0.0, schedule_per_step=True,
                        grad_clip=1.0),
    "cnn": dict(optimizer="sgd", weight_decay=5e-4, warmup_frac=0.05, warmup_start=0.1,
                final_lr_frac=0.0, schedule_per_step=True, grad_clip=0.0),
}
# The small-data regularisation on top (docs/method.md, "Recipes"). Transformers: DeiT's stack
# (label smoothing 0.1, MixUp 0.8 or CutMix 1.0 per batch, RandAugment with two ops of
# magnitude 9, stochastic depth 0.1). CNNs: the same stack without stochastic depth, with
# TrivialAugment, which needs no magnitude to tune (as in "ResNet strikes back", the
# regularisation that lets a plain ResNet compete with DeiT).
OFF = dict(label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, augment_policy="none",
           drop_path=0.0)
SMALL_DATA = {
    "transformer": dict(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
                        augment_policy="randaugment", drop_path=0.1),
    "cnn": dict(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
                augment_policy="trivialaugment", drop_path=0.0),
}
RECIPE_NAMES = ("base", "small-data")
METHOD_RECIPES = {"APL fine-tune": "transformer", "BENCHMARK": "transformer",
                  "BENCHMARK + positions": "transformer", "S-CNN": "cnn",
                  "S-ResNet-18": "cnn"}
# Fine-tuning a pretrained transformer starts lower than training one from scratch; SGD's
# rates are an order of magnitude above Adam's (0.1 at batch 128 scaled to batch 32).
START_RATES = {"APL fine-tune": 1e-4, "BENCHMARK": 3e-4, "BENCHMARK + positions": 3e-4,
               "S-CNN": 0.03, "S-ResNet-18": 0.03}
TRIALS = 5  # per (method, NPC, recipe)
EXTRA_TRIALS = 3  # at most, while the best rate lacks a finite, worse neighbour on a side
SPACING = 10 ** 0.5  # the first rates are half a decade apart
EVALUATIONS = 20  # validation points per run, at least
CHANCE_NOISE = 2.0  # standard errors above chance that still count as having learned nothing
LONGEST = 16  # the longest run of a choice, in multiples of the searched length: a cost bound
ALPHA = 0.05  # the paired test's level for adopting a longer run


def epochs_for_steps(steps: int, config: FinetuneConfig) -> int:
    """Whole epochs of config's labelled images (npc per class, batch_size) that make at
    least `steps` optimizer steps."""
    steps_per_epoch = math.ceil(config.npc * config.num_classes / config.batch_size)
    return math.ceil(steps / steps_per_epoch)


def _kind(method: str) -> str:
    if method not in METHOD_RECIPES:
        raise ValueError(f"method={method!r} is not searched: choose from {METHODS}")
    return METHOD_RECIPES[method]


def recipe_settings(method: str, recipe: str) -> dict:
    """The regularisation settings of `recipe` ('base': all off, 'small-data') for `method`."""
    if recipe not in RECIPE_NAMES:
        raise ValueError(f"recipe={recipe!r} is invalid: choose one of {RECIPE_NAMES}")
    return dict(OFF) if recipe == "base" else dict(SMALL_DATA[_kind(method)])


def recipe_of(method: str, config: FinetuneConfig) -> str:
    """Which recipe `config` trains `method` with: 'base', 'small-data', or 'custom' (settings
    of neither)."""
    settings = {name: getattr(config, name) for name in OFF}
    for recipe in RECIPE_NAMES:
        if settings == recipe_settings(method, recipe):
            return recipe
    return "custom"


def searched_config(base: FinetuneConfig, method: str, max_steps: int,
                    recipe: str = "base") -> FinetuneConfig:
    """`base` (the method's config at one NPC) with the method's recipe ('base' or
    'small-data'), max_steps long, validated at least EVALUATIONS times, keeping its best
    validation epoch, test unseen."""
    epochs = epochs_for_steps(max_steps, base)
    return base.replace(**RECIPES[_kind(method)], **recipe_settings(method, recipe),
                        lr=START_RATES[method], epochs=epochs,
                        eval_every=max(1, epochs // EVALUATIONS), select_best=True,
                        evaluate_test=False)


def _rate(value: float) -> float:
    return float(f"{value:.3g}")


def initial_rates(start: float) -> list[float]:
    return [_rate(start / SPACING), _rate(start), _rate(start * SPACING)]


def first_best(rows: list, score: Callable = lambda row: row["val_top1"]):
    """The row with the highest score (its validation top-1 unless `score` says otherwise),
    the first of equals: max keeps the first of equal keys, so a tie goes to the earlier
    trial, epoch or recipe."""
    return max(rows, key=score)


def best_trial(trials: list[dict]) -> dict:
    """The finite trial (not diverged) with the highest validation top-1, among equals the
    first tried; where every trial diverged, the best of them (`choose` flags it)."""
    return first_best([trial for trial in trials if not trial.get("diverged")] or trials)


def _neighbours(trials: list[dict]) -> tuple[dict, dict | None, dict | None]:
    """The best finite trial and the trials at the next lower and next higher rate tried."""
    best = best_trial(trials)
    ordered = sorted(trials, key=lambda trial: trial["lr"])
    i = ordered.index(best)
    return best, ordered[i - 1] if i > 0 else None, \
        ordered[i + 1] if i + 1 < len(ordered) else None


def bracket(trials: list[dict]) -> str:
    """How the best finite rate is bounded: 'finite' (a finite trial on each side, neither
    better), 'diverged' (a diverged trial next to it) or 'edge' (nothing tried on a side)."""
    best, lower, higher = _neighbours(trials)
    if best.get("diverged"):
        return "diverged"
    if lower is None or higher is None:
        return "edge"
    return "diverged" if lower.get("diverged") or higher.get("diverged") else "finite"


def next_rate(trials: list[dict]) -> float:
    """The rate to try next: past the edge that holds the best finite rate; halfway (on a log
    scale) toward a diverged neighbour of it, the lower one first; or else halfway between it
    and its better neighbour. Every trial diverged: below the lowest rate (a rate too high
    is the usual way to diverge)."""
    if all(trial.get("diverged") for trial in trials):
        return _rate(min(trial["lr"] for trial in trials) / SPACING)
    best, lower, higher = _neighbours(trials)
    if lower is None:
        return _rate(best["lr"] / SPACING)
    if higher is None:
        return _rate(best["lr"] * SPACING)
    for neighbour in (lower, higher):
        if neighbour.get("diverged"):
            return _rate(math.sqrt(best["lr"] * neighbour["lr"]))
    neighbour = higher if higher["val_top1"] > lower["val_top1"] else lower
    return _rate(math.sqrt(best["lr"] * neighbour["lr"]))


def search_done(trials: list[dict], minimum: int = TRIALS, extra: int = EXTRA_TRIALS) -> bool:
    """Whether one (method, NPC, recipe)'s search is over: `minimum` trials, the best finite
    rate with a finite, worse neighbour on each side (else up to `extra` more trials), and a
    next rate that is new (at three significant digits the step cannot get finer)."""
    if len(trials) < minimum:
        return False
    if len(trials) >= minimum + extra:
        return True
    if bracket(trials) == "finite":
        return True
    return next_rate(trials) in {trial["lr"] for trial in trials}


def search_method(base: FinetuneConfig, run_trial: Callable[[FinetuneConfig], dict],
                  trials: int = TRIALS, extra: int = EXTRA_TRIALS) -> list[dict]:
    """Every trial of one (method, NPC, recipe), in the order tried: `base` (a
    searched_config) at the three initial rates around base.lr, then at next_rate until
    search_done."""
    done = [run_trial(base.replace(lr=rate)) for rate in initial_rates(base.lr)]
    while not search_done(done, trials, extra):
        done.append(run_trial(base.replace(lr=next_rate(done))))
    return done


def longer_config(config: FinetuneConfig, multiple: int = 2) -> FinetuneConfig:
    """A chosen run `multiple` times as long, validated as often per run."""
    epochs = multiple * config.epochs
    return config.replace(epochs=epochs, eval_every=max(1, epochs // EVALUATIONS))


def learned_nothing(val_top1: float, val_images: int, train_top1: float, train_images: int,
                    num_classes: int) -> bool:
    """Both the best validation top-1 and the last training top-1 within CHANCE_NOISE
    standard errors of chance (1 / num_classes) on their numbers of images."""
    chance = 1 / num_classes

    def near_chance(top1: float, images: int) -> bool:
        return top1 <= chance + CHANCE_NOISE * math.sqrt(chance * (1 - chance) / images)

    return near_chance(val_top1, val_images) and near_chance(train_top1, train_images)


def trial_row(method: str, config: FinetuneConfig, metrics: list[dict], longer_of: str = "",
              multiple: int = 1, non_finite: bool = False) -> dict:
    """A run as the search records it: its settings and recipe, its validation curve, its
    best validation epoch (the first of equals) with the training top-1 of that epoch and
    which validation images that epoch got right (`val_correct`, train.correct_mask, over
    `val_images`), the last epoch's training top-1, what it computed in, and `diverged` (a
    non-finite loss, or learned nothing) where it did.
    longer_of, multiple: the chosen run this one is `multiple` times as long as (not a trial of
    the search). non_finite: the run stopped on a non-finite loss after `metrics`."""
    name = config.run_name or run_name(config)
    evaluated = [row for row in metrics if "val_top1" in row]
    if not evaluated and not non_finite:
        raise ValueError(f"run {name} has no validation evaluation: a searched run needs "
                         f"val_per_class > 0")
    best = first_best(evaluated) if evaluated else {"epoch": 0, "step": 0, "val_top1": 0.0,
                                                    "train_top1": 0.0}
    val_images = config.val_per_class * config.num_classes
    row = dict(method=method, npc=config.npc, recipe=recipe_of(method, config), lr=config.lr,
               epochs=config.epochs, steps=metrics[-1]["step"] if metrics else 0,
               best_epoch=best["epoch"], best_step=best["step"], val_top1=best["val_top1"],
               train_top1=best["train_top1"],
               last_train_top1=metrics[-1]["train_top1"] if metrics else 0.0,
               val_curve=[[row["epoch"], row["val_top1"]] for row in evaluated],
               val_images=val_images, seconds=train_seconds(metrics),
               precision=computed_precision(config), run=name)
    if "val_correct" in best:
        row["val_correct"] = best["val_correct"]
    if non_finite:
        row["diverged"] = "non-finite loss"
    elif learned_nothing(row["val_top1"], val_images, row["last_train_top1"],
                         config.npc * config.num_classes, config.num_classes):
        row["diverged"] = "learned nothing"
    if longer_of:
        row.update(longer_of=longer_of, multiple=multiple)
    return row


def lengthens(trial: dict) -> str | None:
    """The chosen run that `trial`, a longer run, lengthens (files from before every choice
    was lengthened call it doubled_of); None for a trial of the search."""
    return trial.get("longer_of", trial.get("doubled_of"))


def lengthening(chosen: dict, longer: list[dict]) -> dict:
    """The convergence check of a chosen run (a trial row) from its longer runs (rows with
    longer_of = its run, `multiple` 2, 4, ... LONGEST): each multiple against the run adopted
    so far by the paired test, adopted when better, the next multiple run only then.
    {"longer": [per multiple run: multiple, epochs, best_epoch, val_top1, run, and the test's
    wins, losses, p, better], "adopted": {multiple, epochs, best_epoch, val_top1, run},
    "convergence", "next": the multiple to run next or None}. convergence: 'shown' (a longer
    run was not better), 'pending' (the next longer run has not run), 'untested' (a run has no
    per-image record to pair) or 'still improving at the cap' (LONGEST won too)."""
    by_multiple = {trial.get("multiple", 2): trial for trial in longer}
    current, checked = {**chosen, "multiple": 1}, []
    convergence, upcoming = "still improving at the cap", None
    multiple = 2
    while multiple <= LONGEST:
        run = by_multiple.get(multiple)
        if run is None:
            convergence, upcoming = "pending", multiple
            break
        entry = {"multiple": multiple, **{k: run[k] for k in ("epochs", "best_epoch",
                                                             "val_top1", "run")}}
        if run.get("diverged"):
            checked.append({**entry, "better": False, "diverged": run["diverged"]})
            convergence = "shown"
            break
        if "val_correct" not in run or "val_correct" not in current:
            checked.append({**entry, "better": None})
            convergence = "untested"
            break
        test = longer_wins(current, run, ALPHA)
        checked.append({**entry, **test})
        if not test["better"]:
            convergence = "shown"
            break
        current = {**run, "multiple": multiple}
        multiple *= 2
    adopted = {k: current[k] for k in ("multiple", "epochs", "best_epoch", "val_top1", "run")}
    return {"longer": checked, "adopted": adopted, "convergence": convergence,
            "next": upcoming}


def _position(lr: float, rates: list[float]) -> str:
    return "lowest" if lr == rates[0] else "highest" if lr == rates[-1] else "interior"


def choose(trials: list[dict]) -> dict[tuple[str, int], dict]:
    """Per (method, NPC): the best trial over both recipes (by validation top-1, the first
    recipe among equals): its recipe, rate and epoch, validation and training top-1, the rates
    its recipe searched, where the chosen rate sits among them ('lowest', 'interior',
    'highest') and how it is bracketed (`bracket`: 'finite', 'diverged' or 'edge'); `flag`,
    a sentence where the choice is not bracketed by finite trials, or where every trial
    diverged and the choice is the best of them (it needs reading, never silent acceptance);
    each recipe's own best (`recipes`); and its longer runs with the adopted length
    (`lengthening`'s fields). A recipe with a finite trial beats one whose every trial
    diverged. Trials without a recipe (files from before the small-data recipe) are the base
    recipe's."""
    check_lengths(trials)
    groups: dict[tuple[str, int], dict[str, list[dict]]] = {}
    longer: dict[str, list[dict]] = {}
    for trial in trials:
        if lengthens(trial) is not None:
            longer.setdefault(lengthens(trial), []).append(trial)
        else:
            recipes = groups.setdefault((trial["method"], trial["npc"]), {})
            recipes.setdefault(trial.get("recipe", "base"), []).append(trial)
    chosen = {}
    for key, recipes in groups.items():
        per_recipe = {}
        for recipe, group in recipes.items():
            best, rates = best_trial(group), sorted(trial["lr"] for trial in group)
            per_recipe[recipe] = {
                "lr": best["lr"], "val_top1": best["val_top1"], "run": best["run"],
                "rates": rates, "rate_position": _position(best["lr"], rates),
                "bracket": bracket(group), "trials": len(group),
                "diverged": sum(1 for trial in group if trial.get("diverged"))}
        # a recipe with a finite trial beats one whose every trial diverged
        finite = [r for r in recipes if per_recipe[r]["diverged"] < per_recipe[r]["trials"]]
        pool = finite or list(recipes)
        candidates = [r for r in RECIPE_NAMES if r in pool] + \
            [r for r in pool if r not in RECIPE_NAMES]
        recipe = first_best(candidates, lambda name: per_recipe[name]["val_top1"])
        pick = per_recipe[recipe]
        best = best_trial(recipes[recipe])
        chosen[key] = dict(lr=best["lr"], recipe=recipe, epochs=best["epochs"],
                           best_epoch=best["best_epoch"], val_top1=best["val_top1"],
                           train_top1=best["train_top1"], rates=pick["rates"],
                           rate_position=pick["rate_position"], bracket=pick["bracket"],
                           run=best["run"], recipes=per_recipe,
                           **lengthening(best, longer.get(best["run"], [])))
        if not finite:
            chosen[key]["flag"] = (f"every trial diverged; the chosen rate {best['lr']:g} is "
                                   f"the best of them ({best['diverged']})")
        elif pick["bracket"] != "finite":
            side = ("a diverged trial" if pick["bracket"] == "diverged"
                    else "the edge of the rates tried")
            chosen[key]["flag"] = (f"the chosen rate {best['lr']:g} is bounded by {side}, "
                                   f"not by a finite, worse trial on each side")
    return chosen


def keyed_choices(trials: list[dict]) -> dict[str, dict]:
    """`choose`'s choices keyed 'method|NPC', as a seeds file's header records them (JSON keys
    are strings)."""
    return {f"{method}|{npc}": pick for (method, npc), pick in choose(trials).items()}


def check_lengths(trials: list[dict], configs: list[tuple[str, FinetuneConfig]] = ()) -> None:
    """Refuse trials of one (method, NPC) that differ in length, among themselves or from the
    searched `configs`: the profile's max_steps changed since some of them ran, and a choice
    among runs of different lengths would not compare like with like."""
    lengths = {(method, config.npc): config.epochs for method, config in configs}
    for trial in trials:
        if lengthens(trial) is not None:
            continue
        length = lengths.setdefault((trial["method"], trial["npc"]), trial["epochs"])
        if trial["epochs"] != length:
            raise ValueError(
                f"the search's {trial['method']} runs at NPC {trial['npc']} differ in length: "
                f"{trial['run']} has {trial['epochs']} epochs where {length} are searched. The "
                f"profile's max_steps changed since it ran: remove that NPC's trials (and their "
                f"longer runs) from the results file, or give --out a new file, and search "
                f"that NPC again (git keeps the old trials)")


def check_precision(trials: list[dict], configs: list[tuple[str, FinetuneConfig]]) -> None:
    """Refuse to add runs to a search whose trials of the same (method, NPC) computed in
    another precision than `configs` compute in here (a study resumed on another CPU): one
    choice would compare runs of two precisions."""
    precision = {(method, config.npc): computed_precision(config) for method, config in configs}
    for trial in trials:
        here = precision.get((trial["method"], trial["npc"]))
        if here is not None and trial.get("precision", here) != here:
            raise ValueError(
                f"the search's {trial['method']} trials at NPC {trial['npc']} computed in "
                f"{trial['precision']} ({trial['run']}) and this machine computes them in "
                f"{here}: resume the study where it ran, or give --out a new file")


def check_finished(trials: list[dict], npcs, profile: str) -> None:
    """Refuse a search that is not finished at `npcs`: a (method, NPC) without both recipes,
    a recipe whose bracket is not done (search_done), or a choice whose longer runs are not
    (its next longer run not run yet, or one without the per-image record the paired test
    needs). A study that trained on a half-made choice would have to be thrown away when the
    search moves on."""
    searched: dict[tuple[str, int], dict[str, list[dict]]] = {}
    for trial in trials:
        if trial["npc"] in npcs and lengthens(trial) is None:
            searched.setdefault((trial["method"], trial["npc"]), {}).setdefault(
                trial.get("recipe", "base"), []).append(trial)
    problems = []
    for (method, npc), recipes in searched.items():
        for recipe in RECIPE_NAMES:
            group = recipes.get(recipe)
            if not group:
                problems.append(f"{method} at NPC {npc} has no {recipe} trials")
            elif not search_done(group):
                problems.append(f"{method} at NPC {npc}'s {recipe} search has {len(group)} "
                                f"trials and is not done")
    if not problems:
        for (method, npc), pick in choose([t for t in trials if t["npc"] in npcs]).items():
            if pick["convergence"] == "pending":
                problems.append(f"{method} at NPC {npc}'s choice has no {pick['next']}x run "
                                f"yet")
            elif pick["convergence"] == "untested":
                problems.append(f"{method} at NPC {npc}'s longer run has no per-image "
                                f"validation record for the paired test")
    if problems:
        raise ValueError(f"the search is not finished: {'; '.join(problems)}. Run "
                         f"experiments/converged_search.py --profile {profile} again (it "
                         f"resumes where it stopped), then this")


def max_steps(profile: str) -> dict[int, int]:
    """The optimizer steps of every searched run of `profile`, per NPC."""
    steps = PROFILES[profile].get("max_steps") if profile in PROFILES else None
    if not steps:
        raise ValueError(f"the {profile!r} profile has no max_steps for a search; profiles "
                         f"with one: {[p for p in PROFILES if PROFILES[p].get('max_steps')]}")
    return steps


def run_steps(profile: str, base: FinetuneConfig) -> int:
    """How many optimizer steps a run of `base` (one method at one NPC) makes: the profile's
    max_steps at that NPC, or, in a profile without a search, its own fine-tuning epochs."""
    steps = PROFILES[profile].get("max_steps") or {}
    if steps and base.npc not in steps:
        raise ValueError(f"NPC {base.npc} has no max_steps in the {profile!r} profile "
                         f"(it has {sorted(steps)})")
    return steps.get(base.npc) or base.epochs * math.ceil(base.npc * base.num_classes
                                                          / base.batch_size)


def search_configs(profile: str, pretrain_run: str, npcs, methods=METHODS,
                   steps: dict[int, int] | None = None, recipes=RECIPE_NAMES,
                   pretrained: PretrainConfig | None = None,
                   **settings) -> list[tuple[str, FinetuneConfig]]:
    """(method, searched_config) for every method at every NPC in each of `recipes`, NPC by
    NPC, method by method: the profile's fine-tuning settings with the labels of settings'
    seed (as notebook 04), the method's recipe at its start rate, and the profile's max_steps
    at that NPC (`run_steps`), or `steps`' where it names the NPC (a study of a longer
    maximum, run to its own results file before the profile adopts it). `pretrained`: the
    config of `pretrain_run`, read from its checkpoint unless given (a plan made before the
    run exists)."""
    if pretrained is None:
        _, pretrained = load_pretrained(pretrain_run, runs_dir=settings.get("runs_dir", "runs"))
    configs = []
    for npc in npcs:
        for method in methods:
            base = method_config(method, npc, profile, pretrain_run, pretrained, **settings)
            if not base.val_per_class:
                raise ValueError(f"the {profile!r} profile has no validation part to choose "
                                 f"an epoch on: give val_per_class > 0")
            length = (steps or {}).get(npc) or run_steps(profile, base)
            configs += [(method, searched_config(base, method, length, recipe))
                        for recipe in recipes]
    return configs


def adopted_config(method: str, config: FinetuneConfig, pick: dict) -> FinetuneConfig:
    """A searched config of `method` (either recipe) at `pick` (a choice of `choose`): the
    chosen recipe and rate, as long as the adopted run."""
    chosen = config.replace(**recipe_settings(method, pick["recipe"]), lr=pick["lr"])
    return longer_config(chosen, pick["adopted"]["multiple"])


def chosen_configs(profile: str, pretrain_run: str, npcs, methods=METHODS,
                   found: dict | None = None, **settings) -> list[tuple[str, FinetuneConfig]]:
    """(method, config) for every method at every NPC: its searched config, as long as the
    search ran it (its header's max_steps) times the adopted multiple, with the recipe and
    rate the search chose (with settings' seed; for seed 0 the very run the search adopted),
    or the base recipe at its start rate where the search has no choice (a profile without
    a committed search, an NPC it did not search). `found`: a search's results (a study's
    own file); by default the profile's committed search."""
    found = found if found is not None else load_search(profile) or {}
    chosen = choose(found["trials"]) if found else {}
    steps = {int(npc): n for npc, n in found.get("protocol", {}).get("max_steps", {}).items()}
    return [(method, adopted_config(method, config, chosen[(method, config.npc)])
             if (method, config.npc) in chosen else config)
            for method, config in search_configs(profile, pretrain_run, npcs, methods, steps,
                                                 recipes=("base",), **settings)]


def search_plan(configs: list[tuple[str, FinetuneConfig]], trials: list[dict]) -> list[dict]:
    """What is left of a search of `configs` (search_configs) given its finished `trials`:
    one row per (method, NPC, recipe) search and one per (method, NPC)'s longer runs, each
    with the runs it has, and the runs and optimizer steps it still makes at least and at
    most (the bracket may stop at TRIALS or go on to TRIALS + EXTRA_TRIALS; a choice is
    lengthened once, or up to LONGEST times its steps while the longer run keeps winning)."""
    steps = {(method, config.npc): config.epochs * math.ceil(
        config.npc * config.num_classes / config.batch_size) for method, config in configs}
    rows, searches = [], {}
    for method, config in configs:
        recipe = recipe_of(method, config)
        group = [t for t in trials if lengthens(t) is None and (t["method"], t["npc"]) ==
                 (method, config.npc) and t.get("recipe", "base") == recipe]
        searches.setdefault((method, config.npc), []).append(search_done(group))
        least = 0 if search_done(group) else max(TRIALS - len(group), 1)
        most = 0 if search_done(group) else TRIALS + EXTRA_TRIALS - len(group)
        rows.append(dict(method=method, npc=config.npc, runs=recipe, done=len(group),
                         least=least, most=most))
    for (method, npc), finished in searches.items():
        ahead = [2 ** k for k in range(1, int(math.log2(LONGEST)) + 1)]
        if all(finished):
            group = [t for t in trials if (t["method"], t["npc"]) == (method, npc)]
            pick = choose(group)[(method, npc)]
            ahead = [m for m in ahead if pick["next"] and m >= pick["next"]]
        done = sum(1 for t in trials if lengthens(t) is not None and
                   (t["method"], t["npc"]) == (method, npc))
        rows.append(dict(method=method, npc=npc, runs="longer runs", done=done,
                         least=1 if ahead else 0, most=len(ahead),
                         least_steps=ahead[0] * steps[(method, npc)] if ahead else 0,
                         most_steps=sum(ahead) * steps[(method, npc)]))
    for row in rows:
        if row["runs"] != "longer runs":
            row.update(least_steps=row["least"] * steps[(row["method"], row["npc"])],
                       most_steps=row["most"] * steps[(row["method"], row["npc"])])
    return rows


def seconds_per_step(found: dict | None) -> dict[tuple[str, int], float]:
    """Per (method, NPC) of a search's results, the worker-seconds its runs took per
    optimizer step (their seconds over their steps): what a plan's steps cost on that
    machine."""
    totals: dict[tuple[str, int], list[float]] = {}
    for trial in (found or {}).get("trials", []):
        spent = totals.setdefault((trial["method"], trial["npc"]), [0.0, 0])
        spent[0] += trial["seconds"]
        spent[1] += trial["steps"]
    return {key: seconds / steps for key, (seconds, steps) in totals.items() if steps}


def compare(configs: list[tuple[str, FinetuneConfig]], workers: int = 1,
            report: Callable[[dict], None] | None = None) -> list[dict]:
    """Train every (method, config) of `configs` (finished runs are read back), `workers` at
    a time, and score each run's best validation epoch once on the test images. One row per
    run, in the order of `configs`: trial_row's fields (the validation curve, the best epoch
    and its training top-1) with test_top1, test_images and run_dir; `report(row)` is called
    on each as its run ends (with workers, in the order they end)."""
    rows: dict[int, dict] = {}

    def score(index: int) -> None:
        method, config = configs[index]
        result = finetune(config, resume="auto")
        row = trial_row(method, result.config, result.metrics)
        row.update(test_top1=best_epoch_test_top1(result.run_dir, config.device),
                   test_images=len(finetune_sets(config)[2]),
                   run_dir=str(result.run_dir.resolve()))
        rows[index] = row
        if report is not None:
            report(row)

    if workers > 1:
        train_all([config for _, config in configs], workers, finished=score)
    else:
        for index in range(len(configs)):
            score(index)
    return [rows[index] for index in range(len(configs))]


def run_search(configs: list[tuple[str, FinetuneConfig]], store: TrialStore, workers: int = 1,
               report: Callable[[dict], None] | None = None) -> list[dict]:
    """Search every (method, config) of `configs` (search_configs: each method at each NPC in
    each recipe), `workers` of them at a time (each with its share of the CPU threads), and
    lengthen a (method, NPC)'s choice as soon as all its recipes are searched (so a worker
    never waits on the other methods' searches); trials found in `store` or finished in
    runs_dir are read back. Returns every trial, the longer runs included, each (method,
    NPC)'s as it finishes; `report(trial)` is called on each. Refuses, before training
    anything, a store whose trials are not as long as `configs` (check_lengths) or computed
    in another precision (check_precision)."""
    stored = store.read()["trials"]
    check_lengths(stored, configs)
    check_precision(stored, configs)
    groups: dict[tuple[str, int], list[FinetuneConfig]] = {}
    for method, config in configs:
        groups.setdefault((method, config.npc), []).append(config)
    trials = []
    with worker_pool(workers) as pool:
        searching = {pool.submit(_search_one, method, config, store.path, store.header):
                     (method, config.npc) for method, config in configs}
        left = {key: len(group) for key, group in groups.items()}
        pending = set(searching)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                finished = future.result()  # a failed worker stops the study with its error
                if future in searching:
                    key = searching[future]
                    left[key] -= 1
                    if not left[key]:
                        pending.add(pool.submit(_lengthen_one, key[0], groups[key][0],
                                                store.path, store.header))
                    continue
                trials += finished
                for trial in finished:
                    if report is not None:
                        report(trial)
    return trials


def store_run(method: str, store: TrialStore, config: FinetuneConfig,
              fields: dict | None = None, **longer) -> dict:
    """The trial row of `config`'s run: read back from the store, or trained (a finished run
    read back from runs_dir) and added with `fields` (what the caller's study records beside
    trial_row's); a run stopped by a non-finite loss is recorded as diverged with its curve
    so far."""
    found = store.find(run_name(config))
    if found is not None:
        return found
    try:
        result = finetune(config, resume="auto")
        trial = trial_row(method, result.config, result.metrics, **longer)
    except NonFiniteLossError as error:
        trial = trial_row(method, config, read_metrics(error.run_dir), non_finite=True,
                          **longer)
    trial = {**trial, **(fields or {})}
    store.add(trial)
    return trial


def _search_one(method: str, base: FinetuneConfig, path: Path, header: dict) -> list[dict]:
    store = TrialStore(path, header)
    return search_method(base, lambda config: store_run(method, store, config))


def _lengthen_one(method: str, searched: FinetuneConfig, path: Path,
                  header: dict) -> list[dict]:
    """Every trial of (method, searched.npc), after running the longer runs its choice needs:
    twice the chosen run's steps, doubled again while the longer run wins (`lengthening`)."""
    store = TrialStore(path, header)

    def group() -> list[dict]:
        return [t for t in store.read()["trials"] if (t["method"], t["npc"]) ==
                (method, searched.npc)]

    pick = choose(group())[(method, searched.npc)]
    while pick["next"] is not None:
        chosen = searched.replace(**recipe_settings(method, pick["recipe"]), lr=pick["lr"])
        store_run(method, store, longer_config(chosen, pick["next"]), longer_of=pick["run"],
                   multiple=pick["next"])
        pick = choose(group())[(method, searched.npc)]
    return group()
