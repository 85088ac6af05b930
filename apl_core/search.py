"""The converged search: every trained method of notebook 04 with its field's recipe, its
learning rate searched on a log scale until the best one lies inside the searched range, and
its length read off the validation curve.

    RECIPES          the optimizer, schedule and regularisation of each kind of model
    START_RATES      the rate each method's search starts from (its recipe's usual rate)
    searched_config  a method's config at one NPC: its recipe, max_steps long, validated often
    initial_rates / next_rate   the learning-rate bracket
    search_method    one (method, NPC): TRIALS runs, the next rate chosen from the last ones
    trial_row        what a finished run contributes: its validation curve and best epoch
    choose           per (method, NPC) the best (rate, epoch), and where each sits in its range
    keyed_choices    the same, keyed 'method|NPC' for a results file's header
    check_lengths    every trial of a (method, NPC) as long as the profile now makes its runs
    check_finished   every (method, NPC) searched to the end before a study uses its choice
    adopt_study      a finished study of another length at some NPCs, folded into the results
    TrialStore / run_search     the results file, and every (method, NPC) searched in parallel,
                                each with its late check as soon as its own search ends
    doubled_config   a late choice's run doubled, to show its curve flat
    late_check       whether a doubled run is flat or still rising, against the noise
    load_search / chosen_configs       the committed search, and every method at its choice
    compare          train chosen configs and score each run's best epoch once on the test set

The protocol is the same for every method at a given NPC: TRIALS runs of the same number of
optimizer steps (the profile's max_steps for that NPC), each validated about 20 times along
the way, keeping the weights of its best validation epoch (select_best). The first three
rates are the method's start rate times 10^-0.5, 1 and 10^0.5; each further rate extends the
range past an edge that holds the best rate, or else halves the log-distance between the best
rate and its better neighbour. The test set is never evaluated here (evaluate_test=False).
A choice whose best epoch falls in the last fifth of its run is checked by running it again
twice as long (`run_search`, `doubled_config`): the doubled run is flat when it gains no more
validation top-1 than the validation set's noise, and still rising (the run was too short)
otherwise.

A hand-written bracket rather than a general optimiser (Optuna's TPE, Hyperband): one
variable on a log scale with five trials is a line search, and a bracket that moves toward an
edge winner guarantees what the experiment needs (an interior best rate) where five samples of
TPE do not; pruning runs early would judge them before their cosine schedule has annealed,
which favours fast starters, and the length is chosen from each full validation curve anyway.
Resuming trial by trial needs no database either: finished trials are read back from the
results file (and finished runs from runs_dir).
"""
from __future__ import annotations

import fcntl
import json
import math
import shlex
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .comparison import METHODS, method_config, train_all, worker_pool
from .config import PROFILES, FinetuneConfig
from .data import finetune_sets
from .device import computed_in
from .results import RESULTS_DIR, load_results, recorded_command, write_results
from .rundir import run_name
from .stats import sampling_noise
from .train import best_epoch_test_top1, finetune, load_pretrained


# Transformers, pretrained or not: AdamW with decoupled weight decay 0.05, linear warm-up over
# the first 10 % of the steps, cosine decay to zero stepped per batch, gradients clipped at
# norm 1 (DeiT's and MAE's fine-tuning recipe, without their augmentation stack). CNNs: SGD
# with Nesterov momentum 0.9, weight decay 5e-4, a short warm-up and cosine decay to zero (the
# standard ResNet recipe on small images).
RECIPES = {
    "transformer": dict(optimizer="adamw", weight_decay=0.05, warmup_frac=0.1,
                        warmup_start=0.01, final_lr_frac=0.0, schedule_per_step=True,
                        grad_clip=1.0),
    "cnn": dict(optimizer="sgd", weight_decay=5e-4, warmup_frac=0.05, warmup_start=0.1,
                final_lr_frac=0.0, schedule_per_step=True, grad_clip=0.0),
}
METHOD_RECIPES = {"APL fine-tune": "transformer", "BENCHMARK": "transformer",
                  "BENCHMARK + positions": "transformer", "S-CNN": "cnn",
                  "S-ResNet-18": "cnn"}
