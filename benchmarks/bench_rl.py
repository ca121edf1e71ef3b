"""asv benchmarks of the exact meta-RL gradient (fastmeta.MetaRL) and of its baselines.

Problems are those of :mod:`benchmarks.rl_problems` (gridworld goal families, RL^2
random MDPs; A = 4, n = 4 tasks, d = 32, gamma = 0.99, theta = 0.5 N(0, I)).
Construction of MetaRL (the symbolic analysis) happens in ``setup`` and is not
timed; ``setup`` also calls the timed function once, so numba compilation (or
cache loading) and lazily built solver plans are outside the measurement.
``peakmem_*`` is asv's peak RSS of the benchmark process, i.e. including the
problem's P and phi and the setup's warm-up call.

Classes
-------
GridworldRL          fastmeta, gridworld 10^4, 10^5 states
RandomMDPRL          fastmeta, RL^2 random MDPs 10^5 states
ScipyBaselineRL      plain SciPy splu baseline, gridworld 10^4, 10^5
DenseRL              fastmeta vs jax.grad vs torch.autograd (dense), gridworld S = 100, 400, 1600
ColdStart            import fastmeta + first gradient in a fresh interpreter (numba cache warm / empty)
ManyTasksRL          fastmeta on many small RL^2 tasks (S, n) of the JAX side-by-side table, incl. n = 1..1024
SeparateKernelsRL    gridworld 316 x 316 with each task's kernel built separately (shared by content)
PerCallOverheadRL    one task with S = 10: gradient against validating theta alone

The 10^6-state class is in :mod:`benchmarks.bench_rl_huge`, opt-in (FASTMETA_BENCH_HUGE=1).
"""
from __future__ import annotations

from . import rl_problems as rp
from .baselines import problem_arrays, scipy_rl


def _ratio(meta, theta, repeats=3):
    tg = rp.median(rp.timeit(lambda: meta.gradient(theta), repeats))
    to = rp.median(rp.timeit(lambda: meta.objective(theta), repeats))
    return tg / to


class _FastmetaRL:
    """time/peakmem/track of one fastmeta problem; subclasses set the family and sizes."""

    family = "grid"
    number = 1           # one gradient per sample
    warmup_time = 0.0    # setup already warmed up
    param_names = ["n_states"]

    def setup(self, n_states):
        tasks, phi = rp.PROBLEMS[self.family](n_states)
        self.meta = rp.fastmeta_model(tasks, phi)
        self.theta = rp.theta0()
        self.meta.value_and_grad(self.theta)   # compile / load kernels, build lazy plans
        self.meta.objective(self.theta)

    def time_gradient(self, n_states):
        self.meta.gradient(self.theta)

    def time_objective(self, n_states):
        self.meta.objective(self.theta)

    def peakmem_gradient(self, n_states):
        self.meta.gradient(self.theta)

    def track_grad_over_objective(self, n_states):
        return _ratio(self.meta, self.theta)

    track_grad_over_objective.unit = "ratio"


class GridworldRL(_FastmetaRL):
    family = "grid"
    params = [10_000, 100_000]
    repeat = (3, 10, 30.0)
    rounds = 2
    timeout = 900


class RandomMDPRL(_FastmetaRL):
    family = "random"
    params = [100_000]
    repeat = (3, 10, 30.0)
    rounds = 2
    timeout = 900


class ScipyBaselineRL:
    """The plain SciPy baseline (splu, MMD_AT_PLUS_A) on the same gridworlds."""

    number = 1
    warmup_time = 0.0
    params = [10_000, 100_000]
    param_names = ["n_states"]
    repeat = (3, 10, 60.0)
    rounds = 1
    timeout = 1800

    def setup(self, n_states):
        tasks, phi = rp.gridworld(n_states)
        self.prob = problem_arrays(tasks, phi)
        self.theta = rp.theta0()
        scipy_rl.value_and_grad(self.theta, self.prob, rp.TAU, rp.ETA, method="splu")

    def time_gradient(self, n_states):
        scipy_rl.value_and_grad(self.theta, self.prob, rp.TAU, rp.ETA, method="splu")

    def time_objective(self, n_states):
        scipy_rl.objective(self.theta, self.prob, rp.TAU, rp.ETA, method="splu")

    def peakmem_gradient(self, n_states):
        scipy_rl.value_and_grad(self.theta, self.prob, rp.TAU, rp.ETA, method="splu")


