"""The course site's Sphinx settings. `python -m apl_core site` (make site, and the end of
make run) gathers the sources (the README as the front page, the executed notebooks, docs/)
and builds with these; see apl_core/publish.py. Everything the pages load ships with the
site: it reads the same from a web server and from file:// without a network."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from apl_core.publish import BRANCH
from apl_core.repository import repository_url

project = "APL course"
author = "the apl-course authors"
copyright = "the apl-course authors, MIT licence"

extensions = ["myst_nb"]
exclude_patterns = ["docs/figures/**"]  # the figures' PROVENANCE.md is a note, not a page

# The notebooks were executed by `make run`: the site shows those outputs, never runs them.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath"]
nb_render_markdown_format = "myst"  # the tables the notebooks print hold $math$ too
myst_heading_anchors = 3  # docs link to each other's sections: results.md#course-time
# No widget manager from a CDN: a widget output (a progress bar) shows its text form.
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]

html_theme = "sphinx_book_theme"
html_title = "APL course"
html_theme_options = {
    "repository_url": repository_url(),
    "repository_branch": BRANCH,
    "use_repository_button": True,
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "navbar_persistent": [],  # search is in the sidebar already
}
html_context = {"default_mode": "auto"}  # light or dark as the reader's system is
html_css_files = ["apl.css"]
html_static_path = ["static"]
html_show_sourcelink = False
# Search lists the pages; a summary under each would be fetched from the page, which a browser
# refuses for a site read from file://.
html_show_search_summary = False

# MathJax 3 from the sphinx-mathjax-offline package, copied into the site: only the files that
# typeset TeX as HTML (its TeX extensions, fonts and menu), not the package's 24 MB.
mathjax_path = "mathjax/tex-chtml.js"
MATHJAX = Path(importlib.util.find_spec("sphinx-mathjax-offline").origin).parent / "static" \
    / "mathjax"
MATHJAX_PARTS = ("tex-chtml.js", "input/tex", "output/chtml", "ui", "a11y")


def copy_mathjax(app, error) -> None:
    if error is not None:
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        source = MATHJAX / part
        if source.is_dir():
            shutil.copytree(source, target / part, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target / part)


def setup(app) -> None:
    app.connect("build-finished", copy_mathjax)
