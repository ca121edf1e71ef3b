"""The meta-RL objective for many small tasks in JAX: ``jit(value_and_grad)`` of a ``vmap`` over tasks.

What a researcher with many small MDPs would write: the tasks' dense kernels stacked
into one (n, S, A, S) array, per-task r, gamma and zeta stacked too, one task's J_i
written with ``jnp.linalg.solve`` and mapped over the task axis with ``jax.vmap``,
float64, reverse-mode autodiff through the solves. Dense: meant for S up to about
1000 (n * S^2 * A doubles for the kernels).

JAX is imported only when :class:`JaxVmapMetaRL` is built; it switches on
``jax_enable_x64`` globally.
"""
from __future__ import annotations

import numpy as np


class JaxVmapMetaRL:
    """``objective`` and ``value_and_grad`` of one problem (numpy in, numpy out); the first call compiles.

    ``prob`` is :func:`benchmarks.baselines.problem_arrays` output.
    """

    def __init__(self, prob, tau=1.0, eta=1.0):
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        phi = prob["phi"]
        S, A, d = phi.shape
        P = jnp.asarray(np.stack([K.toarray().reshape(S, A, S) for K in prob["P"]]))
        R = jnp.asarray(np.stack(prob["r"]))
        G = jnp.asarray(np.array(prob["gamma"]))
        Z = jnp.asarray(np.stack(prob["init"]))
        Phi = jnp.asarray(phi.reshape(S * A, d))
        eye = jnp.eye(S)

        def task_value(logits, P3, r, g, zeta):
            pi = jax.nn.softmax(logits, axis=1)
            M = eye - g * jnp.einsum("sa,sat->st", pi, P3)
            V = (1 - g) * jnp.linalg.solve(M, jnp.sum(pi * r, axis=1))
            Q = (1 - g) * r + g * jnp.einsum("sat,t->sa", P3, V)
            pi_i = jax.nn.softmax(logits + eta * Q, axis=1)
            M_i = eye - g * jnp.einsum("sa,sat->st", pi_i, P3)
            V_i = (1 - g) * jnp.linalg.solve(M_i, jnp.sum(pi_i * r, axis=1))
            return zeta @ V_i

        per_task = jax.vmap(task_value, in_axes=(None, 0, 0, 0, 0))

        def loss(theta):
            logits = (Phi @ theta).reshape(S, A) / tau
            return jnp.mean(per_task(logits, P, R, G, Z))

        self._loss = jax.jit(loss)
        self._vg = jax.jit(jax.value_and_grad(loss))

    def objective(self, theta):
        return float(self._loss(np.asarray(theta, dtype=np.float64)).block_until_ready())

    def value_and_grad(self, theta):
        v, g = self._vg(np.asarray(theta, dtype=np.float64))
        return float(v), np.asarray(g.block_until_ready())