class DenseRL:
    """fastmeta (solver "auto") beside dense reverse-mode autodiff in JAX and PyTorch.

    A framework that is not installed raises NotImplementedError in setup, which asv
    reports as skipped (n/a).
    """

    number = 1
    warmup_time = 0.0
    params = [["fastmeta", "scipy", "jax", "torch"], [100, 400, 1600]]
    param_names = ["impl", "n_states"]
    repeat = (5, 20, 20.0)
    rounds = 2
    timeout = 600

    def setup(self, impl, n_states):
        tasks, phi = rp.gridworld(n_states)
        self.theta = rp.theta0()
        if impl == "fastmeta":
            meta = rp.fastmeta_model(tasks, phi)
            self.grad, self.obj = meta.gradient, meta.objective
        elif impl == "scipy":
            prob = problem_arrays(tasks, phi)
            self.grad = lambda th: scipy_rl.gradient(th, prob, rp.TAU, rp.ETA)
            self.obj = lambda th: scipy_rl.objective(th, prob, rp.TAU, rp.ETA)
        else:
            try:
                if impl == "jax":
                    from .baselines.jax_rl import JaxMetaRL as Model
                else:
                    from .baselines.torch_rl import TorchMetaRL as Model
            except ImportError:  # pragma: no cover - the module itself imports nothing
                raise NotImplementedError(impl)
            try:
                model = Model(problem_arrays(tasks, phi), tau=rp.TAU, eta=rp.ETA)
            except ImportError:
                raise NotImplementedError(f"{impl} is not installed")
            self.grad, self.obj = model.gradient, model.objective
        self.grad(self.theta)   # compile (numba / jax.jit) outside the timing
        self.obj(self.theta)

    def time_gradient(self, impl, n_states):
        self.grad(self.theta)

    def time_objective(self, impl, n_states):
        self.obj(self.theta)

    def peakmem_gradient(self, impl, n_states):
        self.grad(self.theta)


_COLD_START = """
import os, shutil, sys, tempfile
sys.path.insert(0, {root!r})
cache = tempfile.mkdtemp(prefix="fastmeta-bench-numba-") if {fresh_cache} else None
if cache:
    os.environ["NUMBA_CACHE_DIR"] = cache
import numpy as np
import fastmeta
tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=4, size=100, slip=0.1, gamma=0.99, features="rbf",
                                            n_features=32, seed=0)
meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=1.0, eta=1.0)
meta.gradient(0.5 * np.random.default_rng(0).standard_normal(32))
if cache:
    shutil.rmtree(cache, ignore_errors=True)
"""


def _fastmeta_root():
    """The directory holding the fastmeta package this benchmark process imports."""
    import os

    import fastmeta
    return os.path.dirname(os.path.dirname(os.path.abspath(fastmeta.__file__)))


class ColdStart:
    """``import fastmeta`` + build a 10^4-state gridworld + first gradient, in a new interpreter.

    "cached": numba's on-disk cache as left by earlier runs (what a user sees from the
    second session on); "empty_cache": NUMBA_CACHE_DIR points to a new empty directory
    (numba looks there before ``__pycache__``), so every kernel used is compiled, as on the
    first use after an install. The subprocess imports the same fastmeta as this process.
    """

    params = ["cached", "empty_cache"]
    param_names = ["numba_cache"]
    repeat = (3, 5, 120.0)
    rounds = 1
    timeout = 600

    def timeraw_import_and_first_gradient(self, numba_cache):
        return _COLD_START.format(root=_fastmeta_root(), fresh_cache=numba_cache == "empty_cache")


