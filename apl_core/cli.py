"""Command line: `python -m apl_core pretrain|finetune [options]`, `... course [options]` and
`... site [options]`.

Every config field is an option (`--grid 4`, `--mlp-head` / `--no-mlp-head`), generated from
the dataclass with its default shown in --help. A config is built from, in order of
precedence: the options given, then `--config FILE` (JSON or YAML), then `--profile`, then the
dataclass defaults. A run's own config.json is a valid --config file, so
`--config runs/pretrain/NAME/config.json --resume --epochs 600` continues a run for longer.
Nothing here imports torch before the arguments are read: `--help` answers at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import yaml

from .config import (
    DATASETS, ENCODERS, FINETUNE_MODELS, OPTIMIZERS, PHASES, PRECISIONS, PROFILES,
    UNREADABLE_IMAGES, profile_values,
)

COMMANDS = ("pretrain", "finetune")  # `finetune --head-only` trains the head alone
OPTION_TYPES = {"int": int, "float": float, "str": str, "dict": json.loads}
CHOICES = {"dataset": DATASETS, "encoder": ENCODERS, "optimizer": OPTIMIZERS,
           "precision": PRECISIONS, "model": FINETUNE_MODELS,
           "unreadable_images": UNREADABLE_IMAGES}


def _add_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
    """One option per dataclass field; unset options stay out of the namespace, so that
    only the options the user typed override the profile and the config file."""
    default = field.default_factory() if callable(field.default_factory) else field.default
    flag = "--" + field.name.replace("_", "-")
    if field.type == "bool":
        parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                            default=argparse.SUPPRESS, help=f"(default: {default})")
        return
    metavar = "JSON" if field.type == "dict" else field.type.upper()
    parser.add_argument(flag, type=OPTION_TYPES[field.type], default=argparse.SUPPRESS,
                        choices=CHOICES.get(field.name), metavar=metavar,
                        help=f"(default: {default!r})" + (
                            f" one of {', '.join(CHOICES[field.name])}"
                            if field.name in CHOICES else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apl_core",
        description="APL pretraining and fine-tuning (see README.md). Each run prints its "
                    "run directory, which holds config.json, metrics.jsonl, tb/ and last.pt.")
    commands = parser.add_subparsers(dest="command", required=True)
    for phase in COMMANDS:
        config_class = PHASES[phase]
        sub = commands.add_parser(phase, help=f"{phase} (options: {phase} --help)",
                                  description=(config_class.__doc__ or "").strip())
        sub.add_argument("--profile", choices=sorted(PROFILES),
                         help="start from a profile's settings (smoke: seconds, quick: "
                              "minutes on a CPU, gpu: the original's model on the embedded "
                              "dataset, paper: the original's; default: paper)")
        sub.add_argument("--config", metavar="FILE", type=Path,
                         help="JSON or YAML file of settings; options given here win")
        sub.add_argument("--resume", action="store_true",
                         help="continue the run these settings name (or --run-name) from "
                              "its last.pt; an error when there is none")
        for field in dataclasses.fields(config_class):
            _add_field(sub, field)
    commands.add_parser("course", add_help=False,
                        help="run the course notebooks headless (options: course --help)")
    commands.add_parser("site", add_help=False,
                        help="build the course site from the executed notebooks "
                             "(options: site --help)")
    return parser


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; read it as the float a user means."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_config_file(path: Path) -> dict:
    """Settings from a JSON or YAML file (a mapping of field names to values)."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    values = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_YamlLoader)
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of option names to values, "
                         f"got {type(values).__name__}")
    return values


def config_from_args(phase: str, args: argparse.Namespace):
    """The phase's config: defaults < --profile < --config file < explicit options.
    `finetune --head-only` trains the head alone and takes the profile's probe settings."""
    profile_phase = "probe" if phase == "finetune" and getattr(args, "head_only", False) else phase
    values = profile_values(args.profile, profile_phase) if args.profile else {}
    if phase == "finetune" and getattr(args, "pretrained", None):
        values.pop("architecture", None)  # the pretrained run's architecture applies
    if args.config is not None:
        values.update(read_config_file(args.config))
    names = {field.name for field in dataclasses.fields(PHASES[phase])}
    values.update({name: value for name, value in vars(args).items() if name in names})
    return PHASES[phase].from_dict(values)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["course"]:
        from .course import main as course_main  # imports papermill: only when asked for

        return course_main(argv[1:]) or 0
    if argv[:1] == ["site"]:
        from .publish import main as site_main

        return site_main(argv[1:]) or 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args.command, args)
    except (ValueError, FileNotFoundError, yaml.YAMLError, json.JSONDecodeError) as error:
        parser.error(str(error))
    # torch and the data pipeline are imported after the arguments are checked: --help is quick
    from . import train
    from .checkpoint import CheckpointError
    from .distributed import shutdown

    run = {"pretrain": train.pretrain, "finetune": train.finetune}[args.command]
    try:
        result = run(config, resume=args.resume)
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError) as error:
        print(f"apl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except train.NonFiniteLossError as error:
        print(f"apl {args.command}: stopped: {error}", file=sys.stderr)
        return 1
    finally:
        shutdown()
    last = result.metrics[-1] if result.metrics else {}
    summary = ", ".join(f"{k}={v:.4g}" for k, v in last.items()
                        if k in ("train_loss", "val_top1", "test_top1", "knn_top1"))
    print(f"run directory: {result.run_dir}")
    if summary:
        print(f"epoch {last['epoch']}: {summary}")
    return 0
