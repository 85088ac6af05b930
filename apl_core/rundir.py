"""Run directories: what a run is called, where it lives and what it writes there.

Each run lives in runs_dir/<phase>/<run name>/ with config.json, metrics.jsonl (one row per
epoch), TensorBoard events under tb/, last.pt (every epoch), best.pt (fine-tuning with
select_best) and snapshots/epoch<N>.pt (pretraining with snapshot_every). The name is readable and carries a digest of every setting that changes the
result, so a finished run found by name (the notebooks' cache) is always the run asked for.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from .checkpoint import list_runs, read_checkpoint, write_atomic
from .config import Config, FinetuneConfig, PretrainConfig
from .device import computed_in


def _fmt(value: float) -> str:
    return f"{value:g}"


# Settings that never change what a run computes; every other field is part of the run name.
RUN_NAME_IGNORES = ("run_name", "runs_dir", "device", "quiet", "compile", "snapshot_every")
# Settings added after runs were named, with the value every earlier run had: left out of the
# digest at that value, so that the earlier runs keep their names (and the notebooks' cache).
ADDED_SETTINGS = {"pretext": "apl"}


def _source_name(pretrained: str) -> str:
    """A pretrained run named the same way whether given as run name, directory or .pt path."""
    source = Path(pretrained)
    return source.parent.name if source.suffix == ".pt" else source.name


def run_name(config: Config) -> str:
    """config.run_name, or a readable summary of the main settings plus a digest of every
    setting that changes the result, e.g. synthetic48-G4K1-flatten-b4h3m3-n12500-do0.15-
    pdo0.1-lr0.001-bs128-e12-s0-3f9c2a1b. Finished runs are reused by name (the notebooks'
    cache), so two configs that would train differently never share one: the digest holds
    the precision the run computes in here (`computed_precision`), not 'auto', so a bf16 and
    an fp32 run of one config are two runs."""
    if config.run_name:
        return config.run_name
    c = config
    parts = [f"{c.dataset}{c.image_size}"]
    if isinstance(c, PretrainConfig):
        parts += [f"G{c.grid}K{c.crop}", c.encoder, f"b{c.blocks}h{c.heads}m{c.hidden_mult}"]
        parts += ["mlphead"] if c.mlp_head else []
        parts += [c.pretext] if c.pretext != ADDED_SETTINGS["pretext"] else []
        parts += [f"n{c.num_images}"] if c.num_images else []
    else:
        if c.model != "apl":
            parts.append(c.model)
        elif c.pretrained:
            parts.append("from-" + _source_name(c.pretrained))
        else:
            parts.append("benchmark")
        parts += [flag for flag, on in (("posemb", c.positional_embedding), ("probe", c.head_only),
                                        ("frozenenc", c.freeze_encoder), ("mlphead", c.mlp_head))
                  if on]
        parts.append(f"npc{c.npc}")
        parts += [f"{short}{_fmt(value)}" for short, value in (
            ("ls", c.label_smoothing), ("mixup", c.mixup_alpha), ("cutmix", c.cutmix_alpha),
            ("dpath", c.drop_path)) if value]
        parts += [c.augment_policy] if c.augment_policy != "none" else []
    if not (isinstance(c, FinetuneConfig) and c.model != "apl"):
        parts += [f"do{_fmt(c.dropout)}", f"pdo{_fmt(c.patch_dropout)}"]
    parts += [c.optimizer] if c.optimizer != "adam" else []
    parts.append(f"lr{_fmt(c.lr)}")
    parts += [f"wd{_fmt(c.weight_decay)}"] if c.weight_decay else []
    parts += [f"bs{c.batch_size}", f"e{c.epochs}", f"s{c.seed}"]
    settings = {**_result_settings(c.to_dict()), "precision": computed_precision(c)}
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=4)
    return "-".join(parts + [digest.hexdigest()])


def computed_precision(config: Config) -> str:
    """What config's run computes in on its device: its precision, or for 'auto' what that
    is here (device.computed_in: bf16 on a CPU with fast bf16, fp32 on another CPU)."""
    if config.precision != "auto":
        return config.precision
    return computed_in(config.precision, config.device)


def _result_settings(values: dict) -> dict:
    """The settings of a config (as a dict) that change what its run computes: all but
    RUN_NAME_IGNORES and ADDED_SETTINGS at their earlier value, without the folder of the
    synthetic images (rendered, not read), with a pretrained run by its name however it was
    given."""
    settings = {k: v for k, v in values.items() if k not in RUN_NAME_IGNORES
                and not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}
    if settings.get("dataset") == "synthetic":
        settings.pop("data_dir", None)
    if settings.get("pretrained"):
        settings["pretrained"] = _source_name(settings["pretrained"])
    return settings


def open_run(config: Config, resume: bool | str) -> tuple[Config, Path, dict | None]:
    """The config with its run name filled in (so that the run's config.json names its own
    run), the run directory, and the checkpoint to continue from (None: a new run). Refuses
    to start over an existing run, to resume when there is nothing to resume, and to resume
    a run (by a given run_name) in another precision than the one it computed in."""
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume={resume!r} is invalid: use False, True or 'auto'")
    config = config.replace(run_name=run_name(config))
    run_dir = Path(config.runs_dir) / config.phase / config.run_name
    last = run_dir / "last.pt"
    if last.is_file():
        if resume:
            checkpoint = read_checkpoint(last)
            ran_in, now = checkpoint.get("precision"), computed_precision(config)
            if ran_in is not None and ran_in != now:
                raise ValueError(
                    f"{run_dir} computed in {ran_in} and would resume in {now} here "
                    f"(precision={config.precision!r} on device={config.device!r}): one run "
                    f"would mix the two. Resume it on a machine that computes in {ran_in}, "
                    f"or start another run (another run_name)")
            # only what changes the result: another device or folder is not worth a word
            saved = _result_settings({name: value for name, value in checkpoint["config"].items()
                                      if hasattr(config, name)})
            now = _result_settings(config.to_dict())
            changed = {name: (value, now[name]) for name, value in saved.items()
                       if name in now and now[name] != value}
            if changed and not config.quiet:
                print(f"resuming {run_dir} with changed settings: " + ", ".join(
                    f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items()))
            return config, run_dir, checkpoint
        raise FileExistsError(
            f"{run_dir} already holds a run; continue it with resume=True (--resume) or "
            f"start another one with a different run_name (--run-name)"
        )
    if resume is True:
        runs = list_runs(config.runs_dir, config.phase)
        raise FileNotFoundError(
            f"nothing to resume: {last} does not exist. Runs with a checkpoint under "
            f"{Path(config.runs_dir) / config.phase}: {runs or 'none'}; pass their run_name "
            f"(--run-name), or start a new run without resume (--resume)"
        )
    return config, run_dir, None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of run_dir/metrics.jsonl (a line cut short by a kill is skipped)."""
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def train_seconds(metrics: list[dict]) -> float:
    """The seconds a run's epochs took, training and evaluation, from its metric rows."""
    return sum(row["epoch_time_s"] for row in metrics)


