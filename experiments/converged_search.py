"""Run the converged search (apl_core.search): every trained method of notebook 04 with its
field's recipe, five learning rates bracketed until the best is interior, the length read
off each run's validation curve.

    python experiments/converged_search.py --profile quick --workers 2 --npcs 10 30 100

Pretrains the profile's model with seed 0 (read back when finished), then searches every
(method, NPC) on the labelled images of seed 0, scoring on the validation part only (the test
set is never evaluated). Every finished trial (settings, validation curve, best epoch) is
written at once to apl_core/results/<profile>_converged_search.json, so a stopped search
resumes trial by trial from that file, or from the runs in --runs-dir. Prints each trial, then
docs/results.md's table: per (method, NPC) the choice and where it sits in its searched range.
A choice whose best epoch falls in its run's last fifth is run again twice as long as soon as
its own search ends (the late check), and the doubled run's best validation top-1 is compared
with the choice's, within the validation part's noise.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from apl_core import report, search  # noqa: E402
from apl_core.config import profile_config, profile_npcs  # noqa: E402
from apl_core.device import measured_on, resolve_device  # noqa: E402
from apl_core.results import recorded_command  # noqa: E402
from apl_core.tables import markdown_table  # noqa: E402
from apl_core.train import pretrain  # noqa: E402

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--runs-dir", default="runs/search")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1,
                        help="(method, NPC) searches run at a time, sharing the CPU threads")
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
    args = parser.parse_args(argv)
    device = str(resolve_device(args.device))
    npcs = args.npcs or list(profile_npcs(args.profile))
    steps = {npc: args.max_steps for npc in npcs} if args.max_steps else {}
    settings = dict(runs_dir=args.runs_dir, device=device, quiet=True)
    run = pretrain(profile_config(args.profile, "pretrain", seed=0, **settings), resume="auto")
    header = {
        "profile": args.profile, "seed": 0, "pretrain_run": run.run_dir.name,
        "protocol": {"trials": search.TRIALS, "spacing": search.SPACING,
                     "start_rates": search.START_RATES, "recipes": search.RECIPES,
                     "method_recipes": search.METHOD_RECIPES,
                     "max_steps": {str(k): v for k, v in
                                   {**search.max_steps(args.profile), **steps}.items()},
                     "evaluations": search.EVALUATIONS, "late_fraction": search.LATE_FRACTION},
        **measured_on(device),
        "date": datetime.date.today().isoformat(), "workers": args.workers,
        "threads_per_run": max(1, torch.get_num_threads() // args.workers),
        "command": recorded_command(["python", "experiments/converged_search.py",
                                     *(sys.argv[1:] if argv is None else argv)]),
    }
    store = search.TrialStore(Path(args.out) if args.out else search.search_path(args.profile),
                               header)
    store.write_header()
    configs = search.search_configs(args.profile, str(run.run_dir), npcs, args.methods,
                                    steps, **settings)

    def print_trial(trial):
        print(f"NPC {trial['npc']:>4}  {trial['method']:<22} lr {trial['lr']:<8g} best epoch "
              f"{trial['best_epoch']:>3}/{trial['epochs']:<3}  val top-1 {trial['val_top1']:.1%}"
              f"  train top-1 {trial['train_top1']:.1%}  {trial['seconds']:.0f} s", flush=True)

    search.run_search(configs, store, args.workers, print_trial)
    trials = store.read()["trials"]
    print(f"\n{len(trials)} runs, {sum(t['seconds'] for t in trials) / 3600:.2f} run-hours at "
          f"{header['threads_per_run']} thread(s) each on {header['machine']}; in {store.path}")
    print(markdown_table(report.search_table(trials, report.validation_images(args.profile))))


if __name__ == "__main__":
    main()
