"""Render a pytest-benchmark JSON file as Markdown tables, one per benchmark group.

    python benchmarks/pytest_benchmark_table.py bench_results/rl_pytest_benchmark.json > table.md
"""
from __future__ import annotations

import json
import sys


def _fmt(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def render(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, list[dict]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"] or "(no group)", []).append(bench)
    lines = [f"pytest-benchmark run of {data['datetime']} (machine: `machine.md`).", ""]
    for group in sorted(groups):
        rows = sorted(groups[group], key=lambda b: b["stats"]["median"])
        best = rows[0]["stats"]["median"]
        lines += [f"## {group}", "", "| implementation | median | min | rounds | x fastest |",
                  "| --- | --- | --- | --- | --- |"]
        for b in rows:
            s = b["stats"]
            lines.append(f"| {b['name']} | {_fmt(s['median'])} | {_fmt(s['min'])} | "
                         f"{s['rounds']} | {s['median'] / best:.2f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(sys.argv[1]))
