"""Passive waiting for Numba's OpenMP workers only, without touching the process environment.

GNU OpenMP lets idle workers spin after every parallel region. When other processes hold
the cores, a spinning worker steals the time slice the busy one needs, and fastmeta's
parallel kernels were measured many times slower (``benchmarks/threading_study.py``,
``bench_results/threading.md``); ``OMP_WAIT_POLICY=PASSIVE`` removes that at no measurable
cost here. libgomp reads the variable once, when it is loaded. So at import, if the user
has not chosen a policy and Numba's thread pool has not started yet, fastmeta sets the
variable, starts Numba's pool (which loads its OpenMP runtime and reads it), and removes
the variable again: the user's environment, child processes and any OpenMP runtime
loaded later by another library see what they would have seen without fastmeta.

Limits: a library that shares the very same ``libgomp.so.1`` that Numba loaded shares its
policy; if that runtime was already loaded before fastmeta, the setting has no effect.
An explicit ``OMP_WAIT_POLICY`` (any value) is left alone and wins.
"""
from __future__ import annotations

import os
import sys


def start_numba_threads_with_passive_wait() -> bool:
    """Start Numba's thread pool with passive OpenMP waiting; True if this call set the policy."""
    from numba.np.ufunc import parallel

    # Private Numba names (stable since 0.4x); without them, leave everything as it is.
    launch = getattr(parallel, "_launch_threads", None)
    if "OMP_WAIT_POLICY" in os.environ or launch is None or getattr(parallel, "_is_initialized", True):
        return False
    # Starting the pool sets the OpenMP thread count, which PyTorch reads too when it was imported
    # first (one OpenMP runtime serves both): keep the user's PyTorch setting (not importing torch).
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if hasattr(torch, "get_num_threads") else None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        launch()
    finally:
        del os.environ["OMP_WAIT_POLICY"]
        if torch_threads is not None and torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    return True
