"""The course notebooks: committed clean, and executed end to end with papermill (smoke profile).

The end-to-end run executes notebooks 01-07 through `apl_core.course.run_course` (the runner
behind `make run`) into a temporary folder, then checks each notebook's figures and the numbers
it recorded in output_dir/<notebook>.json.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

from apl_core import course, exercises, publish
from apl_core.comparison import METHODS
from apl_core.claims import ONE_RUN, ONE_SEED_BAR, ONE_SEED_NOISE
from apl_core.controls import RANDOM_INIT, control_configs
from apl_core.pretext_study import load_study
from apl_core.rundir import read_metrics

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_the_course_has_its_seven_notebooks():
    assert [p.stem for p in NOTEBOOKS] == list(course.NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "apl-course"  # make registers it
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), \
        f"{path.name} has stored outputs: strip them before committing"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    params = tagged[0].source
    assert 'profile = "quick"' in params, "the default profile is quick"
    for name in ("profile", "data_dir", "runs_dir", "output_dir", "device"):
        assert f"{name} = " in params, f"{path.name}: parameter {name} missing"
    # nothing derived in the parameters cell: only plain assignments of literals
    for line in params.splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert " = " in line and "(" not in line.split(" = ", 1)[1], \
                f"{path.name}: derive values in the next cell, not in parameters: {line!r}"


def test_select_notebooks_and_bad_choice():
    assert course.select("03,1") == [course.NOTEBOOKS[0], course.NOTEBOOKS[2]]
    assert course.select(None) == list(course.NOTEBOOKS)
    with pytest.raises(course.CourseError, match="no notebook '08'"):
        course.select("08")


def test_course_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        course.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--profile", "--out", "--device", "--only"):
        assert option in text


@pytest.mark.slow
def test_a_failing_notebook_names_itself_and_its_executed_copy(tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    cell = nbformat.v4.new_code_cell('profile = "quick"')
    cell.metadata["tags"] = ["parameters"]
    failing = "def deep():\n    raise ValueError('broken on purpose')\ndeep()"
    nb = nbformat.v4.new_notebook(
        cells=[cell, nbformat.v4.new_code_cell(failing)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}})
    nbformat.write(nb, notebooks / "01_puzzle_construction.ipynb")
    monkeypatch.setattr(course, "notebooks_dir", lambda: notebooks)
    code = course.main(["--profile", "smoke", "--out", str(tmp_path / "out"), "--only", "01"])
    assert code == 1
    err = capsys.readouterr().err
    assert "01_puzzle_construction failed in cell" in err and "broken on purpose" in err
    assert "deep()" in err and "\x1b[" not in err  # the cell's traceback, plain text
    assert str(tmp_path / "out" / "01_puzzle_construction.ipynb") in err


@pytest.mark.slow
def test_course_prints_one_line_per_notebook_and_an_index(tmp_path, capsys):
    out = tmp_path / "out"
    assert course.main(["--profile", "smoke", "--out", str(out), "--only", "01",
                        "--device", "cpu", "--data-dir", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    lines = printed.strip().splitlines()
    assert [line.split()[1] for line in lines if line.startswith("[")] == [
        "01_puzzle_construction"]
    assert "Executing Cell" not in printed and "profile smoke: dataset" not in printed, \
        "cell output leaked into the course's own output"
    assert len(lines) <= 10
    assert f"  read:    {out / 'site' / 'index.html'}" in lines
    page = (out / "site" / "notebooks" / "01_puzzle_construction.html").read_text()
    assert 'src="../_images/' in page  # its figures


@pytest.mark.slow  # three papermill runs of notebook 01: ~45 s on 2 cores
def test_notebook_01_finishes_under_the_papermill_command_line_every_time(tmp_path):
    """`papermill 01_puzzle_construction.ipynb OUT -p profile smoke`, as a papermill user runs
    it: its slider cell hung there (frontend.widgets_can_render says why); three runs, each with a
    time limit, so that an intermittent hang shows."""
    notebook = NOTEBOOK_DIR / "01_puzzle_construction.ipynb"
    work = tmp_path / "notebooks"  # the notebook's ../data and ../course_output: in tmp_path
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see conftest.py
    for run in range(3):
        executed = tmp_path / f"run_{run}.ipynb"
        try:
            done = subprocess.run(
                [sys.executable, "-m", "papermill", str(notebook), str(executed),
                 "-p", "profile", "smoke"], cwd=work, env=env, capture_output=True, text=True,
                timeout=PAPERMILL_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run {run + 1} of 3 hung: papermill had not finished notebook 01 "
                        f"after {PAPERMILL_SECONDS} s")
        assert done.returncode == 0, done.stderr[-3000:]
        text = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells
                       if c.cell_type == "code" for o in c.get("outputs", []))
        assert "no slider panel" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_teaches_in_prose_more_than_it_asks_to_run(path):
    """At least 9 words of prose per line of code (benchmarks/notebook_prose.py counts)."""
    sys.path.insert(0, str(NOTEBOOK_DIR.parent / "benchmarks"))
    from notebook_prose import WORDS_PER_LINE, prose_counts

    counts = prose_counts(path)
    assert counts["words per line"] >= WORDS_PER_LINE, counts


PAPERMILL_SECONDS = 180  # one run takes about 15 s


# ---------------------------------------------------------------- end to end, smoke profile

EXPECTED_FIGURES = {
    "01_puzzle_construction": ["01_puzzle_photo", "01_puzzle_grids", "01_dataset_samples",
                               "01_dataset_puzzle", "01_puzzle_stats", "01_puzzle_static",
                               "01_equivariance"],
    "02_pretraining": ["02_patch_dropout_mask", "02_pretraining_curves",
                       "02_position_probabilities"],
    "03_attention_and_position_confusion": ["03_confusion", "03_per_position_accuracy",
                                            "03_attention", "03_reassembled_puzzles",
                                            "03_patch_dropout", "03_game"],
    "04_fine_tuning": ["04_convergence", "04_accuracy_vs_npc", "04_features"],
    "05_reproduction_report": [],
    "06_why_it_works": ["06_controls", "06_leak_curves", "06_attention_distance",
                        "06_controls_seeds"],
    "07_which_puzzle": ["07_pretext_tasks", "07_mae_reconstruction"],
}


def results(out: Path, name: str) -> dict:
    path = out / "figures" / f"{name}.json"
    assert path.is_file(), f"{name} recorded no results at {path}"
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED_FIGURES))
def test_smoke_notebook_ran_and_drew_its_figures(smoke_course, name):
    out, rows = smoke_course
    assert name in [r["notebook"] for r in rows]
    executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    for figure in EXPECTED_FIGURES[name]:
        path = out / "figures" / f"{figure}.png"
        assert path.is_file() and path.stat().st_size > 5000, f"{name}: {figure}.png missing"
    results(out, name)


@pytest.mark.slow
def test_smoke_numbers_are_sane(smoke_course):
    out, _ = smoke_course
    r01 = results(out, "01_puzzle_construction")
    assert r01["equivariance_max_abs_diff"] < 1e-4

    r02 = results(out, "02_pretraining")
    assert r02["val_top1"] > 2 * r02["chance"], "held-out position accuracy is near chance"
    assert Path(r02["checkpoint"]).is_file()

    r03 = results(out, "03_attention_and_position_confusion")
    assert r03["pretrain_run"] == r02["run_dir"], "03 did not analyse 02's run"
    assert r03["accuracy"] > 2 * r03["chance"]
    assert r03["assigned_accuracy"] >= r03["accuracy"] - 0.05
    assert 0 <= r03["solved_share"] <= 1
    kept = [row["kept_accuracy"] for row in r03["patch_dropout"]]
    assert len(kept) == 10 and kept[0] > r03["chance"]

    r04 = results(out, "04_fine_tuning")
    assert r04["pretrain_run"] == r02["run_dir"]
    assert r04["live_npcs"] == [10]  # smoke has no committed study: every NPC trained here
    assert [row["method"] for row in r04["rows"]] == list(METHODS) and r04["sweep"] == r04["rows"]
    for row in r04["rows"]:  # the chosen epoch of each run's own validation curve
        curve = [[m["epoch"], m["val_top1"]] for m in read_metrics(row["run_dir"])
                 if "val_top1" in m]
        assert row["val_curve"] == curve and row["val_top1"] == max(v for _, v in curve)
        assert 0 <= row["test_top1"] <= 1
    assert r04["test_images"] == 200  # smoke: 20 per class
    assert [f["npc"] for f in r04["features"]] == [10]

    report = out / "report"
    text = (report / "report.md").read_text()
    assert "profile **smoke**" in text
    for png in ("pretraining_curves.png", "accuracy_vs_npc.png", "confusion.png",
                "convergence.png"):
        assert (report / png).is_file(), f"report figure {png} missing"
        assert png in text
    checks = results(out, "05_reproduction_report")["checks"]
    statements = [c["statement"] for c in checks]
    assert any("APL fine-tune beats BENCHMARK" in s for s in statements)
    assert any("linear probe on APL features beats it on random-init" in s for s in statements)
    assert any("positional embeddings from scratch" in s for s in statements)
    # smoke has no committed seeds: the claim rests on the one seed, and says so
    assert {c["test"] for c in checks} == {ONE_RUN, ONE_SEED_NOISE, ONE_SEED_BAR}
    r06 = results(out, "06_why_it_works")
    assert [row["control"] for row in r06["rows"]] == [*control_configs("smoke"), RANDOM_INIT]
    assert {"APL, notebook 02", "APL fine-tune, notebook 04", "BENCHMARK, notebook 04",
            "positional leak", "random init"} <= set(r06["attention_distance"])
    assert [b["crop"] for b in r06["borders"]] == [0, 1]
    r07 = results(out, "07_which_puzzle")
    live = {row["task"]: row for row in r07["live"]}
    assert list(live) == ["apl", "mae"] and live["mae"]["held-out top-1"] == 0
    # APL's live run is notebook 06's APL control, read back and judged the same way
    apl_control = r06["rows"][0]
    assert (live["apl"]["knn_top1"], live["apl"]["probe_top1"]) == (
        apl_control["knn_top1"], apl_control["probe_top1"])
    assert r07["study_committed"] == (load_study("quick") is not None)
    if r07["study_committed"]:  # its curves drawn from the committed rows
        for figure in ("07_study_pretext_curves", "07_study_budget_curves"):
            assert (out / "figures" / f"{figure}.png").stat().st_size > 5000
    summary = json.loads((out / "course_summary.json").read_text())
    assert [n["notebook"] for n in summary["notebooks"]] == list(course.NOTEBOOKS)
    # what docs/results.md's course time names beside the minutes
    assert summary["machine"].endswith("threads)") and summary["precision"] in ("fp32", "bf16")
    assert summary["command"] == "python -m apl_core course --profile smoke"


@pytest.mark.slow
def test_rerunning_a_notebook_reuses_the_finished_runs(smoke_course):
    """The second run of 02 reads the finished run back instead of training again."""
    out, _ = smoke_course
    before = results(out, "02_pretraining")
    rows = course.run_course(profile="smoke", out=out, device="cpu", only="02",
                             data_dir=out / "data", log_output=False)
    assert rows[0]["seconds"] < 60
    executed = nbformat.read(out / "02_pretraining.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "0 trained now" in text
    assert results(out, "02_pretraining")["val_top1"] == before["val_top1"]


@pytest.mark.slow
def test_publish_figures_says_what_made_them(smoke_course, tmp_path):
    out, _ = smoke_course
    publish.publish_figures(out, tmp_path / "figures", "smoke", "cpu")
    for name in publish.README_FIGURES:
        assert (tmp_path / "figures" / f"{name}.png").read_bytes() == \
            (out / "figures" / f"{name}.png").read_bytes()
    provenance = (tmp_path / "figures" / "PROVENANCE.md").read_text()
    assert "smoke profile" in provenance and "threads" in provenance
    screenshot = "`shot.png` is the browser test's screenshot.\n\nSo is `other.png`.\n"
    (tmp_path / "figures" / "PROVENANCE.md").write_text("Drawn long ago.\n\n" + screenshot)
    publish.publish_figures(out, tmp_path / "figures", "smoke", "cpu")
    provenance = (tmp_path / "figures" / "PROVENANCE.md").read_text()
    assert provenance.startswith("Drawn by `make figures`: the smoke profile")
    assert provenance.endswith("\n\n" + screenshot) and "long ago" not in provenance


@pytest.mark.slow
def test_the_student_version_runs_up_to_its_first_exercise(smoke_course, tmp_path):
    """`make exercises`' notebooks, run in course order on the smoke course's finished runs:
    each records its results and stops at its first exercise's NotImplementedError (in the
    exercise's cell, or in its test cell where the exercise writes a function), not before."""
    out, _ = smoke_course
    figures = tmp_path / "figures"
    base = dict(profile="smoke", device="cpu", data_dir=str(out / "data"),
                runs_dir=str(out / "runs"), output_dir=str(figures),
                report_dir=str(tmp_path / "report"), interactive=False)
    for path in exercises.write_student_version(tmp_path / "student"):
        declared = papermill.inspect_notebook(str(path))
        parameters = {k: v for k, v in course.notebook_parameters(path.stem, base, figures).items()
                      if k in declared}
        executed = tmp_path / f"executed_{path.name}"
        with pytest.raises(papermill.PapermillExecutionError) as failure:
            papermill.execute_notebook(str(path), str(executed), parameters=parameters,
                                       kernel_name="python3", progress_bar=False,
                                       cwd=str(path.parent))
        assert failure.value.ename == "NotImplementedError", path.stem
        code = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
        failed = [i for i, c in enumerate(code)
                  if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
        first_exercise = next(i for i, c in enumerate(code)
                              if "raise NotImplementedError()" in c.source)
        # an exercise that writes a function fails where its test cell calls it
        assert failed in ([first_exercise], [first_exercise + 1]), \
            f"{path.stem} failed in cells {failed}, not at its first exercise {first_exercise}"
        assert (figures / f"{path.stem}.json").is_file(), f"{path.stem} recorded nothing"
