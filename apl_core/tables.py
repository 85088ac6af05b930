"""Tables: rows of dicts (what every table builder of the package returns) as GitHub
markdown, for the docs and report.md, and shown in a notebook."""
from __future__ import annotations

from collections.abc import Sequence


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None,
                   formats: dict[str, str] | None = None) -> str:
    """Rows of dicts -> a GitHub markdown table, one column per key (in the order the rows
    first name them, or `columns`), values formatted with `formats[column]`; a missing or
    empty value is a dash."""
    if not rows:
        return "(no rows)"
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    formats = formats or {}

    def cell(row, col):
        v = row.get(col, "")
        if v is None or v == "":
            return "–"
        fmt = formats.get(col)
        if fmt:
            return format(v, fmt)
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if isinstance(rows[0].get(c), (int, float)) else ":---"
                            for c in columns) + "|"]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def show_table(rows: Sequence[dict], columns: Sequence[str] | None = None,
               formats: dict[str, str] | None = None, title: str = "") -> None:
    """Show `rows` in a notebook as a rendered markdown table (`markdown_table`), under a
    bold `title` when given."""
    from IPython.display import Markdown, display

    table = markdown_table(rows, columns, formats)
    display(Markdown(f"**{title}**\n\n{table}" if title else table))
