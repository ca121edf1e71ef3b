"""pytest-benchmark version of benchmarks/bench_sl.py (run with --benchmark-enable or
--benchmark-only, since the project's pytest options skip benchmarks by default):

    cd /work/main && python -m pytest benchmarks/test_bench_sl.py --benchmark-only
"""
import pytest

from benchmarks.bench_sl import make_problem


@pytest.fixture(scope="module", params=["linear", "relu"])
def problem(request):
    meta, theta = make_problem(request.param)
    meta.value_and_grad(theta)
    meta.objective(theta)
    return request.param, meta, theta


def test_objective(benchmark, problem):
    kind, meta, theta = problem
    benchmark.group = f"meta-SL {kind}"
    benchmark(meta.objective, theta)


def test_exact_gradient(benchmark, problem):
    kind, meta, theta = problem
    benchmark.group = f"meta-SL {kind}"
    benchmark(meta.value_and_grad, theta)


@pytest.fixture(scope="module")
def finn_problem():
    """Finn et al.'s meta-batch: 25 sinusoid tasks, K = 5 + 5, the 1-40-40-1 MLP, all layers trained."""
    import numpy as np

    from fastmeta import MLP, MetaSL
    from fastmeta.tasks import sinusoid_sampler

    batch = sinusoid_sampler(25, k_shot=5, k_query=5)(np.random.default_rng(0), 0)
    meta = MetaSL(batch.tasks(), MLP(1, hidden=(40, 40), seed=0), eta=0.02)
    theta = meta.init_params()
    meta.value_and_grad(theta)
    return meta, theta, batch


def test_mlp_exact_gradient(benchmark, finn_problem):
    meta, theta, _ = finn_problem
    benchmark.group = "meta-SL MLP 1-40-40-1 (Finn)"
    benchmark(meta.value_and_grad, theta)


def test_mlp_pack_fresh_batch(benchmark, finn_problem):
    meta, _, batch = finn_problem
    benchmark.group = "meta-SL MLP 1-40-40-1 (Finn)"
    benchmark(meta.pack, batch)
