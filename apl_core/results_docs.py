"""The numbers of the docs, written from the committed results by the code that reads them.

    python -m apl_core.results_docs           rewrite every generated block (make results-docs)
    python -m apl_core.results_docs --check   fail, naming the blocks, if any is out of date

A generated block sits in a markdown file between `<!-- results: NAME -->` and
`<!-- /results -->`; BLOCKS says what each NAME holds, all of it read from
apl_core/results/*.json (the committed studies). The prose around a block is written by hand and
states each conclusion once, without retyping the block's numbers, so a rerun study changes the
docs in one command and a test (tests/test_results_docs.py) fails while they differ.
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from . import claims, control_tables, controls, course, pretext_study, report, search, trial_store
from .config import profile_config
from .stats import mean_sd
from .tables import markdown_table

PROFILE = "quick"  # the profile whose studies the docs report
_FINETUNE = profile_config(PROFILE, "finetune")
TEST_IMAGES = _FINETUNE.test_per_class * _FINETUNE.num_classes
POSITIONS = profile_config(PROFILE, "pretrain").grid ** 2
# The course's time budget: 20 minutes on a 2-core CPU; on a slower one, this many times
# notebook 02's pretraining (which the course's length is measured against: 3.4 when the
# course took 15.2 minutes with 02 at 265 s).
COURSE_MINUTES = 20
COURSE_PER_PRETRAINING = 3.6
PRETRAINING_NOTEBOOK = "02_pretraining"
ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "results.md", ROOT / "README.md")
BLOCK = re.compile(r"(<!-- results: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /results -->)",
                   re.DOTALL)


def _wrap(text: str, indent: str = "") -> str:
    """`text` as a paragraph of the docs' width, its later lines indented by `indent`; commands
    and run names are never split."""
    return textwrap.fill(text, width=100, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)


def _provenance(results: dict, more: str = ".") -> str:
    """Which command made `results`, on what, and `more`, then each study adopted into them
    (trial_store.adopt_study), as a paragraph of the docs' width."""
    studies = "".join(f" At NPC {' / '.join(map(str, study['npcs']))} a study replaced them: "
                      f"`{study['command']}` on {study['machine']}, torch {study['torch']}, "
                      f"{study['date']}." for study in results.get("studies", []))
    return _wrap(f"`{results['command']}` on {results['machine']}, torch "
                 f"{results['torch']}{more}{studies}")


def _course_budget(timed: dict) -> tuple[float, float, float, str]:
    """The course's total minutes, notebook 02's, the minutes allowed and 'within' or 'over'."""
    seconds = {row["notebook"]: row["seconds"] for row in timed["notebooks"]}
    total = timed["total_seconds"] / 60
    pretraining = seconds[PRETRAINING_NOTEBOOK] / 60
    allowed = max(COURSE_MINUTES, COURSE_PER_PRETRAINING * pretraining)
    return total, pretraining, allowed, "within" if total <= allowed else "over"


def course_time_block() -> str:
    """The committed course timing: minutes per notebook, and the total against the budget."""
    timed = course.load_course_time(PROFILE)
    if not timed:
        return "(no committed course time)"
    seconds = {row["notebook"]: row["seconds"] for row in timed["notebooks"]}
    total, pretraining, allowed, verdict = _course_budget(timed)
    rows = [{"notebook": name, "minutes": "not timed" if value is None else f"{value / 60:.1f}"}
            for name, value in seconds.items()]
    rows.append({"notebook": "the course", "minutes": f"{total:.1f}"})
    # a notebook added to the course after this timing: listed, left out of the total
    untimed = [name for name, value in seconds.items() if value is None]
    added = (f" {', '.join(untimed)} came later and is not timed yet: the total and the "
             f"verdict leave it out." if untimed else "")
    return "\n\n".join([
        _provenance(timed, f", {timed['precision']}, {timed['date']}.{added}"),
        markdown_table(rows),
        _wrap(f"The budget: {COURSE_MINUTES} minutes on a 2-core CPU, or on a slower one "
              f"{COURSE_PER_PRETRAINING} times notebook 02's time ({COURSE_PER_PRETRAINING} x "
              f"{pretraining:.1f} = {COURSE_PER_PRETRAINING * pretraining:.1f} minutes): the "
              f"course is {verdict} it ({total:.1f} of {allowed:.1f} minutes).")])


