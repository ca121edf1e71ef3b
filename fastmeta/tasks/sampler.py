"""Fresh tasks every step: a task family as a sampler for ``MetaSL.fit`` and ``MetaRL.fit``."""
from __future__ import annotations

from typing import Any, Callable


class TaskSampler:
    """Draws a new batch of tasks from a family at every outer step.

    ``fit(sampler=...)`` calls ``sampler(rng, step)`` with
    ``rng = numpy.random.default_rng([seed, step])``, so step l's tasks are a pure
    function of (seed, l): a resumed run draws exactly what the uninterrupted run drew,
    and nothing but the step counter has to be checkpointed.

    Parameters
    ----------
    family : callable
        A task family of :mod:`fastmeta.tasks` (or any function taking ``seed=`` a
        numpy Generator) returning a list of tasks, or a (tasks, features) pair, whose
        features are then dropped: the model keeps the features it was built with.
    **settings
        Keyword arguments of ``family`` other than ``seed`` (e.g. ``n_tasks=25``).

    Examples
    --------
    >>> from fastmeta.tasks import TaskSampler, sinusoid_tasks
    >>> sampler = TaskSampler(sinusoid_tasks, n_tasks=25, k_shot=5, k_query=5, embedding="affine")
    >>> import numpy as np
    >>> len(sampler(np.random.default_rng([0, 7]), 7))
    25
    """

    def __init__(self, family: Callable[..., Any], /, **settings: Any) -> None:
        if not callable(family):
            raise TypeError(f"The 'family' parameter of TaskSampler must be a callable task family. "
                            f"Got {type(family).__name__} instead.")
        if "seed" in settings:
            raise ValueError("The settings of TaskSampler must not include 'seed': fit derives each step's "
                             "Generator from its own seed and the step. Got seed=" f"{settings['seed']!r}.")
        self.family = family
        self.settings = dict(settings)

    def __call__(self, rng: Any, step: int) -> list:
        out = self.family(seed=rng, **self.settings)
        return list(out[0]) if isinstance(out, tuple) else list(out)

    def config(self) -> str:
        """Identifies the family and its settings (part of checkpoint tags; stable across processes)."""
        parts = []
        for key in sorted(self.settings):
            value = self.settings[key]
            # A callable's repr holds its address, which changes between processes.
            text = getattr(value, "__qualname__", None) if callable(value) else None
            parts.append(f"{key}={text if text is not None else repr(value)}")
        return f"{getattr(self.family, '__qualname__', type(self.family).__name__)}({', '.join(parts)})"

    def __repr__(self) -> str:
        return f"TaskSampler({self.config()})"
