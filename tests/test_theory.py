"""fastmeta.theory against the explicit constructions of tests/naive.py."""
import math
import re
from pathlib import Path

import numpy as np
import pytest

import fastmeta
from fastmeta import theory
from fastmeta.theory import projection as proj_mod
from fastmeta.theory.projection import BallLeastSquares, minimise_over_radius
from fastmeta.theory.rl_bound import _ratio

from . import naive

ROOT = Path(__file__).resolve().parents[1]


def random_family(seed, S=5, A=3, d=4, gammas=(0.6, 0.8, 0.9), shared=False, solver="dense", tau=0.7, eta=1.3,
                  model="linear"):
    """Random dense MDPs with per-task gamma (or, with ``shared``, one kernel object and one gamma)."""
    rng = np.random.default_rng(seed)
    tasks, raw = [], []
    P_shared = rng.dirichlet(np.ones(S), size=(S, A))
    for g in gammas:
        P = P_shared if shared else rng.dirichlet(np.ones(S), size=(S, A))
        r = rng.uniform(-1, 1, (S, A))
        init = rng.dirichlet(np.ones(S))
        gamma = gammas[0] if shared else g
        raw.append((P, r, gamma, init))
    phi = rng.standard_normal((S, A, d))
    if shared:
        import scipy.sparse as sp
        P_csr = sp.csr_matrix(P_shared.reshape(S * A, S))
        tasks = [fastmeta.TabularMDP(P_csr, r, g, init) for _, r, g, init in raw]
    else:
        tasks = [fastmeta.TabularMDP(P, r, g, init) for P, r, g, init in raw]
    energy = fastmeta.LinearEnergy(phi) if model == "linear" else fastmeta.NeuralEnergy(phi, width=6, seed=seed)
    meta = fastmeta.MetaRL(tasks, energy, tau=tau, eta=eta, solver=solver)
    return meta, raw, phi, rng


# ----------------------------------------------------------------------------- Definition 3.3
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("solver", ["dense", "splu", "krylov"])
def test_meta_visitation_matches_the_explicit_family(shared, solver):
    meta, raw, phi, rng = random_family(0, shared=shared, solver=solver)
    theta = rng.standard_normal(phi.shape[2])
    varsigma, varrho = theory.meta_visitation(meta, theta)
    expected, expected_rho = naive.meta_visitation(raw, phi, theta, meta.tau, meta.eta)
    np.testing.assert_allclose(varsigma, expected, atol=1e-9 if solver == "krylov" else 1e-13)
    np.testing.assert_allclose(varsigma.sum(axis=(1, 2)), 1.0, atol=1e-9)
    np.testing.assert_allclose(varrho, varsigma.mean(axis=0), atol=1e-15)
    np.testing.assert_allclose(varrho, expected_rho, atol=1e-9 if solver == "krylov" else 1e-13)
    method_varsigma, method_varrho = meta.meta_visitation(theta)  # the method is the function
    np.testing.assert_array_equal(method_varsigma, varsigma)
    np.testing.assert_array_equal(method_varrho, varrho)


def test_joint_measure_has_varsigma_as_its_marginal():
    meta, raw, phi, rng = random_family(1)
    theta = rng.standard_normal(phi.shape[2])
    varsigma, _ = theory.meta_visitation(meta, theta)
    for i in range(len(raw)):
        rho = theory.explicit_joint_measure(meta, theta, i)
        assert rho.shape == (5, 3, 5, 3)
        np.testing.assert_allclose(rho.sum(axis=(2, 3)), varsigma[i], atol=1e-14)
        np.testing.assert_allclose(rho.sum(axis=(0, 1)), meta.trace(theta, i).sigma_i, atol=1e-14)


