"""fastmeta: exact, fast model-agnostic meta-learning (MAML).

Meta-RL on finite MDPs with energy-based policies and one KL-regularised PPO
inner step, and meta-SL with one inner gradient step, after Wang, Cai, Yang and
Wang, "On the Global Optimality of Model-Agnostic Meta-Learning" (ICML 2020).
Gradients are exact (the corrected Proposition 3.2; see ``docs/formulas.md``)
and computed in adjoint form, so their cost does not grow with the number of
parameters.
"""
from __future__ import annotations

from ._threads import start_numba_threads_with_passive_wait

start_numba_threads_with_passive_wait()

from . import planning, tasks, visitation  # noqa: E402
from ._optim import FitResult, load_checkpoint  # noqa: E402
from .energy import Energy, LinearEnergy  # noqa: E402
from .linalg import SolverError  # noqa: E402
from .linear_model import LinearModel  # noqa: E402
from .mdp import TabularMDP  # noqa: E402
from .models import MLP, Predictor  # noqa: E402
from .neural import NeuralEnergy, TwoLayerReLU  # noqa: E402
from .rl import MetaRL, TaskTrace  # noqa: E402
from .sl import MetaSL, SLTask, TaskBatch  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Energy",
    "FitResult",
    "LinearEnergy",
    "LinearModel",
    "MetaRL",
    "MLP",
    "MetaSL",
    "NeuralEnergy",
    "Predictor",
    "SLTask",
    "SolverError",
    "TabularMDP",
    "TaskBatch",
    "TaskTrace",
    "TwoLayerReLU",
    "load_checkpoint",
    "planning",
    "tasks",
    "visitation",
]
