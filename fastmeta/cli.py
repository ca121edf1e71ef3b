"""Command line: ``fastmeta demo`` (meta-RL, or ``--sl``) and ``fastmeta profile``."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Sequence

import numpy as np


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


# ----------------------------------------------------------------------------- demo

def run_rl_demo(*, size: int = 10, n_tasks: int = 16, steps: int = 300, eta: float = 20.0, tau: float = 1.0,
                gamma: float = 0.95, lr: float = 60.0, seed: int = 0, plot: str | None = "fastmeta_demo.png",
                checkpoint: str | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Meta-train a linear energy on a gridworld goal family and report what it bought.

    Goals lie in the bottom-right quadrant of a ``size`` x ``size`` slippery grid and
    the agent starts in the centre; the energy is linear in tabular (one-hot)
    features, so the prior can express any state-dependent preference. The report compares the meta-objective L of the
    meta-learned prior with the uniform prior it started from, with random priors,
    and with the mean of the tasks' own optima J_i* (each task solved exactly by
    policy iteration, knowing its goal), on the training goals and on held-out goals.
    """
    import fastmeta
    from fastmeta.planning import optimal_policy

    family = dict(size=size, gamma=gamma, goal_region=(0.5, 1.0, 0.5, 1.0), start="center", features="onehot")
    rng = np.random.default_rng(seed)
    train, phi = fastmeta.tasks.gridworld_goals(n_tasks, seed=rng, **family)
    held_out, _ = fastmeta.tasks.gridworld_goals(n_tasks, seed=rng, **family)
    model = fastmeta.LinearEnergy(phi)
    meta = fastmeta.MetaRL(train, model, tau=tau, eta=eta)
    meta_test = fastmeta.MetaRL(held_out, model, tau=tau, eta=eta)
    print(f"fastmeta demo: {n_tasks} gridworld goal tasks, {size}x{size} grid (S={size * size}, A=4), "
          f"d={model.n_params} one-hot features, tau={tau:g}, eta={eta:g}, gamma={gamma:g}")
    start = time.perf_counter()
    result = meta.fit(steps=steps, lr=lr, checkpoint=checkpoint, resume=resume, progress=progress)
    seconds = time.perf_counter() - start
    theta0, theta = model.init_params(), result.theta
    randoms = [rng.standard_normal(model.n_params) for _ in range(8)]
    rows = {
        "uniform prior (theta = 0)": (meta.objective(theta0), meta_test.objective(theta0)),
        "random priors (mean of 8)": (float(np.mean([meta.objective(t) for t in randoms])),
                                      float(np.mean([meta_test.objective(t) for t in randoms]))),
        "meta-learned prior": (meta.objective(theta), meta_test.objective(theta)),
        "each task's own optimum": (float(np.mean([optimal_policy(t)[2] for t in train])),
                                    float(np.mean([optimal_policy(t)[2] for t in held_out]))),
    }
    print(f"\n{steps} steps of Algorithm 1 in {seconds:.2f} s; ||grad L|| {result.grad_norm[0]:.3g} -> "
          f"{result.grad_norm[-1]:.3g}\n")
    print(f"{'meta-objective L (after one PPO step per task)':<48}{'train goals':>12}{'held-out':>12}")
    for name, (a, b) in rows.items():
        print(f"  {name:<46}{a:>12.4f}{b:>12.4f}")
    gap = rows["each task's own optimum"][1] - rows["uniform prior (theta = 0)"][1]
    got = rows["meta-learned prior"][1] - rows["uniform prior (theta = 0)"][1]
    if gap > 0:
        print(f"\nOn held-out goals the meta-learned prior closes {100 * got / gap:.0f}% of the gap between "
              f"the uniform prior and the per-task optima.")
    if plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("(matplotlib not installed: pip install 'fastmeta[plot]' for the learning-curve plot)")
        else:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.plot(result.objective, label="L(theta_l), training goals")
            ax.axhline(rows["each task's own optimum"][0], color="k", ls="--", label="mean of task optima")
            ax.set_xlabel("step l of Algorithm 1")
            ax.set_ylabel("meta-objective L")
            ax.legend()
            fig.tight_layout()
            fig.savefig(plot, dpi=120)
            plt.close(fig)
            print(f"Learning curve saved to {plot}")
    return {"rows": rows, "steps": result.steps, "seconds": seconds, "objective": result.objective.tolist()}


# ----------------------------------------------------------------------------- profile

