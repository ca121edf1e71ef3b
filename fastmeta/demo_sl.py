"""``fastmeta demo --sl``: MAML against joint pretraining on few-shot sinusoid regression.

The setting follows Finn, Abbeel and Levine (2017, section 5.1) where our model allows:
K = 5 support points per task, amplitude U[0.1, 5], phase U[0, pi], x ~ U[-5, 5], one
inner gradient step during meta-training, and evaluation by the query MSE on held-out
tasks after 0, 1, 5 and 10 adaptation steps with the meta-training inner step size.

Model: the paper's two-layer ReLU network u(x) = m^{-1/2} sum_r b_r ReLU(W_r . z(x)),
width m = 100, output signs b_r fixed, only W trained, on the input embedding
z(x) = (random Fourier features of x, constant) of
:func:`fastmeta.tasks.sinusoid.fourier_embedding`: D = 32 features
sqrt(2/D) cos(omega_k x + beta_k), omega_k ~ N(0, 1), beta_k ~ U[0, 2 pi), and a
constant coordinate 2, drawn once from the demo seed. Inner step eta = 2 (the m^{-1/2}
scaling makes the step in function space eta times the tangent kernel, so eta is O(1),
not Finn et al.'s 0.01). Meta-training minimises (4.4) with its exact gradient
(``MetaSL.value_and_grad``) by full-batch Adam (lr 0.01, as Finn et al. use Adam;
``MetaSL.fit``'s plain gradient descent (4.5) reaches similar numbers for some feature
draws but is slower and less robust to the draw), 2500 steps over a fixed pool of 300
training tasks with 20 query points each.

Why (x, 1) fails. With only W trained the tangent kernel of this network is
(1/m) sum_r 1[W_r.z(x) > 0] 1[W_r.z(x') > 0] * z(x).z(x'): a non-negative learnt factor
times the fixed Gram kernel of the embedding. For z = (x, 1) the Gram kernel xx' + 1 is
dominated by large |x| and every unit has a single kink, so an inner step either barely
moves the function (small eta) or diverges (eta >= 1): the MSE stays near 3 after 10
steps. Random Fourier features give a bounded, smooth Gram kernel and units that switch
on and off several times along x. To first order, the one-step update at x' from a
residual at x still has the sign of z(x).z(x') >= 4 - 2 > 0, whereas the sinusoid family
needs negative correlations at distance ~ pi; this is one reason the MSEs stay about twice
Finn et al.'s (who train every layer).

Baseline: the same network pretrained on all training samples pooled (eta = 0), adapted
on the support points by gradient descent with its own step size, chosen from
eta * 2^-k, k = 0..6, on the training tasks (Finn et al. "automatically tuned" it); with
the MAML step its MSE first jumps up (to ~8 in a trial run). They report MAML
0.67 / 0.38 / 0.35 and pretraining 2.41 / 2.23 / 2.19 after 1 / 5 / 10 steps with a 40-40
network trained with Adam on freshly sampled tasks.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

from ._validation import check_int
from .neural import TwoLayerReLU
from .sl import MetaSL, SLTask
from .tasks.sinusoid import fourier_embedding, sinusoid_tasks

FINN_2017 = {"maml": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}
EVAL_STEPS = (0, 1, 5, 10)
OWNER = "run_sl_demo"


def run_sl_demo(seed: int = 0, quick: bool = False, out: Any = None, progress: bool = True,
                steps: int | None = None) -> dict:
    """Meta-train on sinusoids, compare with joint pretraining, print and return the query MSEs.

    Settings (module docstring for the reasons): width 100, input embedding
    ``fourier_embedding(32, lengthscale=1.0, constant=2.0, seed=seed + 3)``, inner step
    eta = 2 (also at test time), K = 5 support and 20 query points per training task,
    2500 full-batch Adam steps (lr 0.01) on the exact meta-gradient over 300 training
    tasks, 200 held-out tasks with 100 query points each; ``quick``: 100 training tasks,
    300 steps, 50 held-out tasks. The pretrained network (eta = 0 on the pooled samples,
    same optimiser and steps) is adapted
    with the step from eta * 2^-k, k = 0..6, with the least mean training-task query MSE
    after 1, 5 and 10 steps.

    Parameters
    ----------
    seed : int, default 0
        Seeds the network, the training tasks (seed + 1), the held-out tasks (seed + 2)
        and the Fourier features (seed + 3).
    quick : bool, default False
        Fewer tasks and steps (a smoke run of a few seconds).
    out : None, text stream or path, default None
        Where the table goes: stdout (None), the given stream, or, for a path, stdout
        plus a JSON file of the returned results at that path.
    progress : bool, default True
        Show the progress lines of the two training runs on stderr, each after a line
        that says which run it is (MAML meta-training or pretraining).
    steps : int, optional
        Training steps of each run (MAML and pretraining), >= 0; default 2500, or
        300 with ``quick``.

    Returns
    -------
    dict
        ``settings``; ``maml`` and ``pretrained``: mean query MSE on the held-out tasks
        after each of ``EVAL_STEPS`` adaptation steps (and their standard errors in
        ``*_sem``); ``pretrained_eta``; ``train_objective`` (first, last); ``seconds``;
        ``finn_2017``.
    """
    settings = dict(k_shot=5, k_query=20, n_train=100 if quick else 300, n_test=50 if quick else 200,
                    test_query=100, width=100,
                    embedding="random Fourier features (D=32, lengthscale 1) + constant 2",
                    n_features=32, lengthscale=1.0, constant=2.0, eta=2.0, optimizer="adam", lr=0.01,
                    steps=(300 if quick else 2500) if steps is None else check_int(steps, "steps", OWNER, low=0),
                    loss="squared", seed=seed)
    start = time.perf_counter()
    embed = fourier_embedding(settings["n_features"], settings["lengthscale"], settings["constant"],
                              seed=seed + 3)
    train = sinusoid_tasks(settings["n_train"], settings["k_shot"], settings["k_query"],
                           embedding=embed, seed=seed + 1)
    test = sinusoid_tasks(settings["n_test"], settings["k_shot"], settings["test_query"],
                          embedding=embed, seed=seed + 2)
    net = TwoLayerReLU(settings["n_features"] + 1, settings["width"], seed=seed)
    meta = MetaSL(train, net, loss="squared", eta=settings["eta"])
    _announce(progress, f"MAML meta-training: {settings['steps']} Adam steps on the exact meta-gradient "
                        f"over {settings['n_train']} tasks")
    res = meta.fit(steps=settings["steps"], lr=settings["lr"], optimizer="adam", progress=progress,
                   label="MAML meta-training")
    theta, objective = res.theta, res.objective
    # Pretraining: the same network fitted to all training samples of all tasks jointly
    # (support and query pooled), i.e. MetaSL with eta = 0 on the pooled tasks.
    pooled = [SLTask(np.vstack([t.X, t.X_query]), np.concatenate([t.y, t.y_query])) for t in train]
    _announce(progress, f"pretraining (baseline): {settings['steps']} Adam steps on the pooled samples")
    pre_theta = MetaSL(pooled, net, loss="squared", eta=0.0).fit(
        steps=settings["steps"], lr=settings["lr"], optimizer="adam", progress=progress,
        label="pretraining (baseline)").theta

    def errors(theta: np.ndarray, tasks: list, eta: float) -> np.ndarray:
        # MSE = 2 x the risk of the squared loss l = (h - y)^2 / 2; rows tasks, columns EVAL_STEPS.
        return np.array([[2.0 * meta.risk(p, t, "query") for p in
                          meta.adapt(theta, t, steps=max(EVAL_STEPS), eta=eta,
                                     return_path=True)[list(EVAL_STEPS)]] for t in tasks])

    def summary(errs: np.ndarray) -> tuple[list[float], list[float]]:
        return errs.mean(axis=0).tolist(), (errs.std(axis=0, ddof=1) / np.sqrt(len(errs))).tolist()

    # The pretrained network's step size, tuned on the training tasks (never the held-out ones).
    def train_score(eta: float) -> float:
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                score = float(errors(pre_theta, train, eta)[:, 1:].mean())
        except ValueError:           # the iterates overflowed: this step size diverges
            return np.inf
        return score if np.isfinite(score) else np.inf

    candidates = [settings["eta"] * 2.0 ** -k for k in range(7)]
    pre_eta = candidates[int(np.argmin([train_score(e) for e in candidates]))]
    maml, maml_sem = summary(errors(theta, test, settings["eta"]))
    pretrained, pre_sem = summary(errors(pre_theta, test, pre_eta))
    result = {"settings": settings, "eval_steps": list(EVAL_STEPS), "maml": maml, "maml_sem": maml_sem,
              "pretrained": pretrained, "pretrained_sem": pre_sem, "pretrained_eta": pre_eta,
              "train_objective": [objective[0], objective[-1]] if len(objective) else [],
              "seconds": time.perf_counter() - start, "finn_2017": FINN_2017}

    lines = _table(settings, result)
    stream = out if hasattr(out, "write") else sys.stdout
    stream.write("\n".join(lines) + "\n")
    if out is not None and not hasattr(out, "write"):
        with open(os.fspath(out), "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def _announce(progress: bool, text: str) -> None:
    """Say which training run the next progress display belongs to."""
    if progress:
        print(text, file=sys.stderr, flush=True)


def _table(settings: dict, result: dict) -> list[str]:
    """The report: what was compared, then query MSE per number of adaptation steps."""
    lines = [
        f"Few-shot sinusoid regression (Finn et al. 2017), K = {settings['k_shot']} support points per task.",
        f"Mean squared error on the query points of {settings['n_test']} held-out tasks "
        f"({settings['test_query']} points each) after k gradient steps on the task's support points; "
        "lower is better, +- one standard error.",
        f"  MAML: the paper's two-layer ReLU network (width {settings['width']}, only the first layer trained), "
        f"meta-trained here with {settings['steps']} Adam steps (lr {settings['lr']:g}) on the exact "
        f"meta-gradient over {settings['n_train']} training tasks, inner step eta = {settings['eta']:g}.",
        "  pretrained: the same network trained on all training samples pooled (no inner step), then "
        f"fine-tuned with step {result['pretrained_eta']:g} (the best of eta * 2^-k on the training tasks).",
        f"  Network input: {settings['n_features']} random Fourier features of x (lengthscale "
        f"{settings['lengthscale']:g}) and a constant input {settings['constant']:g}.",
        "  Finn et al. 2017: their published numbers, for a 40-40 network with every layer trained (reference).",
        "",
        f"{'k steps':>8} {'MAML (this run)':>18} {'pretrained (this run)':>22} {'MAML (Finn)':>12} "
        f"{'pretrained (Finn)':>18}",
    ]
    for k, a, sa, b, sb in zip(EVAL_STEPS, result["maml"], result["maml_sem"], result["pretrained"],
                               result["pretrained_sem"]):
        fa = FINN_2017["maml"].get(k)
        fb = FINN_2017["pretrained"].get(k)
        lines.append(f"{k:>8} {a:>10.3f} +- {sa:<5.3f} {b:>14.3f} +- {sb:<5.3f} "
                     f"{'-' if fa is None else f'{fa:.2f}':>12} {'-' if fb is None else f'{fb:.2f}':>18}")
    lines.append(f"({result['seconds']:.1f} s)")
    return lines
