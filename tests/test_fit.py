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
    assert res.steps == 15 and res.objective.shape == (16,) and res.grad_norm.shape == (16,)
    assert res.objective[-1] > res.objective[0] + 1e-3
    assert res.extra == {"resumed_from": 0, "checkpoint": None}


def test_the_last_history_entry_is_at_the_returned_theta(meta):
    res = meta.fit(steps=5, lr=20.0, progress=False)
    L, g = meta.value_and_grad(res.theta)
    assert res.objective[-1] == L and res.grad_norm[-1] == np.linalg.norm(g)
    assert res.objective[0] == meta.objective(np.zeros(meta.model.n_params))


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
    assert res.converged and res.steps == 0 and res.objective.shape == (1,)
    np.testing.assert_array_equal(res.theta, np.zeros(meta.model.n_params))
    # A tolerance that is met part-way: the run stops at the first theta_l with |grad| <= tol.
    free = meta.fit(steps=12, lr=20.0, progress=False)
    tol = float(np.sort(free.grad_norm)[len(free.grad_norm) // 2])
    stop = int(np.flatnonzero(free.grad_norm <= tol)[0])
    res = meta.fit(steps=12, lr=20.0, tol=tol, progress=False)
    assert 0 < stop < 12 and res.converged and res.steps == stop
    np.testing.assert_array_equal(res.grad_norm, free.grad_norm[:stop + 1])
    assert res.grad_norm[-1] <= tol < res.grad_norm[:-1].min()
    assert not free.converged


def test_resume_gives_the_same_result_as_an_uninterrupted_run(meta, tmp_path):
    full = meta.fit(steps=8, lr="inv:10", progress=False)
    ckpt = tmp_path / "run.npz"
    part = meta.fit(steps=3, lr="inv:10", checkpoint=ckpt, progress=False)
    assert part.steps == 3
    saved = fastmeta.load_checkpoint(ckpt)
    np.testing.assert_array_equal(saved["theta"], part.theta)
    assert saved["step"] == 3 and len(saved["objective"]) == 3
    rest = meta.fit(steps=8, lr="inv:10", checkpoint=ckpt, resume=True, progress=False)
    np.testing.assert_array_equal(rest.theta, full.theta)
    np.testing.assert_array_equal(rest.objective, full.objective)
    np.testing.assert_array_equal(rest.grad_norm, full.grad_norm)
    assert rest.extra["resumed_from"] == 3
    # Resuming a finished run: the same result, no duplicate history entry.
    again = meta.fit(steps=8, lr="inv:10", checkpoint=ckpt, resume=True, progress=False)
    np.testing.assert_array_equal(again.objective, full.objective)
    assert again.steps == 8


def test_resume_refuses_a_checkpoint_of_other_settings(meta, tmp_path):
    ckpt = tmp_path / "run.npz"
    meta.fit(steps=2, lr=1.0, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match=r"different problem or settings; these differ: lr \('constant:1.0' in "
                                         r"the file, 'constant:2.0' now\)"):
        meta.fit(steps=4, lr=2.0, checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(ValueError, match="must name an existing checkpoint"):
        meta.fit(steps=4, lr=1.0, resume=tmp_path / "missing.npz", progress=False)
    with pytest.raises(ValueError, match=r"these differ: theta0$|these differ: theta0\."):
        meta.fit(np.ones(meta.model.n_params), steps=4, lr=1.0, checkpoint=ckpt, resume=True, progress=False)


def _gridworld_meta(**kw):
    family = dict(n_tasks=3, size=5, gamma=0.9, goal_region=(0.6, 1, 0.6, 1), seed=0)
    family.update(kw)
    tasks, phi = fastmeta.tasks.gridworld_goals(**family)
    return MetaRL(tasks, LinearEnergy(phi), tau=1.0, eta=1.0)


@pytest.mark.parametrize("change, differs", [
    (dict(seed=1), r"tasks\[0\]\.r"),                 # other goals, same sum(r)
    (dict(slip=0.3), r"tasks\[0\]\.P"),               # another slip
    (dict(gamma=0.8), r"tasks\[0\]\.gamma \('0.9' in the file, '0.8' now\)"),
])
def test_resume_refuses_other_tasks_and_names_them(meta, tmp_path, change, differs):
    ckpt = tmp_path / "run.npz"
    meta.fit(steps=2, lr=1.0, checkpoint=ckpt, progress=False)
    other = _gridworld_meta(**change)
    with pytest.raises(ValueError, match="these differ: .*" + differs):
        other.fit(steps=4, lr=1.0, checkpoint=ckpt, resume=True, progress=False)


def test_resume_refuses_reordered_tasks(meta, tmp_path):
    ckpt = tmp_path / "run.npz"
    meta.fit(steps=2, lr=1.0, checkpoint=ckpt, progress=False)
    reordered = MetaRL(meta.tasks[::-1], meta.model, tau=1.0, eta=1.0)
    with pytest.raises(ValueError, match=r"tasks\[0\]\.r, tasks\[2\]\.r"):
        reordered.fit(steps=4, lr=1.0, checkpoint=ckpt, resume=True, progress=False)
    for kw in (dict(tau=2.0), dict(eta=0.5), dict(solver="krylov")):
        settings = dict(tau=1.0, eta=1.0)
        settings.update(kw)
        with pytest.raises(ValueError, match=f"these differ: .*{list(kw)[0]}"):
            MetaRL(meta.tasks, meta.model, **settings).fit(steps=4, lr=1.0, checkpoint=ckpt, resume=True,
                                                           progress=False)


def test_callable_step_sizes_must_be_named_for_checkpoints(meta, tmp_path):
    ckpt = tmp_path / "run.npz"
    with pytest.raises(ValueError, match="'lr' parameter of MetaRL.fit is an unnamed callable"):
        meta.fit(steps=2, lr=lambda l: 1.0, checkpoint=ckpt, progress=False)
    assert not ckpt.exists()
    meta.fit(steps=2, lr=("one", lambda l: 1.0), checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match=r"lr \('callable:one' in the file, 'callable:half' now\)"):
        meta.fit(steps=4, lr=("half", lambda l: 0.5), checkpoint=ckpt, resume=True, progress=False)
    named = lambda l: 1.0  # noqa: E731
    named.name = "one"
    res = meta.fit(steps=3, lr=named, checkpoint=ckpt, resume=True, progress=False)
    full = meta.fit(steps=3, lr=lambda l: 1.0, progress=False)  # no checkpoint: no name needed
    np.testing.assert_array_equal(res.theta, full.theta)


def test_an_existing_checkpoint_is_never_overwritten_silently(meta, tmp_path):
    ckpt = tmp_path / "run.npz"
    meta.fit(steps=2, lr=1.0, checkpoint=ckpt, progress=False)
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="names an existing file.*resume=True.*overwrite=True"):
        meta.fit(steps=3, lr=2.0, checkpoint=ckpt, progress=False)
    assert ckpt.read_bytes() == before
    meta.fit(steps=3, lr=2.0, checkpoint=ckpt, overwrite=True, progress=False)
    assert fastmeta.load_checkpoint(ckpt)["tag"]["lr"] == "constant:2.0"


def test_fewer_steps_than_the_checkpoint_holds_is_an_error(meta, tmp_path):
    ckpt = tmp_path / "run.npz"
    meta.fit(steps=4, lr=1.0, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="'steps' parameter of MetaRL.fit must be at least the 4 steps"):
        meta.fit(steps=2, lr=1.0, checkpoint=ckpt, resume=True, progress=False)


def test_resuming_a_converged_run_adds_nothing(meta, tmp_path):
    ckpt = tmp_path / "run.npz"
    first = meta.fit(steps=50, lr=1.0, tol=1e9, checkpoint=ckpt, progress=False)
    again = meta.fit(steps=50, lr=1.0, tol=1e9, checkpoint=ckpt, resume=True, progress=False)
    assert again.converged and again.steps == 0
    np.testing.assert_array_equal(again.objective, first.objective)


def test_progress_in_a_log_is_plain_lines(meta, capsys):
    meta.fit(steps=20, lr=1.0, progress=True, label="training goals")
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [line.split()[3] for line in lines if "step" in line] == [f"{k}/20" for k in range(2, 21, 2)]
    assert all(line.startswith("training goals: ") for line in lines)


def test_progress_on_a_terminal_is_a_labelled_bar(meta, monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    meta.fit(steps=3, lr=1.0, progress=True, label="MAML")
    err = capsys.readouterr().err
    assert "MAML" in err and "3/3" in err


def test_compiling_notice_only_when_kernels_are_not_cached(meta, monkeypatch, capsys):
    import fastmeta.rl

    monkeypatch.setattr(fastmeta.rl, "needs_compiling", lambda *k: True)
    meta.fit(steps=1, lr=1.0, progress=True)
    assert "compiling kernels (first run only" in capsys.readouterr().err
    monkeypatch.undo()
    meta.fit(steps=1, lr=1.0, progress=True)
    assert "compiling" not in capsys.readouterr().err
    from fastmeta._kernels import rl as k
    from fastmeta._kernels._config import needs_compiling

    assert not needs_compiling(k.softmax_policy)  # it ran in this process


def test_bad_fit_arguments(meta):
    with pytest.raises(ValueError, match="'steps' parameter of MetaRL.fit"):
        meta.fit(steps=-1)
    with pytest.raises(ValueError, match=r"'theta' parameter of MetaRL must have shape \(32,\)"):
        meta.fit(np.zeros(3), steps=1)
    with pytest.raises(TypeError, match="'label' parameter of MetaRL.fit must be a str"):
        meta.fit(steps=1, label=3)


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
    with pytest.raises(ValueError, match=r"optimizer \('adam' in the file, 'gd' now\)"):
        meta.fit(steps=4, lr=0.5, optimizer="gd", checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(ValueError, match="'optimizer' parameter of MetaRL.fit"):
        meta.fit(steps=1, optimizer="sgd")
