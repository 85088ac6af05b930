"""Rerun the hyper-parameter search that chooses every method's settings (apl_core.tuning).

    python benchmarks/search.py --profile quick --workers 2

Pretrains the profile's model with seed 0 (read back when finished, e.g. from the course's
runs: --runs-dir course_output/runs), then trains every candidate (learning rate x training
length) of every method of notebook 04 at every NPC on the labelled images of seed 0, scores
each on the validation part, and writes every candidate's validation top-1 to
apl_core/results/<profile>_search.json. The course applies the best candidate per (method, NPC)
from that file. The test set is never evaluated. Runs are cached in --runs-dir, so an
interrupted search resumes.
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

from apl_core import tuning  # noqa: E402
from apl_core.comparison import METHODS, search  # noqa: E402
from apl_core.config import profile_config, profile_npcs  # noqa: E402
from apl_core.device import machine_description, resolve_device  # noqa: E402
from apl_core.train import pretrain  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--runs-dir", default="runs/search")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs trained at a time, sharing the CPU threads (default 1)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        metavar="METHOD", help="the methods to search (default: all)")
    parser.add_argument("--out", default="",
                        help="where to write the results (default: the file the course reads, "
                             "apl_core/results/<profile>_search.json)")
    args = parser.parse_args(argv)
    device = str(resolve_device(args.device))
    settings = dict(runs_dir=args.runs_dir, device=device)
    started = time.perf_counter()
    run = pretrain(profile_config(args.profile, "pretrain", seed=0, quiet=True, **settings),
                   resume="auto")

    def report(row):
        print(f"NPC {row['npc']:>4}  {row['method']:<24} lr {row['lr']:<8g} {row['epochs']:>4} "
              f"epochs ({row['steps']:>4} steps)  val top-1 {row['val_top1']:.1%}  "
              f"train top-1 {row['train_top1']:.1%}", flush=True)

    rows = search(args.profile, str(run.run_dir), profile_npcs(args.profile), args.methods,
                  report=report, workers=args.workers, quiet=True, seed=0, **settings)
    minutes = (time.perf_counter() - started) / 60
    results = {
        "profile": args.profile, "seed": 0, "pretrain_run": run.run_dir.name,
        "lr_factors": tuning.LR_FACTORS, "step_budgets": tuning.STEP_BUDGETS,
        "machine": machine_description(device), "torch": torch.__version__,
        "date": datetime.date.today().isoformat(), "workers": args.workers,
        "minutes": round(minutes, 1),
        "command": f"python benchmarks/search.py --profile {args.profile} "
                   f"--workers {args.workers}",
        "rows": rows,
    }
    out = Path(args.out) if args.out else tuning.search_path(args.profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{len(rows)} candidates in {minutes:.1f} min on {results['machine']}; "
          f"written to {out}")
    for (method, npc), chosen in tuning.choose(rows).items():
        print(f"chosen: NPC {npc:>4}  {method:<24} lr {chosen['lr']:g}, {chosen['epochs']} epochs")


if __name__ == "__main__":
    main()
