"""The one place where Numba options live.

``FASTMATH`` enables the LLVM fast-math flags that speed up reductions and
contractions, but deliberately *not* ``nnan``/``ninf``: with those, NaN and inf
checks compile to ``False`` and bad values pass silently.  Every kernel is
compiled with ``cache=True`` so that a second process (and CI after the first
test module) loads machine code from ``__pycache__`` instead of recompiling.

Reductions over long vectors are split into ``N_CHUNKS`` fixed chunks whose
partial results are combined serially in chunk order: the summation order, and
so every bit of the result, is the same for any number of threads.
"""
from __future__ import annotations

import functools

import numba

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
N_CHUNKS = 64

jit = functools.partial(numba.njit, cache=True, fastmath=FASTMATH, nogil=True)
"""Serial kernel."""

pjit = functools.partial(numba.njit, cache=True, fastmath=FASTMATH, nogil=True, parallel=True)
"""Parallel kernel (uses ``numba.prange``)."""
