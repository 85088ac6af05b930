"""The checkout: where it is, its numbered notebooks, and its public address (which the
Colab and Kaggle links and the notebooks' setup cell open)."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def repository_url() -> str:
    """The repository's public address: [project.urls] Repository in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["urls"]["Repository"]


def course_notebooks() -> list[str]:
    """The course's notebooks, in order: the numbered notebooks of notebooks/."""
    return sorted(path.stem for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
