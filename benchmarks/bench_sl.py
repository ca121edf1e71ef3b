"""asv benchmarks of meta-SL: one exact meta-gradient and one objective, n = 32 tasks with
10 support + 10 query samples each, for the linear model (d = 64) and the two-layer ReLU
network (in_dim = 8, width m = 1024). Targets: linear <= 0.1 ms, network <= 5 ms, and
gradient / objective <= 3."""
import numpy as np

from fastmeta.linear_model import LinearModel
from fastmeta.neural import TwoLayerReLU
from fastmeta.sl import MetaSL, SLTask
from fastmeta.tasks.sinusoid import sinusoid_tasks


def make_problem(kind, n_tasks=32, n_support=10, n_query=10, seed=0):
    """The benchmark problem: ("linear", d = 64) or ("relu", in_dim = 8, m = 1024)."""
    rng = np.random.default_rng(seed)
    p = 64 if kind == "linear" else 8
    tasks = [SLTask(rng.normal(size=(n_support, p)), rng.normal(size=n_support),
                    rng.normal(size=(n_query, p)), rng.normal(size=n_query)) for _ in range(n_tasks)]
    model = LinearModel() if kind == "linear" else TwoLayerReLU(8, 1024, seed=seed)
    meta = MetaSL(tasks, model, loss="squared", eta=0.1)
    theta = meta.init_params() + 0.1 * rng.normal(size=meta.n_params)
    return meta, theta


class MetaGradient:
    params = (["linear", "relu"], ["squared", "logistic"])
    param_names = ["model", "loss"]

    def setup(self, kind, loss):
        meta, self.theta = make_problem(kind)
        if loss == "logistic":
            tasks = [SLTask(t.X, (t.y > 0).astype(float), t.X_query, (t.y_query > 0).astype(float))
                     for t in meta.tasks]
            meta = MetaSL(tasks, meta.model, loss="logistic", eta=0.1)
        self.meta = meta
        self.fo = MetaSL(meta.tasks, meta.model, loss=loss, eta=0.1, first_order=True)
        meta.value_and_grad(self.theta)      # compile / load from cache outside the timing
        self.fo.value_and_grad(self.theta)

    def time_objective(self, kind, loss):
        self.meta.objective(self.theta)

    def time_value_and_grad(self, kind, loss):
        self.meta.value_and_grad(self.theta)

    def time_first_order_grad(self, kind, loss):
        self.fo.value_and_grad(self.theta)

    def peakmem_value_and_grad(self, kind, loss):
        self.meta.value_and_grad(self.theta)

    def track_grad_over_objective(self, kind, loss):
        """Ratio of the exact-gradient time to the objective time (target <= 3)."""
        import timeit
        t_obj = min(timeit.repeat(lambda: self.meta.objective(self.theta), number=20, repeat=5))
        t_grad = min(timeit.repeat(lambda: self.meta.value_and_grad(self.theta), number=20, repeat=5))
        return t_grad / t_obj

    track_grad_over_objective.unit = "ratio"


class Construction:
    """Validating and packing the tasks (paid once per MetaSL, not per call)."""

    def setup(self):
        self.tasks = sinusoid_tasks(1000, 10, 10, embedding="affine", seed=0)
        self.net = TwoLayerReLU(2, 64, seed=0)

    def time_pack_1000_tasks(self):
        MetaSL(self.tasks, self.net, eta=0.1)


class Kernels:
    """The network's forward, jvp and vjp over 10^4 rows (the NeuralEnergy path)."""

    def setup(self):
        rng = np.random.default_rng(0)
        self.net = TwoLayerReLU(8, 256, seed=0)
        self.W = self.net.init_params()
        self.X = rng.normal(size=(10_000, 8))
        self.v = rng.normal(size=self.net.n_params)
        self.g = rng.normal(size=10_000)
        self.net.vjp(self.W, self.X, self.g)
        self.net.jvp(self.W, self.X, self.v)

    def time_forward(self):
        self.net.forward(self.W, self.X)

    def time_jvp(self):
        self.net.jvp(self.W, self.X, self.v)

    def time_vjp(self):
        self.net.vjp(self.W, self.X, self.g)


class TimerawColdImport:
    """Cold start: import and first gradient (kernels loaded from the numba cache)."""

    def timeraw_first_gradient(self):
        # asv starts a bare interpreter: point it at the fastmeta this process imports.
        import os

        import fastmeta

        root = os.path.dirname(os.path.dirname(os.path.abspath(fastmeta.__file__)))
        return f"""
import sys
sys.path.insert(0, {root!r})
import numpy as np
from fastmeta.neural import TwoLayerReLU
from fastmeta.sl import MetaSL, SLTask
rng = np.random.default_rng(0)
tasks = [SLTask(rng.normal(size=(10, 8)), rng.normal(size=10)) for _ in range(2)]
meta = MetaSL(tasks, TwoLayerReLU(8, 64, seed=0), eta=0.1)
meta.value_and_grad(meta.init_params())
"""
