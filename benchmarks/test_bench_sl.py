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
