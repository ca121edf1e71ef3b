"""Linear-Gaussian regression tasks: y = phi(x)^T beta_i + N(0, s^2), beta_i ~ N(beta_0, Sigma)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import as_float_array, check_int, check_real_scalar
from ..linear_model import LinearModel
from ..sl import SLTask
from .sampler import TaskSampler

_OWNER = "linear_gaussian_tasks"


def linear_gaussian_tasks(n_tasks: int, n_support: int = 10, n_query: int | None = None, *,
                          beta0: Any = None, in_dim: int | None = None, cov: Any = 1.0,
                          noise: float = 0.1, model: LinearModel | None = None,
                          seed: int | np.random.Generator = 0) -> list[SLTask]:
    """Sample linear-Gaussian regression tasks.

    Each task draws beta_i ~ N(beta0, Sigma) and inputs x ~ N(0, I_in_dim), and observes
    y = phi(x)^T beta_i + N(0, noise^2). The tasks store the raw x; a
    :class:`fastmeta.LinearModel` with the same features recovers phi.

    Parameters
    ----------
    n_tasks : int
        Number of tasks.
    n_support : int, default 10
        Support samples per task.
    n_query : int, optional
        Query samples per task; without it the tasks have no query set.
    beta0 : array_like of shape (d,), optional
        Mean of beta_i; zeros by default (then ``in_dim`` is required).
    in_dim : int, optional
        Dimension of x. Defaults to the model's ``in_dim``, or to len(beta0) when phi
        is the identity.
    cov : float or array_like of shape (d, d), default 1.0
        Sigma: a scalar c means c I; a matrix must be symmetric positive semi-definite.
    noise : float, default 0.1
        Observation noise standard deviation s >= 0.
    model : LinearModel, optional
        Defines phi; the identity by default.
    seed : int or numpy.random.Generator
        Source of every draw.

    Returns
    -------
    list of SLTask
        ``task.info["beta"]`` holds beta_i.
    """
    n_tasks = check_int(n_tasks, "n_tasks", _OWNER, low=1)
    n_support = check_int(n_support, "n_support", _OWNER, low=1)
    n_query = None if n_query is None else check_int(n_query, "n_query", _OWNER, low=1)
    noise = check_real_scalar(noise, "noise", _OWNER, low=0.0, low_open=False)
    model = LinearModel() if model is None else model
    if not isinstance(model, LinearModel):
        raise TypeError(f"The 'model' parameter of {_OWNER} must be a LinearModel. "
                        f"Got {type(model).__name__} instead.")
    if beta0 is not None:
        beta0 = as_float_array(beta0, "beta0", _OWNER, ndim=1)
    if in_dim is None and model.in_dim is not None:
        in_dim = model.in_dim
    if in_dim is None:
        if beta0 is None or model.features != "identity":
            raise ValueError(f"The 'in_dim' parameter of {_OWNER} is required unless beta0 is given and "
                             f"phi is the identity. Got in_dim=None instead.")
        in_dim = beta0.shape[0]
    in_dim = check_int(in_dim, "in_dim", _OWNER, low=1)
    model = model.bind(in_dim)
    d = model.n_params
    if beta0 is None:
        beta0 = np.zeros(d)
    elif beta0.shape != (d,):
        raise ValueError(f"The 'beta0' parameter of {_OWNER} must have shape ({d},) (the feature "
                         f"dimension). Got shape {beta0.shape} instead.")
    if np.ndim(cov) == 0:
        c = check_real_scalar(float(cov), "cov", _OWNER, low=0.0, low_open=False)
        chol = np.sqrt(c) * np.eye(d)
    else:
        cov = as_float_array(cov, "cov", _OWNER, shape=(d, d))
        w, V = np.linalg.eigh(0.5 * (cov + cov.T))
        if not np.allclose(cov, cov.T) or w.min() < -1e-12 * max(1.0, abs(w).max()):
            raise ValueError(f"The 'cov' parameter of {_OWNER} must be symmetric positive semi-definite. "
                             f"Got smallest eigenvalue {w.min()!r} instead.")
        chol = V * np.sqrt(np.clip(w, 0.0, None))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(
        check_int(seed, "seed", _OWNER, low=0))
    tasks = []
    for _ in range(n_tasks):
        beta = beta0 + chol @ rng.standard_normal(d)
        X = rng.standard_normal((n_support, in_dim))
        y = model.transform(X) @ beta + noise * rng.standard_normal(n_support)
        if n_query is None:
            tasks.append(SLTask(X, y, info={"beta": beta}))
        else:
            Xq = rng.standard_normal((n_query, in_dim))
            yq = model.transform(Xq) @ beta + noise * rng.standard_normal(n_query)
            tasks.append(SLTask(X, y, Xq, yq, info={"beta": beta}))
    return tasks


def linear_gaussian_sampler(n_tasks: int, **settings: Any) -> TaskSampler:
    """Fresh ``linear_gaussian_tasks`` every outer step, for ``MetaSL.fit(sampler=...)``.

    Takes the arguments of :func:`linear_gaussian_tasks` except ``seed`` (``fit`` derives each step's
    Generator from its own ``seed`` and the step), e.g. ``linear_gaussian_sampler(25, n_support=10, n_query=10, in_dim=4)``.
    """
    linear_gaussian_tasks(n_tasks, **settings, seed=0)   # validate the settings now, not at step 0 of fit
    return TaskSampler(linear_gaussian_tasks, n_tasks=n_tasks, **settings)
