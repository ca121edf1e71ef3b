"""One BLAS thread for the small dense LU solves, only while they run.

OpenBLAS and MKL split even a 100 x 100 LU over every core. On a machine whose cores
are busy with other work, each call then waits for descheduled BLAS threads: a
gradient at S = 100 was measured 3-10x slower than with one BLAS thread (see
``benchmarks/threading_study.py``). fastmeta only factorises densely when the chain
is small, where one thread is also the fastest choice on an idle machine, so the dense
LU calls run inside :func:`single_threaded_blas`. The user's own setting applies
everywhere else: the limit is set on entry and the previous thread counts are
restored on exit, and nothing is changed at import time.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

_lock = threading.Lock()
_state: dict[str, Any] = {"controller": None, "depth": 0, "limiter": None}


def _controller() -> Any:
    # Built once: scanning the loaded libraries costs about a millisecond. fastmeta
    # imports SciPy (and so its BLAS) before any dense solve, so the scan finds it.
    if _state["controller"] is None:
        from threadpoolctl import ThreadpoolController

        _state["controller"] = ThreadpoolController()
    return _state["controller"]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the body with one BLAS thread; restore the previous counts afterwards.

    Re-entrant and safe when several threads enter at once (fastmeta's kernels release
    the GIL): the first to enter sets the limit and the last to leave restores it, so
    one thread's exit never lifts the limit under another, and the counts the user
    had are what is left behind.
    """
    with _lock:
        if _state["depth"] == 0:
            _state["limiter"] = _controller().limit(limits=1, user_api="blas")
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                _state["limiter"].restore_original_limits()
                _state["limiter"] = None
