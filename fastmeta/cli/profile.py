"""``fastmeta profile``: time and memory of each stage of one meta-gradient."""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from typing import Any

import numpy as np

from ..rl import SOLVERS
from . import _types


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _peak_mb() -> float:
    """High-water mark of the resident set size in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def grid_side(states: int) -> int:
    """Side of the square grid whose size is nearest to ``states`` (at least 1)."""
    return max(1, int(round(math.sqrt(states))))


def run_profile(*, states: int = 10_000, actions: int = 4, features: int = 32, tasks: int = 4,
                family: str = "grid", gamma: float = 0.99, solver: str = "auto", repeats: int = 1,
                seed: int = 0, scheduler: str | None = None) -> dict:
    """Time and memory of each stage of one meta-gradient on a generated problem.

    With ``scheduler`` (a Dask scheduler address) the same gradient is also timed on
    that cluster (:mod:`fastmeta.distributed`), with each worker's memory.

    The grid family is square: it builds the grid whose side is the nearest integer
    to sqrt(``states``) and says so when that differs from ``states``.
    """
    import fastmeta

    report: dict[str, dict[str, float]] = {}

    def stage(name: str, seconds: float) -> None:
        report[name] = {"seconds": seconds, "rss_mb": _rss_mb(), "peak_mb": _peak_mb()}

    t = time.perf_counter()
    if family == "grid":
        size = grid_side(states)
        problem, phi = fastmeta.tasks.gridworld_goals(tasks, size, gamma=gamma, n_features=features, seed=seed)
        if size * size != states:
            print(f"fastmeta profile: the grid family is square; built a {size} x {size} = {size * size:,}-state "
                  f"grid, the nearest to --states {states:,}")
        states = size * size
    else:
        problem, phi = fastmeta.tasks.random_mdps(tasks, states, actions, gamma=gamma, n_features=features, seed=seed)
    stage("build tasks and features", time.perf_counter() - t)
    t = time.perf_counter()
    meta = fastmeta.MetaRL(problem, fastmeta.LinearEnergy(phi), solver=solver)
    stage("analyse (symbolic, once)", time.perf_counter() - t)
    theta = 0.5 * np.random.default_rng(seed).standard_normal(features)
    t = time.perf_counter()
    meta.value_and_grad(theta)
    stage("first gradient (includes compilation)", time.perf_counter() - t)
    totals: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, sec in meta.profile_stages(theta).items():
            totals.setdefault(name, []).append(sec)
    for name, secs in totals.items():
        stage(f"gradient: {name}", float(np.median(secs)))
    t = time.perf_counter()
    meta.objective(theta)
    stage("objective only", time.perf_counter() - t)
    methods = meta.solver_methods
    print(f"fastmeta profile: {family} family, S={states:,}, A={actions}, d={features}, n={tasks}, "
          f"gamma={gamma:g}, solver={solver} -> {', '.join(methods)}")
    print(f"{'stage':<44}{'seconds':>10}{'RSS MB':>10}{'peak MB':>10}")
    grad_total = 0.0
    for name, row in report.items():
        if name.startswith("gradient: "):
            grad_total += row["seconds"]
        print(f"  {name:<42}{row['seconds']:>10.4f}{row['rss_mb']:>10.0f}{row['peak_mb']:>10.0f}")
    print(f"  {'one meta-gradient (sum of stages)':<42}{grad_total:>10.4f}")
    out = {"stages": report, "gradient_seconds": grad_total, "methods": methods, "states": states}
    if scheduler is not None:
        from ..distributed import profile_on_cluster

        out["distributed"] = profile_on_cluster(scheduler, problem, meta.model, theta, repeats, solver=solver)
    return out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fastmeta profile``."""
    p = subparsers.add_parser(
        "profile", help="time and memory of each stage of one meta-gradient",
        description="Build a generated problem and print the time, resident memory and peak memory of each "
                    "stage of one meta-gradient: building the tasks, the symbolic analysis, building M, "
                    "factorising, solves, transposed solves, the other kernels and the vector-Jacobian product.")
    p.add_argument("--states", type=_types.integer(1), default=10_000,
                   help="number of states S; the grid family uses the nearest square, e.g. 100000 -> "
                        "316 x 316 = 99,856 (default: 10000)")
    p.add_argument("--actions", type=_types.integer(1), default=4,
                   help="number of actions A; the grid family has exactly 4 (default: 4)")
    p.add_argument("--features", type=_types.integer(1), default=32,
                   help="feature dimension d; a multiple of 4 for the grid family (default: 32)")
    p.add_argument("--tasks", type=_types.integer(1), default=4, help="number of tasks n (default: 4)")
    p.add_argument("--family", choices=("grid", "random"), default="grid",
                   help="gridworld goals sharing one kernel, or RL^2-style random MDPs (default: grid)")
    p.add_argument("--gamma", type=_types.real(0.0, 1.0), default=0.99,
                   help="discount factor, in (0, 1) (default: 0.99)")
    p.add_argument("--solver", choices=SOLVERS, default="auto",
                   help="linear solver for M = I - gamma P_pi (default: auto)")
    p.add_argument("--repeats", type=_types.integer(1), default=3,
                   help="gradients timed per stage, median reported (default: 3)")
    p.add_argument("--seed", type=_types.integer(0), default=0, help="random seed, >= 0 (default: 0)")
    p.add_argument("--json", type=_types.output_file, default=None,
                   help="also write the report as JSON to this file (default: none)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="also time the gradient on the Dask cluster at ADDRESS, e.g. tcp://host:8786, "
                        "with each worker's memory (needs the dist extra) (default: none)")
    return p


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Checks between options, before any work (usage error, exit status 2)."""
    if args.family == "grid" and args.actions != 4:
        parser.error(f"argument --actions: the grid family has 4 actions, got {args.actions} "
                     "(use --family random for other counts)")
    if args.family == "grid" and args.features % 4:
        parser.error(f"argument --features: the grid family needs a multiple of 4, got {args.features}")
    if args.scheduler is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            parser.error("argument --scheduler: needs Dask distributed (pip install 'fastmeta[dist]')")


def run(args: argparse.Namespace) -> int:
    """Profile and optionally write the JSON report."""
    report = run_profile(states=args.states, actions=args.actions, features=args.features, tasks=args.tasks,
                         family=args.family, gamma=args.gamma, solver=args.solver, repeats=args.repeats,
                         seed=args.seed, scheduler=args.scheduler)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
