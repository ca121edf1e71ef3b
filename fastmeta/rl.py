"""Meta-RL (paper Section 3, Algorithm 1) with the exact adjoint meta-gradient.

For each task i with kernel P, reward r, discount gamma and initial law zeta, and
an energy f = f_theta(s, a) (see :mod:`fastmeta.energy`):

    pi    = softmax_a(f / tau)                 main effect (3.2)
    M     = I - gamma P_pi
    V     = (1-gamma) M^{-1} r_pi,  Q = (1-gamma) r + gamma P V,  A = Q - V
    pi_i  = softmax_a(f / tau + eta Q)         one KL-regularised PPO step (3.3)
    M_i   = I - gamma P_{pi_i};  V_i, Q_i, A_i likewise;  J_i = zeta^T V_i
    L     = 1/n sum_i J_i                      the meta-objective (3.4), maximised

The gradient is the corrected Proposition 3.2 (ERRATA.md section 2), which the
printed (3.7)-(3.8) get wrong by factors 1/(1-gamma_i):

    grad L = 1/n sum_i 1/(1-gamma_i) E_{sigma_i}[ h_i A_i ],
    h_i(s,a) = phi(s,a)/tau
               + eta gamma_i / ((1-gamma_i) tau) E_{sigma^{(s,a)}}[ phi A ]

evaluated in the adjoint form of ERRATA section 4, so one gradient costs two
factorisations, two solves and two transposed solves per task whatever the number
of parameters:

    nu_i  = (1-gamma) M_i^{-T} zeta,   sigma_i = nu_i pi_i
    mu_i  = P^T (sigma_i A_i)          (a signed measure on states)
    xi_i  = (1-gamma) M^{-T} mu_i
    dL_i/df(s,a) = 1/(1-gamma) [ sigma_i A_i / tau
                                 + eta gamma / ((1-gamma) tau) xi_i(s) pi(a|s) A(s,a) ]

and grad_theta L = energy_vjp(theta, 1/n sum_i dL_i/df). Tasks that share one
kernel object and discount also share the main effect's matrix M, so its
factorisation is built once for all of them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from . import linalg
from ._kernels import rl as _k
from ._optim import FitResult, StepSize, run_gradient_method
from ._validation import as_float_array, check_choice, check_int, check_nonempty_list, check_real_scalar
from .energy import Energy
from .mdp import TabularMDP

_OWNER = "MetaRL"


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


class MetaRL:
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
    solver : {"auto", "dense", "splu", "krylov"}, default "auto"
        Linear solver for M = I - gamma P_pi; "auto" picks by size and structure
        once per kernel (see :mod:`fastmeta.linalg`).
    tol : float, default 1e-10
        Relative residual tolerance of the iterative solver.
    maxiter : int, optional
        Iteration cap of the iterative solver; exceeding it raises
        :class:`fastmeta.SolverError`.

    Examples
    --------
    >>> import fastmeta
    >>> tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=4, size=8, seed=0)
    >>> meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=1.0, eta=1.0)
    >>> L, g = meta.value_and_grad(meta.model.init_params())
    """

    def __init__(self, tasks: TabularMDP | Sequence[TabularMDP], model: Energy, *, tau: float = 1.0,
                 eta: float = 1.0, solver: str = "auto", tol: float = 1e-10, maxiter: int | None = None):
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
        for attr in ("energy", "energy_vjp", "init_params", "check_params", "project"):
            if not callable(getattr(model, attr, None)):
                raise TypeError(f"The 'model' parameter of {_OWNER} must be an energy (e.g. LinearEnergy); "
                                f"{type(model).__name__} has no method {attr!r}.")
        if (model.n_states, model.n_actions) != (S, A):
            raise ValueError(f"The 'model' parameter of {_OWNER} must be defined on the tasks' (S, A) = "
                             f"{(S, A)}. Got an energy on {(model.n_states, model.n_actions)} instead.")
        self.model = model
        self.tau = check_real_scalar(tau, "tau", _OWNER, low=0.0)
        self.eta = check_real_scalar(eta, "eta", _OWNER, low=0.0, low_open=False)
        self.solver = check_choice(solver, "solver", linalg.METHODS, _OWNER)
        self.tol = check_real_scalar(tol, "tol", _OWNER, low=0.0, high=1.0)
        self.maxiter = None if maxiter is None else check_int(maxiter, "maxiter", _OWNER, low=1)
        self.n_states, self.n_actions = S, A
        # One symbolic pattern per distinct kernel object; tasks sharing P share it.
        self._patterns: dict[int, PolicyPattern] = {}
        self._task_pattern: list[PolicyPattern] = []
        for task in self.tasks:
            key = id(task.P)
            if key not in self._patterns:
                self._patterns[key] = PolicyPattern.build(task.P, S, A, self.solver, self.tol, self.maxiter)
            self._task_pattern.append(self._patterns[key])
        # Groups of tasks sharing (P, gamma): the main effect's M is the same for all of them.
        self._stages: dict[str, float] | None = None  # set by profile_stages
        self._clock = 0.0
        groups: dict[tuple[int, float], list[int]] = {}
        for i, task in enumerate(self.tasks):
            groups.setdefault((id(task.P), task.gamma), []).append(i)
        self._groups = list(groups.values())

    # ------------------------------------------------------------------ public API
    def objective(self, theta: Any) -> float:
        """The meta-objective L(theta) = 1/n sum_i J_i(pi_{i,theta}) of (3.4)."""
        theta = self.model.check_params(theta, _OWNER)
        return self._run(theta, want_grad=False)[0]

    def gradient(self, theta: Any) -> np.ndarray:
        """The exact gradient of L (ERRATA.md sections 2 and 4), shape (n_params,)."""
        return self.value_and_grad(theta)[1]

    def value_and_grad(self, theta: Any) -> tuple[float, np.ndarray]:
        """L(theta) and its exact gradient from one pass (the objective comes for free)."""
        theta = self.model.check_params(theta, _OWNER)
        value, grad_energy, _ = self._run(theta, want_grad=True)
        return value, self.model.energy_vjp(theta, grad_energy)

    def grad_energy(self, theta: Any) -> np.ndarray:
        """dL/df(s, a): the gradient with respect to the energy values, shape (S, A)."""
        theta = self.model.check_params(theta, _OWNER)
        return self._run(theta, want_grad=True)[1]

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
        f = as_float_array(f, "f", owner, shape=(self.n_states, self.n_actions))
        pi = self._main_policy(f)
        total, grad = 0.0, np.zeros_like(f)
        for group in self._groups:
            for trace in self._group(group, f, pi, want_grad=True, keep=False, grad_out=grad):
                total += trace.J_i
        grad /= len(self.tasks)
        return total / len(self.tasks), grad

    def trace(self, theta: Any, task: int = 0) -> TaskTrace:
        """All intermediate quantities of one task at theta (policies, values, measures)."""
        theta = self.model.check_params(theta, _OWNER)
        i = check_int(task, "task", _OWNER, low=0)
        if i >= len(self.tasks):
            raise ValueError(f"The 'task' parameter of {_OWNER} must be < {len(self.tasks)}. Got {i} instead.")
        f = self.model.energy(theta)
        return self._group([i], f, self._main_policy(f), want_grad=True, keep=True)[0]

    def fit(self, theta0: Any = None, *, steps: int = 100, lr: StepSize = 1.0, tol: float = 0.0,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1,
            resume: bool | str | os.PathLike = False, progress: bool = True,
            optimizer: str = "gd") -> FitResult:
        """Algorithm 1: gradient ascent theta_{l+1} = theta_l + alpha_l grad L(theta_l).

        Parameters
        ----------
        theta0 : array_like, optional
            Starting point; default ``model.init_params()``.
        steps : int
            Total number of gradient steps T (resumed steps count).
        lr : float, str or callable
            Step sizes alpha_l: a constant, ``"sqrt:a"`` (a/sqrt(l+1)), ``"inv:a"``
            (a/(l+1)) or a function of l.
        tol : float
            Stop as soon as ||grad L(theta_l)||_2 <= tol (epsilon-stationarity).
        checkpoint : path, optional
            File written every ``checkpoint_every`` steps (atomically).
        resume : bool or path
            True continues from ``checkpoint`` if it exists; a path continues from
            that file. The result is identical to an uninterrupted run.
        progress : bool
            Show a progress line on stderr.
        optimizer : {"gd", "adam"}
            "gd" is Algorithm 1 exactly; "adam" uses Adam's rescaled direction
            (its moments are checkpointed too).

        Returns
        -------
        FitResult
            Final theta and the history of L and ||grad L||.
        """
        theta0 = self.model.init_params() if theta0 is None else self.model.check_params(theta0, _OWNER)
        return run_gradient_method(self.value_and_grad, theta0, steps=steps, lr=lr, maximize=True, tol=tol,
                                   project=self.model.project, checkpoint=checkpoint,
                                   checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                                   optimizer=optimizer, tag=self._tag(lr), owner="MetaRL.fit")

    @property
    def solver_methods(self) -> list[str]:
        """The linear solvers in use ("auto" resolved), one entry per distinct method."""
        return sorted({pattern.method for pattern in self._patterns.values()})

    def profile_stages(self, theta: Any) -> dict[str, float]:
        """Seconds spent in each stage of one ``value_and_grad`` call.

        Stages: "energy" (f and pi), "build M" (I - gamma P_pi from the cached
        pattern), "factorise" (LU, or the iterative solver's set-up), "solve",
        "solve transposed", "kernels" (Bellman backups, measures, assembly) and
        "vjp" (mapping dL/df to parameters).
        """
        theta = self.model.check_params(theta, _OWNER)
        self._stages, self._clock = {}, time.perf_counter()
        try:
            value, grad_energy, _ = self._run(theta, want_grad=True)
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

    def _run(self, theta: np.ndarray, want_grad: bool) -> tuple[float, np.ndarray | None, None]:
        f = self.model.energy(theta)
        pi = self._main_policy(f)
        self._tick("energy")
        total = 0.0
        grad = np.zeros_like(f) if want_grad else None
        for group in self._groups:
            for trace in self._group(group, f, pi, want_grad, keep=False, grad_out=grad):
                total += trace.J_i
        if want_grad:
            grad /= len(self.tasks)
        return total / len(self.tasks), grad, None

    def _group(self, group: list[int], f: np.ndarray, pi: np.ndarray, want_grad: bool, keep: bool,
               grad_out: np.ndarray | None = None) -> list[TaskTrace]:
        """All tasks sharing one kernel and discount: one main-effect factorisation.

        The main effect's forward solves (V of every task) and transposed solves
        (the adjoint states xi_i) share M, so they run as one multi-column solve
        each; the adapted policies' systems are per task, and their forward solve
        is warm-started from the main effect's values (pi_i is one PPO step from pi).
        """
        tasks = [self.tasks[i] for i in group]
        first, pattern = tasks[0], self._task_pattern[group[0]]
        P, gamma, S = first.P, first.gamma, first.n_states
        fac = self._factorize(pattern, P, pi, gamma)
        R = np.empty((S, len(tasks)))
        r_pi = np.empty(S)
        for j, task in enumerate(tasks):
            _k.policy_average(pi, task.r, r_pi)
            R[:, j] = r_pi
        self._tick("kernels")
        U = fac.solve(R)  # U = M^{-1} r_pi = V / (1 - gamma), all tasks at once
        self._tick("solve")
        traces = []
        MU = np.empty((S, len(tasks))) if want_grad else None  # mu_i = P^T (sigma_i A_i)
        mu_i = np.empty(S)
        nu_prev = None
        for j, task in enumerate(tasks):
            V = U[:, j] * (1.0 - gamma)
            Q = np.empty_like(f)
            _k.bellman_q(P.indptr, P.indices, P.data, task.r, V, gamma, Q)
            pi_i = np.empty_like(f)
            _k.softmax_policy(f, 1.0 / self.tau, Q, self.eta, pi_i)
            self._tick("kernels")
            fac_i = self._factorize(pattern, P, pi_i, gamma)
            _k.policy_average(pi_i, task.r, r_pi)
            self._tick("kernels")
            V_i = fac_i.solve(r_pi, x0=U[:, j])
            V_i *= 1.0 - gamma
            self._tick("solve")
            A = np.empty_like(f)
            _k.advantage(Q, V, A)
            trace = TaskTrace(pi=pi, V=V, Q=Q, A=A, pi_i=pi_i, V_i=V_i, J_i=_k.chunked_dot(task.init, V_i))
            traces.append(trace)
            self._tick("kernels")
            if not want_grad:
                continue
            Q_i = np.empty_like(f)
            _k.bellman_q(P.indptr, P.indices, P.data, task.r, V_i, gamma, Q_i)
            A_i = np.empty_like(f)
            _k.advantage(Q_i, V_i, A_i)
            self._tick("kernels")
            # The adapted policies of one group are each one PPO step from the same pi, so
            # the previous task's visitation is a good start for this one's.
            nu_i = fac_i.solve_transposed(task.init, x0=nu_prev)
            nu_prev = nu_i.copy()
            nu_i *= 1.0 - gamma
            self._tick("solve transposed")
            del fac_i
            sigma_i = np.empty_like(f)
            _k.scale_rows(nu_i, pi_i, sigma_i)
            weighted = sigma_i * A_i
            _k.kernel_transpose_apply(P.indptr, P.indices, P.data, weighted, mu_i)
            MU[:, j] = mu_i
            trace.grad_energy = np.zeros_like(f) if (keep or grad_out is None) else grad_out
            _k.add_own_term(sigma_i, A_i, 1.0 / ((1.0 - gamma) * self.tau), trace.grad_energy)
            if keep:
                trace.Q_i, trace.A_i, trace.nu_i, trace.sigma_i = Q_i, A_i, nu_i, sigma_i
            self._tick("kernels")
        if not want_grad:
            return traces
        XI = fac.solve_transposed(MU)  # xi_i = (1-gamma) M^{-T} mu_i, all tasks at once
        XI *= 1.0 - gamma
        self._tick("solve transposed")
        c_meta = self.eta * gamma / ((1.0 - gamma) ** 2 * self.tau)
        for j, trace in enumerate(traces):
            xi_i = np.ascontiguousarray(XI[:, j])
            _k.add_meta_term(xi_i, pi, trace.A, c_meta, trace.grad_energy)
            if keep:
                trace.xi_i = xi_i
        self._tick("kernels")
        return traces

    def _tag(self, lr: StepSize) -> str:
        tag_fn = getattr(self.model, "tag", None)
        model_tag = tag_fn() if callable(tag_fn) else type(self.model).__name__
        tasks = ";".join(f"{t.P.nnz}:{t.gamma:.17g}:{float(t.r.sum()):.17g}:{float(t.init @ np.arange(t.n_states)):.17g}"
                         for t in self.tasks)
        lr_tag = getattr(lr, "__qualname__", repr(lr))
        return f"MetaRL|tau={self.tau:.17g}|eta={self.eta:.17g}|lr={lr_tag}|{model_tag}|{tasks}"

    def __repr__(self) -> str:
        return (f"MetaRL(n_tasks={len(self.tasks)}, S={self.n_states}, A={self.n_actions}, "
                f"n_params={self.model.n_params}, tau={self.tau:g}, eta={self.eta:g}, solver={self.solver!r})")
