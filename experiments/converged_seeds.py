"""The converged experiment over seeds: every method at the choice the converged search adopted.

    python experiments/converged_seeds.py --profile quick --workers 2 \
        --search apl_core/results/in_progress/quick_small_data_search.json \
        --out apl_core/results/in_progress/quick_small_data_seeds.json --npc-seeds 10:0-4 30:0-2

Reads the choice from apl_core/results/<profile>_converged_search.json, or --search (a
study's own file), with search.chosen_configs, and refuses a search that is not finished. For
each seed s: pretrain the profile's model with seed s; train every (method, NPC) the search
chose with its recipe (base or small-data) at the chosen rate, as long as the adopted run (the
searched length, or the longer run the paired test adopted), on the labelled images of seed s
(label seed 42 + s), keeping the weights of its best epoch on the seed's own validation part;
score that epoch once on the test images; then judge the frozen APL and random-init features
at each NPC (kNN and the linear probe, its penalty chosen on validation). Seed 0's runs are
the search's own, read back from --runs-dir when the search ran there. Every row is written at
once to the results file (--out), so a stopped study resumes row by row.

--npc-seeds gives each NPC its own seeds (more label draws where the margins are small);
without it every NPC the search chose for (or --npcs) runs --seeds. --dry-run prints the plan
and trains nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from apl_core import report, search, trial_store  # noqa: E402
from apl_core.comparison import feature_comparison  # noqa: E402
from apl_core.config import PROFILES, profile_config  # noqa: E402
from apl_core.device import resolve_device  # noqa: E402
from apl_core.results import how_it_ran  # noqa: E402
from apl_core.rundir import run_name  # noqa: E402
from apl_core.tables import markdown_table  # noqa: E402
from apl_core.train import pretrain  # noqa: E402


def pretraining_config(profile: str, seed: int, **settings):
    """Seed `seed`'s pretraining, with the weights after every epoch too: the same runs give
    notebook 06's budget curve."""
    return profile_config(profile, "pretrain", seed=seed, snapshot_every=1, **settings)


def seed_configs(profile: str, seed: int, chosen: dict, found: dict, pretrain_run: str,
                 **settings) -> list:
    """(method, config) of every chosen (method, NPC) for seed `seed` (search.chosen_configs)."""
    npcs = sorted({npc for _, npc in chosen})
    methods = [method for method in search.METHODS if any(m == method for m, _ in chosen)]
    return [(method, config) for method, config in search.chosen_configs(
                profile, pretrain_run, npcs, methods, found, seed=seed, **settings)
            if (method, config.npc) in chosen]


def run_seed(profile: str, seed: int, chosen: dict, store: trial_store.TrialStore, runs_dir: str,
             device: str, workers: int, found: dict | None = None,
             **finetune_settings) -> None:
    """Every chosen (method, NPC) and the features of seed `seed`, each row stored as done;
    found: the search that chose (default: the profile's committed one); finetune_settings
    (e.g. val_per_class) apply to every fine-tuning run, as in the search."""
    settings = dict(runs_dir=runs_dir, device=device, quiet=True)
    run = pretrain(pretraining_config(profile, seed, **settings), resume="auto")
    settings.update(finetune_settings)
    stored = {trial["run"] for trial in store.read()["trials"]}
    todo = [(method, config) for method, config in seed_configs(
                profile, seed, chosen, found, str(run.run_dir), **settings)
            if run_name(config) not in stored]

    def add(row: dict) -> None:
        row = {key: value for key, value in row.items() if key != "run_dir"}
        store.add({**row, "seed": seed, "position_top1": run.metrics[-1].get("val_top1")})
        print(f"seed {seed}  NPC {row['npc']:>4}  {row['method']:<22} {row['recipe']:<10} "
              f"best epoch {row['best_epoch']}/{row['epochs']}  val {row['val_top1']:.1%}  "
              f"test {row['test_top1']:.1%}", flush=True)

    search.compare(todo, workers, report=add)
    for npc in sorted({npc for _, npc in chosen}):
        key = f"features-seed{seed}-npc{npc}"
        if store.find(key) is None:
            judged = feature_comparison(profile, str(run.run_dir), npc, seed=seed, **settings)
            store.add({"run": key, "seed": seed, "npc": npc, "features": judged})
            print(f"seed {seed}  NPC {npc:>4}  features: " + ", ".join(
                f"{name} kNN {row['knn_top1']:.1%} probe {row['probe_top1']:.1%}"
                for name, row in judged.items()), flush=True)


