"""Run the pretext study (apl_core.pretext_study, notebook 07): APL against rotation, jigsaw,
MAE and MP3 on the same transformer, images, image-epochs and seeds.

    python experiments/pretext_study.py --profile quick --seeds 0 1 2 --workers 2

For each task and seed: pretrain with the profile's pretraining (notebook 02's images, epochs
and seed; APL's runs are notebook 02's and the converged experiment's, read back from
--runs-dir when they are there), then judge the frozen features with the one linear probe and
kNN at every NPC of the profile, and record the task's held-out curve, its seconds per epoch
and the budget curve (probe and kNN after every epoch). Then fine-tune at NPC 10 with the
converged search's base recipe: each task's learning rate bracketed on seed 0
(apl_core.search), the chosen rate run on every seed and its best validation epoch scored
once on the test images; MP3 is fine-tuned with and without positional embeddings added.
Every finished row is written at once to the results file (--out; by default
apl_core/results/<profile>_pretext_study.json) under a lock, so a stopped study resumes row by
row. Prints the tables at the end: each task's means, and its paired differences against APL
with the difference the seeds and the test set can detect.

--dry-run prints the plan (every pretraining and fine-tuning, and what the results file holds)
and trains nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from apl_core import pretext_study  # noqa: E402
from apl_core.config import PROFILES  # noqa: E402
from apl_core.device import resolve_device  # noqa: E402
from apl_core.results import how_it_ran  # noqa: E402
from apl_core.search import TrialStore  # noqa: E402
from apl_core.tables import markdown_table  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick",
                        choices=[p for p in PROFILES if PROFILES[p].get("max_steps")],
                        help="the profile whose pretraining, NPCs and max_steps the runs take "
                             "(default: quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="the seeds of every task (default: 0 1 2)")
    parser.add_argument("--tasks", nargs="+", default=list(pretext_study.TASKS),
                        choices=pretext_study.TASKS, metavar="TASK",
                        help=f"the tasks (default: all of {', '.join(pretext_study.TASKS)}; "
                             f"apl is always one, the others are paired against it)")
    parser.add_argument("--runs-dir", default="runs/search",
                        help="where the runs go; the converged experiment's APL runs there are "
                             "reused (default: runs/search)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs at a time, sharing the CPU threads (default: 1)")
    parser.add_argument("--out", default="", help="the results file (default: apl_core/"
                        "results/<profile>_pretext_study.json)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and what the results file holds, train nothing")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: give 1 or more")
    if min(args.seeds) < 0:
        parser.error(f"--seeds {min(args.seeds)}: seeds are 0 or more")
    if "apl" not in args.tasks:
        parser.error("--tasks: include apl, which every other task is paired against")
    if 0 not in args.seeds:
        parser.error("--seeds: include 0, the seed each fine-tuning's rate is searched on")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = str(resolve_device(args.device))
    settings = dict(runs_dir=args.runs_dir, device=device, quiet=True)
    header = {"profile": args.profile, "seeds": args.seeds, "tasks": args.tasks,
              "protocol": pretext_study.PROTOCOL,
              **how_it_ran("experiments/pretext_study.py", argv, device, args.workers)}
    store = TrialStore(Path(args.out) if args.out else pretext_study.study_path(args.profile),
                       header)
    if args.dry_run:
        rows = pretext_study.study_plan(args.profile, args.seeds, args.tasks,
                                        store.read()["trials"], **settings)
        print(f"the plan of {store.path} ({'exists' if store.path.exists() else 'new'}), runs "
              f"under {args.runs_dir}")
        print(markdown_table(rows))
        return
    store.write_header()
    pretext_study.run_study(args.profile, args.seeds, args.tasks, store, args.workers,
                            **settings)
    results = store.read()
    print(f"\nwritten to {store.path}\n")
    print(markdown_table(pretext_study.task_table(results)))
    print()
    print(markdown_table(pretext_study.paired_table(results)))


if __name__ == "__main__":
    main()
