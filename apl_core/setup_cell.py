"""The notebooks' first code cell: on Colab, on Kaggle, or in a notebook copied out of the
repository it installs the course where `apl_core` is missing; in the repository it does
nothing. Its text is setup_cell.txt, with the repository's address (pyproject.toml) filled in.

    python -m apl_core.setup_cell           write it into every notebook (make setup-cell)
    python -m apl_core.setup_cell --check   name the notebooks whose first code cell differs

The notebooks' kernelspec is written too: the `apl-course` kernel that make setup registers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .repository import ROOT, course_notebooks, repository_url

TEMPLATE = Path(__file__).with_name("setup_cell.txt")
MARK = "# Setup for Colab and Kaggle"  # its first line: how an older copy is recognised
CELL_ID = "setup"
KERNELSPEC = {"name": "apl-course", "display_name": "Python 3 (apl-course)",
              "language": "python"}


def cell_source() -> str:
    return TEMPLATE.read_text().replace("{repository}", repository_url()).rstrip("\n")


def first_code_cell(notebook):
    return next((cell for cell in notebook.cells if cell.cell_type == "code"), None)


def is_current(notebook) -> bool:
    cell = first_code_cell(notebook)
    return (cell is not None and cell.source == cell_source()
            and dict(notebook.metadata.get("kernelspec", {})) == KERNELSPEC)


def write_into(path: Path) -> bool:
    """Make the setup cell the first code cell of the notebook at `path` (replacing an older
    one) and name the apl-course kernel in its metadata; False when it was so already."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    if is_current(notebook):
        return False
    notebook.cells = [cell for cell in notebook.cells
                      if not (cell.cell_type == "code" and cell.source.startswith(MARK))]
    cell = nbformat.v4.new_code_cell(cell_source())
    cell.id = CELL_ID
    first = first_code_cell(notebook)
    notebook.cells.insert(notebook.cells.index(first) if first else len(notebook.cells), cell)
    notebook.metadata["kernelspec"] = dict(KERNELSPEC)
    nbformat.write(notebook, path)
    return True


def notebook_paths() -> list[Path]:
    return [ROOT / "notebooks" / f"{name}.ipynb" for name in course_notebooks()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apl_core.setup_cell",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 naming the notebooks without the cell")
    args = parser.parse_args(argv)
    if args.check:
        import nbformat

        stale = [path.name for path in notebook_paths()
                 if not is_current(nbformat.read(path, as_version=4))]
        for name in stale:
            print(f"{name}: its first code cell is not the setup cell "
                  f"(python -m apl_core.setup_cell writes it)", file=sys.stderr)
        return 1 if stale else 0
    for path in notebook_paths():
        print(f"{path.name}: {'setup cell written' if write_into(path) else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
