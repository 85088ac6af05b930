"""Mutation score per module: how many of mutmut's mutants of each core module the tests kill.

    make mutation                                          # mutmut run, then this table
    python benchmarks/mutation_scores.py "apl_core.config*"   # run some mutants only
    python benchmarks/mutation_scores.py --report          # the table of the last run only

mutmut keeps, in mutants/, which tests cover which function and does not notice edited tests:
delete mutants/ after changing tests (make mutation always starts from scratch).

The modules and tests are listed in pyproject.toml ([tool.mutmut]). A mutant is killed when a
test fails on it or it times out; it survives when every covering test passes. Some survivors
cannot be killed because they do not change what the code does (an argument set to its
default, say); those are listed, one line each with the reason, in mutation_equivalent.txt
next to this script. The score is killed / (all - equivalent). mutmut numbers the mutants of a
function in order, so a changed function renumbers its mutants: the table warns about listed
names that no longer exist or that the tests now kill, and the list has to be checked again.
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import subprocess
import sys
import time

EQUIVALENT_LIST = pathlib.Path(__file__).with_name("mutation_equivalent.txt")
DETECTED = ("killed", "timeout")


def equivalent_mutants(path: pathlib.Path = EQUIVALENT_LIST) -> dict[str, str]:
    """{mutant name: why it is equivalent} from lines `name  reason`; # starts a comment."""
    listed = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, reason = line.strip().partition(" ")
            listed[name] = reason.strip()
    return listed


def results() -> dict[str, str]:
    """{mutant name: status} from `mutmut results --all true`."""
    output = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                            capture_output=True, text=True, check=True).stdout
    statuses = {}
    for line in output.splitlines():
        name, _, status = line.strip().partition(": ")
        if "__mutmut_" in name:
            statuses[name] = status
    return statuses


def module_of(mutant: str) -> str:
    """apl_core.data.splits.x_labelled_split__mutmut_3 -> apl_core.data.splits"""
    return mutant.rsplit(".", 1)[0]


def report(statuses: dict[str, str], equivalent: dict[str, str]) -> None:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, status in statuses.items():
        row = counts[module_of(name)]
        row["all"] += 1
        if status in DETECTED:
            row["killed"] += 1
        elif name in equivalent:
            row["equivalent"] += 1
        elif status == "not checked":
            row["not checked"] += 1
        else:
            row["left"] += 1
    columns = ("all", "killed", "equivalent", "left", "not checked")
    print(f"{'module':<26}" + "".join(f"{c:>12}" for c in columns) + f"{'score':>8}")
    for module, row in sorted(counts.items()):
        scored = row["all"] - row["equivalent"]
        score = f"{row['killed'] / scored:.1%}" if scored else "-"
        print(f"{module:<26}" + "".join(f"{row[c]:>12}" for c in columns) + f"{score:>8}")
    print("score: killed / (all - equivalent); left: survivors not listed as equivalent "
          "(`python -m mutmut show NAME`)")
    for name in sorted(equivalent):
        if name not in statuses:
            print(f"warning: {EQUIVALENT_LIST.name} lists {name}, which no longer exists")
        elif statuses[name] in DETECTED:
            print(f"warning: {EQUIVALENT_LIST.name} lists {name}, which the tests kill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mutants", nargs="*", help="mutant name globs for mutmut run")
    parser.add_argument("--report", action="store_true", help="do not run, report the last run")
    args = parser.parse_args()
    if not args.report:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mutmut", "run", *args.mutants], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"mutmut run: {(time.perf_counter() - started) / 60:.1f} min")
    report(results(), equivalent_mutants())


if __name__ == "__main__":
    main()
