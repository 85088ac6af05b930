"""How much each notebook teaches in prose against how much it makes the reader run.

    python benchmarks/notebook_prose.py

Per notebook: the words of its markdown cells (prose), the non-blank lines of its code cells
(not the Colab and Kaggle setup cell, the same in every notebook), words per code line, and
the setup share: the parameters cell and the cell after it (the imports and paths) as a share
of the code lines. The course asks for at least 9 words of prose
per code line (tests/test_notebooks.py holds every notebook to it).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
WORDS_PER_LINE = 9


def prose_counts(path: Path) -> dict:
    """{"prose words", "code lines", "words per line", "setup share"} of one notebook."""
    cells = json.loads(path.read_text())["cells"]
    words = sum(len(re.findall(r"[A-Za-z0-9][\w'.,%-]*", "".join(c["source"])))
                for c in cells if c["cell_type"] == "markdown")
    code = [c for c in cells if c["cell_type"] == "code" and c.get("id") != "setup"]
    lines = [sum(1 for line in "".join(c["source"]).splitlines() if line.strip()) for c in code]
    first = next(i for i, c in enumerate(code) if "parameters" in c["metadata"].get("tags", []))
    setup = sum(lines[first:first + 2])
    return {"notebook": path.stem, "prose words": words, "code lines": sum(lines),
            "words per line": round(words / sum(lines), 1),
            "setup share": f"{100 * setup / sum(lines):.0f} %"}


def main() -> None:
    rows = [prose_counts(path) for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))]
    sys.path.insert(0, str(NOTEBOOKS.parent))
    from apl_core.tables import markdown_table

    print(markdown_table(rows))


if __name__ == "__main__":
    main()
