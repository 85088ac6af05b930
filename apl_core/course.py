"""Run the course headless: notebooks 01-07 in order with papermill.

    python -m apl_core course --profile auto --out course_output

writes into OUT the executed notebooks, their figures (OUT/figures), the report
(OUT/report), the training runs (OUT/runs, reused when the course is run again) and the course
site (OUT/site/index.html), and passes the run locations from one notebook to the next. CUDA is
used when present. What a finished course publishes (the site, the README's figures) is
`apl_core.publish`'s.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import difflib
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from .config import PROFILES
from .publish import SiteError, build_site, missing_readme_figures, publish_figures

NOTEBOOKS = (
    "01_puzzle_construction",
    "02_pretraining",
    "03_attention_and_position_confusion",
    "04_fine_tuning",
    "05_reproduction_report",
    "06_why_it_works",
    "07_which_puzzle",
)
PROFILE_NAMES = ("auto", *PROFILES)  # auto: chosen for the machine (default_profile)
# The notebook parameters the course sets itself (-p NAME=VALUE may not), and how.
COURSE_PARAMETERS = {"profile": "from --profile", "device": "from --device",
                     "data_dir": "from --data-dir", "runs_dir": "from --runs-dir",
                     "output_dir": "from --out", "report_dir": "from --out",
                     "interactive": "to False: it runs headless"}


class CourseError(RuntimeError):
    """A bad course argument, or a failed notebook (the message names it and its executed
    copy)."""


def notebooks_dir() -> Path:
    """The repository's notebooks/ folder (the package is installed from the checkout)."""
    path = Path(__file__).resolve().parent.parent / "notebooks"
    if not path.is_dir():
        raise CourseError(
            f"the course notebooks were not found at {path}; run the course from a checkout "
            "of the repository (pip install -e .), not from an installed wheel"
        )
    return path


def select(only: str | None) -> list[str]:
    """'01,03' (or '1,3', or full names) -> the notebook names, in course order."""
    if not only:
        return list(NOTEBOOKS)
    chosen = []
    for item in (s.strip() for s in only.split(",") if s.strip()):
        match = [n for n in NOTEBOOKS if n == item or n.split("_")[0] == item.zfill(2)]
        if not match:
            raise CourseError(f"--only: no notebook {item!r}; choose from "
                              f"{', '.join(n.split('_')[0] for n in NOTEBOOKS)}")
        chosen.extend(match)
    return [n for n in NOTEBOOKS if n in chosen]


def declared_defaults(names: list[str]) -> dict[str, dict[str, object]]:
    """parameter -> {notebook: its default value}, from the parameters cells of `names`."""
    import papermill as pm

    declared: dict[str, dict[str, object]] = {}
    for name in names:
        cell = pm.inspect_notebook(str(notebooks_dir() / f"{name}.ipynb"))
        for parameter, spec in cell.items():
            declared.setdefault(parameter, {})[name] = ast.literal_eval(spec["default"])
    return declared


def check_parameters(extra: dict, names: list[str]) -> dict:
    """The extra notebook parameters, read and checked before any notebook runs: each must be
    declared by one of `names` and have the type of its default there; a text value (-p
    NAME=VALUE) is read as JSON unless that default is a string. CourseError, one line per
    bad parameter, otherwise."""
    declared = declared_defaults(names)
    settable = sorted(set(declared) - set(COURSE_PARAMETERS))
    values, problems = {}, []
    for key, value in extra.items():
        given = f"-p {key}={value if isinstance(value, str) else json.dumps(value)}"
        if key in COURSE_PARAMETERS:
            problems.append(f"{given}: the course sets {key} itself, {COURSE_PARAMETERS[key]}")
            continue
        if key not in declared:
            close = difflib.get_close_matches(key, settable, n=3)
            hint = (f"did you mean {' or '.join(close)}?" if close else
                    f"the notebooks' parameters are {', '.join(settable)}")
            problems.append(f"{given}: no notebook of this run declares {key}; {hint}")
            continue
        defaults = declared[key]
        if isinstance(value, str) and not any(isinstance(d, str) for d in defaults.values()):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        wrong = [(notebook, d) for notebook, d in defaults.items() if not _fits(value, d)]
        if wrong:
            notebook, default = wrong[0]
            problems.append(f"{given}: notebook {notebook} expects {_KINDS[type(default)]}, "
                            f"like its default {key}={json.dumps(default)}")
        else:
            values[key] = value
    if problems:
        raise CourseError("\n".join(problems))
    return values


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          list: "a JSON list", dict: "a JSON object"}


def _fits(value, default) -> bool:
    """Whether `value` may stand for `default`: the same type; an integer for a float."""
    if default is None:
        return True
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type(value) is type(default)


