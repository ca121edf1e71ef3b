"""The batched path (many small tasks in one compiled call) against the oracles and the per-task path."""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastmeta
from fastmeta import LinearEnergy, MetaRL, TabularMDP
from fastmeta import _rl_batch
from fastmeta._kernels import rl as k
from fastmeta._kernels import rl_batched as kb
from fastmeta._kernels import rl_lanes as kl

from . import naive
from .conftest import random_dense_tasks


def mixed_tasks(S=5, A=3, n=7, seed=0, sparse_input=False):
    """Tasks with per-task gamma and init; some share a kernel by value (equal copies), some not."""
    rng = np.random.default_rng(seed)
    kernels = []
    for _ in range(3):
        P = rng.random((S, A, S)) ** 3
        P[P < 0.2] = 0.0
        P[:, :, 0] += 1e-3
        kernels.append(P / P.sum(axis=2, keepdims=True))
    gammas = (0.9, 0.5)
    tasks, raw = [], []
    for i in range(n):
        P = kernels[i % 3].copy()  # a new object every time: equal by content only
        g = gammas[(i // 3) % 2]
        r = rng.normal(size=(S, A))
        init = rng.dirichlet(np.ones(S))
        given = fastmeta.mdp.sp.csr_matrix(P.reshape(S * A, S)) if sparse_input else P
        tasks.append(TabularMDP(given, r, g, init))
        raw.append((P, r, g, init))
    return tasks, raw


@pytest.mark.parametrize("sparse_input", [False, True])
@pytest.mark.parametrize("n", [1, 7])
def test_batched_matches_the_oracle(n, sparse_input):
    tasks, raw = mixed_tasks(n=n, sparse_input=sparse_input)
    rng = np.random.default_rng(3)
    phi, theta = rng.normal(size=(5, 3, 4)), rng.normal(size=4)
    meta = MetaRL(tasks, LinearEnergy(phi), tau=0.7, eta=1.3, solver="batched")
    L, g = meta.value_and_grad(theta)
    assert L == pytest.approx(naive.meta_objective(raw, phi, theta, 0.7, 1.3), rel=1e-12)
    np.testing.assert_allclose(g, naive.meta_gradient(raw, phi, theta, 0.7, 1.3), rtol=1e-9, atol=1e-12)
    assert meta.objective(theta) == L


def test_batched_matches_the_oracle_for_500_tasks():
    tasks, raw = mixed_tasks(S=3, A=2, n=500, seed=4)
    rng = np.random.default_rng(5)
    phi, theta = rng.normal(size=(3, 2, 3)), rng.normal(size=3)
    meta = MetaRL(tasks, LinearEnergy(phi), tau=1.1, eta=0.8)  # "auto" picks the batched path
    assert meta.solver_methods == ["batched"]
    L, g = meta.value_and_grad(theta)
    assert L == pytest.approx(naive.meta_objective(raw, phi, theta, 1.1, 0.8), rel=1e-11)
    np.testing.assert_allclose(g, naive.meta_gradient(raw, phi, theta, 1.1, 0.8), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver", ["dense", "splu", "krylov"])
def test_batched_matches_the_per_task_paths(solver):
    tasks, phi = fastmeta.tasks.random_mdps(6, 40, 4, k=4, gamma=0.95, n_features=8, seed=2)
    tasks += [TabularMDP(tasks[0].P.copy(), tasks[1].r, 0.8, tasks[2].init)]
    theta = np.random.default_rng(6).normal(size=8)
    a = MetaRL(tasks, LinearEnergy(phi), tau=0.9, eta=1.7, solver="batched")
    b = MetaRL(tasks, LinearEnergy(phi), tau=0.9, eta=1.7, solver=solver)
    La, ga = a.value_and_grad(theta)
    Lb, gb = b.value_and_grad(theta)
    assert La == pytest.approx(Lb, rel=1e-10)
    np.testing.assert_allclose(ga, gb, rtol=1e-7, atol=1e-12 * np.abs(gb).max())
    np.testing.assert_allclose(a.grad_energy(theta), b.grad_energy(theta), rtol=1e-7, atol=1e-14)


def test_batched_trace_matches_the_per_task_trace():
    tasks, raw = mixed_tasks(n=5, seed=8)
    rng = np.random.default_rng(9)
    phi, theta = rng.normal(size=(5, 3, 4)), rng.normal(size=4)
    a = MetaRL(tasks, LinearEnergy(phi), tau=0.6, eta=2.0, solver="batched")
    b = MetaRL(tasks, LinearEnergy(phi), tau=0.6, eta=2.0, solver="dense")
    total = np.zeros((5, 3))
    for i in range(5):
        ta, tb = a.trace(theta, task=i), b.trace(theta, task=i)
        for name in ("pi", "V", "Q", "A", "pi_i", "V_i", "Q_i", "A_i", "nu_i", "sigma_i", "xi_i", "grad_energy"):
            np.testing.assert_allclose(getattr(ta, name), getattr(tb, name), rtol=1e-10, atol=1e-13, err_msg=name)
        assert ta.J_i == pytest.approx(tb.J_i, rel=1e-12)
        total += ta.grad_energy
    np.testing.assert_allclose(total / 5, a.grad_energy(theta), rtol=1e-12, atol=1e-16)


def test_partials_combine_to_the_one_process_result_bit_for_bit(monkeypatch):
    """Units computed separately (as on other machines) and combined in unit order give the same bits."""
    monkeypatch.setattr(_rl_batch, "BATCH_BYTES", 3 * _rl_batch.task_bytes(5, 3))  # 3 tasks per batch
    tasks, raw = mixed_tasks(n=8, seed=10)
    rng = np.random.default_rng(11)
    phi, theta = rng.normal(size=(5, 3, 4)), rng.normal(size=4)
    for solver in ("batched", "splu"):
        meta = MetaRL(tasks, LinearEnergy(phi), solver=solver)
        L, g = meta.value_and_grad(theta)
        f = meta.model.energy(theta)
        units = range(len(meta._units))
        assert len(units) == (3 if solver == "batched" else 6)
        parts = [meta._partials(f, [u])[0] for u in reversed(units)][::-1]
        L2, gf = meta._combine(parts)
        assert L2 == L
        np.testing.assert_array_equal(meta.model.energy_vjp(theta, gf), g)
        single = MetaRL(tasks, LinearEnergy(phi), solver="dense").value_and_grad(theta)
        np.testing.assert_allclose(g, single[1], rtol=1e-9)


def test_batches_are_capped_in_memory(monkeypatch):
    tasks, raw = mixed_tasks(n=10, seed=12)
    rng = np.random.default_rng(13)
    phi, theta = rng.normal(size=(5, 3, 4)), rng.normal(size=4)
    whole = MetaRL(tasks, LinearEnergy(phi), solver="batched")
    monkeypatch.setattr(_rl_batch, "BATCH_BYTES", 1)
    split = MetaRL(tasks, LinearEnergy(phi), solver="batched")
    assert (len(whole._units), len(split._units)) == (1, 10)
    assert sorted(i for u in split._units for i in u.tasks) == list(range(10))
    np.testing.assert_allclose(split.gradient(theta), whole.gradient(theta), rtol=1e-12)


def test_batch_stores_each_kernel_once(monkeypatch):
    monkeypatch.setattr(_rl_batch, "LANES_MIN_TASKS", 10**9)  # the task-by-task layout
    tasks, raw = mixed_tasks(n=9, seed=14)
    (batch,) = MetaRL(tasks, LinearEnergy(np.ones((5, 3, 1))), solver="batched")._units
    assert not batch.lanes
    indptr, indices, data, group_kernel, group_slot, *_, Pd = kb.unpack(batch.ints, batch.floats, 5, 3)
    assert (batch.n_kernels, indptr.size, Pd.shape) == (3, 3 * 5 * 3 + 1, (3, 5 * 3, 5))
    assert group_kernel.size == 6  # 3 kernels x 2 discounts
    # discount 0.9 for tasks 0-2 and 6-8 (3 groups of 2 tasks), 0.5 for 3-5 (3 groups of one task)
    assert batch.n_shared == 3 and sorted(group_slot) == [-1, -1, -1, 0, 1, 2]
    for q in range(3):  # the dense copy of each kernel is the kernel
        rows = slice(indptr[q * 15], indptr[(q + 1) * 15])
        csr = fastmeta.mdp.sp.csr_matrix((data[rows], indices[rows], indptr[q * 15:(q + 1) * 15 + 1] - indptr[q * 15]),
                                         shape=(15, 5))
        np.testing.assert_array_equal(Pd[q], csr.toarray())


def test_dense_lu_kernels_match_numpy():
    rng = np.random.default_rng(15)
    for n in (1, 2, 7, 8, 13):
        P = rng.random((n, n))
        M = np.eye(n) - 0.97 * P / P.sum(axis=1, keepdims=True)
        lu = M.copy()
        kb.lu_inplace(lu)
        L, U = np.tril(lu, -1) + np.eye(n), np.triu(lu)
        np.testing.assert_allclose(L @ U, M, atol=1e-14)
        b, x = rng.normal(size=n), np.empty(n)
        kb.lu_solve(lu, b, x)
        np.testing.assert_allclose(x, np.linalg.solve(M, b), rtol=1e-11)
        kb.lu_solve_transposed(lu, b, x)
        np.testing.assert_allclose(x, np.linalg.solve(M.T, b), rtol=1e-11)


def _all_solver_results(tasks, phi, theta):
    return {s: MetaRL(tasks, LinearEnergy(phi), tau=0.8, eta=1.2, solver=s).value_and_grad(theta)
            for s in ("batched", "dense", "splu", "krylov")}


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_parallel_twins_give_the_same_bits_for_1_and_2_threads(force_parallel):
    tasks, phi = fastmeta.tasks.random_mdps(39, 30, 3, k=3, gamma=0.9, n_features=6, seed=16)
    tasks += [TabularMDP(tasks[0].P.copy(), tasks[3].r, 0.7, tasks[4].init)]
    theta = np.random.default_rng(17).normal(size=6)
    # 40 tasks: by lanes (two blocks); 3 tasks: the task-by-task batch layout
    assert MetaRL(tasks, LinearEnergy(phi))._units[0].lanes and not MetaRL(tasks[:3], LinearEnergy(phi))._units[0].lanes
    old = numba.get_num_threads()
    try:
        out = {}
        for threads in (1, 2):
            numba.set_num_threads(threads)
            out[threads] = {**_all_solver_results(tasks, phi, theta),
                            "batched, 3 tasks": _all_solver_results(tasks[:3], phi, theta)["batched"]}
    finally:
        numba.set_num_threads(old)
    for solver, (L, g) in out[1].items():
        assert out[2][solver][0] == L, solver
        np.testing.assert_array_equal(out[2][solver][1], g, err_msg=solver)
    # the forced run really used the parallel twins of every size-dispatched RL kernel
    for name in ("softmax_policy", "policy_average", "bellman_q", "count_policy_pattern", "fill_policy_pattern",
                 "fill_policy_matrix", "chunked_dot", "add_own_term", "add_meta_term", "centred_advantage", "scale_rows",
                 "linear_energy", "linear_energy_vjp"):
        assert getattr(k, name).parallel.signatures, name
    assert kb.batch_meta_grad.parallel.signatures and kl.lanes_meta_grad.parallel.signatures


def test_parallel_and_serial_twins_agree_bit_for_bit(monkeypatch):
    tasks, phi = fastmeta.tasks.random_mdps(5, 20, 3, k=3, gamma=0.9, n_features=6, seed=18)
    theta = np.random.default_rng(19).normal(size=6)
    serial = _all_solver_results(tasks, phi, theta)
    from fastmeta._kernels import _config
    monkeypatch.setattr(_config, "PARALLEL_MIN_SIZE", 0)
    monkeypatch.setattr(_config, "BATCH_PARALLEL_MIN_WORK", 0)
    parallel = _all_solver_results(tasks, phi, theta)
    for solver, (L, g) in serial.items():
        assert parallel[solver][0] == L, solver
        np.testing.assert_array_equal(parallel[solver][1], g, err_msg=solver)


def test_bad_solver_name_lists_batched(small_problem):
    tasks, raw, phi, theta = small_problem
    with pytest.raises(ValueError, match="'batched'"):
        MetaRL(tasks, LinearEnergy(phi), solver="lapack")


def test_auto_keeps_large_tasks_on_the_sparse_path():
    tasks, phi = fastmeta.tasks.gridworld_goals(2, 18, gamma=0.95, seed=0)  # 324 states
    assert MetaRL(tasks, LinearEnergy(phi)).solver_methods != ["batched"]


@pytest.mark.parametrize("solver", ["splu", "krylov"])
def test_units_computed_on_two_threads_give_the_same_bits(solver):
    tasks, phi = fastmeta.tasks.random_mdps(5, 40, 3, k=3, gamma=0.9, n_features=6, seed=20)
    theta = np.random.default_rng(21).normal(size=6)
    meta = MetaRL(tasks, LinearEnergy(phi), solver=solver)
    out = {}
    for workers in (1, 2):
        meta.task_workers = workers
        out[workers] = meta.value_and_grad(theta)
    assert out[1][0] == out[2][0]
    np.testing.assert_array_equal(out[1][1], out[2][1])
    meta.task_workers = None
    assert meta._unit_workers() == numba.get_num_threads()  # small tasks on the sparse path: tasks in parallel


def test_large_tasks_with_serial_solves_share_the_threads():
    """Large RL^2 tasks (a kernel each, GMRES with one-block Gauss-Seidel sweeps) take the
    threads in turn by default, with the bits of one at a time; grid-like large tasks (the
    multigrid cycle, parallel inside) keep one group at a time."""
    tasks, phi = fastmeta.tasks.random_mdps(2, 13_000, 4, k=4, gamma=0.9, n_features=4, seed=3)
    theta = np.full(4, 0.3)
    meta = MetaRL(tasks, LinearEnergy(phi))
    assert meta.solver_methods == ["krylov"] and meta._task_pattern[0].plan.preconditioner == "sgs"
    assert meta._unit_workers() == numba.get_num_threads()
    auto = meta.value_and_grad(theta)
    meta.task_workers = 1
    one = meta.value_and_grad(theta)
    assert auto[0] == one[0]
    np.testing.assert_array_equal(auto[1], one[1])
    grids = [fastmeta.tasks.gridworld_goals(1, 120, slip=slip, gamma=0.9, features="rbf", n_features=4, seed=0)
             for slip in (0.1, 0.2)]  # two kernels: two groups
    gmeta = MetaRL([grids[0][0][0], grids[1][0][0]], LinearEnergy(grids[0][1]), solver="krylov")
    assert len(gmeta._units) == 2 and gmeta._task_pattern[0].plan.preconditioner == "amg"
    assert gmeta._unit_workers() == 1
    single = MetaRL(tasks[:1], LinearEnergy(phi))
    assert single._unit_workers() == 1  # nothing to share


WORKQUEUE_CHECK = """
import warnings, numba, numpy as np, fastmeta
def grads(tasks, phi, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), **kw)
        return meta.gradient(np.full(phi.shape[-1], 0.3)), [str(w.message) for w in caught], meta
# large tasks (S*A >= 50 000: parallel kernels inside) on two workers, as asked
tasks, phi = fastmeta.tasks.random_mdps(2, 13_000, 4, k=4, gamma=0.9, n_features=4, seed=0)
one, _, _ = grads(tasks, phi)
two, warned, meta = grads(tasks, phi, task_workers=2)
assert numba.threading_layer() == "workqueue" and np.array_equal(one, two)
assert len(warned) == 1 and "thread-safe Numba threading layer" in warned[0] and "'workqueue'" in warned[0], warned
# small tasks with the iterative solver: the default spreads them over the threads, but its
# vector kernels go parallel from 50 000 elements
tasks, phi = fastmeta.tasks.random_mdps(3, 10_000, 4, k=4, gamma=0.9, n_features=4, seed=1)
one, _, _ = grads(tasks, phi, solver="krylov", task_workers=1)
auto, warned, meta = grads(tasks, phi, solver="krylov")
assert np.array_equal(one, auto) and not warned and meta._unit_workers() == 1
print("ok")
"""


def test_units_share_the_threads_only_on_a_threadsafe_threading_layer():
    """Numba's workqueue layer terminates the process when two threads launch parallel kernels
    at once: there the groups of tasks are computed one at a time (and a task_workers the user
    asked for is refused with a warning), with the same bits."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", WORKQUEUE_CHECK], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_profile_of_the_batched_path_has_one_stage_for_the_tasks():
    tasks, raw = mixed_tasks(n=4, seed=22)
    meta = MetaRL(tasks, LinearEnergy(np.ones((5, 3, 2))))
    assert set(meta.profile_stages(np.zeros(2))) == {"energy", "batched", "vjp"}


def test_bad_task_workers(small_problem):
    tasks, raw, phi, theta = small_problem
    with pytest.raises(ValueError, match="'task_workers' parameter of MetaRL"):
        MetaRL(tasks, LinearEnergy(phi), task_workers=0)


@pytest.mark.parametrize("solver", ["auto", "dense", "splu", "krylov"])
def test_evaluate_policy_and_visitation_on_dense_input_match_the_oracle(solver):
    from fastmeta.visitation import evaluate_policy, visitation
    (task,), ((P, r, gamma, init),) = random_dense_tasks(S=40, A=3, gammas=(0.93,), seed=23)
    pi = naive.softmax(np.random.default_rng(24).normal(size=(40, 3)))
    V, Q, A = evaluate_policy(task, pi, solver=solver)
    V0, Q0, A0 = naive.values(P, r, gamma, pi)
    np.testing.assert_allclose(V, V0, rtol=1e-9)
    np.testing.assert_allclose(Q, Q0, rtol=1e-9)
    nu, sigma = visitation(task, pi, solver=solver)
    np.testing.assert_allclose(nu, naive.visitation(P, gamma, init, pi)[0], rtol=1e-8, atol=1e-14)


def test_equal_patterns_with_different_values_share_the_symbolic_analysis_only():
    tasks, phi = fastmeta.tasks.random_mdps(1, 30, 3, k=3, gamma=0.9, n_features=4, seed=25)
    P = tasks[0].P.copy()
    P.data = P.data ** 2
    P = fastmeta.mdp.sp.csr_matrix(P.multiply(1.0 / P.sum(axis=1)))
    other = TabularMDP(P, tasks[0].r, 0.9, tasks[0].init)
    assert other.kernel_fingerprint != tasks[0].kernel_fingerprint
    meta = MetaRL([tasks[0], other], LinearEnergy(phi), solver="splu")
    assert len(meta._groups) == 2
    assert meta._task_pattern[0] is meta._task_pattern[1]


def _general_path(meta, theta, want_grad=True):
    """value_and_grad by the unit-by-unit path (what a distributed driver does)."""
    f = meta.model.energy(theta)
    L, g_f = meta._combine(meta._partials(f, range(len(meta._units)), want_grad))
    return L, (meta.model.energy_vjp(theta, g_f) if want_grad else None)


@pytest.mark.parametrize("n", [1, 7, 40])
def test_one_call_path_gives_the_general_paths_bits(n, monkeypatch):
    """A one-batch problem with a linear energy gives the general path's bits: as one compiled call
    when the batch is serial (task by task, or by lanes at n = 40), as separate calls when parallel."""
    tasks, raw = mixed_tasks(n=n, seed=30)
    rng = np.random.default_rng(31)
    phi, theta = rng.normal(size=(5, 3, 4)), rng.normal(size=4)
    for parallel_work in (10**18, 0):  # the serial and the parallel compilation of the batch
        monkeypatch.setattr(fastmeta._kernels._config, "BATCH_PARALLEL_MIN_WORK", parallel_work)
        meta = MetaRL(tasks, LinearEnergy(phi), tau=0.7, eta=1.3)
        runner = meta._fused_batch
        assert runner is not None and runner.batch._parallel == (n > 1 and parallel_work == 0)
        assert runner.batch.lanes == (n == 40)
        assert (runner.one_call is None) == runner.batch._parallel
        L, g = meta.value_and_grad(theta)
        L0, g0 = _general_path(meta, theta)
        assert L == L0
        np.testing.assert_array_equal(g, g0)
        assert meta.objective(theta) == L == _general_path(meta, theta, want_grad=False)[0]
        np.testing.assert_allclose(g, naive.meta_gradient(raw, phi, theta, 0.7, 1.3), rtol=1e-9, atol=1e-12)


def test_one_call_path_is_taken_only_where_it_applies(monkeypatch):
    tasks, raw = mixed_tasks(n=6, seed=32)
    phi = np.random.default_rng(33).normal(size=(5, 3, 4))
    assert MetaRL(tasks, LinearEnergy(phi))._fused_batch is not None
    assert MetaRL(tasks, LinearEnergy(phi), solver="splu")._fused_batch is None
    assert MetaRL(tasks, fastmeta.NeuralEnergy(phi, 3))._fused_batch is None
    monkeypatch.setattr(_rl_batch, "BATCH_BYTES", 1)  # one batch per task
    assert MetaRL(tasks, LinearEnergy(phi))._fused_batch is None


def test_one_call_path_reports_overflow_as_the_general_path_does():
    tasks, raw = mixed_tasks(n=3, seed=34)
    phi = np.random.default_rng(35).normal(size=(5, 3, 4))
    meta = MetaRL(tasks, LinearEnergy(phi))
    with pytest.raises(FloatingPointError, match="LinearEnergy.energy: the energy"):
        meta.value_and_grad(np.full(4, 1e308))
    big = [TabularMDP(t.P, t.r * 1e300, t.gamma, t.init) for t in tasks]
    meta = MetaRL(big, LinearEnergy(phi), tau=1e-10, eta=0.0)
    with pytest.raises(FloatingPointError, match="MetaRL.value_and_grad: the gradient of L overflowed"):
        meta.value_and_grad(np.zeros(4))  # the uniform policy: the gradient is r / tau
    with pytest.raises(ValueError, match="'theta' parameter of MetaRL"):
        meta.value_and_grad(np.ones(3))


def test_every_kernel_states_its_numba_options():
    """Options a kernel leaves unset are inherited from whichever caller compiles it first, and the
    disk cache keys code by signature only: the same kernel could then run as different code."""
    import inspect

    import numba.core.registry

    from fastmeta import _kernels
    from fastmeta._kernels import _config
    import importlib
    import pkgutil

    seen = 0
    for info in pkgutil.iter_modules(_kernels.__path__):
        module = importlib.import_module(f"fastmeta._kernels.{info.name}")
        for name, obj in inspect.getmembers(module):
            twins = [obj.serial, obj.parallel] if isinstance(obj, _config.SizedKernel) else [obj]
            for dispatcher in twins:
                if isinstance(dispatcher, numba.core.registry.CPUDispatcher):
                    assert "error_model" in dispatcher.targetoptions, (info.name, name)
                    assert "fastmath" in dispatcher.targetoptions, (info.name, name)
                    seen += 1
    assert seen > 30


# ------------------------------------------------------------------ batches computed by lanes
def _batched_by(tasks, phi, lanes, **kw):
    """A batched MetaRL whose batch is computed by lanes (or task by task)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_rl_batch, "LANES_MIN_TASKS", 1 if lanes else 10**9)
        meta = MetaRL(tasks, LinearEnergy(phi), solver="batched", **kw)
    assert all(unit.lanes == lanes for unit in meta._units)
    return meta


@pytest.mark.parametrize("n", [1, 7, 17, 500])
@pytest.mark.parametrize("sparse_input", [False, True])
def test_lanes_match_the_oracle_and_the_task_by_task_batch(n, sparse_input):
    """Per-task gamma and init, kernels shared by value or not, a partly filled last block."""
    S, A = (3, 2) if n == 500 else (5, 3)
    tasks, raw = mixed_tasks(S=S, A=A, n=n, seed=40 + n, sparse_input=sparse_input)
    rng = np.random.default_rng(41)
    phi, theta = rng.normal(size=(S, A, 4)), rng.normal(size=4)
    lanes = _batched_by(tasks, phi, True, tau=0.7, eta=1.3)
    L, g = lanes.value_and_grad(theta)
    assert L == pytest.approx(naive.meta_objective(raw, phi, theta, 0.7, 1.3), rel=1e-12)
    np.testing.assert_allclose(g, naive.meta_gradient(raw, phi, theta, 0.7, 1.3), rtol=1e-9, atol=1e-12)
    one_by_one = _batched_by(tasks, phi, False, tau=0.7, eta=1.3)
    # every lane performs its task's operations in the task-by-task order
    assert one_by_one.objective(theta) == pytest.approx(lanes.objective(theta), rel=1e-14, abs=0)
    np.testing.assert_allclose(lanes.grad_energy(theta), one_by_one.grad_energy(theta), rtol=1e-13, atol=1e-16)
    assert lanes.objective(theta) == L
    if n <= 17:  # trace: the task-by-task arithmetic of each task of a batch by lanes
        total = sum(lanes.trace(theta, task=i).grad_energy for i in range(n))
        np.testing.assert_allclose(total / n, lanes.grad_energy(theta), rtol=1e-12, atol=1e-15)


def test_lanes_match_the_per_task_path_on_rl2_tasks():
    tasks, phi = fastmeta.tasks.random_mdps(40, 24, 4, k=4, gamma=0.97, n_features=8, seed=42)
    tasks += [TabularMDP(tasks[0].P.copy(), tasks[1].r, 0.6, tasks[2].init)]  # shares task 0's kernel by value
    theta = np.random.default_rng(43).normal(size=8)
    meta = MetaRL(tasks, LinearEnergy(phi), tau=0.9, eta=1.7)  # "auto": by lanes
    assert meta._units[0].lanes and meta._fused_batch is not None
    L, g = meta.value_and_grad(theta)
    L0, g0 = MetaRL(tasks, LinearEnergy(phi), tau=0.9, eta=1.7, solver="splu").value_and_grad(theta)
    assert L == pytest.approx(L0, rel=1e-11)
    np.testing.assert_allclose(g, g0, rtol=1e-8, atol=1e-12 * np.abs(g0).max())
    assert L == _general_path(meta, theta)[0]


def test_lanes_for_extreme_settings_keep_exact_zeros_and_finite_values():
    """Saturated policies (tiny tau) and eta = 0: the lanes skip exact zeros as the task-by-task kernel does."""
    tasks, raw = mixed_tasks(n=9, seed=44)
    phi, theta = np.random.default_rng(45).normal(size=(5, 3, 4)), np.random.default_rng(46).normal(size=4)
    for tau, eta in ((1e-8, 1.0), (1.0, 0.0), (1e-300, 2.0)):
        a = _batched_by(tasks, phi, True, tau=tau, eta=eta).grad_energy(theta)
        b = _batched_by(tasks, phi, False, tau=tau, eta=eta).grad_energy(theta)
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)
        np.testing.assert_array_equal(a == 0.0, b == 0.0)


def test_lane_packing_puts_each_task_in_its_lane():
    tasks, raw = mixed_tasks(n=kl.LANES + 3, seed=47)
    buf = _rl_batch.pack_lanes(tasks)
    S, A = 5, 3
    W = kl.LANES
    assert buf.size == 2 * W * (S * A * S + S * A + S + 1)
    for i in range(2 * W):
        b, w = divmod(i, W)
        task = tasks[i] if i < len(tasks) else tasks[b * W]  # unused lanes: the block's first task
        P, r, init, gamma = kl.block_views(buf, b, S, A)
        np.testing.assert_array_equal(P[:, :, w], task.P.toarray())
        np.testing.assert_array_equal(r[:, :, w], task.r)
        np.testing.assert_array_equal(init[:, w], task.init)
        assert gamma[w] == task.gamma


def test_auto_computes_by_lanes_from_half_a_block_of_small_tasks():
    tasks, raw = mixed_tasks(n=_rl_batch.LANES_MIN_TASKS, seed=48)
    phi = np.ones((5, 3, 1))
    assert MetaRL(tasks, LinearEnergy(phi))._units[0].lanes
    assert not MetaRL(tasks[:-1], LinearEnergy(phi))._units[0].lanes
    big, phi = fastmeta.tasks.random_mdps(8, _rl_batch.DENSE_KERNEL_MAX_STATES + 1, 2, k=2, n_features=2, seed=0)
    assert not MetaRL(big, LinearEnergy(phi))._units[0].lanes


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_lanes_give_the_same_bits_for_1_and_2_threads_and_both_twins(force_parallel, numba_threads):
    tasks, raw = mixed_tasks(n=3 * kl.LANES + 5, seed=49)
    phi, theta = np.random.default_rng(50).normal(size=(5, 3, 4)), np.random.default_rng(51).normal(size=4)
    meta = MetaRL(tasks, LinearEnergy(phi))
    assert meta._units[0].lanes and meta._units[0].kernel is kl.lanes_meta_grad.parallel
    out = []
    for threads in (1, 2, 1):
        numba_threads(threads)
        out.append(meta.value_and_grad(theta))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastmeta._kernels._config, "BATCH_PARALLEL_MIN_WORK", 10**18)
        serial = MetaRL(tasks, LinearEnergy(phi))
    assert serial._units[0].kernel is kl.lanes_meta_grad.serial
    out.append(serial.value_and_grad(theta))
    for L, g in out[1:]:
        assert L == out[0][0]
        np.testing.assert_array_equal(g, out[0][1])


