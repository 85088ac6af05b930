"""Notebooks 01 and 03 offer their widget panels only where a front end renders them, never in
a headless run (apl_core.frontend)."""
from __future__ import annotations

import types

import IPython
import pytest

from apl_core import frontend


class ColabShell:
    """Stands for Colab's kernel shell, which only its module tells apart."""


ColabShell.__module__ = "google.colab._shell"
FILE_HISTORY, MEMORY_HISTORY = "/home/me/.ipython/profile_default/history.sqlite", ":memory:"
LAB_SESSION = {"JPY_SESSION_NAME": "/home/me/01_puzzle_construction.ipynb"}


def fake_shell(history: str, namespace: dict | None = None, shell_class=types.SimpleNamespace):
    shell = shell_class()
    shell.history_manager = types.SimpleNamespace(hist_file=history)
    shell.user_ns = namespace or {}
    return shell


@pytest.mark.parametrize("front_end, environment, namespace, shell_class", [
    ("JupyterLab or Notebook 7", LAB_SESSION, {}, types.SimpleNamespace),
    ("VS Code", {}, {"__vsc_ipynb_file__": "/home/me/01.ipynb"}, types.SimpleNamespace),
    ("Colab", {}, {}, ColabShell),
    ("Kaggle's editor", {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, {}, types.SimpleNamespace),
])
def test_widgets_render_in_each_front_end_and_never_in_a_headless_run(
        front_end, environment, namespace, shell_class, monkeypatch):
    for name in ("JPY_SESSION_NAME", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    shell = fake_shell(FILE_HISTORY, namespace, shell_class)
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    assert frontend.widgets_can_render(), front_end
    # the same front end's markers inherited by a papermill run (nbclient: history in memory)
    shell.history_manager.hist_file = MEMORY_HISTORY
    assert not frontend.widgets_can_render(), f"papermill started from {front_end}"


@pytest.mark.parametrize("environment", [
    {},  # an IPython or a kernel that no front end started
    {"KAGGLE_KERNEL_RUN_TYPE": "Batch"},  # Kaggle's saved, headless run
])
def test_no_widgets_without_a_front_end(environment, monkeypatch):
    for name in ("JPY_SESSION_NAME", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(IPython, "get_ipython", lambda: fake_shell(FILE_HISTORY))
    assert not frontend.widgets_can_render()


def test_no_widgets_outside_ipython(monkeypatch):
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/01_puzzle_construction.ipynb")
    assert not frontend.widgets_can_render()
