"""A shared counter from which the threads of a parallel loop take items one at a time.

``prange`` splits its range among the threads in equal contiguous parts fixed in
advance. When another job holds a core, the thread that runs there finishes its part
late and the others wait for it at the end of the loop: on the 2-core test machine a
parallel batch was then slower than a serial one. Threads that take the next item
from a shared counter instead share the work by how fast each actually runs. Which
thread computes an item never changes what is computed (each item writes only its
own outputs), so results stay bit-identical for any number of threads.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def take_next(typingctx, counter):
    """The value of ``counter[0]`` (an int64 array), incremented by one atomically.

    Every call in every thread gets a different value: 0, 1, 2, ... in some order.
    Numba's analyses do not see this write: call it in a function the parallel loop
    calls with the counter (as the batch kernels do), not in the ``prange`` body itself,
    where a later read of the counter in the same function was folded to its initial
    value.
    """
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [context.get_constant(types.intp, 0)])
        return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "seq_cst")

    return types.int64(counter), codegen
