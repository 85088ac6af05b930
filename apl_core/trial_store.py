"""The committed trials: where a search's results file is and how it is read back, the locked
store a search's workers add their trials to, and a finished study folded into the results with
the protocol each NPC's rows ran under.

    search_path / load_search   a profile's committed search, or a study's own file, read back
    TrialStore                  a results file: a header and every finished trial, rewritten
                                under a lock after each trial, so that a stopped search resumes
                                trial by trial
    protocol_summary / describe_protocol / npc_protocols
                                which protocol (recipes, how lengths were chosen) made each
                                NPC's rows, in words for the docs' tables
    adopt_study                 a finished study at some NPCs, folded into the committed
                                results as one search (or one seeds file)

A seeds file (experiments/converged_seeds.py) is the same kind of file: its rows are stored and
adopted the same way.
"""
from __future__ import annotations

import fcntl
import json
import shlex
from collections.abc import Callable
from pathlib import Path

from .results import RESULTS_DIR, load_results, recorded_command, write_results

PROVENANCE = ("command", "machine", "precision", "torch", "date")  # what a results file ran on


def search_path(profile: str) -> Path:
    return RESULTS_DIR / f"{profile}_converged_search.json"


def load_search(profile: str, path: str | Path | None = None) -> dict | None:
    """The committed converged search of `profile` (experiments/converged_search.py), or the
    one at `path` (a study's own file), or None where there is none. A file from before the
    small-data recipe and the lengthening reads as the base recipe's trials, its doubled runs
    as 2x runs without the per-image record (their convergence 'untested')."""
    return load_results(Path(path) if path else search_path(profile), "converged search",
                        {"profile", "trials"},
                        f"python experiments/converged_search.py --profile {profile}")


class TrialStore:
    """The search's results file: a header and every finished trial, rewritten after each
    trial under a lock (several processes add to it), so that a stopped search resumes trial
    by trial, also from a committed file on another machine."""

    def __init__(self, path: str | Path, header: dict):
        self.path = Path(path)
        self.header = header

    def read(self) -> dict:
        if not self.path.exists():
            return {**self.header, "trials": []}
        try:
            results = json.loads(self.path.read_text())
            trials = results["trials"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{self.path} is not a search results file ({error!r}); restore "
                             f"it with git checkout, or delete it to search from scratch")
        return {**results, "trials": trials}

    def find(self, run: str) -> dict | None:
        return next((t for t in self.read()["trials"] if t["run"] == run), None)

    def add(self, trial: dict) -> None:
        self._update(lambda results: {**results, "trials": [
            t for t in results["trials"] if t["run"] != trial["run"]] + [trial]})

    def set_aside(self, runs: set[str], reason: str) -> None:
        """The rows named `runs` moved from the trials to `set_aside`, each with `reason`: kept
        in the file as a record, no longer found or read as results."""
        def change(results: dict) -> dict:
            moved = [{**t, "reason": reason} for t in results["trials"] if t["run"] in runs]
            return {**results,
                    "trials": [t for t in results["trials"] if t["run"] not in runs],
                    "set_aside": results.get("set_aside", []) + moved}
        self._update(change)

    def write_header(self) -> None:
        """This process's header over the file's, every row kept: the file names the last
        command run over it, which (reading every finished row and run back) reproduces all
        of it, also when a study's rows were made by several narrower commands before it."""
        self._update(lambda results: results)

    def _update(self, change: Callable[[dict], dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            results = change(self.read())
            results.update(self.header)
            write_results(self.path, results)


def protocol_summary(protocol: dict) -> dict:
    """What a search's header `protocol` ran: {"recipes": the recipes it searched, 'base' and
    'small-data' where the header records the small-data regularisation, else 'base' alone
    (search.RECIPE_NAMES, written out here because search.py builds on this module),
    "lengths": 'paired test' (every choice lengthened while a longer run wins the paired
    test) or 'late check' (the earlier rule: a choice whose best epoch fell in its run's last
    fifth was run twice as long, its searched length kept)}."""
    return {"recipes": ["base", "small-data"] if "small_data" in protocol else ["base"],
            "lengths": "late check" if "late_fraction" in protocol else "paired test"}


def describe_protocol(summary: dict) -> str:
    """A protocol_summary in words, as the docs' tables state it."""
    recipes = ("base recipe only" if summary["recipes"] == ["base"]
               else " and ".join(summary["recipes"]) + " recipes")
    lengths = ("lengths by the paired test" if summary["lengths"] == "paired test"
               else "length by the earlier late check (a doubled run never adopted)")
    return f"{recipes}, {lengths}"


def npc_protocols(results: dict) -> dict[int, dict]:
    """Per NPC of a search's or a seeds study's results, the protocol its rows ran under
    (protocol_summary): its header's protocol at every NPC it holds, and where a study was
    adopted into it (adopt_study), the file's own `protocols` at each NPC. A seeds file that
    no study was adopted into has none: its search's are its own."""
    found = ({row["npc"]: protocol_summary(results["protocol"]) for row in results["trials"]}
             if "protocol" in results else {})
    found.update({int(npc): summary for npc, summary in results.get("protocols", {}).items()})
    return dict(sorted(found.items()))


def adopt_study(committed: dict, study: dict, npcs, keep_replaced: bool = False) -> dict:
    """`committed` (a search's or a seeds study's results) with its rows at `npcs` replaced by
    `study`'s (the same kind of file, from a search at those NPCs run to a file of its own
    with --out, and --max-steps where its length is new), the study's max_steps there, the
    protocol each NPC's rows ran under (`protocols`, npc_protocols: the study's at `npcs`,
    the committed file's elsewhere), and the study's provenance (command, its paths in the
    repository made relative, machine, torch, date) listed in `studies`: the results as one
    search. keep_replaced: the committed rows at `npcs` kept apart as `replaced_trials` (a
    seeds file: the same seeds under the earlier choice, which the study's effect is paired
    against; at each NPC the rows the last study there replaced)."""
    npcs = set(npcs)
    missing = sorted(npcs - {row["npc"] for row in study["trials"]})
    if missing:
        raise ValueError(f"the study has no rows at NPC {missing}: it cannot replace them")
    adopted = {**committed,
               "trials": [row for row in committed["trials"] if row["npc"] not in npcs]
               + [row for row in study["trials"] if row["npc"] in npcs],
               "studies": [s for s in committed.get("studies", []) if not set(s["npcs"]) <= npcs]
               + [{"npcs": sorted(npcs), **{key: study[key] for key in PROVENANCE
                                            if key in study},
                   "command": recorded_command(shlex.split(study["command"]))}]}
    if "protocol" in committed:
        steps = {**committed["protocol"]["max_steps"],
                 **{str(npc): study["protocol"]["max_steps"][str(npc)] for npc in npcs}}
        adopted["protocol"] = {**committed["protocol"], "max_steps": steps}
    protocols = {**npc_protocols(committed),
                 **{npc: summary for npc, summary in npc_protocols(study).items()
                    if npc in npcs}}
    if protocols:
        adopted["protocols"] = {str(npc): summary for npc, summary in sorted(protocols.items())}
    if keep_replaced:
        adopted["replaced_trials"] = (
            [row for row in committed.get("replaced_trials", []) if row["npc"] not in npcs]
            + [row for row in committed["trials"] if row["npc"] in npcs])
    return adopted
