"""A notebook's two ends: its parameters resolved in one call at the top, and what it measured
recorded in one call at the end.

    nb = setup("03_attention_and_position_confusion", profile, output_dir, data_dir,
               runs_dir, device, pretrain_run=pretrain_run)
    ...
    nb.record(results)

`setup` creates the output folder, resolves the device (an unavailable CUDA device is a clear
error here, before any work) and gives the notebook its pretraining: the config it trains
(notebooks 01 and 02), or the run it analyses (03-06), which is the one given, else the one
notebook 02 recorded for this profile, else the profile's own run, trained now if it is
missing. `record` writes the results to OUT/<notebook>.json, where the course's tests and the
notebooks after it read them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import PretrainConfig, profile_config
from .device import resolve_device
from .model import APLPretrainModel
from .report import load_sweep
from .rundir import read_metrics, run_name
from .train import load_pretrained, pretrain

PRETRAINING_RECORD = "02_pretraining.json"
FINE_TUNING_RECORD = "04_fine_tuning.json"


@dataclass
class Notebook:
    name: str  # the notebook's file name without .ipynb: its results are OUT/<name>.json
    profile: str
    out: Path  # figures and the notebook's JSON
    device: str  # resolved: 'cpu', 'cuda' or 'cuda:N'
    settings: dict  # data_dir, runs_dir, device (as given: 'auto' stays 'auto' in configs)
    config: PretrainConfig  # the pretraining the notebook trains, or that of the run it analyses
    pretrain_run: str = ""  # the run analysed (03-06)
    model: APLPretrainModel | None = None  # that run's model, in eval mode on `device`

    def epochs_done(self) -> int:
        """Epochs the run of `config` has already trained (0 before its first checkpoint):
        what `pretrain(config, resume="auto")` reads back instead of training."""
        run_dir = Path(self.config.runs_dir) / "pretrain" / run_name(self.config)
        return len(read_metrics(run_dir)) if (run_dir / "last.pt").is_file() else 0

    def fine_tuning(self, path: str | Path = "", required: bool = True) -> dict | None:
        """Notebook 04's results (`path`, else the one in `out`). Missing: an error that names
        the notebook to run, or None where the notebook can do without (required=False)."""
        path = Path(path or self.out / FINE_TUNING_RECORD)
        if not required and not path.is_file():
            return None
        return load_sweep(path, self.profile)

    def record(self, results: dict, *copies: str | Path) -> Path:
        """Write `results` as JSON to OUT/<name>.json (and to each of `copies`)."""
        path = self.out / f"{self.name}.json"
        text = json.dumps(results, indent=2)
        for target in (path, *map(Path, copies)):
            target.write_text(text)
        print("results written to", path.resolve())
        return path


def setup(name: str, profile: str, output_dir: str | Path, data_dir: str | Path,
          runs_dir: str | Path, device: str = "auto", pretrain_run: str | None = None,
          overrides: dict | None = None) -> Notebook:
    """The notebook `name`'s folder, device and pretraining.

    pretrain_run None: `config` is the profile's pretraining with `overrides` (PretrainConfig
    fields; epochs 0 means the profile's, as the notebooks' `epochs` parameter says).
    pretrain_run a string: the run to analyse ("" finds it, see the module's docstring), its
    config and its model."""
    resolved = str(resolve_device(device))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"data_dir": str(data_dir), "runs_dir": str(runs_dir), "device": device}
    if pretrain_run is None:
        values = {k: v for k, v in (overrides or {}).items() if (k, v) != ("epochs", 0)}
        config = profile_config(profile, "pretrain", **settings, **values)
        return Notebook(name, profile, out, resolved, settings, config)
    recorded = out / PRETRAINING_RECORD
    if recorded.is_file() and json.loads(recorded.read_text()).get("profile") != profile:
        recorded = None  # another profile's run: not this notebook's
    run = profile_pretrain_run(profile, pretrain_run, recorded, **settings)
    model, config = load_pretrained(run, runs_dir=runs_dir, device=resolved)
    return Notebook(name, profile, out, resolved, settings, config, str(run), model)


def profile_pretrain_run(profile: str, pretrain_run: str = "", summary: str | Path | None = None,
                         **settings) -> str:
    """The pretraining run a notebook analyses: `pretrain_run` when given; else the run that
    notebook 02 recorded in `summary` (its 02_pretraining.json), when that file exists; else
    the profile's own run with `settings` (data_dir, runs_dir, device, ...), read back when
    finished and trained now otherwise."""
    if pretrain_run:
        return pretrain_run
    if summary is not None and Path(summary).is_file():
        return json.loads(Path(summary).read_text())["run_dir"]
    return str(pretrain(profile_config(profile, "pretrain", **settings), resume="auto").run_dir)

