"""Run the converged search (apl_core.search): every trained method of notebook 04 with its
field's recipe, with and without the small-data regularisation, its learning rate bracketed
until the best has a finite, worse neighbour on each side, its choice run again at twice the
steps (and more while the longer run wins the paired test).

    python experiments/converged_search.py --profile quick --workers 2 --npcs 10 30 \\
        --out apl_core/results/in_progress/quick_small_data_search.json

Pretrains the profile's model with seed 0 (read back when finished), then searches every
(method, NPC, recipe) on the labelled images of seed 0, scoring on the validation part only
(the test set is never evaluated). Every finished trial (settings, validation curve, best
epoch and which validation images it got right) is written at once to the results file
(--out; by default apl_core/results/<profile>_converged_search.json), so a stopped search
resumes trial by trial from that file, or from the runs in --runs-dir. As soon as both recipes
of a (method, NPC) are searched, its choice is run at twice its steps, and doubled again while
the longer run is better on the same validation images (exact McNemar, one-sided, 0.05), up
to 8 times. Prints each (method, NPC)'s trials as it finishes, then docs/results.md's table.

--dry-run prints the plan instead (every search, what the results file already holds, the
runs and optimizer steps left, and the worker-hours they took in a reference search) and
trains nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from apl_core import report, search, trial_store  # noqa: E402
from apl_core.config import PROFILES, profile_config, profile_npcs  # noqa: E402
from apl_core.device import resolve_device  # noqa: E402
from apl_core.results import how_it_ran  # noqa: E402
from apl_core.rundir import run_name  # noqa: E402
from apl_core.tables import markdown_table  # noqa: E402
from apl_core.train import pretrain  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=list(PROFILES),
                        help="the profile whose settings and max_steps the runs take "
                             "(default: quick)")
    parser.add_argument("--runs-dir", default="runs/search",
                        help="where the runs go (default: runs/search)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--workers", type=int, default=1,
                        help="searches run at a time, sharing the CPU threads (default: 1)")
    parser.add_argument("--npcs", type=int, nargs="+", default=None,
                        help="the NPCs to search (default: the profile's sweep)")
    parser.add_argument("--methods", nargs="+", default=list(search.METHODS),
                        choices=search.METHODS, metavar="METHOD",
                        help="the methods to search (default: all)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="STEPS",
                        help="every run's optimizer steps at --npcs instead of the profile's "
                             "max_steps: a study of a longer maximum, written with --out to "
                             "its own file until the profile adopts it")
    parser.add_argument("--out", default="",
                        help="the results file (default: apl_core/results/"
                             "<profile>_converged_search.json)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and its cost, train nothing")
    parser.add_argument("--reference", default="",
                        help="the search whose per-step seconds --dry-run's cost estimate "
                             "uses (default: the profile's committed search)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: give 1 or more")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps {args.max_steps}: give a positive number of steps")
    searchable = PROFILES[args.profile].get("max_steps") or {}
    for npc in args.npcs or ():
        if npc < 1:
            parser.error(f"--npcs {npc}: an NPC is a positive number of images per class")
        if args.max_steps is None and npc not in searchable:
            parser.error(f"--npcs {npc}: the {args.profile!r} profile has no max_steps at NPC "
                         f"{npc} (it has {sorted(searchable) or 'none'}); give --max-steps "
                         f"for a study at another NPC")
    if args.max_steps is None and not searchable:
        parser.error(f"the {args.profile!r} profile has no max_steps for a search: give "
                     f"--max-steps, or choose a profile with them")
    return args


def plan_table(rows: list[dict], rates: dict[tuple[str, int], float]) -> list[dict]:
    """search.search_plan's rows as a table, with the worker-hours left at `rates` (seconds
    per step; '?' where the reference has no run of that method at that NPC)."""
    def hours(row: dict) -> str:
        rate = rates.get((row["method"], row["npc"]))
        if rate is None:
            return "?"
        return f"{row['least_steps'] * rate / 3600:.1f}-{row['most_steps'] * rate / 3600:.1f}"

    return [{"method": row["method"], "NPC": row["npc"], "runs": row["runs"],
             "done": row["done"], "runs left": f"{row['least']}-{row['most']}",
             "steps left": f"{row['least_steps']:,}-{row['most_steps']:,}",
             "worker-hours left": hours(row)} for row in rows]


def main(argv=None) -> None:
    args = parse_args(argv)
    device = str(resolve_device(args.device))
    npcs = args.npcs or list(profile_npcs(args.profile))
    steps = {npc: args.max_steps for npc in npcs} if args.max_steps else {}
    settings = dict(runs_dir=args.runs_dir, device=device, quiet=True)
    pretraining = profile_config(args.profile, "pretrain", seed=0, **settings)
    pretrain_run = Path(args.runs_dir) / "pretrain" / run_name(pretraining)
    header = {
        "profile": args.profile, "seed": 0, "pretrain_run": pretrain_run.name,
        "protocol": {"trials": search.TRIALS, "extra_trials": search.EXTRA_TRIALS,
                     "spacing": search.SPACING, "start_rates": search.START_RATES,
                     "recipes": search.RECIPES, "small_data": search.SMALL_DATA,
                     "method_recipes": search.METHOD_RECIPES,
                     "max_steps": {str(k): v for k, v in
                                   {**(PROFILES[args.profile].get("max_steps") or {}),
                                    **steps}.items()},
                     "evaluations": search.EVALUATIONS, "chance_noise": search.CHANCE_NOISE,
                     "longest": search.LONGEST, "alpha": search.ALPHA},
        **how_it_ran("experiments/converged_search.py", argv, device, args.workers),
    }
    store = trial_store.TrialStore(
        Path(args.out) if args.out else trial_store.search_path(args.profile), header)
    if args.dry_run:
        configs = search.search_configs(args.profile, str(pretrain_run), npcs, args.methods,
                                        steps, pretrained=pretraining, **settings)
        reference = trial_store.load_search(args.profile, args.reference or None)
        rows = search.search_plan(configs, store.read()["trials"])
        table = plan_table(rows, search.seconds_per_step(reference))
        state = ("not needed: APL fine-tune is not searched"
                 if "APL fine-tune" not in args.methods
                 else "finished" if (pretrain_run / "last.pt").exists() else "to train first")
        print(f"the plan of {store.path} ({'exists' if store.path.exists() else 'new'}); "
              f"pretraining {pretrain_run} ({state})")
        print(markdown_table(table))
        rates = search.seconds_per_step(reference)
        least, most = (sum(row[key] for row in rows) for key in ("least", "most"))
        hours = [sum(row[steps] * rates.get((row["method"], row["npc"]), 0) for row in rows)
                 / 3600 for steps in ("least_steps", "most_steps")]
        print(f"\n{least}-{most} runs left, {hours[0]:.1f}-{hours[1]:.1f} worker-hours at one "
              f"thread each ({hours[0] / args.workers:.1f}-{hours[1] / args.workers:.1f} hours "
              f"with {args.workers} worker(s)), at the seconds per step of "
              f"{args.reference or trial_store.search_path(args.profile)} for each method and NPC "
              f"(its runs used the base recipe: the small-data recipe's augmentation costs "
              f"more, not measured there); the pretraining, when it is still to train and "
              f"APL fine-tune is searched, comes first")
        return
    # Only APL fine-tune reads the pretraining: a search of the other methods starts at once.
    if "APL fine-tune" in args.methods:
        pretrain(pretraining, resume="auto")
    store.write_header()
    configs = search.search_configs(args.profile, str(pretrain_run), npcs, args.methods,
                                    steps, pretrained=pretraining, **settings)

    def print_trial(trial):
        kind = (f"{trial['multiple']}x" if "multiple" in trial
                else f"{trial.get('recipe', 'base')}")
        diverged = f"  diverged: {trial['diverged']}" if trial.get("diverged") else ""
        print(f"NPC {trial['npc']:>4}  {trial['method']:<22} {kind:<10} lr {trial['lr']:<8g} "
              f"best epoch {trial['best_epoch']:>3}/{trial['epochs']:<3}  val top-1 "
              f"{trial['val_top1']:.1%}  train top-1 {trial['train_top1']:.1%}  "
              f"{trial['seconds']:.0f} s{diverged}", flush=True)

    search.run_search(configs, store, args.workers, print_trial)
    trials = store.read()["trials"]
    print(f"\n{len(trials)} runs, {sum(t['seconds'] for t in trials) / 3600:.2f} run-hours at "
          f"{header['threads_per_run']} thread(s) each on {header['machine']}; in {store.path}")
    print(markdown_table(report.search_table(trials, report.validation_images(args.profile))))
    for (method, npc), pick in search.choose(trials).items():
        if "flag" in pick:
            print(f"flagged: {method} at NPC {npc}: {pick['flag']}")


if __name__ == "__main__":
    main()
