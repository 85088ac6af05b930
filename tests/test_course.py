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

from apl_core import course, publish, repository
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


# ---------------------------------------------------------------- the course site

def executed_notebook(path: Path, title: str, outputs: list) -> None:
    """A small executed notebook: a title with math, and one code cell with `outputs`."""
    cell = nbformat.v4.new_code_cell("print('hello')", execution_count=1)
    cell.outputs = outputs
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# {title}\n\nA grid of $G \\times G$ patches."), cell],
        metadata={"language_info": {"name": "python"}}), path)


def a_figure() -> str:
    """A 1 x 1 PNG, base64."""
    import base64
    import io

    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(0.1, 0.1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def small_course(tmp_path):
    """OUT as a course run leaves it, with small notebooks of the course's names."""
    out = tmp_path / "out"
    out.mkdir()
    for name in repository.course_notebooks():
        executed_notebook(out / f"{name}.ipynb", f"{name[:2]} · notebook {name}", [
            nbformat.v4.new_output("stream", name="stdout", text="hello\n"),
            nbformat.v4.new_output("display_data", data={"image/png": a_figure()})])
    return out


def test_a_site_without_an_executed_course_says_in_one_line_to_run_make_run(tmp_path, capsys):
    assert publish.main(["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"site not built: no executed notebooks in {tmp_path}: run `make run` first "
                   f"(it executes the course and builds the site)")
    assert not (tmp_path / "site").exists()


def test_the_site_has_a_page_per_notebook_with_its_launch_links_and_figures(small_course):
    last = small_course / f"{repository.course_notebooks()[-1]}.ipynb"
    with_widget = nbformat.read(last, as_version=4)  # a progress bar, as tqdm shows it
    with_widget.cells[1].outputs.append(nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "a1", "version_major": 2,
                                                     "version_minor": 0},
        "text/plain": "epochs: 100%|##########| 3/3"}))
    with_widget.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": {}, "version_major": 2, "version_minor": 0}}
    nbformat.write(with_widget, last)
    index, problems = publish.build_site(small_course)
    assert problems == []  # Sphinx's -W: not one warning
    assert index == small_course / "site" / "index.html"
    assert "apl-course: learn, run and extend APL pretraining" in index.read_text()
    widget_page = (small_course / "site" / "notebooks" / f"{last.stem}.html").read_text()
    assert "epochs: 100%|##########| 3/3" in widget_page  # its text: no widget manager
    for page in (small_course / "site").rglob("*.html"):  # nothing from a CDN
        assert not re.search(r"<script[^>]+src=\"(https?:)?//", page.read_text()), page
    for name in repository.course_notebooks():
        page = (small_course / "site" / "notebooks" / f"{name}.html").read_text()
        for url in publish.notebook_links(name).values():
            assert f'href="{url}"' in page
        assert 'src="../_images/' in page and "hello" in page
        assert "print(" in page  # the code is shown, as it ran
    for chapter in publish.chapters():
        assert (small_course / "site" / "docs" / f"{chapter}.html").is_file()
    assert (small_course / "site" / "_static" / "mathjax" / "tex-chtml.js").is_file()


def test_a_broken_notebook_is_named_and_the_rest_of_the_site_is_built(small_course, capsys):
    first, second, third, *_ = repository.course_notebooks()
    text = (small_course / f"{first}.ipynb").read_text()
    (small_course / f"{first}.ipynb").write_text(text[:len(text) // 2])  # cut short
    executed_notebook(small_course / f"{second}.ipynb", "02 · a broken figure", [
        nbformat.v4.new_output("display_data", data={"image/png": "not an image"}),
        nbformat.v4.new_output("stream", name="stdout", text="still shown\n")])
    (small_course / f"{third}.ipynb").unlink()  # a run with --only
    old_site = small_course / "site" / "old.html"
    old_site.parent.mkdir()
    old_site.write_text("a site built before")

    assert publish.main(["--out", str(small_course)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"site: not executed in {small_course}, so not in the site (a run with "
                      f"--only?): {third}")
    assert err[1].startswith(f"site: {first}: {small_course / first}.ipynb could not be read "
                             f"(NotJSONError") and err[1].endswith("its page says so")
    assert err[2] == (f"site: {second}: cell 2's output 1: its image/png is not valid base64; "
                      f"left out")
    assert len(err) == 3
    site = small_course / "site"
    assert not old_site.exists()  # replaced by the new build
    assert "could not be read" in (site / "notebooks" / f"{first}.html").read_text()
    page = (site / "notebooks" / f"{second}.html").read_text()
    assert "this output could not be shown: its image/png is not valid base64" in page
    assert "still shown" in page
    assert not (site / "notebooks" / f"{third}.html").exists()
    for name in repository.course_notebooks()[3:]:
        assert (site / "notebooks" / f"{name}.html").is_file()


def test_the_notebooks_open_on_colab_and_kaggle_from_the_repository(monkeypatch):
    monkeypatch.setattr(publish, "repository_url", lambda: "https://github.com/someone/apl")
    assert publish.notebook_links("01_puzzle_construction") == {
        "Colab": "https://colab.research.google.com/github/someone/apl/blob/main/notebooks/"
                 "01_puzzle_construction.ipynb",
        "Kaggle": "https://kaggle.com/kernels/welcome?src=https://github.com/someone/apl/blob/"
                  "main/notebooks/01_puzzle_construction.ipynb"}


@pytest.mark.slow
def test_the_course_runs_site_builds_without_a_warning(smoke_course):
    """The site of the smoke course (run once for the notebook and browser tests), built
    again: not one warning (Sphinx's -W), every notebook a page."""
    out, rows = smoke_course
    index, problems = publish.build_site(out)
    assert problems == []
    for row in rows:
        assert (out / "site" / "notebooks" / f"{row['notebook']}.html").is_file()
