"""The exercises: every notebook ends with two to four, each solution followed by its test cell,
and the student version (`make exercises`) keeps none of the solutions. That the notebooks with
solutions pass their tests, and that the student version runs up to its first exercise, is
checked on the smoke course in tests/test_notebooks.py."""
from __future__ import annotations

import nbformat
import pytest

from apl_core import exercises
from apl_core.exercises import BEGIN, END, has_solution, strip_solutions

NOTEBOOKS = sorted(exercises.notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def solution_lines(source: str) -> list[str]:
    """The lines between the markers, stripped, without blank ones."""
    lines, inside = [], False
    for line in source.splitlines():
        if line.strip() in (BEGIN, END):
            inside = line.strip() == BEGIN
        elif inside and line.strip():
            lines.append(line.strip())
    return lines


def test_a_solution_becomes_the_placeholder_at_its_indentation():
    source = ("def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n"
              "    ### END SOLUTION\n\n### BEGIN SOLUTION\nz = f(2)\n### END SOLUTION\nprint(z)")
    assert strip_solutions(source) == (
        "def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\n"
        "# YOUR CODE HERE\nraise NotImplementedError()\nprint(z)")
    assert strip_solutions("x = 1\ny = 2") == "x = 1\ny = 2"


@pytest.mark.parametrize("source, message", [
    (f"{BEGIN}\nx = 1", f"{BEGIN} without {END}"),
    (f"x = 1\n{END}", f"line 2: {END} without {BEGIN}"),
    (f"{BEGIN}\n{BEGIN}\n{END}", f"line 2: {BEGIN} inside another solution"),
])
def test_markers_out_of_order_are_an_error_naming_the_cell_and_line(source, message):
    with pytest.raises(ValueError, match=f"^cell 3, {message}|^cell 3: {message}"):
        strip_solutions(source, "cell 3")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_ends_with_two_to_four_exercises_each_with_its_test(path):
    cells = nbformat.read(path, as_version=4).cells
    solutions = [i for i, c in enumerate(cells) if c.cell_type == "code" and has_solution(c.source)]
    assert 2 <= len(solutions) <= 4, f"{path.name}: {len(solutions)} exercises"
    first_heading = next(i for i, c in enumerate(cells)
                         if c.cell_type == "markdown" and c.source.startswith("## ")
                         and "Exercises" in c.source.splitlines()[0])
    assert first_heading < solutions[0], "the exercises sit under their own heading"
    assert all(c.cell_type == "markdown" or "nb.record(" not in c.source
               for c in cells[first_heading:]), "results are recorded before the exercises"
    for i in solutions:
        test = cells[i + 1]
        assert test.cell_type == "code" and "assert" in test.source, \
            f"{path.name} cell {i}: the solution's next cell must test it"
        assert not has_solution(test.source)
        assert solution_lines(cells[i].source), f"{path.name} cell {i}: an empty solution"


def test_the_student_version_keeps_no_solution_and_everything_else(tmp_path):
    written = exercises.write_student_version(tmp_path / "student")
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    for path, student_path in zip(NOTEBOOKS, written):
        original = nbformat.read(path, as_version=4)
        student = nbformat.read(student_path, as_version=4)
        nbformat.validate(student)
        assert len(student.cells) == len(original.cells)
        for cell, given in zip(original.cells, student.cells):
            assert BEGIN not in given.source and END not in given.source
            if cell.cell_type != "code" or not has_solution(cell.source):
                assert given.source == cell.source and given.metadata == cell.metadata
                continue
            outside = set(strip_solutions(cell.source).splitlines())
            for line in solution_lines(cell.source):
                assert line not in {text.strip() for text in given.source.splitlines()} or \
                    any(line == text.strip() for text in outside), \
                    f"{path.name}: solution line {line!r} left in the student version"
            assert "raise NotImplementedError()" in given.source


def test_the_student_version_clears_outputs(tmp_path):
    cell = nbformat.v4.new_code_cell(f"{BEGIN}\nx = 1\n{END}", execution_count=3,
                                     outputs=[nbformat.v4.new_output("stream", text="1")])
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / "01_x.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "notes.ipynb")  # not a course one
    [written] = exercises.write_student_version(tmp_path / "out", tmp_path)
    [given] = nbformat.read(written, as_version=4).cells
    assert given.outputs == [] and given.execution_count is None
    assert given.source == "# YOUR CODE HERE\nraise NotImplementedError()"


def test_make_exercises_writes_the_student_notebooks(tmp_path, capsys):
    assert exercises.main(["--out", str(tmp_path / "student")]) == 0
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == \
        [p.name for p in NOTEBOOKS]
    assert f"{len(NOTEBOOKS)} student notebooks in" in capsys.readouterr().out


def test_a_broken_notebook_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    cell = nbformat.v4.new_code_cell(f"{BEGIN}\nx = 1")
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / "01_x.ipynb")
    monkeypatch.setattr(exercises, "notebooks_dir", lambda: tmp_path)
    assert exercises.main(["--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == \
        f"exercises: 01_x.ipynb cell 0: {BEGIN} without {END}"
