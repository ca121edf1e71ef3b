"""JAX bridge: fastmeta's exact meta-RL gradient inside ``jax.grad`` and ``jax.jit``.

See :func:`meta_rl` and ``docs/jax.md``. Importing this module imports JAX (the
``jax`` extra); ``import fastmeta`` does not.
"""
from __future__ import annotations

from fastmeta.bridges.jax import meta_rl

__all__ = ["meta_rl"]
