"""Which front end runs a notebook's kernel: one that renders ipywidgets (JupyterLab, Jupyter
Notebook 7, VS Code, Colab, Kaggle's editor), or a headless run (papermill,
nbconvert --execute, nbclient). Notebooks 01 and 03 show their panels only in the first,
their static figures always.
"""
from __future__ import annotations

import os

import IPython


def widgets_can_render() -> bool:
    """Whether this kernel serves a notebook open in a front end that renders ipywidgets."""
    # Why not widgets everywhere: nbclient, which papermill and nbconvert run on, imitates the
    # Output widget of `interact` by sending what the function shows back to the kernel, and
    # with a figure-sized output the cell never finishes (nbclient #312, papermill #723).
    # nbclient starts its kernels itself, their history kept in memory: that tells a headless
    # run apart whatever else it inherits (a papermill started from a notebook's cell inherits
    # that kernel's environment).
    # The front ends: a Jupyter server names the notebook of each kernel it starts in
    # JPY_SESSION_NAME; VS Code gives its kernels __vsc_ipynb_file__; Colab's kernel runs
    # Colab's own shell; Kaggle marks an editor's session "Interactive", a saved run "Batch".
    shell = IPython.get_ipython()
    if shell is None or str(shell.history_manager.hist_file) == ":memory:":
        return False
    return bool(os.environ.get("JPY_SESSION_NAME")
                or "__vsc_ipynb_file__" in shell.user_ns
                or type(shell).__module__.startswith("google.colab")
                or os.environ.get("KAGGLE_KERNEL_RUN_TYPE") == "Interactive")
