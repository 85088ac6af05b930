"""Does the course's claim hold beyond one draw? Notebook 04's comparison over several seeds.

For each seed: pretrain the profile's model with that seed, fine-tune every method at every
NPC of the profile's sweep with that seed (initialisation, augmentation, dropout; the labelled
and test images stay the same, label_seed), and run the kNN probe. Seed 0 is the course's own
run: with --runs-dir pointing at the course's runs (course_output/runs) it is read back.
Prints per (method, NPC) the mean and standard deviation over seeds of the test top-1, and
the margins the course claims (APL fine-tune - BENCHMARK, APL probe - random-init probe,
kNN APL - kNN random-init). Runs are cached in --runs-dir, so an interrupted sweep resumes.

    python benchmarks/claim_seeds.py --profile quick --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apl_core.comparison import METHODS, compare, knn_comparison  # noqa: E402
from apl_core.config import profile_config, profile_npcs  # noqa: E402
from apl_core.train import pretrain, resolve_device  # noqa: E402

MARGINS = (("APL fine-tune", "BENCHMARK", "margin: fine-tune"),
           ("APL linear probe", "BENCHMARK linear probe", "margin: linear probe"))


def run_seed(profile: str, seed: int, runs_dir: str, device: str, npcs, methods,
             split: str = "test") -> dict:
    """One seed: pretraining, the fine-tuning sweep and kNN. split='val' reports the
    validation part instead of the test set (for design choices)."""
    started = time.perf_counter()
    settings = dict(runs_dir=runs_dir, device=device)
    run = pretrain(profile_config(profile, "pretrain", seed=seed, quiet=True, **settings),
                   resume="auto")
    pretrain_s = time.perf_counter() - started
    rows = compare(profile, str(run.run_dir), npcs, methods, quiet=True, seed=seed, **settings)
    knn = knn_comparison(profile, str(run.run_dir), max(npcs), seed=seed,
                         queries=split, **settings)
    key = f"{split}_top1"
    return {"seed": seed, "position_top1": run.metrics[-1].get("val_top1"),
            "accuracy": {f"{r['method']}|{r['npc']}": r[key] for r in rows},
            "knn": knn, "pretrain_s": pretrain_s, "total_s": time.perf_counter() - started}


def summarize(results: list[dict], npcs, methods) -> str:
    def stats(values):
        mean = statistics.mean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * mean:5.1f} +- {100 * spread:4.1f}"

    lines = [f"{'method':<24}" + "".join(f"{'NPC ' + str(n):>16}" for n in npcs)]
    for method in methods:
        lines.append(f"{method:<24}" + "".join(
            f"{stats([r['accuracy'][f'{method}|{n}'] for r in results]):>16}" for n in npcs))
    for a, b, label in MARGINS:
        if a in methods and b in methods:
            gaps = ["{:>16}".format(stats([r["accuracy"][f"{a}|{n}"] - r["accuracy"][f"{b}|{n}"]
                                           for r in results])) for n in npcs]
            lines.append(f"{label:<24}" + "".join(gaps))
    for name in results[0]["knn"]:
        lines.append(f"kNN {name:<24} {stats([r['knn'][name] for r in results])}")
    knn_gaps = [list(r["knn"].values())[0] - list(r["knn"].values())[1] for r in results]
    lines.append(f"{'kNN margin (APL - random)':<28} {stats(knn_gaps)}")
    positions = [r["position_top1"] for r in results]
    lines.append(f"{'position top-1 (held out)':<28} {stats(positions)}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/claim_seeds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="report the test set (default) or the validation part")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    npcs, methods = profile_npcs(args.profile), METHODS
    device = str(resolve_device(args.device))
    results = []
    for seed in args.seeds:
        results.append(run_seed(args.profile, seed, args.runs_dir, device, npcs, methods,
                                args.split))
        print(f"seed {seed}: {results[-1]['total_s'] / 60:.1f} min", flush=True)
    print(f"\n{args.profile} profile, {device}, seeds {args.seeds}, {args.split} top-1 (%), "
          f"mean +- standard deviation over seeds")
    print(summarize(results, npcs, methods))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
