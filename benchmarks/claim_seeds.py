"""Does the course's claim hold beyond one draw? Notebook 04's comparison over several seeds.

For each seed s: pretrain the profile's model with seed s, fine-tune every method at every NPC
of the profile's sweep with the settings the search chose (apl_core/results/<profile>_search.json)
and seed s, which also draws its own labelled images and validation part (label seed 42 + s);
the test images are the same for every seed. Then the kNN probe. Seed 0 is the course's own
run: with --runs-dir pointing at the course's runs (course_output/runs) it is read back.

Writes every seed's numbers to apl_core/results/<profile>_seeds.json (notebook 05 shows them)
and prints per (method, NPC) the mean and standard deviation over seeds of the test top-1, and
per seed the paired margins the claim rests on: APL fine-tune - BENCHMARK, APL fine-tune -
BENCHMARK + positions, APL probe - random-init probe, kNN APL - kNN random-init. Runs are cached
in --runs-dir, so an interrupted sweep resumes.

    python benchmarks/claim_seeds.py --profile quick --seeds 0 1 2 --runs-dir course_output/runs
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

from apl_core import report, tuning  # noqa: E402
from apl_core.comparison import METHODS, compare, knn_comparison, label_seed  # noqa: E402
from apl_core.config import profile_config, profile_npcs  # noqa: E402
from apl_core.device import machine_description, resolve_device  # noqa: E402
from apl_core.train import pretrain  # noqa: E402


def run_seed(profile: str, seed: int, runs_dir: str, device: str, npcs, methods,
             workers: int = 1) -> dict:
    """One seed: pretraining, the fine-tuning sweep (test and training top-1) and kNN."""
    started = time.perf_counter()
    settings = dict(runs_dir=runs_dir, device=device)
    run = pretrain(profile_config(profile, "pretrain", seed=seed, quiet=True, **settings),
                   resume="auto")
    rows = compare(profile, str(run.run_dir), npcs, methods, workers=workers, quiet=True,
                   seed=seed, **settings)
    knn = knn_comparison(profile, str(run.run_dir), max(npcs), seed=seed, **settings)
    return {"seed": seed, "label_seed": label_seed(seed),
            "position_top1": run.metrics[-1].get("val_top1"),
            "test_top1": {f"{r['method']}|{r['npc']}": r["test_top1"] for r in rows},
            "train_top1": {f"{r['method']}|{r['npc']}": r["train_top1"] for r in rows},
            "test_images": rows[0]["test_images"], "knn": knn,
            "minutes": (time.perf_counter() - started) / 60}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/claim_seeds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1,
                        help="fine-tuning runs trained at a time, sharing the CPU threads")
    parser.add_argument("--out", default="",
                        help="where to write the results (default: the file notebook 05 "
                             "reads, apl_core/results/<profile>_seeds.json)")
    args = parser.parse_args(argv)
    npcs, methods = profile_npcs(args.profile), METHODS
    device = str(resolve_device(args.device))
    results = []
    for seed in args.seeds:
        results.append(run_seed(args.profile, seed, args.runs_dir, device, npcs, methods,
                                args.workers))
        print(f"seed {seed}: {results[-1]['minutes']:.1f} min", flush=True)
    seeds = {"profile": args.profile, "machine": machine_description(device),
             "torch": torch.__version__, "date": datetime.date.today().isoformat(),
             "search": tuning.search_path(args.profile).name, "npcs": list(npcs),
             "methods": list(methods),
             "command": f"python benchmarks/claim_seeds.py --profile {args.profile} --seeds "
                        f"{' '.join(map(str, args.seeds))} --workers {args.workers}",
             "seeds": results}
    out = Path(args.out) if args.out else tuning.RESULTS_DIR / f"{args.profile}_seeds.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(seeds, indent=1) + "\n")
    print(f"\n{args.profile} profile, {seeds['machine']}, seeds {args.seeds}: test top-1 (%), "
          f"mean +- standard deviation over seeds; written to {out}\n")
    print(report.seed_table(seeds))
    print()
    print(report.margin_table(seeds))


if __name__ == "__main__":
    main()
