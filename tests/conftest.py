"""Shared fixtures: one tiny pretraining run on the embedded synthetic dataset, reused by
the fine-tuning, checkpoint and analysis tests (smoke profile: seconds on a 2-core CPU)."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from tqdm.auto import tqdm

from apl_core.config import profile_config
from apl_core.train import pretrain

# The test models are tiny: one thread is about as fast as two, and never stalls when other
# processes (a notebook run, a second pytest) share the 2 cores; two threads then run 10x slower.
torch.set_num_threads(1)

# `make mutation` forks a process per mutant. tqdm's default lock includes a multiprocessing
# lock, which forked processes share: one killed while holding it (a mutant's timeout) left
# every later progress bar waiting for ever. A thread lock is each process's own; and no
# monitor thread, which could hold it at the moment of a fork.
tqdm.set_lock(threading.RLock())
tqdm.monitor_interval = 0

SMOKE_ARCHITECTURE = dict(grid=4, crop=1, encoder="flatten", blocks=2, heads=3, hidden_mult=2)


def smoke_pretrain_config(runs_dir, **overrides):
    """The smoke profile on the CPU in fp32 (exactly reproducible), runs under runs_dir."""
    return profile_config("smoke", "pretrain", **{
        "runs_dir": str(runs_dir), "device": "cpu", "precision": "fp32", **overrides})


def smoke_finetune_config(runs_dir, **overrides):
    return profile_config("smoke", "finetune", **{
        "runs_dir": str(runs_dir), "device": "cpu", "precision": "fp32", **overrides})


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """4 epochs of smoke pretraining (G = 4: T = 16 positions), kNN-probed every 2 epochs."""
    runs = tmp_path_factory.mktemp("runs")
    return pretrain(smoke_pretrain_config(runs, epochs=4, knn_every=2))


@pytest.fixture(scope="session")
def smoke_course(tmp_path_factory):
    """The whole course in the smoke profile, run once by the runner behind `make run`
    (apl_core.course.run_course), which builds the course site at its end: (OUT, one row per
    notebook). The notebook tests check its notebooks, the site and browser tests its site."""
    from apl_core.course import run_course

    out = tmp_path_factory.mktemp("course")
    rows = run_course(profile="smoke", out=out, device="cpu", data_dir=out / "data",
                      log_output=False)
    return out, rows


def mutation_test_file(mutant: str) -> str:
    """The test file that judges a mutant of apl_core.<module> (`make mutation`): the module's
    own, tests/test_<module>.py; the data package's modules share tests/test_data.py."""
    module = mutant.split(".")[1]
    return f"test_{module}.py"


def pytest_collection_modifyitems(config, items):
    """Under `make mutation` (mutmut names the mutant in MUTANT_UNDER_TEST), run a mutant
    against its module's own test file only, cheapest tests first. Without this every
    training test that happens to call a function would run on its mutants: hours instead
    of minutes, and a module would be credited with kills its own tests do not make."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return
    own = mutation_test_file(mutant)
    durations = {}
    stats = Path("mutmut-stats.json")  # mutmut runs the tests inside mutants/
    if stats.is_file():
        durations = json.loads(stats.read_text())["duration_by_test"]
    kept = [item for item in items if item.path.name == own]
    config.hook.pytest_deselected(items=[item for item in items if item.path.name != own])
    # the session's pretraining fixture costs seconds once, so tests without it go first
    items[:] = sorted(kept, key=lambda item: ("pretrained_run" in item.fixturenames,
                                              durations.get(item.nodeid, 0.0)))
