"""`python -m apl_core course`: a bad argument is one line before any notebook runs."""
from __future__ import annotations

import pytest

from apl_core import course


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
