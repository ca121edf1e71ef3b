"""fastmeta: exact, fast model-agnostic meta-learning (MAML).

Meta-RL on finite MDPs with energy-based policies and one KL-regularised PPO
inner step, and meta-SL with one inner gradient step, after Wang, Cai, Yang and
Wang, "On the Global Optimality of Model-Agnostic Meta-Learning" (ICML 2020).
Gradients are exact (the corrected Proposition 3.2; see ``docs/formulas.md``)
and computed in adjoint form, so their cost does not grow with the number of
parameters.
"""
from __future__ import annotations

from . import planning, tasks, visitation
from ._optim import FitResult, load_checkpoint
from .energy import Energy, LinearEnergy
from .linalg import SolverError
from .linear_model import LinearModel
from .mdp import TabularMDP
from .neural import NeuralEnergy, TwoLayerReLU
from .rl import MetaRL, TaskTrace
from .sl import MetaSL, SLTask

__version__ = "0.1.0"

__all__ = [
    "Energy",
    "FitResult",
    "LinearEnergy",
    "LinearModel",
    "MetaRL",
    "MetaSL",
    "NeuralEnergy",
    "SLTask",
    "SolverError",
    "TabularMDP",
    "TaskTrace",
    "TwoLayerReLU",
    "load_checkpoint",
    "planning",
    "tasks",
    "visitation",
]
