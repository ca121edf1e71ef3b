"""Before/after timing of the meta-SL benchmark problems in CPU time (robust to a loaded machine).

Run from the root of each tree, alternating, and compare; one JSON line per run:

    for i in 1 2 3; do for tree in OLD NEW; do (cd $tree && python benchmarks/sl_before_after.py); done; done

(copy this file into the old tree first). CPU time (``time.process_time``) counts only the
cycles this process ran, so other jobs on the machine inflate it far less than wall time;
values are (median, min) seconds per call over 15 repeats.
"""
import os
import sys

sys.path.insert(0, os.getcwd())

import json  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.bench_sl import make_problem  # noqa: E402

out = {}
for kind, number in (("linear", 2000), ("relu", 20)):
    meta, theta = make_problem(kind)
    meta.value_and_grad(theta)
    meta.objective(theta)
    for name, fn in (("objective", meta.objective), ("gradient", meta.value_and_grad)):
        ts = np.array(timeit.repeat(lambda: fn(theta), number=number, repeat=15, timer=time.process_time)) / number
        out[f"{kind} {name}"] = (float(np.median(ts)), float(ts.min()))
print(json.dumps(out))