def last_evaluation(metrics: list[dict], run_dir: str | Path) -> dict:
    """The last row of a fine-tuning run's metrics that holds a test evaluation: the number the
    recipe fixes in advance (the best epoch would be chosen on the test set)."""
    evaluated = [row for row in metrics if "test_top1" in row]
    if not evaluated:
        raise ValueError(f"{run_dir} has no test evaluation in metrics.jsonl: the run did not "
                         f"finish; rerun notebook 04 to complete it")
    return evaluated[-1]


class RunLog:
    """config.json, metrics.jsonl and TensorBoard events of one run (written by rank 0 only).
    On resume, metrics.jsonl is rewritten from the checkpoint's rows, so it never holds
    epochs the checkpoint does not."""

    def __init__(self, run_dir: Path, config: Config, rows: list[dict]):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        write_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        self.metrics = open(run_dir / "metrics.jsonl", "a")
        self.tensorboard = SummaryWriter(run_dir / "tb", purge_step=len(rows) + 1)

    def add(self, row: dict) -> None:
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        for key, value in row.items():
            if key not in ("epoch", "step") and not isinstance(value, str):
                self.tensorboard.add_scalar(key, value, row["epoch"])
        self.tensorboard.flush()

    def close(self) -> None:
        self.metrics.close()
        self.tensorboard.close()
