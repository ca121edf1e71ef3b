"""A comparator for the gap: the best meta-parameter a multi-start search finds."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from .._validation import check_int, check_real_scalar
from ..rl import MetaRL
from ..sl import MetaSL

_OWNER = "best_found"


@dataclass
class SearchResult:
    """The best point of :func:`best_found` (the best found, not a certified optimum)."""

    theta: np.ndarray
    value: float
    """The meta-objective at ``theta``."""
    maximize: bool
    """True for meta-RL (L is maximised), False for meta-SL (minimised)."""
    values: list[float] = field(default_factory=list)
    """The final value of every local search, in start order."""
    grid_value: float | None = None
    """The best value on the exhaustive grid (d <= 2 only)."""


def best_found(meta: MetaRL | MetaSL, starts: int = 8, seed: int | np.random.Generator = 0, *,
               scale: float = 1.0, maxiter: int = 200, grid_points: int = 41,
               grid_radius: float | None = None) -> SearchResult:
    """Multi-start L-BFGS-B on the meta-objective with its exact gradient.

    The first start is the model's initial parameters, the others add ``scale`` times a
    standard normal vector drawn from ``seed``. For d <= 2 an exhaustive grid of
    ``grid_points`` per axis over the cube of half-width ``grid_radius`` (default
    3 ``scale``) around the initial parameters is evaluated too, and its best point
    starts one more local search.

    The result is the **best point found**, not a certified global optimum: the
    meta-objective is non-convex, and a gap measured against it is a lower estimate of
    the gap to theta*.

    Parameters
    ----------
    meta : MetaRL or MetaSL
    starts : int, default 8
        Number of random starts (>= 1).
    seed : int or numpy.random.Generator
    scale : float, default 1.0
        Standard deviation of the random starts around the initial parameters.
    maxiter : int, default 200
        Iterations of each local search.
    grid_points : int, default 41
        Points per axis of the exhaustive grid (d <= 2).
    grid_radius : float, optional
        Half-width of the grid.

    Returns
    -------
    SearchResult
    """
    if isinstance(meta, MetaRL):
        maximize, theta0 = True, meta.model.init_params()
    elif isinstance(meta, MetaSL):
        maximize, theta0 = False, meta.init_params()
    else:
        raise TypeError(f"The 'meta' parameter of {_OWNER} must be a MetaRL or a MetaSL. "
                        f"Got {type(meta).__name__} instead.")
    starts = check_int(starts, "starts", _OWNER, low=1)
    scale = check_real_scalar(scale, "scale", _OWNER, low=0.0, low_open=False)
    maxiter = check_int(maxiter, "maxiter", _OWNER, low=1)
    grid_points = check_int(grid_points, "grid_points", _OWNER, low=2)
    radius = 3.0 * scale if grid_radius is None else check_real_scalar(grid_radius, "grid_radius", _OWNER, low=0.0)
    rng = (seed if isinstance(seed, np.random.Generator)
           else np.random.default_rng(check_int(seed, "seed", _OWNER, low=0)))
    sign = -1.0 if maximize else 1.0

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = meta.value_and_grad(theta)
        return sign * value, sign * grad

    d = theta0.size
    points = [theta0] + [theta0 + scale * rng.standard_normal(d) for _ in range(starts - 1)]
    grid_value = None
    if d <= 2:
        axis = np.linspace(-radius, radius, grid_points)
        grid = [theta0 + np.array(p) for p in itertools.product(axis, repeat=d)]
        vals = [sign * meta.objective(p) for p in grid]
        best = int(np.argmin(vals))
        grid_value = sign * vals[best]
        points.append(grid[best])
    best_theta, best_val, finals = None, np.inf, []
    for x0 in points:
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
        val = float(res.fun)
        finals.append(sign * val)
        if val < best_val:
            best_theta, best_val = np.asarray(res.x, dtype=np.float64), val
    return SearchResult(best_theta, sign * best_val, maximize, finals, grid_value)
