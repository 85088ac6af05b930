"""The hyper-parameter search every method of the comparison gets alike, and what it chose.

Every method searches the same grid around its own starting point: the learning rate times
LR_FACTORS (0.3, 1, 3: a 10x span) around the profile's fine-tuning rate (its probe rate for
the linear probes), and the training length as STEP_BUDGETS optimizer steps, rounded up to
whole epochs. Counting steps rather than epochs keeps NPC 10 from being starved: 20 epochs of
100 images at batch 32 are only 80 steps, where the longer budget gives 300. The budgets are
sized for the quick course on 2 CPU cores (its notebook 04 trains 21 chosen runs). The choice is made per (method, NPC) on the
validation part of the labelled split only (`choose`); search runs never evaluate the test set
(evaluate_test=False).

`benchmarks/search.py` runs the search and writes every candidate's validation accuracy to
apl_core/results/<profile>_search.json, which is committed. `tuned_settings` reads the choice
from that file, and `comparison.method_config` applies it: the course uses the chosen settings
without rerunning the search. A profile without a results file keeps its own settings.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .config import FinetuneConfig

LR_FACTORS = (0.3, 1.0, 3.0)
STEP_BUDGETS = (100, 300)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def epochs_for_steps(steps: int, config: FinetuneConfig) -> int:
    """Whole epochs of config's labelled images (npc per class, batch_size) that make at
    least `steps` optimizer steps."""
    steps_per_epoch = math.ceil(config.npc * config.num_classes / config.batch_size)
    return math.ceil(steps / steps_per_epoch)


def candidates(config: FinetuneConfig) -> list[dict]:
    """The search's settings for a method's untuned `config`: lr, epochs and eval_every (the
    end of the run: only the last evaluation is used), shorter runs first, lower rates first."""
    grid = []
    for steps in STEP_BUDGETS:
        epochs = epochs_for_steps(steps, config)
        for factor in LR_FACTORS:
            grid.append(_settings(float(f"{config.lr * factor:.3g}"), epochs))
    return grid


def _settings(lr: float, epochs: int) -> dict:
    """A candidate's settings: evaluated once, at the end (only the last evaluation counts)."""
    return dict(lr=lr, epochs=epochs, eval_every=epochs)


def choose(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """Per (method, NPC), the settings (lr, epochs, eval_every) of the candidate with the best
    validation top-1; among equals the first in the search's order (shorter, lower rate)."""
    best: dict[tuple[str, int], dict] = {}
    for row in rows:
        key = (row["method"], row["npc"])
        if key not in best or row["val_top1"] > best[key]["val_top1"]:
            best[key] = row
    return {key: _settings(row["lr"], row["epochs"]) for key, row in best.items()}


def search_path(profile: str) -> Path:
    return RESULTS_DIR / f"{profile}_search.json"


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


def load_search(profile: str) -> dict | None:
    """The committed search of `profile` (see benchmarks/search.py), or None if it has none."""
    rerun = f"benchmarks/search.py --profile {profile}"
    search = load_results(search_path(profile), "search", {"rows"}, rerun)
    if search is None:
        return None
    rows = search["rows"]
    missing = {"method", "npc", "lr", "epochs", "val_top1"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{search_path(profile)}: its rows lack {sorted(missing)}; restore it "
                         f"with git checkout, or rerun {rerun}")
    return search


def tuned_settings(profile: str) -> dict[tuple[str, int], dict]:
    """The settings the committed search chose per (method, NPC); {} for a profile without
    a search."""
    search = load_search(profile)
    return choose(search["rows"]) if search else {}
