"""Property tests (hypothesis, fixed profile in conftest.py): gradients against central
differences, the three solvers against each other, dense against sparse kernels, meta-SL
against the NumPy oracle, and a fuzz of bad inputs that must raise ValueError or TypeError."""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import fastmeta
from fastmeta import LinearEnergy, LinearModel, MetaRL, MetaSL, SLTask, TabularMDP

from . import naive

seeds = st.integers(0, 2**31 - 1)


@st.composite
def rl_problems(draw):
    S, A, d = draw(st.integers(2, 5)), draw(st.integers(2, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(seeds))
    n = draw(st.integers(1, 3))
    raw = []
    for _ in range(n):
        P = rng.random((S, A, S)) ** 2 + 1e-3
        P /= P.sum(axis=2, keepdims=True)
        raw.append((P, rng.normal(size=(S, A)), draw(st.floats(0.3, 0.95)), rng.dirichlet(np.ones(S))))
    phi = rng.normal(size=(S, A, d))
    theta = rng.normal(size=d)
    tau, eta = draw(st.floats(0.3, 3.0)), draw(st.floats(0.0, 2.0))
    return raw, phi, theta, tau, eta


@given(rl_problems())
def test_rl_gradient_matches_the_oracle_and_central_differences(problem):
    raw, phi, theta, tau, eta = problem
    meta = MetaRL([TabularMDP(*t) for t in raw], LinearEnergy(phi), tau=tau, eta=eta)
    L, g = meta.value_and_grad(theta)
    assert L == pytest.approx(naive.meta_objective(raw, phi, theta, tau, eta), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(g, naive.meta_gradient(raw, phi, theta, tau, eta), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(g, naive.central_difference(meta.objective, theta, eps=1e-6),
                               rtol=1e-5, atol=1e-7)


@given(rl_problems())
def test_the_three_solvers_agree_and_dense_equals_sparse_input(problem):
    raw, phi, theta, tau, eta = problem
    dense = [TabularMDP(*t) for t in raw]
    sparse = [TabularMDP(sp.coo_matrix(P.reshape(-1, P.shape[0])), r, g, i) for P, r, g, i in raw]
    assert all(a.P is b.P and a.kernel_fingerprint == b.kernel_fingerprint for a, b in zip(dense, sparse))
    results = {s: MetaRL(sparse, LinearEnergy(phi), tau=tau, eta=eta, solver=s, tol=1e-13).value_and_grad(theta)
               for s in ("dense", "splu", "krylov")}
    L0, g0 = results["dense"]
    for solver in ("splu", "krylov"):
        L, g = results[solver]
        assert L == pytest.approx(L0, rel=1e-10, abs=1e-12)
        np.testing.assert_allclose(g, g0, rtol=1e-8, atol=1e-10)


@st.composite
def sl_problems(draw):
    rng = np.random.default_rng(draw(seeds))
    p, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    loss = draw(st.sampled_from(["squared", "logistic"]))
    query = draw(st.booleans())
    raw = []
    for _ in range(n):
        Ns, Nq = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        X, Xq = rng.normal(size=(Ns, p)), rng.normal(size=(Nq, p))
        if loss == "logistic":
            y, yq = (rng.random(Ns) < 0.5) * 1.0, (rng.random(Nq) < 0.5) * 1.0
        else:
            y, yq = rng.normal(size=Ns), rng.normal(size=Nq)
        raw.append((X, y, Xq, yq) if query else (X, y, X, y))
    return raw, loss, query, draw(st.floats(0.0, 1.0)), rng.normal(size=p)


@given(sl_problems())
def test_meta_sl_matches_the_oracle(problem):
    raw, loss, query, eta, theta = problem
    tasks = [SLTask(X, y, Xq, yq) if query else SLTask(X, y) for X, y, Xq, yq in raw]
    meta = MetaSL(tasks, LinearModel(), loss=loss, eta=eta)
    L, g = meta.value_and_grad(theta)
    args = (theta, raw, naive.linear_predict, naive.linear_jacobian, loss, eta)
    assert L == pytest.approx(naive.sl_meta_objective(*args), rel=1e-11, abs=1e-13)
    np.testing.assert_allclose(g, naive.sl_meta_gradient(*args), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------- bad-input fuzz
junk = st.one_of(
    st.none(), st.text(max_size=3), st.booleans(), st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    st.lists(st.lists(st.integers(-1, 2), max_size=3), max_size=3),
    st.builds(lambda shape, fill: np.full(shape, fill),
              st.lists(st.integers(0, 3), min_size=0, max_size=4).map(tuple),
              st.sampled_from([0.0, 0.5, 1.0, -1.0, np.nan, np.inf])),
    st.builds(lambda n, v: sp.csr_matrix(np.full((n * 2, n), v)), st.integers(1, 3),
              st.sampled_from([0.5, 1.0, -0.5, np.nan])),
    st.just(object()), st.just({"a": 1}),
)
_S, _A = 3, 2
_P = np.full((_S, _A, _S), 1.0 / _S)
_GOOD = dict(P=_P, r=np.zeros((_S, _A)), gamma=0.9, init=np.full(_S, 1.0 / _S))


def _fails_cleanly(build):
    try:
        build()
    except (ValueError, TypeError):
        return
    except Exception as exc:  # anything else is a bug: an unnamed crash
        raise AssertionError(f"raised {type(exc).__name__}: {exc}") from exc


@given(st.sampled_from(sorted(_GOOD)), junk)
def test_tabular_mdp_refuses_bad_input_with_value_or_type_errors(name, value):
    kwargs = dict(_GOOD, **{name: value})
    _fails_cleanly(lambda: TabularMDP(**kwargs))


_TASKS = [TabularMDP(**_GOOD)]
_PHI = np.ones((_S, _A, 2))


@given(st.sampled_from(["tau", "eta", "solver", "tol", "maxiter", "tasks", "model"]), junk)
def test_metarl_refuses_bad_input_with_value_or_type_errors(name, value):
    kwargs = dict(tau=1.0, eta=1.0)
    args = [_TASKS, LinearEnergy(_PHI)]
    if name in ("tasks", "model"):
        args[0 if name == "tasks" else 1] = value
    else:
        kwargs[name] = value
    _fails_cleanly(lambda: MetaRL(*args, **kwargs))


_META = MetaRL(_TASKS, LinearEnergy(_PHI))


@given(st.sampled_from(["theta0", "steps", "lr", "tol", "checkpoint", "checkpoint_every", "optimizer",
                        "label", "overwrite", "progress"]), junk)
def test_fit_refuses_bad_input_with_value_or_type_errors(name, value):
    if name == "checkpoint" and isinstance(value, str):
        value = "/nonexistent-folder/" + value  # never write into the working directory
    kwargs = dict(steps=1, progress=False)
    kwargs[name] = value
    _fails_cleanly(lambda: _META.fit(**kwargs))


@given(st.sampled_from(["X", "y", "X_query", "y_query", "info"]), junk)
def test_sltask_refuses_bad_input_with_value_or_type_errors(name, value):
    kwargs = dict(X=np.ones((2, 2)), y=np.ones(2), X_query=np.ones((1, 2)), y_query=np.ones(1), info=None)
    kwargs[name] = value
    _fails_cleanly(lambda: SLTask(**kwargs))


@given(st.sampled_from(["n_tasks", "size", "slip", "gamma", "goal_region", "start", "features",
                        "n_features", "seed"]), junk)
def test_gridworld_goals_refuses_bad_input_with_value_or_type_errors(name, value):
    kwargs = dict(n_tasks=2, size=3)
    kwargs[name] = value
    _fails_cleanly(lambda: fastmeta.tasks.gridworld_goals(**kwargs))
