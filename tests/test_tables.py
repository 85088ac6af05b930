"""Tables: rows of dicts as markdown, every column any row names, formatted per column."""
from __future__ import annotations

from apl_core.tables import markdown_table, show_table


def test_markdown_table_formats_columns():
    table = markdown_table([dict(a=1, b=0.1234), dict(a=2, b=None)], formats={"b": ".1%"})
    lines = table.splitlines()
    assert lines[0] == "| a | b |"
    assert lines[1] == "|---:|---:|"
    assert lines[2:] == ["| 1 | 12.3% |", "| 2 | – |"]


def test_numbers_align_right_text_left_and_floats_keep_four_digits():
    lines = markdown_table([dict(name="a", x=0.123456, n=3)]).splitlines()
    assert lines[1:] == ["|:---|---:|---:|", "| a | 0.1235 | 3 |"]


def test_every_column_that_any_row_names_in_first_seen_order_or_as_given():
    rows = [dict(method="APL", x=0.5), dict(method="CNN", y="text")]
    assert markdown_table(rows).splitlines()[0] == "| method | x | y |"
    assert markdown_table(rows).splitlines()[3] == "| CNN | – | text |"
    assert markdown_table(rows, columns=["y", "method"]).splitlines()[2] == "| – | APL |"
    assert markdown_table([]) == "(no rows)"


def test_show_table_displays_the_markdown(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    show_table([dict(a=1)])
    show_table([dict(a=1)], title="One row:")
    show_table([dict(a=0.5, b=2)], columns=["b"], formats={"b": "03d"})
    assert [m.data for m in shown] == ["| a |\n|---:|\n| 1 |",
                                       "**One row:**\n\n| a |\n|---:|\n| 1 |",
                                       "| b |\n|---:|\n| 002 |"]
