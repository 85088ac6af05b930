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
    other = tmp_path / "README.md"
    other.write_text("<!-- results: headline -->\nfrom the results\n<!-- /results -->\n")
    assert results_docs.stale([doc, other]) == ["results.md: headline"]
    assert results_docs.stale([other, doc]) == ["results.md: headline"]
    doc.write_text(results_docs.render(doc.read_text()))
    assert results_docs.stale([doc, other]) == []


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


def test_every_block_says_which_results_are_missing(monkeypatch):
    monkeypatch.setattr(results_docs.trial_store, "load_search", lambda profile: None)
    monkeypatch.setattr(results_docs.report, "load_seeds", lambda profile: None)
    monkeypatch.setattr(results_docs.controls, "load_controls", lambda profile, budget: None)
    monkeypatch.setattr(results_docs.course, "load_course_time", lambda profile: None)
    monkeypatch.setattr(results_docs.pretext_study, "load_study", lambda profile: None)
    assert {name: block() for name, block in results_docs.BLOCKS.items()} == {
        "converged-search": "(no committed search)", "recipes": "(no committed search)",
        "seed-0": "(no committed seed 0)",
        "seeds": "(no committed seeds)", "claims": "(no committed seed 0)",
        "controls-small": "(no committed controls at the small budget)",
        "controls-main": "(no committed controls at the main budget)",
        "headline": "(no committed seeds)", "course-time": "(no committed course time)",
        "course-total": "(no committed course time)",
        "pretext": "(no committed pretext study)"}


def course_time(seconds: dict[str, float]) -> dict:
    """A course_summary.json as `python -m apl_core course` writes it, `seconds` per notebook."""
    return {"command": "python -m apl_core course --profile quick", "machine": "a CPU",
            "precision": "fp32", "torch": "2.x", "date": "2026-12-03",
            "total_seconds": sum(seconds.values()),
            "notebooks": [{"notebook": name, "seconds": value, "executed": f"/tmp/{name}.ipynb"}
                          for name, value in seconds.items()]}


def test_the_course_time_is_read_per_notebook_and_held_to_the_budget(monkeypatch):
    timed = course_time({"01_puzzle_construction": 30, "02_pretraining": 600,
                         "04_fine_tuning": 600})
    monkeypatch.setattr(results_docs.course, "load_course_time", lambda profile: timed)
    text = results_docs.course_time_block()
    assert text.startswith("`python -m apl_core course --profile quick` on a CPU, torch 2.x, "
                           "fp32, 2026-12-03.")
    assert "| 01_puzzle_construction | 0.5 |" in text and "| the course | 20.5 |" in text
    # 20.5 minutes: over the 20 on a 2-core CPU, within 3.6 times notebook 02's 10 minutes
    assert "3.6 x 10.0 = 36.0 minutes): the course is within it (20.5 of 36.0" in " ".join(
        text.split())
    timed = course_time({"02_pretraining": 300, "04_fine_tuning": 1000})
    monkeypatch.setattr(results_docs.course, "load_course_time", lambda profile: timed)
    assert "the course is over it (21.7 of 20.0 minutes)" in " ".join(
        results_docs.course_time_block().split())
    assert " ".join(results_docs.course_total_block().split()) == (
        "The quick profile's 2 notebooks ran in 21.7 minutes on a CPU, fp32, 2026-12-03: over "
        "the course's budget of 20 minutes ([each notebook's time and the "
        "budget](docs/results.md#course-time)).")
    timed = course_time({"02_pretraining": 300, "04_fine_tuning": 900})  # exactly 20 minutes
    monkeypatch.setattr(results_docs.course, "load_course_time", lambda profile: timed)
    assert "ran in 20.0 minutes on a CPU, fp32, 2026-12-03: within the course's budget of 20" \
        in " ".join(results_docs.course_total_block().split())