def _many_random(n_states, n_tasks):
    """RL^2 random MDPs of the many-tasks issue: k = 4, A = 4, d = 16, gamma = 0.99, theta = 0.5 N(0, I)."""
    import numpy as np

    import fastmeta
    tasks, phi = fastmeta.tasks.random_mdps(n_tasks=n_tasks, n_states=n_states, n_actions=4, k=4, gamma=0.99,
                                            n_features=16, seed=0)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi))
    return meta, 0.5 * np.random.default_rng(0).standard_normal(16)


class ManyTasksRL:
    """value_and_grad of n small tasks with their own kernels (the batched path up to 300 states).

    The JAX side of the comparison runs in ``benchmarks/run_many_tasks.py`` (in a child
    process with a timeout: JAX 0.10.2 may hang in block_until_ready on the test machine).
    """

    number = 1
    warmup_time = 0.0
    params = [[16, 64, 100, 300, 1000], [1, 8, 64, 256, 1024]]
    param_names = ["n_states", "n_tasks"]
    repeat = (3, 10, 20.0)
    rounds = 1
    timeout = 900

    def setup(self, n_states, n_tasks):
        if n_states * n_tasks > 300_000:
            raise NotImplementedError("too long for the suite; see run_many_tasks.py")
        self.meta, self.theta = _many_random(n_states, n_tasks)
        self.meta.value_and_grad(self.theta)

    def time_value_and_grad(self, n_states, n_tasks):
        self.meta.value_and_grad(self.theta)

    def peakmem_value_and_grad(self, n_states, n_tasks):
        self.meta.value_and_grad(self.theta)


class ManyTasksLayoutRL:
    """The batched path's two layouts side by side: tasks by lanes (blocks of 16 in lockstep) or one by one.

    By lanes is the default from 8 tasks of at most 32 states (``fastmeta._rl_batch``);
    the ratio of the two is the gain of computing the tasks in lockstep.
    """

    number = 1
    warmup_time = 0.0
    params = [[16, 32], [8, 64, 1024], ["lanes", "one by one"]]
    param_names = ["n_states", "n_tasks", "layout"]
    repeat = (3, 10, 20.0)
    rounds = 1

    def setup(self, n_states, n_tasks, layout):
        from fastmeta import _rl_batch
        saved = _rl_batch.LANES_MIN_TASKS
        _rl_batch.LANES_MIN_TASKS = 1 if layout == "lanes" else 10**9
        try:
            self.meta, self.theta = _many_random(n_states, n_tasks)
        finally:
            _rl_batch.LANES_MIN_TASKS = saved
        assert self.meta._units[0].lanes == (layout == "lanes")
        self.meta.value_and_grad(self.theta)

    def time_value_and_grad(self, n_states, n_tasks, layout):
        self.meta.value_and_grad(self.theta)


class SeparateKernelsRL(_FastmetaRL):
    """Gridworld 10^5 with every task's kernel a separate (equal) matrix: found equal by fingerprint."""

    family = "grid"
    params = [100_000]
    repeat = (3, 5, 60.0)
    rounds = 1
    timeout = 900

    def setup(self, n_states):
        import fastmeta
        tasks, phi = rp.gridworld(n_states)
        tasks = [fastmeta.TabularMDP(t.P.copy(), t.r, t.gamma, t.init) for t in tasks]
        self.meta = rp.fastmeta_model(tasks, phi)
        self.theta = rp.theta0()
        self.meta.value_and_grad(self.theta)
        self.meta.objective(self.theta)


class PerCallOverheadRL:
    """One task, S = 10: the whole gradient next to the validation of theta it starts with."""

    number = 100
    warmup_time = 0.0
    repeat = (5, 20, 10.0)

    def setup(self):
        self.meta, self.theta = _many_random(10, 1)
        self.meta.gradient(self.theta)

    def time_gradient(self):
        self.meta.gradient(self.theta)

    def time_check_theta(self):
        self.meta.model.check_params(self.theta, "MetaRL")
