"""The sinusoid regression family of Finn, Abbeel and Levine (2017), as SLTask lists."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._validation import check_int, check_real_scalar
from ..sl import SLTask, TaskBatch

_OWNER = "sinusoid_tasks"


def fourier_embedding(n_features: int = 32, lengthscale: float = 1.5, constant: float = 2.0,
                      seed: int | np.random.Generator = 0) -> Callable[[Any], np.ndarray]:
    """Seeded random Fourier features of a scalar x plus a constant, for ``embedding=``.

    Returns the map x -> (sqrt(2/D) cos(omega_k x + beta_k) for k = 1..D, constant), with
    omega_k ~ N(0, 1/lengthscale^2) and beta_k ~ U[0, 2 pi) drawn once from ``seed``, so
    z(x).z(x') ~ exp(-(x - x')^2 / (2 lengthscale^2)) + constant^2 (Rahimi and Recht 2007).
    The same seed gives the same map, so training and held-out tasks built with two calls
    share their features. A ReLU unit of z(x) can switch on and off several times along x
    (a unit of (x, 1) has a single kink).
    """
    owner = "fourier_embedding"
    n_features = check_int(n_features, "n_features", owner, low=1)
    lengthscale = check_real_scalar(lengthscale, "lengthscale", owner, low=0.0)
    constant = check_real_scalar(constant, "constant", owner)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(
        check_int(seed, "seed", owner, low=0))
    omega = rng.standard_normal(n_features) / lengthscale
    beta = rng.uniform(0.0, 2.0 * np.pi, n_features)
    scale = np.sqrt(2.0 / n_features)

    def embed(x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1, 1)
        return np.hstack([scale * np.cos(x * omega + beta), np.full_like(x, constant)])

    return embed


def embed_inputs(x: Any, embedding: str | Callable | None = None) -> np.ndarray:
    """Network inputs for scalar x: ``None`` -> (x,), ``"affine"`` -> (x, 1), or ``embedding(x)``.

    A bias-free ReLU network of a scalar x is piecewise linear through the origin (it can
    only be a*x for x > 0 and c*x for x < 0); the constant coordinate of ``"affine"`` gives
    every hidden unit its own kink position, which is what a sine needs. For random
    Fourier features pass ``fourier_embedding(...)``.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1, 1)
    if embedding is None:
        return np.ascontiguousarray(x)
    if isinstance(embedding, str):
        if embedding != "affine":
            raise ValueError(f"The 'embedding' parameter of {_OWNER} must be None, 'affine' or a callable. "
                             f"Got {embedding!r} instead.")
        return np.ascontiguousarray(np.hstack([x, np.ones_like(x)]))
    if callable(embedding):
        return np.ascontiguousarray(np.asarray(embedding(x), dtype=np.float64).reshape(x.shape[0], -1))
    raise TypeError(f"The 'embedding' parameter of {_OWNER} must be None, 'affine' or a callable. "
                    f"Got {type(embedding).__name__} instead.")


def sinusoid_tasks(n_tasks: int, k_shot: int = 5, k_query: int | None = None, *,
                   amplitude: tuple[float, float] = (0.1, 5.0), phase: tuple[float, float] = (0.0, np.pi),
                   x_range: tuple[float, float] = (-5.0, 5.0), embedding: str | Callable | None = None,
                   seed: int | np.random.Generator = 0) -> list[SLTask]:
    """Sample sinusoid regression tasks y = A sin(x + phase).

    Parameters
    ----------
    n_tasks : int
        Number of tasks.
    k_shot : int, default 5
        Support samples per task (K of K-shot).
    k_query : int, optional
        Query samples per task; without it the tasks have no query set, so the inner
        step and the risk use the same K samples, as in (4.3)-(4.4).
    amplitude, phase : (low, high)
        A ~ U[amplitude], phase ~ U[phase]; defaults U[0.1, 5.0] and U[0, pi] as in Finn et al.
    x_range : (low, high), default (-5, 5)
        x ~ U[x_range], independently for support and query.
    embedding : None, "affine" or callable
        Network inputs built from x, see :func:`embed_inputs`.
    seed : int or numpy.random.Generator
        Source of every draw.

    Returns
    -------
    list of SLTask
        ``task.info`` holds ``amplitude`` and ``phase``.
    """
    n_tasks = check_int(n_tasks, "n_tasks", _OWNER, low=1)
    k_shot = check_int(k_shot, "k_shot", _OWNER, low=1)
    k_query = None if k_query is None else check_int(k_query, "k_query", _OWNER, low=1)
    lo_a = check_real_scalar(amplitude[0], "amplitude", _OWNER)
    hi_a = check_real_scalar(amplitude[1], "amplitude", _OWNER, low=lo_a, low_open=False)
    lo_p = check_real_scalar(phase[0], "phase", _OWNER)
    hi_p = check_real_scalar(phase[1], "phase", _OWNER, low=lo_p, low_open=False)
    lo_x = check_real_scalar(x_range[0], "x_range", _OWNER)
    hi_x = check_real_scalar(x_range[1], "x_range", _OWNER, low=lo_x)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(
        check_int(seed, "seed", _OWNER, low=0))
    tasks = []
    for _ in range(n_tasks):
        a = rng.uniform(lo_a, hi_a)
        ph = rng.uniform(lo_p, hi_p)
        x = rng.uniform(lo_x, hi_x, k_shot)
        xq = rng.uniform(lo_x, hi_x, k_query) if k_query is not None else None
        info = {"amplitude": a, "phase": ph}
        if xq is None:
            tasks.append(SLTask(embed_inputs(x, embedding), a * np.sin(x + ph), info=info))
        else:
            tasks.append(SLTask(embed_inputs(x, embedding), a * np.sin(x + ph),
                                embed_inputs(xq, embedding), a * np.sin(xq + ph), info=info))
    return tasks



