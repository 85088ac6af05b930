"""What a notebook's common parameters resolve to, in one call.

Every notebook takes the same parameters (profile, data_dir, runs_dir, output_dir, device);
`workspace` turns them into the three things its cells use: the folder its figures and JSON
go to (created), the device it computes on, and the settings every run of it shares.

    out, hardware, settings = workspace(output_dir, data_dir=data_dir, runs_dir=runs_dir,
                                        device=device)
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from .device import resolve_device


class Workspace(NamedTuple):
    out: Path  # figures and the notebook's JSON
    device: str  # resolved: 'cpu', 'cuda' or 'cuda:N'
    settings: dict  # data_dir, runs_dir, device (as given: 'auto' stays 'auto' in configs)


def workspace(output_dir: str | Path, data_dir: str | Path, runs_dir: str | Path,
              device: str = "auto") -> Workspace:
    """The output folder (created), the resolved device (an unavailable CUDA device is a
    clear error here, before any work) and the run settings."""
    resolved = str(resolve_device(device))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return Workspace(out, resolved, {"data_dir": data_dir, "runs_dir": runs_dir,
                                     "device": device})
