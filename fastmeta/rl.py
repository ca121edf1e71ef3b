"""Meta-RL (paper Section 3, Algorithm 1) with the exact adjoint meta-gradient.

For each task i with kernel P, reward r, discount gamma and initial law zeta, and
an energy f = f_theta(s, a) (see :mod:`fastmeta.energy`):

    pi    = softmax_a(f / tau)                 main effect (3.2)
    M     = I - gamma P_pi
    V     = (1-gamma) M^{-1} r_pi,  Q = (1-gamma) r + gamma P V,  A = Q - V
    pi_i  = softmax_a(f / tau + eta Q)         one KL-regularised PPO step (3.3)
    M_i   = I - gamma P_{pi_i};  V_i, Q_i, A_i likewise;  J_i = zeta^T V_i
    L     = 1/n sum_i J_i                      the meta-objective (3.4), maximised

The gradient is the corrected Proposition 3.2 (docs/formulas.md section 3), which the
printed (3.7)-(3.8) get wrong by factors 1/(1-gamma_i):

    grad L = 1/n sum_i 1/(1-gamma_i) E_{sigma_i}[ h_i A_i ],
    h_i(s,a) = phi(s,a)/tau
               + eta gamma_i / ((1-gamma_i) tau) E_{sigma^{(s,a)}}[ phi A ]

evaluated in the adjoint form of docs/formulas.md section 3, so one gradient costs two
factorisations, two solves and two transposed solves per task whatever the number
of parameters:

    nu_i  = (1-gamma) M_i^{-T} zeta,   sigma_i = nu_i pi_i
    mu_i  = P^T (sigma_i A_i)          (a signed measure on states)
    xi_i  = (1-gamma) M^{-T} mu_i
    dL_i/df(s,a) = 1/(1-gamma) [ sigma_i A_i / tau
                                 + eta gamma / ((1-gamma) tau) xi_i(s) pi(a|s) A(s,a) ]

and grad_theta L = energy_vjp(theta, 1/n sum_i dL_i/df). Tasks whose kernels are
equal (by content, see ``TabularMDP.kernel_fingerprint``) and whose discounts are
equal share the main effect's matrix M, so its factorisation is built once for
all of them. Small tasks are computed in batches by one compiled call each
(:mod:`fastmeta._rl_batch`, docs/many_tasks.md); L and dL/df are fixed-order
sums of per-unit partial results (:meth:`MetaRL._partials`).
"""
from __future__ import annotations

import os
import time
import warnings
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numba
import numpy as np
import scipy.sparse as sp

from . import linalg
from ._fingerprint import pattern_fingerprint
from ._kernels import _config
from ._kernels import rl as _k
from ._rl_batch import _Batch, make_batches
from ._kernels._config import needs_compiling
from ._optim import FitResult, StepSize, digest, run_gradient_method
from ._validation import (as_float_array, check_choice, check_computed_finite, check_int, check_nonempty_list,
                          check_real_scalar)
from .energy import Energy, LinearEnergy
from .mdp import TabularMDP

_OWNER = "MetaRL"
SOLVERS = linalg.METHODS + ("batched",)
BATCH_MAX_STATES = 300
"""``solver="auto"`` computes tasks with at most this many states by the batched path."""
_OVERFLOW_HINT = ("Its exact value is beyond float64: L grows like r, its gradient like r / tau and "
                  "eta r^2 / tau. Rescale the rewards (scaling r by k and eta by 1/k scales L and its "
                  "gradient by k exactly) or raise tau.")


LOCKSTEP_ADAPTED = True
"""Krylov groups with a multigrid preconditioner solve their adapted systems together with
the main effect's (see :meth:`MetaRL._adapted_in_lockstep`); False: one by one, each with its own."""


@dataclass
class PolicyPattern:
    """Sparsity of M = I - gamma P_pi for one kernel, computed once (symbolic phase).

    Attributes
    ----------
    indptr, indices : ndarray
        CSR pattern of M (S x S), sorted, the diagonal always stored.
    nnz_map : ndarray
        Position in M's data of every stored entry of P.
    diag_pos : ndarray
        Position of M[s, s].
    plan : fastmeta.linalg.SolverPlan
        Pattern-only work of the linear solver, done once.
    method : str
        The solver used for this pattern ("auto" resolved once, here).
    """

    indptr: np.ndarray
    indices: np.ndarray
    nnz_map: np.ndarray
    diag_pos: np.ndarray
    plan: linalg.SolverPlan
    method: str
    tol: float
    maxiter: int | None

    @classmethod
    def build(cls, P: sp.csr_matrix, S: int, A: int, solver: str, tol: float,
              maxiter: int | None) -> "PolicyPattern":
        itype = P.indices.dtype
        counts = np.empty(S, dtype=np.int64)
        _k.count_policy_pattern(P.indptr, P.indices, S, A, counts)
        indptr = np.zeros(S + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        if indptr[-1] >= np.iinfo(itype).max:
            itype = np.int64
        indptr = indptr.astype(itype)
        indices = np.empty(int(indptr[-1]), dtype=itype)
        nnz_map = np.empty(P.nnz, dtype=itype)
        diag_pos = np.empty(S, dtype=itype)
        _k.fill_policy_pattern(P.indptr, P.indices, S, A, indptr, indices, nnz_map, diag_pos)
        plan = linalg.analyse((indptr, indices, S))
        method = plan.method if solver == "auto" else solver
        return cls(indptr, indices, nnz_map, diag_pos, plan, method, tol, maxiter)

    def factorize(self, P: sp.csr_matrix, pi: np.ndarray, gamma: float) -> Any:
        """Factorisation (or iterative-solver set-up) of M = I - gamma P_pi."""
        return self.factorize_matrix(self.matrix(P, pi, gamma))

    def factorize_matrix(self, M: sp.csr_matrix) -> Any:
        """Factorise a matrix built by :meth:`matrix` with this pattern's solver settings."""
        return linalg.factorize(M, self.method, tol=self.tol, maxiter=self.maxiter, plan=self.plan)

    def matrix(self, P: sp.csr_matrix, pi: np.ndarray, gamma: float) -> sp.csr_matrix:
        """M = I - gamma P_pi as CSR on this pattern."""
        data = np.empty(self.indices.size)
        _k.fill_policy_matrix(P.indptr, P.data, self.nnz_map, self.diag_pos, self.indptr, pi, gamma, data)
        S = pi.shape[0]
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(S, S), copy=False)


