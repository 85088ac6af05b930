"""The committed results of the studies (JSON files next to this one, written by the scripts
in experiments/), and their one loader and writer: the course reads them instead of rerunning
hours of training."""
from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path

import torch

from ..checkpoint import write_atomic
from ..device import measured_on

RESULTS_DIR = Path(__file__).resolve().parent
REPOSITORY = RESULTS_DIR.parent.parent


def load_results(path: Path, kind: str, required: set[str], rerun: str) -> dict | None:
    """Committed results of `kind` (a search, seeds) at `path`, or None if there are none. A
    damaged file is an error that names it, what it lacks, and how to restore it."""
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
        missing = (sorted(required - set(results)) if isinstance(results, dict)
                   else "a JSON object")
    except ValueError as error:
        missing = f"valid JSON ({error})"
    if missing:
        raise ValueError(f"{path} is not a {kind} results file (it lacks {missing}); restore "
                         f"it with git checkout, or rerun {rerun}")
    return results


def write_results(path: Path, results: dict) -> None:
    """`results` as the committed files hold them (indented JSON), written atomically: an
    interrupted write leaves the previous file whole."""
    write_atomic(path, json.dumps(results, indent=1) + "\n")


def recorded_command(words: list[str]) -> str:
    """A command as a results file records it: shell-quoted, with absolute paths inside the
    repository written relative to its root, so that the docs show a command that runs from
    any clone (a path outside it, such as a scratch runs folder, is kept as given)."""
    def shown(word: str) -> str:
        path = Path(word)
        if path.is_absolute() and path.is_relative_to(REPOSITORY):
            return str(path.relative_to(REPOSITORY))
        return word
    return shlex.join(shown(word) for word in words)


def how_it_ran(script: str, argv: list[str] | None, device: str,
               workers: int | None = None) -> dict:
    """What a study's results file records of how it ran: the machine, precision and torch
    (device.measured_on), the date, its workers and the threads each run had (for a study
    that runs workers), and the command (`script` with `argv`, sys.argv's when None)."""
    ran = {**measured_on(device), "date": datetime.date.today().isoformat()}
    if workers is not None:
        ran.update(workers=workers, threads_per_run=max(1, torch.get_num_threads() // workers))
    return {**ran, "command": recorded_command(
        ["python", script, *(sys.argv[1:] if argv is None else argv)])}
