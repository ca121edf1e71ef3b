"""The predictor protocol of meta-SL: what :class:`fastmeta.MetaSL` asks of a model.

A predictor is a function h_theta(x) of a flat parameter vector theta. Meta-SL needs its
values, its vector-Jacobian product and the Hessian-vector product of a risk built on it,
nothing else; :class:`fastmeta.LinearModel`, :class:`fastmeta.TwoLayerReLU` and
:class:`fastmeta.MLP` are three implementations, and any object with these members plugs
in (see ``docs/predictors.md`` for a random-features model written in NumPy).

Arrays passed to the methods are already validated: float64, C-contiguous, the right shapes.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Predictor(Protocol):
    """What :class:`fastmeta.MetaSL` needs from a hypothesis class h_theta.

    Attributes
    ----------
    in_dim : int
        Dimension of the raw inputs x (one row of a task's X).
    n_params : int
        Length d of the flat parameter vector theta.

    Methods
    -------
    predict(theta, Z) -> ndarray (N,)
        h_theta of every row of Z.
    vjp(theta, Z, g) -> ndarray (d,)
        J^T g = sum_j g[j] dh_theta(z_j)/dtheta.
    hvp(theta, Z, v, d1, d2) -> ndarray (d,)
        The exact Hessian-vector product of the weighted risk
        sum_j l_j(h_theta(z_j)) whose per-sample first and second derivatives in h are
        d1[j] and d2[j]: J^T diag(d2) J v + sum_j d1[j] (d^2 h(z_j)/dtheta^2) v.
        Models whose second derivative in theta vanishes (linear models; one trained
        ReLU layer away from its kinks) return the Gauss-Newton term alone, which is
        then exact; deeper networks need the second term (Pearlmutter's R-operator).
    init_params() -> ndarray (d,)
        The starting point of meta-training.
    project(theta) -> ndarray (d,)
        Projection onto the feasible set after every outer step (identity when unconstrained).
    config() -> str
        Identifies the model and its initialisation; part of checkpoint tags, so it
        must be the same in every process (no ``id()``, no ``hash()`` of strings).

    Notes
    -----
    Three members are optional:

    ``prepare(X) -> Z``
        Maps raw inputs (N, in_dim) to the arrays that ``predict`` and the others take
        (a feature map, for instance). MetaSL calls it once per task, when it packs the
        tasks, never inside the training loop. Without it Z = X.
    ``bind(in_dim) -> Predictor``
        For models whose size follows from the data (``LinearModel()`` without
        ``in_dim``): returns the model for inputs of dimension ``in_dim``.
    ``meta_terms(theta, packed, eta, loss, mode, task_loss) -> ndarray or None``
        A compiled fast path for the whole meta-objective over packed tasks (see
        :class:`fastmeta.sl.PackedTasks`). Without it MetaSL runs a NumPy loop over
        tasks that calls ``predict``, ``vjp`` and ``hvp``; the two agree to rounding.
    """

    in_dim: int
    n_params: int

    def predict(self, theta: np.ndarray, Z: np.ndarray) -> np.ndarray: ...

    def vjp(self, theta: np.ndarray, Z: np.ndarray, g: np.ndarray) -> np.ndarray: ...

    def hvp(self, theta: np.ndarray, Z: np.ndarray, v: np.ndarray, d1: np.ndarray,
            d2: np.ndarray) -> np.ndarray: ...

    def init_params(self) -> np.ndarray: ...

    def project(self, theta: np.ndarray) -> np.ndarray: ...

    def config(self) -> str: ...