# ----------------------------------------------------------------------------- Theorem 3.5
@pytest.mark.parametrize("seed", range(3))
def test_gbar_and_f_omega_follow_the_literal_definitions(seed):
    meta, raw, phi, rng = random_family(seed)
    omega, comp = rng.standard_normal((2, phi.shape[2]))
    rep = theory.rl_gap(meta, omega, comp)
    gbar, f, f_printed, varrho = naive.theorem_3_5_terms(raw, phi, omega, comp, meta.tau, meta.eta)
    np.testing.assert_allclose(rep.varrho, varrho, atol=1e-14)
    np.testing.assert_allclose(rep.gbar, gbar, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(rep.f_omega, f, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rep.f_omega_printed, f_printed, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("model", ["linear", "neural"])
def test_the_two_identities_hold_for_random_comparators(seed, model):
    meta, raw, phi, rng = random_family(seed, shared=seed % 2 == 1, model=model)
    p = meta.model.n_params
    omega = meta.model.init_params() + rng.standard_normal(p)
    comp = meta.model.init_params() + 2 * rng.standard_normal(p)
    rep = theory.rl_gap(meta, omega, comp)
    gap = meta.objective(comp) - meta.objective(omega)
    assert rep.gap == pytest.approx(gap, abs=1e-14)
    assert abs(np.sum(rep.varrho * rep.f_omega * rep.gbar) - gap) <= 1e-10 * max(1.0, abs(gap))
    features = theory.rl_bound.energy_features(meta, omega)[0](0, phi.shape[0] * phi.shape[1])
    expectation = features.T @ (rep.varrho * rep.gbar).ravel()
    np.testing.assert_allclose(expectation, meta.gradient(omega), atol=1e-10)
    assert rep.grad_norm == pytest.approx(np.linalg.norm(meta.gradient(omega)), rel=1e-12)


@pytest.mark.parametrize("R", [0.3, 1.0, 5.0, None])
def test_bounds_are_ordered_on_many_random_instances(R):
    for seed in range(12):
        meta, raw, phi, rng = random_family(100 + seed, model="neural" if seed % 4 == 3 else "linear",
                                            tau=rng_tau(seed), eta=0.5 + seed % 3)
        p = meta.model.n_params
        omega = meta.model.init_params() + rng.standard_normal(p)
        comp = meta.model.init_params() + 3 * rng.standard_normal(p)
        rep = theory.rl_gap(meta, omega, comp, R=R)
        assert rep.bound_sharp >= rep.gap - 1e-12
        assert rep.bound_consistent >= rep.bound_sharp
        assert rep.C_consistent >= rep.gbar_norm
        assert not rep.notes
        if R is not None:
            assert rep.bound_sharp == pytest.approx(R * rep.grad_norm + rep.gbar_norm * rep.projection, rel=1e-12)
            assert rep.bound_printed == pytest.approx(R * rep.grad_norm + rep.C_printed * rep.projection_printed,
                                                      rel=1e-12)


def rng_tau(seed):
    return (0.5, 1.0, 2.0)[seed % 3]


def test_R_none_minimises_each_bound_over_the_radius():
    meta, raw, phi, rng = random_family(7, d=6)
    omega, comp = rng.standard_normal((2, 6)) * 0.5
    best = theory.rl_gap(meta, omega, comp, R=None)
    for R in np.geomspace(1e-3, 1e3, 40):
        rep = theory.rl_gap(meta, omega, comp, R=R)
        assert best.bound_sharp <= rep.bound_sharp + 1e-9
        assert best.bound_consistent <= rep.bound_consistent + 1e-9
        assert best.bound_printed <= rep.bound_printed + 1e-9
    assert best.bound_sharp >= best.gap


def test_C0_and_Q_max_follow_assumption_3_4():
    meta, raw, phi, rng = random_family(3)
    omega, comp = rng.standard_normal((2, 4))
    rep = theory.rl_gap(meta, omega, comp)
    norms = []
    for i in range(len(raw)):
        sigma_i = meta.trace(omega, i).sigma_i
        norms += [np.sqrt(np.sum((sigma_i / rep.varrho) ** 2 * rep.varrho)),
                  np.sqrt(np.sum((rep.varsigma[i] / rep.varrho) ** 2 * rep.varrho))]
    assert rep.C0 == pytest.approx(max(norms), rel=1e-12)
    assert rep.Q_max == max(np.abs(r).max() for _, r, _, _ in raw)
    gammas = np.array([g for _, _, g, _ in raw])
    assert rep.C_printed == pytest.approx(2 * rep.C0 * rep.Q_max / meta.tau
                                          * (1 + 2 * rep.Q_max * gammas.mean() * meta.eta), rel=1e-12)


def test_unreachable_start_makes_the_affected_terms_inf_not_nan():
    # State 0 is only an initial state: nothing ever moves into it, so varrho(0, .) = 0 while
    # sigma_i(0, .) > 0; the gradient and the comparator's visitation charge it.
    rng = np.random.default_rng(5)
    S, A = 4, 2
    P = rng.dirichlet(np.ones(S - 1), size=(S, A))
    P = np.concatenate([np.zeros((S, A, 1)), P], axis=2)
    init = np.array([1.0, 0.0, 0.0, 0.0])
    tasks = [fastmeta.TabularMDP(P, rng.uniform(-1, 1, (S, A)), 0.8, init) for _ in range(2)]
    phi = rng.standard_normal((S, A, 3))
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), solver="dense")
    omega, comp = rng.standard_normal((2, 3))
    assert not any(np.isnan(v) for v in theory.rl_gap(meta, omega, comp, R=None).to_dict().values())
    rep = theory.rl_gap(meta, omega, comp)
    assert np.all(rep.varrho[0] == 0.0)
    for name in ("C0", "gbar_norm", "projection", "projection_printed", "bound_printed", "bound_consistent",
                 "bound_sharp"):
        assert getattr(rep, name) == math.inf, name
    assert rep.notes and not any(np.isnan(v) for v in rep.to_dict().values())
    assert not np.isnan(rep.gbar).any() and not np.isnan(rep.f_omega).any()
    assert "inf" in str(rep)


