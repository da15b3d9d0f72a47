"""One table of every GPU check: each test of a pytest JUnit XML report and the scaling bench's throughput.

    python bench/gpu_table.py --junit gpu_tests.xml [--scaling gpu_scaling.json]
                              [--elapsed SECONDS --budget SECONDS] [--out gpu_table.txt]

A row per check: its name, pass / fail / skip, its seconds, and a figure: what the test recorded with pytest's
``record_property`` (measured differences, counts), the reason of a skip, the first line of a
failure; for the bench, images/s and scaling efficiency. With ``--elapsed`` a last row says whether
the whole run kept within ``--budget``. Exits 1 when any row failed, so bench/gpu_check.sh can end
with the table and still report the outcome. Run pytest with ``--junitxml`` and
``-o junit_family=xunit1``: record_property is made for that family (pytest warns under xunit2).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

PASS, FAIL, SKIP = "pass", "fail", "skip"
HEADER = ("check", "result", "s", "figure")


@dataclass(frozen=True)
class Row:
    name: str
    result: str  # PASS, FAIL or SKIP
    figure: str
    seconds: float | None = None  # what the check took, where known: which one costs the budget


def number(text: str) -> str:
    """A recorded value for the table: integers as they are, large numbers to 0.1, others to 3 digits."""
    try:
        value = float(text)
    except ValueError:
        return text
    if value.is_integer() and text.lstrip("-").isdigit():
        return text
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"


def first_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else ""


def junit_rows(path: Path) -> list[Row]:
    """A row per test case; a case that failed or errored (in a fixture too) is a failure."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        properties = [f"{p.get('name')}={number(p.get('value', ''))}" for p in case.iter("property")]
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            result, note = FAIL, first_line(problem.get("message"))
        elif skipped is not None:
            result, note = SKIP, first_line(skipped.get("message"))
        else:
            result, note = PASS, ""
        figure = ", ".join([*properties, *([note] if note else [])])
        rows.append(Row(case.get("name", "?"), result, figure, float(case.get("time", "nan"))))
    return rows


def scaling_rows(path: Path) -> list[Row]:
    """A row per configuration of bench/ddp_scaling.py's JSON; one failed row when it wrote none."""
    if not path.is_file():
        return [Row("ddp_scaling", FAIL, f"no results in {path}: the bench failed (see its output above)")]
    rows = []
    for r in json.loads(path.read_text())["results"]:
        figure = f"{r['images_per_s']:.1f} images/s, scaling efficiency {r['efficiency']:.0%}"
        seconds = sum(run["wall_s"] for run in r.get("rounds", [])) or None
        rows.append(Row(f"ddp_scaling {r['ranks']} GPU(s), batch {r['batch']}", PASS, figure, seconds))
    return rows


def time_row(elapsed: float, budget: float) -> Row:
    return Row("total time", PASS if elapsed <= budget else FAIL, f"budget {budget:.0f} s", elapsed)


def seconds_cell(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds:.1f}"  # NaN: no time in the report


def render(rows: list[Row]) -> str:
    cells = [HEADER, *((r.name, r.result, seconds_cell(r.seconds), r.figure) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = [f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]:>{widths[2]}}  {c[3]}".rstrip() for c in cells]
    lines.insert(1, "-" * max(len(line) for line in lines))
    counts = {result: sum(r.result == result for r in rows) for result in (PASS, FAIL, SKIP)}
    lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, required=True, help="pytest --junitxml report (junit_family=xunit1)")
    parser.add_argument("--scaling", type=Path, default=None, help="bench/ddp_scaling.py --out JSON")
    parser.add_argument("--elapsed", type=float, default=None, help="seconds the whole check took")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds it may take (default 300)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if not args.junit.is_file():
        rows = [Row("tests", FAIL, f"no report at {args.junit}: pytest did not run to the end")]
    else:
        rows = junit_rows(args.junit) or [Row("tests", FAIL, f"{args.junit} holds no test: none was collected")]
    if args.scaling is not None:
        rows += scaling_rows(args.scaling)
    if args.elapsed is not None:
        rows.append(time_row(args.elapsed, args.budget))
    table = render(rows)
    print(table, end="")
    if args.out is not None:
        args.out.write_text(table)
    return 1 if any(r.result == FAIL for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
