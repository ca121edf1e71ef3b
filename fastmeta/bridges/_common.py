"""What both bridges share: checking the MetaRL they wrap, and the first-order message."""
from __future__ import annotations

from typing import Any

from ..rl import MetaRL

FIRST_ORDER = ("{name} is a first-order operation: its gradient dL/d(energy) is exact, but it cannot be "
               "differentiated again (grad of grad, Hessians, forward mode over the gradient). The "
               "theory measures of fastmeta stay in NumPy: call the MetaRL object directly for those.")


def check_meta(meta: Any, owner: str) -> MetaRL:
    """Return ``meta`` if it is a MetaRL, else raise a TypeError naming ``owner``."""
    if not isinstance(meta, MetaRL):
        raise TypeError(f"The 'meta' parameter of {owner} must be a fastmeta.MetaRL. "
                        f"Got {type(meta).__name__} instead.")
    return meta


def shape_error(name: str, owner: str, meta: MetaRL, got: tuple[int, ...]) -> ValueError:
    """The error for an energy of the wrong shape."""
    return ValueError(f"The '{name}' parameter of {owner} must have shape (S, A) = "
                      f"({meta.n_states}, {meta.n_actions}). Got shape {tuple(got)} instead.")