def test_ratio_never_returns_nan():
    out = _ratio(np.array([0.0, 1.0, -2.0, 3.0]), np.array([0.0, 0.0, 0.0, 2.0]))
    np.testing.assert_array_equal(out, [0.0, np.inf, -np.inf, 1.5])


# ----------------------------------------------------------------------------- the projection
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rank_deficient", [False, True])
def test_projection_matches_a_generic_constrained_optimiser(seed, rank_deficient):
    rng = np.random.default_rng(seed)
    N, d = 30, 5
    Phi = rng.standard_normal((N, d))
    if rank_deficient:
        Phi[:, 4] = Phi[:, 0] - Phi[:, 1]
    w = rng.dirichlet(np.ones(N))
    w[:3] = 0.0
    b = rng.standard_normal(N) * 3
    problem = BallLeastSquares(lambda a, c: Phi[a:c], N, d, w, b[:, None])
    free = problem.min_norm(0)
    for R in (0.05, 0.3, 0.9 * free, 2 * free):
        got = problem.solve(0, R)
        want, _ = naive.ball_least_squares_scipy(Phi, w, b, R)
        assert got.value == pytest.approx(want, rel=1e-7)
        assert np.linalg.norm(got.v) <= R * (1 + 1e-12)
        assert got.value == pytest.approx(np.sqrt(np.sum(w * (b - Phi @ got.v) ** 2)), rel=1e-10)
        assert (got.multiplier == 0.0) == (R >= free)


def test_block_path_agrees_with_the_dense_path(monkeypatch):
    rng = np.random.default_rng(3)
    N, d = 50, 4
    Phi, w, B = rng.standard_normal((N, d)), rng.dirichlet(np.ones(N)), rng.standard_normal((N, 2))
    dense = BallLeastSquares(lambda a, c: Phi[a:c], N, d, w, B)
    monkeypatch.setattr(proj_mod, "DENSE_LIMIT", 10)
    monkeypatch.setattr(proj_mod, "_BLOCK_ROWS", 7)
    blocks = BallLeastSquares(lambda a, c: Phi[a:c], N, d, w, B)
    for k in range(2):
        for R in (0.1, 1.0, 10.0):
            assert blocks.solve(k, R).value == pytest.approx(dense.solve(k, R).value, rel=1e-7)


