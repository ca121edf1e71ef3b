"""fastmeta's meta-RL objective as a JAX function of the energy, with its exact gradient.

``meta_rl(meta)`` returns ``L(f)`` for an energy array f of shape (S, A) that any JAX
code may produce (a Flax or Equinox network, a plain ``jnp`` expression). Its
derivative is a ``jax.custom_vjp`` whose forward pass calls fastmeta once through
``jax.pure_callback`` and keeps fastmeta's dL/df as the residual; the backward pass
is a multiplication by the cotangent. So ``jax.grad``, ``jax.value_and_grad`` and
``jax.jit`` of a user's loss built on ``L`` work, and one forward-and-backward costs
one fastmeta gradient (two factorisations per task), whatever the network.

The computation runs in float64 inside fastmeta; results are cast back to the dtype
of f, so float32 networks (JAX's default without ``jax_enable_x64``) work unchanged.

The operation is first order: differentiating the gradient again (grad of grad,
``jax.hessian``, ``jax.jvp`` over ``jax.grad``) raises a ValueError, because the
residual dL/df is a constant to JAX and a second derivative through it would be
silently wrong.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._common import FIRST_ORDER, check_meta, shape_error

_NAME = "fastmeta.jax.meta_rl"


def meta_rl(meta: Any) -> Callable[[Any], jax.Array]:
    """Wrap a :class:`fastmeta.MetaRL` as a differentiable JAX function of the energy.

    Parameters
    ----------
    meta : fastmeta.MetaRL
        The meta-RL problem (tasks, tau, eta, solver). Its ``model`` is not used: the
        energy comes from the JAX side.

    Returns
    -------
    callable
        ``L(f) -> scalar`` for f of shape (S, A) and a floating dtype: the
        meta-objective (3.4), to be maximised. Differentiable once by reverse mode
        (``jax.grad``, ``jax.value_and_grad``, ``jax.vjp``), traceable by ``jax.jit``
        and ``jax.vmap`` (a batch is evaluated one energy at a time).

    Raises
    ------
    TypeError
        If ``meta`` is not a MetaRL, or f is not of a floating dtype (at trace time).
    ValueError
        If f does not have shape (S, A) (at trace time), or on differentiating twice.
        Non-finite energies are rejected by fastmeta inside the callback; JAX
        re-raises that error as a ``JaxRuntimeError`` carrying fastmeta's message.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, fastmeta, fastmeta.jax
    >>> tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=4, size=6, seed=0)
    >>> L = fastmeta.jax.meta_rl(fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi)))
    >>> theta = jnp.zeros(phi.shape[2])
    >>> value, grad = jax.value_and_grad(lambda t: L(jnp.asarray(phi) @ t))(theta)
    """
    meta = check_meta(meta, _NAME)
    S, A = meta.n_states, meta.n_actions

    def host(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value, grad = meta.value_and_grad_energy(f)
        return np.asarray(value, dtype=f.dtype), grad.astype(f.dtype, copy=False)

    @jax.custom_jvp
    def value_and_grad_energy(f: jax.Array) -> tuple[jax.Array, jax.Array]:
        shapes = (jax.ShapeDtypeStruct((), f.dtype), jax.ShapeDtypeStruct((S, A), f.dtype))
        return jax.pure_callback(host, shapes, f, vmap_method="sequential")

    @value_and_grad_energy.defjvp
    def _refuse_second_order(primals: Any, tangents: Any) -> Any:
        # Reached only when the forward pass itself is differentiated, i.e. when the
        # gradient of L is being differentiated (L's own derivative is the custom_vjp).
        raise ValueError(FIRST_ORDER.format(name=_NAME))

    @jax.custom_vjp
    def objective(f: jax.Array) -> jax.Array:
        return value_and_grad_energy(f)[0]

    def forward(f: jax.Array) -> tuple[jax.Array, jax.Array]:
        value, grad = value_and_grad_energy(f)
        return value, grad

    def backward(grad: jax.Array, cotangent: jax.Array) -> tuple[jax.Array]:
        return (cotangent * grad,)

    objective.defvjp(forward, backward)

    def L(f: Any) -> jax.Array:
        f = jnp.asarray(f)
        if not jnp.issubdtype(f.dtype, jnp.floating):
            raise TypeError(f"The 'f' parameter of {_NAME} must be an array of a floating dtype. "
                            f"Got dtype {f.dtype} instead.")
        if f.shape != (S, A):
            raise shape_error("f", _NAME, meta, f.shape)
        return objective(f)

    L.__doc__ = f"The meta-objective L(f) of {meta!r} for an energy f of shape ({S}, {A})."
    return L
