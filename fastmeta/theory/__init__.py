"""The paper's theory as a tool: meta-visitation measures and the optimality-gap bounds.

- :func:`meta_visitation`, :func:`rl_gap`: Definition 3.3 and Theorem 3.5 (meta-RL);
- :func:`sl_gap`: Theorem 4.4 (meta-SL);
- :func:`best_found`: a multi-start search for a comparator (the best found, not a
  certified optimum).

See docs/theory.md for a walk-through and docs/formulas.md for where the printed theorem
needs the corrected gradient.
"""
from .rl_bound import RLGapReport, explicit_joint_measure, meta_visitation, rl_gap
from .search import SearchResult, best_found
from .sl_bound import SLGapReport, exact_minimiser, sl_gap

__all__ = ["RLGapReport", "SLGapReport", "SearchResult", "best_found", "exact_minimiser", "explicit_joint_measure",
           "meta_visitation", "rl_gap", "sl_gap"]