def test_minimising_over_the_radius_beats_a_grid():
    rng = np.random.default_rng(4)
    N, d = 40, 6
    Phi, w, b = rng.standard_normal((N, d)), rng.dirichlet(np.ones(N)), rng.standard_normal(N)
    problem = BallLeastSquares(lambda a, c: Phi[a:c], N, d, w, b[:, None])
    eps, scale = 0.05, 2.0
    best, R = minimise_over_radius(problem, 0, eps, scale)
    grid = [r * eps + scale * problem.solve(0, r).value for r in np.linspace(0, 2 * problem.min_norm(0), 400)]
    assert best <= min(grid) + 1e-12
    assert best == pytest.approx(R * eps + scale * problem.solve(0, R).value, rel=1e-12)


def test_infinite_right_hand_side_gives_inf():
    Phi = np.eye(3)
    problem = BallLeastSquares(lambda a, c: Phi[a:c], 3, 3, np.array([0.5, 0.5, 0.0]),
                               np.array([[1.0, 2.0, np.inf], [np.inf, 1.0, 1.0]]).T)
    assert np.isfinite(problem.solve(0, 1.0).value)  # inf where the weight is 0 is ignored
    assert problem.solve(1, 1.0).value == math.inf
    assert minimise_over_radius(problem, 1, 0.1, 1.0)[0] == math.inf


# ----------------------------------------------------------------------------- comparators
def test_best_found_in_two_dimensions_uses_a_grid_and_beats_every_start():
    meta, raw, phi, rng = random_family(2, d=2)
    res = theory.best_found(meta, starts=3, seed=0, grid_points=15)
    assert res.maximize and res.grid_value is not None
    assert res.value == pytest.approx(meta.objective(res.theta), abs=1e-14)
    assert res.value >= res.grid_value - 1e-12 and res.value == max(res.values)
    assert np.linalg.norm(meta.gradient(res.theta)) < 1e-4
    again = theory.best_found(meta, starts=3, seed=0, grid_points=15)
    np.testing.assert_array_equal(again.theta, res.theta)


def test_best_found_rejects_bad_input():
    meta, *_ = random_family(2)
    with pytest.raises(TypeError, match="'meta' parameter of best_found"):
        theory.best_found(object())
    with pytest.raises(ValueError, match="'starts' parameter of best_found"):
        theory.best_found(meta, starts=0)


def test_rl_gap_rejects_bad_input():
    meta, raw, phi, rng = random_family(2)
    with pytest.raises(ValueError, match="'R' parameter of rl_gap"):
        theory.rl_gap(meta, np.zeros(4), np.zeros(4), R=-1.0)
    with pytest.raises(ValueError, match="'theta' parameter of rl_gap"):
        theory.rl_gap(meta, np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="'meta' parameter of rl_gap"):
        theory.rl_gap("meta", np.zeros(4), np.zeros(4))


