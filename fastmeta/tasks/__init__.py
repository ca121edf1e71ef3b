"""Task families: generators of TabularMDP and SLTask lists, feature maps, and samplers of fresh tasks."""
from .features import GridRBFFeatureMap, OneHotFeatureMap, grid_rbf_features, one_hot_features, random_features
from .gridworld import gridworld_goals, gridworld_kernel
# Reading a Gymnasium table needs no Gymnasium import; frozenlake_family imports it when called.
from .gymnasium import from_gymnasium, frozenlake_family
from .linear_gaussian import linear_gaussian_sampler, linear_gaussian_tasks
from .random_mdp import random_kernel, random_mdps
from .sampler import TaskSampler
from .sinusoid import embed_inputs, fourier_embedding, sinusoid_sampler, sinusoid_tasks

__all__ = [
    "GridRBFFeatureMap",
    "OneHotFeatureMap",
    "from_gymnasium",
    "frozenlake_family",
    "grid_rbf_features",
    "gridworld_goals",
    "gridworld_kernel",
    "embed_inputs",
    "fourier_embedding",
    "linear_gaussian_sampler",
    "linear_gaussian_tasks",
    "sinusoid_sampler",
    "sinusoid_tasks",
    "TaskSampler",
    "one_hot_features",
    "random_features",
    "random_kernel",
    "random_mdps",
]
