"""Definition 3.3 and Theorem 3.5's sums over tasks, cut into the gradient's units of work.

MetaRL computes its gradient as a fixed-order sum over units (``MetaRL._units``: batches of
small tasks, or the tasks sharing a kernel and a discount). The sums the theory needs
(varrho, dL/df, the numerator of f_omega, ...) are cut the same way: every unit gives its
partial sums (:func:`shard_partials`), and these are added in unit order, one unit after
another (:func:`add_sums`). One process adds them all at once (:class:`LocalUnits`); a
cluster passes the running sum along its shards (``fastmeta.distributed``): the same
additions in the same order, so the same bits. Per-task measures (sigma_i, varsigma_i) stay
where they were computed until the second pass needs them (C0 needs varrho, known only
once every unit has been added) or the caller asks for them.

A unit's tasks are split into runs of one kernel and discount (one run per unit on the
sparse path; a batch of the batched path may hold several), and each run is computed like
``MetaRL.traces`` computes a group: one main-effect factorisation shared by its tasks.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .._kernels import rl as _k
from .._rl_batch import _Batch
from ..rl import MetaRL, TaskTrace

VISITATION = "visitation"
"""Kind of pass: varsigma_i at one energy f (``fs = (f,)``)."""
GAP = "gap"
"""Kind of pass: every sum of Theorem 3.5 at omega and a comparator (``fs = (f_omega, f_comparator)``)."""

_MAXIMA = ("Q_max",)
"""Entries of the partial sums combined by max (order-free) rather than added in order."""

Sums = dict[str, Any]
Kept = dict[int, tuple["np.ndarray | None", np.ndarray]]
"""Per task (index in the problem that computed it): (sigma_i or None, varsigma_i)."""


def add_sums(acc: Sums | None, partials: Sequence[Sums]) -> Sums:
    """The running sums ``acc`` with ``partials`` added in order (``acc`` is not changed).

    The one place the theory's per-unit results are combined, by one process and along
    the shards of a cluster alike, as :func:`fastmeta.rl.add_partials` is for the gradient.
    """
    out = None if acc is None else {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in acc.items()}
    for part in partials:
        if out is None:
            out = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in part.items()}
            continue
        for key, value in part.items():
            if key in _MAXIMA:
                out[key] = max(out[key], value)
            else:
                out[key] += value
    if out is None:
        raise ValueError("add_sums needs at least one partial result")
    return out


def _runs(meta: MetaRL, tasks: list[int]) -> list[list[int]]:
    """``tasks`` (one unit, in unit order) cut into groups of one kernel and discount, in first-seen order."""
    runs: dict[tuple[str, float], list[int]] = {}
    for i in tasks:
        task = meta.tasks[i]
        runs.setdefault((task.kernel_fingerprint, task.gamma), []).append(i)
    return list(runs.values())


def _run_measures(meta: MetaRL, run: list[int], f: np.ndarray, pi: np.ndarray) -> list[tuple[TaskTrace, np.ndarray]]:
    """(trace, varsigma_i) of every task of one run: varsigma_i of (3.10) by one multi-column transposed solve."""
    S = meta.n_states
    traces = meta._group(run, f, pi, want_grad=True, keep=True)
    task = meta.tasks[run[0]]
    P = task.P
    rhs = np.empty((S, len(run)))
    mu = np.empty(S)
    for j, trace in enumerate(traces):
        _k.kernel_transpose_apply(P.indptr, P.indices, P.data, trace.sigma_i, mu)
        rhs[:, j] = mu
    fac = meta._task_pattern[run[0]].factorize(P, pi, task.gamma)
    X = np.asarray(fac.solve_transposed(rhs)).reshape(S, len(run)) * (1.0 - task.gamma)
    out = []
    for j, trace in enumerate(traces):
        varsigma = np.empty_like(f)
        _k.scale_rows(np.ascontiguousarray(X[:, j]), pi, varsigma)
        out.append((trace, varsigma))
    return out


def _unit_tasks(unit: _Batch | list[int]) -> list[int]:
    return list(unit.tasks) if isinstance(unit, _Batch) else list(unit)


def shard_partials(meta: MetaRL, kind: str, fs: Sequence[np.ndarray], keep: bool) -> tuple[list[Sums], Kept]:
    """Every unit's partial sums of ``meta`` (a whole problem, or one shard of it), in unit order.

    Returns the list of per-unit sums and, with ``keep``, the per-task measures for
    :func:`finish` (else an empty dict). The sums of a unit add its tasks' terms in unit
    order; they depend only on ``fs`` and the unit.
    """
    pis = [meta._main_policy(f) for f in fs]
    partials: list[Sums] = []
    kept: Kept = {}
    for unit in meta._units:
        terms = []
        for run in _runs(meta, _unit_tasks(unit)):
            measured = _run_measures(meta, run, fs[0], pis[0])
            if kind == GAP:
                at_comparator = meta._group(run, fs[1], pis[1], want_grad=True, keep=True)
            for j, (i, (trace, varsigma)) in enumerate(zip(run, measured)):
                if kind == VISITATION:
                    terms.append({"varsigma": varsigma})
                    if keep:
                        kept[i] = (None, varsigma)
                    continue
                terms.append(_gap_terms(meta, meta.tasks[i], trace, at_comparator[j], varsigma))
                kept[i] = (trace.sigma_i, varsigma)
        partials.append(add_sums(None, terms))
    return partials, kept


def _gap_terms(meta: MetaRL, task: Any, t: TaskTrace, c: TaskTrace, varsigma: np.ndarray) -> Sums:
    """One task's terms of Theorem 3.5 (each a summand of a mean over tasks; see rl_bound)."""
    g, tau, eta = task.gamma, meta.tau, meta.eta
    return {
        "J": t.J_i,
        "J_comparator": c.J_i,
        "G": t.grad_energy,                                    # dL_i/df
        "N": c.sigma_i * t.A_i / (1.0 - g),                    # numerator of (3.14) times varrho
        "G_printed": t.sigma_i * t.A_i / tau + g * eta / tau * t.xi_i[:, None] * t.pi * t.A,
        "varsigma": varsigma,
        "Q_max": float(np.abs(task.r).max()),
    }


