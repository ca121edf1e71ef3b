"""Fresh tasks every step: fit(sampler=...) for MetaSL and MetaRL, the exact resume of the
sampler's stream, TaskBatch packing, and the samplers of the task families."""
import numpy as np
import pytest

from fastmeta import LinearEnergy, LinearModel, MetaRL, MetaSL
from fastmeta.models import MLP
from fastmeta.sl import TaskBatch
from fastmeta.tasks import (TaskSampler, gridworld_goals, linear_gaussian_sampler, sinusoid_sampler,
                            sinusoid_tasks)


class Recording:
    """Wraps a sampler and remembers which (step, first input) it served."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __call__(self, rng, step):
        out = self.inner(rng, step)
        self.seen.append((step, float(out.X[0, 0, 0])))
        return out

    def config(self):
        return self.inner.config()


def _sl_problem():
    sampler = sinusoid_sampler(6, k_shot=4, k_query=3)
    model = MLP(1, (8, 8), seed=0)
    meta = MetaSL(sampler(np.random.default_rng(0), 0).tasks(), model, eta=0.02)
    return sampler, meta


def test_sampled_fit_uses_step_seeded_batches_and_resumes_bit_for_bit(tmp_path):
    sampler, meta = _sl_problem()
    rec = Recording(sampler)
    full = meta.fit(steps=8, lr=0.01, optimizer="adam", sampler=rec, seed=3, progress=False)
    assert [s for s, _ in rec.seen] == list(range(9))   # 8 updates, then L at theta_8 on batch 8
    for step, x0 in rec.seen:      # step l's tasks are a function of (seed, l) only
        assert x0 == sampler(np.random.default_rng([3, step]), step).X[0, 0, 0]
    # the history holds each step's own batch's objective (step 0: at theta0)
    batch = sampler(np.random.default_rng([3, 0]), 0)
    assert full.objective[0] == meta.value_and_grad_on(meta.init_params(), meta.pack(batch))[0]
    ckpt = tmp_path / "c.npz"
    part = meta.fit(steps=4, lr=0.01, optimizer="adam", sampler=sampler, seed=3, checkpoint=ckpt, progress=False)
    np.testing.assert_array_equal(part.objective, full.objective[:5])
    rest = meta.fit(steps=8, lr=0.01, optimizer="adam", sampler=sampler, seed=3, checkpoint=ckpt, resume=True,
                    progress=False)
    assert np.array_equal(rest.theta, full.theta)
    assert np.array_equal(rest.objective, full.objective) and np.array_equal(rest.grad_norm, full.grad_norm)
    with pytest.raises(ValueError, match="different problem or settings"):
        meta.fit(steps=9, lr=0.01, optimizer="adam", sampler=sampler, seed=4, checkpoint=ckpt, resume=True,
                 progress=False)


def test_task_batch_packs_like_the_task_list():
    sampler, meta = _sl_problem()
    batch = sampler(np.random.default_rng(5), 0)
    theta = meta.init_params() + 0.1
    v0, g0 = MetaSL(batch.tasks(), meta.model, eta=0.02).value_and_grad(theta)
    v1, g1 = meta.value_and_grad_on(theta, meta.pack(batch))
    assert v0 == v1 and np.array_equal(g0, g1)
    # without a query set the support set is the query set
    plain = TaskBatch(batch.X, batch.y)
    v2, _ = MetaSL(plain.tasks(), meta.model, eta=0.02).value_and_grad(theta)
    assert v2 == meta.value_and_grad_on(theta, meta.pack(plain))[0]


def test_linear_model_samplers_prepare_features_once_per_batch():
    model = LinearModel("affine")
    # a family whose mean task is far from theta = 0, so meta-training has something to learn
    family = dict(n_support=4, n_query=4, in_dim=3, model=model, beta0=[1.0, -2.0, 0.5, 1.0], cov=0.1)
    sampler = linear_gaussian_sampler(5, **family)
    tasks = sampler(np.random.default_rng([1, 2]), 2)
    assert len(tasks) == 5 and tasks[0].X.shape == (4, 3)
    meta = MetaSL(tasks, model, eta=0.1)
    res = meta.fit(steps=30, lr=0.1, sampler=sampler, seed=1, progress=False)
    held_out = meta.pack(linear_gaussian_sampler(200, **family)(np.random.default_rng(99), 0))
    before = meta.value_and_grad_on(meta.init_params(), held_out)[0]
    after = meta.value_and_grad_on(res.theta, held_out)[0]
    assert after < 0.2 * before


def test_sampled_meta_rl_fit_resumes_bit_for_bit(tmp_path):
    tasks, phi = gridworld_goals(n_tasks=2, size=4, seed=0)
    meta = MetaRL(tasks, LinearEnergy(phi), tau=1.0, eta=0.5)
    sampler = TaskSampler(gridworld_goals, n_tasks=2, size=4)
    full = meta.fit(steps=4, lr=0.5, sampler=sampler, seed=2, progress=False)
    step2 = sampler(np.random.default_rng([2, 0]), 0)
    np.testing.assert_allclose(full.objective[0], MetaRL(step2, meta.model, tau=1.0, eta=0.5).objective(
        meta.model.init_params()), rtol=1e-14)
    ckpt = tmp_path / "rl.npz"
    meta.fit(steps=2, lr=0.5, sampler=sampler, seed=2, checkpoint=ckpt, progress=False)
    rest = meta.fit(steps=4, lr=0.5, sampler=sampler, seed=2, checkpoint=ckpt, resume=True, progress=False)
    assert np.array_equal(rest.theta, full.theta) and np.array_equal(rest.objective, full.objective)


def test_sampler_settings_and_errors():
    s = TaskSampler(sinusoid_tasks, n_tasks=3, k_shot=2, embedding="affine")
    assert s.config() == "sinusoid_tasks(embedding='affine', k_shot=2, n_tasks=3)"
    assert len(s(np.random.default_rng(0), 0)) == 3
    # a callable setting is named, not printed with its address (tags must match across processes)
    assert "0x" not in TaskSampler(sinusoid_tasks, n_tasks=1, embedding=np.cos).config()
    with pytest.raises(ValueError, match="must not include 'seed'"):
        TaskSampler(sinusoid_tasks, n_tasks=3, seed=1)
    with pytest.raises(TypeError, match="'family' parameter of TaskSampler"):
        TaskSampler(3)
    with pytest.raises(ValueError, match="'k_shot'"):
        sinusoid_sampler(4, k_shot=0)
    _, meta = _sl_problem()
    with pytest.raises(TypeError, match="'sampler' parameter of MetaSL.fit"):
        meta.fit(steps=1, sampler=3, progress=False)
    with pytest.raises(ValueError, match="'X' parameter of TaskBatch"):
        TaskBatch(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="'y' parameter of TaskBatch"):
        TaskBatch(np.ones((2, 3, 1)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="input dimension 1"):
        meta.pack(TaskBatch(np.ones((2, 3, 2)), np.ones((2, 3))))
    with pytest.raises(ValueError, match="labels in"):
        logistic = MetaSL(TaskBatch(np.ones((1, 2, 1)), np.zeros((1, 2))).tasks(), meta.model, loss="logistic")
        logistic.pack(TaskBatch(np.ones((1, 2, 1)), np.full((1, 2), 0.5)))
