"""Feature maps phi(s, a) of shape (S, A, d) for energies f = phi^T theta."""
from __future__ import annotations

import numpy as np

from .._validation import check_int, check_real_scalar, check_seed


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
    owner = "grid_rbf_features"
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
    # Separable Gaussians: rbf[x, y, i, j] = gx[x, i] * gy[y, j].
    gx = np.exp(-((coords[:, None] - cx[None, :]) ** 2) / (2 * width ** 2))
    gy = np.exp(-((coords[:, None] - cy[None, :]) ** 2) / (2 * width ** 2))
    phi = np.zeros((N * N, A, d))
    for a in range(A):
        block = phi[:, a, a * c:(a + 1) * c].reshape(N, N, kx, ky)
        np.multiply(gx[:, None, :, None], gy[None, :, None, :], out=block)
    return phi
