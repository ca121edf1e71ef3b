"""Batches of small meta-RL tasks, each computed by one compiled call (see ``_kernels/rl_batched``).

A batch is built once, when :class:`fastmeta.MetaRL` is constructed: its kernels
(one copy per distinct content), groups (kernel, discount) and tasks' r and zeta
are packed into flat arrays, so that a call costs a fixed amount of Python work
however many tasks it holds. Batches of at least ``LANES_MIN_TASKS`` tasks with at
most ``DENSE_KERNEL_MAX_STATES`` states are also packed by lanes (``_kernels/rl_lanes``:
blocks of tasks computed in lockstep, each task's arithmetic in its order). Batches are
capped in memory (``BATCH_BYTES``): the main-effect LU factors of every shared group
and the per-task gradient slots of a batch are dense, S x S and S x A each.
"""
from __future__ import annotations

import math
from typing import Sequence

import numba
import numpy as np

from ._kernels import _config
from ._kernels import rl as _k
from ._kernels import rl_batched as _kb
from ._kernels import rl_lanes as _kl
from ._kernels.checks import all_finite
from .mdp import TabularMDP

BATCH_BYTES = 64 * 2**20
"""Largest working memory of one batch (main-effect LU factors + gradient slots + dense kernels)."""

DENSE_KERNEL_MAX_STATES = 32
"""Batches of tasks with at most this many states also keep each kernel as a dense S*A x S array.

Bellman backups, M = I - gamma P_pi and P^T w then run over contiguous rows that the
compiler vectorises, instead of gathering through CSR indices one entry at a time. Such batches
of at least ``LANES_MIN_TASKS`` tasks are computed by lanes instead."""

LANES_MIN_TASKS = _kl.LANES // 2
"""Smallest batch computed by lanes: a block costs the same however many of its lanes are
used, and from half a block on it is faster than the tasks one by one (one thread, a
block of 32 lanes against one task: S = 16 92 / 10 us, S = 32 400 / 23 us)."""

