"""What a finished course publishes: the course site and the README's figures.

    build_site       OUT/site: the README, the executed notebooks in OUT and docs/ as one web
                     site that works offline (Sphinx with myst-nb and the book theme, settings in
                     site/conf.py); `python -m apl_core site` (make site) and the end of make run
    notebook_links   a notebook's "Open in Colab" and "Open in Kaggle" addresses
    publish_figures  the README's figures, with a note of what made them (make figures)

The repository's public address is set once, as [project.urls] Repository in pyproject.toml
(read by apl_core.repository); the site, the notebooks' setup cell (apl_core.setup_cell) and
CITATION.cff take it from there.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .repository import ROOT, course_notebooks, repository_url
from .setup_cell import MARK

SITE_CONFIG = ROOT / "site"  # conf.py: the site's Sphinx settings
BRANCH = "main"  # the branch whose notebooks the Colab and Kaggle links open
# The figures the README shows, as `make figures` publishes them to docs/figures/.
README_FIGURES = ("01_puzzle_photo", "01_dataset_puzzle", "03_confusion", "03_attention",
                  "03_reassembled_puzzles", "04_accuracy_vs_npc", "06_controls_seeds")


class SiteError(RuntimeError):
    """The site cannot be built: no executed course, no checkout, Sphinx missing or failing."""


def notebook_links(name: str) -> dict[str, str]:
    """Where notebook `name` (e.g. '01_puzzle_construction') opens on Colab and on Kaggle:
    the committed notebook in the repository, whose first cell installs the course there."""
    repository = repository_url()
    path = f"blob/{BRANCH}/notebooks/{name}.ipynb"
    github = repository.removeprefix("https://github.com/")
    return {"Colab": f"https://colab.research.google.com/github/{github}/{path}",
            "Kaggle": f"https://kaggle.com/kernels/welcome?src={repository}/{path}"}


def chapters() -> list[str]:
    """docs/*.md in the order of the README's "Read more" list, then any it does not name:
    the site's chapters after the notebooks."""
    readme = (ROOT / "README.md").read_text()
    read_more = readme[readme.find("## Read more"):]

    def place(path: Path) -> tuple:
        at = read_more.find(f"](docs/{path.name})")
        return at < 0, at, path.name

    return [path.stem for path in sorted((ROOT / "docs").glob("*.md"), key=place)]


# ---------------------------------------------------------------- the sources of the site

def output_problem(output: dict) -> str | None:
    """What is wrong with one cell output, or None: it must be a valid nbformat 4 output and
    its images must decode."""
    import nbformat

    try:
        nbformat.validate(output, ref="output", version=4, version_minor=5)
    except nbformat.ValidationError as err:
        return f"not a notebook output ({str(err).splitlines()[0]})"
    for kind, data in output.get("data", {}).items():
        if kind in ("image/png", "image/jpeg"):
            try:
                base64.b64decode("".join(data) if isinstance(data, list) else data,
                                 validate=True)
            except (binascii.Error, ValueError):
                return f"its {kind} is not valid base64"
    return None


def launch_links(name: str) -> str:
    links = " ".join(f'<a class="apl-launch" href="{url}">Open in {service}</a>'
                       for service, url in notebook_links(name).items())
    return f'<p class="apl-launch-links">{links}</p>'


def stage_notebook(executed: Path, dest: Path) -> list[str]:
    """Write the site's copy of an executed notebook to `dest` (.ipynb) and return what was
    wrong with it. An unreadable notebook becomes a page (.md) that says so; a broken output
    is replaced by a line that names it; the rest of the notebook is kept. The setup cell
    (it does nothing in the repository) is left out, and the Colab and Kaggle links go under
    the title."""
    import nbformat

    name = executed.stem
    try:
        notebook = nbformat.read(executed, as_version=4)
    except Exception as err:  # not JSON, not a notebook, cut short
        message = f"{executed} could not be read ({type(err).__name__}: {err})"
        dest.with_suffix(".md").write_text(
            f"# {name}\n\nThe executed notebook {message}. Run `make run` again to execute "
            f"it; the notebook itself is `notebooks/{name}.ipynb`.\n")
        return [f"{name}: {message}; its page says so"]
    problems = []
    for number, cell in enumerate(notebook.cells, 1):
        outputs = cell.get("outputs", [])
        for index, output in enumerate(outputs):
            problem = output_problem(output)
            if problem:
                problems.append(f"{name}: cell {number}'s output {index + 1}: {problem}; "
                                f"left out")
                outputs[index] = nbformat.v4.new_output(
                    "stream", name="stderr",
                    text=f"[this output could not be shown: {problem}]\n")
    notebook.cells = [cell for cell in notebook.cells
                      if not (cell.cell_type == "code" and
                              cell.source.startswith(MARK))]
    title = notebook.cells[0] if notebook.cells else None
    if title is not None and title.cell_type == "markdown" and title.source.startswith("# "):
        heading, _, rest = title.source.partition("\n")
        title.source = f"{heading}\n\n{launch_links(name)}\n{rest}"
    else:
        notebook.cells.insert(0, nbformat.v4.new_markdown_cell(launch_links(name)))
    nbformat.write(notebook, dest)
    return problems


def toctree(caption: str, entries: list[str]) -> str:
    lines = "\n".join(entries)
    return f"\n```{{toctree}}\n:hidden:\n:caption: {caption}\n\n{lines}\n```\n"


def stage_sources(out: Path, src: Path) -> list[str]:
    """The site's sources in `src`: index.md (the README and the table of contents),
    notebooks/ (the executed notebooks in OUT) and docs/. Returns what is missing or
    broken, one line each; SiteError when OUT holds no executed notebook."""
    names = course_notebooks()
    executed = [name for name in names if (out / f"{name}.ipynb").is_file()]
    if not executed:
        raise SiteError(f"no executed notebooks in {out}: run `make run` first (it executes "
                        f"the course and builds the site)")
    missing = [name for name in names if name not in executed]
    problems = [f"not executed in {out}, so not in the site (a run with --only?): "
                f"{', '.join(missing)}"] if missing else []
    (src / "notebooks").mkdir(parents=True)
    for name in executed:
        problems += stage_notebook(out / f"{name}.ipynb", src / "notebooks" / f"{name}.ipynb")
    shutil.copytree(ROOT / "docs", src / "docs")
    readme = (ROOT / "README.md").read_text()
    (src / "index.md").write_text(
        readme + toctree("The course", [f"notebooks/{name}" for name in executed])
        + toctree("Read more", [f"docs/{name}" for name in chapters()]))
    return problems


# ---------------------------------------------------------------- the build

def build_site(out: str | Path) -> tuple[Path, list[str]]:
    """Build OUT/site from the executed notebooks in OUT, the README and docs/, without
    executing anything. Returns its index.html and what went wrong on the way, one line
    each: a notebook missing or broken (its page or output says so, the rest is built) and
    Sphinx's warnings. A site that was there is replaced only once the new one is built."""
    out = Path(out).resolve()
    if not (ROOT / "README.md").is_file() or not (SITE_CONFIG / "conf.py").is_file():
        raise SiteError(f"the site is built from a checkout of the repository; {ROOT} has no "
                        f"README.md or site/conf.py")
    if importlib.util.find_spec("sphinx") is None:
        raise SiteError("the site needs Sphinx: pip install -e '.[site]'")
    with tempfile.TemporaryDirectory(prefix="apl-site-") as work:
        work = Path(work)
        problems = stage_sources(out, work / "src")
        # its own process: Sphinx and its extensions register themselves with docutils for good
        sphinx = subprocess.run(
            [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(SITE_CONFIG), "-d",
             str(work / "doctrees"), "-q", "--no-color", "-w", str(work / "warnings.log"),
             str(work / "src"), str(work / "site")], capture_output=True, text=True)
        warnings = (work / "warnings.log").read_text() if (work / "warnings.log").exists() \
            else ""
        problems += [line.replace(f"{work / 'src'}/", "") for line in warnings.splitlines()
                     if line.strip()]
        if sphinx.returncode:
            raise SiteError(f"Sphinx failed:\n{sphinx.stderr.strip()[-3000:]}")
        site = out / "site"
        if site.exists():
            shutil.rmtree(site)
        shutil.move(work / "site", site)
    return site / "index.html", problems


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m apl_core site",
        description="Build the course site (OUT/site/index.html) from the executed notebooks "
                    "in OUT, the README and docs/, without executing anything: it works "
                    "offline, math and search included.")
    parser.add_argument("--out", default="course_output",
                        help="the course's output folder, as make run wrote it "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        index, problems = build_site(args.out)
    except SiteError as err:
        print(f"site not built: {err}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"site: {problem}", file=sys.stderr)
    print(f"course site: {index} ({folder_size(index.parent) / 2**20:.1f} MiB, "
          f"{time.perf_counter() - start:.0f} s)")
    return 0


def missing_readme_figures(out: Path) -> list[str]:
    """The README_FIGURES that OUT/figures lacks (a course run with --only draws some)."""
    return [name for name in README_FIGURES if not (out / "figures" / f"{name}.png").is_file()]


def publish_figures(out: Path, dest: Path, profile: str, device: str) -> None:
    """Copy README_FIGURES from OUT/figures to `dest` with a PROVENANCE.md that says which
    profile, machine and date made them (`missing_readme_figures` first: all must exist). Its
    first paragraph is this stamp; the paragraphs after it, written by hand about figures
    that other runs make (the browser test's screenshots), are kept."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in README_FIGURES:
        shutil.copy(out / "figures" / f"{name}.png", dest / f"{name}.png")
    import torch

    from .device import machine_description

    stamp = time.strftime("%Y-%m-%d")
    provenance = dest / "PROVENANCE.md"
    kept = provenance.read_text().split("\n\n", 1)[1:] if provenance.exists() else []
    provenance.write_text("\n\n".join([
        f"Drawn by `make figures`: the {profile} profile on {machine_description(device)}, "
        f"torch {torch.__version__}, {stamp}.\n", *kept]))
