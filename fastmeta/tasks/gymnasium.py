"""Tasks from Gymnasium's toy-text environments (FrozenLake, CliffWalking, Taxi).

These environments publish their whole model as ``env.unwrapped.P``:
``P[s][a]`` is a list of ``(probability, next_state, reward, terminated)``. This
module turns that table into a :class:`fastmeta.TabularMDP`. Reading the table needs
no Gymnasium import; only :func:`frozenlake_family` (which calls Gymnasium's own
map generator) imports it, when called. Install it with the ``gym`` extra.

How an episodic table becomes a discounted MDP
----------------------------------------------
* r(s, a) is the expected reward of the transition: sum of probability * reward
  over the rows of ``P[s][a]`` (the reward of entering the goal counts in the step
  that enters it).
* A state entered by a transition flagged ``terminated`` ends the episode, so it is
  made absorbing with zero reward: every action loops on it. The discounted
  objective then counts exactly the rewards collected before termination.
* The initial distribution is the environment's ``initial_state_distrib`` when it
  has one, else its start cell (the ``b"S"`` of ``desc``), unless ``init`` is given.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .._validation import as_float_array, check_choice, check_int, check_real_scalar
from ..mdp import TabularMDP
from .features import grid_rbf_features, one_hot_features


def _discrete_size(space: Any, what: str, env_name: str) -> int:
    n = getattr(space, "n", None)
    if n is None or int(n) < 1:
        raise ValueError(f"The 'env' parameter of from_gymnasium must have a Discrete {what} space. "
                         f"{env_name} has {space!r}.")
    return int(n)


def from_gymnasium(env: Any, gamma: float, init: Any = None) -> TabularMDP:
    """A TabularMDP from a Gymnasium environment that exposes its transition table.

    Parameters
    ----------
    env : gymnasium.Env
        A toy-text environment (wrapped or not) with ``env.unwrapped.P``, e.g.
        ``gymnasium.make("FrozenLake-v1")``, ``"CliffWalking-v1"``, ``"Taxi-v4"``.
    gamma : float
        Discount factor in (0, 1).
    init : array_like of shape (S,), optional
        Initial state distribution; default the environment's (see the module notes).

    Returns
    -------
    TabularMDP
        S = ``observation_space.n``, A = ``action_space.n``; expected rewards r(s, a);
        states entered on termination absorbing with zero reward.

    Raises
    ------
    TypeError
        If the environment has no transition table ``unwrapped.P``.
    ValueError
        If the table is incomplete or malformed, or no initial distribution is known.

    Examples
    --------
    >>> import gymnasium, fastmeta
    >>> task = fastmeta.tasks.from_gymnasium(gymnasium.make("FrozenLake-v1"), gamma=0.95)
    >>> task.shape
    (16, 4)
    """
    owner = "from_gymnasium"
    base = getattr(env, "unwrapped", env)
    name = type(base).__name__
    table = getattr(base, "P", None)
    if not hasattr(table, "__getitem__"):
        raise TypeError(f"The 'env' parameter of {owner} must expose its transition table as "
                        f"env.unwrapped.P (the toy-text environments FrozenLake, CliffWalking and Taxi do). "
                        f"Got {name}, which has none.")
    S = _discrete_size(getattr(base, "observation_space", None), "observation", name)
    A = _discrete_size(getattr(base, "action_space", None), "action", name)
    rows, cols, probs = [], [], []
    r = np.zeros((S, A))
    entered_on_termination = np.zeros(S, dtype=bool)
    for s in range(S):
        for a in range(A):
            try:
                outcomes = table[s][a]
                for p, s_next, reward, terminated in outcomes:
                    s_next = int(s_next)
                    if not 0 <= s_next < S:
                        raise ValueError(f"next state {s_next} outside [0, {S})")
                    rows.append(s * A + a)
                    cols.append(s_next)
                    probs.append(float(p))
                    r[s, a] += float(p) * float(reward)
                    entered_on_termination[s_next] |= bool(terminated) and float(p) > 0.0
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise ValueError(f"The 'env' parameter of {owner} must have a table P[s][a] of "
                                 f"(probability, next_state, reward, terminated) rows for every s < {S} and "
                                 f"a < {A}. {name}.P[{s}][{a}] is not ({type(exc).__name__}: {exc}).") from None
    rows, cols, probs = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64), np.asarray(probs)
    absorbing = np.flatnonzero(entered_on_termination)
    keep = ~entered_on_termination[rows // A]
    loops = (absorbing[:, None] * A + np.arange(A)[None, :]).ravel()
    rows = np.concatenate([rows[keep], loops])
    cols = np.concatenate([cols[keep], np.repeat(absorbing, A)])
    probs = np.concatenate([probs[keep], np.ones(loops.size)])
    r[absorbing] = 0.0
    P = sp.csr_matrix((probs, (rows, cols)), shape=(S * A, S))  # duplicate (s, a, s') entries are summed
    if init is None:
        init = _initial_distribution(base, S, name)
    else:
        init = as_float_array(init, "init", owner, shape=(S,), allow_negative=False)
    return TabularMDP(P, r, gamma, init)


def _initial_distribution(base: Any, S: int, name: str) -> np.ndarray:
    zeta = getattr(base, "initial_state_distrib", None)
    if zeta is not None:
        return as_float_array(np.ravel(zeta), "env.unwrapped.initial_state_distrib", "from_gymnasium",
                              shape=(S,), allow_negative=False)
    desc = getattr(base, "desc", None)
    if desc is not None:
        starts = np.flatnonzero(np.asarray(desc).ravel() == b"S")
        if starts.size == 1 and np.asarray(desc).size == S:
            zeta = np.zeros(S)
            zeta[starts[0]] = 1.0
            return zeta
    raise ValueError(f"The 'init' parameter of from_gymnasium must be given for {name}: the environment "
                     f"has neither initial_state_distrib nor a single start cell b'S' in desc.")


def frozenlake_family(n_tasks: int = 8, size: int = 8, p_frozen: float = 0.8, is_slippery: bool = True, *,
                      gamma: float = 0.95, features: str = "onehot", n_features: int = 32,
                      seed: int | np.random.Generator = 0) -> tuple[list[TabularMDP], np.ndarray]:
    """Random FrozenLake maps drawn by Gymnasium's own generator, one TabularMDP per map.

    Every map is ``size`` x ``size`` with the start at the top-left cell, the goal at
    the bottom-right one and each other cell frozen with probability ``p_frozen``
    (``gymnasium.envs.toy_text.frozen_lake.generate_random_map``, which redraws until
    the goal is reachable). Tasks differ in where the holes are; they share S, A and
    the features. Reaching the goal pays 1; holes and the goal end the episode.

    Parameters
    ----------
    n_tasks : int
        Number of maps.
    size : int
        Side of the map, >= 2; S = size**2, A = 4 (left, down, right, up).
    p_frozen : float
        Probability that a cell is frozen (not a hole), in (0, 1].
    is_slippery : bool
        Gymnasium's slippery dynamics (the intended move with probability 1/3, each
        perpendicular one with 1/3) or deterministic moves.
    gamma : float
        Discount factor shared by the tasks.
    features : {"onehot", "rbf"}
        Tabular one-hot features (d = 4 S) or coordinate RBFs
        (:func:`fastmeta.tasks.grid_rbf_features`, d = ``n_features``).
    n_features : int
        d for "rbf" (a multiple of 4).
    seed : int or numpy.random.Generator
        Draws one Gymnasium seed per map.

    Returns
    -------
    tasks : list of TabularMDP
    phi : ndarray of shape (S, 4, d)
    """
    owner = "frozenlake_family"
    n = check_int(n_tasks, "n_tasks", owner, low=1)
    N = check_int(size, "size", owner, low=2)
    p = check_real_scalar(p_frozen, "p_frozen", owner, low=0.0, high=1.0, high_open=False)
    if not isinstance(is_slippery, (bool, np.bool_)):
        raise TypeError(f"The 'is_slippery' parameter of {owner} must be a bool. Got {is_slippery!r} instead.")
    features = check_choice(features, "features", ("onehot", "rbf"), owner)
    gymnasium, generate_random_map = _import_gymnasium(owner)
    rng = np.random.default_rng(seed)
    tasks = []
    for map_seed in rng.integers(0, 2**31 - 1, size=n):
        desc = generate_random_map(size=N, p=p, seed=int(map_seed))
        env = gymnasium.make("FrozenLake-v1", desc=desc, is_slippery=bool(is_slippery))
        tasks.append(from_gymnasium(env, gamma))
        env.close()
    phi = one_hot_features(N * N, 4) if features == "onehot" else grid_rbf_features(N, 4, n_features)
    return tasks, phi


def frozenlake_demo_problem(n_tasks: int = 16, size: int = 6, *, p_frozen: float = 0.8, is_slippery: bool = True,
                            gamma: float = 0.95, seed: int | np.random.Generator = 0
                            ) -> tuple[list[TabularMDP], list[TabularMDP], np.ndarray, str]:
    """Training maps, held-out maps, shared one-hot features and a one-line description.

    The problem ``fastmeta demo --family frozenlake`` meta-trains on: slippery
    ``size`` x ``size`` lakes whose holes differ between tasks, so the prior has to
    learn a route to the goal that is safe on most maps.
    """
    rng = np.random.default_rng(seed)
    family = dict(size=size, p_frozen=p_frozen, is_slippery=is_slippery, gamma=gamma, features="onehot")
    train, phi = frozenlake_family(n_tasks, seed=rng, **family)
    held_out, _ = frozenlake_family(n_tasks, seed=rng, **family)
    slippery = "slippery" if is_slippery else "deterministic"
    text = (f"{n_tasks} random {slippery} FrozenLake maps (Gymnasium's generator, p_frozen={p_frozen:g}), "
            f"{size}x{size} (S={size * size}, A=4), d={phi.shape[2]} one-hot features")
    return train, held_out, phi, text


def _import_gymnasium(owner: str) -> tuple[Any, Any]:
    try:
        import gymnasium
        from gymnasium.envs.toy_text.frozen_lake import generate_random_map
    except ImportError:
        raise ImportError(f"{owner} needs Gymnasium: pip install 'fastmeta[gym]'") from None
    return gymnasium, generate_random_map