def l2_of_density(mass: np.ndarray, varrho: np.ndarray, pos: np.ndarray) -> float:
    """||d mass / d varrho||_{L2(varrho)} = sqrt(sum mass^2 / varrho); inf if mass sits where varrho = 0."""
    if np.any(mass[~pos] != 0.0):
        return math.inf
    return float(np.sqrt(np.sum(mass[pos] ** 2 / varrho[pos])))


def finish(kept: Kept, varrho: np.ndarray | None, want_rows: bool) -> tuple[float | None, list | None]:
    """(the largest C0 term of these tasks, or None without varrho; their varsigma_i, if asked).

    C0 = max_i max(||dsigma_i/dvarrho||, ||dvarsigma_i/dvarrho||) in L2(varrho): a max, so
    shards may each take theirs and the client the max of those.
    """
    c0 = None
    if varrho is not None:
        pos = varrho > 0.0
        c0 = max(max(l2_of_density(sigma, varrho, pos), l2_of_density(vs, varrho, pos))
                 for sigma, vs in kept.values())
    rows = [(i, vs) for i, (_, vs) in sorted(kept.items())] if want_rows else None
    return c0, rows


class LocalUnits:
    """The per-unit forms over every unit of a one-process MetaRL, added in unit order."""

    def __init__(self, meta: MetaRL):
        self.meta = meta
        self.n_tasks = len(meta.tasks)
        self.gammas = np.array([t.gamma for t in meta.tasks])
        self._kept: Kept = {}

    def sums(self, kind: str, fs: Sequence[np.ndarray], keep: bool) -> Sums:
        """The sums over all tasks of a ``kind`` pass; with ``keep`` the per-task measures stay for :meth:`finish`."""
        partials, self._kept = shard_partials(self.meta, kind, fs, keep)
        return add_sums(None, partials)

    def finish(self, kind: str, fs: Sequence[np.ndarray], varrho: np.ndarray | None,
               want_rows: bool) -> tuple[float | None, np.ndarray | None]:
        """(C0 at ``varrho`` or None, varsigma (n, S, A) or None) from the kept measures, then drop them."""
        c0, rows = finish(self._kept, varrho, want_rows)
        self._kept = {}
        return c0, None if rows is None else np.stack([vs for _, vs in rows])