def test_vectorised_exp_is_within_2_ulp_of_the_c_library_with_the_same_zeros():
    rng = np.random.default_rng(52)
    x = np.concatenate([-rng.random(20_000) * 800, -rng.random(20_000) * 2, -rng.random(1000) * 1e-12,
                        [0.0, -0.0, -745.1, -745.2, -708.4, -708.3, -1e-300, -np.inf]])
    got = np.array([kl.exp_nonpositive(v) for v in x])
    want = np.exp(x)
    np.testing.assert_array_equal(got == 0.0, want == 0.0)
    normal = want >= np.finfo(float).tiny
    np.testing.assert_array_less(np.abs(got - want)[normal], 2.01 * np.spacing(want[normal]))
    assert np.abs(got - want)[~normal].max() <= 5e-324  # subnormals: within one of their units
    assert np.isnan(kl.exp_nonpositive(np.nan)) and kl.exp_nonpositive(-np.inf) == 0.0


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_the_work_queue_hands_out_every_item_once(numba_threads):
    """As the batch kernels use it: the counter made in the parallel function, taken from in a callee."""
    from numba import njit, prange

    from fastmeta._kernels.work_queue import take_next

    @njit
    def worker(queue, taken):
        while True:
            i = take_next(queue)
            if i >= taken.size:
                return
            taken[i] += 1

    @njit(parallel=True)
    def drain(n, workers):
        queue = np.zeros(1, dtype=np.int64)
        taken = np.zeros(n, dtype=np.int64)
        for _ in prange(workers):
            worker(queue, taken)
        return taken, queue

    numba_threads(2)
    for n in (0, 1, 7, 10_000):
        taken, queue = drain(n, 2)
        assert (taken == 1).all() and queue[0] == n + 2  # each worker's last take is past the end
