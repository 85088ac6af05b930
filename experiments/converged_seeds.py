"""The converged experiment over seeds: every method at the rate the converged search chose.

    python experiments/converged_seeds.py --profile quick --seeds 0 1 2 --workers 2

Reads the choice from apl_core/results/<profile>_converged_search.json, or --search (a
study's own file), with search.chosen_configs. For each seed s: pretrain the profile's model
with seed s; train every (method, NPC) the search chose with its
recipe at the chosen rate, as long as its search runs, on the labelled images of seed s
(label seed 42 + s), keeping the weights of its best epoch on the seed's own validation part;
score that epoch once on the test images; then judge the frozen APL and random-init features
at every NPC (kNN and the linear probe, its penalty chosen on validation). Seed 0's runs are
the search's own, read back from --runs-dir when the search ran there. Every row is written at
once to apl_core/results/<profile>_converged_seeds.json, so a stopped study resumes row by row.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from apl_core import report, search  # noqa: E402
from apl_core.comparison import feature_comparison  # noqa: E402
from apl_core.config import profile_config  # noqa: E402
from apl_core.device import measured_on, resolve_device  # noqa: E402
from apl_core.results import recorded_command  # noqa: E402
from apl_core.rundir import run_name  # noqa: E402
from apl_core.train import pretrain  # noqa: E402


def run_seed(profile: str, seed: int, chosen: dict, store: search.TrialStore, runs_dir: str,
             device: str, workers: int, found: dict | None = None,
             **finetune_settings) -> None:
    """Every chosen (method, NPC) and the features of seed `seed`, each row stored as done;
    found: the search that chose (default: the profile's committed one); finetune_settings
    (e.g. val_per_class) apply to every fine-tuning run, as in the search."""
    settings = dict(runs_dir=runs_dir, device=device, quiet=True)
    # the weights after every epoch too: the same runs give notebook 06's budget curve
    run = pretrain(profile_config(profile, "pretrain", seed=seed, snapshot_every=1, **settings),
                   resume="auto")
    settings.update(finetune_settings)
    npcs = sorted({npc for _, npc in chosen})
    methods = [method for method in search.METHODS if any(m == method for m, _ in chosen)]
    stored = {trial["run"] for trial in store.read()["trials"]}
    todo = [(method, config) for method, config in search.chosen_configs(
                profile, str(run.run_dir), npcs, methods, found, seed=seed, **settings)
            if (method, config.npc) in chosen and run_name(config) not in stored]

    def add(row: dict) -> None:
        row = {key: value for key, value in row.items() if key != "run_dir"}
        store.add({**row, "seed": seed, "position_top1": run.metrics[-1].get("val_top1")})
        print(f"seed {seed}  NPC {row['npc']:>4}  {row['method']:<22} best epoch "
              f"{row['best_epoch']}/{row['epochs']}  val {row['val_top1']:.1%}  test "
              f"{row['test_top1']:.1%}", flush=True)

    search.compare(todo, workers, report=add)
    for npc in npcs:
        key = f"features-seed{seed}-npc{npc}"
        if store.find(key) is None:
            judged = feature_comparison(profile, str(run.run_dir), npc, seed=seed, **settings)
            store.add({"run": key, "seed": seed, "npc": npc, "features": judged})
            print(f"seed {seed}  NPC {npc:>4}  features: " + ", ".join(
                f"{name} kNN {row['knn_top1']:.1%} probe {row['probe_top1']:.1%}"
                for name, row in judged.items()), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/search",
                        help="where the runs go; the search's own runs make seed 0 free")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs trained at a time, sharing the CPU threads")
    parser.add_argument("--npcs", type=int, nargs="+", default=None,
                        help="the NPCs to run (default: every NPC the search chose for)")
    parser.add_argument("--methods", nargs="+", default=list(search.METHODS),
                        choices=search.METHODS, metavar="METHOD",
                        help="the methods to run (default: all); a method whose own search is "
                             "finished can run while the others' still search")
    parser.add_argument("--search", default="", help="the search's results file (default: "
                        "apl_core/results/<profile>_converged_search.json)")
    parser.add_argument("--out", default="", help="the results file (default: apl_core/"
                        "results/<profile>_converged_seeds.json)")
    args = parser.parse_args(argv)
    device = str(resolve_device(args.device))
    found = search.load_search(args.profile, args.search or None)
    if not found or not found["trials"]:
        sys.exit(f"no search results in {args.search or search.search_path(args.profile)}: "
                 f"run experiments/converged_search.py --profile {args.profile} first")
    every_choice = search.choose(found["trials"])
    chosen = {(method, npc): pick for (method, npc), pick in every_choice.items()
              if (args.npcs is None or npc in args.npcs) and method in args.methods}
    try:
        search.check_finished([t for t in found["trials"] if t["method"] in args.methods],
                              {npc for _, npc in chosen}, args.profile)
    except ValueError as error:
        sys.exit(str(error))
    # the header describes the whole file, whichever NPCs this call adds to it
    header = {"profile": args.profile, "search": found.get("date"),
              "chosen": search.keyed_choices(found["trials"]),
              **measured_on(device),
              "date": datetime.date.today().isoformat(), "workers": args.workers,
              "command": recorded_command(["python", "experiments/converged_seeds.py",
                                           *(sys.argv[1:] if argv is None else argv)])}
    store = search.TrialStore(Path(args.out) if args.out else report.seeds_path(args.profile),
                              header)
    store.write_header()
    for seed in args.seeds:
        run_seed(args.profile, seed, chosen, store, args.runs_dir, device, args.workers, found)
    print(f"written to {store.path}")


if __name__ == "__main__":
    main()
