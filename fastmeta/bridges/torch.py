"""fastmeta's meta-RL objective as a PyTorch autograd operation on the energy.

``meta_rl(meta)`` returns ``L(f)`` for an energy tensor f of shape (S, A) that any
PyTorch code may produce (an ``nn.Module``, a plain tensor expression). It is a
``torch.autograd.Function``: the forward pass calls fastmeta once and saves its exact
dL/df, the backward pass multiplies it by the incoming gradient. So ``loss.backward()``
and ``torch.autograd.grad`` of a user's loss built on ``L`` work, and one forward and
backward costs one fastmeta gradient (two factorisations per task), whatever the network.

The computation runs in float64 inside fastmeta on the CPU; results are cast back to
the dtype of f. The operation is first order: differentiating its gradient again
(``create_graph=True`` followed by another backward through it) raises a RuntimeError,
because the saved dL/df is a constant to autograd and a second derivative through it
would be silently wrong.

PyTorch's intra-op thread count is kept as it was before each fastmeta call: Numba's
OpenMP layer sets the OpenMP thread count when its thread pool starts, and PyTorch reads
the same setting, so without this the ``OMP_NUM_THREADS=1`` of a user would be undone by
the first fastmeta call (measured: the LU of the following PyTorch step then ran on both
cores of a busy 2-core machine, about 40x slower, see ``bench_results/bridges.md``).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..rl import MetaRL
from ._common import FIRST_ORDER, check_meta, shape_error

_NAME = "fastmeta.torch.meta_rl"


def call_keeping_torch_threads(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, then PyTorch's intra-op thread count set back to its value before the call.

    Numba's OpenMP layer changes the OpenMP thread count that PyTorch also reads (see the
    module docstring); setting it back costs about a microsecond and only happens when it changed.
    """
    threads = torch.get_num_threads()
    try:
        return fn(*args)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class _FirstOrderGuard(torch.autograd.Function):
    """Identity on the gradient that fastmeta's backward returns; differentiating it raises.

    It takes the energy as an extra input so that, under ``create_graph=True``, the
    returned gradient is connected to f and a second backward reaches this node
    (instead of treating the gradient as a constant, which would be wrong).
    """

    @staticmethod
    def forward(ctx: Any, f: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.clone()

    @staticmethod
    def backward(ctx: Any, *unused: torch.Tensor) -> tuple[None, None]:
        raise RuntimeError(FIRST_ORDER.format(name=_NAME))


class MetaRLFunction(torch.autograd.Function):
    """``MetaRLFunction.apply(f, meta)``: L(f) and, in backward, fastmeta's exact dL/df.

    Use :func:`meta_rl`, which checks its arguments first.
    """

    @staticmethod
    def forward(ctx: Any, f: torch.Tensor, meta: MetaRL) -> torch.Tensor:
        value, grad = call_keeping_torch_threads(meta.value_and_grad_energy, f.detach().to(torch.float64).numpy())
        ctx.save_for_backward(f, torch.from_numpy(grad).to(f.dtype))
        return torch.tensor(value, dtype=f.dtype)

    @staticmethod
    def backward(ctx: Any, cotangent: torch.Tensor) -> tuple[torch.Tensor, None]:
        f, grad = ctx.saved_tensors
        with torch.no_grad():
            out = cotangent * grad
        if torch.is_grad_enabled():  # create_graph=True: make a second backward fail loudly
            out = _FirstOrderGuard.apply(f, out)
        return out, None


def meta_rl(meta: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a :class:`fastmeta.MetaRL` as a differentiable PyTorch function of the energy.

    Parameters
    ----------
    meta : fastmeta.MetaRL
        The meta-RL problem (tasks, tau, eta, solver). Its ``model`` is not used: the
        energy comes from the PyTorch side. The tasks are constants: the energy is the
        operation's only input, so it is the only thing gradients flow to.

    Returns
    -------
    callable
        ``L(f) -> 0-dim tensor`` for a CPU tensor f of shape (S, A) and a floating
        dtype: the meta-objective (3.4), to be maximised (minimise ``-L(f)``).

    Raises
    ------
    TypeError
        If ``meta`` is not a MetaRL, or f is not a floating-point tensor.
    ValueError
        If f is not on the CPU, does not have shape (S, A), or holds NaN or inf.
    RuntimeError
        On differentiating the gradient again.

    Examples
    --------
    >>> import torch, fastmeta, fastmeta.torch
    >>> tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=4, size=6, seed=0)
    >>> L = fastmeta.torch.meta_rl(fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi)))
    >>> theta = torch.zeros(phi.shape[2], dtype=torch.float64, requires_grad=True)
    >>> L(torch.from_numpy(phi) @ theta).backward()
    """
    meta = check_meta(meta, _NAME)

    def L(f: torch.Tensor) -> torch.Tensor:
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"The 'f' parameter of {_NAME} must be a torch.Tensor. "
                            f"Got {type(f).__name__} instead.")
        if not f.is_floating_point():
            raise TypeError(f"The 'f' parameter of {_NAME} must be a floating-point tensor. "
                            f"Got dtype {f.dtype} instead.")
        if f.device.type != "cpu":
            raise ValueError(f"The 'f' parameter of {_NAME} must be on the CPU (fastmeta runs there; "
                             f"move it with f.cpu()). Got a tensor on {f.device} instead.")
        if tuple(f.shape) != (meta.n_states, meta.n_actions):
            raise shape_error("f", _NAME, meta, tuple(f.shape))
        return MetaRLFunction.apply(f, meta)

    L.__doc__ = f"The meta-objective L(f) of {meta!r} for an energy f of shape ({meta.n_states}, {meta.n_actions})."
    return L
