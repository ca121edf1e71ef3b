"""Feature maps phi(s, a) for energies f = phi^T theta: stored (S, A, d) arrays, or
objects that compute phi theta and its transpose on the fly (no storage; needed at
10^7 states, where an (S, 4, 32) float64 array would take 10 GB).

A feature-map object has ``n_states``, ``n_actions``, ``n_features``,
``apply(theta) -> (S, A)`` (= phi theta), ``apply_transpose(g) -> (d,)``
(= sum_{s,a} g(s, a) phi(s, a)), ``dense()`` (the (S, A, d) array, for small
problems and tests) and ``fingerprint()``; :class:`fastmeta.LinearEnergy`
accepts it in place of the array.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .._validation import check_int, check_real_scalar, check_seed


class OneHotFeatureMap:
    """Tabular features phi(s, a) = e_{s*A + a} on the fly: phi theta is theta itself."""

    def __init__(self, n_states: int, n_actions: int):
        self.n_states = check_int(n_states, "n_states", "OneHotFeatureMap", low=1)
        self.n_actions = check_int(n_actions, "n_actions", "OneHotFeatureMap", low=1)
        self.n_features = self.n_states * self.n_actions

    def apply(self, theta: np.ndarray) -> np.ndarray:
        """phi theta, shape (S, A)."""
        return np.array(theta, dtype=np.float64).reshape(self.n_states, self.n_actions)

    def apply_transpose(self, g: np.ndarray) -> np.ndarray:
        """sum_{s,a} g(s, a) phi(s, a), shape (S*A,)."""
        return np.array(g, dtype=np.float64).reshape(-1)

    def dense(self) -> np.ndarray:
        return one_hot_features(self.n_states, self.n_actions)

    def fingerprint(self) -> str:
        return f"onehot:{self.n_states}x{self.n_actions}"

    def __repr__(self) -> str:
        return f"OneHotFeatureMap(S={self.n_states}, A={self.n_actions})"


class GridRBFFeatureMap:
    """:func:`grid_rbf_features` on the fly: phi theta is separable per action.

    With the lattice factors ``gx`` (size, kx) and ``gy`` (size, ky), the energy of
    action ``a`` on the grid is ``gx @ Theta_a @ gy^T`` (Theta_a = theta's block of
    ``a`` as a kx x ky matrix) and the transpose is ``gx^T G_a gy``: two small
    matrix products per action, O(S c) work and O(size c) storage.
    Parameters as for :func:`grid_rbf_features`.
    """

    def __init__(self, size: int, n_actions: int, n_features: int, width: float | None = None):
        self.size, self.gx, self.gy = _rbf_factors(size, n_actions, n_features, width, "GridRBFFeatureMap")
        self.n_states = self.size * self.size
        self.n_actions = int(n_actions)
        self.n_features = int(n_features)

    def apply(self, theta: np.ndarray) -> np.ndarray:
        """phi theta, shape (S, A)."""
        N, A = self.size, self.n_actions
        Th = np.asarray(theta, dtype=np.float64).reshape(A, self.gx.shape[1], self.gy.shape[1])
        out = np.empty((N * N, A))
        for a in range(A):
            out[:, a] = (self.gx @ Th[a] @ self.gy.T).reshape(-1)
        return out

    def apply_transpose(self, g: np.ndarray) -> np.ndarray:
        """sum_{s,a} g(s, a) phi(s, a), shape (d,)."""
        N, A = self.size, self.n_actions
        g = np.asarray(g, dtype=np.float64).reshape(N, N, A)
        return np.concatenate([(self.gx.T @ g[:, :, a] @ self.gy).reshape(-1) for a in range(A)])

    def dense(self) -> np.ndarray:
        return _rbf_dense(self.gx, self.gy, self.n_actions)

    def fingerprint(self) -> str:
        h = hashlib.blake2b(self.gx.tobytes() + self.gy.tobytes(), digest_size=8).hexdigest()
        return f"gridrbf:{self.size}:{self.n_actions}:{self.n_features}:{h}"

    def __repr__(self) -> str:
        return f"GridRBFFeatureMap(size={self.size}, A={self.n_actions}, d={self.n_features})"


def _rbf_factors(size, n_actions, n_features, width, owner):
    """Side N and the separable lattice factors gx (N, kx), gy (N, ky) of the grid RBFs."""
    N = check_int(size, "size", owner, low=1)
    A = check_int(n_actions, "n_actions", owner, low=1)
    d = check_int(n_features, "n_features", owner, low=1)
    if d % A:
        raise ValueError(f"The 'n_features' parameter of {owner} must be a multiple of n_actions = {A}. "
                         f"Got {d} instead.")
    c = d // A
    kx = max(k for k in range(1, int(np.sqrt(c)) + 1) if c % k == 0)
    ky = c // kx
    cx = (np.arange(kx) + 0.5) * (N / kx)
    cy = (np.arange(ky) + 0.5) * (N / ky)
    if width is None:
        width = max(N / kx, N / ky) / 1.5
    width = check_real_scalar(width, "width", owner, low=0.0)
    coords = np.arange(N) + 0.5
    gx = np.exp(-((coords[:, None] - cx[None, :]) ** 2) / (2 * width ** 2))
    gy = np.exp(-((coords[:, None] - cy[None, :]) ** 2) / (2 * width ** 2))
    return N, gx, gy


def _rbf_dense(gx, gy, A):
    """The (N*N, A, d) array of the separable RBFs: block ``a`` holds gx[x, i] gy[y, j]."""
    N, kx, ky = gx.shape[0], gx.shape[1], gy.shape[1]
    c = kx * ky
    phi = np.zeros((N * N, A, A * c))
    for a in range(A):
        block = phi[:, a, a * c:(a + 1) * c].reshape(N, N, kx, ky)
        np.multiply(gx[:, None, :, None], gy[None, :, None, :], out=block)
    return phi


def one_hot_features(n_states: int, n_actions: int) -> np.ndarray:
    """Tabular features: phi(s, a) = e_{s*A + a}, d = S*A (only for small S)."""
    S = check_int(n_states, "n_states", "one_hot_features", low=1)
    A = check_int(n_actions, "n_actions", "one_hot_features", low=1)
    return np.eye(S * A).reshape(S, A, S * A)


def random_features(n_states: int, n_actions: int, n_features: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Gaussian random features N(0, 1/d), seeded; shape (S, A, d)."""
    owner = "random_features"
    S = check_int(n_states, "n_states", owner, low=1)
    A = check_int(n_actions, "n_actions", owner, low=1)
    d = check_int(n_features, "n_features", owner, low=1)
    rng = check_seed(seed, "seed", owner)
    phi = rng.standard_normal((S, A, d))
    phi *= 1.0 / np.sqrt(d)
    return phi


def grid_rbf_features(size: int, n_actions: int, n_features: int, width: float | None = None) -> np.ndarray:
    """Coordinate RBFs on a size x size grid, one block per action.

    ``c = n_features / n_actions`` Gaussian bumps exp(-|x - x_k|^2 / (2 width^2))
    are centred on a kx-by-ky lattice (kx * ky = c, as square as possible) over the
    grid; phi(s, a) holds them in block ``a`` and zeros elsewhere, so theta holds a
    separate preference map per action. State s is the cell (s // size, s % size).
    ``width`` defaults to the lattice spacing.
    """
    _, gx, gy = _rbf_factors(size, n_actions, n_features, width, "grid_rbf_features")
    return _rbf_dense(gx, gy, int(n_actions))