class SinusoidSampler:
    """Fresh sinusoid tasks every step, drawn as one vectorised :class:`fastmeta.sl.TaskBatch`.

    Made by :func:`sinusoid_sampler`; ``sampler(rng, step)`` draws n amplitudes, n phases,
    then the (n, K) support and (n, K_q) query inputs, in that order (a different stream
    from :func:`sinusoid_tasks`, which draws task by task).
    """

    def __init__(self, n_tasks: int, k_shot: int, k_query: int | None, amplitude: tuple[float, float],
                 phase: tuple[float, float], x_range: tuple[float, float],
                 embedding: str | Callable | None) -> None:
        self.n_tasks, self.k_shot, self.k_query = n_tasks, k_shot, k_query
        self.amplitude, self.phase, self.x_range, self.embedding = amplitude, phase, x_range, embedding

    def __call__(self, rng: np.random.Generator, step: int) -> TaskBatch:
        n = self.n_tasks
        a = rng.uniform(*self.amplitude, size=n)
        ph = rng.uniform(*self.phase, size=n)
        x = rng.uniform(*self.x_range, size=(n, self.k_shot))
        X = embed_inputs(x.ravel(), self.embedding).reshape(n, self.k_shot, -1)
        y = a[:, None] * np.sin(x + ph[:, None])
        info = {"amplitude": a, "phase": ph}
        if self.k_query is None:
            return TaskBatch(X, y, info=info)
        xq = rng.uniform(*self.x_range, size=(n, self.k_query))
        Xq = embed_inputs(xq.ravel(), self.embedding).reshape(n, self.k_query, -1)
        return TaskBatch(X, y, Xq, a[:, None] * np.sin(xq + ph[:, None]), info=info)

    def config(self) -> str:
        """Identifies the settings (stable across processes; part of checkpoint tags)."""
        emb = self.embedding
        emb = getattr(emb, "__qualname__", None) or repr(emb) if callable(emb) else repr(emb)
        return (f"sinusoid_sampler(n_tasks={self.n_tasks}, k_shot={self.k_shot}, k_query={self.k_query}, "
                f"amplitude={self.amplitude}, phase={self.phase}, x_range={self.x_range}, embedding={emb})")

    def __repr__(self) -> str:
        return self.config()


def sinusoid_sampler(n_tasks: int = 25, k_shot: int = 5, k_query: int | None = None, *,
                     amplitude: tuple[float, float] = (0.1, 5.0), phase: tuple[float, float] = (0.0, np.pi),
                     x_range: tuple[float, float] = (-5.0, 5.0),
                     embedding: str | Callable | None = None) -> SinusoidSampler:
    """Fresh sinusoid tasks every outer step, for ``MetaSL.fit(sampler=...)`` (Finn et al.'s protocol).

    Takes the arguments of :func:`sinusoid_tasks` except ``seed``: ``fit`` derives step l's
    Generator from its own ``seed`` and l, so a resumed run draws the same tasks. Each call
    returns one :class:`fastmeta.sl.TaskBatch` (vectorised draws, no per-task objects);
    the defaults are Finn et al.'s meta-batch of 25 tasks with K = 5.
    """
    sinusoid_tasks(1, k_shot, k_query, amplitude=amplitude, phase=phase, x_range=x_range,
                   embedding=embedding, seed=0)   # validate the settings now, not at step 0 of fit
    return SinusoidSampler(check_int(n_tasks, "n_tasks", "sinusoid_sampler", low=1), k_shot, k_query,
                           (float(amplitude[0]), float(amplitude[1])), (float(phase[0]), float(phase[1])),
                           (float(x_range[0]), float(x_range[1])), embedding)
