"""One table of ``pytest --benchmark-only``'s groups, for results/.

    .venv/bin/python -m pytest tests/benchmarks --benchmark-only --benchmark-json RAW.json
    .venv/bin/python scripts/benchmarks_table.py RAW.json [OUT_DIR]

Writes OUT_DIR/benchmarks-<cores>c.md and .json (default OUT_DIR: results): per group, each variant's
median (and min) time, and its ratio to the group's fastest. The JSON keeps the statistics of every
benchmark with feedbench's provenance (machine, commit with a dirty flag that ignores results/, time);
pytest-benchmark's own machine and commit records are left out (they name the host).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

STATS = ("min", "median", "mean", "max", "stddev", "rounds")


def rows(raw: dict) -> list[dict]:
    """[{group, name, stats}] in the file's order (pure)."""
    return [{"group": b["group"] or "(none)", "name": b["name"], **{k: b["stats"][k] for k in STATS}}
            for b in raw["benchmarks"]]


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def markdown(table: list[dict], report: dict) -> str:
    m, commit = report["machine"], report["commit"]
    lines = [f"# pytest --benchmark-only ({m['cores']} cores)", "",
             "`.venv/bin/python -m pytest tests/benchmarks --benchmark-only` (one group per technique), then "
             "`scripts/benchmarks_table.py`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores; commit {commit['id']} (dirty: {commit['dirty']}), "
             f"{report['created']}", "",
             "| group | variant | median | min | x fastest median | rounds |", "|---|---|---:|---:|---:|---:|"]
    groups: dict[str, list[dict]] = {}
    for r in table:
        groups.setdefault(r["group"], []).append(r)
    for group, members in groups.items():
        fastest = min(r["median"] for r in members)
        for r in sorted(members, key=lambda r: r["median"]):
            lines.append(f"| {group} | `{r['name']}` | {_time(r['median'])} | {_time(r['min'])} | "
                         f"{r['median'] / fastest:.2f} | {r['rounds']} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.provenance import provenance
    from feeding.io import write_record_and_table

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    raw = json.loads(Path(args[0]).read_text())
    out = Path(args[1] if len(args) > 1 else "results")
    table = rows(raw)
    if not table:
        print(f"{args[0]}: no benchmarks in it (was --benchmark-only given?)", file=sys.stderr)
        return 1
    report = {"benchmarks": table, **provenance()}
    stem = out / f"benchmarks-{os.cpu_count()}c"
    write_record_and_table(stem, report, markdown(table, report))
    print(f"wrote {stem}.md, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
