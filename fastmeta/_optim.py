"""The outer loop shared by MetaRL.fit and MetaSL.fit.

Plain gradient ascent (meta-RL, Algorithm 1 / (3.5)) or descent (meta-SL, (4.5))
with a step-size schedule, epsilon-stationarity stopping, a progress line,
an optional projection after every step, and checkpoints from which a later run
continues bit for bit: the checkpoint stores theta, the step counter and the
whole history, and the schedule is a pure function of the step counter.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from ._validation import check_choice, check_int, check_real_scalar

StepSize = Union[float, str, Callable[[int], float]]


@dataclass
class FitResult:
    """Outcome of ``fit``.

    Attributes
    ----------
    theta : ndarray
        Final parameters.
    objective : ndarray
        Meta-objective L(theta_l) at every step taken, including steps taken by
        earlier (checkpointed) runs that this run resumed.
    grad_norm : ndarray
        ||grad L(theta_l)||_2 at every step.
    steps : int
        Number of gradient evaluations in the whole history.
    converged : bool
        True when ||grad L|| <= tol stopped the run.
    seconds : float
        Wall-clock time of this call (not of resumed earlier runs).
    """

    theta: np.ndarray
    objective: np.ndarray
    grad_norm: np.ndarray
    steps: int
    converged: bool
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        last = f"{self.objective[-1]:.6g}" if len(self.objective) else "n/a"
        return (f"FitResult(steps={self.steps}, converged={self.converged}, "
                f"objective={last}, grad_norm={self.grad_norm[-1] if len(self.grad_norm) else float('nan'):.3g})")


def make_schedule(lr: StepSize, owner: str) -> Callable[[int], float]:
    """Turn ``lr`` into a function of the step index l = 0, 1, ...

    A float gives a constant step alpha_l = a; the strings ``"constant:a"``,
    ``"sqrt:a"`` (alpha_l = a / sqrt(l + 1)) and ``"inv:a"`` (alpha_l = a / (l + 1))
    give the usual decaying schedules; a callable is called with l and must return
    a positive finite float.
    """
    if callable(lr):
        def schedule(step: int) -> float:
            return check_real_scalar(lr(step), "lr", owner, low=0.0)
        return schedule
    if isinstance(lr, str):
        kind, _, value = lr.partition(":")
        try:
            base = float(value)
        except ValueError:
            base = float("nan")
        if kind not in ("constant", "sqrt", "inv") or not np.isfinite(base) or base <= 0:
            raise ValueError(f"The 'lr' parameter of {owner} must be a positive float, a callable, "
                             f"or a string 'constant:a', 'sqrt:a' or 'inv:a' with a > 0. Got {lr!r} instead.")
        if kind == "constant":
            return lambda step: base
        if kind == "sqrt":
            return lambda step: base / np.sqrt(step + 1.0)
        return lambda step: base / (step + 1.0)
    base = check_real_scalar(lr, "lr", owner, low=0.0)
    return lambda step: base


class _Progress:
    """A one-line progress display on stderr (no dependency), at most ~10 updates/s."""

    def __init__(self, total: int, enabled: bool, label: str, first: int = 0):
        self.total, self.enabled, self.label, self.first = total, enabled, label, first
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, step: int, value: float, gnorm: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        done = step / self.total if self.total else 1.0
        bar = "#" * int(20 * done) + "-" * (20 - int(20 * done))
        rate = (now - self.start) / max(step - self.first, 1)
        sys.stderr.write(f"\r{self.label} [{bar}] {step}/{self.total} L={value:.6g} "
                         f"|grad|={gnorm:.3g} {rate:.3g}s/it")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


OPTIMIZERS = ("gd", "adam")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class _Adam:
    """Adam (Kingma and Ba) moments; the state is part of every checkpoint."""

    def __init__(self, size: int):
        self.m = np.zeros(size)
        self.v = np.zeros(size)

    def direction(self, grad: np.ndarray, step: int) -> np.ndarray:
        b1, b2 = ADAM_BETAS
        self.m = b1 * self.m + (1.0 - b1) * grad
        self.v = b2 * self.v + (1.0 - b2) * grad * grad
        m_hat = self.m / (1.0 - b1 ** (step + 1))
        v_hat = self.v / (1.0 - b2 ** (step + 1))
        return m_hat / (np.sqrt(v_hat) + ADAM_EPS)


def _save_checkpoint(path: str, theta: np.ndarray, objective: list, grad_norm: list, tag: str,
                     adam: _Adam | None) -> None:
    # Write to a temporary file and rename, so a crash mid-write never leaves a torn checkpoint.
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    extra = {} if adam is None else {"adam_m": adam.m, "adam_v": adam.v}
    np.savez(tmp, theta=theta, objective=np.asarray(objective, dtype=np.float64),
             grad_norm=np.asarray(grad_norm, dtype=np.float64), tag=np.asarray(tag), **extra)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by ``fit``: theta, objective and grad_norm histories, tag
    (and the Adam moments ``adam_m``, ``adam_v`` when the run used Adam)."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        state = {"theta": data["theta"].copy(), "objective": list(data["objective"]),
                 "grad_norm": list(data["grad_norm"]), "tag": str(data["tag"])}
        for key in ("adam_m", "adam_v"):
            if key in data:
                state[key] = data[key].copy()
        return state


def run_gradient_method(value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
                        theta0: np.ndarray, *, steps: int, lr: StepSize, maximize: bool,
                        tol: float = 0.0, project: Callable[[np.ndarray], np.ndarray] | None = None,
                        checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1,
                        resume: bool | str | os.PathLike = False, progress: bool = True,
                        optimizer: str = "gd", tag: str = "", owner: str = "fit",
                        step_aware: bool = False) -> FitResult:
    """Run ``steps`` gradient steps in total (counting resumed ones) from ``theta0``.

    ``optimizer="gd"`` is the plain update of (3.5)/(4.5), theta +- alpha_l grad;
    ``"adam"`` replaces grad by Adam's bias-corrected ratio of moments (betas 0.9,
    0.999, eps 1e-8), whose state is checkpointed with theta. ``resume`` may be True
    (continue from ``checkpoint`` if that file exists) or a path. ``tag`` describes
    the problem and the settings; resuming a checkpoint written with a different
    tag is refused, because it would silently mix runs. With ``step_aware`` the
    objective is called as ``value_and_grad(theta, step)`` (fresh tasks every step).
    """
    steps = check_int(steps, "steps", owner, low=0)
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", owner, low=1)
    tol = check_real_scalar(tol, "tol", owner, low=0.0, low_open=False)
    optimizer = check_choice(optimizer, "optimizer", OPTIMIZERS, owner)
    schedule = make_schedule(lr, owner)
    tag = f"{tag}|optimizer={optimizer}"
    theta = np.array(theta0, dtype=np.float64, copy=True)
    adam = _Adam(theta.size) if optimizer == "adam" else None
    objective: list[float] = []
    grad_norm: list[float] = []

    resume_path = None
    if resume is True:
        if checkpoint is None:
            raise ValueError(f"The 'resume' parameter of {owner} is True but no 'checkpoint' path was given.")
        resume_path = os.fspath(checkpoint) if os.path.exists(os.fspath(checkpoint)) else None
    elif resume:
        resume_path = os.fspath(resume)
        if not os.path.exists(resume_path):
            raise ValueError(f"The 'resume' parameter of {owner} must name an existing checkpoint file. "
                             f"Got {resume_path!r}, which does not exist.")
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        if state["tag"] != tag:
            raise ValueError(f"The checkpoint {resume_path!r} was written for a different problem or "
                             f"settings ({state['tag']!r}); this run is {tag!r}.")
        if state["theta"].shape != theta.shape:
            raise ValueError(f"The checkpoint {resume_path!r} holds parameters of shape "
                             f"{state['theta'].shape}; expected {theta.shape}.")
        theta, objective, grad_norm = state["theta"], state["objective"], state["grad_norm"]
        if adam is not None:
            adam.m, adam.v = state["adam_m"], state["adam_v"]

    sign = 1.0 if maximize else -1.0
    step = len(objective)
    bar = _Progress(steps, progress, owner, first=step)
    start = time.perf_counter()
    converged = False
    try:
        while step < steps:
            value, grad = value_and_grad(theta, step) if step_aware else value_and_grad(theta)
            gnorm = float(np.linalg.norm(grad))
            if not (np.isfinite(value) and np.isfinite(gnorm)):
                raise FloatingPointError(f"{owner}: the objective or its gradient became non-finite at "
                                         f"step {step} (L={value}, |grad|={gnorm}); lower the step size.")
            objective.append(float(value))
            grad_norm.append(gnorm)
            if gnorm <= tol:
                converged = True
                break
            direction = grad if adam is None else adam.direction(grad, step)
            theta = theta + sign * schedule(step) * direction
            if project is not None:
                theta = project(theta)
            step += 1
            bar.update(step, value, gnorm)
            if checkpoint is not None and (step % checkpoint_every == 0 or step == steps):
                _save_checkpoint(os.fspath(checkpoint), theta, objective, grad_norm, tag, adam)
    finally:
        if objective:
            bar.update(step, objective[-1], grad_norm[-1], force=True)
        bar.close()
    if checkpoint is not None and converged:
        _save_checkpoint(os.fspath(checkpoint), theta, objective, grad_norm, tag, adam)
    return FitResult(theta=theta, objective=np.asarray(objective), grad_norm=np.asarray(grad_norm),
                     steps=len(objective), converged=converged, seconds=time.perf_counter() - start)