def _centred_advantage(Q: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """A = Q - sum_b pi(b|.) Q(., b), with exact zeros where pi is saturated."""
    A = np.empty_like(Q)
    _k.centred_advantage(Q, pi, A)
    return A


class _AdaptedMatrices(Sequence):
    """The adapted matrices M_i = I - gamma P_{pi_i} of a group, each built when it is read
    (40 MB of values each at 10^6 states: not kept between the solves that read them)."""

    def __init__(self, pattern: PolicyPattern, P: sp.csr_matrix, pis: list[np.ndarray], gamma: float):
        self._pattern, self._P, self._pis, self._gamma = pattern, P, pis, gamma

    def __len__(self) -> int:
        return len(self._pis)

    def __getitem__(self, i: int) -> sp.csr_matrix:
        return self._pattern.matrix(self._P, self._pis[i], self._gamma)


@dataclass
class TaskTrace:
    """Everything computed for one task at one theta (see :meth:`MetaRL.trace`).

    Arrays of shape (S, A) unless stated: ``pi``/``pi_i`` main and adapted
    policies, ``Q``, ``A`` and ``Q_i``, ``A_i`` their action values and advantages;
    ``V``, ``V_i`` (S,) state values; ``nu_i`` (S,) and ``sigma_i`` the visitation of
    the adapted policy; ``xi_i`` (S,) the adjoint state; ``J_i`` the task's
    objective; ``grad_energy`` dL_i/df (without the 1/n).
    """

    pi: np.ndarray
    V: np.ndarray
    Q: np.ndarray
    A: np.ndarray
    pi_i: np.ndarray
    V_i: np.ndarray
    J_i: float
    Q_i: np.ndarray | None = None
    A_i: np.ndarray | None = None
    nu_i: np.ndarray | None = None
    sigma_i: np.ndarray | None = None
    xi_i: np.ndarray | None = None
    grad_energy: np.ndarray | None = None


Partial = tuple[float, "np.ndarray | None"]


def add_partials(acc: Partial | None, partials: Sequence[Partial]) -> Partial:
    """The running (sum of J_i, sum of dL_i/df) with ``partials`` added in order.

    The one place the per-unit results are summed: one process adds all units at once
    (:meth:`MetaRL._combine`), a cluster passes the running sum along its shards
    (:mod:`fastmeta.distributed`); the additions, and so the bits, are the same. ``acc``
    is not changed (its gradient is copied before adding to it).
    """
    total, grad = (0.0, None) if acc is None else (acc[0], None if acc[1] is None else acc[1].copy())
    for J, g in partials:
        total += J
        if g is not None:
            if grad is None:
                grad = g.copy()
            else:
                grad += g
    return total, grad


def mean_of_sums(sums: Partial, n: int) -> Partial:
    """(L, dL/df) = the sums over all n tasks divided by n (the gradient in place)."""
    total, grad = sums
    if grad is not None:
        grad /= n
    return total / n, grad


class EnergyObjective(ABC):
    """The public meta-objective API shared by :class:`MetaRL` and ``DaskMetaRL``.

    A subclass provides ``model`` (an :class:`~fastmeta.energy.Energy`) and
    ``_run(theta, want_grad) -> (L, dL/df or None)``; everything users call on top of
    that (validation, the model's vector-Jacobian product, the overflow checks) lives
    here once. ``_owner`` names the class in error messages.
    """

    _owner = _OWNER
    model: Energy

    def init_params(self) -> np.ndarray:
        """The model's initial parameters (zeros, the uniform policy, for LinearEnergy), as MetaSL's."""
        return self.model.init_params()

    def objective(self, theta: Any) -> float:
        """The meta-objective L(theta) = 1/n sum_i J_i(pi_{i,theta}) of (3.4)."""
        theta = self.model.check_params(theta, self._owner)
        value = self._run(theta, want_grad=False)[0]
        check_computed_finite(value, "the meta-objective L", f"{self._owner}.objective", _OVERFLOW_HINT)
        return value

    def gradient(self, theta: Any) -> np.ndarray:
        """The exact gradient of L (docs/formulas.md section 3), shape (n_params,)."""
        return self.value_and_grad(theta)[1]

    def value_and_grad(self, theta: Any) -> tuple[float, np.ndarray]:
        """L(theta) and its exact gradient from one pass (the objective comes for free)."""
        theta = self.model.check_params(theta, self._owner)
        value, grad_energy = self._run(theta, want_grad=True)
        grad = self.model.energy_vjp(theta, grad_energy)
        owner = f"{self._owner}.value_and_grad"
        check_computed_finite(value, "the meta-objective L", owner, _OVERFLOW_HINT)
        check_computed_finite(grad, "the gradient of L", owner, _OVERFLOW_HINT)
        return value, grad

    def grad_energy(self, theta: Any) -> np.ndarray:
        """dL/df(s, a): the gradient with respect to the energy values, shape (S, A)."""
        theta = self.model.check_params(theta, self._owner)
        return self._run(theta, want_grad=True)[1]

    @abstractmethod
    def _run(self, theta: np.ndarray, want_grad: bool) -> tuple[float, np.ndarray | None]:
        """(L, dL/df or None) at theta: the one computation a subclass provides."""


class MetaRL(EnergyObjective):
    """Meta-RL objective (3.4), its exact gradient, and Algorithm 1.

    Parameters
    ----------
    tasks : TabularMDP or sequence of TabularMDP
        The sampled tasks; all share S and A (and the energy's features).
    model : Energy
        The energy f_theta, e.g. :class:`fastmeta.LinearEnergy` or
        :class:`fastmeta.NeuralEnergy`.
    tau : float, default 1.0
        Temperature of the energy-based policy (3.2), > 0.
    eta : float, default 1.0
        Inner (PPO/KL) step size of (3.3), >= 0 (0 gives plain policy-gradient
        meta-learning of the main effect).
    solver : {"auto", "batched", "dense", "splu", "krylov"}, default "auto"
        Linear solver for M = I - gamma P_pi. "batched" computes whole batches of
        tasks in one compiled call (dense LU per task, tasks in parallel); "dense",
        "splu" and "krylov" go task by task through :mod:`fastmeta.linalg`. "auto"
        is "batched" up to ``BATCH_MAX_STATES`` states, else it picks by size and
        structure once per kernel (see :mod:`fastmeta.linalg`).
    tol : float, default 1e-10
        Relative residual tolerance of the iterative solver.
    maxiter : int, optional
        Iteration cap of the iterative solver; exceeding it raises
        :class:`fastmeta.SolverError`.
    task_workers : int, optional
        Threads computing groups of tasks at once on the task-by-task path. By
        default all Numba threads when the tasks are small enough for their own
        loops to run serially (S*A below the kernels' parallel threshold) or their
        solves are serial (GMRES with Gauss-Seidel on expander-like chains, such as
        RL^2 random MDPs), else 1 (each task parallel inside). Results are the same
        bits for any value. Where the kernels of a group may run in parallel, groups
        share the threads only on a thread-safe Numba threading layer (omp, tbb).
    warm_start : bool, default False
        Start every iterative solve from this object's previous solution of the same
        system (same task and kernel, compared by content; the main effect's values and
        adjoint states, each task's adapted values and visitation), kept between calls.
        Along a fit (Algorithm 1) the policies move little per step, so the solves need
        fewer iterations (where a start from within the call exists too, the solver
        takes the one with the smaller residual). Every solve still stops at the same
        residual tolerance, so results agree with a cold start to the solver's
        tolerance, but their last bits then depend on the calls made before (not on
        the thread count). Only the
        ``"krylov"`` method uses it (the direct methods ignore a starting point); it
        keeps four vectors of length S per task. Off by default: cold results are the
        same bits whatever ran before.

    Notes
    -----
    Tasks whose kernels are equal (same shape, pattern and values, compared by
    :attr:`TabularMDP.kernel_fingerprint`, whatever Python object holds them) and
    discounts share the main effect's factorisation; equal sparsity patterns share
    the symbolic analysis.

    Examples
    --------
    >>> import fastmeta
    >>> tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=4, size=8, seed=0)
    >>> meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=1.0, eta=1.0)
    >>> L, g = meta.value_and_grad(meta.model.init_params())
    """

    def __init__(self, tasks: TabularMDP | Sequence[TabularMDP], model: Energy, *, tau: float = 1.0,
                 eta: float = 1.0, solver: str = "auto", tol: float = 1e-10, maxiter: int | None = None,
                 task_workers: int | None = None, warm_start: bool = False):
        self.tasks = check_nonempty_list(tasks, "tasks", _OWNER)
        for i, task in enumerate(self.tasks):
            if not isinstance(task, TabularMDP):
                raise TypeError(f"The 'tasks' parameter of {_OWNER} must hold TabularMDP objects. "
                                f"Got {type(task).__name__} at position {i} instead.")
        S, A = self.tasks[0].shape
        for i, task in enumerate(self.tasks):
            if task.shape != (S, A):
                raise ValueError(f"The 'tasks' parameter of {_OWNER} must hold tasks with one (S, A). "
                                 f"Task 0 has {(S, A)}, task {i} has {task.shape}.")
        if isinstance(model, type):
            raise TypeError(f"The 'model' parameter of {_OWNER} must be an energy object, e.g. "
                            f"LinearEnergy(phi). Got the class {model.__name__} itself instead.")
        for attr in ("energy", "energy_vjp", "init_params", "check_params", "project"):
            if not callable(getattr(model, attr, None)):
                raise TypeError(f"The 'model' parameter of {_OWNER} must be an energy (e.g. LinearEnergy); "
                                f"{type(model).__name__} has no method {attr!r}.")
        for attr in ("n_states", "n_actions", "n_params"):
            value = getattr(model, attr, None)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise TypeError(f"The 'model' parameter of {_OWNER} must be an energy with a positive integer "
                                f"attribute {attr!r}. {type(model).__name__} has {attr}={value!r}.")
        if (model.n_states, model.n_actions) != (S, A):
            raise ValueError(f"The 'model' parameter of {_OWNER} must be defined on the tasks' (S, A) = "
                             f"{(S, A)}. Got an energy on {(model.n_states, model.n_actions)} instead.")
        self.model = model
        self.tau = check_real_scalar(tau, "tau", _OWNER, low=0.0)
        self.eta = check_real_scalar(eta, "eta", _OWNER, low=0.0, low_open=False)
        self.solver = check_choice(solver, "solver", SOLVERS, _OWNER)
        self.tol = check_real_scalar(tol, "tol", _OWNER, low=0.0, high=1.0)
        self.maxiter = None if maxiter is None else check_int(maxiter, "maxiter", _OWNER, low=1)
        self.n_states, self.n_actions = S, A
        self._stages: dict[str, float] | None = None  # set by profile_stages
        self._clock = 0.0
        # Groups of tasks sharing (kernel content, gamma): the main effect's M is the same
        # for all of them. Kernels are compared by content, whatever Python object holds them.
        groups: dict[tuple[str, float], list[int]] = {}
        for i, task in enumerate(self.tasks):
            groups.setdefault((task.kernel_fingerprint, task.gamma), []).append(i)
        self._groups = list(groups.values())
        self._patterns: dict[str, PolicyPattern] = {}
        self._task_pattern_list: list[PolicyPattern] | None = None
        self.task_workers = None if task_workers is None else check_int(task_workers, "task_workers", _OWNER, low=1)
        if not isinstance(warm_start, (bool, np.bool_)):
            raise TypeError(f"The 'warm_start' parameter of {_OWNER} must be a bool. "
                            f"Got {type(warm_start).__name__} instead.")
        self.warm_start = bool(warm_start)
        # Last solution of each system (see ``warm_start``), keyed by the task's content
        # (kernel fingerprint, discount, reward and initial law digests) and the system.
        self._solutions: dict[tuple, np.ndarray] = {}
        self._task_keys = ([(task.kernel_fingerprint, task.gamma, digest(task.r), digest(task.init))
                            for task in self.tasks] if self.warm_start else None)
        self._batched = self.solver == "batched" or (self.solver == "auto" and S <= BATCH_MAX_STATES)
        # Work units, combined in this fixed order: batches of small tasks (one compiled
        # call each) or the sharing groups of the sparse path.
        self._units: list[_Batch | list[int]] = self._make_units()
        if not self._batched:  # the symbolic analysis belongs to construction on this path
            self._task_pattern_list = self._build_patterns()
        # One batch and a linear energy on stored features: a call is the validation of theta
        # and the general path's compiled calls, without its Python around them (see ``_fused``).
        self._fused_batch = (self._units[0].linear_runner(model.phi, len(self.tasks))
                             if len(self._units) == 1 and isinstance(self._units[0], _Batch)
                             and type(model) is LinearEnergy and isinstance(model.phi, np.ndarray)
                             and type(self)._run is MetaRL._run else None)

    def _make_units(self) -> list[_Batch | list[int]]:
        """The work units (see ``_units``); :mod:`fastmeta.distributed` prescribes them on workers."""
        return make_batches(self.tasks, self._groups) if self._batched else list(self._groups)

    @property
    def _task_pattern(self) -> list[PolicyPattern]:
        """The symbolic pattern of every task's M, shared by equal sparsity patterns (built on first use)."""
        if self._task_pattern_list is None:
            self._task_pattern_list = self._build_patterns()
        return self._task_pattern_list

    def _build_patterns(self) -> list[PolicyPattern]:
        S, A = self.n_states, self.n_actions
        method = "dense" if self.solver == "batched" else self.solver
        by_kernel: dict[str, PolicyPattern] = {}
        patterns = []
        for task in self.tasks:
            pattern = by_kernel.get(task.kernel_fingerprint)
            if pattern is None:
                key = pattern_fingerprint(task.P)
                if key not in self._patterns:
                    self._patterns[key] = PolicyPattern.build(task.P, S, A, method, self.tol, self.maxiter)
                pattern = by_kernel[task.kernel_fingerprint] = self._patterns[key]
            patterns.append(pattern)
        return patterns

    # ------------------------------------------------------------------ public API
    def value_and_grad_energy(self, f: Any) -> tuple[float, np.ndarray]:
        """L and dL/df for an energy array f given directly, bypassing the model.

        This is the whole meta-RL computation as a function of the energy values,
        which is what an autodiff framework needs from a custom operation (see
        :mod:`fastmeta.jax` and :mod:`fastmeta.torch`): the framework computes f with
        its own network and maps dL/df to that network's parameters.

        Parameters
        ----------
        f : array_like of shape (S, A)
            Energy values f(s, a); finite.

        Returns
        -------
        value : float
            The meta-objective L of (3.4).
        grad : ndarray of shape (S, A)
            dL/df(s, a), float64.
        """
        owner = "MetaRL.value_and_grad_energy"
        f = as_float_array(f, "f", owner, shape=(self.n_states, self.n_actions),
                           shape_text=f"(S, A) = ({self.n_states}, {self.n_actions})")
        # A fresh writable C-order copy: a framework's buffer may be read-only or strided, and
        # the kernels must see the array type they see from model.energy (same machine code).
        f = np.array(f, dtype=np.float64, order="C", copy=True)
        value, grad = self._combine(self._partials(f, range(len(self._units)), True))
        check_computed_finite(value, "the meta-objective L", owner, _OVERFLOW_HINT)
        check_computed_finite(grad, "dL/df", owner, _OVERFLOW_HINT)
        return value, grad

    def objective(self, theta: Any) -> float:
        """The meta-objective L(theta) = 1/n sum_i J_i(pi_{i,theta}) of (3.4)."""
        theta = self.model.check_params(theta, _OWNER)
        fused = self._fused(theta, want_grad=False)
        return fused[0] if fused is not None else super().objective(theta)

    def value_and_grad(self, theta: Any) -> tuple[float, np.ndarray]:
        """L(theta) and its exact gradient from one pass (the objective comes for free)."""
        theta = self.model.check_params(theta, _OWNER)
        fused = self._fused(theta, want_grad=True)
        return fused if fused is not None else super().value_and_grad(theta)

    def _fused(self, theta: np.ndarray, want_grad: bool) -> tuple[float, np.ndarray] | None:
        """(L, grad_theta L) by the short call path, or None where the general path must run.

        For one batch with a linear energy: the general path's compiled calls, in its order
        (the same bits, tested), without the per-unit bookkeeping, so that the Python work
        of a call is about the validation of theta. A non-finite energy or result returns
        None: the general path then recomputes and raises the error naming the quantity.
        """
        runner = self._fused_batch
        if runner is None or self._stages is not None:
            return None
        return runner(theta, 1.0 / self.tau, self.eta, want_grad)

    def trace(self, theta: Any, task: int = 0) -> TaskTrace:
        """All intermediate quantities of one task at theta (policies, values, measures)."""
        theta = self.model.check_params(theta, _OWNER)
        i = check_int(task, "task", _OWNER, low=0)
        if i >= len(self.tasks):
            raise ValueError(f"The 'task' parameter of {_OWNER} must be < {len(self.tasks)}. Got {i} instead.")
        f = self.model.energy(theta)
        pi = self._main_policy(f)
        if self._batched:
            return self._batched_trace(i, f, pi)
        return self._group([i], f, pi, want_grad=True, keep=True)[0]

    def traces(self, theta: Any) -> list[TaskTrace]:
        """:meth:`trace` of every task, in task order, from one pass.

        Tasks sharing a kernel and discount share the main effect's factorisation, so
        this costs what one ``value_and_grad`` costs (``trace`` task by task would
        factorise the main effect once per task).
        """
        theta = self.model.check_params(theta, _OWNER)
        f = self.model.energy(theta)
        pi = self._main_policy(f)
        out: list[TaskTrace] = [None] * len(self.tasks)  # type: ignore[list-item]
        for group in self._groups:
            for i, trace in zip(group, self._group(group, f, pi, want_grad=True, keep=True)):
                out[i] = trace
        return out

    def meta_visitation(self, theta: Any, *, per_task: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """:func:`fastmeta.theory.meta_visitation` of this problem: (varsigma, varrho).

        The same method as on :class:`fastmeta.distributed.DaskMetaRL`, with the same bits.
        """
        from .theory import meta_visitation  # the theory package imports this module

        return meta_visitation(self, theta, per_task=per_task)

    def fit(self, theta0: Any = None, *, steps: int = 100, lr: StepSize = 1.0, tol: float = 0.0,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1,
            resume: bool | str | os.PathLike = False, overwrite: bool = False, progress: bool = True,
            optimizer: str = "gd", label: str | None = None, sampler: Any = None,
            seed: int = 0) -> FitResult:
        """Algorithm 1: gradient ascent theta_{l+1} = theta_l + alpha_l grad L(theta_l).

        Parameters
        ----------
        theta0 : array_like, optional
            Starting point; default ``model.init_params()``. It is part of the
            checkpoint's identity: a resumed run must be given the same theta0 (or
            none, if the first run had none); theta itself comes from the checkpoint.
        steps : int
            Total number of updates T, counting those of a resumed run; at least the
            number the checkpoint holds (equal gives the stored run's result).
        lr : float, str, callable or (str, callable)
            Step sizes alpha_l: a constant, ``"sqrt:a"`` (a/sqrt(l+1)), ``"inv:a"``
            (a/(l+1)) or a function of l. With checkpoints a function must be named,
            ``lr=("my-schedule", fn)`` (or carry a ``name`` attribute): the name
            identifies the schedule in the checkpoint.
        tol : float
            Stop as soon as ||grad L(theta_l)||_2 <= tol (epsilon-stationarity);
            ``converged`` in the result says whether this happened.
        checkpoint : path, optional
            File written every ``checkpoint_every`` steps and at the end (atomically:
            a temporary file renamed over it). The folder must exist and be writable.
        resume : bool or path
            True continues from ``checkpoint`` if it exists; a path continues from
            that file. The result is identical to an uninterrupted run. A checkpoint
            of a different problem or settings is refused, naming what differs.
        overwrite : bool, default False
            Replace an existing ``checkpoint`` file when not resuming it (otherwise
            that is an error, so a finished run is never lost by accident).
        progress : bool
            Show progress on stderr: a bar on a terminal, a plain line every tenth
            of the run in logs.
        optimizer : {"gd", "adam"}
            "gd" is Algorithm 1 exactly; "adam" uses Adam's rescaled direction
            (its moments are checkpointed too).
        label : str, optional
            Name shown with the progress output; default "MetaRL.fit".
        sampler : callable, optional
            Fresh tasks every step: step l calls ``sampler(numpy.random.default_rng([seed, l]), l)``
            for a list of TabularMDP (same S, A as the model) and ascends that batch's
            L, with this problem's settings (tau, eta, solver), instead of ``self.tasks``'s.
            ``fastmeta.tasks.TaskSampler(family, ...)`` makes one from any task family.
            A resumed run draws exactly the tasks the uninterrupted run would have drawn.
        seed : int, default 0
            Seed of the sampler's stream (unused without a sampler).

        Returns
        -------
        FitResult
            Final theta and the history of L and ||grad L|| at theta_0..theta_T.
        """
        theta0 = self.model.init_params() if theta0 is None else self.model.check_params(theta0, _OWNER)
        value_and_grad, tag = self.value_and_grad, self._tag
        if sampler is not None:
            value_and_grad, tag = self._sampled(sampler, seed)
        return run_gradient_method(value_and_grad, theta0, steps=steps, lr=lr, maximize=True, tol=tol,
                                   project=self.model.project, checkpoint=checkpoint,
                                   checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite,
                                   progress=progress, optimizer=optimizer, tag=tag,
                                   owner="MetaRL.fit", label=label,
                                   compiling=lambda: needs_compiling(_k.softmax_policy, _k.bellman_q),
                                   step_aware=sampler is not None)

    def _sampled(self, sampler: Any, seed: Any):
        """(value_and_grad(theta, step) over step's fresh tasks, checkpoint tag) for ``fit``."""
        if not callable(sampler):
            raise TypeError(f"The 'sampler' parameter of MetaRL.fit must be a callable (rng, step) -> tasks. "
                            f"Got {type(sampler).__name__} instead.")
        seed = check_int(seed, "seed", "MetaRL.fit", low=0)
        settings = dict(tau=self.tau, eta=self.eta, solver=self.solver, tol=self.tol, maxiter=self.maxiter)

        def value_and_grad(theta: np.ndarray, step: int) -> tuple[float, np.ndarray]:
            tasks = sampler(np.random.default_rng([seed, step]), step)
            return MetaRL(tasks, self.model, **settings).value_and_grad(theta)

        describe = getattr(sampler, "config", None)
        name = describe() if callable(describe) else getattr(sampler, "__qualname__", type(sampler).__name__)

        def tag() -> dict[str, str]:
            # The sampled tasks replace self.tasks: identify the stream, not this object's tasks.
            out = {k: v for k, v in self._tag().items() if not k.startswith("tasks[") and k != "n_tasks"}
            out.update(sampler=str(name), seed=str(seed))
            return out

        return value_and_grad, tag

    @property
    def solver_methods(self) -> list[str]:
        """The linear solvers in use ("auto" resolved), one entry per distinct method."""
        if self._batched:
            return ["batched"]
        return sorted({pattern.method for pattern in self._task_pattern})

    def profile_stages(self, theta: Any) -> dict[str, float]:
        """Seconds spent in each stage of one ``value_and_grad`` call.

        Stages: "energy" (f and pi), "build M" (I - gamma P_pi from the cached
        pattern), "factorise" (LU, or the iterative solver's set-up), "solve",
        "solve transposed", "kernels" (Bellman backups, measures, assembly) and
        "vjp" (mapping dL/df to parameters); on the batched path the whole work of
        the tasks is one stage, "batched".
        """
        theta = self.model.check_params(theta, _OWNER)
        self._stages, self._clock = {}, time.perf_counter()
        try:
            value, grad_energy = self._run(theta, want_grad=True)
            self.model.energy_vjp(theta, grad_energy)
            self._tick("vjp")
            return dict(self._stages)
        finally:
            self._stages = None

    # ------------------------------------------------------------------ internals
    def _tick(self, stage: str) -> None:
        """Charge the time since the previous tick to ``stage`` (only while profiling)."""
        if self._stages is not None:
            now = time.perf_counter()
            self._stages[stage] = self._stages.get(stage, 0.0) + now - self._clock
            self._clock = now

    def _factorize(self, pattern: PolicyPattern, P: sp.csr_matrix, pi: np.ndarray, gamma: float) -> Any:
        M = pattern.matrix(P, pi, gamma)
        self._tick("build M")
        fac = pattern.factorize_matrix(M)
        self._tick("factorise")
        return fac

    def _main_policy(self, f: np.ndarray) -> np.ndarray:
        pi = np.empty_like(f)
        _k.softmax_policy(f, 1.0 / self.tau, f, 0.0, pi)
        return pi

    def _run(self, theta: np.ndarray, want_grad: bool) -> tuple[float, np.ndarray | None]:
        f = self.model.energy(theta)
        self._tick("energy")
        return self._combine(self._partials(f, range(len(self._units)), want_grad))

    def _partials(self, f: np.ndarray, unit_indices: Sequence[int],
                  want_grad: bool = True) -> list[tuple[float, np.ndarray | None]]:
        """Per-unit partial results at the energy ``f``: (sum of J_i, sum of dL_i/df) for each unit.

        A unit (``self._units[u]``) is a batch of small tasks (one compiled call) or,
        on the sparse path, a group of tasks sharing a kernel and a discount. A
        unit's partial depends only on f and that unit, so units may be computed
        anywhere (another process, another machine) and combined with
        :meth:`_combine` in unit order: the result is bit-identical to one process.
        """
        pi = self._main_policy(f)

        def partial(u: int) -> tuple[float, np.ndarray | None]:
            unit = self._units[u]
            if isinstance(unit, _Batch):
                result = unit.run(f, pi, 1.0 / self.tau, self.eta, want_grad)
                self._tick("batched")
                return result
            grad = np.zeros_like(f) if want_grad else None
            total = 0.0
            for trace in self._group(unit, f, pi, want_grad, keep=False, grad_out=grad):
                total += trace.J_i
            return total, grad

        unit_indices = list(unit_indices)
        workers = min(self._unit_workers(), len(unit_indices))
        if workers <= 1:
            return [partial(u) for u in unit_indices]
        # Each unit is computed the same way whichever thread runs it; map keeps unit order.
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(partial, unit_indices))

    def _unit_workers(self) -> int:
        """Threads computing units at once: tasks in parallel where each task's own loops are serial.

        Units of the sparse path whose arrays are below the kernels' parallel threshold
        run their loops on one core, so the cores take different units (the compiled
        kernels release the GIL). Larger tasks keep one unit at a time, parallel inside,
        with the memory of one unit, unless their solves are serial too: GMRES with the
        Gauss-Seidel preconditioner of an expander-like chain (RL^2 random MDPs), whose
        sweeps run on one thread (``linalg.GS_MIN_INTERIOR``); those take the threads in
        turn, for the memory of that many units. Batches are parallel over tasks inside already.
        Units whose kernels may run in parallel (large tasks, or the iterative solver,
        whose vector kernels go parallel from 50 000 elements) share the threads only on a
        thread-safe Numba threading layer: ``workqueue`` would terminate the process.
        """
        if self.task_workers is not None:
            workers = self.task_workers
        elif self._batched or self._stages is not None:
            return 1
        elif self.n_states * self.n_actions >= _config.PARALLEL_MIN_SIZE and not self._units_solve_serially():
            return 1
        else:
            workers = numba.get_num_threads()
        if (workers > 1 and len(self._units) > 1 and self._units_may_run_parallel_kernels()
                and not _config.threading_layer_is_threadsafe()):
            if self.task_workers is not None:
                warnings.warn(f"{_OWNER}: task_workers={self.task_workers} needs a thread-safe Numba threading "
                              f"layer (omp or tbb) for these tasks, whose kernels run in parallel; this "
                              f"process uses {numba.threading_layer()!r}, so the groups of tasks are computed "
                              f"one at a time", RuntimeWarning, stacklevel=4)
            return 1
        return workers

    def _units_solve_serially(self) -> bool:
        """Whether every unit's solves are GMRES with the Gauss-Seidel preconditioner (chosen for
        expander-like chains, whose sweeps run as one block) and there are units to share."""
        return len(self._units) > 1 and all(
            pattern.method == "krylov" and pattern.plan.preconditioner == "sgs" for pattern in self._task_pattern)

    def _units_may_run_parallel_kernels(self) -> bool:
        # batches go parallel over their tasks from BATCH_PARALLEL_MIN_WORK
        return (self._batched or self.n_states * self.n_actions >= _config.PARALLEL_MIN_SIZE
                or "krylov" in self.solver_methods)

    def _combine(self, partials: Sequence[tuple[float, np.ndarray | None]]) -> tuple[float, np.ndarray | None]:
        """L and dL/df from all units' partials, summed in unit order."""
        return mean_of_sums(add_partials(None, partials), len(self.tasks))

    def _batched_trace(self, i: int, f: np.ndarray, pi: np.ndarray) -> TaskTrace:
        """The trace of task i with the batched path's kernels (the same arithmetic as a batch)."""
        for unit in self._units:
            if i in unit.position:
                return unit.trace(unit.position[i], f, pi, 1.0 / self.tau, self.eta)
        raise AssertionError("every task belongs to a batch")

    def _group(self, group: list[int], f: np.ndarray, pi: np.ndarray, want_grad: bool, keep: bool,
               grad_out: np.ndarray | None = None) -> list[TaskTrace]:
        """All tasks sharing one kernel and discount: one main-effect factorisation.

        The main effect's forward solves (V of every task) and transposed solves
        (the adjoint states xi_i) share M, so they run as one multi-column solve
        each. The adapted policies' systems M_i (pi_i is one PPO step from pi) are
        solved together with M's Krylov solver (:meth:`_adapted_in_lockstep`), or
        one by one with a factorisation each; their forward solves start from the
        main effect's values.
        """
        tasks = [self.tasks[i] for i in group]
        first, pattern = tasks[0], self._task_pattern[group[0]]
        P, gamma, S = first.P, first.gamma, first.n_states
        # previous solutions, only where a starting point counts (see ``warm_start``)
        warm = self._solutions if self.warm_start and pattern.method == "krylov" else None
        keys = [self._task_keys[i] for i in group] if warm is not None else None
        fac = self._factorize(pattern, P, pi, gamma)
        R = np.empty((S, len(tasks)))
        r_pi = np.empty(S)
        for j, task in enumerate(tasks):
            _k.policy_average(pi, task.r, r_pi)
            R[:, j] = r_pi
        self._tick("kernels")
        U = fac.solve(R, x0=None if warm is None else warm.get(("U", *keys)))  # U = M^{-1} r_pi = V / (1 - gamma)
        del R
        if warm is not None:
            warm[("U", *keys)] = U
        self._tick("solve")
        # every task's main-effect values and adapted policy (pi_i: one PPO step from pi)
        def action_values(task, V):  # Q(s, a) = r(s, a) + gamma (P V)(s, a)
            Q = np.empty_like(f)
            _k.bellman_q(P.indptr, P.indices, P.data, task.r, V, gamma, Q)
            return Q

        traces = []
        R_i = np.empty((S, len(tasks)))  # r_{pi_i}
        for j, task in enumerate(tasks):
            V = U[:, j] * (1.0 - gamma)
            Q = action_values(task, V)
            pi_i = np.empty_like(f)
            _k.softmax_policy(f, 1.0 / self.tau, Q, self.eta, pi_i)
            _k.policy_average(pi_i, task.r, r_pi)
            R_i[:, j] = r_pi
            # Q and A are kept only for callers of the traces (32 MB each per task at 10^6 states
            # and A = 4); the gradient needs A only at its end, where it is computed again from V
            A = _centred_advantage(Q, pi) if keep else None
            traces.append(TaskTrace(pi=pi, V=V, Q=Q if keep else None, A=A, pi_i=pi_i, V_i=None, J_i=0.0))
            del Q, A
        self._tick("kernels")
        # (multigrid only: a Gauss-Seidel preconditioner costs nothing to set up per task, and
        # one by one each visitation starts from the previous task's; RL^2 10^5: 1.09x slower in lockstep)
        lockstep = LOCKSTEP_ADAPTED and isinstance(fac, linalg.KrylovSolver) and fac.preconditioner == "amg"
        if lockstep:
            V_all = self._adapted_in_lockstep(fac, pattern, P, gamma, traces, R_i, U, "V_i", warm, keys, False)
            U = R_i = None  # not read again on this path: freed before the next solves
            fac.release_preconditioner()  # the solves left are all transposed
            if want_grad:
                zetas = np.column_stack([task.init for task in tasks])
                nu_all = self._adapted_in_lockstep(fac, pattern, P, gamma, traces, zetas, None, "nu_i", warm, keys,
                                                   True)
                del zetas
        MU = np.empty((S, len(tasks))) if want_grad else None  # mu_i = P^T (sigma_i A_i)
        mu_i = np.empty(S)
        nu_prev = None
        for j, task in enumerate(tasks):
            trace = traces[j]
            if lockstep:
                V_i = V_all[:, j].copy()
            else:
                fac_i = self._factorize(pattern, P, trace.pi_i, gamma)
                start = [U[:, j]]
                if warm is not None and ("V_i", keys[j]) in warm:
                    start.append(warm[("V_i", keys[j])])  # the solver starts from the better one
                V_i = fac_i.solve(R_i[:, j], x0=start)
                if warm is not None:
                    warm[("V_i", keys[j])] = V_i.copy()
                self._tick("solve")
            V_i *= 1.0 - gamma
            trace.V_i, trace.J_i = V_i, _k.chunked_dot(task.init, V_i)
            if not want_grad:
                continue
            pi_i = trace.pi_i
            Q_i = action_values(task, V_i)
            A_i = _centred_advantage(Q_i, pi_i)
            self._tick("kernels")
            if lockstep:
                nu_i = nu_all[:, j].copy()
            else:
                # The adapted policies of one group are each one PPO step from the same pi, so
                # the previous task's visitation is a good start for this one's.
                start = [] if nu_prev is None else [nu_prev]
                if warm is not None and ("nu_i", keys[j]) in warm:
                    start.append(warm[("nu_i", keys[j])])  # the solver starts from the better one
                nu_i = fac_i.solve_transposed(task.init, x0=start)
                nu_prev = nu_i.copy()
                if warm is not None:
                    warm[("nu_i", keys[j])] = nu_prev
                del fac_i
                self._tick("solve transposed")
            nu_i *= 1.0 - gamma
            sigma_i = np.empty_like(f)
            _k.scale_rows(nu_i, pi_i, sigma_i)
            weighted = sigma_i * A_i
            _k.kernel_transpose_apply(P.indptr, P.indices, P.data, weighted, mu_i)
            MU[:, j] = mu_i
            trace.grad_energy = np.zeros_like(f) if (keep or grad_out is None) else grad_out
            _k.add_own_term(sigma_i, A_i, 1.0 / ((1.0 - gamma) * self.tau), trace.grad_energy)
            if keep:
                trace.Q_i, trace.A_i, trace.nu_i, trace.sigma_i = Q_i, A_i, nu_i, sigma_i
            else:  # not read again: free it before the adjoint solve (32 MB per task at 10^6 x 4)
                trace.pi_i = None
            self._tick("kernels")
        if not want_grad:
            return traces
        # free the per-task work arrays (the last task's, and the lockstep's results) before the
        # adjoint solve, which is where the memory of a large gradient peaks
        pi_i = Q_i = A_i = sigma_i = weighted = V_all = nu_all = U = R_i = None
        XI = fac.solve_transposed(MU, x0=None if warm is None else warm.get(("XI", *keys)))
        if warm is not None:
            warm[("XI", *keys)] = XI.copy()
        XI *= 1.0 - gamma  # xi_i = (1-gamma) M^{-T} mu_i, all tasks at once
        self._tick("solve transposed")
        c_meta = self.eta * gamma / ((1.0 - gamma) ** 2 * self.tau)
        for j, (task, trace) in enumerate(zip(tasks, traces)):
            xi_i = np.ascontiguousarray(XI[:, j])
            # (not kept: computed again, the same bits)
            A = _centred_advantage(action_values(task, trace.V), pi) if trace.A is None else trace.A
            _k.add_meta_term(xi_i, pi, A, c_meta, trace.grad_energy)
            if keep:
                trace.xi_i = xi_i
        self._tick("kernels")
        return traces

    def _adapted_in_lockstep(self, fac: linalg.KrylovSolver, pattern: PolicyPattern, P: sp.csr_matrix,
                             gamma: float, traces: list[TaskTrace], B: np.ndarray, start: np.ndarray | None,
                             name: str, warm: dict | None, keys: list | None, transposed: bool) -> np.ndarray:
        """Every task's adapted values ``M_i^{-1} r_{pi_i}`` (``B`` = the ``r_{pi_i}``) or, if
        ``transposed``, visitations ``M_i^{-T} zeta_i`` (``B`` = the ``zeta_i``), as unscaled
        columns, solved together with the main effect's Krylov solver.

        pi_i is one PPO step from pi, so M's preconditioner serves each M_i about as well as
        one of its own (10^6 benchmark: 12 iterations for the 4 forward systems together
        against 8-12 each with their own, 14 against 7-14 transposed), none is built per
        task, and each GMRES iteration reads the pattern once for all tasks
        (``KrylovSolver.solve_each``).  Where a large step makes M_i too different for it,
        ``solve_each`` notices within ``EACH_STALL_ITERATIONS`` and solves task by task
        with preconditioners of their own.
        """
        matrices = _AdaptedMatrices(pattern, P, [trace.pi_i for trace in traces], gamma)
        starts = [] if start is None else [start]
        if warm is not None and all((name, key) in warm for key in keys):
            starts.append(np.column_stack([warm[(name, key)] for key in keys]))
        X = fac.solve_each(matrices, B, x0=starts, transposed=transposed)
        self._tick("solve transposed" if transposed else "solve")
        if warm is not None:
            for j, key in enumerate(keys):
                warm[(name, key)] = X[:, j].copy()
        return X

    def _tag(self) -> dict[str, str]:
        """Everything that determines a fit's trajectory, one checkpoint-tag entry per component."""
        tag_fn = getattr(self.model, "tag", None)
        if callable(tag_fn):
            model_tag = str(tag_fn())
        else:  # an energy without a tag: identify it by its class and its values at init
            init = self.model.init_params()
            model_tag = f"{type(self.model).__qualname__}#{digest(self.model.energy(init))}#{digest(init)}"
        tag = {"problem": _OWNER, "model": model_tag, "tau": repr(self.tau), "eta": repr(self.eta),
               "solver": ",".join(self.solver_methods), "solver tol": repr(self.tol),
               "maxiter": repr(self.maxiter), "n_tasks": str(len(self.tasks))}
        if self.warm_start:  # changes the last bits of the trajectory (off: the tag of earlier versions)
            tag["warm start"] = "True"
        for i, task in enumerate(self.tasks):
            tag[f"tasks[{i}].P"] = "blake2b:" + task.kernel_fingerprint
            tag[f"tasks[{i}].r"] = digest(task.r)
            tag[f"tasks[{i}].gamma"] = repr(task.gamma)
            tag[f"tasks[{i}].init"] = digest(task.init)
        return tag

    def __repr__(self) -> str:
        return (f"MetaRL(n_tasks={len(self.tasks)}, S={self.n_states}, A={self.n_actions}, "
                f"n_params={self.model.n_params}, tau={self.tau:g}, eta={self.eta:g}, solver={self.solver!r})")