def output_folder(out: str | Path) -> Path:
    """OUT, resolved, with figures/ and report/ created in it and checked writable."""
    out = Path(out).resolve()
    try:
        for folder in (out, out / "figures", out / "report"):
            folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as err:
        raise CourseError(f"--out {out}: cannot create or write the output folder "
                          f"({err.strerror}: {err.filename}); give a folder you can write "
                          "to") from None
    return out


def notebook_parameters(name: str, base: dict, output_dir: Path) -> dict:
    """The parameters of one notebook: the common ones, plus what earlier notebooks produced,
    unless given (-p pretrain_run=... analyses that run, not notebook 02's)."""
    params = dict(base)
    summary = output_dir / "02_pretraining.json"
    if name != "02_pretraining" and summary.exists():
        params.setdefault("pretrain_run", json.loads(summary.read_text())["run_dir"])
    if name in ("05_reproduction_report", "06_why_it_works"):
        params.setdefault("finetune_results", str(output_dir / "04_fine_tuning.json"))
    return params


def run_notebook(name: str, out: Path, parameters: dict, log_output: bool = False,
                 kernel: str = "python3") -> Path:
    """Execute one notebook into OUT/<name>.ipynb; raise CourseError naming it, its failing
    cell and that cell's traceback on failure. log_output streams every cell's output."""
    import papermill as pm

    source = notebooks_dir() / f"{name}.ipynb"
    target = out / f"{name}.ipynb"
    declared = pm.inspect_notebook(str(source))
    params = {k: v for k, v in parameters.items() if k in declared}  # the rest: for others
    try:
        with contextlib.nullcontext() if log_output else _stderr_to(out / "kernel.log"):
            pm.execute_notebook(
                str(source), str(target), parameters=params, kernel_name=kernel,
                log_output=log_output, progress_bar=False, cwd=str(source.parent),
            )
    except pm.PapermillExecutionError as err:
        traceback = ANSI_ESCAPES.sub("", "\n".join(err.traceback or []))
        raise CourseError(
            f"notebook {name} failed in cell {err.exec_count} with {err.ename}: {err.evalue}\n"
            f"{traceback}\nthe executed copy, with the traceback, is at {target}"
        ) from err
    except Exception as err:  # kernel died, missing kernelspec, ...
        raise CourseError(f"notebook {name} could not run: {type(err).__name__}: {err}\n"
                          f"the executed copy (if any) is at {target}") from err
    return target


ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send this process's stderr, and so the kernel's (a child process inherits it: its
    warnings are written there, not sent as cell output), to `path` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def default_profile(device: str, data_dir: str | Path) -> str:
    """'auto': paper on a GPU with STL-10 on disk, gpu on a GPU without it, else quick."""
    if not device.startswith("cuda"):
        return "quick"
    from .data.stl10 import find_stl10

    return "paper" if find_stl10(data_dir) is not None else "gpu"


def run_course(profile: str = "auto", out: str | Path = "course_output", device: str = "auto",
               only: str | None = None, data_dir: str | Path = "data",
               runs_dir: str | Path | None = None, log_output: bool = False,
               kernel: str = "python3", extra: dict | None = None,
               publish: str | Path | None = None) -> list[dict]:
    """Run the selected notebooks in order; returns one row per notebook (name, seconds, path)."""
    if profile not in PROFILE_NAMES:
        raise CourseError(f"profile {profile!r}: choose one of {PROFILE_NAMES}")
    names = select(only)
    extra = check_parameters(extra or {}, names)
    out = output_folder(out)
    figures, report = out / "figures", out / "report"
    # these import torch: only once the arguments are checked
    from .device import measured_on, resolve_device

    device = str(resolve_device(device))
    if profile == "auto":
        profile = default_profile(device, data_dir)
    base = dict(
        profile=profile, device=device, data_dir=str(Path(data_dir).resolve()),
        runs_dir=str(Path(runs_dir).resolve() if runs_dir else out / "runs"),
        output_dir=str(figures), report_dir=str(report), interactive=False,
        **extra,
    )
    print(f"APL course: profile={profile}, device={device}, {len(names)} notebook(s) -> {out}",
          flush=True)
    rows = []
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        if log_output:
            print(f"\n[{i}/{len(names)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        path = run_notebook(name, out, notebook_parameters(name, base, figures),
                            log_output=log_output, kernel=kernel)
        seconds = time.perf_counter() - t0
        rows.append(dict(notebook=name, seconds=round(seconds, 1), executed=str(path)))
        print(f"[{i}/{len(names)}] {name:<38} {seconds:6.0f} s  -> {path.name}", flush=True)
    total = time.perf_counter() - start
    try:  # the notebooks ran: a site that cannot be built is said, not a failed course
        index, problems = build_site(out)
    except SiteError as err:
        index, problems = None, [f"not built: {err}"]
    for problem in problems:
        print(f"site: {problem}", flush=True)
    # with what it ran on: a committed copy is docs/results.md's course time
    summary = dict(profile=profile, device=device, **measured_on(device),
                   date=datetime.date.today().isoformat(),
                   command=f"python -m apl_core course --profile {profile}",
                   total_seconds=round(total, 1), notebooks=rows, figures=str(figures),
                   report=str(report), runs=base["runs_dir"], site=str(index) if index else None)
    (out / "course_summary.json").write_text(json.dumps(summary, indent=2))
    if publish:
        missing = missing_readme_figures(out)
        if missing:
            raise CourseError(f"cannot publish figures: {missing} were not drawn; run the "
                              f"whole course (without --only)")
        publish_figures(out, Path(publish), profile, device)
        print(f"figures for the README copied to {publish}")
    print(f"course finished in {total / 60:.1f} min: {len(rows)} notebook(s) in {out}\n"
          + (f"  read:    {index}\n" if index else "")
          + f"  figures: {figures}\n  report:  {report / 'report.md'}\n"
          f"  runs:    {base['runs_dir']}"
          + ("" if log_output else f"\n  kernel warnings: {out / 'kernel.log'}"), flush=True)
    return rows


