"""The outer loop shared by MetaRL.fit and MetaSL.fit.

Plain gradient ascent (meta-RL, Algorithm 1 / (3.5)) or descent (meta-SL, (4.5))
with a step-size schedule, epsilon-stationarity stopping, progress output, an
optional projection after every step, and checkpoints from which a later run
continues bit for bit (see :mod:`fastmeta._checkpoint`): a checkpoint stores theta,
the step counter, the history and the optimizer state, and the schedule is a pure
function of the step counter.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

from . import _checkpoint
from ._fingerprint import array_digest
from ._validation import check_choice, check_int, check_real_scalar

StepSize = Union[float, str, Callable[[int], float], tuple]


@dataclass
class FitResult:
    """Outcome of ``fit``.

    Attributes
    ----------
    theta : ndarray
        Final parameters theta_T.
    objective : ndarray of shape (steps + 1,)
        L(theta_l) for l = 0, ..., T, including steps taken by earlier (checkpointed)
        runs that this run resumed; ``objective[-1]`` is L at the returned ``theta``.
    grad_norm : ndarray of shape (steps + 1,)
        ||grad L(theta_l)||_2 for the same l (the last one at the returned theta).
    steps : int
        Number T of parameter updates in the whole history.
    converged : bool
        True when the run stopped because ||grad L(theta_l)||_2 <= ``tol``
        (epsilon-stationarity), before using its step budget. With the default
        ``tol=0`` only an exactly zero gradient stops a run, so ``converged`` is
        normally False: pass a positive ``tol`` to ask for stationarity.
    seconds : float
        Wall-clock time of this call (not of resumed earlier runs).
    extra : dict
        Details of the run: ``"resumed_from"`` (the step at which this call took
        over from a checkpoint, 0 for a fresh run) and ``"checkpoint"`` (the path
        written, or None).
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
        gnorm = f"{self.grad_norm[-1]:.3g}" if len(self.grad_norm) else "n/a"
        return (f"FitResult(steps={self.steps}, converged={self.converged}, "
                f"objective={last}, grad_norm={gnorm})")


def _split_named(lr: Any) -> tuple[str | None, Any]:
    """(name, schedule) of a named callable: ("name", fn) or an object with a str ``name``."""
    if isinstance(lr, tuple) and len(lr) == 2 and isinstance(lr[0], str) and callable(lr[1]):
        return lr[0], lr[1]
    if callable(lr):
        name = getattr(lr, "name", None)
        return (name if isinstance(name, str) and name else None), lr
    return None, lr


def make_schedule(lr: StepSize, owner: str) -> Callable[[int], float]:
    """Turn ``lr`` into a function of the step index l = 0, 1, ...

    A float gives a constant step alpha_l = a; the strings ``"constant:a"``,
    ``"sqrt:a"`` (alpha_l = a / sqrt(l + 1)) and ``"inv:a"`` (alpha_l = a / (l + 1))
    give the usual decaying schedules; a callable is called with l and must return
    a positive finite float. A callable may be named, as a pair ``("name", fn)`` or
    through a ``name`` attribute; checkpoints need that name (see ``schedule_name``).
    """
    _, lr = _split_named(lr)
    if callable(lr):
        def schedule(step: int) -> float:
            return check_real_scalar(lr(step), "lr", owner, low=0.0)
        return schedule
    kind, base = _parse_builtin(lr, owner)
    if kind == "constant":
        return lambda step: base
    if kind == "sqrt":
        return lambda step: base / np.sqrt(step + 1.0)
    return lambda step: base / (step + 1.0)


def schedule_name(lr: StepSize, owner: str) -> str | None:
    """A name that identifies the schedule in checkpoint tags, or None for an unnamed callable.

    Built-in schedules are named by their canonical form (``0.5`` and
    ``"constant:0.5"`` agree); callables by the name the user gave them. Code is
    never fingerprinted: two lambdas are different schedules even when their
    ``__qualname__`` agrees, so only the user can say that two callables agree.
    """
    name, fn = _split_named(lr)
    if callable(fn):
        return None if name is None else f"callable:{name}"
    kind, base = _parse_builtin(lr, owner)
    return f"{kind}:{base!r}"


def _parse_builtin(lr: Any, owner: str) -> tuple[str, float]:
    if isinstance(lr, str):
        kind, _, value = lr.partition(":")
        try:
            base = float(value)
        except ValueError:
            base = float("nan")
        if kind not in ("constant", "sqrt", "inv") or not np.isfinite(base) or base <= 0:
            raise ValueError(f"The 'lr' parameter of {owner} must be a positive float, a callable, "
                             f"or a string 'constant:a', 'sqrt:a' or 'inv:a' with a > 0. Got {lr!r} instead.")
        return kind, base
    return "constant", check_real_scalar(lr, "lr", owner, low=0.0)


