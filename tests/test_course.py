"""`python -m apl_core course`: a bad argument is one line before any notebook runs, and a course
killed during notebook 02's pretraining resumes it."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from apl_core import course
from apl_core.checkpoint import read_checkpoint
from apl_core.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_notebook_runs(monkeypatch):
    """Fail the test if the course gets as far as running a notebook."""
    def run_notebook(name, *args, **kwargs):
        pytest.fail(f"notebook {name} ran despite a bad argument")

    monkeypatch.setattr(course, "run_notebook", run_notebook)


def course_error_lines(capsys, *argv) -> list[str]:
    assert course.main(["--profile", "smoke", "--device", "cpu", *argv]) == 1
    err = capsys.readouterr().err
    return err.strip().removeprefix("course failed: ").splitlines()


@pytest.mark.parametrize("argument, line", [
    ("photo_size=abc", "-p photo_size=abc: notebook 01_puzzle_construction expects an integer, "
                       "like its default photo_size=240"),
    ("crop=2.5", "-p crop=2.5: notebook 01_puzzle_construction expects an integer"),
    ("interactive=1", "-p interactive=1: the course sets interactive itself"),
    ("grids=5", "-p grids=5: notebook 01_puzzle_construction expects a JSON list"),
    ("photo_sise=300", "-p photo_sise=300: no notebook of this run declares photo_sise; "
                       "did you mean photo_size"),
    ("device=cpu", "-p device=cpu: the course sets device itself, from --device"),
])
def test_a_bad_parameter_is_one_line_before_any_notebook_runs(argument, line, tmp_path, capsys,
                                                              no_notebook_runs):
    lines = course_error_lines(capsys, "--out", str(tmp_path), "--only", "01", "-p", argument)
    assert len(lines) == 1 and lines[0].startswith(line)


def test_each_bad_parameter_gets_its_line_and_the_good_ones_are_read_as_their_type(
        tmp_path, capsys, no_notebook_runs):
    lines = course_error_lines(capsys, "--out", str(tmp_path), "--only", "02",
                               "-p", "nosuchparam=3", "-p", "epochs=two", "-p", "seed=1")
    assert len(lines) == 2
    assert lines[0].startswith("-p nosuchparam=3: no notebook of this run declares nosuchparam;"
                               " the notebooks' parameters are epochs, overrides, run_name, seed")
    assert lines[1].startswith("-p epochs=two: notebook 02_pretraining expects an integer")
    assert course.check_parameters({"epochs": "5", "run_name": "123", "overrides": '{"lr": 1}'},
                                   ["02_pretraining"]) == \
        {"epochs": 5, "run_name": "123", "overrides": {"lr": 1}}


def test_an_output_folder_that_cannot_be_created_is_one_line(tmp_path, capsys, no_notebook_runs):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    lines = course_error_lines(capsys, "--out", str(blocker / "out"))
    assert lines == [f"--out {blocker / 'out'}: cannot create or write the output folder (Not a "
                     f"directory: {blocker / 'out'}); give a folder you can write to"]


def first_epoch_logged(out: Path) -> Path | None:
    """The pretraining run under OUT/runs once it has logged an epoch (and saved last.pt)."""
    for metrics in (out / "runs" / "pretrain").glob("*/metrics.jsonl"):
        if read_metrics(metrics.parent):
            return metrics.parent
    return None


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux): here the kernel that runs the notebook."""
    return [int(child) for path in Path(f"/proc/{pid}/task").glob("*/children")
            for child in path.read_text().split()]


@pytest.mark.slow  # two smoke runs of notebook 02
def test_a_course_killed_during_pretraining_resumes_it(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "apl_core", "course", "--profile", "smoke", "--only", "02",
               "--device", "cpu", "--out", str(out), "--data-dir", str(tmp_path / "data")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see conftest.py
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    kernels: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while (run_dir := first_epoch_logged(out)) is None:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no epoch logged after 180 s"
            kernels = children(process.pid) or kernels
            time.sleep(0.02)
        for pid in [process.pid, *kernels]:  # the course and its kernel die at once
            os.kill(pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert read_checkpoint(run_dir / "last.pt")["epoch"] < 3, "the kill came after the last epoch"

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    executed = nbformat.read(out / "02_pretraining.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    read_back, trained = map(int, re.search(
        r"3 epochs: (\d) read back from the run directory, (\d) trained now", text).groups())
    assert read_back >= 1 and read_back + trained == 3, "the run started again from epoch 1"
    assert [row["epoch"] for row in read_metrics(run_dir)] == [1, 2, 3]
    summary = json.loads((out / "figures" / "02_pretraining.json").read_text())
    assert Path(summary["run_dir"]) == run_dir


def test_a_given_pretrain_run_is_kept_over_notebook_02s(tmp_path):
    (tmp_path / "02_pretraining.json").write_text(json.dumps({"run_dir": "runs/of-02"}))
    base = {"profile": "smoke"}
    assert course.notebook_parameters("03_attention_and_position_confusion", base,
                                      tmp_path)["pretrain_run"] == "runs/of-02"
    given = course.notebook_parameters("04_fine_tuning", {**base, "pretrain_run": "mine"},
                                       tmp_path)
    assert given["pretrain_run"] == "mine"
    assert "pretrain_run" not in course.notebook_parameters("02_pretraining", base, tmp_path)
    report = course.notebook_parameters("05_reproduction_report",
                                        {**base, "finetune_results": "my.json"}, tmp_path)
    assert report["finetune_results"] == "my.json"


def test_a_committed_course_time_must_time_every_notebook(tmp_path, monkeypatch):
    monkeypatch.setattr(course, "course_time_path", lambda profile: tmp_path / "t.json")
    assert course.load_course_time("quick") is None
    timed = {"command": "python -m apl_core course --profile quick", "machine": "a CPU",
             "torch": "2.x", "total_seconds": 60.0,
             "notebooks": [{"notebook": name, "seconds": 10.0} for name in course.NOTEBOOKS]}
    (tmp_path / "t.json").write_text(json.dumps(timed))
    assert course.load_course_time("quick") == timed
    timed["notebooks"] = timed["notebooks"][:2]  # a run with --only 01,02
    (tmp_path / "t.json").write_text(json.dumps(timed))
    with pytest.raises(ValueError, match=r"t.json times \['01_puzzle_construction', "
                                         r"'02_pretraining'\], not the whole course.*make run "
                                         r"PROFILE=quick from a fresh clone"):
        course.load_course_time("quick")
