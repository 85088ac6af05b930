"""The docs' numbers are written by code: every generated block of docs/results.md and the
README equals what the committed results give, and the generator refuses a block it does not
know."""
from __future__ import annotations

import pytest

from apl_core import results_docs


def test_the_committed_docs_match_the_committed_results():
    assert results_docs.stale() == [], "run make results-docs and commit the docs"


def test_render_rewrites_only_the_blocks_between_the_markers(monkeypatch):
    monkeypatch.setitem(results_docs.BLOCKS, "seeds", lambda: "| a |\n|---|")
    text = ("prose 1.5 stays\n<!-- results: seeds -->\nold table\n<!-- /results -->\n"
            "after\n")
    assert results_docs.render(text) == ("prose 1.5 stays\n<!-- results: seeds -->\n| a |\n"
                                         "|---|\n<!-- /results -->\nafter\n")
    assert results_docs.render(results_docs.render(text)) == results_docs.render(text)


def test_a_stale_block_is_named_with_its_file(tmp_path, monkeypatch):
    doc = tmp_path / "results.md"
    doc.write_text("<!-- results: headline -->\nby hand\n<!-- /results -->\n")
    monkeypatch.setitem(results_docs.BLOCKS, "headline", lambda: "from the results")
    assert results_docs.stale([doc]) == ["results.md: headline"]
    doc.write_text(results_docs.render(doc.read_text()))
    assert results_docs.stale([doc]) == []


def test_an_unknown_block_is_an_error_that_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown generated block 'nope': the blocks are "
                                         r"\['converged-search'"):
        results_docs.render("<!-- results: nope -->\n<!-- /results -->\n")


def test_check_fails_naming_what_to_run(monkeypatch, capsys):
    monkeypatch.setattr(results_docs, "stale", lambda: ["README.md: headline"])
    with pytest.raises(SystemExit, match="out of date \\(run make results-docs\\): "
                                         "README.md: headline"):
        results_docs.main(["--check"])
    monkeypatch.setattr(results_docs, "stale", lambda: [])
    results_docs.main(["--check"])
    assert "every generated block matches" in capsys.readouterr().out
