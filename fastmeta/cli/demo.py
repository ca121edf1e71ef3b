"""``fastmeta demo``: meta-RL on a gridworld goal family (or ``--sl``: sinusoid regression)."""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from .. import LinearEnergy, MetaRL
from .. import tasks as _tasks
from ..planning import optimal_policy
from . import _types

DEFAULT_PLOT = "fastmeta_demo.png"
RL_STEPS, RL_QUICK_STEPS = 300, 10

L_MEANING = ("L = mean over tasks of J_i after one PPO step from the prior: the discounted fraction of time "
             "the agent spends at task i's goal, (1 - gamma) sum_t gamma^t Pr(s_t = goal), between 0 and 1.")


class _TrackedMetaRL(MetaRL):
    """MetaRL that keeps every theta its gradient is taken at (the demo's held-out curve)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.visited: list[np.ndarray] = []

    def value_and_grad(self, theta: Any) -> tuple[float, np.ndarray]:
        self.visited.append(np.array(theta, dtype=np.float64, copy=True))
        return super().value_and_grad(theta)


def run_rl_demo(*, size: int = 10, n_tasks: int = 16, steps: int = RL_STEPS, eta: float = 20.0, tau: float = 1.0,
                gamma: float = 0.95, lr: float = 60.0, seed: int = 0, plot: str | None = DEFAULT_PLOT,
                checkpoint: str | None = None, resume: bool = False, progress: bool = True,
                family: str = "grid") -> dict:
    """Meta-train a linear energy on a gridworld goal family and report what it bought.

    Goals lie in the bottom-right quadrant of a ``size`` x ``size`` slippery grid and
    the agent starts in the centre; the energy is linear in tabular (one-hot)
    features, so the prior can express any state-dependent preference. The report
    compares the meta-objective L of the meta-learned prior with the uniform prior it
    started from, with random priors, and with the mean of the tasks' own optima J_i*
    (each task solved exactly by policy iteration, knowing its goal), on the training
    goals and on held-out goals. ``family="frozenlake"`` uses random Gymnasium
    FrozenLake maps instead (:func:`fastmeta.tasks.gymnasium.frozenlake_demo_problem`).

    Returns
    -------
    dict
        ``rows`` (label -> (train, held-out) L), ``steps``, ``seconds``, ``objective``
        (L on the training goals at every theta the run visited, the last one being
        the returned theta) and ``held_out`` (the same thetas on the held-out goals).
    """
    rng = np.random.default_rng(seed)
    if family == "frozenlake":
        from ..tasks.gymnasium import frozenlake_demo_problem

        train, held_out, phi, text = frozenlake_demo_problem(n_tasks, size, gamma=gamma, seed=rng)
        meaning = L_MEANING.replace("task i's goal", "task i's goal (the G cell of its random map)")
    else:
        grid = dict(size=size, gamma=gamma, goal_region=(0.5, 1.0, 0.5, 1.0), start="center", features="onehot")
        train, phi = _tasks.gridworld_goals(n_tasks, seed=rng, **grid)
        held_out, _ = _tasks.gridworld_goals(n_tasks, seed=rng, **grid)
        text = (f"{n_tasks} gridworld goal tasks, {size}x{size} grid (S={size * size}, A=4), "
                f"d={phi.shape[2]} one-hot features")
        meaning = L_MEANING
    model = LinearEnergy(phi)
    meta = _TrackedMetaRL(train, model, tau=tau, eta=eta)
    meta_test = MetaRL(held_out, model, tau=tau, eta=eta)
    print(f"fastmeta demo: {text}, tau={tau:g}, eta={eta:g}, gamma={gamma:g}")
    print(meaning)
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
    # Curves over the thetas of this run (a resumed run starts where its checkpoint ended), ending at theta_T.
    path = list(meta.visited)
    if not path or not np.array_equal(path[-1], theta):
        path.append(theta)
    first = max(result.steps - (len(path) - 1), 0)
    train_curve = [meta.objective(t) for t in path]
    test_curve = [meta_test.objective(t) for t in path]
    taken = len(path) - 1
    gnorm = (f"; ||grad L|| {result.grad_norm[0]:.3g} -> {result.grad_norm[-1]:.3g}"
             if len(result.grad_norm) else "")
    resumed = f" (resumed at step {first})" if first else ""
    print(f"\n{taken} steps of Algorithm 1 in {seconds:.2f} s{resumed}{gnorm}\n")
    print(f"{'meta-objective L (after one PPO step per task)':<48}{'train goals':>12}{'held-out':>12}")
    for name, (a, b) in rows.items():
        print(f"  {name:<46}{a:>12.4f}{b:>12.4f}")
    gap = rows["each task's own optimum"][1] - rows["uniform prior (theta = 0)"][1]
    got = rows["meta-learned prior"][1] - rows["uniform prior (theta = 0)"][1]
    if gap > 0:
        print(f"\nOn held-out goals the meta-learned prior closes {100 * got / gap:.0f}% of the gap between "
              f"the uniform prior and the per-task optima.")
    if plot:
        _plot_rl(plot, range(first, first + len(path)), train_curve, test_curve, rows,
                 f"fastmeta demo: {n_tasks} gridworld goals, {size} x {size} grid, one PPO step from the prior")
    return {"rows": rows, "steps": result.steps, "seconds": seconds, "objective": train_curve,
            "held_out": test_curve}


def _plot_rl(plot: str, steps: range, train: list, test: list, rows: dict, title: str) -> None:
    """Learning curves on training and held-out goals with the uniform-prior and optimum levels."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: pip install 'fastmeta[plot]' for the learning-curve plot)")
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for column, curve, color, name in ((0, train, "C0", "training goals"), (1, test, "C1", "held-out goals")):
        ax.plot(list(steps), curve, color=color, label=f"meta-learned prior, {name}")
        ax.axhline(rows["each task's own optimum"][column], color=color, ls="--", lw=1,
                   label=f"mean of the tasks' own optima, {name}")
        ax.axhline(rows["uniform prior (theta = 0)"][column], color=color, ls=":", lw=1,
                   label=f"uniform prior (theta = 0), {name}")
    ax.set_xlabel("step l of Algorithm 1 (meta-gradient ascent)")
    ax.set_ylabel("L: discounted fraction of time at the goal")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(0.01, 0.62), framealpha=0.9)
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    print(f"Learning curves saved to {plot}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fastmeta demo``."""
    p = subparsers.add_parser(
        "demo", help="meta-train on a built-in problem and report what it bought",
        description="Meta-RL (default): meta-train a tabular energy on 16 gridworld goals and compare the "
                    "learned prior with the uniform prior, random priors and the tasks' own optima, on training "
                    "and held-out goals. With --sl: MAML against joint pretraining on few-shot sinusoid "
                    "regression with the paper's two-layer ReLU network.")
    p.add_argument("--sl", action="store_true", help="run the meta-SL demo instead of meta-RL (default: off)")
    p.add_argument("--family", choices=("grid", "frozenlake"), default="grid",
                   help="meta-RL tasks: gridworld goals, or random Gymnasium FrozenLake maps "
                        "(needs the gym extra) (default: grid)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 10 meta-RL steps, or for --sl fewer tasks and 300 steps (default: off)")
    p.add_argument("--steps", type=_types.integer(0), default=None,
                   help=f"meta-training steps, >= 0 (default: {RL_STEPS} for meta-RL, 2500 for --sl; "
                        f"with --quick {RL_QUICK_STEPS} and 300)")
    p.add_argument("--seed", type=_types.integer(0), default=0, help="random seed, >= 0 (default: 0)")
    p.add_argument("--plot", type=_types.optional_output_file, default=DEFAULT_PLOT,
                   help=f"meta-RL: file for the learning-curve plot, '' for none (default: {DEFAULT_PLOT}; "
                        "needs matplotlib)")
    p.add_argument("--checkpoint", type=_types.output_file, default=None,
                   help="meta-RL: checkpoint file written after every step (default: none)")
    p.add_argument("--resume", action="store_true",
                   help="meta-RL: continue from --checkpoint if it exists (default: off)")
    p.add_argument("--out", type=_types.output_file, default=None,
                   help="also write the results as JSON to this file (default: none)")
    return p


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Checks between options, before any work (usage error, exit status 2)."""
    if args.resume and args.checkpoint is None:
        parser.error("argument --resume: needs --checkpoint FILE to resume from")
    if args.sl and args.family != "grid":
        parser.error("argument --family: chooses the meta-RL tasks (drop --sl or --family)")
    if args.family == "frozenlake":
        try:
            import gymnasium  # noqa: F401
        except ImportError:
            parser.error("argument --family: frozenlake needs Gymnasium (pip install 'fastmeta[gym]')")
    if args.sl and args.checkpoint is not None:
        parser.error("argument --checkpoint: only the meta-RL demo checkpoints (drop --sl or --checkpoint)")


def run(args: argparse.Namespace) -> int:
    """Run the demo the options ask for."""
    if args.sl:
        from ..demo_sl import run_sl_demo

        result = run_sl_demo(seed=args.seed, quick=args.quick, steps=args.steps)
    else:
        steps = args.steps if args.steps is not None else (RL_QUICK_STEPS if args.quick else RL_STEPS)
        # FrozenLake pays 1 only at a distant goal: values are ~100x smaller, so is the gradient.
        lake = dict(family="frozenlake", size=6, lr=1e4) if args.family == "frozenlake" else {}
        result = run_rl_demo(steps=steps, seed=args.seed, plot=args.plot, checkpoint=args.checkpoint,
                             resume=args.resume, **lake)
    if args.out is not None:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"Results written to {args.out}")
    return 0
