"""Predictors for meta-SL: the protocol and the multi-layer network."""
from .mlp import MLP
from .protocol import Predictor

__all__ = ["MLP", "Predictor"]
