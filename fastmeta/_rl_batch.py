"""Batches of small meta-RL tasks, each computed by one compiled call (see ``_kernels/rl_batched``).

A batch is built once, when :class:`fastmeta.MetaRL` is constructed: its kernels
(one copy per distinct content), groups (kernel, discount) and tasks' r and zeta
are packed into flat arrays, so that a call costs a fixed amount of Python work
however many tasks it holds. Batches are capped in memory (``BATCH_BYTES``): the
main-effect LU factors of every group and the per-task gradient slots of a batch
are dense, S x S and S x A each.
"""
from __future__ import annotations

from typing import Sequence

import numba
import numpy as np

from ._kernels import _config
from ._kernels import rl_batched as _kb
from .mdp import TabularMDP

BATCH_BYTES = 64 * 2**20
"""Largest working memory of one batch (main-effect LU factors + gradient slots)."""


class _Batch:
    """Tasks computed together; ``tasks`` lists their indices in the meta-problem, in batch order."""

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
        nnz = np.array([P.nnz for P in kernels], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(nnz)])
        self.indptr = np.concatenate([np.asarray(P.indptr[:-1], dtype=np.int64) + off
                                      for P, off in zip(kernels, offsets)] + [offsets[-1:]])
        self.indices = np.concatenate([np.asarray(P.indices, dtype=np.int64) for P in kernels])
        self.data = np.concatenate([P.data for P in kernels])
        self.group_kernel = np.array(group_kernel, dtype=np.int64)
        self.group_gamma = np.array(group_gamma, dtype=np.float64)
        self.task_group = np.array(task_group, dtype=np.int64)
        self.r = np.stack([t.r for t in tasks])
        self.init = np.stack([t.init for t in tasks])
        n = len(tasks)
        self._parallel = n >= 2 and n * S ** 3 >= _config.BATCH_PARALLEL_MIN_WORK

    def run(self, f: np.ndarray, pi: np.ndarray, inv_tau: float, eta: float,
            want_grad: bool) -> tuple[float, np.ndarray | None]:
        """(sum of J_i, sum of dL_i/df or None) over the batch's tasks, in batch order."""
        grad = np.empty(self.shape) if want_grad else np.empty((0, 0))
        n = self.task_group.size
        if self._parallel:  # a few chunks per thread balance the load; one workspace per chunk
            kernel, n_chunks = _kb.batch_meta_grad.parallel, min(n, 4 * numba.get_num_threads())
        else:
            kernel, n_chunks = _kb.batch_meta_grad.serial, 1
        total = kernel(self.indptr, self.indices, self.data, self.group_kernel, self.group_gamma, self.task_group,
                       self.r, self.init, f, pi, inv_tau, eta, want_grad, n_chunks, np.empty(n), grad)
        return total, (grad if want_grad else None)

    def trace(self, j: int, f: np.ndarray, pi: np.ndarray, inv_tau: float, eta: float):
        """Every intermediate quantity of the batch's j-th task (the arithmetic of :meth:`run`)."""
        from .rl import TaskTrace

        S, A = self.shape
        g = int(self.task_group[j])
        lu = np.empty((S, S))
        _kb.factor_group(self.indptr, self.indices, self.data, int(self.group_kernel[g]),
                         float(self.group_gamma[g]), pi, lu)
        vec = [np.empty(S) for _ in range(5)]
        mat = [np.empty((S, A)) for _ in range(7)]
        V, V_i, nu, xi, tmp = vec
        Q, adv, pi_i, Q_i, adv_i, sigma, grad = mat
        M_i = np.empty((S, S))
        J = _kb.one_task(self.indptr, self.indices, self.data, int(self.group_kernel[g]) * S * A,
                         float(self.group_gamma[g]), self.r[j], self.init[j], f, pi, inv_tau, eta, lu, True,
                         V, Q, adv, pi_i, M_i, V_i, Q_i, adv_i, nu, sigma, xi, grad, tmp)
        return TaskTrace(pi=pi, V=V, Q=Q, A=adv, pi_i=pi_i, V_i=V_i, J_i=float(J), Q_i=Q_i, A_i=adv_i, nu_i=nu,
                         sigma_i=sigma, xi_i=xi, grad_energy=grad)


def make_batches(tasks: Sequence[TabularMDP], groups: Sequence[Sequence[int]]) -> list[_Batch]:
    """Tasks in group order, cut into batches of at most ``BATCH_BYTES`` working memory."""
    return [_Batch([tasks[i] for i in batch], batch) for batch in batch_layout(tasks[0].shape, groups)]


def batch_layout(shape: tuple[int, int], groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """The task indices of every batch of :func:`make_batches` (from the shape and groups alone)."""
    S, A = shape
    per_task = 8 * (S * S + 2 * S * A + S)  # a group's LU (at most one per task) + gradient slot + r, zeta
    cap = max(1, BATCH_BYTES // per_task)
    order = [i for group in groups for i in group]
    return [order[lo:lo + cap] for lo in range(0, len(order), cap)]
