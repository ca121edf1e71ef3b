"""Checkpoint files of ``fit``: identity, integrity, one writer, no litter.

A checkpoint is an ``.npz`` archive (no pickles) holding theta_k, the step k, the
histories of L and ||grad L|| at theta_0..theta_{k-1}, the Adam moments when Adam
is used, and the run's *tag*: one entry per component that determines the
trajectory (every task's data, the model, tau, eta, solver settings, optimizer,
step-size schedule, starting point), each a short value or a BLAKE2b digest. A run
resumes only a checkpoint whose tag equals its own, and a refusal names the
components that differ.

Writing goes to ``<path>.tmp-<pid>.npz`` and is renamed over ``path``, so a crash
never leaves a torn checkpoint; the temporary file is removed on every exit path,
and stale ones left by killed runs are removed when the next run takes the lock.
The lock is ``<path>.lock``, created with O_EXCL and holding the writer's pid: a
second live writer is refused; a lock whose process is gone is taken over.
"""
from __future__ import annotations

import errno
import glob
import json
import os
import zipfile
from typing import Any

import numpy as np

FORMAT = "fastmeta-checkpoint/1"
_READABLE = 80  # tag values up to this length are shown in mismatch messages


def check_path(path: Any, owner: str, *, must_exist: bool) -> str:
    """Validate a checkpoint path before any work is done; return it as a str."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"The 'checkpoint' parameter of {owner} must be a path (str or os.PathLike). "
                        f"Got {type(path).__name__} instead.")
    path = os.fspath(path)
    if path == "":
        raise ValueError(f"The 'checkpoint' parameter of {owner} must be a file path. Got '' instead.")
    if os.path.isdir(path):
        raise ValueError(f"The 'checkpoint' parameter of {owner} must be a file path. "
                         f"Got {path!r}, which is a directory.")
    if must_exist and not os.path.isfile(path):
        raise ValueError(f"The 'resume' parameter of {owner} must name an existing checkpoint file. "
                         f"Got {path!r}, which does not exist.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"The 'checkpoint' parameter of {owner} must be in an existing folder. "
                         f"Got {path!r}, but {folder!r} does not exist.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"The 'checkpoint' parameter of {owner} must be in a writable folder. "
                         f"Got {path!r}, but {folder!r} is not writable.")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"The 'checkpoint' parameter of {owner} must be a writable file. "
                         f"Got {path!r}, which is read-only.")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class WriterLock:
    """``<path>.lock`` created with O_EXCL: one writer per checkpoint path."""

    def __init__(self, path: str, owner: str):
        self.lock_path = f"{path}.lock"
        self.path, self.owner, self.held = path, owner, False

    def __enter__(self) -> "WriterLock":
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._holder()
                if pid is not None and pid != os.getpid() and _pid_alive(pid):
                    raise ValueError(f"{self.owner}: the checkpoint {self.path!r} is being written by another "
                                     f"process (pid {pid}, lock file {self.lock_path!r}). Use another path, or "
                                     f"delete the lock file if no such run is active.") from None
                if pid == os.getpid():
                    raise ValueError(f"{self.owner}: the checkpoint {self.path!r} is already being written "
                                     f"by this process (a fit running in another thread?).") from None
                self._remove(self.lock_path)  # left by a killed run
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            for stale in glob.glob(glob.escape(self.path) + ".tmp-*.npz"):
                self._remove(stale)  # we hold the lock: no live writer owns these
            return self
        raise ValueError(f"{self.owner}: could not take the lock {self.lock_path!r} of checkpoint {self.path!r}.")

    def __exit__(self, *exc: Any) -> None:
        if self.held:
            self._remove(self.lock_path)
            self.held = False

    def _holder(self) -> int | None:
        try:
            with open(self.lock_path) as f:
                return int(f.read().strip() or -1)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _remove(name: str) -> None:
        try:
            os.remove(name)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise


def save(path: str, *, theta: np.ndarray, step: int, objective: list, grad_norm: list,
         tag: dict[str, str], adam: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Write atomically (temporary file + rename); the temporary file never outlives the call."""
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    extra = {} if adam is None else {"adam_m": adam[0], "adam_v": adam[1]}
    try:
        np.savez(tmp, format=np.asarray(FORMAT), tag=np.asarray(json.dumps(tag, sort_keys=True)),
                 theta=theta, step=np.asarray(step, dtype=np.int64),
                 objective=np.asarray(objective, dtype=np.float64),
                 grad_norm=np.asarray(grad_norm, dtype=np.float64), **extra)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str | os.PathLike) -> dict:
    """Read and check a checkpoint; any defect is a ValueError naming the file."""
    path = os.fspath(path)

    def bad(what: str) -> ValueError:
        return ValueError(f"The file {path!r} is not a usable fastmeta checkpoint: {what}.")

    if not os.path.isfile(path):
        raise ValueError(f"The checkpoint file {path!r} does not exist.")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise bad(f"it cannot be read as an .npz archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise bad("it holds a single array (.npy), not a checkpoint archive")
    with data:
        try:
            names = set(data.files)
            if "format" not in names or str(data["format"]) != FORMAT:
                raise bad(f"it has no '{FORMAT}' format marker (written by another program or version)")
            missing = {"tag", "theta", "step", "objective", "grad_norm"} - names
            if missing:
                raise bad(f"entries {sorted(missing)} are missing")
            state = {key: data[key] for key in names}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(f"The file {path!r}"):
                raise
            raise bad(f"an entry cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        tag = json.loads(str(state["tag"]))
    except ValueError:
        tag = None
    if not isinstance(tag, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tag.items()):
        raise bad("its tag is not a JSON object of strings")
    theta, objective, grad_norm, step = (state["theta"], state["objective"], state["grad_norm"],
                                         state["step"])
    for name, arr in (("theta", theta), ("objective", objective), ("grad_norm", grad_norm)):
        if arr.dtype != np.float64 or arr.ndim != 1:
            raise bad(f"'{name}' must be a 1-D float64 array, got dtype {arr.dtype} and shape {arr.shape}")
    if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
        raise bad(f"'step' must be a non-negative integer, got {step!r}")
    step = int(step)
    if not (len(objective) == len(grad_norm) == step):
        raise bad(f"its history disagrees with itself: step {step}, {len(objective)} objective and "
                  f"{len(grad_norm)} grad_norm entries")
    if not (np.isfinite(theta).all() and np.isfinite(objective).all() and np.isfinite(grad_norm).all()):
        raise bad("it holds non-finite values")
    out = {"theta": theta.copy(), "step": step, "objective": [float(v) for v in objective],
           "grad_norm": [float(v) for v in grad_norm], "tag": tag}
    if ("adam_m" in state) != ("adam_v" in state):
        raise bad("it holds only one of the two Adam moments")
    if "adam_m" in state:
        for key in ("adam_m", "adam_v"):
            if state[key].shape != theta.shape or state[key].dtype != np.float64:
                raise bad(f"'{key}' must be a float64 array of theta's shape {theta.shape}")
            out[key] = state[key].copy()
    return out


def tag_difference(saved: dict[str, str], current: dict[str, str]) -> str:
    """Human-readable list of the tag components that differ."""
    parts = []
    for key in sorted(set(saved) | set(current), key=_natural):
        old, new = saved.get(key), current.get(key)
        if old == new:
            continue
        if old is None or new is None:
            parts.append(f"{key} ({'absent' if old is None else 'present'} in the file, "
                         f"{'absent' if new is None else 'present'} now)")
        elif len(old) <= _READABLE and len(new) <= _READABLE and not _is_digest(old):
            parts.append(f"{key} ({old!r} in the file, {new!r} now)")
        else:
            parts.append(key)
    shown = parts[:8] + ([f"and {len(parts) - 8} more"] if len(parts) > 8 else [])
    return ", ".join(shown)


def _is_digest(value: str) -> bool:
    return value.startswith("blake2b:")


def _natural(key: str) -> tuple:
    head, _, rest = key.partition("[")
    num, _, tail = rest.partition("]")
    return (head, int(num) if num.isdigit() else -1, tail)
