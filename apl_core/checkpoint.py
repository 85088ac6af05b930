"""Checkpoints: written atomically, read back with `torch.load(..., weights_only=True)`.

A checkpoint is a plain dict of tensors and Python values (no pickled classes), so loading one
cannot run code and does not depend on this package's class layout:

    phase          "pretrain" or "finetune"
    epoch, step    epochs and optimizer steps completed
    config         the run's config as a plain dict
    architecture   what the weights need to be loaded into (`pretrain_architecture` for a
                   pretraining run; see `check_architecture`)
    model          state dict; optimizer, scaler: their state dicts
    rng            torch CPU and CUDA generator states of every rank (for an exact resume)
    metrics        the metric rows so far (metrics.jsonl is rewritten from them on resume)
    row            this epoch's metrics (best.pt holds phase..model and row only)

There is no scheduler state: the learning rate is a function of the epoch (and step), see
`objective.learning_rate`. The loaders need none either: they reseed from (seed, epoch).

Saving writes a temporary file next to the target, flushes it to disk and renames it over the
target: a crash or kill during the save leaves the previous checkpoint untouched.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from .config import ARCHITECTURE_FIELDS, PretrainConfig


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, corrupted, not a checkpoint)."""


def write_atomic(path: str | Path, content: str | Callable[[BinaryIO], None]) -> None:
    """Write text, or whatever `content(file)` writes, to `path` atomically: a temporary file
    next to it, fsync, then rename, so a crash leaves the previous file whole."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content.encode())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` to `path` atomically (see `write_atomic`)."""
    write_atomic(path, lambda file: torch.save(state, file))


def resolve_checkpoint(path_or_run_name: str | Path, runs_dir: str | Path = "runs",
                       phase: str = "pretrain") -> Path:
    """A checkpoint file from a path (file or run directory) or a run name under
    runs_dir/phase/. FileNotFoundError says where it looked and which runs exist."""
    given = Path(path_or_run_name)
    candidates = [given, given / "last.pt", Path(runs_dir) / phase / given / "last.pt"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    runs = list_runs(runs_dir, phase)
    raise FileNotFoundError(
        f"no checkpoint found for {str(path_or_run_name)!r}; looked at "
        f"{', '.join(str(c) for c in candidates)}. Runs with a checkpoint under "
        f"{Path(runs_dir) / phase}: {runs or 'none'} (list them with "
        f"`ls {Path(runs_dir) / phase}`)"
    )


def list_runs(runs_dir: str | Path = "runs", phase: str = "pretrain") -> list[str]:
    """Names of the runs under runs_dir/phase that have a last.pt."""
    root = Path(runs_dir) / phase
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "last.pt").is_file())


def read_checkpoint(path: str | Path) -> dict:
    """Load one checkpoint file on the CPU with weights_only=True."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        # The weights-only unpickler words every failure alike; only a GLOBAL (a class or a
        # function to import and call) is an object that could run code.
        if "global" not in str(error).lower():
            raise CheckpointError(f"cannot read checkpoint {path}: its pickle is damaged. "
                                  f"Delete it, or resume from another copy") from error
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects besides tensors and plain values, "
            f"and unpickling them could run code. apl_core never writes such checkpoints; do "
            f"not use this file unless you know where it came from") from error
    except Exception as error:  # torch raises several types for a damaged zip or pickle
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is truncated or corrupted ({error}). "
            f"Delete it, or resume from another copy"
        ) from error
    if not isinstance(state, dict) or "model" not in state or "phase" not in state:
        raise CheckpointError(f"{path} is not an apl_core checkpoint (no 'model'/'phase' keys)")
    return state


def load_checkpoint(path_or_run_name: str | Path, runs_dir: str | Path = "runs",
                    phase: str = "pretrain") -> dict:
    """The checkpoint dict of a path or run name (see `resolve_checkpoint`)."""
    return read_checkpoint(resolve_checkpoint(path_or_run_name, runs_dir, phase))


PHASE_NAMES = {"pretrain": "pretraining", "finetune": "fine-tuning"}


def load_phase_checkpoint(path_or_run_name: str | Path, phase: str,
                          runs_dir: str | Path = "runs") -> dict:
    """The checkpoint of a `phase` run ('pretrain' or 'finetune', see `resolve_checkpoint`);
    a checkpoint of the other phase is a ValueError."""
    checkpoint = load_checkpoint(path_or_run_name, runs_dir, phase)
    if checkpoint["phase"] != phase:
        raise ValueError(f"{str(path_or_run_name)!r} is a {checkpoint['phase']} checkpoint, "
                         f"not a {PHASE_NAMES[phase]} one; give a {PHASE_NAMES[phase]} run")
    return checkpoint


def pretrain_architecture(config: PretrainConfig) -> dict:
    """What a pretraining checkpoint's weights fit: image size and ARCHITECTURE_FIELDS, not
    the recipe (lr, dropout, ...)."""
    return {"image_size": config.image_size,
            **{name: getattr(config, name) for name in ARCHITECTURE_FIELDS}}


def check_architecture(found: dict, expected: dict, where: str | Path) -> None:
    """ValueError naming every field where the checkpoint's architecture differs from the
    one the config asks for (only the fields present in both are compared)."""
    mismatches = [
        f"{name}: checkpoint has {found[name]!r}, config asks for {expected[name]!r}"
        for name in expected if name in found and found[name] != expected[name]
    ]
    if mismatches:
        raise ValueError(
            f"checkpoint {where} holds another architecture ({'; '.join(mismatches)}). "
            f"Use the run's own settings (e.g. --config <run dir>/config.json) or another run"
        )


def rng_state() -> dict:
    """Every random generator the training loop draws from (loaders reseed per epoch)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