# ----------------------------------------------------------------------------- Theorem 4.4
def shared_design(seed, n=6, m=5, p=3, loss="squared", model=None, eta=0.2):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, p))
    if loss == "squared":
        Ys = [X @ rng.standard_normal(p) + 0.3 * rng.standard_normal(m) for _ in range(n)]
    else:
        Ys = [(rng.uniform(size=m) < 0.5).astype(float) for _ in range(n)]
    tasks = [fastmeta.SLTask(X, y) for y in Ys]
    model = fastmeta.LinearModel("affine") if model is None else model
    return fastmeta.MetaSL(tasks, model, loss=loss, eta=eta), X, np.array(Ys), rng


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("custom_rho", [False, True])
def test_sl_terms_match_direct_summation(loss, custom_rho):
    meta, X, Y, rng = shared_design(0, loss=loss)
    Z = meta.model.transform(X)
    m = X.shape[0]
    rho = rng.dirichlet(np.ones(m)) if custom_rho else np.full(m, 1.0 / m)
    omega, comp = rng.standard_normal((2, Z.shape[1]))
    for R in (0.2, 3.0):
        rep = theory.sl_gap(meta, omega, comp, R=R, rho=rho if custom_rho else None)
        w, u, feats, weight, convex = naive.theorem_4_4_terms(Z, Y, omega, comp, meta.eta, loss, rho)
        assert rep.term_ii == pytest.approx(np.sqrt(np.sum(weight * w * w)), rel=1e-12)
        want, _ = naive.ball_least_squares_scipy(feats, weight, u, R)
        assert rep.term_iii == pytest.approx(want, rel=1e-6)
        assert rep.linearised_gap == pytest.approx(convex, rel=1e-12)
        # E_{M x rho}[phi_l w] = grad L(omega), from the oracle's atoms
        np.testing.assert_allclose(feats.T @ (weight * w), meta.gradient(omega), atol=1e-12)
        assert rep.gap <= rep.linearised_gap + 1e-12          # convexity step
        assert rep.gap <= rep.bound + 1e-12
        assert rep.term_i == pytest.approx(R * np.linalg.norm(meta.gradient(omega)), rel=1e-12)
        assert rep.bound == pytest.approx(rep.term_i + rep.term_ii * rep.term_iii, rel=1e-12)


def test_sl_repeated_labels_merge_atoms():
    meta, X, Y, rng = shared_design(1, loss="logistic", n=8, m=4)   # 0/1 labels: many identical atoms
    Z = meta.model.transform(X)
    omega, comp = rng.standard_normal((2, Z.shape[1]))
    rep = theory.sl_gap(meta, omega, comp)
    w, u, feats, weight, convex = naive.theorem_4_4_terms(Z, Y, omega, comp, meta.eta, "logistic",
                                                          np.full(4, 0.25))
    assert rep.term_ii == pytest.approx(np.sqrt(np.sum(weight * w * w)), rel=1e-12)
    assert rep.linearised_gap == pytest.approx(convex, rel=1e-12)


def test_exact_minimiser_has_zero_gradient_and_beats_the_search():
    meta, X, Y, rng = shared_design(2)
    theta_star = theory.exact_minimiser(meta)
    assert np.linalg.norm(meta.gradient(theta_star)) < 1e-12
    found = theory.best_found(meta, starts=3, seed=1)
    assert not found.maximize
    assert meta.objective(theta_star) <= found.value + 1e-12
    rep = theory.sl_gap(meta, rng.standard_normal(meta.n_params))
    np.testing.assert_allclose(rep.comparator, theta_star)
    assert rep.gap >= 0


def test_sl_R_none_minimises_the_bound():
    meta, X, Y, rng = shared_design(3)
    omega = rng.standard_normal(meta.n_params)
    best = theory.sl_gap(meta, omega, R=None)
    for R in np.geomspace(1e-3, 1e3, 30):
        assert best.bound <= theory.sl_gap(meta, omega, R=R).bound + 1e-9
    assert best.bound >= best.gap


def test_sl_two_layer_relu_through_its_linearised_features():
    model = fastmeta.TwoLayerReLU(in_dim=3, width=8, seed=0)
    meta, X, Y, rng = shared_design(4, model=model, eta=1e-3)
    omega = model.init_params()
    comp = omega + 0.1 * rng.standard_normal(model.n_params)
    rep = theory.sl_gap(meta, omega, comp, R=1.0)
    assert np.isfinite(rep.bound) and rep.bound >= rep.gap
    assert not rep.notes  # a tiny inner step flips no activation
    Z = theory.sl_bound._design_features(meta, X, omega)
    np.testing.assert_allclose(model.forward(omega, X), Z @ omega, atol=1e-12)  # ReLU: u(x; W) = J(W) W


