"""Algorithm 1 (MetaRL.fit): ascent, schedules, stopping, checkpoints and resume."""
import numpy as np
import pytest

import fastmeta
from fastmeta import LinearEnergy, MetaRL
from fastmeta._optim import make_schedule


@pytest.fixture
def meta():
    tasks, phi = fastmeta.tasks.gridworld_goals(3, 5, gamma=0.9, goal_region=(0.6, 1, 0.6, 1), seed=0)
    return MetaRL(tasks, LinearEnergy(phi), tau=1.0, eta=1.0)


def test_fit_increases_the_meta_objective(meta):
    res = meta.fit(steps=15, lr=20.0, progress=False)
    assert res.steps == 15 and res.objective.shape == (15,) and res.grad_norm.shape == (15,)
    assert meta.objective(res.theta) > res.objective[0] + 1e-3
    assert res.objective[-1] > res.objective[0]


def test_fit_matches_a_hand_written_loop(meta):
    theta = np.zeros(meta.model.n_params)
    for step in range(4):
        theta = theta + 5.0 / np.sqrt(step + 1) * meta.gradient(theta)
    res = meta.fit(steps=4, lr="sqrt:5", progress=False)
    np.testing.assert_array_equal(res.theta, theta)


def test_schedules():
    assert make_schedule(0.5, "x")(7) == 0.5
    assert make_schedule("inv:2", "x")(3) == 0.5
    assert make_schedule("sqrt:3", "x")(8) == 1.0
    assert make_schedule(lambda l: 1.0 / (l + 2), "x")(0) == 0.5
    for bad in ("fast:1", "sqrt:-1", -1.0, 0.0):
        with pytest.raises(ValueError, match="'lr' parameter of x"):
            make_schedule(bad, "x")
    with pytest.raises(ValueError, match="'lr' parameter of x"):
        make_schedule(lambda l: -1.0, "x")(0)


def test_stops_at_epsilon_stationarity(meta):
    res = meta.fit(steps=50, lr=1.0, tol=1e9, progress=False)
    assert res.converged and res.steps == 1
    np.testing.assert_array_equal(res.theta, np.zeros(meta.model.n_params))


def test_resume_gives_the_same_result_as_an_uninterrupted_run(meta, tmp_path):
    full = meta.fit(steps=8, lr="inv:10", progress=False)
    ckpt = tmp_path / "run.npz"
    part = meta.fit(steps=3, lr="inv:10", checkpoint=ckpt, progress=False)
    assert part.steps == 3
    saved = fastmeta.load_checkpoint(ckpt)
    np.testing.assert_array_equal(saved["theta"], part.theta)
    rest = meta.fit(steps=8, lr="inv:10", checkpoint=ckpt, resume=True, progress=False)
    np.testing.assert_array_equal(rest.theta, full.theta)
    np.testing.assert_array_equal(rest.objective, full.objective)
    np.testing.assert_array_equal(rest.grad_norm, full.grad_norm)


def test_resume_refuses_a_checkpoint_of_other_settings(meta, tmp_path):
    ckpt = tmp_path / "run.npz"
    meta.fit(steps=2, lr=1.0, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="different problem or settings"):
        meta.fit(steps=4, lr=2.0, checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(ValueError, match="must name an existing checkpoint"):
        meta.fit(steps=4, lr=1.0, resume=tmp_path / "missing.npz", progress=False)


def test_progress_line_is_written(meta, capsys):
    meta.fit(steps=2, lr=1.0, progress=True)
    err = capsys.readouterr().err
    assert "MetaRL.fit" in err and "2/2" in err


def test_bad_fit_arguments(meta):
    with pytest.raises(ValueError, match="'steps' parameter of MetaRL.fit"):
        meta.fit(steps=-1)
    with pytest.raises(ValueError, match="'theta' parameter of MetaRL must have shape"):
        meta.fit(np.zeros(3), steps=1)


def test_adam_matches_its_definition_and_resumes_exactly(meta, tmp_path):
    theta, m, v = np.zeros(meta.model.n_params), 0.0, 0.0
    for step in range(3):
        g = meta.gradient(theta)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta = theta + 0.5 * (m / (1 - 0.9 ** (step + 1))) / (np.sqrt(v / (1 - 0.999 ** (step + 1))) + 1e-8)
    full = meta.fit(steps=3, lr=0.5, optimizer="adam", progress=False)
    np.testing.assert_allclose(full.theta, theta, rtol=1e-13, atol=1e-15)
    ckpt = tmp_path / "adam.npz"
    meta.fit(steps=1, lr=0.5, optimizer="adam", checkpoint=ckpt, progress=False)
    assert "adam_m" in fastmeta.load_checkpoint(ckpt)
    rest = meta.fit(steps=3, lr=0.5, optimizer="adam", checkpoint=ckpt, resume=True, progress=False)
    np.testing.assert_array_equal(rest.theta, full.theta)
    with pytest.raises(ValueError, match="different problem or settings"):
        meta.fit(steps=4, lr=0.5, optimizer="gd", checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(ValueError, match="'optimizer' parameter of MetaRL.fit"):
        meta.fit(steps=1, optimizer="sgd")
