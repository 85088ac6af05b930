"""What a finished course publishes: OUT/index.html, every executed notebook as a web page,
and the README's figures with a note of what made them (`make figures`)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

# The figures the README shows, as `make figures` publishes them to docs/figures/.
README_FIGURES = ("01_puzzle_photo", "01_dataset_puzzle", "03_confusion", "03_attention",
                  "03_reassembled_puzzles", "04_accuracy_vs_npc", "06_controls_seeds")


def missing_readme_figures(out: Path) -> list[str]:
    """The README_FIGURES that OUT/figures lacks (a course run with --only draws some)."""
    return [name for name in README_FIGURES if not (out / "figures" / f"{name}.png").is_file()]


def publish_figures(out: Path, dest: Path, profile: str, device: str) -> None:
    """Copy README_FIGURES from OUT/figures to `dest` with a PROVENANCE.md that says which
    profile, machine and date made them (`missing_readme_figures` first: all must exist)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in README_FIGURES:
        shutil.copy(out / "figures" / f"{name}.png", dest / f"{name}.png")
    import torch

    from .device import machine_description

    stamp = time.strftime("%Y-%m-%d")
    (dest / "PROVENANCE.md").write_text(
        f"Drawn by `make figures`: the {profile} profile on {machine_description(device)}, "
        f"torch {torch.__version__}, {stamp}.\n")


def write_index(out: Path, rows: list[dict], profile: str, device: str) -> Path:
    """OUT/index.html: every executed notebook as HTML (figures embedded) under OUT/html/,
    linked from one page, so the course can be read in a browser without Jupyter."""
    import html

    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    pages = out / "html"
    pages.mkdir(exist_ok=True)
    items = []
    for row in rows:
        body, _ = exporter.from_filename(row["executed"])
        page = pages / f"{row['notebook']}.html"
        page.write_text(body, encoding="utf-8")
        items.append(f'<li><a href="html/{page.name}">{html.escape(row["notebook"])}</a> '
                     f'({row["seconds"]:.0f} s)</li>')
    figure = out / "figures" / "04_accuracy_vs_npc.png"
    extra = (f'<p><img src="figures/{figure.name}" alt="accuracy vs NPC" width="720"></p>'
             if figure.exists() else "")
    index = out / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>APL course</title><style>"
        "body{font-family:sans-serif;max-width:760px;margin:2em auto;line-height:1.5}"
        "</style></head><body><h1>APL course: the executed notebooks</h1>"
        f"<p>profile <b>{html.escape(profile)}</b>, device <b>{html.escape(device)}</b>. "
        "Each notebook as a web page, with its figures and outputs:</p>"
        f"<ol>{''.join(items)}</ol>{extra}</body></html>\n", encoding="utf-8")
    return index
