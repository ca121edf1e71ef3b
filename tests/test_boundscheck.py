"""The kernels under NUMBA_BOUNDSCHECK=1: every array index checked, on the suite's small cases.

A kernel that reads or writes out of bounds raises IndexError there instead of
corrupting memory. The run compiles everything afresh into its own temporary
NUMBA_CACHE_DIR, so bounds-checked machine code never reaches the normal cache.
"""
import os
import subprocess
import sys

import pytest

# Small cases that together reach every compiled kernel: the RL core, the pattern
# kernels with shared and per-task kernels, the three solvers, meta-SL (linear and
# ReLU) and the saturation/overflow paths.
SELECTION = [
    "tests/test_rl_kernels.py",
    "tests/test_mdp.py",
    "tests/test_robustness.py",
    "tests/test_properties.py::test_the_three_solvers_agree_and_dense_equals_sparse_input",
    "tests/test_rl.py",
    "tests/test_sl.py",
    "tests/test_neural.py",
    "tests/test_visitation.py",
]
# The demos and the thread-count comparisons repeat kernels already covered, at larger sizes.
DESELECT = "not demo and not thread and not bitwise"


@pytest.mark.boundscheck
def test_small_cases_pass_with_bounds_checking(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "-m", "not slow and not boundscheck", "-k", DESELECT, *SELECTION],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "IndexError" not in proc.stdout
