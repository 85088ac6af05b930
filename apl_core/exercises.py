"""The student version of the notebooks: every exercise's solution taken out.

    python -m apl_core.exercises --out course_output/student     (make exercises)

Each notebook ends with exercises. A solution sits in its code cell between nbgrader's markers

    ### BEGIN SOLUTION
    ...
    ### END SOLUTION

and the next cell tests it with plain asserts. The student version replaces every marked region
by what nbgrader's generate_assignment writes there, at the marker's indentation,

    # YOUR CODE HERE
    raise NotImplementedError()

keeps the test cells, and strips outputs; the notebooks run unchanged up to their first
exercise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
PLACEHOLDER = ("# YOUR CODE HERE", "raise NotImplementedError()")


def strip_solutions(source: str, where: str = "a cell") -> str:
    """`source` with each BEGIN/END SOLUTION region, markers included, replaced by the
    placeholder; a marker out of order is a ValueError naming `where`."""
    lines, inside, indent = [], False, ""
    for number, line in enumerate(source.splitlines(), 1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN} inside another solution")
            inside, indent = True, line[:len(line) - len(line.lstrip())]
            lines.extend(indent + text for text in PLACEHOLDER)
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            lines.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} without {END}")
    return "\n".join(lines)


def has_solution(source: str) -> bool:
    return any(line.strip() == BEGIN for line in source.splitlines())


def student_notebook(path: str | Path) -> nbformat.NotebookNode:
    """The notebook at `path` with its solutions stripped and its outputs cleared."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        cell.source = strip_solutions(cell.source, f"{Path(path).name} cell {index}")
        cell.outputs, cell.execution_count = [], None
    return nb


def notebooks_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "notebooks"


def write_student_version(out: str | Path, notebooks: str | Path | None = None) -> list[Path]:
    """Every numbered notebook of `notebooks` (the course's by default), solutions stripped,
    written to `out` under its own name; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(Path(notebooks or notebooks_dir()).glob("[0-9][0-9]_*.ipynb")):
        target = out / path.name
        nbformat.write(student_notebook(path), target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apl_core.exercises",
                                     description="Write the student version of the notebooks: "
                                                 "every exercise's solution stripped.")
    parser.add_argument("--out", default="course_output/student",
                        help="folder for the student notebooks (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        written = write_student_version(args.out)
    except ValueError as err:
        print(f"exercises: {err}", file=sys.stderr)
        return 1
    print(f"{len(written)} student notebooks in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
