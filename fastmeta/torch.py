"""PyTorch bridge: fastmeta's exact meta-RL gradient inside autograd.

See :func:`meta_rl` and ``docs/torch.md``. Importing this module imports PyTorch
(the ``torch`` extra); ``import fastmeta`` does not.
"""
from __future__ import annotations

from fastmeta.bridges.torch import MetaRLFunction, meta_rl

__all__ = ["MetaRLFunction", "meta_rl"]
