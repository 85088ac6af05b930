"""Mutation score per module: how many of mutmut's mutants of each core module the tests kill.

    make mutation                                  # mutmut run, then this table
    python benchmarks/mutation_scores.py --report  # the table of the last run only

The modules and tests are listed in pyproject.toml ([tool.mutmut]). A mutant is killed when a
test fails on it; 'survived' means every covering test passed, 'no tests' that no selected test
runs the mutated function. The score is killed / all mutants of the module.
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys


def results() -> dict[str, collections.Counter]:
    """{module: Counter(status)} from `mutmut results --all true`."""
    output = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                            capture_output=True, text=True, check=True).stdout
    per_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in output.splitlines():
        name, _, status = line.strip().partition(": ")
        if "__mutmut_" in name:
            module = ".".join(name.split(".")[:2])
            per_module[module][status] += 1
    return per_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="do not run, report the last run")
    args = parser.parse_args()
    if not args.report:
        subprocess.run([sys.executable, "-m", "mutmut", "run"], check=True,
                       stdout=subprocess.DEVNULL)
    table = results()
    statuses = sorted({s for counts in table.values() for s in counts})
    print(f"{'module':<22}{'score':>8}" + "".join(f"{s:>13}" for s in statuses))
    for module, counts in sorted(table.items()):
        total = sum(counts.values())
        print(f"{module:<22}{counts['killed'] / total:>8.1%}"
              + "".join(f"{counts[s]:>13}" for s in statuses))


if __name__ == "__main__":
    main()
