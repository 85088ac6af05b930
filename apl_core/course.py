"""Run the course headless: notebooks 01-05 in order with papermill.

    python -m apl_core course --profile quick --out course_output

writes into OUT the executed notebooks, their figures (OUT/figures), the report
(OUT/report) and the training runs (OUT/runs, reused when the course is run again),
and passes the run locations from one notebook to the next. CUDA is used when present.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

NOTEBOOKS = (
    "01_puzzle_construction",
    "02_pretraining",
    "03_attention_and_position_confusion",
    "04_fine_tuning",
    "05_reproduction_report",
)
PROFILE_NAMES = ("smoke", "quick", "paper")


class CourseError(RuntimeError):
    """A notebook of the course failed; the message names it and its executed copy."""


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


def notebook_parameters(name: str, base: dict, output_dir: Path) -> dict:
    """The parameters of one notebook: the common ones, plus what earlier notebooks produced."""
    params = dict(base)
    summary = output_dir / "02_pretraining.json"
    if name != "02_pretraining" and summary.exists():
        params["pretrain_run"] = json.loads(summary.read_text())["run_dir"]
    if name == "05_reproduction_report":
        params["finetune_results"] = str(output_dir / "04_fine_tuning.json")
    return params


def run_notebook(name: str, out: Path, parameters: dict, log_output: bool = True,
                 kernel: str = "python3") -> Path:
    """Execute one notebook into OUT/<name>.ipynb; raise CourseError naming it on failure."""
    import papermill as pm

    source = notebooks_dir() / f"{name}.ipynb"
    target = out / f"{name}.ipynb"
    declared = pm.inspect_notebook(str(source))
    params = {k: v for k, v in parameters.items() if k in declared}  # the rest: for others
    try:
        pm.execute_notebook(
            str(source), str(target), parameters=params, kernel_name=kernel,
            log_output=log_output, progress_bar=not log_output, cwd=str(source.parent),
        )
    except pm.PapermillExecutionError as err:
        raise CourseError(
            f"notebook {name} failed in cell {err.exec_count} with {err.ename}: {err.evalue}\n"
            f"the executed copy, with the traceback, is at {target}"
        ) from err
    except Exception as err:  # kernel died, missing kernelspec, ...
        raise CourseError(f"notebook {name} could not run: {type(err).__name__}: {err}\n"
                          f"the executed copy (if any) is at {target}") from err
    return target


def run_course(profile: str = "quick", out: str | Path = "course_output", device: str = "auto",
               only: str | None = None, data_dir: str | Path = "data",
               runs_dir: str | Path | None = None, log_output: bool = True,
               kernel: str = "python3", extra: dict | None = None) -> list[dict]:
    """Run the selected notebooks in order; returns one row per notebook (name, seconds, path)."""
    if profile not in PROFILE_NAMES:
        raise CourseError(f"profile {profile!r}: choose one of {PROFILE_NAMES}")
    out = Path(out).resolve()
    figures, report = out / "figures", out / "report"
    for d in (out, figures, report):
        d.mkdir(parents=True, exist_ok=True)
    from .train import resolve_device  # imports torch: only once the arguments are checked

    device = str(resolve_device(device))
    base = dict(
        profile=profile, device=device, data_dir=str(Path(data_dir).resolve()),
        runs_dir=str(Path(runs_dir).resolve() if runs_dir else out / "runs"),
        output_dir=str(figures), report_dir=str(report), interactive=False,
        **(extra or {}),
    )
    names = select(only)
    print(f"APL course: profile={profile}, device={device}, {len(names)} notebook(s) -> {out}",
          flush=True)
    rows = []
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        print(f"\n[{i}/{len(names)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        path = run_notebook(name, out, notebook_parameters(name, base, figures),
                            log_output=log_output, kernel=kernel)
        seconds = time.perf_counter() - t0
        rows.append(dict(notebook=name, seconds=round(seconds, 1), executed=str(path)))
        print(f"[{i}/{len(names)}] {name} done in {seconds:.0f} s -> {path}", flush=True)
    total = time.perf_counter() - start
    summary = dict(profile=profile, device=device, total_seconds=round(total, 1),
                   notebooks=rows, figures=str(figures), report=str(report),
                   runs=base["runs_dir"])
    (out / "course_summary.json").write_text(json.dumps(summary, indent=2))
    print("\nCourse finished:")
    for row in rows:
        print(f"  {row['notebook']:<38} {row['seconds']:>7.1f} s  {row['executed']}")
    print(f"  {'total':<38} {total:>7.1f} s")
    print(f"figures: {figures}\nreport:  {report}\nruns:    {base['runs_dir']}")
    return rows


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m apl_core course",
        description="Execute the course notebooks 01-05 in order with papermill, headless.",
    )
    p.add_argument("--profile", default="quick", choices=PROFILE_NAMES,
                   help="smoke: seconds per notebook (tests); quick: the embedded dataset, "
                        "about 20 minutes on a 2-core CPU; paper: STL-10, for a CUDA GPU "
                        "(default: %(default)s)")
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
                   help="extra notebook parameter for every notebook that declares it "
                        "(value parsed as JSON when it can be), e.g. -p pretrain_epochs=5")
    p.add_argument("--quiet-cells", action="store_true",
                   help="do not stream the cells' output, show a progress bar instead")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = {}
    for item in args.param:
        if "=" not in item:
            print(f"--param {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        key, value = item.split("=", 1)
        extra[key.strip()] = _parse_value(value)
    if not args.quiet_cells:  # papermill logs the cells' output at INFO level
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger("papermill").setLevel(logging.INFO)
    try:
        run_course(profile=args.profile, out=args.out, device=args.device, only=args.only,
                   data_dir=args.data_dir, runs_dir=args.runs_dir,
                   log_output=not args.quiet_cells, kernel=args.kernel, extra=extra)
    except CourseError as err:
        print(f"\ncourse failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