def course_time_path(profile: str) -> Path:
    from .results import RESULTS_DIR  # torch, through the checkpoint writer: not for --help

    return RESULTS_DIR / f"{profile}_course_time.json"


def load_course_time(profile: str) -> dict | None:
    """The committed timing of `profile`'s course (the course_summary.json of a `make run`
    from a fresh clone), or None where there is none; refused unless it times every notebook
    (a run with --only is not the course's time)."""
    from .results import load_results

    rerun = (f"make run PROFILE={profile} from a fresh clone and copy its "
             f"course_output/course_summary.json there")
    path = course_time_path(profile)
    timed = load_results(path, "course time",
                         {"command", "machine", "torch", "total_seconds", "notebooks"}, rerun)
    if timed and [row["notebook"] for row in timed["notebooks"]] != list(NOTEBOOKS):
        raise ValueError(f"{path} times {[row['notebook'] for row in timed['notebooks']]}, "
                         f"not the whole course {list(NOTEBOOKS)}: {rerun}")
    return timed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m apl_core course",
        description="Execute the course notebooks 01-07 in order with papermill, headless.",
    )
    p.add_argument("--profile", default="auto", choices=PROFILE_NAMES,
                   help="smoke: seconds per notebook (tests); quick: the embedded dataset, "
                        "for a laptop CPU (timed in docs/results.md, Course time); "
                        "gpu: the paper's model on the "
                        "embedded dataset, minutes on one GPU; paper: STL-10, for a CUDA GPU; "
                        "auto: paper on a GPU with STL-10 in --data-dir, gpu on a GPU "
                        "without it, else quick (default: %(default)s)")
    p.add_argument("--out", default="course_output",
                   help="output folder: executed notebooks, figures/, report/, runs/ "
                        "(default: %(default)s)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when present), cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--only", default=None,
                   help="comma-separated notebook numbers to run, e.g. 01,03 (default: all)")
    p.add_argument("--data-dir", default="data",
                   help="where datasets are read/downloaded (default: %(default)s)")
    p.add_argument("--runs-dir", default=None,
                   help="where training runs go (default: OUT/runs); finished runs are reused")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                   help="extra notebook parameter for every notebook that declares it, "
                        "of its default's type (read as JSON, or as text where the default "
                        "is a string), e.g. -p epochs=5 -p overrides='{\"lr\": 0.001}'")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="stream every cell's output and the kernel's warnings (default: one "
                        "line per notebook)")
    p.add_argument("--kernel", default="python3",
                   help="Jupyter kernel; python3 is the Python that runs the course, whichever "
                        "kernel the notebooks name (default: %(default)s)")
    p.add_argument("--publish-figures", metavar="DIR", default=None,
                   help="afterwards, copy the README's figures to DIR (make figures: "
                        "docs/figures)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = {}
    for item in args.param:
        if "=" not in item:
            print(f"--param {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        key, value = item.split("=", 1)
        extra[key.strip()] = value
    if args.verbose:  # papermill logs the cells' output at INFO level
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger("papermill").setLevel(logging.INFO)
    try:
        run_course(profile=args.profile, out=args.out, device=args.device, only=args.only,
                   data_dir=args.data_dir, runs_dir=args.runs_dir,
                   log_output=args.verbose, kernel=args.kernel, extra=extra,
                   publish=args.publish_figures)
    except CourseError as err:
        print(f"\ncourse failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
