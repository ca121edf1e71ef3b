"""Problems and helpers shared by the JAX and PyTorch bridge tests."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import fastmeta

ROOT = Path(__file__).resolve().parents[1]


def linear_problem(seed: int = 0):
    """Random MDPs, each task with its own kernel, a linear energy, and a parameter point."""
    tasks, phi = fastmeta.tasks.random_mdps(n_tasks=3, n_states=12, n_actions=3, k=3, gamma=0.9,
                                            n_features=5, seed=seed)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=0.7, eta=1.5)
    theta = np.random.default_rng(seed + 1).normal(size=5)
    return meta, phi, theta


def neural_problem(seed: int = 0):
    """A NeuralEnergy problem; the bridges rebuild the same network from its W0 and b."""
    tasks, phi = fastmeta.tasks.random_mdps(n_tasks=2, n_states=10, n_actions=3, k=3, gamma=0.9,
                                            n_features=4, seed=seed)
    model = fastmeta.NeuralEnergy(phi, width=16, seed=seed)
    meta = fastmeta.MetaRL(tasks, model, tau=1.0, eta=2.0)
    W = model.init_params() + 0.1 * np.random.default_rng(seed + 2).normal(size=model.n_params)
    return meta, model, W


def central_difference(fun, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of a scalar function of an array, entry by entry."""
    g = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        g[idx] = (fun(x + e) - fun(x - e)) / (2 * eps)
    return g


def python_blocks(doc: str) -> str:
    """The ```python blocks of a docs page, joined into one script."""
    text = (ROOT / "docs" / doc).read_text()
    return "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))


def run_child(code: str, timeout: float) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter from the repository root, killed after ``timeout`` s.

    JAX's CPU runtime can wedge at random in block_until_ready on this kind of machine
    (see docs/jax.md); a child process turns such a hang into a failure instead of a
    suite that never ends.
    """
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
