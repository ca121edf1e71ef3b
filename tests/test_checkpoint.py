"""Checkpoint files: checked paths up front, clear errors for damaged files, one writer, no litter."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastmeta
from fastmeta import LinearModel, MetaSL, SLTask
from fastmeta._optim import run_gradient_method


def _quadratic():
    """A 2-parameter problem with a counter, to see whether any work was done."""
    calls = []

    def value_and_grad(theta):
        calls.append(1)
        return float(-(theta - 1.0) @ (theta - 1.0)), -2.0 * (theta - 1.0)

    return value_and_grad, calls


def _run(path, steps=3, **kw):
    vag, calls = _quadratic()
    res = run_gradient_method(vag, np.zeros(2), steps=steps, lr=0.1, maximize=True, checkpoint=path,
                              progress=False, tag={"problem": "quadratic"}, owner="fit", **kw)
    return res, calls


@pytest.mark.parametrize("bad, message", [
    ("", "must be a file path. Got '' instead"),
    ("{tmp}", "which is a directory"),
    ("{tmp}/missing/run.npz", "must be in an existing folder"),
])
def test_bad_paths_fail_before_any_work(tmp_path, bad, message):
    vag, calls = _quadratic()
    with pytest.raises(ValueError, match=message):
        run_gradient_method(vag, np.zeros(2), steps=3, lr=0.1, maximize=True, progress=False,
                            checkpoint=bad.format(tmp=tmp_path), owner="fit")
    assert calls == []


def test_unwritable_folder_fails_before_any_work(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    real_access = os.access
    # os.access rather than chmod: the suite may run as root, which writes anywhere.
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(folder) else real_access(p, mode))
    vag, calls = _quadratic()
    with pytest.raises(ValueError, match="is not writable"):
        run_gradient_method(vag, np.zeros(2), steps=3, lr=0.1, maximize=True, progress=False,
                            checkpoint=folder / "run.npz", owner="fit")
    assert calls == []


def test_path_of_the_wrong_type(tmp_path):
    with pytest.raises(TypeError, match="'checkpoint' parameter of fit must be a path"):
        _run(3)


def _write_damaged(path, kind):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        _run(path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "foreign":
        np.savez(path, weights=np.ones(3))
    elif kind == "pickled":
        path.write_bytes(pickle.dumps({"theta": np.ones(2)}))
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.ones(2))
    elif kind == "pickled-entry":
        np.savez(path, format=np.asarray("fastmeta-checkpoint/1"), tag=np.asarray("{}"),
                 theta=np.array([{"a": 1}], dtype=object), step=np.asarray(0),
                 objective=np.zeros(0), grad_norm=np.zeros(0))
    elif kind == "disagreeing history":
        _run(path)
        state = dict(np.load(path))
        state["grad_norm"] = state["grad_norm"][:-1]
        np.savez(path, **state)
    elif kind == "text":
        path.write_text("hello")


@pytest.mark.parametrize("kind, why", [
    ("empty", "cannot be read as an .npz archive"),
    ("truncated", "cannot be read"),
    ("foreign", "format marker"),
    ("pickled", "cannot be read as an .npz archive"),
    ("npy", "single array"),
    ("pickled-entry", "cannot be read"),
    ("disagreeing history", "history disagrees with itself"),
    ("text", "cannot be read as an .npz archive"),
])
def test_damaged_or_foreign_files_are_refused_by_name(tmp_path, kind, why):
    path = tmp_path / "run.npz"
    _write_damaged(path, kind)
    with pytest.raises(ValueError, match=f"The file '{path}' is not a usable fastmeta checkpoint: .*{why}"):
        fastmeta.load_checkpoint(path)
    vag, calls = _quadratic()
    with pytest.raises(ValueError, match=f"'{path}'"):
        run_gradient_method(vag, np.zeros(2), steps=5, lr=0.1, maximize=True, checkpoint=path, resume=True,
                            progress=False, tag={"problem": "quadratic"}, owner="fit")
    assert calls == []


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"

    def broken_savez(name, **arrays):
        with open(name, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        _run(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stale_temporary_files_and_locks_of_killed_runs_are_cleaned(tmp_path):
    path = tmp_path / "run.npz"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f"run.npz.tmp-{dead}.npz").write_bytes(b"x" * 1000)
    (tmp_path / "run.npz.lock").write_text(dead)
    (tmp_path / "other.npz.tmp-1.npz").write_bytes(b"not ours")
    res, _ = _run(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.npz.tmp-1.npz", "run.npz"]
    assert fastmeta.load_checkpoint(path)["step"] == 3


def test_a_live_writer_holds_the_lock(tmp_path):
    path = tmp_path / "run.npz"
    (tmp_path / "run.npz.lock").write_text(str(os.getppid()))  # a live process that is not us
    with pytest.raises(ValueError, match=r"being written by another process \(pid"):
        _run(path)
    assert not path.exists()


def test_a_killed_writer_leaves_a_checkpoint_that_resumes(tmp_path):
    """SIGKILL in the middle of a run: the next run cleans up and continues bit for bit."""
    path = tmp_path / "run.npz"
    script = f"""
import os, signal, numpy as np
from fastmeta._optim import run_gradient_method
def vag(theta):
    if len(calls) == 4:
        open({str(path) + '.tmp-' + '0.npz'!r}, 'wb').write(b'x')  # a torn temporary file
        os.kill(os.getpid(), signal.SIGKILL)
    calls.append(1)
    return float(-(theta - 1.0) @ (theta - 1.0)), -2.0 * (theta - 1.0)
calls = []
run_gradient_method(vag, np.zeros(2), steps=9, lr=0.1, maximize=True, checkpoint={str(path)!r},
                    progress=False, tag={{"problem": "quadratic"}}, owner="fit")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True)
    assert proc.returncode == -9
    assert (tmp_path / "run.npz.lock").exists() and fastmeta.load_checkpoint(path)["step"] == 4
    vag, _ = _quadratic()
    rest = run_gradient_method(vag, np.zeros(2), steps=9, lr=0.1, maximize=True, checkpoint=path, resume=True,
                               progress=False, tag={"problem": "quadratic"}, owner="fit")
    full = run_gradient_method(_quadratic()[0], np.zeros(2), steps=9, lr=0.1, maximize=True, progress=False)
    np.testing.assert_array_equal(rest.theta, full.theta)
    np.testing.assert_array_equal(rest.objective, full.objective)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]


def test_meta_sl_checkpoints_know_the_step_size(tmp_path):
    rng = np.random.default_rng(0)
    tasks = [SLTask(rng.normal(size=(5, 2)), rng.normal(size=5)) for _ in range(3)]
    meta = MetaSL(tasks, LinearModel(), eta=0.1)
    path = tmp_path / "sl.npz"
    meta.fit(steps=2, lr=0.1, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"these differ: lr \('constant:0.1' in the file, 'sqrt:0.1' now\)"):
        meta.fit(steps=4, lr="sqrt:0.1", checkpoint=path, resume=True, progress=False)
    other = MetaSL([SLTask(t.X, t.y + 1.0) for t in tasks], LinearModel(), eta=0.1)
    with pytest.raises(ValueError, match="these differ: query data, support data"):
        other.fit(steps=4, lr=0.1, checkpoint=path, resume=True, progress=False)
    assert meta.tag == MetaSL(tasks, LinearModel(), eta=0.1).tag != other.tag