class _Progress:
    """Progress on stderr: a tqdm bar on a terminal, a plain line every ~10% in logs."""

    def __init__(self, total: int, enabled: bool, label: str, first: int = 0):
        self.total, self.enabled, self.label, self.first = total, enabled, label, first
        self.start = time.perf_counter()
        self.bar = None
        self.every = max(1, math.ceil(total / 10))
        if enabled and _is_terminal(sys.stderr):
            from tqdm import tqdm  # only when shown: importing it costs ~50 ms

            self.bar = tqdm(total=total, initial=first, desc=label, file=sys.stderr, leave=True,
                            dynamic_ncols=True, unit="step")

    def update(self, step: int, value: float, gnorm: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"L={value:.6g} |grad|={gnorm:.3g}", refresh=False)
        elif step % self.every == 0 or step == self.total:
            rate = (time.perf_counter() - self.start) / max(step - self.first, 1)
            sys.stderr.write(f"{self.label}: step {step}/{self.total} L={value:.6g} "
                             f"|grad|={gnorm:.3g} {rate:.3g} s/step\n")
            sys.stderr.flush()

    def note(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else _write_line)(f"{self.label}: {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


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


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by ``fit``.

    Returns a dict with ``theta`` (theta_k), ``step`` (k), the ``objective`` and
    ``grad_norm`` histories at theta_0..theta_{k-1}, ``tag`` (a dict of the
    components that identify the run) and, for Adam runs, ``adam_m`` and ``adam_v``.
    A damaged, foreign or pickled file raises ValueError naming it.
    """
    return _checkpoint.load(path)


def run_gradient_method(value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
                        theta0: np.ndarray, *, steps: int, lr: StepSize, maximize: bool,
                        tol: float = 0.0, project: Callable[[np.ndarray], np.ndarray] | None = None,
                        checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1,
                        resume: bool | str | os.PathLike = False, overwrite: bool = False,
                        progress: bool = True, optimizer: str = "gd",
                        tag: Callable[[], dict[str, str]] | dict[str, str] | None = None,
                        owner: str = "fit", label: str | None = None,
                        compiling: Callable[[], bool] | None = None) -> FitResult:
    """Take up to ``steps`` gradient steps in total (counting resumed ones) from ``theta0``.

    ``optimizer="gd"`` is the plain update of (3.5)/(4.5), theta +- alpha_l grad;
    ``"adam"`` replaces grad by Adam's bias-corrected ratio of moments (betas 0.9,
    0.999, eps 1e-8), whose state is checkpointed with theta. ``resume`` may be True
    (continue from ``checkpoint`` if that file exists) or a path. ``tag`` gives the
    components that identify the problem (a dict, or a function returning one, called
    only when a checkpoint is used); the optimizer, schedule and ``theta0`` are added
    here. ``compiling`` tells whether the first evaluation will compile kernels.
    """
    steps = check_int(steps, "steps", owner, low=0)
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", owner, low=1)
    tol = check_real_scalar(tol, "tol", owner, low=0.0, low_open=False)
    optimizer = check_choice(optimizer, "optimizer", OPTIMIZERS, owner)
    for flag, name in ((overwrite, "overwrite"), (progress, "progress")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"The '{name}' parameter of {owner} must be a bool. Got {flag!r} instead.")
    if label is not None and not isinstance(label, str):
        raise TypeError(f"The 'label' parameter of {owner} must be a str. Got {type(label).__name__} instead.")
    schedule = make_schedule(lr, owner)

    # Every path is checked before any work, so a typo costs nothing.
    path, resume_path = _checkpoint_paths(checkpoint, resume, overwrite, owner)
    if (path or resume_path) is not None and schedule_name(lr, owner) is None:
        raise ValueError(f"The 'lr' parameter of {owner} is an unnamed callable, which a checkpoint "
                         f"cannot identify (two different functions may share a __qualname__). Name it, "
                         f"as lr=('my-schedule', fn) or with a 'name' attribute, to use checkpoints.")
    theta = np.array(theta0, dtype=np.float64, copy=True)
    full_tag: dict[str, str] = {}
    if (path or resume_path) is not None:
        full_tag = dict(tag() if callable(tag) else (tag or {}))
        full_tag.update(optimizer=optimizer, lr=schedule_name(lr, owner), theta0=digest(theta))

    lock = _checkpoint.WriterLock(path, owner) if path is not None else None
    if lock is not None:
        lock.__enter__()
    try:
        return _loop(value_and_grad, theta, steps=steps, schedule=schedule, maximize=maximize, tol=tol,
                     project=project, path=path, resume_path=resume_path, checkpoint_every=checkpoint_every,
                     progress=progress, optimizer=optimizer, tag=full_tag, owner=owner,
                     label=label or owner, compiling=compiling)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def digest(arr: np.ndarray) -> str:
    """A tag component for an array: ``blake2b:<hex>`` of its content."""
    return "blake2b:" + array_digest(arr)


def _checkpoint_paths(checkpoint: Any, resume: Any, overwrite: bool,
                      owner: str) -> tuple[str | None, str | None]:
    """(path to write, path to resume from), both validated."""
    path = None if checkpoint is None else _checkpoint.check_path(checkpoint, owner, must_exist=False)
    resume_path = None
    if resume is True or (isinstance(resume, np.bool_) and resume):
        if path is None:
            raise ValueError(f"The 'resume' parameter of {owner} is True but no 'checkpoint' path was given.")
        resume_path = path if os.path.exists(path) else None
    elif resume is not False and resume is not None and not (isinstance(resume, np.bool_) and not resume):
        resume_path = _checkpoint.check_path(resume, owner, must_exist=True)
    if path is not None and os.path.exists(path) and resume_path != path and not overwrite:
        raise ValueError(f"The 'checkpoint' parameter of {owner} names an existing file, {path!r}. "
                         f"Pass resume=True to continue that run, overwrite=True to replace it, "
                         f"or choose another path.")
    return path, resume_path


def _loop(value_and_grad, theta, *, steps, schedule, maximize, tol, project, path, resume_path,
          checkpoint_every, progress, optimizer, tag, owner, label, compiling) -> FitResult:
    adam = _Adam(theta.size) if optimizer == "adam" else None
    objective: list[float] = []
    grad_norm: list[float] = []
    if resume_path is not None:
        state = _checkpoint.load(resume_path)
        if state["tag"] != tag:
            raise ValueError(f"The checkpoint {resume_path!r} was written for a different problem or "
                             f"settings; these differ: {_checkpoint.tag_difference(state['tag'], tag)}.")
        if state["theta"].shape != theta.shape:
            raise ValueError(f"The checkpoint {resume_path!r} holds parameters of shape "
                             f"{state['theta'].shape}; expected {theta.shape}.")
        if state["step"] > steps:
            raise ValueError(f"The 'steps' parameter of {owner} must be at least the {state['step']} steps "
                             f"the checkpoint {resume_path!r} already holds (steps counts resumed steps). "
                             f"Got {steps} instead.")
        theta, objective, grad_norm = state["theta"], state["objective"], state["grad_norm"]
        if adam is not None:
            adam.m, adam.v = state["adam_m"], state["adam_v"]
    first = len(objective)

    def save(step: int) -> None:
        _checkpoint.save(path, theta=theta, step=step, objective=objective, grad_norm=grad_norm, tag=tag,
                         adam=None if adam is None else (adam.m, adam.v))

    sign = 1.0 if maximize else -1.0
    step = first
    bar = _Progress(steps, progress, label, first=first)
    if compiling is not None and progress and compiling():
        bar.note("compiling kernels (first run only; later runs load them from the cache)")
    start = time.perf_counter()
    converged = False
    try:
        while True:
            value, grad = value_and_grad(theta)
            gnorm = float(np.linalg.norm(grad))
            if not (np.isfinite(value) and np.isfinite(gnorm)):
                where = "at the starting point" if step == 0 else f"at step {step}"
                hint = "" if step == 0 else " The steps may be too large: lower the step size."
                raise FloatingPointError(f"{owner}: the objective or its gradient is not finite {where} "
                                         f"(L={value}, |grad|={gnorm}).{hint}")
            objective.append(float(value))
            grad_norm.append(gnorm)
            if gnorm <= tol:
                converged = True
            if converged or step >= steps:
                break
            direction = grad if adam is None else adam.direction(grad, step)
            theta = theta + sign * schedule(step) * direction
            if project is not None:
                theta = project(theta)
            step += 1
            bar.update(step, value, gnorm)
            if path is not None and step % checkpoint_every == 0:
                save(step)  # theta_k with the history at theta_0..theta_{k-1}
    finally:
        bar.close()
    if path is not None:
        # The final state, likewise without the entry at theta_T: a resumed run recomputes
        # it (bit for bit), so resuming a finished or converged run adds no duplicate.
        last = objective.pop(), grad_norm.pop()
        save(step)
        objective.append(last[0])
        grad_norm.append(last[1])
    return FitResult(theta=theta, objective=np.asarray(objective), grad_norm=np.asarray(grad_norm),
                     steps=step, converged=converged, seconds=time.perf_counter() - start,
                     extra={"resumed_from": first, "checkpoint": path})
