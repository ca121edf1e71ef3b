"""Tasks from Gymnasium: tables against hand-built ones, optimal values against value iteration
on the environment's own table, and rollouts in the environment against the TabularMDP."""

import subprocess
import sys

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")

import fastmeta  # noqa: E402
from fastmeta.planning import optimal_policy  # noqa: E402
from fastmeta.tasks import from_gymnasium, frozenlake_family  # noqa: E402
from fastmeta.visitation import evaluate_policy  # noqa: E402

FROZEN_4x4 = ["SFFF", "FHFH", "FFFH", "HFFG"]
LEFT, DOWN, RIGHT, UP = range(4)  # FrozenLake's action order
MOVES = {LEFT: (0, -1), DOWN: (1, 0), RIGHT: (0, 1), UP: (-1, 0)}


def hand_built_frozenlake(desc, slippery):
    """(P (S, A, S), r (S, A), init) written from FrozenLake's rules, not from its table."""
    n_rows, n_cols = len(desc), len(desc[0])
    S = n_rows * n_cols
    P, r = np.zeros((S, 4, S)), np.zeros((S, 4))
    cell = lambda s: desc[s // n_cols][s % n_cols]  # noqa: E731
    for s in range(S):
        if cell(s) in "HG":  # the episode has ended: absorbing, no reward
            P[s, :, s] = 1.0
            continue
        row, col = divmod(s, n_cols)
        for a in range(4):
            for b in ((a - 1) % 4, a, (a + 1) % 4) if slippery else (a,):
                dr, dc = MOVES[b]
                t = min(max(row + dr, 0), n_rows - 1) * n_cols + min(max(col + dc, 0), n_cols - 1)
                p = 1 / 3 if slippery else 1.0
                P[s, a, t] += p
                r[s, a] += p * (cell(t) == "G")
    init = np.zeros(S)
    init[0] = 1.0
    return P, r, init


@pytest.mark.parametrize("slippery", [False, True])
def test_frozenlake_4x4_matches_hand_built_table(slippery):
    task = from_gymnasium(gymnasium.make("FrozenLake-v1", desc=FROZEN_4x4, is_slippery=slippery), gamma=0.9)
    P, r, init = hand_built_frozenlake(FROZEN_4x4, slippery)
    assert task.shape == (16, 4) and task.gamma == 0.9
    np.testing.assert_allclose(task.dense_P(), P, atol=1e-15)
    np.testing.assert_allclose(task.r, r, atol=1e-15)
    np.testing.assert_array_equal(task.init, init)


def test_cliffwalking_matches_hand_built_table():
    task = from_gymnasium(gymnasium.make("CliffWalking-v1"), gamma=0.9)
    n_rows, n_cols, S = 4, 12, 48
    start, goal = 36, 47
    moves = [(-1, 0), (0, 1), (1, 0), (0, -1)]  # CliffWalking's order: up, right, down, left
    P, r = np.zeros((S, 4, S)), np.zeros((S, 4))
    for s in range(S):
        if s == goal:
            P[s, :, s] = 1.0
            continue
        row, col = divmod(s, n_cols)
        for a, (dr, dc) in enumerate(moves):
            nr, nc = min(max(row + dr, 0), n_rows - 1), min(max(col + dc, 0), n_cols - 1)
            if nr == n_rows - 1 and 0 < nc < n_cols - 1:  # the cliff: back to the start
                P[s, a, start], r[s, a] = 1.0, -100.0
            else:
                P[s, a, nr * n_cols + nc], r[s, a] = 1.0, -1.0
    np.testing.assert_array_equal(task.dense_P(), P)
    np.testing.assert_array_equal(task.r, r)
    assert task.init[start] == 1.0 and task.init.sum() == 1.0


def episodic_value_iteration(env, gamma, iters=3000):
    """Optimal values of the episodic problem, straight from env.unwrapped.P (terminated: no future)."""
    table = env.unwrapped.P
    S, A = env.observation_space.n, env.action_space.n
    V = np.zeros(S)
    for _ in range(iters):
        Q = np.array([[sum(p * (rew + gamma * (not term) * V[t]) for p, t, rew, term in table[s][a])
                       for a in range(A)] for s in range(S)])
        V = Q.max(axis=1)
    return V


@pytest.mark.parametrize("make", [
    lambda: gymnasium.make("FrozenLake-v1", is_slippery=True),
    lambda: gymnasium.make("FrozenLake-v1", is_slippery=False),
    lambda: gymnasium.make("CliffWalking-v1"),
])
def test_optimal_values_match_value_iteration_on_the_env_table(make):
    env, gamma = make(), 0.9
    task = from_gymnasium(env, gamma)
    _, V, J = optimal_policy(task)
    V_episodic = episodic_value_iteration(env, gamma)
    ends = np.array([any(term for s in range(task.n_states) for a in range(task.n_actions)
                         for _, t, _, term in env.unwrapped.P[s][a] if t == u) for u in range(task.n_states)])
    # fastmeta's values carry the (1 - gamma) normalisation; states where the episode has ended are worth 0.
    np.testing.assert_allclose(V[~ends], (1 - gamma) * V_episodic[~ends], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(V[ends], 0.0, atol=1e-15)
    assert J == pytest.approx((1 - gamma) * V_episodic[task.init.argmax()], rel=1e-9)


def test_taxi_reads_and_stays_stochastic():
    task = from_gymnasium(gymnasium.make("Taxi-v4"), gamma=0.95)
    assert task.shape == (500, 6)
    np.testing.assert_allclose(np.asarray(task.P.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert task.r.min() == -10.0  # an illegal pick-up or drop-off


def test_rollouts_in_the_env_agree_with_the_tabular_mdp():
    """Seeded Monte Carlo under a fixed stochastic policy on slippery FrozenLake 4x4.

    Two statistics, each within 4 standard errors (a false failure has probability
    6e-5 per comparison, below 1e-3 for all 17 together; the seed makes the test
    deterministic): the normalised discounted return against J = zeta^T V^pi, and the
    frequency of every state at step t = 3 (absorbing after termination) against the
    marginal zeta^T P_pi^3. The second one catches a wrong kernel: the
    deterministic table's marginal is 23 standard errors away from these rollouts.
    """
    gamma, n_episodes, horizon, t_check = 0.95, 4000, 200, 3  # 0.95**200 < 4e-5
    env = gymnasium.make("FrozenLake-v1", is_slippery=True).unwrapped  # no time limit
    task = from_gymnasium(env, gamma)
    S, A = task.shape
    rng = np.random.default_rng(0)
    pi = rng.dirichlet([1.0, 3.0, 3.0, 1.0], size=S)  # leaning down and right, towards the goal
    returns, at_t = np.empty(n_episodes), np.zeros(S)
    env.reset(seed=0)
    for e in range(n_episodes):
        s, _ = env.reset()
        total, discount, done = 0.0, 1.0, False
        for t in range(horizon):
            if t == t_check:
                at_t[s] += 1
            if done:
                if t > t_check:
                    break
                continue
            s, reward, done, _, _ = env.step(int(rng.choice(A, p=pi[s])))
            total += discount * reward
            discount *= gamma
        returns[e] = (1 - gamma) * total
    V, _, _ = evaluate_policy(task, pi)
    J = float(task.init @ V)
    se = returns.std(ddof=1) / np.sqrt(n_episodes)
    assert J > 5 * se and abs(returns.mean() - J) <= 4 * se, (returns.mean(), J, se)
    P_pi = np.einsum("sa,sat->st", pi, task.dense_P())
    marginal = task.init @ np.linalg.matrix_power(P_pi, t_check)
    freq = at_t / n_episodes
    se_freq = np.sqrt(marginal * (1 - marginal) / n_episodes)
    assert np.all(np.abs(freq - marginal) <= 4 * se_freq + 1e-15), (freq, marginal)


def test_frozenlake_family_is_seeded_and_shares_features():
    tasks, phi = frozenlake_family(5, size=5, p_frozen=0.7, seed=3)
    again, _ = frozenlake_family(5, size=5, p_frozen=0.7, seed=3)
    other, _ = frozenlake_family(5, size=5, p_frozen=0.7, seed=4)
    assert len(tasks) == 5 and phi.shape == (25, 4, 100)
    for a, b in zip(tasks, again):
        assert (a.P != b.P).nnz == 0 and np.array_equal(a.r, b.r)
    assert any((a.P != b.P).nnz for a, b in zip(tasks, other))
    assert len({t.P.nnz for t in tasks} | {t.P.nnz for t in other}) > 1  # the holes differ between maps
    for task in tasks:  # start top-left, goal bottom-right pays 1 on entry and then absorbs
        assert task.init[0] == 1.0 and task.r[24].sum() == 0.0 and task.r.max() == pytest.approx(1 / 3)
    _, phi_rbf = frozenlake_family(2, size=5, features="rbf", n_features=16, seed=0)
    assert phi_rbf.shape == (25, 4, 16)
    # The tasks meta-train: the exact gradient of L agrees with central differences.
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi_rbf[:, :, :8]))
    theta = np.random.default_rng(1).normal(size=8)
    eps, d = 1e-6, np.eye(8)
    fd = np.array([(meta.objective(theta + eps * d[k]) - meta.objective(theta - eps * d[k])) / (2 * eps)
                   for k in range(8)])
    np.testing.assert_allclose(meta.gradient(theta), fd, rtol=1e-6, atol=1e-9)


def test_clear_errors():
    with pytest.raises(TypeError, match=r"env.unwrapped.P .*CartPoleEnv"):
        from_gymnasium(gymnasium.make("CartPole-v1"), gamma=0.9)
    with pytest.raises(ValueError, match="'gamma' parameter of TabularMDP"):
        from_gymnasium(gymnasium.make("FrozenLake-v1"), gamma=1.0)
    with pytest.raises(ValueError, match=r"'init' parameter of from_gymnasium must have shape \(16,\)"):
        from_gymnasium(gymnasium.make("FrozenLake-v1"), gamma=0.9, init=np.ones(3) / 3)
    env = gymnasium.make("FrozenLake-v1").unwrapped
    del env.P[3]
    with pytest.raises(ValueError, match=r"FrozenLakeEnv.P\[3\]\[0\]"):
        from_gymnasium(env, gamma=0.9)
    with pytest.raises(ValueError, match="'p_frozen' parameter of frozenlake_family"):
        frozenlake_family(2, size=4, p_frozen=0.0)
    with pytest.raises(TypeError, match="'is_slippery' parameter of frozenlake_family"):
        frozenlake_family(2, size=4, is_slippery="yes")


def test_importing_fastmeta_imports_no_optional_framework():
    code = ("import sys, fastmeta, fastmeta.tasks, fastmeta.bridges; "
            "print(sorted(m for m in ('jax', 'torch', 'gymnasium') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_frozenlake_demo_learns_a_prior(capsys):
    from fastmeta.cli import main, run_rl_demo

    report = run_rl_demo(family="frozenlake", n_tasks=4, size=4, steps=20, lr=1e4, plot=None, progress=False)
    uniform, learned = report["rows"]["uniform prior (theta = 0)"], report["rows"]["meta-learned prior"]
    assert learned[0] > 2 * uniform[0]
    assert "FrozenLake maps" in capsys.readouterr().out
    assert main(["demo", "--family", "frozenlake", "--quick", "--plot", ""]) == 0


def test_docs_example_runs():
    from .bridge_cases import python_blocks, run_child

    out = run_child(python_blocks("gymnasium.md"), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "optimal J" in out.stdout and "meta-objective L" in out.stdout