def test_a_notebook_added_after_the_timing_is_listed_and_left_out_of_the_total(monkeypatch):
    timed = course_time({"01_puzzle_construction": 30, "02_pretraining": 600})
    timed["notebooks"].append({"notebook": "07_which_puzzle", "seconds": None,
                               "executed": None})
    monkeypatch.setattr(results_docs.course, "load_course_time", lambda profile: timed)
    text = " ".join(results_docs.course_time_block().split())
    assert ("2026-12-03. 07_which_puzzle came later and is not timed yet: the total and the "
            "verdict leave it out.") in text
    assert "| 07_which_puzzle | not timed |" in text and "| the course | 10.5 |" in text


def test_the_pretext_block_gives_each_task_and_its_difference_from_apl(monkeypatch):
    rows = [{"kind": "features", "task": task, "seed": seed, "test_images": 1000,
             "seconds_per_epoch": 30.0, "features": {"10": {"probe_top1": probe,
                                                             "knn_top1": 0.3}}}
            for task, probe in (("apl", 0.5), ("rotation", 0.3)) for seed in (0, 1, 2)]
    study = {"command": "python experiments/pretext_study.py --profile quick",
             "machine": "a CPU", "torch": "2.x", "date": "2026-12-08", "trials": rows}
    monkeypatch.setattr(results_docs.pretext_study, "load_study", lambda profile: study)
    monkeypatch.setattr(results_docs.pretext_study, "load_cost", lambda profile: None)
    text = results_docs.pretext_block()
    assert text.startswith("`python experiments/pretext_study.py --profile quick` on a CPU, "
                           "torch 2.x, 2026-12-08.")
    assert text.endswith("Each task's seconds per pretraining epoch: not measured yet (`python "
                         "benchmarks/pretext_cost.py --profile quick`).")
    assert "| rotation | 30.0 ± 0.0 | 30.0 ± 0.0 |" in text
    assert "| rotation | probe NPC 10 | 3 | -20.0 |" in text and "| lower |" in text
    cost = {"command": "python benchmarks/pretext_cost.py --profile quick", "machine": "a CPU",
            "precision": "bf16", "date": "2026-12-07",
            "tasks": [{"task": "apl", "epoch_seconds": 31.0, "relative_to_apl": 1.0},
                      {"task": "rotation", "epoch_seconds": 124.0, "relative_to_apl": 4.0}]}
    monkeypatch.setattr(results_docs.pretext_study, "load_cost", lambda profile: cost)
    text = results_docs.pretext_block()
    assert ("Each task's seconds per pretraining epoch: `python benchmarks/pretext_cost.py "
            "--profile quick` on a CPU, bf16, 2026-12-07, nothing else running.") in " ".join(
        text.split())
    assert text.endswith("| apl | 31 | 1.00 |\n| rotation | 124 | 4.00 |")
    assert "second pretraining" not in text
    for row in rows:
        row["pretext_curve"] = [{"epoch": 12, "loss": 0.5}]
    study["trials"] = rows + [
        {"kind": "test", "finetune": task, "seed": seed, "test_top1": 0.3, "test_images": 1000,
         "pretraining_loss": 0.4} for task in ("apl", "rotation") for seed in (0, 1, 2)]
    text = results_docs.pretext_block()
    note = text.split("\n\n")[-3]
    assert note.startswith("The fine-tunings of every task and seed started from a second")
    assert max(len(line) for line in note.splitlines()) <= 100


def test_provenance_is_wrapped_at_the_docs_width_without_breaking_a_word():
    results = {"command": "python benchmarks/converged_search.py --profile quick --workers 2",
               "machine": "AMD EPYC (2 threads)", "torch": "2.14.1+cu130"}
    text = results_docs._provenance(results, ": " + "a few more words " * 6 + "end.")
    assert max(len(line) for line in text.splitlines()) <= 100
    assert text.replace("\n", " ").startswith(
        "`python benchmarks/converged_search.py --profile quick --workers 2` on AMD EPYC "
        "(2 threads), torch 2.14.1+cu130: a few more words")
    assert text.endswith("end.") and "--profile" in text.splitlines()[0]