# Fine-tuning a pretrained transformer starts lower than training one from scratch; SGD's
# rates are an order of magnitude above Adam's (0.1 at batch 128 scaled to batch 32).
START_RATES = {"APL fine-tune": 1e-4, "BENCHMARK": 3e-4, "BENCHMARK + positions": 3e-4,
               "S-CNN": 0.03, "S-ResNet-18": 0.03}
TRIALS = 5
SPACING = 10 ** 0.5  # the first rates are half a decade apart
EVALUATIONS = 20  # validation points per run, at least
LATE_FRACTION = 0.8  # a best epoch past this share of the run says the run was too short
PROVENANCE = ("command", "machine", "precision", "torch", "date")  # what a results file ran on


def epochs_for_steps(steps: int, config: FinetuneConfig) -> int:
    """Whole epochs of config's labelled images (npc per class, batch_size) that make at
    least `steps` optimizer steps."""
    steps_per_epoch = math.ceil(config.npc * config.num_classes / config.batch_size)
    return math.ceil(steps / steps_per_epoch)


def searched_config(base: FinetuneConfig, method: str, max_steps: int) -> FinetuneConfig:
    """`base` (the method's config at one NPC) with the method's recipe, max_steps long,
    validated at least EVALUATIONS times, keeping its best validation epoch, test unseen."""
    if method not in METHOD_RECIPES:
        raise ValueError(f"method={method!r} is not searched: choose from {METHODS}")
    epochs = epochs_for_steps(max_steps, base)
    return base.replace(**RECIPES[METHOD_RECIPES[method]], lr=START_RATES[method],
                        epochs=epochs, eval_every=max(1, epochs // EVALUATIONS),
                        select_best=True, evaluate_test=False)


def _rate(value: float) -> float:
    return float(f"{value:.3g}")


def initial_rates(start: float) -> list[float]:
    return [_rate(start / SPACING), _rate(start), _rate(start * SPACING)]


def best_trial(trials: list[dict]) -> dict:
    """The trial with the highest validation top-1; among equals the first tried."""
    best = trials[0]
    for trial in trials[1:]:
        if trial["val_top1"] > best["val_top1"]:
            best = trial
    return best


def next_rate(trials: list[dict]) -> float:
    """The rate to try next: past the edge that holds the best rate, or else halfway (on a
    log scale) between the best rate and its better neighbour."""
    rates = sorted(trial["lr"] for trial in trials)
    score = {trial["lr"]: trial["val_top1"] for trial in trials}
    best = best_trial(trials)["lr"]
    i = rates.index(best)
    if i == 0:
        return _rate(best / SPACING)
    if i == len(rates) - 1:
        return _rate(best * SPACING)
    lower, higher = rates[i - 1], rates[i + 1]
    neighbour = higher if score[higher] > score[lower] else lower
    return _rate(math.sqrt(best * neighbour))


def search_method(base: FinetuneConfig, run_trial: Callable[[FinetuneConfig], dict],
                  trials: int = TRIALS) -> list[dict]:
    """Every trial of one (method, NPC), in the order tried: `base` (a searched_config) at
    the three initial rates around base.lr, then at next_rate until `trials` are done."""
    done = [run_trial(base.replace(lr=rate)) for rate in initial_rates(base.lr)]
    while len(done) < trials:
        done.append(run_trial(base.replace(lr=next_rate(done))))
    return done


def doubled_config(config: FinetuneConfig) -> FinetuneConfig:
    """The late check: the same run twice as long, validated as often per run."""
    epochs = 2 * config.epochs
    return config.replace(epochs=epochs, eval_every=max(1, epochs // EVALUATIONS))


def trial_row(method: str, config: FinetuneConfig, metrics: list[dict],
              doubled_of: str = "") -> dict:
    """A finished run as the search records it: its settings, its validation curve, its
    best validation epoch (the first of equals) with the training top-1 of that epoch, and
    what it computed in here (sessions on other machines may differ: 'auto' is bf16 on a CPU
    with fast bf16, fp32 elsewhere).
    doubled_of: the chosen run this one doubles (a late check, not a trial of the search)."""
    evaluated = [row for row in metrics if "val_top1" in row]
    if not evaluated:
        raise ValueError(f"run {config.run_name or run_name(config)} has no validation "
                         f"evaluation: a searched run needs val_per_class > 0")
    best = evaluated[0]
    for row in evaluated[1:]:
        if row["val_top1"] > best["val_top1"]:
            best = row
    return dict(method=method, npc=config.npc, lr=config.lr, epochs=config.epochs,
                steps=metrics[-1]["step"], best_epoch=best["epoch"], best_step=best["step"],
                val_top1=best["val_top1"], train_top1=best["train_top1"],
                val_curve=[[row["epoch"], row["val_top1"]] for row in evaluated],
                seconds=sum(row["epoch_time_s"] for row in metrics),
                precision=computed_in(config.precision, config.device),
                run=config.run_name or run_name(config),
                **({"doubled_of": doubled_of} if doubled_of else {}))


def choose(trials: list[dict]) -> dict[tuple[str, int], dict]:
    """Per (method, NPC): the best trial's rate and epoch, its validation and training top-1,
    the rates searched, where the chosen rate sits among them ('lowest', 'interior',
    'highest') and whether its best epoch falls in the last fifth of the run (`late`); for
    a late choice whose run was doubled (`doubled_config`), the doubled run's best epoch
    and validation top-1 (`doubled`)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    doubles = {t["doubled_of"]: t for t in trials if "doubled_of" in t}
    for trial in trials:
        if "doubled_of" not in trial:
            groups.setdefault((trial["method"], trial["npc"]), []).append(trial)
    check_lengths(trials)
    chosen = {}
    for key, group in groups.items():
        best = best_trial(group)
        rates = sorted(trial["lr"] for trial in group)
        position = ("lowest" if best["lr"] == rates[0] else
                    "highest" if best["lr"] == rates[-1] else "interior")
        chosen[key] = dict(lr=best["lr"], epochs=best["epochs"], best_epoch=best["best_epoch"],
                           val_top1=best["val_top1"], train_top1=best["train_top1"],
                           rates=rates, rate_position=position,
                           late=best["best_epoch"] > LATE_FRACTION * best["epochs"],
                           run=best["run"])
        if best["run"] in doubles:
            double = doubles[best["run"]]
            chosen[key]["doubled"] = {k: double[k] for k in ("epochs", "best_epoch",
                                                             "val_top1", "run")}
    return chosen


def keyed_choices(trials: list[dict]) -> dict[str, dict]:
    """`choose`'s choices keyed 'method|NPC', as a seeds file's header records them (JSON keys
    are strings)."""
    return {f"{method}|{npc}": pick for (method, npc), pick in choose(trials).items()}


def late_check(pick: dict, val_images: int) -> dict | None:
    """The late check of a choice (`choose`) whose run was doubled: the doubled run's gain in
    validation top-1, the noise of that gain on `val_images` validation images
    (stats.sampling_noise), and whether it is still rising (beyond the noise: the choice's run
    was too short to converge); None for a choice whose run was not doubled."""
    double = pick.get("doubled")
    if not double:
        return None
    gain = double["val_top1"] - pick["val_top1"]
    noise = sampling_noise(pick["val_top1"], val_images)
    return {"gain": gain, "noise": noise, "still_rising": gain > noise}


def check_lengths(trials: list[dict], configs: list[tuple[str, FinetuneConfig]] = ()) -> None:
    """Refuse trials of one (method, NPC) that differ in length, among themselves or from the
    searched `configs`: the profile's max_steps changed since some of them ran, and a choice
    among runs of different lengths would not compare like with like."""
    lengths = {(method, config.npc): config.epochs for method, config in configs}
    for trial in trials:
        if "doubled_of" in trial:
            continue
        length = lengths.setdefault((trial["method"], trial["npc"]), trial["epochs"])
        if trial["epochs"] != length:
            raise ValueError(
                f"the search's {trial['method']} runs at NPC {trial['npc']} differ in length: "
                f"{trial['run']} has {trial['epochs']} epochs where {length} are searched. The "
                f"profile's max_steps changed since it ran: remove that NPC's trials (and their "
                f"doubled runs) from the results file, or give --out a new file, and search "
                f"that NPC again (git keeps the old trials)")


def late_runs(trials: list[dict]) -> list[str]:
    """The chosen runs whose best epoch is late and that have no doubled run yet."""
    return [pick["run"] for pick in choose(trials).values()
            if pick["late"] and "doubled" not in pick]


def check_finished(trials: list[dict], npcs, profile: str) -> None:
    """Refuse a search that is not finished at `npcs`: a (method, NPC) with fewer than TRIALS
    trials, or a late choice not yet doubled. A study that trained on a half-made choice
    would have to be thrown away when the search moves on."""
    counts = Counter((t["method"], t["npc"]) for t in trials
                     if "doubled_of" not in t and t["npc"] in npcs)
    short = [f"{method} at NPC {npc} has {count} of {TRIALS} trials"
             for (method, npc), count in counts.items() if count < TRIALS]
    late = set(late_runs([t for t in trials if t["npc"] in npcs]))
    short += [f"{t['method']} at NPC {t['npc']}'s late choice is not doubled yet"
              for t in trials if t["run"] in late]
    if short:
        raise ValueError(f"the search is not finished: {'; '.join(short)}. Run "
                         f"experiments/converged_search.py --profile {profile} again (it resumes "
                         f"where it stopped), then this")


class TrialStore:
    """The search's results file: a header and every finished trial, rewritten after each
    trial under a lock (several processes add to it), so that a stopped search resumes trial
    by trial, also from a committed file on another machine."""

    def __init__(self, path: str | Path, header: dict):
        self.path = Path(path)
        self.header = header

    def read(self) -> dict:
        if not self.path.exists():
            return {**self.header, "trials": []}
        try:
            results = json.loads(self.path.read_text())
            trials = results["trials"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{self.path} is not a search results file ({error!r}); restore "
                             f"it with git checkout, or delete it to search from scratch")
        return {**results, "trials": trials}

    def find(self, run: str) -> dict | None:
        return next((t for t in self.read()["trials"] if t["run"] == run), None)

    def add(self, trial: dict) -> None:
        self._update(lambda trials: [t for t in trials if t["run"] != trial["run"]] + [trial])

    def write_header(self) -> None:
        """This process's header over the file's, every row kept: the file names the last
        command run over it, which (reading every finished row and run back) reproduces all
        of it, also when a study's rows were made by several narrower commands before it."""
        self._update(lambda trials: trials)

    def _update(self, change: Callable[[list[dict]], list[dict]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            results = self.read()
            results.update(self.header, trials=change(results["trials"]))
            write_results(self.path, results)


def adopt_study(committed: dict, study: dict, npcs) -> dict:
    """`committed` (a search's or a seeds study's results) with its rows at `npcs` replaced by
    `study`'s (the same kind of file, from a search of another length at those NPCs, run with
    --max-steps and --out), the study's max_steps there, and the study's provenance (command,
    its paths in the repository made relative, machine, torch, date) listed in `studies`: the
    results as one search at the new lengths."""
    npcs = set(npcs)
    missing = sorted(npcs - {row["npc"] for row in study["trials"]})
    if missing:
        raise ValueError(f"the study has no rows at NPC {missing}: it cannot replace them")
    adopted = {**committed,
               "trials": [row for row in committed["trials"] if row["npc"] not in npcs]
               + [row for row in study["trials"] if row["npc"] in npcs],
               "studies": [s for s in committed.get("studies", []) if not set(s["npcs"]) <= npcs]
               + [{"npcs": sorted(npcs), **{key: study[key] for key in PROVENANCE
                                            if key in study},
                   "command": recorded_command(shlex.split(study["command"]))}]}
    if "protocol" in committed:
        steps = {**committed["protocol"]["max_steps"],
                 **{str(npc): study["protocol"]["max_steps"][str(npc)] for npc in npcs}}
        adopted["protocol"] = {**committed["protocol"], "max_steps": steps}
    return adopted


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
                   steps: dict[int, int] | None = None,
                   **settings) -> list[tuple[str, FinetuneConfig]]:
    """(method, searched_config) for every method at every NPC, NPC by NPC: the profile's
    fine-tuning settings with the labels of settings' seed (as notebook 04), the method's
    recipe at its start rate, and the profile's max_steps at that NPC (`run_steps`), or
    `steps`' where it names the NPC (a study of a longer maximum, run to its own results file
    before the profile adopts it)."""
    _, pretrained = load_pretrained(pretrain_run, runs_dir=settings.get("runs_dir", "runs"))
    configs = []
    for npc in npcs:
        for method in methods:
            base = method_config(method, npc, profile, pretrain_run, pretrained, **settings)
            if not base.val_per_class:
                raise ValueError(f"the {profile!r} profile has no validation part to choose "
                                 f"an epoch on: give val_per_class > 0")
            length = (steps or {}).get(npc) or run_steps(profile, base)
            configs.append((method, searched_config(base, method, length)))
    return configs


def search_path(profile: str) -> Path:
    return RESULTS_DIR / f"{profile}_converged_search.json"


def load_search(profile: str, path: str | Path | None = None) -> dict | None:
    """The committed converged search of `profile` (experiments/converged_search.py), or the
    one at `path` (a study's own file), or None where there is none."""
    return load_results(Path(path) if path else search_path(profile), "converged search",
                        {"profile", "trials"},
                        f"python experiments/converged_search.py --profile {profile}")


def chosen_configs(profile: str, pretrain_run: str, npcs, methods=METHODS,
                   found: dict | None = None, **settings) -> list[tuple[str, FinetuneConfig]]:
    """(method, config) for every method at every NPC: its searched config, as long as the
    search ran it (its header's max_steps), at the rate the search chose (with settings' seed,
    the very run the search kept for seed 0), or at its recipe's start rate where the search
    has no choice (a profile without a committed search, an NPC it did not search). `found`:
    a search's results (a study's own file); by default the profile's committed search."""
    found = found if found is not None else load_search(profile) or {}
    chosen = choose(found["trials"]) if found else {}
    steps = {int(npc): n for npc, n in found.get("protocol", {}).get("max_steps", {}).items()}
    return [(method, config.replace(lr=chosen[(method, config.npc)]["lr"])
             if (method, config.npc) in chosen else config)
            for method, config in search_configs(profile, pretrain_run, npcs, methods, steps,
                                                 **settings)]


def compare(configs: list[tuple[str, FinetuneConfig]], workers: int = 1,
            report: Callable[[dict], None] | None = None) -> list[dict]:
    """Train every (method, config) of `configs` (finished runs are read back), `workers` at
    a time, and score each run's best validation epoch once on the test images. One row per
    run, in order: trial_row's fields (the validation curve, the best epoch and its training
    top-1) with test_top1, test_images and run_dir; `report(row)` is called after each."""
    if workers > 1:
        train_all([config for _, config in configs], workers)
    rows = []
    for method, config in configs:
        result = finetune(config, resume="auto")
        row = trial_row(method, result.config, result.metrics)
        row.update(test_top1=best_epoch_test_top1(result.run_dir, config.device),
                   test_images=len(finetune_sets(config)[2]),
                   run_dir=str(result.run_dir.resolve()))
        rows.append(row)
        if report is not None:
            report(row)
    return rows


def run_search(configs: list[tuple[str, FinetuneConfig]], store: TrialStore, workers: int = 1,
               report: Callable[[dict], None] | None = None) -> list[dict]:
    """Search every (method, config) of `configs`, `workers` of them at a time (each with its
    share of the CPU threads), and double a late choice's run as soon as its own search ends
    (so a worker never waits on the other methods' searches for its late check); trials found
    in `store` or finished in runs_dir are read back. Returns every trial, the doubled runs
    included; `report(trial)` is called as each (method, NPC) finishes. Refuses, before
    training anything, a store whose trials are not as long as `configs` (check_lengths)."""
    check_lengths(store.read()["trials"], configs)
    trials = []
    with worker_pool(workers) as pool:
        futures = [pool.submit(_search_one, method, config, store.path, store.header)
                   for method, config in configs]
        for future in futures:
            for trial in future.result():
                trials.append(trial)
                if report is not None:
                    report(trial)
    return trials


def _search_one(method: str, base: FinetuneConfig, path: Path, header: dict) -> list[dict]:
    store = TrialStore(path, header)

    def run_trial(config: FinetuneConfig, doubled_of: str | None = None) -> dict:
        found = store.find(run_name(config))
        if found is not None:
            return found
        result = finetune(config, resume="auto")
        trial = trial_row(method, result.config, result.metrics, doubled_of=doubled_of)
        store.add(trial)
        return trial

    trials = search_method(base, run_trial)
    pick = choose(trials)[(method, base.npc)]
    if pick["late"]:
        trials.append(run_trial(doubled_config(base.replace(lr=pick["lr"])),
                                doubled_of=pick["run"]))
    return trials
