"""`python -m apl_core`: options from the dataclasses, config files, errors, kill and resume."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from apl_core.checkpoint import read_checkpoint
from apl_core.cli import build_parser, config_from_args, main
from apl_core.config import FinetuneConfig, PretrainConfig, profile_config
from apl_core.objective import learning_rate
from apl_core.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def config_of(argv):
    args = build_parser().parse_args(argv)
    return config_from_args(args.command, args)


def test_help_lists_every_option_with_its_default(capsys):
    for phase, config_class in (("pretrain", PretrainConfig), ("finetune", FinetuneConfig)):
        with pytest.raises(SystemExit):
            main([phase, "--help"])
        text = capsys.readouterr().out
        for field in dataclasses.fields(config_class):
            assert "--" + field.name.replace("_", "-") in text
        assert "(default: 7)" in text if phase == "pretrain" else "(default: 30)" in text


@pytest.mark.parametrize("command", [[], ["pretrain"], ["finetune"], ["course"], ["site"]])
def test_help_answers_without_importing_torch(command):
    """--help is read before anything heavy is imported (it answers in a tenth of a second
    where importing torch takes seconds)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "apl_core", *command,
                           "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m apl_core")
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "apl_core" in imported  # -X importtime listed the imports
    assert not imported & {"torch", "numpy", "matplotlib", "papermill", "sphinx"}


def test_precedence_options_over_file_over_profile(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("lr: 0.01\ngrid: 2\nheads: 3\nmlp_head: true\n")
    config = config_of(["pretrain", "--profile", "smoke", "--config", str(settings),
                        "--grid", "4", "--no-mlp-head"])
    assert (config.lr, config.grid, config.mlp_head, config.image_size) == (0.01, 4, False, 32)
    assert config_of(["finetune", "--architecture", '{"grid": 4, "heads": 3}',
                      "--image-size", "32"]).architecture == {"grid": 4, "heads": 3}


def test_yaml_exponent_without_a_dot_is_a_float(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("lr: 1e-3\nweight_decay: 5E-5\n")
    config = config_of(["pretrain", "--config", str(settings)])
    assert (config.lr, config.weight_decay) == (1e-3, 5e-5)


def test_profile_benchmark_builds_the_profile_architecture():
    for profile in ("smoke", "quick"):
        config = config_of(["finetune", "--profile", profile])
        pretrain = config_of(["pretrain", "--profile", profile])
        assert config.benchmark
        assert {name: config.architecture[name] for name in ("grid", "crop", "heads", "blocks")} \
            == {"grid": pretrain.grid, "crop": pretrain.crop, "heads": pretrain.heads,
                "blocks": pretrain.blocks}


def test_head_only_takes_the_profiles_probe_settings():
    probe = config_of(["finetune", "--profile", "quick", "--head-only"])
    assert probe == profile_config("quick", "probe")
    assert probe.lr != profile_config("quick", "finetune").lr
    assert config_of(["finetune", "--profile", "quick", "--head-only", "--lr", "0.1"]).lr == 0.1
    assert config_of(["finetune", "--profile", "quick"]).lr == profile_config("quick",
                                                                              "finetune").lr


def test_finetune_from_a_run_takes_the_runs_architecture_not_the_profiles(pretrained_run):
    """The quick profile's BENCHMARK architecture (4 blocks) must not be checked against a
    pretrained run of another one (the smoke run has 2 blocks)."""
    config = config_of(["finetune", "--profile", "quick", "--image-size", "32",
                        "--pretrained", str(pretrained_run.run_dir)])
    assert config.architecture == {} and config.pretrained
    from apl_core.train import load_finetune_model

    model, architecture = load_finetune_model(config)
    assert architecture["blocks"] == pretrained_run.config.blocks
    assert len(model.transformer.blocks) == pretrained_run.config.blocks


def test_course_profile_auto(tmp_path):
    from apl_core.course import default_profile
    from apl_core.data import STL10_FILES, STL10_FOLDER
    from apl_core.data.stl10 import STL10_CLASS_FILE

    assert default_profile("cpu", tmp_path) == "quick"
    assert default_profile("cuda", tmp_path) == "gpu"
    folder = tmp_path / STL10_FOLDER
    folder.mkdir()
    for name in [n for pair in STL10_FILES.values() for n in pair if n]:
        (folder / name).write_bytes(b"")
    assert default_profile("cuda", tmp_path) == "gpu"  # no class names: not loadable
    (folder / STL10_CLASS_FILE).write_text("airplane\n")
    assert default_profile("cuda:1", tmp_path) == "paper"


def test_unknown_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--gird", "4"])
    assert exit_.value.code == 2 and "--gird" in capsys.readouterr().err


def test_config_file_with_a_wrong_type_names_the_field(tmp_path, capsys):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"epochs": "ten"}))
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--config", str(settings)])
    assert exit_.value.code == 2 and "epochs='ten'" in capsys.readouterr().err


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    assert main(["pretrain", "--profile", "smoke", "--runs-dir", str(tmp_path), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_resume_a_run_for_more_epochs_from_its_config_json(tmp_path, capsys):
    assert main(["pretrain", "--profile", "smoke", "--runs-dir", str(tmp_path), "--epochs", "1",
                 "--num-images", "512", "--holdout-images", "128"]) == 0
    run_dir = Path(capsys.readouterr().out.split("run directory: ")[1].split()[0])
    assert main(["pretrain", "--config", str(run_dir / "config.json"), "--resume",
                 "--epochs", "2"]) == 0
    rows = read_metrics(run_dir)
    config = PretrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert [row["epoch"] for row in rows] == [1, 2] and config.epochs == 2
    assert rows[1]["lr"] == pytest.approx(learning_rate(1, config))  # the 2-epoch schedule


def test_course_forwards_its_arguments(monkeypatch):
    received = []
    monkeypatch.setitem(sys.modules, "apl_core.course",
                        types.SimpleNamespace(main=lambda argv: received.append(argv)))
    assert main(["course", "--profile", "smoke", "--out", "x"]) == 0
    assert received == [["--profile", "smoke", "--out", "x"]]


@pytest.mark.slow  # two fresh Python processes: ~30 s, most of it importing torch
def test_sigkill_mid_epoch_then_resume_finishes(tmp_path):
    command = [sys.executable, "-m", "apl_core", "pretrain", "--profile", "smoke", "--quiet",
               "--device", "cpu", "--runs-dir", str(tmp_path), "--run-name", "killed",
               "--epochs", "3", "--num-images", "1280"]
    last = tmp_path / "pretrain" / "killed" / "last.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see conftest.py
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not last.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
        time.sleep(0.3)  # well inside epoch 2
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert read_checkpoint(last)["epoch"] == 1, "the kill did not land in epoch 2"
    done = subprocess.run(command + ["--resume"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"run directory: {last.parent}" in done.stdout
    assert [row["epoch"] for row in read_metrics(last.parent)] == [1, 2, 3]
    assert read_checkpoint(last)["epoch"] == 3