def test_provenance_names_each_adopted_study_after_the_original_command():
    results = {"command": "python benchmarks/converged_search.py", "machine": "CPU A",
               "torch": "2.1", "studies": [{"npcs": [100], "command": "python study.py",
                                            "machine": "CPU B", "torch": "2.2",
                                            "date": "2026-12-04"}]}
    assert " ".join(results_docs._provenance(results).split()) == (
        "`python benchmarks/converged_search.py` on CPU A, torch 2.1. At NPC 100 a study "
        "replaced them: `python study.py` on CPU B, torch 2.2, 2026-12-04.")


def test_the_search_block_states_each_npcs_length_from_the_committed_search(monkeypatch):
    from test_report import search_trials

    trials = search_trials()
    for trial in trials:
        trial["seconds"] = 900.0
    found = {"command": "python benchmarks/converged_search.py", "machine": "a CPU",
             "torch": "2.x", "profile": "quick", "workers": 2, "threads_per_run": 1,
             "protocol": {"max_steps": {"10": 400, "30": 1920}}, "trials": trials}
    monkeypatch.setattr(results_docs.trial_store, "load_search", lambda profile: found)
    text = " ".join(results_docs.search_block().split())
    assert ("`python benchmarks/converged_search.py` on a CPU, torch 2.x: 6 trials of 2 (method, "
            "NPC) pairs, 2.0 run-hours at 1 thread each, 2 at a time. Every run at NPC 10 / 30 is "
            "400 / 1,920 optimizer steps long (10 / 10 epochs).") in text
    assert ("Protocol: NPC 10 / 30: base recipe only, lengths by the paired test. | method | NPC "
            "| val top-1: base / small-data |") in text
    # a study adopted at NPC 30 with both recipes: the table says which NPC ran which
    found["protocols"] = {"10": {"recipes": ["base"], "lengths": "late check"},
                          "30": {"recipes": ["base", "small-data"], "lengths": "paired test"}}
    text = " ".join(results_docs.search_block().split())
    assert ("Protocol: NPC 10: base recipe only, length by the earlier late check (a doubled run "
            "never adopted); NPC 30: base and small-data recipes, lengths by the paired "
            "test.") in text


def test_the_recipes_block_pairs_the_recipes_where_the_search_ran_both(monkeypatch):
    from test_claims import seeds_results
    from test_report import recipe_search

    found = recipe_search()
    monkeypatch.setattr(results_docs.trial_store, "load_search", lambda profile: found)
    monkeypatch.setattr(results_docs.report, "load_seeds", lambda profile: seeds_results())
    text = results_docs.recipes_block()
    assert " ".join(text.split()).startswith("Protocol: NPC 10: base and small-data recipes, "
                                             "lengths by the paired test; NPC 100: base recipe "
                                             "only")
    assert ("| BENCHMARK | 10 | 15.0 / 40.0 | +25.0 (+5/-0 of 20 images, p 0.062) | small-data, "
            "2x | 30.0 ± 0.0 (3 seeds) |") in text
    found["protocols"]["10"] = found["protocols"]["100"]
    found["trials"] = [t for t in found["trials"] if t.get("recipe", "base") == "base"]
    assert results_docs.recipes_block().endswith("No NPC of the committed search ran the "
                                                 "small-data recipe.")


def test_the_claims_block_states_the_claim_as_tests_over_the_seeds(monkeypatch):
    from test_claims import seeds_results

    seeds = seeds_results((0.15, 0.14, 0.16))
    for row in seeds["trials"]:
        row["position_top1"] = 0.75
    monkeypatch.setattr(results_docs.report, "load_seeds", lambda profile: seeds)
    monkeypatch.setattr(results_docs.trial_store, "load_search", lambda profile: None)
    lines = results_docs.claims_block().splitlines()
    assert lines[0] == "| statement | test | holds | measured |"
    tests = [line.split(" | ")[1] for line in lines[2:]]
    assert tests == ([results_docs.claims.ONE_RUN] + [results_docs.claims.ONE_SEED_NOISE] * 2
                     + [results_docs.claims.PAIRED_DIFFERENCE] * 4
                     + [results_docs.claims.EQUIVALENCE] * 2
                     + [results_docs.claims.PAIRED_DIFFERENCE] * 4)


