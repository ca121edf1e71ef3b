"""Energies f(s, a) of the energy-based policies pi(a|s) ∝ exp(f(s, a) / tau).

The meta-RL core only ever asks an energy for f (``energy``) and for the
vector-Jacobian product ``energy_vjp(theta, g) = sum_{s,a} g(s,a) df(s,a)/dtheta``;
every parameterisation (linear here, the two-layer network in
:mod:`fastmeta.neural`) plugs into the same exact meta-gradient that way.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._kernels import rl as _k
from ._fingerprint import array_digest
from ._validation import as_float_array, check_computed_finite


@runtime_checkable
class Energy(Protocol):
    """What :class:`fastmeta.MetaRL` needs from a parameterised energy."""

    n_states: int
    n_actions: int
    n_params: int

    def energy(self, theta: np.ndarray) -> np.ndarray: ...

    def energy_vjp(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray: ...

    def init_params(self) -> np.ndarray: ...

    def project(self, theta: np.ndarray) -> np.ndarray: ...

    def check_params(self, theta: Any, owner: str) -> np.ndarray: ...


@runtime_checkable
class FeatureMap(Protocol):
    """Features computed on the fly (see :mod:`fastmeta.tasks.features`)."""

    n_states: int
    n_actions: int
    n_features: int

    def apply(self, theta: np.ndarray) -> np.ndarray: ...

    def apply_transpose(self, g: np.ndarray) -> np.ndarray: ...

    def fingerprint(self) -> str: ...


class LinearEnergy:
    """Linear energy f(s, a) = phi(s, a)^T theta of the paper's (3.2).

    Parameters
    ----------
    phi : array_like of shape (S, A, d) or FeatureMap
        Features: an array (stored once as C-contiguous float64, not copied if it
        already is) or a feature-map object that computes ``phi theta`` and its
        transpose on the fly (e.g. :class:`fastmeta.tasks.GridRBFFeatureMap`;
        no (S, A, d) storage, for very large state spaces).

    Attributes
    ----------
    phi : ndarray of shape (S, A, d) or FeatureMap
    n_states, n_actions, n_params : int
    """

    def __init__(self, phi: Any):
        if isinstance(phi, FeatureMap):
            self.phi = phi
            self.n_states, self.n_actions, self.n_params = phi.n_states, phi.n_actions, phi.n_features
            return
        self.phi = as_float_array(phi, "phi", "LinearEnergy", ndim=3, shape_text="(S, A, d)")
        self.n_states, self.n_actions, self.n_params = self.phi.shape
        if min(self.phi.shape) < 1:
            raise ValueError("The 'phi' parameter of LinearEnergy must have shape (S, A, d) with every "
                             f"dimension >= 1. Got shape {self.phi.shape} instead.")

    def energy(self, theta: np.ndarray) -> np.ndarray:
        """f(s, a) = phi(s, a)^T theta, shape (S, A)."""
        if isinstance(self.phi, np.ndarray):
            out = np.empty((self.n_states, self.n_actions))
            _k.linear_energy(self.phi, theta, out)
        else:  # a feature map computes phi theta without storing phi
            out = self.phi.apply(theta)
        check_computed_finite(out, "the energy f = phi^T theta", "LinearEnergy.energy",
                              f"The largest |theta| entry is {float(np.abs(theta).max()):.3g}; rescale theta or phi.")
        return out

    def energy_vjp(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray:
        """sum_{s,a} g(s, a) phi(s, a), shape (d,)."""
        if not isinstance(self.phi, np.ndarray):
            return self.phi.apply_transpose(g)
        out = np.empty(self.n_params)
        _k.linear_energy_vjp(self.phi, g, out)
        return out

    def init_params(self) -> np.ndarray:
        """Zeros: the uniform policy."""
        return np.zeros(self.n_params)

    def project(self, theta: np.ndarray) -> np.ndarray:
        """Identity: the linear parameterisation is unconstrained."""
        return theta

    def check_params(self, theta: Any, owner: str) -> np.ndarray:
        """Validate theta: finite, shape (d,)."""
        return as_float_array(theta, "theta", owner, shape=(self.n_params,))

    def tag(self) -> str:
        """A short description used to match checkpoints to problems."""
        if not isinstance(self.phi, np.ndarray):
            return f"{self!r}#{self.phi.fingerprint()}"
        return f"{self!r}#phi:{array_digest(self.phi)}"

    def __repr__(self) -> str:
        return f"LinearEnergy(S={self.n_states}, A={self.n_actions}, d={self.n_params})"
