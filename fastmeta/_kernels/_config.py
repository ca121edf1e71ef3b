"""The one place where Numba options live.

``FASTMATH`` enables some LLVM fast-math flags, but deliberately *not*
``nnan``/``ninf`` (with those, NaN and inf checks compile to ``False`` and bad values
pass silently) and *not* ``reassoc``/``contract``: with those two, LLVM may reorder a
sum or fuse a multiply-add differently in two compilations of the same kernel, and
it does. Numba links a copy of every callee into its caller's machine code; a process
that compiled the callees itself calls its own separately compiled versions, one that
loaded the caller from the disk cache calls the copies inside it, and the two were
optimised in different contexts. With reordering allowed they rounded differently
(MetaSL with an MLP, batched MetaRL: last-bit differences between a cold and a warm
process), so a one-process result and a Dask worker's, or a run and its resume in a
new process, would not agree bit for bit. Without them every compilation performs
the written operations in the written order (docs/scaling.md has the measured cost).
Every kernel is
compiled with ``cache=True`` so that a second process (and CI after the first
test module) loads machine code from ``__pycache__`` instead of recompiling.
Numba checks a cached kernel against its own source file only: after editing a
function of another module that it calls or inlines (``rl_lanes.linear_lanes_serial``
inlines ``rl_batched.linear_epilogue``), a developer must delete the ``__pycache__``
directories (or point ``NUMBA_CACHE_DIR`` at an empty one), or the stale machine code
runs. An install replaces every source file, which invalidates every cached kernel.

Reductions over long vectors are split into ``N_CHUNKS`` fixed chunks whose
partial results are combined serially in chunk order: the summation order, and
so every bit of the result, is the same for any number of threads.
"""
from __future__ import annotations

import functools
import os
import types

import numba
import numpy as np
from numba.core import config as numba_config
from numba.core.compiler_lock import global_compiler_lock

FASTMATH = {"nsz", "arcp", "afn"}
N_CHUNKS = 64

ERROR_MODEL = "numpy"
"""Said explicitly on every kernel: a kernel that leaves it unset inherits it from the caller that
compiles it first (``prange`` bodies are compiled with "numpy"), and the disk cache keys machine
code by signature only, so the same kernel could run as different code (different bits) in a
process that compiled it fresh and in one that loaded it from the cache."""

jit = functools.partial(numba.njit, cache=True, fastmath=FASTMATH, nogil=True, error_model=ERROR_MODEL)
"""Serial kernel."""

exact_division_jit = functools.partial(numba.njit, cache=True, fastmath=FASTMATH - {"arcp"}, nogil=True,
                                       error_model=ERROR_MODEL)
"""Serial kernel whose divisions are divisions: with ``arcp`` LLVM may replace ``x / c`` in a loop
by ``x * (1 / c)``, which rounds differently from NumPy's division on the Python side."""

pjit = functools.partial(numba.njit, cache=True, fastmath=FASTMATH, nogil=True, parallel=True,
                         error_model=ERROR_MODEL)
"""Parallel kernel (uses ``numba.prange``)."""


PARALLEL_MIN_SIZE = 50_000
"""Below this many array elements a parallel launch costs more than it saves."""

BATCH_PARALLEL_MIN_WORK = 200_000
"""A batch runs in parallel over tasks when n_tasks * S^3 reaches this (about 0.2 ms of serial work).

Measured at load 1.2 on the 2-core machine, one batch of RL^2 tasks (k = 4, A = 4),
serial / parallel: S = 16, n = 64 (n S^3 = 2.6e5): 492 / 254 us; S = 64, n = 64:
4.6 / 2.4 ms; S = 100, n = 8: 1.6 / 0.83 ms. Under a load of 15 parallel gained nothing
(other jobs held the second core), which is why the bar is not lower still."""


@pjit
def _first_launch(x):  # pragma: no cover - numba
    for i in numba.prange(x.shape[0]):
        x[i] = 0.0


