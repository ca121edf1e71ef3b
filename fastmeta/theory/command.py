"""``fastmeta bound``: train on a generated family, then print and plot the gap and its bounds.

Registered in :mod:`fastmeta.cli` with :func:`add_parser`; :func:`run` does the work.
"""
from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from ..cli import _types

FAMILIES = ("grid", "random", "sinusoid", "linear-gaussian")
RL_FAMILIES = ("grid", "random")


# The command line's shared argument types: every option is checked while it is parsed.
_positive_int = _types.integer(1)
_nonnegative_int = _types.integer(0)
_positive_float = _types.real(0.0, math.inf)
_nonnegative_float = _types.real(0.0, math.inf, low_open=False)
_discount = _types.real(0.0, 1.0)


def _radius(text: str) -> float | None:
    if text.lower() in ("none", "opt", "best"):
        return None
    return _positive_float(text)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bound`` on an argparse sub-parser collection; every option is checked at parse time."""
    p = subparsers.add_parser(
        "bound", help="train on a generated family, then print the optimality gap and the bounds of Thm 3.5/4.4",
        description="Run Algorithm 1 (meta-RL families) or meta-SL gradient descent on a generated family, then "
                    "print the terms of Theorem 3.5 (or 4.4), the three bounds and the true gap against the best "
                    "comparator found; with matplotlib, plot them along the training iterations.")
    p.add_argument("--family", choices=FAMILIES, default="grid", help="task family (default grid)")
    p.add_argument("--tasks", type=_positive_int, default=4, help="number of tasks n (default 4)")
    p.add_argument("--states", type=_positive_int, default=49,
                   help="RL: number of states (grid: rounded to a square; default 49)")
    p.add_argument("--points", type=_positive_int, default=20, help="SL: shared design points (default 20)")
    p.add_argument("--features", type=_positive_int, default=8,
                   help="feature dimension d (grid: a multiple of 4; default 8)")
    p.add_argument("--gamma", type=_discount, default=0.9, help="RL discount (default 0.9)")
    p.add_argument("--tau", type=_positive_float, default=1.0, help="RL temperature (default 1)")
    p.add_argument("--eta", type=_nonnegative_float, default=None, help="inner step size (default RL 1, SL 0.1)")
    p.add_argument("--steps", type=_positive_int, default=100, help="training steps (default 100)")
    p.add_argument("--lr", type=_positive_float, default=None, help="outer step size (default RL 5, SL 0.1)")
    p.add_argument("--every", type=_positive_int, default=None, help="evaluate the bound every k steps "
                   "(default steps/10)")
    p.add_argument("--R", dest="radius", type=_radius, default=None,
                   help="ball radius R (> 0), or 'none' to minimise each bound over R (default)")
    p.add_argument("--starts", type=_positive_int, default=4, help="starts of the comparator search (default 4)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the family and of the search (default 0)")
    p.add_argument("--plot", default="fastmeta_bound.png", help="plot file, '' for none (default fastmeta_bound.png)")
    # Checks that involve two options run right after parsing, through this parser's error().
    p.set_defaults(bound_parser=p)
    return p


def _check_combination(args: argparse.Namespace) -> None:
    if args.family == "grid" and args.features % 4:
        args.bound_parser.error(f"argument --features: must be a multiple of 4 for --family grid, "
                                f"got {args.features}")


def _rl_problem(args: argparse.Namespace):
    import fastmeta

    if args.family == "grid":
        size = max(2, int(round(math.sqrt(args.states))))
        tasks, phi = fastmeta.tasks.gridworld_goals(args.tasks, size, gamma=args.gamma, n_features=args.features,
                                                    seed=args.seed)
    else:
        tasks, phi = fastmeta.tasks.random_mdps(args.tasks, args.states, 4, gamma=args.gamma,
                                                n_features=args.features, seed=args.seed)
    eta = 1.0 if args.eta is None else args.eta
    return fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=args.tau, eta=eta)


def _sl_problem(args: argparse.Namespace):
    """Tasks on one shared design (so Theorem 4.4's terms are exact sums)."""
    import fastmeta

    rng = np.random.default_rng(args.seed)
    eta = 0.1 if args.eta is None else args.eta
    if args.family == "sinusoid":
        x = np.linspace(-5.0, 5.0, args.points)
        X = fastmeta.tasks.embed_inputs(x, fastmeta.tasks.fourier_embedding(args.features, seed=args.seed))
        ys = [rng.uniform(0.1, 5.0) * np.sin(x + rng.uniform(0.0, np.pi)) for _ in range(args.tasks)]
    else:
        X = rng.standard_normal((args.points, args.features))
        beta0 = rng.standard_normal(args.features)
        ys = [X @ (beta0 + 0.5 * rng.standard_normal(args.features)) + 0.1 * rng.standard_normal(args.points)
              for _ in range(args.tasks)]
    return fastmeta.MetaSL([fastmeta.SLTask(X, y) for y in ys], fastmeta.LinearModel(), eta=eta)


def run(args: argparse.Namespace) -> dict:
    """Train, evaluate the bound along the way, print the final table, save the plot."""
    from . import best_found, rl_gap, sl_gap

    _check_combination(args)
    rl = args.family in RL_FAMILIES
    meta = _rl_problem(args) if rl else _sl_problem(args)
    lr = args.lr if args.lr is not None else (5.0 if rl else 0.1)
    every = args.every or max(1, args.steps // 10)
    theta = meta.model.init_params() if rl else meta.init_params()
    path, steps = [theta], [0]
    done = 0
    while done < args.steps:
        k = min(every, args.steps - done)
        theta = meta.fit(theta, steps=k, lr=lr, progress=False).theta
        done += k
        path.append(theta)
        steps.append(done)

    if rl:
        found = best_found(meta, starts=args.starts, seed=args.seed)
        comparator = found.theta if found.value >= meta.objective(theta) else theta
        reports = [rl_gap(meta, th, comparator, R=args.radius) for th in path]
        columns = ("gap", "grad_norm", "projection", "gbar_norm", "bound_sharp", "bound_consistent", "bound_printed")
    else:
        comparator = None
        if meta.loss != "squared":
            comparator = best_found(meta, starts=args.starts, seed=args.seed).theta
        reports = [sl_gap(meta, th, comparator, R=args.radius) for th in path]
        columns = ("gap", "grad_norm", "term_i", "term_ii", "term_iii", "bound")
    print(f"fastmeta bound: {args.family} family, {meta!r}, {args.steps} steps (lr {lr:g}); comparator: "
          f"{'best of ' + str(args.starts) + ' L-BFGS-B starts' if rl else 'exact minimiser of L'}\n")
    print(reports[-1])
    print("\nalong training")
    print(f"{'step':>6}" + "".join(f"{c:>18}" for c in columns))
    for step, rep in zip(steps, reports):
        print(f"{step:>6}" + "".join(f"{getattr(rep, c):>18.6g}" for c in columns))
    if args.plot:
        _plot(args.plot, steps, reports, columns)
    return {"steps": steps, "columns": columns,
            "rows": [[float(getattr(rep, c)) for c in columns] for rep in reports], "final": reports[-1].to_dict()}


def _plot(path: str, steps: list[int], reports: list, columns: tuple[str, ...]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: pip install 'fastmeta[plot]' for the plot)")
        return
    bounds = [c for c in columns if c.startswith("bound")] + ["gap"]
    terms = [c for c in columns if c not in bounds]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 6), sharex=True)
    for name in bounds:
        vals = np.array([getattr(r, name) for r in reports], dtype=float)
        top.plot(steps, np.abs(vals), marker="o", ms=3, label=name if name != "gap" else "|gap| (true)",
                 ls="-" if name != "gap" else "--", color="k" if name == "gap" else None)
    top.set_yscale("log")
    top.set_ylabel("gap and bounds")
    top.legend(fontsize=8)
    for name in terms:
        bottom.plot(steps, [getattr(r, name) for r in reports], marker="o", ms=3, label=name)
    bottom.set_yscale("log")
    bottom.set_xlabel("training step")
    bottom.set_ylabel("terms")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nPlot saved to {path}")
