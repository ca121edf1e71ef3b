"""Task families: generators of TabularMDP lists and feature maps."""
from .features import grid_rbf_features, one_hot_features, random_features
from .gridworld import gridworld_goals, gridworld_kernel
from .random_mdp import random_kernel, random_mdps

__all__ = [
    "grid_rbf_features",
    "gridworld_goals",
    "gridworld_kernel",
    "one_hot_features",
    "random_features",
    "random_kernel",
    "random_mdps",
]
