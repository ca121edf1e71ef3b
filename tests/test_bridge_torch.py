"""fastmeta.torch: the bridged objective and gradient against fastmeta, central differences
and the same two-layer network as NeuralEnergy; float32, refused second order, devices,
bad input, and the docs page's example."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastmeta  # noqa: E402
import fastmeta.torch  # noqa: E402

from .bridge_cases import central_difference, linear_problem, neural_problem, python_blocks, run_child  # noqa: E402


def test_energy_gradient_matches_fastmeta_and_central_differences():
    meta, phi, theta = linear_problem()
    L = fastmeta.torch.meta_rl(meta)
    f = torch.tensor(meta.model.energy(theta), requires_grad=True)
    value = L(f)
    value.backward()
    want_value, want_grad = meta.value_and_grad_energy(f.detach().numpy())
    assert value.dtype == torch.float64 and value.shape == ()
    assert value.item() == want_value
    np.testing.assert_array_equal(f.grad.numpy(), want_grad)
    fd = central_difference(lambda x: float(L(torch.from_numpy(x))), f.detach().numpy())
    np.testing.assert_allclose(f.grad.numpy(), fd, rtol=1e-6, atol=1e-9)


def test_linear_energy_in_torch_matches_metarl_value_and_grad():
    meta, phi, theta = linear_problem(seed=3)
    L = fastmeta.torch.meta_rl(meta)
    t = torch.tensor(theta, requires_grad=True)
    value = L(torch.from_numpy(phi) @ t)
    (grad,) = torch.autograd.grad(value, t)
    want_value, want_grad = meta.value_and_grad(theta)
    assert value.item() == pytest.approx(want_value, rel=1e-14)
    np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-11, atol=1e-14)


def test_same_two_layer_network_as_neural_energy():
    meta, model, W = neural_problem()
    L = fastmeta.torch.meta_rl(meta)
    m, in_dim = model.net.width, model.net.in_dim
    layer = torch.nn.Linear(in_dim, m, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W.reshape(m, in_dim)))
    rows = torch.from_numpy(model.phi.reshape(-1, in_dim))
    scale = torch.from_numpy(model.b / np.sqrt(m))
    value = L((torch.relu(layer(rows)) @ scale).reshape(model.n_states, model.n_actions))
    value.backward()
    want_value, want_grad = meta.value_and_grad(W)
    assert value.item() == pytest.approx(want_value, rel=1e-13)
    np.testing.assert_allclose(layer.weight.grad.numpy().ravel(), want_grad, rtol=1e-10, atol=1e-13)


def test_float32_in_float32_out_agrees_with_float64():
    meta, phi, theta = linear_problem()
    L = fastmeta.torch.meta_rl(meta)
    t = torch.tensor(theta, dtype=torch.float32, requires_grad=True)
    value = L(torch.from_numpy(phi).float() @ t)
    value.backward()
    assert value.dtype == torch.float32 and t.grad.dtype == torch.float32
    want_value, want_grad = meta.value_and_grad(theta)
    assert value.item() == pytest.approx(want_value, rel=1e-6)
    np.testing.assert_allclose(t.grad.numpy(), want_grad, rtol=1e-4, atol=1e-6 * np.abs(want_grad).max())


def test_the_gradient_can_be_scaled_and_composed():
    meta, phi, theta = linear_problem()
    L = fastmeta.torch.meta_rl(meta)
    f = torch.tensor(meta.model.energy(theta), requires_grad=True)
    _, dLdf = meta.value_and_grad_energy(f.detach().numpy())
    (g,) = torch.autograd.grad(-2.0 * L(f) + (f ** 2).sum(), f)
    np.testing.assert_allclose(g.numpy(), -2.0 * dLdf + 2 * f.detach().numpy(), rtol=1e-14)


def test_first_order_use_of_create_graph_works_and_second_order_is_refused():
    meta, phi, theta = linear_problem()
    L = fastmeta.torch.meta_rl(meta)
    t = torch.tensor(theta, requires_grad=True)
    (g,) = torch.autograd.grad(L(torch.from_numpy(phi) @ t), t, create_graph=True)
    np.testing.assert_allclose(g.detach().numpy(), meta.gradient(theta), rtol=1e-11)  # the gradient itself is fine
    with pytest.raises(RuntimeError, match="fastmeta.torch.meta_rl is a first-order operation"):
        g.sum().backward()
    with pytest.raises(RuntimeError, match="first-order operation"):
        torch.autograd.functional.hessian(lambda x: L(torch.from_numpy(phi) @ x), torch.tensor(theta))


def test_bad_input():
    meta, phi, theta = linear_problem()
    L = fastmeta.torch.meta_rl(meta)
    with pytest.raises(ValueError, match=r"'f' parameter of fastmeta.torch.meta_rl must have shape \(S, A\) = "
                                         r"\(12, 3\). Got shape \(36,\) instead"):
        L(torch.zeros(36))
    with pytest.raises(TypeError, match="floating-point tensor. Got dtype torch.int64"):
        L(torch.zeros((12, 3), dtype=torch.int64))
    with pytest.raises(TypeError, match="must be a torch.Tensor. Got ndarray"):
        L(np.zeros((12, 3)))
    with pytest.raises(ValueError, match="must be on the CPU .* Got a tensor on meta"):
        L(torch.zeros((12, 3), device="meta"))
    with pytest.raises(ValueError, match="must contain only finite values"):
        L(torch.full((12, 3), float("inf")))
    with pytest.raises(TypeError, match="'meta' parameter of fastmeta.torch.meta_rl must be a fastmeta.MetaRL"):
        fastmeta.torch.meta_rl("not a problem")


def test_docs_example_runs():
    out = run_child(python_blocks("torch.md"), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "meta-objective" in out.stdout


def test_adam_example_runs():
    out = run_child("import runpy, sys; sys.argv = ['example', '--steps', '3']; "
                    "runpy.run_path('examples/torch_mlp_adam.py', run_name='__main__')", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "after 3 Adam steps" in out.stdout


def test_call_keeping_torch_threads_undoes_a_changed_thread_count():
    from fastmeta.bridges.torch import call_keeping_torch_threads
    before = torch.get_num_threads()

    def changes_threads(x):
        torch.set_num_threads(before + 1)
        return 2 * x

    try:
        assert call_keeping_torch_threads(changes_threads, 21) == 42
        assert torch.get_num_threads() == before
        with pytest.raises(ZeroDivisionError):  # kept on the way out of an error too
            call_keeping_torch_threads(lambda: (torch.set_num_threads(before + 1), 1 / 0))
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("wait_policy", ["", "PASSIVE"])
def test_fastmeta_keeps_the_users_torch_thread_count_in_a_fresh_process(wait_policy):
    # Numba's OpenMP layer sets the OpenMP thread count PyTorch reads when it starts its pool; with
    # OMP_NUM_THREADS=1 that turned PyTorch's one thread into two. Without a wait policy the pool
    # starts when fastmeta is imported; with one, in the bridge's first call. Fresh process each.
    code = (
        "import os\n"
        "os.environ.update(OMP_NUM_THREADS='1', NUMBA_NUM_THREADS='2', NUMBA_THREADING_LAYER='omp')\n"
        f"os.environ.update({{'OMP_WAIT_POLICY': {wait_policy!r}}} if {wait_policy!r} else {{}})\n"
        "import torch, fastmeta, fastmeta.torch\n"
        "assert torch.get_num_threads() == 1\n"
        "tasks, phi = fastmeta.tasks.random_mdps(n_tasks=8, n_states=60, n_actions=4, k=4, gamma=0.9,"
        " n_features=4, seed=0)\n"
        "L = fastmeta.torch.meta_rl(fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), solver='batched'))\n"
        "f = torch.zeros(60, 4, dtype=torch.float64, requires_grad=True)\n"
        "L(f).backward()\n"
        "print(torch.get_num_threads())\n")
    out = run_child(code, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"