def course_total_block() -> str:
    """The README's line on the course's time: the total, where and when, against the budget."""
    timed = course.load_course_time(PROFILE)
    if not timed:
        return "(no committed course time)"
    total, _, allowed, verdict = _course_budget(timed)
    timed_notebooks = sum(row["seconds"] is not None for row in timed["notebooks"])
    return _wrap(f"The {PROFILE} profile's {timed_notebooks} notebooks ran in {total:.1f} minutes "
                 f"on {timed['machine']}, {timed['precision']}, {timed['date']}: {verdict} the "
                 f"course's budget of {allowed:.0f} minutes ([each notebook's time and the "
                 f"budget](docs/results.md#course-time)).")


def _paragraphs(*parts: str) -> str:
    """The non-empty parts, a blank line between them."""
    return "\n\n".join(part for part in parts if part)


def _protocols(results: dict) -> str:
    """Which protocol made each NPC's rows of `results` (a search, or seeds run at its
    choices: without protocols of their own, the committed search's), as a sentence."""
    line = report.protocol_line(results) or report.protocol_line(
        trial_store.load_search(PROFILE) or {"trials": []})
    return _wrap(f"Protocol: {line}.") if line else ""


def search_block() -> str:
    """Where each choice of the converged search sits, with its longer runs."""
    found = trial_store.load_search(PROFILE)
    if not found:
        return "(no committed search)"
    trials = [t for t in found["trials"] if search.lengthens(t) is None]
    hours = sum(t["seconds"] for t in found["trials"]) / 3600
    searched = {(t["method"], t["npc"]) for t in trials}
    epochs = {t["npc"]: t["epochs"] for t in trials}
    npcs = sorted(epochs)
    steps = found["protocol"]["max_steps"]
    return _paragraphs(
        _provenance(found, f": {len(trials)} trials of {len(searched)} (method, NPC) pairs, "
                           f"{hours:.1f} run-hours at {found['threads_per_run']} thread each, "
                           f"{found['workers']} at a time. Every run at NPC "
                           f"{' / '.join(map(str, npcs))} is "
                           f"{' / '.join(f'{steps[str(n)]:,}' for n in npcs)} optimizer steps "
                           f"long ({' / '.join(str(epochs[n]) for n in npcs)} epochs)."),
        _protocols(found),
        markdown_table(report.search_table(found["trials"],
                                           report.validation_images(found["profile"]))))


def recipes_block() -> str:
    """What the small-data recipe changes per (method, NPC), on validation and, with the
    committed seeds, on test."""
    found = trial_store.load_search(PROFILE)
    if not found:
        return "(no committed search)"
    if not any("small-data" in summary["recipes"]
               for summary in trial_store.npc_protocols(found).values()):
        return _wrap(f"{_protocols(found)} No NPC of the committed search ran the small-data "
                     f"recipe.")
    return _paragraphs(_protocols(found),
                       markdown_table(report.recipe_table(found, report.load_seeds(PROFILE))))


def seed0_block() -> str:
    """Seed 0 of the converged experiment: the comparison and the frozen features."""
    seeds = report.load_seeds(PROFILE)
    rows, features = report.rows_of_seed(seeds, 0)
    if not rows:
        return "(no committed seed 0)"
    return "\n\n".join([markdown_table(report.accuracy_table(rows)),
                        markdown_table(report.feature_table(features))])


def seeds_block() -> str:
    """Every committed seed: means and spreads, then the paired margins."""
    seeds = report.load_seeds(PROFILE)
    if not seeds:
        return "(no committed seeds)"
    return _paragraphs(_provenance(seeds), _protocols(seeds),
                       markdown_table(report.seed_table(seeds)),
                       markdown_table(claims.margin_table(seeds)))


def claims_block() -> str:
    """Notebook 05's claim table: seed 0's checks that the seeds do not restate, then the claim
    as tests over the seeds, each row naming its test."""
    seeds = report.load_seeds(PROFILE)
    rows, features = report.rows_of_seed(seeds, 0)
    if not rows:
        return "(no committed seed 0)"
    position = rows[0]["position_top1"]
    checks = claims.claim_checks(report.accuracy_by_run(rows), features, position, POSITIONS,
                                 TEST_IMAGES)
    return _paragraphs(_protocols(seeds), markdown_table(
        claims.claim_table(checks, claims.claim_tests(seeds, TEST_IMAGES))))


