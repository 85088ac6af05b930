"""Fold a finished study at some NPCs into the committed search and seeds.

    python experiments/adopt_study.py --profile quick --npcs 10 30 \\
        --search apl_core/results/in_progress/quick_small_data_search.json \\
        --seeds apl_core/results/in_progress/quick_small_data_seeds.json

The study is converged_search.py --npcs ... --out FILE (with --max-steps STEPS where its length
is new: set the profile's max_steps at those NPCs to it first, apl_core/config.py), then
converged_seeds.py --search FILE --out SEEDS_FILE (docs/method.md). The adoption refuses, with
every reason at once, a study whose length is not the profile's, whose search is not finished
(search.check_finished), that did not search a method the committed search has there, that ran
with other recipes than this code's, or whose seeds lack a row: one that the committed seeds
have at those NPCs, or one of its own plan (each seed of its header's `seeds_at` for every
chosen method and the frozen features), or ran away from the study's choice. Then it replaces
those NPCs' trials in apl_core/results/<profile>_converged_search.json and their rows in
<profile>_converged_seeds.json with the study's, records in both which protocol each NPC's rows
ran under (`protocols`), and keeps the seeds rows it replaced (`replaced_trials`: the same seeds
under the earlier choice, for the paired comparison). The study's files are left where they
are. Rewrite the docs after it: python -m apl_core.results_docs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apl_core import report, search, trial_store  # noqa: E402
from apl_core.results import load_results, write_results  # noqa: E402


def row_key(row: dict) -> tuple:
    """What a seeds row is: its seed, NPC, and method (or the frozen features)."""
    return row.get("seed"), row["npc"], row.get("method", "features")


def study_problems(profile: str, npcs: set[int], committed_search: dict, committed_seeds: dict,
                   study_search: dict, study_seeds: dict) -> list[str]:
    """Why the study cannot replace the committed results at `npcs` (empty: it can)."""
    problems = []
    profile_steps = search.max_steps(profile)
    for npc in sorted(npcs):
        steps = study_search["protocol"]["max_steps"].get(str(npc))
        if steps != profile_steps.get(npc):
            problems.append(f"the study's runs at NPC {npc} are {steps} steps long and the "
                            f"{profile!r} profile's {profile_steps.get(npc)}: set its max_steps "
                            f"at NPC {npc} to {steps} in apl_core/config.py first")
    try:
        search.check_finished(study_search["trials"], npcs, profile)
    except ValueError as error:
        problems.append(str(error))
    searched = {(t["method"], t["npc"]) for t in study_search["trials"]}
    problems += [f"the study did not search {method} at NPC {npc}"
                 for method, npc in sorted({(t["method"], t["npc"])
                                            for t in committed_search["trials"]} - searched)
                 if npc in npcs]
    for key, here in (("recipes", search.RECIPES), ("small_data", search.SMALL_DATA)):
        ran = study_search["protocol"].get(key)
        if ran is not None and ran != json.loads(json.dumps(here)):
            problems.append(f"the study ran with {key} {ran} and apl_core/search.py now has "
                            f"{here}: the course would not rerun the study's choices")
    try:
        chosen = search.choose([t for t in study_search["trials"] if t["npc"] in npcs])
    except ValueError as error:  # trials of one (method, NPC) that differ in length
        problems.append(str(error))
        chosen = {}
    planned = {(seed, int(npc), what)
               for npc, seeds in study_seeds.get("seeds_at", {}).items() if int(npc) in npcs
               for what in [m for m, n in chosen if n == int(npc)] + ["features"]
               for seed in seeds}
    needed = planned | {row_key(row) for row in committed_seeds["trials"] if row["npc"] in npcs}
    have = {row_key(row) for row in study_seeds["trials"]}
    problems += [f"the study's seeds lack seed {seed}'s {what} at NPC {npc}"
                 for seed, npc, what in sorted(needed - have)]
    for row in study_seeds["trials"]:
        pick = chosen.get((row.get("method"), row["npc"]))
        ran = (row["lr"], row.get("recipe", "base"), row["epochs"]) if pick else None
        if pick and ran != (pick["lr"], pick["recipe"], pick["adopted"]["epochs"]):
            problems.append(f"the study's seed {row['seed']} ran {row['method']} at NPC "
                            f"{row['npc']} with lr {row['lr']}, the {ran[1]} recipe and "
                            f"{row['epochs']} epochs, not at the study's choice ({pick['lr']}, "
                            f"{pick['recipe']}, {pick['adopted']['epochs']} epochs)")
    return problems


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--npcs", type=int, nargs="+", required=True,
                        help="the NPCs the study searched again")
    parser.add_argument("--search", required=True, help="the study's search results file")
    parser.add_argument("--seeds", required=True, help="the study's seeds results file")
    args = parser.parse_args(argv)
    committed_search = trial_store.load_search(args.profile)
    committed_seeds = report.load_seeds(args.profile)
    if not committed_search or not committed_seeds:
        sys.exit(f"the {args.profile!r} profile has no committed search and seeds to adopt a "
                 f"study into: run experiments/converged_search.py and converged_seeds.py")
    study_search = load_results(Path(args.search), "converged search", {"protocol", "trials"},
                                "the study's command (its file's header says which)")
    study_seeds = report.load_seeds(args.profile, args.seeds)
    if study_search is None or study_seeds is None:
        sys.exit(f"no study at {args.search if study_search is None else args.seeds}")
    npcs = set(args.npcs)
    problems = study_problems(args.profile, npcs, committed_search, committed_seeds,
                              study_search, study_seeds)
    if problems:
        sys.exit("the study cannot be adopted yet:\n- " + "\n- ".join(problems))
    adopted_search = trial_store.adopt_study(committed_search, study_search, npcs)
    adopted_seeds = trial_store.adopt_study(committed_seeds, study_seeds, npcs, keep_replaced=True)
    adopted_seeds.update(chosen=search.keyed_choices(adopted_search["trials"]),
                         protocols=adopted_search["protocols"])
    for path, results in ((trial_store.search_path(args.profile), adopted_search),
                          (report.seeds_path(args.profile), adopted_seeds)):
        write_results(path, results)
        print(f"wrote {path}")
    print(f"the study's files are kept ({args.search}, {args.seeds}); now rewrite the docs "
          f"(python -m apl_core.results_docs) and the figures (make figures)")


if __name__ == "__main__":
    main()
