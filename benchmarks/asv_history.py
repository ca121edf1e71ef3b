"""Throughput across the project's history: asv on every landed commit that has the suite.

    PYTHONPATH=. python benchmarks/asv_history.py                  # main's commits, scratch output
    PYTHONPATH=. python benchmarks/asv_history.py --publish        # into bench_results/asv + plots
    PYTHONPATH=. python benchmarks/asv_history.py --plot-only --publish   # re-render the plots only

asv's ``existing`` environment cannot check commits out, so this script does it: for
each commit on the first-parent history of ``--range`` (default ``main``) whose tree has
``benchmarks/bench_rl.py``, it extracts that tree with ``git archive`` into
``<tmp>/fastmeta-bench/history/src`` (the repository, its work trees and ``git status``
are untouched), and runs

    asv --config <generated> run --python=same --machine vm --set-commit-hash <sha> --bench <headline>

with ``ASV_PYTHONPATH`` set to that tree (so the commit's own fastmeta is imported) and
a Numba cache beside it that is reused only for unchanged modules (see ``extract``;
compilation is outside the timings, which start after a warm-up call). Commits whose results already exist are
skipped unless ``--force``. Only the headline benchmarks run (``HEADLINE``: small and
medium problems, never 10^6); the load average before and after each commit is kept in
``history_conditions.json`` beside the results, because the machine may be shared.
Then one plot per headline benchmark, time against commit, goes to ``asv_history_*.png``
(``bench_results/`` with ``--publish``, else the scratch directory).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._output import add_publish_flag, output_dir  # noqa: E402

MACHINE = "vm"
#: name -> (asv benchmark name, parameter tuple as asv stores it, what it is)
HEADLINE = {
    "rl_grid_1e4_gradient": ("bench_rl.GridworldRL.time_gradient", ("10000",),
                             "meta-RL gradient, gridworld 10^4 states (sparse LU)"),
    "rl_dense_S100_gradient": ("bench_rl.DenseRL.time_gradient", ("'fastmeta'", "100"),
                               "meta-RL gradient, gridworld S = 100 (dense LU)"),
    "sl_linear_value_and_grad": ("bench_sl.MetaGradient.time_value_and_grad", ("'linear'", "'squared'"),
                                 "meta-SL exact meta-gradient, linear model, n = 32 tasks"),
    "sl_relu_value_and_grad": ("bench_sl.MetaGradient.time_value_and_grad", ("'relu'", "'squared'"),
                               "meta-SL exact meta-gradient, two-layer ReLU, m = 1024"),
}
# asv matches --bench against "name(param, ...)" for parameterised benchmarks.
BENCH_REGEXES = ["^" + re.escape(f"{bench}({', '.join(params)})") + "$" for bench, params, _ in HEADLINE.values()]
ATTRIBUTES = ("rounds=1", "repeat=5", "warmup_time=0")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def commits_with_suite(rev_range: str) -> list[str]:
    """First-parent commits of ``rev_range``, oldest first, whose tree has the asv suite."""
    shas = _git("rev-list", "--reverse", "--first-parent", rev_range).split()
    return [sha for sha in shas if subprocess.run(["git", "cat-file", "-e", f"{sha}:benchmarks/bench_rl.py"],
                                                  cwd=ROOT, capture_output=True).returncode == 0]


def env_name() -> str:
    """asv's name for the ``existing`` environment of this Python."""
    return "existing-py" + sys.executable.replace("/", "_")


def result_file(results: Path, sha: str) -> Path:
    return results / MACHINE / f"{sha[:8]}-{env_name()}.json"


def extract(sha: str, dest: Path) -> None:
    """Write ``sha``'s tree into ``dest`` (emptied first), each file's mtime derived from its content.

    Numba's on-disk cache is valid while a source file's (mtime, size) is unchanged. Every
    commit is extracted to the same path and a file's mtime is a function of its blob
    hash, so commits that did not touch a module reuse its compiled kernels, and a
    changed module never does.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for line in _git("ls-tree", "-r", sha).splitlines():
        meta, path = line.split("\t", 1)
        blob = meta.split()[2]
        stamp = 1_000_000_000 + int(blob[:7], 16)
        os.utime(dest / path, (stamp, stamp))


def run_commit(sha: str, results: Path, html: Path, work: Path) -> bool:
    """Run the headline benchmarks on ``sha``'s tree; False if asv reported a failure."""
    src = work / "src"
    extract(sha, src)
    config = {"version": 1, "project": "fastmeta", "repo": str(ROOT), "branches": ["main"],
              "environment_type": "existing", "benchmark_dir": str(src / "benchmarks"),
              "results_dir": str(results), "html_dir": str(html), "env_dir": str(work / "asv-env"),
              "build_cache_size": 0, "default_benchmark_timeout": 900}
    conf = work / "asv.history.json"
    conf.write_text(json.dumps(config))
    env = dict(os.environ, ASV_PYTHONPATH=str(src), NUMBA_CACHE_DIR=str(work / "numba-cache"))
    cmd = [sys.executable, "-m", "asv", "--config", str(conf), "run", "--python=same", "--machine", MACHINE,
           "--set-commit-hash", sha, "--show-stderr"]
    for regex in BENCH_REGEXES:
        cmd += ["--bench", regex]
    for attribute in ATTRIBUTES:
        cmd += ["-a", attribute]
    return subprocess.run(cmd, cwd=src, env=env).returncode == 0