def test_sl_gap_refuses_what_it_cannot_compute_exactly():
    meta, X, Y, rng = shared_design(5)
    omega = np.zeros(meta.n_params)
    other = fastmeta.MetaSL([fastmeta.SLTask(X, Y[0]), fastmeta.SLTask(X + 1, Y[1])], meta.model)
    with pytest.raises(ValueError, match="shared input design"):
        theory.sl_gap(other, omega)
    query = fastmeta.MetaSL([fastmeta.SLTask(X, Y[0], X, Y[1])], meta.model)
    with pytest.raises(ValueError, match="without query sets"):
        theory.sl_gap(query, omega)
    with pytest.raises(ValueError, match="'rho' parameter of sl_gap must be positive"):
        theory.sl_gap(meta, omega, rho=np.array([0.5, 0.5, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="'rho' parameter of sl_gap must be a probability"):
        theory.sl_gap(meta, omega, rho=np.full(5, 0.1))
    logistic = fastmeta.MetaSL([fastmeta.SLTask(X, (Y[0] > 0).astype(float))], meta.model, loss="logistic")
    with pytest.raises(ValueError, match="exact_minimiser needs"):
        theory.exact_minimiser(logistic)


# ----------------------------------------------------------------------------- reports
def test_reports_print_every_named_term():
    meta, raw, phi, rng = random_family(8)
    rep = theory.rl_gap(meta, rng.standard_normal(4), rng.standard_normal(4))
    text, html = str(rep), rep._repr_html_()
    for name in ("gap", "grad_norm", "projection", "gbar_norm", "C0", "Q_max", "bound_printed", "bound_consistent",
                 "bound_sharp"):
        assert re.search(rf"^{name}\s", text, re.M), name
        assert f"<code>{name}</code>" in html
    assert rep.to_dict()["bound_sharp"] == rep.bound_sharp
    meta_sl, *_ = shared_design(6)
    sl = theory.sl_gap(meta_sl, np.zeros(meta_sl.n_params))
    for name in ("gap", "term_i", "term_ii", "term_iii", "bound"):
        assert re.search(rf"^{name}\s", str(sl), re.M), name


def test_docs_example_runs():
    text = (ROOT / "docs" / "theory.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/theory.md", "exec"), namespace)


# ----------------------------------------------------------------------------- command line
@pytest.mark.parametrize("family", ["grid", "random", "sinusoid", "linear-gaussian"])
def test_bound_command_prints_terms_and_a_trajectory(family, capsys, tmp_path):
    from fastmeta import cli
    plot = tmp_path / "bound.png"
    args = ["bound", "--family", family, "--tasks", "3", "--states", "16", "--features", "4", "--steps", "4",
            "--every", "2", "--starts", "2", "--points", "6", "--plot", str(plot)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "along training" in out and re.search(r"^gap\s", out, re.M)
    assert ("bound_sharp" if family in ("grid", "random") else "term_iii") in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not plot.exists()
    else:
        assert plot.stat().st_size > 1000


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--R", "-1"], ["--gamma", "1.5"], ["--family", "nope"],
                                 ["--tasks", "two"], ["--eta", "nan"], ["--lr", "0"],
                                 ["--seed", "-1"], ["--family", "grid", "--features", "6"]])
def test_bound_command_rejects_bad_options_at_parse_time(bad, capsys):
    from fastmeta import cli
    with pytest.raises(SystemExit) as exc:
        cli.main(["bound", *bad])
    assert exc.value.code == 2
    assert "bound: error" in capsys.readouterr().err


def test_bound_command_run_returns_the_table():
    import argparse
    from fastmeta.theory import command
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bound", "--family", "linear-gaussian", "--steps", "3", "--every", "1", "--plot", "",
                              "--R", "2"])
    out = command.run(args)
    assert out["steps"] == [0, 1, 2, 3]
    gaps = [row[out["columns"].index("gap")] for row in out["rows"]]
    bounds = [row[out["columns"].index("bound")] for row in out["rows"]]
    assert all(g <= b for g, b in zip(gaps, bounds)) and gaps[-1] < gaps[0]


def test_printed_g_misses_the_gradient_by_the_discount_factors():
    # With eta = 0 the printed g lacks exactly one factor 1/(1-gamma): relative error gamma.
    meta, raw, phi, rng = random_family(9, gammas=(0.75, 0.75, 0.75), eta=0.0)
    rep = theory.rl_gap(meta, rng.standard_normal(4), rng.standard_normal(4))
    assert rep.printed_gradient_error == pytest.approx(0.75, rel=1e-10)
    meta, raw, phi, rng = random_family(9)
    assert theory.rl_gap(meta, rng.standard_normal(4), rng.standard_normal(4)).printed_gradient_error > 0.1


