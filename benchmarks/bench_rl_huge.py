"""asv: the 10^6-state gridworld (about 3.5 GB and tens of seconds per gradient). Opt-in.

Kept out of every default selection, ``asv run --quick`` included: ``setup`` raises
NotImplementedError (asv reports the benchmark as skipped, n/a) unless the
environment has ``FASTMETA_BENCH_HUGE=1``:

    FASTMETA_BENCH_HUGE=1 ASV_PYTHONPATH=$PWD asv run --python=same --bench bench_rl_huge

``FASTMETA_BENCH_HUGE_SIDE=60`` shrinks the grid to 60 x 60 for a smoke test.
"""
from __future__ import annotations

import os

from .bench_rl import _FastmetaRL, _ratio


class GridworldRLHuge(_FastmetaRL):
    """10^6 states: P + phi take about 2 GB and one gradient tens of seconds."""

    family = "grid"
    params = [1_000_000]
    repeat = (1, 3, 120.0)
    rounds = 1
    timeout = 3600

    def setup(self, n_states):
        if os.environ.get("FASTMETA_BENCH_HUGE") != "1":
            raise NotImplementedError("set FASTMETA_BENCH_HUGE=1 to run the 10^6-state benchmarks")
        super().setup(n_states)

    def track_grad_over_objective(self, n_states):
        return _ratio(self.meta, self.theta, repeats=1)

    track_grad_over_objective.unit = "ratio"