def ensure_machine(results: Path) -> None:
    """Register the machine name once (asv keeps it in ~/.asv-machine.json)."""
    conf = Path(tempfile.mkdtemp()) / "asv.machine.json"
    conf.write_text(json.dumps({"version": 1, "project": "fastmeta", "repo": str(ROOT),
                                "environment_type": "existing", "results_dir": str(results)}))
    subprocess.run([sys.executable, "-m", "asv", "--config", str(conf), "machine", "--yes", "--machine", MACHINE],
                   check=True, capture_output=True)


def headline_values(results: Path, shas: list[str]) -> dict[str, list[tuple[str, float | None]]]:
    """Per headline benchmark, (short sha, seconds or None) for every commit in order."""
    series: dict[str, list[tuple[str, float | None]]] = {key: [] for key in HEADLINE}
    for sha in shas:
        path = result_file(results, sha)
        data = json.loads(path.read_text()) if path.exists() else {"results": {}}
        for key, (bench, params, _) in HEADLINE.items():
            value = None
            entry = data["results"].get(bench)
            if entry is not None:
                values, grid = entry[0], entry[1]
                combos = [()]
                for axis in grid:
                    combos = [c + (p,) for c in combos for p in axis]
                if params in combos and values is not None:
                    value = values[combos.index(params)]
            series[key].append((sha[:7], value))
    return series


def plot(series: dict, conditions: dict, out: Path) -> list[Path]:
    """One PNG per headline benchmark: seconds per call against commit (oldest left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # 1-minute load average around each commit's run (mean of before and after), if recorded.
    loads = [0.5 * (conditions[sha]["load_before"][0] + conditions[sha]["load_after"][0]) if sha in conditions
             else float("nan") for sha, _ in next(iter(series.values()))]
    for key, points in series.items():
        labels = [sha for sha, _ in points]
        xs = [i for i, (_, v) in enumerate(points) if v is not None]
        ys = [points[i][1] * 1e3 for i in xs]
        fig, ax = plt.subplots(figsize=(8, 3.6))
        ax.plot(xs, ys, "o-")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, fontsize=7)
        ax.set_xlabel("commit on main (oldest left)")
        ax.set_ylabel("ms per call (asv median)")
        ax.set_ylim(bottom=0)
        load_ax = ax.twinx()
        load_ax.bar(range(len(labels)), loads, color="0.85", zorder=0, width=0.6)
        load_ax.set_ylabel("1-min load average during the run", color="0.5")
        load_ax.set_ylim(bottom=0)
        ax.set_zorder(load_ax.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_title(f"{HEADLINE[key][2]}: asv across main's history\n{os.cpu_count()}-core machine shared with "
                     "other work (grey bars: its load during each commit's run); warm kernels", fontsize=9)
        fig.tight_layout()
        path = out / f"asv_history_{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--range", default="main", help="git revision whose first-parent history is run "
                                                         "(default: main)")
    parser.add_argument("--last", type=int, default=0, help="only the last N commits with the suite (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun commits that already have results")
    parser.add_argument("--plot-only", action="store_true", help="render the plots from existing results")
    add_publish_flag(parser)
    args = parser.parse_args(argv)
    if args.last < 0:
        parser.error("argument --last: expected an integer >= 0")
    out = output_dir(args.publish)
    results = out / "asv"
    work = Path(tempfile.gettempdir()) / "fastmeta-bench" / "history"
    html = work / "asv-html"
    shas = commits_with_suite(args.range)
    if args.last:
        shas = shas[-args.last:]
    cond_path = results / "history_conditions.json"
    conditions = json.loads(cond_path.read_text()) if cond_path.exists() else {}
    if not args.plot_only:
        results.mkdir(parents=True, exist_ok=True)
        ensure_machine(results)
        for i, sha in enumerate(shas):
            if result_file(results, sha).exists() and not args.force:
                continue
            print(f"[asv_history] {i + 1}/{len(shas)} {sha[:8]}", file=sys.stderr, flush=True)
            before = list(os.getloadavg())
            ok = run_commit(sha, results, html, work)
            conditions[sha[:7]] = {"load_before": before, "load_after": list(os.getloadavg()), "ok": ok}
            cond_path.write_text(json.dumps(conditions, indent=1, sort_keys=True))
    series = headline_values(results, [sha for sha in shas if result_file(results, sha).exists()])
    for path in plot(series, conditions, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