def test_traces_equal_trace_task_by_task():
    meta, raw, phi, rng = random_family(10, shared=True, solver="splu")
    theta = rng.standard_normal(4)
    for i, got in enumerate(meta.traces(theta)):
        want = meta.trace(theta, i)
        for name in ("pi", "A", "pi_i", "A_i", "sigma_i", "xi_i", "grad_energy"):
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12, atol=1e-15)
        assert got.J_i == pytest.approx(want.J_i, rel=1e-13)


def test_sl_logistic_comparator_defaults_to_the_search():
    meta, X, Y, rng = shared_design(11, loss="logistic")
    omega = 0.3 * rng.standard_normal(meta.n_params)
    rep = theory.sl_gap(meta, omega, seed=2)
    found = theory.best_found(meta, seed=2)
    np.testing.assert_allclose(rep.comparator, found.theta)
    assert rep.gap >= 0 and rep.bound >= rep.gap
    assert "<table>" in rep._repr_html_()


# ----------------------------------------------------------------------------- Theorem 4.4, y = h_i(x) + noise
def test_population_mode_reproduces_the_gradient_identity_within_monte_carlo_error():
    meta, X, Y, rng = shared_design(12, n=4, m=5)
    Z = meta.model.transform(X)
    omega = rng.standard_normal(Z.shape[1])
    n_mc = 4000
    rep = theory.sl_gap(meta, omega, noise=0.5, n_mc=n_mc, seed=3)
    m = X.shape[0]
    point = np.repeat(np.arange(m), n_mc)
    l = np.arange(m)
    feats = Z[None, :, :] - meta.eta * (Z[point] @ Z.T)[:, :, None] * Z[point][:, None, :]   # (atoms, l, d)
    weight = np.full(point.size, 1 / (m * n_mc))[:, None] * rep.rho[None, l]
    estimate = np.einsum("al,ald->d", weight * rep.w, feats)
    grad = meta.gradient(omega)
    assert np.linalg.norm(estimate - grad) <= 0.1 * np.linalg.norm(grad)
    assert rep.standard_errors["term_ii"] > 0 and rep.standard_errors["bound"] > 0
    assert rep.bound >= rep.gap and any("Monte Carlo" in note for note in rep.notes)
    assert rep.L_omega == pytest.approx(meta.objective(omega) + 0.125, rel=1e-12)


def test_population_mode_with_vanishing_noise_recovers_the_exact_terms():
    meta, X, Y, rng = shared_design(13, n=4, m=5)
    omega, comp = rng.standard_normal((2, meta.n_params))
    exact = theory.sl_gap(meta, omega, comp)
    mc = theory.sl_gap(meta, omega, comp, noise=1e-4, n_mc=400, seed=0)
    assert abs(mc.term_ii - exact.term_ii) <= 4 * mc.standard_errors["term_ii"] + 1e-12
    assert mc.gap == pytest.approx(exact.gap, rel=1e-12)
    assert mc.term_i == pytest.approx(exact.term_i, rel=1e-12)


def test_population_mode_rejects_what_it_cannot_do():
    meta, X, Y, rng = shared_design(14, loss="logistic")
    with pytest.raises(ValueError, match="'noise' parameter of sl_gap needs the squared loss"):
        theory.sl_gap(meta, np.zeros(meta.n_params), np.zeros(meta.n_params), noise=0.1)
    meta, X, Y, rng = shared_design(14)
    with pytest.raises(ValueError, match="'n_mc' parameter of sl_gap"):
        theory.sl_gap(meta, np.zeros(meta.n_params), noise=0.1, n_mc=5)
    with pytest.raises(ValueError, match="'noise' parameter of sl_gap"):
        theory.sl_gap(meta, np.zeros(meta.n_params), noise=-1.0)
