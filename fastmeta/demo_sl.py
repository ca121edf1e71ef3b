"""``fastmeta demo --sl``: MAML against joint pretraining on few-shot sinusoid regression.

The setting follows Finn, Abbeel and Levine (2017, section 5.1) where our model allows:
K = 5 support points per task, amplitude U[0.1, 5], phase U[0, pi], x ~ U[-5, 5], one
inner gradient step during meta-training, and evaluation by the query MSE on held-out
tasks after 0, 1, 5 and 10 adaptation steps with the same inner step size. The model is
the paper's two-layer ReLU network (only the hidden weights W trained, output signs b
fixed) on the input embedding (x, 1): a bias-free ReLU network of a scalar x is
piecewise linear through the origin, the constant coordinate lets every unit place its
kink. Finn et al. use a 40-40 network with two trainable layers and Adam on freshly
sampled task batches; here the meta-objective (4.4) is minimised by plain full-batch
gradient descent (4.5) over a fixed pool of training tasks, so the numbers are not
expected to match theirs (they report MAML 0.67 / 0.38 / 0.35 and pretraining
2.41 / 2.23 / 2.19 after 1 / 5 / 10 steps).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

from .neural import TwoLayerReLU
from .sl import MetaSL, SLTask
from .tasks.sinusoid import sinusoid_tasks

FINN_2017 = {"maml": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}
EVAL_STEPS = (0, 1, 5, 10)


def run_sl_demo(seed: int = 0, quick: bool = False, out: Any = None) -> dict:
    """Meta-train on sinusoids, compare with joint pretraining, print and return the query MSEs.

    Parameters
    ----------
    seed : int, default 0
        Seeds the network, the training tasks (seed + 1) and the held-out tasks (seed + 2).
    quick : bool, default False
        Fewer tasks and steps (a smoke run of a few seconds).
    out : None, text stream or path, default None
        Where the table goes: stdout (None), the given stream, or, for a path, stdout
        plus a JSON file of the returned results at that path.

    Returns
    -------
    dict
        ``settings``; ``maml`` and ``pretrained``: mean query MSE on the held-out tasks
        after each of ``EVAL_STEPS`` adaptation steps (and their standard errors in
        ``*_sem``); ``train_objective`` (first, last); ``seconds``; ``finn_2017``.
    """
    settings = dict(k_shot=5, k_query=10, n_train=100 if quick else 300, n_test=50 if quick else 200,
                    test_query=100, width=100, embedding="(x, 1)", eta=0.1, lr=2.0,
                    steps=150 if quick else 2000, loss="squared", seed=seed)
    start = time.perf_counter()
    train = sinusoid_tasks(settings["n_train"], settings["k_shot"], settings["k_query"],
                           embedding="affine", seed=seed + 1)
    test = sinusoid_tasks(settings["n_test"], settings["k_shot"], settings["test_query"],
                          embedding="affine", seed=seed + 2)
    net = TwoLayerReLU(2, settings["width"], seed=seed)
    meta = MetaSL(train, net, loss="squared", eta=settings["eta"])
    fit = meta.fit(steps=settings["steps"], lr=settings["lr"], progress=False)
    # Pretraining: the same network fitted to all training samples of all tasks jointly
    # (support and query pooled), i.e. MetaSL with eta = 0 on the pooled tasks.
    pooled = [SLTask(np.vstack([t.X, t.X_query]), np.concatenate([t.y, t.y_query])) for t in train]
    pre = MetaSL(pooled, net, loss="squared", eta=0.0).fit(steps=settings["steps"], lr=settings["lr"],
                                                           progress=False)

    def evaluate(theta: np.ndarray) -> tuple[list[float], list[float]]:
        # MSE = 2 x the risk of the squared loss l = (h - y)^2 / 2.
        errs = np.array([[2.0 * meta.risk(p, t, "query") for p in
                          meta.adapt(theta, t, steps=max(EVAL_STEPS), return_path=True)[list(EVAL_STEPS)]]
                         for t in test])
        return errs.mean(axis=0).tolist(), (errs.std(axis=0, ddof=1) / np.sqrt(len(test))).tolist()

    maml, maml_sem = evaluate(fit.theta)
    pretrained, pre_sem = evaluate(pre.theta)
    result = {"settings": settings, "eval_steps": list(EVAL_STEPS), "maml": maml, "maml_sem": maml_sem,
              "pretrained": pretrained, "pretrained_sem": pre_sem,
              "train_objective": [float(fit.objective[0]), float(fit.objective[-1])],
              "seconds": time.perf_counter() - start, "finn_2017": FINN_2017}

    lines = [f"Sinusoid regression, K={settings['k_shot']}, two-layer ReLU (width {settings['width']}, "
             f"input {settings['embedding']}), eta={settings['eta']}, {settings['steps']} GD steps on "
             f"{settings['n_train']} tasks; query MSE on {settings['n_test']} held-out tasks "
             f"({settings['test_query']} query points each):",
             f"{'steps':>6} {'MAML (ours)':>16} {'pretrained (ours)':>20} {'MAML [Finn]':>12} {'pretr. [Finn]':>14}"]
    for k, a, sa, b, sb in zip(EVAL_STEPS, maml, maml_sem, pretrained, pre_sem):
        fa = FINN_2017["maml"].get(k)
        fb = FINN_2017["pretrained"].get(k)
        lines.append(f"{k:>6} {a:>9.3f} ± {sa:<5.3f} {b:>12.3f} ± {sb:<5.3f} "
                     f"{'' if fa is None else f'{fa:.2f}':>12} {'' if fb is None else f'{fb:.2f}':>14}")
    lines.append(f"({result['seconds']:.1f} s; Finn et al. 2017 use a 40-40 network trained with Adam.)")
    stream = out if hasattr(out, "write") else sys.stdout
    stream.write("\n".join(lines) + "\n")
    if out is not None and not hasattr(out, "write"):
        with open(os.fspath(out), "w") as fh:
            json.dump(result, fh, indent=2)
    return result
