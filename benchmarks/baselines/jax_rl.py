"""The meta-RL objective written densely in JAX and differentiated by ``jax.grad``.

What an ML researcher would write: dense (S*A, S) kernels, M = I - gamma P_pi as a
dense matrix, ``jnp.linalg.solve`` for the two policy evaluations per task, float64,
the whole value-and-gradient ``jax.jit``-compiled, reverse-mode autodiff for the
meta-gradient.  Dense, so meant for S up to about 2000 (P alone is 32 S^2 bytes per
distinct kernel).

JAX is imported only when :class:`JaxMetaRL` is built (``ImportError`` otherwise), and
it switches on ``jax_enable_x64`` globally, as float64 is needed to agree with fastmeta.
"""
from __future__ import annotations

import numpy as np


def available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


class JaxMetaRL:
    """``objective``, ``gradient``, ``value_and_grad`` of one problem (numpy in, numpy out).

    ``prob`` is :func:`benchmarks.baselines.problem_arrays` output. Construction
    densifies the kernels and moves everything to the device; the first call compiles.
    """

    def __init__(self, prob, tau=1.0, eta=1.0):
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        phi = prob["phi"]
        S, A, d = phi.shape
        kernels, index = [], []
        seen = {}
        for P in prob["P"]:
            if id(P) not in seen:
                seen[id(P)] = len(kernels)
                kernels.append(jnp.asarray(P.toarray().reshape(S, A, S)))
            index.append(seen[id(P)])
        Phi = jnp.asarray(phi.reshape(S * A, d))
        rs = [jnp.asarray(r) for r in prob["r"]]
        inits = [jnp.asarray(z) for z in prob["init"]]
        gammas = list(prob["gamma"])
        eye = jnp.eye(S)
        n = len(rs)

        def loss(theta):
            f = (Phi @ theta).reshape(S, A)
            logits = f / tau
            pi = jax.nn.softmax(logits, axis=1)
            total = 0.0
            for j in range(n):
                P3, r, g, zeta = kernels[index[j]], rs[j], gammas[j], inits[j]
                M = eye - g * jnp.einsum("sa,sat->st", pi, P3)
                V = (1 - g) * jnp.linalg.solve(M, jnp.sum(pi * r, axis=1))
                Q = (1 - g) * r + g * jnp.einsum("sat,t->sa", P3, V)
                pi_i = jax.nn.softmax(logits + eta * Q, axis=1)
                M_i = eye - g * jnp.einsum("sa,sat->st", pi_i, P3)
                V_i = (1 - g) * jnp.linalg.solve(M_i, jnp.sum(pi_i * r, axis=1))
                total = total + zeta @ V_i
            return total / n

        self._loss = jax.jit(loss)
        self._vg = jax.jit(jax.value_and_grad(loss))
        self._grad = jax.jit(jax.grad(loss))

    def objective(self, theta):
        return float(self._loss(np.asarray(theta, dtype=np.float64)).block_until_ready())

    def gradient(self, theta):
        return np.asarray(self._grad(np.asarray(theta, dtype=np.float64)).block_until_ready())

    def value_and_grad(self, theta):
        v, g = self._vg(np.asarray(theta, dtype=np.float64))
        return float(v), np.asarray(g.block_until_ready())


def version() -> str:
    import jax
    import jaxlib
    return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}"