def controls_block(budget: str) -> str:
    """Notebook 06's controls over seeds at `budget`: means, then paired differences."""
    results = controls.load_controls(PROFILE, budget)
    if not results:
        return f"(no committed controls at the {budget} budget)"
    return "\n\n".join([_provenance(results),
                        markdown_table(control_tables.control_table(results)),
                        markdown_table(control_tables.verdict_table(results, TEST_IMAGES))])


def pretext_block() -> str:
    """Notebook 07's study: each task's means over seeds, then its paired differences with
    APL, which pretrainings the fine-tunings started from where that needs saying, and each
    task's cost."""
    results = pretext_study.load_study(PROFILE)
    if not results:
        return "(no committed pretext study)"
    cost = pretext_study.load_cost(PROFILE)
    spent = (_wrap(f"Each task's seconds per pretraining epoch: `{cost['command']}` on "
                   f"{cost['machine']}, {cost['precision']}, {cost['date']}, nothing else "
                   f"running.") + "\n\n" + markdown_table(pretext_study.cost_table(cost))
             if cost else "Each task's seconds per pretraining epoch: not measured yet "
                          f"(`python benchmarks/pretext_cost.py --profile {PROFILE}`).")
    note = pretext_study.pretraining_note(results)
    return "\n\n".join([_provenance(results, f", {results['date']}."),
                        markdown_table(pretext_study.task_table(results)),
                        markdown_table(pretext_study.paired_table(results))]
                       + ([_wrap(note)] if note else []) + [spent])


def headline_block() -> str:
    """The README's few lines: pretraining, and the smallest seed's margins at the lowest NPC."""
    seeds = report.load_seeds(PROFILE)
    rows, _ = report.rows_of_seed(seeds, 0)
    if not rows:
        return "(no committed seeds)"
    lines = [f"- Held-out position top-1 after pretraining (seed 0): "
             f"{100 * rows[0]['position_top1']:.1f} % against chance {100 / POSITIONS:.2f} %."]
    low = min(row["npc"] for row in rows)
    for margin in claims.seed_margins(seeds):
        if margin["npc"] == low:
            values = list(margin["per_seed"].values())
            bound = f" ({claims.unconverged(margin)})" if margin["still_rising"] else ""
            tested = claims.margin_test(margin, TEST_IMAGES)
            lines.append(f"- {margin['margin']} at NPC {low}: {mean_sd(values)} points over "
                         f"{len(values)} seed{'s' * (len(values) > 1)}, smallest "
                         f"{100 * min(values):+.1f}{bound}; {tested['test']}: "
                         f"{tested['holds']}.")
    return "\n".join(_wrap(line, "  ") for line in lines)


BLOCKS: dict[str, Callable[[], str]] = {
    "converged-search": search_block, "recipes": recipes_block, "seed-0": seed0_block,
    "seeds": seeds_block,
    "claims": claims_block, "controls-small": functools.partial(controls_block, "small"),
    "controls-main": functools.partial(controls_block, "main"), "headline": headline_block,
    "course-time": course_time_block, "course-total": course_total_block,
    "pretext": pretext_block,
}


def render(text: str) -> str:
    """`text` with every generated block rewritten from the committed results."""
    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise ValueError(f"unknown generated block {name!r}: the blocks are {list(BLOCKS)}")
        return f"{match[1]}{BLOCKS[name]()}\n{match[4]}"
    return BLOCK.sub(fill, text)


def stale(paths=DOCS) -> list[str]:
    """The generated blocks that differ from what the committed results give, as
    'file: block'."""
    found = []
    for path in paths:
        text = Path(path).read_text()
        fresh = render(text)
        old = {m["name"]: m["body"] for m in BLOCK.finditer(text)}
        new = {m["name"]: m["body"] for m in BLOCK.finditer(fresh)}
        found += [f"{Path(path).name}: {name}" for name in old if old[name] != new[name]]
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; fail if a generated block is out of date")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        if out_of_date:
            sys.exit("out of date (run make results-docs): " + ", ".join(out_of_date))
        print("every generated block matches the committed results")
        return
    for path in DOCS:
        path.write_text(render(path.read_text()))
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
