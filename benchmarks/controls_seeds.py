"""Notebook 06's controls over several seeds: do their differences hold beyond one draw?

For each seed s, every control of `apl_core.controls` is pretrained with seed s and judged
on the labelled images of label seed 42 + s (the test images are the same for every seed),
and the K controls get the border test (`controls.border_reliance`).
Writes every seed's rows to apl_core/results/<profile>_controls.json, which notebook 06 and
the README show, and prints each control's mean and standard deviation over the seeds and
its paired difference from APL per seed. Runs are cached in --runs-dir, so an interrupted
sweep resumes, and the course's own seed 0 is read back from the course's runs.

    python benchmarks/controls_seeds.py --profile quick --seeds 0 1 2 --runs-dir course_output/runs
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from apl_core import controls  # noqa: E402
from apl_core.config import PROFILES  # noqa: E402
from apl_core.device import machine_description, resolve_device  # noqa: E402
from apl_core.viz import markdown_table  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/controls_seeds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="",
                        help="where to write the results (default: the file notebook 06 "
                             "reads, apl_core/results/<profile>_controls.json)")
    args = parser.parse_args(argv)
    device = str(resolve_device(args.device))
    seeds = []
    for seed in args.seeds:
        started = time.perf_counter()
        rows = controls.run_controls(args.profile, seed, runs_dir=args.runs_dir, device=device,
                                     quiet=True)
        borders = controls.border_reliance(rows, device=device)
        seeds.append({"seed": seed, "rows": [{k: v for k, v in row.items() if k != "run_dir"}
                                             for row in rows],
                      "borders": borders, "minutes": (time.perf_counter() - started) / 60})
        print(f"seed {seed}: {seeds[-1]['minutes']:.1f} min", flush=True)
    results = {"profile": args.profile, "machine": machine_description(device),
               "torch": torch.__version__, "date": datetime.date.today().isoformat(),
               "controls": PROFILES[args.profile]["controls"],
               "command": f"python benchmarks/controls_seeds.py --profile {args.profile} "
                          f"--seeds {' '.join(map(str, args.seeds))}",
               "seeds": seeds}
    out = Path(args.out) if args.out else controls.results_path(args.profile)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    print(markdown_table(controls.seed_table(results)))
    print(markdown_table(controls.margin_table(results)))
    print(markdown_table(controls.border_table(results)))


if __name__ == "__main__":
    main()