def test_wrap_never_splits_a_run_name_or_a_hyphenated_option():
    name = "synthetic48-from-synthetic48-G4K1" + "-x" * 40  # longer than the docs' width
    assert results_docs._wrap(f"see {name} and more", "  ").splitlines() == [
        "see", f"  {name}", "  and more"]
    text = results_docs._wrap("a " * 45 + "--snapshot-every 1")  # the hyphen at column 99
    assert text.splitlines()[1] == "--snapshot-every 1"


def test_the_headline_gives_each_margin_at_the_fewest_labels_over_the_seeds(monkeypatch):
    from test_claims import seeds_results

    seeds = seeds_results((0.15, 0.12, 0.06))
    for row in seeds["trials"]:
        row["position_top1"] = 0.75
    monkeypatch.setattr(results_docs.report, "load_seeds", lambda profile: seeds)
    lines = results_docs.headline_block().splitlines()
    assert lines[0] == ("- Held-out position top-1 after pretraining (seed 0): 75.0 % against "
                        "chance 6.25 %.")
    items = "\n".join(lines).split("\n- ")  # a long item wraps, indented, at 100 characters
    assert " ".join(items[1].split()) == (
        "APL fine-tune - BENCHMARK at NPC 10: 11.0 ± 4.6 points over 3 seeds, smallest +6.0; "
        "paired difference over seeds, beyond the detectable difference: no.")
    assert " ".join(items[3].split()).endswith(  # three seeds are too few for equivalence
        "equivalence over seeds: two one-sided t-tests at ±5 points: not tested.")
    assert len(items) == 6 and all("NPC 10" in item for item in items[1:])
    assert max(map(len, lines)) <= 100 and all(line.startswith(("- ", "  ")) for line in lines)
    for seeds_kept, over in ((2, "over 2 seeds,"), (1, "over 1 seed,")):
        seeds["trials"] = [row for row in seeds["trials"] if row["seed"] < seeds_kept]
        assert over in results_docs.headline_block().splitlines()[1]


def test_the_headline_says_which_margin_is_a_bound(monkeypatch):
    from test_claims import choice, seeds_results

    seeds = seeds_results((0.15, 0.12, 0.06))
    for row in seeds["trials"]:
        row["position_top1"] = 0.75
    seeds["chosen"] = {"BENCHMARK|10": choice("still improving at the cap")}
    monkeypatch.setattr(results_docs.report, "load_seeds", lambda profile: seeds)
    text = " ".join(results_docs.headline_block().split())
    assert ("- APL fine-tune - BENCHMARK at NPC 10: 11.0 ± 4.6 points over 3 seeds, smallest "
            "+6.0 (BENCHMARK still rising, so an upper bound); paired") in text
    assert "positions at NPC 10: 11.0 ± 4.6 points over 3 seeds, smallest +6.0; paired" in text
    seeds["chosen"]["APL fine-tune|10"] = choice("still improving at the cap")
    text = " ".join(results_docs.headline_block().split())
    assert ("- APL fine-tune - BENCHMARK at NPC 10: 11.0 ± 4.6 points over 3 seeds, smallest "
            "+6.0 (APL fine-tune, BENCHMARK still rising, so no bound either way); ") in text


def test_make_results_docs_rewrites_every_docs_file(tmp_path, monkeypatch, capsys):
    docs = [tmp_path / "results.md", tmp_path / "README.md"]
    for doc in docs:
        doc.write_text("text\n<!-- results: headline -->\nold\n<!-- /results -->\n")
    monkeypatch.setattr(results_docs, "DOCS", tuple(docs))
    monkeypatch.setattr(results_docs, "ROOT", tmp_path)
    monkeypatch.setitem(results_docs.BLOCKS, "headline", lambda: "new")
    results_docs.main([])
    assert [doc.read_text() for doc in docs] == [
        "text\n<!-- results: headline -->\nnew\n<!-- /results -->\n"] * 2
    assert capsys.readouterr().out == "wrote results.md\nwrote README.md\n"
    assert results_docs.stale(docs) == []
