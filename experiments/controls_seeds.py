"""Notebook 06's controls over several seeds: do their differences hold beyond one draw?

For each seed s, every control of `apl_core.controls` is pretrained with seed s and judged
on the labelled images of label seed 42 + s (the test images are the same for every seed),
and the K controls get the border test (`controls.border_reliance`).
Writes every seed's rows to apl_core/results/<profile>_controls.json, which notebook 06 and
the README show, and prints each control's mean and standard deviation over the seeds, and
its paired difference from APL per seed with the verdict (`control_tables.verdict_table`).
Runs are cached in --runs-dir, so an interrupted sweep resumes, and the course's own seed 0 is
read back from the course's runs.

    python experiments/controls_seeds.py --profile quick --seeds 0 1 2 --runs-dir course_output/runs

At the main budget (the profile's own pretraining, notebook 02's), with the features judged at
every epoch's snapshot (the budget curve), for the original's two arguments:

    python experiments/controls_seeds.py --profile quick --budget main --snapshot-every 1 \\
        --names 'positional leak' 'K = 0'
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from apl_core import control_tables, controls  # noqa: E402
from apl_core.config import PROFILES  # noqa: E402
from apl_core.device import resolve_device  # noqa: E402
from apl_core.results import how_it_ran  # noqa: E402
from apl_core.tables import markdown_table  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/controls_seeds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", choices=controls.BUDGETS, default="small",
                        help="small: the profile's controls budget (notebook 06's live run); "
                             "main: the profile's own pretraining (default: small)")
    parser.add_argument("--names", nargs="+", default=None, metavar="CONTROL",
                        help="the controls to run (default: all), e.g. 'positional leak' "
                             "'K = 0'; APL always runs, the others are paired with it")
    parser.add_argument("--snapshot-every", type=int, default=0,
                        help="keep the weights every N epochs and judge the features there "
                             "(the budget curve; default 0: none)")
    parser.add_argument("--out", default="",
                        help="where to write the results (default: the file notebook 06 "
                             "reads, apl_core/results/<profile>_controls[_main].json)")
    args = parser.parse_args(argv)
    device = str(resolve_device(args.device))
    out = Path(args.out) if args.out else controls.results_path(args.profile, args.budget)
    results = {"profile": args.profile,
               **how_it_ran("experiments/controls_seeds.py", argv, device),
               # the grids and crops tried, and the budget the controls were pretrained at
               "controls": {**PROFILES[args.profile]["controls"],
                            "budget": controls.budget_settings(args.profile, args.budget)},
               "budget": args.budget, "seeds": []}
    for seed in args.seeds:
        started = time.perf_counter()
        every = list(controls.control_configs(args.profile, seed, args.budget))
        names = None if args.names is None else [every[0], *args.names]
        rows = controls.run_controls(args.profile, seed, names=names, budget=args.budget,
                                     runs_dir=args.runs_dir, device=device, quiet=True,
                                     snapshot_every=args.snapshot_every)
        borders = controls.border_reliance(rows, device=device)
        results["seeds"].append({
            "seed": seed, "rows": [{k: v for k, v in row.items() if k != "run_dir"}
                                   for row in rows],
            "borders": borders, "minutes": (time.perf_counter() - started) / 60})
        # written after every seed: a stopped study keeps the seeds it finished
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"seed {seed}: {results['seeds'][-1]['minutes']:.1f} min, written to {out}",
              flush=True)
    print(markdown_table(control_tables.control_table(results)))
    test_images = len(controls.labelled_sets(args.profile, 0).test[1])
    print(markdown_table(control_tables.verdict_table(results, test_images)))
    print(markdown_table(control_tables.border_table(results)))


if __name__ == "__main__":
    main()
