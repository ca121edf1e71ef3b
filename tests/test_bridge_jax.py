"""fastmeta.jax: the bridged objective and gradient against fastmeta, central differences
and the same two-layer network as NeuralEnergy; jit, vmap, float32, refused second order,
bad input, and the docs page's example."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import fastmeta  # noqa: E402
import fastmeta.jax  # noqa: E402

from .bridge_cases import central_difference, linear_problem, neural_problem, python_blocks, run_child  # noqa: E402


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def test_energy_gradient_matches_fastmeta_and_central_differences():
    meta, phi, theta = linear_problem()
    L = fastmeta.jax.meta_rl(meta)
    f = meta.model.energy(theta)
    value, grad = jax.value_and_grad(L)(jnp.asarray(f))
    want_value, want_grad = meta.value_and_grad_energy(f)
    assert value.dtype == jnp.float64 and grad.shape == f.shape
    assert float(value) == want_value
    np.testing.assert_array_equal(np.asarray(grad), want_grad)
    fd = central_difference(lambda x: float(L(jnp.asarray(x))), f)
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("jit", [False, True])
def test_linear_energy_in_jax_matches_metarl_value_and_grad(jit):
    meta, phi, theta = linear_problem(seed=3)
    L = fastmeta.jax.meta_rl(meta)
    Phi = jnp.asarray(phi)
    value_and_grad = jax.value_and_grad(lambda t: L(Phi @ t))
    if jit:
        value_and_grad = jax.jit(value_and_grad)
    value, grad = value_and_grad(jnp.asarray(theta))
    want_value, want_grad = meta.value_and_grad(theta)
    assert float(value) == pytest.approx(want_value, rel=1e-14)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-11, atol=1e-14)


def test_same_two_layer_network_as_neural_energy():
    meta, model, W = neural_problem()
    L = fastmeta.jax.meta_rl(meta)
    rows = jnp.asarray(model.phi.reshape(-1, model.net.in_dim))
    scale = jnp.asarray(model.b / np.sqrt(model.net.width))
    S, A = model.n_states, model.n_actions

    def loss(W_flat):  # u(x; W) = m^{-1/2} sum_r b_r ReLU(W_r^T x), as NeuralEnergy
        W_mat = W_flat.reshape(model.net.width, model.net.in_dim)
        return L((jax.nn.relu(rows @ W_mat.T) @ scale).reshape(S, A))

    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(W))
    want_value, want_grad = meta.value_and_grad(W)
    assert float(value) == pytest.approx(want_value, rel=1e-13)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-10, atol=1e-13)


def test_float32_in_float32_out_agrees_with_float64():
    meta, phi, theta = linear_problem()
    L = fastmeta.jax.meta_rl(meta)
    Phi32 = jnp.asarray(phi, dtype=jnp.float32)
    value, grad = jax.jit(jax.value_and_grad(lambda t: L(Phi32 @ t)))(jnp.asarray(theta, dtype=jnp.float32))
    assert value.dtype == jnp.float32 and grad.dtype == jnp.float32
    want_value, want_grad = meta.value_and_grad(theta)
    assert float(value) == pytest.approx(want_value, rel=1e-6)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-6 * np.abs(want_grad).max())


def test_float32_with_x64_disabled_in_a_fresh_process():
    code = """
import jax, jax.numpy as jnp, numpy as np, fastmeta, fastmeta.jax
assert not jax.config.jax_enable_x64
tasks, phi = fastmeta.tasks.random_mdps(n_tasks=2, n_states=8, n_actions=2, k=2, n_features=3, seed=0)
meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi))
L = fastmeta.jax.meta_rl(meta)
theta = np.array([0.3, -0.2, 0.5])
v, g = jax.jit(jax.value_and_grad(lambda t: L(jnp.asarray(phi) @ t)))(jnp.asarray(theta))
want_v, want_g = meta.value_and_grad(theta)
assert v.dtype == jnp.float32 and g.dtype == jnp.float32, (v.dtype, g.dtype)
assert abs(float(v) - want_v) < 1e-6 * abs(want_v), (v, want_v)
assert np.allclose(np.asarray(g), want_g, rtol=1e-4, atol=1e-7), (g, want_g)
print("ok")
"""
    out = run_child(code, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_vmap_evaluates_each_energy():
    meta, phi, theta = linear_problem()
    L = fastmeta.jax.meta_rl(meta)
    fs = np.stack([meta.model.energy(theta * c) for c in (0.0, 1.0, 2.0)])
    values, grads = jax.vmap(jax.value_and_grad(L))(jnp.asarray(fs))
    for f, value, grad in zip(fs, values, grads):
        want_value, want_grad = meta.value_and_grad_energy(f)
        assert float(value) == want_value
        np.testing.assert_array_equal(np.asarray(grad), want_grad)


def test_the_gradient_can_be_scaled_and_composed():
    """The cotangent multiplies fastmeta's dL/df: -2 L and L + sum f**2 are differentiated right."""
    meta, phi, theta = linear_problem()
    L = fastmeta.jax.meta_rl(meta)
    f = jnp.asarray(meta.model.energy(theta))
    _, dLdf = meta.value_and_grad_energy(np.asarray(f))
    np.testing.assert_allclose(np.asarray(jax.grad(lambda x: -2.0 * L(x))(f)), -2.0 * dLdf, rtol=1e-15)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda x: L(x) + jnp.sum(x ** 2))(f)), dLdf + 2 * np.asarray(f),
                               rtol=1e-14)


@pytest.mark.parametrize("second", [
    lambda loss: jax.grad(lambda t: jnp.sum(jax.grad(loss)(t))),
    lambda loss: jax.hessian(loss),
    lambda loss: jax.jacfwd(jax.grad(loss)),
])
def test_second_order_is_refused_with_a_clear_error(second):
    meta, phi, theta = linear_problem()
    L = fastmeta.jax.meta_rl(meta)
    loss = lambda t: L(jnp.asarray(phi) @ t)  # noqa: E731
    with pytest.raises(ValueError, match="fastmeta.jax.meta_rl is a first-order operation"):
        second(loss)(jnp.asarray(theta))


def test_bad_input():
    meta, phi, theta = linear_problem()
    L = fastmeta.jax.meta_rl(meta)
    with pytest.raises(ValueError, match=r"'f' parameter of fastmeta.jax.meta_rl must have shape \(S, A\) = "
                                         r"\(12, 3\). Got shape \(3, 12\) instead"):
        L(jnp.zeros((3, 12)))
    with pytest.raises(ValueError, match=r"Got shape \(12, 3, 1\)"):
        jax.jit(L)(jnp.zeros((12, 3, 1)))
    with pytest.raises(TypeError, match="floating dtype. Got dtype int"):
        L(jnp.zeros((12, 3), dtype=jnp.int32))
    with pytest.raises(TypeError, match="'meta' parameter of fastmeta.jax.meta_rl must be a fastmeta.MetaRL"):
        fastmeta.jax.meta_rl(meta.model)
    with pytest.raises(Exception, match="must contain only finite values"):
        jax.block_until_ready(L(jnp.full((12, 3), jnp.nan)))


def test_docs_example_runs():
    out = run_child(python_blocks("jax.md"), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "meta-objective" in out.stdout


def test_optax_example_runs():
    out = run_child("import runpy, sys; sys.argv = ['example', '--steps', '3']; "
                    "runpy.run_path('examples/jax_mlp_optax.py', run_name='__main__')", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "after 3 Adam steps" in out.stdout