def run_profile(*, states: int = 10_000, actions: int = 4, features: int = 32, tasks: int = 4,
                family: str = "grid", gamma: float = 0.99, solver: str = "auto", repeats: int = 1,
                seed: int = 0, scheduler: str | None = None) -> dict:
    """Time and memory of each stage of one meta-gradient on a generated problem.

    With ``scheduler`` (a Dask scheduler address) the same gradient is also timed on
    that cluster (:mod:`fastmeta.distributed`), with each worker's memory.
    """
    import fastmeta

    report: dict[str, dict[str, float]] = {}

    def stage(name: str, seconds: float) -> None:
        report[name] = {"seconds": seconds, "rss_mb": _rss_mb(), "peak_mb": _peak_mb()}

    t = time.perf_counter()
    if family == "grid":
        if actions != 4:
            raise SystemExit("fastmeta profile: the grid family has 4 actions; use --family random for others")
        size = int(round(np.sqrt(states)))
        problem, phi = fastmeta.tasks.gridworld_goals(tasks, size, gamma=gamma, n_features=features, seed=seed)
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
    print(f"fastmeta profile: {family} family, S={states}, A={actions}, d={features}, n={tasks}, "
          f"gamma={gamma:g}, solver={solver} -> {', '.join(methods)}")
    print(f"{'stage':<44}{'seconds':>10}{'RSS MB':>10}{'peak MB':>10}")
    grad_total = 0.0
    for name, row in report.items():
        if name.startswith("gradient: "):
            grad_total += row["seconds"]
        print(f"  {name:<42}{row['seconds']:>10.4f}{row['rss_mb']:>10.0f}{row['peak_mb']:>10.0f}")
    print(f"  {'one meta-gradient (sum of stages)':<42}{grad_total:>10.4f}")
    out = {"stages": report, "gradient_seconds": grad_total, "methods": methods}
    if scheduler is not None:
        from .distributed import profile_on_cluster

        out["distributed"] = profile_on_cluster(scheduler, problem, meta.model, theta, repeats, solver=solver)
    return out


# ----------------------------------------------------------------------------- entry point

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastmeta", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="meta-train on the built-in default problem and report")
    demo.add_argument("--sl", action="store_true", help="the meta-SL demo (two-layer ReLU on sinusoids)")
    demo.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    demo.add_argument("--steps", type=int, default=None, help="meta-RL: steps of Algorithm 1 (default 300)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--plot", default="fastmeta_demo.png", help="meta-RL learning-curve file ('' for none)")
    demo.add_argument("--checkpoint", default=None, help="meta-RL: checkpoint file written every step")
    demo.add_argument("--resume", action="store_true", help="meta-RL: continue from --checkpoint")
    demo.add_argument("--out", default=None, help="meta-SL: also write the results as JSON to this file")

    prof = sub.add_parser("profile", help="time and memory of each stage of one meta-gradient")
    prof.add_argument("--states", type=int, default=10_000)
    prof.add_argument("--actions", type=int, default=4)
    prof.add_argument("--features", type=int, default=32)
    prof.add_argument("--tasks", type=int, default=4)
    prof.add_argument("--family", choices=("grid", "random"), default="grid")
    prof.add_argument("--gamma", type=float, default=0.99)
    prof.add_argument("--solver", choices=("auto", "batched", "dense", "splu", "krylov"), default="auto")
    prof.add_argument("--repeats", type=int, default=3)
    prof.add_argument("--json", default=None, help="also write the report as JSON to this file")
    prof.add_argument("--scheduler", default=None, metavar="ADDRESS",
                      help="also time the gradient on the Dask cluster at ADDRESS (needs fastmeta[dist])")

    from .theory import command as bound_command
    bound_command.add_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "bound":
        bound_command.run(args)
        return 0
    if args.command == "demo":
        if args.sl:
            from .demo_sl import run_sl_demo

            run_sl_demo(seed=args.seed, quick=args.quick, out=args.out)
        else:
            steps = args.steps if args.steps is not None else (10 if args.quick else 300)
            run_rl_demo(steps=steps, seed=args.seed, plot=args.plot or None, checkpoint=args.checkpoint,
                        resume=args.resume)
        return 0
    report = run_profile(states=args.states, actions=args.actions, features=args.features, tasks=args.tasks,
                         family=args.family, gamma=args.gamma, solver=args.solver, repeats=args.repeats,
                         scheduler=args.scheduler)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