def threading_layer_is_threadsafe() -> bool:
    """Whether parallel kernels may run from several Python threads at once.

    The ``omp`` and ``tbb`` layers allow it. ``workqueue`` (what Numba falls back to
    without an OpenMP or TBB runtime, as with pip wheels on macOS) terminates the process
    when two threads launch parallel kernels at the same time. Numba picks the layer at
    the first parallel launch, so one tiny kernel runs first if none has.
    """
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run in this process yet
        _first_launch(np.zeros(1))
        layer = numba.threading_layer()
    return layer in ("omp", "tbb")


class SizedKernel:
    """One kernel body compiled twice, serial and parallel; each call picks by size.

    Waking a thread pool costs tens of microseconds, far more than a small
    problem's whole kernel, and on an oversubscribed machine spinning OpenMP
    workers make it much worse; so calls whose largest array argument has fewer
    than ``PARALLEL_MIN_SIZE`` elements run the serial version. Both versions sum
    in the same fixed chunk order (``prange`` is ``range`` in the serial one), so
    the choice never changes a result. Each version is compiled lazily, on first
    use, and cached on disk under its own name.
    """

    def __init__(self, fn):
        self.serial = jit(fn)
        twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                                  fn.__defaults__, fn.__closure__)
        twin.__qualname__ = fn.__qualname__ + "_parallel"
        twin.__module__ = fn.__module__
        self.parallel = pjit(twin)
        self.__doc__, self.__name__ = fn.__doc__, fn.__name__
        functools.update_wrapper(self, fn)

    def for_size(self, size: int):
        """The version a call runs whose largest array argument has ``size`` elements (callers
        on a hot path pick it once, with the rule every call uses)."""
        return self.parallel if size >= PARALLEL_MIN_SIZE else self.serial

    def __call__(self, *args):
        size = max((a.size for a in args if hasattr(a, "size") and hasattr(a, "shape")), default=0)
        return self.for_size(size)(*args)


def vectorized(kernel):
    """Compile ``kernel`` (a dispatcher or a :class:`SizedKernel`) with LLVM's SLP vectorizer.

    Numba leaves the superword-level-parallelism pass off (``NUMBA_SLP_VECTORIZE=0``), so
    the K column lines of a block kernel (``s0 -= a * X[j, 0]`` ... ``s3 -= a * X[j, 3]``)
    compile to K scalar multiplies and subtracts. The SLP pass turns them into one
    4-wide load, multiply and subtract. It keeps the IEEE semantics of every lane
    (nothing is reordered or fused without ``reassoc``/``contract``, see the top of this
    module), so the results are bit for bit those of the scalar code, as the tests check
    against a scalar compilation of each kernel. 10^6 gradient: about 0.87 of the time
    (alternating processes, solver study round 9).

    Numba reads the setting when it optimises a function, so it is switched on only
    around this kernel's compilations. They hold Numba's global compiler lock, so no other
    function (a user's, in another thread) compiles while it is on. Machine code loaded
    from the disk cache was compiled this way, too.
    """
    if isinstance(kernel, SizedKernel):
        vectorized(kernel.serial)
        vectorized(kernel.parallel)
        return kernel
    compile_scalar = kernel.compile

    def compile_vectorized(sig):
        with global_compiler_lock:
            saved = numba_config.SLP_VECTORIZE
            numba_config.SLP_VECTORIZE = 1
            try:
                return compile_scalar(sig)
            finally:
                numba_config.SLP_VECTORIZE = saved

    kernel.compile = compile_vectorized
    return kernel


def sized(fn) -> SizedKernel:
    """Decorator: compile ``fn`` serial and parallel, dispatch by problem size."""
    return SizedKernel(fn)


def needs_compiling(*kernels) -> bool:
    """True when some of ``kernels`` has machine code neither in memory nor in the disk cache.

    Used only to tell the user why the first call is slow; any doubt (numba
    internals changed) answers False, so no false "compiling" notice is shown.
    """
    for kernel in kernels:
        dispatcher = getattr(kernel, "serial", kernel)
        if dispatcher.signatures:
            continue
        try:
            index = dispatcher._cache._cache_file._index_path
        except AttributeError:
            return False
        if not os.path.exists(index):
            return True
    return False
