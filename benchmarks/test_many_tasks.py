"""The many-tasks benchmark: its JAX baseline computes fastmeta's objective and gradient; hangs are reported.

Run: ``PYTHONPATH=. python -m pytest benchmarks/test_many_tasks.py -p no:cacheprovider``.
JAX runs in a child process with a timeout (JAX 0.10.2 sometimes never returns from
``block_until_ready`` on the test machine); a hang skips the comparison with that reason.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import run_many_tasks

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
import numpy as np, fastmeta
from benchmarks.baselines import problem_arrays
from benchmarks.baselines.jax_vmap_rl import JaxVmapMetaRL
tasks, phi = fastmeta.tasks.random_mdps(n_tasks=5, n_states=12, n_actions=3, k=3, gamma=0.9, n_features=4, seed=3)
tasks[4] = fastmeta.TabularMDP(tasks[0].P, tasks[4].r, 0.6, tasks[4].init)
theta = np.random.default_rng(0).normal(size=4)
L, g = JaxVmapMetaRL(problem_arrays(tasks, phi), tau=0.7, eta=1.4).value_and_grad(theta)
print(json.dumps(dict(L=L, g=list(map(float, g)))))
"""


def test_jax_vmap_baseline_matches_fastmeta():
    pytest.importorskip("jax")
    import fastmeta
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT))], capture_output=True, text=True,
                             timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("JAX hung (no answer within 300 s)")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    tasks, phi = fastmeta.tasks.random_mdps(n_tasks=5, n_states=12, n_actions=3, k=3, gamma=0.9, n_features=4, seed=3)
    tasks[4] = fastmeta.TabularMDP(tasks[0].P, tasks[4].r, 0.6, tasks[4].init)
    theta = np.random.default_rng(0).normal(size=4)
    L, g = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=0.7, eta=1.4).value_and_grad(theta)
    assert res["L"] == pytest.approx(L, rel=1e-10)
    np.testing.assert_allclose(res["g"], g, rtol=1e-8)


def test_a_child_that_does_not_finish_is_reported_as_hung():
    res = run_many_tasks.run_child(["scaling", "16", "1", "1", "1", "1", "1", "1", "1", "1"], timeout=0.01)
    assert res["status"].startswith("hung: killed after")


def test_render_reports_ratios_and_hangs():
    rows = [dict(kind="round", impl="fastmeta", times=[1e-3, 2e-3, 3e-3], cpu=[1e-3] * 3),
            dict(kind="round", impl="jax", times=[1e-2] * 3, cpu=[2e-2] * 3)]
    results = dict(table=[dict(args=["table", "16", "64", "1"], status="ok", rows=rows, load_before=(1.0, 0, 0),
                               load_after=(2.0, 0, 0)),
                          dict(args=["table", "64", "64", "1"], status="hung: killed after 5 s", rows=rows[:1],
                               load_before=(1.0, 0, 0), load_after=(1.0, 0, 0))])
    info = dict(date="d", git="g", cpu="c", cpu_count=2, numba="n", numba_threads=2, numpy="np", jax="j")
    text = run_many_tasks.render(results, info)
    assert "| 16 | 64 | 2 ms | 10 ms | 5.0 | >= 5 | 1 ms | 20 ms | 20.0 | 1.0 / 2.0 | ok |" in text
    assert "| 64 | 64 | 2 ms | - | - | >= 3 | - | - | - | 1.0 / 1.0 | hung: killed after 5 s |" in text