class _Batch:
    """Tasks computed together; ``tasks`` lists their indices in the meta-problem, in batch order.

    Everything a call needs is packed into two arrays, ``ints`` and ``floats`` (layout in
    :func:`fastmeta._kernels.rl_batched.unpack`), or, for a batch by lanes, into one
    (:func:`pack_lanes`): a compiled call costs about 0.2 us per array argument to
    dispatch, so a call passes two instead of a dozen. ``kernel(*data, ...)`` is the call.
    """

    def __init__(self, tasks: Sequence[TabularMDP], indices: Sequence[int]):
        S, A = tasks[0].shape
        self.shape = (S, A)
        self.tasks = list(indices)
        self.position = {i: j for j, i in enumerate(self.tasks)}
        kernel_of: dict[str, int] = {}
        group_of: dict[tuple[str, float], int] = {}
        kernels, group_kernel, group_gamma, task_group = [], [], [], []
        for task in tasks:
            key = task.kernel_fingerprint
            if key not in kernel_of:
                kernel_of[key] = len(kernels)
                kernels.append(task.P)
            if (key, task.gamma) not in group_of:
                group_of[key, task.gamma] = len(group_kernel)
                group_kernel.append(kernel_of[key])
                group_gamma.append(task.gamma)
            task_group.append(group_of[key, task.gamma])
        n, G = len(tasks), len(group_kernel)
        # Groups of several tasks are factorised once per call before the tasks; a group of
        # one task is factorised by the thread computing that task (no S x S buffer kept for it).
        size = np.bincount(np.array(task_group, dtype=np.int64), minlength=G)
        group_slot = np.full(G, -1, dtype=np.int64)
        shared = np.flatnonzero(size > 1)
        group_slot[shared] = np.arange(shared.size)
        nnz = np.array([P.nnz for P in kernels], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(nnz)])
        indptr = [np.asarray(P.indptr[:-1], dtype=np.int64) + off for P, off in zip(kernels, offsets)]
        # By lanes, each task carries its own dense kernel: the batch-wide dense copies are not needed.
        self.lanes = S <= DENSE_KERNEL_MAX_STATES and n >= LANES_MIN_TASKS
        dense = S <= DENSE_KERNEL_MAX_STATES and not self.lanes
        header = np.array([n, G, len(kernels), offsets[-1], shared.size, int(dense)], dtype=np.int64)
        assert header.size == _kb.HEADER
        self.ints = np.concatenate([header, *indptr, offsets[-1:]] + [np.asarray(P.indices, dtype=np.int64)
                                                                      for P in kernels]
                                   + [np.array(group_kernel, dtype=np.int64), group_slot,
                                      np.array(task_group, dtype=np.int64)])
        self.floats = np.concatenate([P.data for P in kernels] + [np.array(group_gamma, dtype=np.float64)]
                                     + [t.r.ravel() for t in tasks] + [t.init for t in tasks]
                                     + ([P.toarray().ravel() for P in kernels] if dense else []))
        self.n_kernels, self.n_groups, self.n_shared = len(kernels), G, int(shared.size)
        self._units_of_work = -(-n // _kl.LANES) if self.lanes else n  # blocks or tasks
        self._parallel = self._units_of_work >= 2 and n * S ** 3 >= _config.BATCH_PARALLEL_MIN_WORK
        # The compiled call and its first two arguments: kernel(*data, f, pi, inv_tau, eta, want_grad, workers, grad).
        twins = _kl.lanes_meta_grad if self.lanes else _kb.batch_meta_grad
        self.kernel = twins.parallel if self._parallel else twins.serial
        self.data = (pack_lanes(tasks), n) if self.lanes else (self.ints, self.floats)

    def n_workers(self) -> int:
        """Threads of a call: they take the blocks (by lanes) or tasks one at a time, one workspace each."""
        return min(self._units_of_work, numba.get_num_threads()) if self._parallel else 1

    def run(self, f: np.ndarray, pi: np.ndarray, inv_tau: float, eta: float,
            want_grad: bool) -> tuple[float, np.ndarray | None]:
        """(sum of J_i, sum of dL_i/df or None) over the batch's tasks, in batch order."""
        grad = np.empty(self.shape) if want_grad else np.empty((0, 0))
        total = self.kernel(*self.data, f, pi, inv_tau, eta, want_grad, self.n_workers(), grad)
        return total, (grad if want_grad else None)

    def linear_runner(self, phi: np.ndarray, n_total: int) -> "LinearRunner":
        """The one-batch, linear-energy problem's call path (see :class:`LinearRunner`)."""
        return LinearRunner(self, phi, n_total)

    def trace(self, j: int, f: np.ndarray, pi: np.ndarray, inv_tau: float, eta: float):
        """Every intermediate quantity of the batch's j-th task (the arithmetic of :meth:`run`)."""
        from .rl import TaskTrace

        S, A = self.shape
        indptr, indices, data, group_kernel, _, group_gamma, task_group, r, init, Pd = _kb.unpack(
            self.ints, self.floats, S, A)
        g = int(task_group[j])
        q = int(group_kernel[g])
        lu = np.empty((S, S))
        _kb.factor_group(indptr, indices, data, Pd, q, float(group_gamma[g]), pi, lu)
        z0 = np.empty((S, A))
        _kb.scaled_energy(f, inv_tau, z0)
        vec = [np.empty(S) for _ in range(5)]
        mat = [np.empty((S, A)) for _ in range(7)]
        V, V_i, nu, xi, tmp = vec
        Q, adv, pi_i, Q_i, adv_i, sigma, grad = mat
        M_i = np.empty((S, S))
        J = _kb.one_task(indptr, indices, data, q * S * A, _kb.kernel_rows(Pd, q), float(group_gamma[g]), r[j],
                         init[j], z0, pi, inv_tau, eta, lu, True, V, Q, adv, pi_i, M_i, V_i, Q_i, adv_i, nu, sigma,
                         xi, grad, tmp)
        return TaskTrace(pi=pi, V=V, Q=Q, A=adv, pi_i=pi_i, V_i=V_i, J_i=float(J), Q_i=Q_i, A_i=adv_i, nu_i=nu,
                         sigma_i=sigma, xi_i=xi, grad_energy=grad)


class LinearRunner:
    """L and grad_theta L of a problem that is one batch with a linear energy phi^T theta.

    The general path's calls and nothing else: the energy, the main policy, the batch,
    the mean and the vector-Jacobian product, each the same compiled function (the same
    serial or parallel twin) that ``MetaRL``'s unit-by-unit path and a distributed driver
    run, so the bits are theirs; what is left out is the Python around them (the
    per-unit bookkeeping, copies, and the validation that the energy object and the
    general path repeat). Chosen once, at construction.

    A serial batch with a small phi (the size rule picks every serial twin) runs all of
    it as one compiled call (``linear_batch_serial`` / ``linear_lanes_serial``): at S = 10
    the five separate dispatches and their temporaries cost as much as the task itself.
    A parallel batch (at least ``BATCH_PARALLEL_MIN_WORK`` of arithmetic) keeps the
    separate calls, each twin picked by its own size, as on the general path.
    """

    def __init__(self, batch: _Batch, phi: np.ndarray, n_total: int):
        S, A, _ = phi.shape
        self.batch, self.phi, self.n_total = batch, phi, n_total
        # the twin each SizedKernel picks for these arrays (phi is the largest argument)
        self.energy = _k.linear_energy.for_size(phi.size)
        self.vjp = _k.linear_energy_vjp.for_size(phi.size)
        self.softmax = _k.softmax_policy.for_size(S * A)
        all_serial = not batch._parallel and self.energy is _k.linear_energy.serial
        self.one_call = (None if not all_serial
                         else _kl.linear_lanes_serial if batch.lanes else _kb.linear_batch_serial)

    def __call__(self, theta: np.ndarray, inv_tau: float, eta: float,
                 want_grad: bool) -> tuple[float, np.ndarray | None] | None:
        """(L, grad_theta L or None), or None if some result is not finite (the caller then
        takes the general path, whose checks name the quantity)."""
        if self.one_call is not None:
            out = np.empty(self.phi.shape[2])
            value, finite = self.one_call(self.phi, theta, *self.batch.data, inv_tau, eta, want_grad,
                                          self.n_total, out)
            return ((value, out) if want_grad else (value, None)) if finite else None
        S, A = self.batch.shape
        f = np.empty((S, A))
        self.energy(self.phi, theta, f)
        pi = np.empty((S, A))
        self.softmax(f, inv_tau, f, 0.0, pi)
        grad = np.empty((S, A)) if want_grad else np.empty((0, 0))
        batch = self.batch
        total = batch.kernel(*batch.data, f, pi, inv_tau, eta, want_grad, batch.n_workers(), grad)
        value = total / self.n_total  # rl.mean_of_sums
        # A non-finite f shows in L (a NaN policy) or in the gradient.
        if not math.isfinite(value):
            return None
        if not want_grad:
            return value, None
        grad /= self.n_total
        out = np.empty(self.phi.shape[2])
        self.vjp(self.phi, grad, out)
        return (value, out) if all_finite(out) else None


def pack_lanes(tasks: Sequence[TabularMDP]) -> np.ndarray:
    """The tasks packed by lanes (layout in :func:`fastmeta._kernels.rl_lanes.block_views`).

    Block b holds tasks ``b*LANES ..``, task index innermost; the last block's unused
    lanes hold a copy of its first task (a valid MDP: no division by zero in lanes whose
    results are not read). Filled block by block, so packing needs one block of
    temporary memory beyond the result.
    """
    W = _kl.LANES
    S, A = tasks[0].shape
    n = len(tasks)
    n_blocks = -(-n // W)
    parts = (S * A * S, S * A, S, 1)  # per lane: P, r, init, gamma
    out = np.empty((n_blocks, sum(parts) * W))
    for b in range(n_blocks):
        lanes = [tasks[i if i < n else b * W] for i in range(b * W, b * W + W)]
        fields = ([t.P.toarray() for t in lanes], [t.r for t in lanes], [t.init for t in lanes],
                  [np.float64(t.gamma) for t in lanes])
        o = 0
        for size, values in zip(parts, fields):
            # (W, size) -> (size, W): the lane index innermost
            out[b, o:o + size * W] = np.stack(values).reshape(W, size).T.ravel()
            o += size * W
    return out.ravel()


def make_batches(tasks: Sequence[TabularMDP], groups: Sequence[Sequence[int]]) -> list[_Batch]:
    """Tasks in group order, cut into batches of at most ``BATCH_BYTES`` working memory."""
    return [_Batch([tasks[i] for i in batch], batch) for batch in batch_layout(tasks[0].shape, groups)]


def batch_layout(shape: tuple[int, int], groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """The task indices of every batch of :func:`make_batches` (from the shape and groups alone)."""
    cap = max(1, BATCH_BYTES // task_bytes(*shape))
    order = [i for group in groups for i in group]
    return [order[lo:lo + cap] for lo in range(0, len(order), cap)]


def task_bytes(S: int, A: int) -> int:
    """Working memory one task adds to a batch, at most (the bound ``BATCH_BYTES`` caps).

    A group's LU factors (at most one group per task), the task's gradient slot, r and
    zeta, and a dense kernel (at most one per task) where kernels are kept dense.
    """
    return 8 * (S * S + 2 * S * A + S + (S * A * S if S <= DENSE_KERNEL_MAX_STATES else 0))