def parse_npc_seeds(values: list[str]) -> dict[int, list[int]]:
    """['10:0-4', '30:0,1,2'] -> {10: [0, 1, 2, 3, 4], 30: [0, 1, 2]}."""
    plan = {}
    for value in values:
        npc, _, seeds = value.partition(":")
        try:
            chosen = []
            for part in seeds.split(","):
                first, _, last = part.partition("-")
                chosen += list(range(int(first), int(last or first) + 1))
            npc = int(npc)
        except ValueError:
            raise ValueError(f"--npc-seeds {value!r}: write NPC:SEEDS, e.g. 10:0-4 or "
                             f"30:0,1,2") from None
        if npc < 1 or not chosen or min(chosen) < 0:
            raise ValueError(f"--npc-seeds {value!r}: a positive NPC and seeds 0 or more")
        plan[npc] = sorted(set(chosen))
    return plan


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=list(PROFILES),
                        help="the profile whose search and settings the runs take "
                             "(default: quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="the seeds every NPC runs (default: 0 1 2)")
    parser.add_argument("--npc-seeds", nargs="+", default=None, metavar="NPC:SEEDS",
                        help="each NPC with its own seeds, e.g. 10:0-4 30:0-2 (default: "
                             "--seeds at every NPC)")
    parser.add_argument("--runs-dir", default="runs/search",
                        help="where the runs go; the search's own runs make seed 0 free "
                             "(default: runs/search)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs trained at a time, sharing the CPU threads (default: 1)")
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
    parser.add_argument("--dry-run", action="store_true",
                        help="print every run the study makes and which are done, train "
                             "nothing")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: give 1 or more")
    if min(args.seeds) < 0:
        parser.error(f"--seeds {min(args.seeds)}: seeds are 0 or more")
    try:
        args.npc_seeds = parse_npc_seeds(args.npc_seeds) if args.npc_seeds else None
    except ValueError as error:
        parser.error(str(error))
    if args.npc_seeds and args.npcs:
        parser.error("--npcs and --npc-seeds both name the NPCs: give one of them")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = str(resolve_device(args.device))
    found = trial_store.load_search(args.profile, args.search or None)
    if not found or not found["trials"]:
        sys.exit(f"no search results in {args.search or trial_store.search_path(args.profile)}: "
                 f"run experiments/converged_search.py --profile {args.profile} first")
    every_choice = search.choose(found["trials"])
    npcs = set(args.npc_seeds or args.npcs or {npc for _, npc in every_choice})
    missing = sorted(npcs - {npc for _, npc in every_choice})
    if missing:
        sys.exit(f"the search chose nothing at NPC {missing}: it searched NPC "
                 f"{sorted({npc for _, npc in every_choice})}")
    seeds_at = args.npc_seeds or {npc: args.seeds for npc in npcs}
    chosen = {(method, npc): pick for (method, npc), pick in every_choice.items()
              if npc in npcs and method in args.methods}
    try:
        search.check_finished([t for t in found["trials"] if t["method"] in args.methods],
                              npcs, args.profile)
    except ValueError as error:
        sys.exit(str(error))
    # the header describes the whole file, whichever NPCs this call adds to it
    header = {"profile": args.profile, "search": found.get("date"),
              "chosen": search.keyed_choices(found["trials"]),
              "protocols": {str(npc): summary
                            for npc, summary in trial_store.npc_protocols(found).items()},
              "seeds_at": {str(npc): seeds for npc, seeds in sorted(seeds_at.items())},
              **how_it_ran("experiments/converged_seeds.py", argv, device, args.workers)}
    store = trial_store.TrialStore(
        Path(args.out) if args.out else report.seeds_path(args.profile), header)
    seeds = sorted({seed for npc_seeds in seeds_at.values() for seed in npc_seeds})

    def chosen_for(seed: int) -> dict:
        return {key: pick for key, pick in chosen.items() if seed in seeds_at[key[1]]}

    if args.dry_run:
        print_plan(args, seeds, chosen_for, found, store, device)
        return
    store.write_header()
    for seed in seeds:
        run_seed(args.profile, seed, chosen_for(seed), store, args.runs_dir, device,
                 args.workers, found)
    print(f"written to {store.path}")


def print_plan(args, seeds: list[int], chosen_for, found: dict, store: trial_store.TrialStore,
               device: str) -> None:
    """Every run of the study, seed by seed: its pretraining, each chosen (method, NPC) at its
    adopted recipe, rate and length, and whether the results file already holds it."""
    settings = dict(runs_dir=args.runs_dir, device=device, quiet=True)
    stored = {trial["run"] for trial in store.read()["trials"]}
    rates = search.seconds_per_step(found)
    rows, left, seconds = [], 0, 0.0
    for seed in seeds:
        pretraining = pretraining_config(args.profile, seed, **settings)
        pretrain_run = Path(args.runs_dir) / "pretrain" / run_name(pretraining)
        configs = seed_configs(args.profile, seed, chosen_for(seed), found, str(pretrain_run),
                               pretrained=pretraining, **settings)
        rows.append({"seed": seed, "run": "pretraining", "NPC": "", "recipe": "", "lr": "",
                     "epochs": pretraining.epochs,
                     "done": "yes" if (pretrain_run / "last.pt").exists() else "no"})
        for method, config in configs:
            done = run_name(config) in stored
            left += not done
            steps = config.epochs * -(-config.npc * config.num_classes // config.batch_size)
            seconds += 0 if done else steps * rates.get((method, config.npc), 0.0)
            rows.append({"seed": seed, "run": method, "NPC": config.npc,
                         "recipe": search.recipe_of(method, config), "lr": f"{config.lr:g}",
                         "epochs": config.epochs, "done": "yes" if done else "no"})
        for npc in sorted({npc for _, npc in chosen_for(seed)}):
            done = f"features-seed{seed}-npc{npc}" in stored
            rows.append({"seed": seed, "run": "features", "NPC": npc, "recipe": "",
                         "lr": "", "epochs": "", "done": "yes" if done else "no"})
    print(f"the plan of {store.path} ({'exists' if store.path.exists() else 'new'})")
    print(markdown_table(rows))
    print(f"\n{left} fine-tuning runs left, {seconds / 3600:.1f} worker-hours at one thread "
          f"each at the search's own seconds per step ({seconds / 3600 / args.workers:.1f} "
          f"hours with {args.workers} worker(s)), the pretrainings not done and the "
          f"features' kNN and probes on top")


if __name__ == "__main__":
    main()
