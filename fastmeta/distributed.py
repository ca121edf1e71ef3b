"""Meta-RL and meta-SL over a Dask cluster, bit-identical to one process.

A meta-gradient is a sum of per-task terms given theta. :class:`DaskMetaRL` and
:class:`DaskMetaSL` spread those terms over the workers of a ``dask.distributed``
cluster and add them up on the client in the fixed order one process uses, so the
results are the same bits whatever the number of workers (docs/scaling.md).

Design
------
* The work is cut exactly as one process cuts it: meta-RL into the units of
  :class:`fastmeta.MetaRL` (batches of small tasks, or groups of tasks sharing a
  kernel and a discount; a unit is never split), meta-SL into single tasks.
* Units are partitioned once into shards, one per worker (meta-RL: contiguous runs
  of units). Each shard lives on its worker between calls as the result of a Dask
  task (a one-process MetaRL/MetaSL over the shard's tasks with the client's units
  prescribed), so patterns and factorisation plans are built once. Tasks and model
  travel as one in-band pickle, so the worker's arrays have the client's types and
  its kernels are the client's compilations (:func:`_pack`).
* A call ships only the energy f (meta-RL) or theta (meta-SL). Meta-RL: every shard
  computes its per-unit partials, then the running sum passes along the shards in
  unit order with the additions of ``MetaRL._combine``, and one array comes back.
  Meta-SL: every shard returns its tasks' loss and gradient rows, which the client
  reduces as the model's kernel does.
* Theory measures (:func:`fastmeta.theory.meta_visitation`, :func:`fastmeta.theory.rl_gap`):
  every shard computes its units' partial sums (:mod:`fastmeta.theory.rl_units`), passed
  along the shards in unit order like the gradient's; each shard keeps its tasks' measures
  for the second pass (C0 needs varrho) and sends them back only when asked.
* Workers started by a nanny get glibc malloc's adaptive thresholds back
  (:data:`WORKER_MALLOC`): Dask's settings made every large array a fresh mmap.
* Faults: the client keeps the recipe of every shard (its tasks, or the factory and
  specs that build them). A shard whose worker has left, or whose call failed
  because a worker died, is rebuilt on a live worker and its call re-sent; the call
  returns the same bits. With no worker left a :class:`RuntimeError` says so.
  ``fit`` with a checkpoint resumes on a new client after a whole-cluster restart
  (the checkpoint tag is the one-process class's, so either resumes the other).

Requires the ``dist`` extra: ``pip install "fastmeta[dist]"``.
"""
from __future__ import annotations

import itertools
import os
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ._kernels import sl as _ksl
from ._optim import FitResult, StepSize, digest, run_gradient_method
from ._rl_batch import _Batch, batch_layout
from ._validation import check_computed_finite, check_nonempty_list
from .mdp import TabularMDP
from .rl import BATCH_MAX_STATES, EnergyObjective, MetaRL, add_partials, mean_of_sums
from .sl import MetaSL, SLTask, TaskBatch
from .theory import rl_units

__all__ = ["DaskMetaRL", "DaskMetaSL"]

POLL_SECONDS = 0.2
"""How often a waiting call checks that the workers holding its shards are still alive."""
RESTART_GRACE_SECONDS = 20.0
"""How long a call that has lost every worker waits for one to come back (a nanny restarting it)."""
MAX_REBUILDS = 20
"""Rebuilds of lost shards allowed in one call before it gives up."""


def _distributed():
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("fastmeta.distributed needs dask[distributed]: pip install 'fastmeta[dist]'") from exc
    return distributed


# ---------------------------------------------------------------------- worker side
class _ShardMetaRL(MetaRL):
    """A MetaRL over one shard's tasks whose units are prescribed (the client's units, local indices)."""

    def __init__(self, tasks: list[TabularMDP], model: Any, layout: list[list[int]], **settings: Any):
        self._layout = layout
        self._kept: tuple[int, rl_units.Kept] | None = None  # (call, per-task measures) between theory passes
        super().__init__(tasks, model, **settings)

    def _make_units(self) -> list[_Batch | list[int]]:
        if self._batched:
            return [_Batch([self.tasks[i] for i in unit], unit) for unit in self._layout]
        return [list(unit) for unit in self._layout]


def _pack(obj: Any) -> bytes:
    """``obj`` as one pickle whose arrays travel inside the stream (see :func:`_unpack`).

    Dask ships arrays out of band, and a worker may receive them read-only or writable,
    aligned or not, whatever they were on the client; Numba compiles a kernel separately
    for each such array type. In-band protocol-5 pickling brings every array back with
    the client's dtype, shape, order and read-only flag, in fresh aligned memory, and
    objects shared on the client (one kernel behind many tasks) stay shared: the worker
    calls the kernels with the client's array types, so it runs the same compiled code.
    """
    import cloudpickle

    return cloudpickle.dumps(obj, protocol=5)


def _unpack(blob: bytes) -> Any:
    return pickle.loads(blob)


def _factory_tasks(factory: Callable, picks: list[tuple[Any, list[int]]]) -> list[Any]:
    """The tasks ``factory(spec)[j]`` for every (spec, [j, ...]) of ``picks``, in that order."""
    tasks = []
    for spec, positions in picks:
        made = _made(factory, spec)
        tasks.extend(made[j] for j in positions)
    return tasks


def _made(factory: Callable, spec: Any) -> list[Any]:
    """``factory(spec)`` as a list (a :class:`fastmeta.sl.TaskBatch` becomes its tasks)."""
    made = factory(spec)
    return made.tasks() if isinstance(made, TaskBatch) else list(made)


def _build_rl(tasks: bytes | None, factory: Callable | None, picks: list | None,
              layout: list[list[int]], model: bytes, settings: dict) -> _ShardMetaRL:
    tasks = _factory_tasks(factory, picks) if tasks is None else _unpack(tasks)
    return _ShardMetaRL(tasks, _unpack(model), layout, **settings)


WORKER_MALLOC: tuple[int, int] | None = (32 * 2**20, 64 * 2**20)
"""glibc malloc's (mmap threshold, trim threshold) in bytes, set in every worker process that builds
a shard (read on the client when a shard is built); None leaves the workers' malloc as it is.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (so that freed memory goes back
to the operating system at once). Setting any threshold also freezes glibc's mmap threshold at
its start value, 128 KiB, instead of letting it grow to 32 MiB as it does in a plain process: every
larger allocation (an S x A array at S = 10^4, SuperLU's factors) is then a fresh mmap whose pages
fault in on first use and go back on free. On 32 tasks of 10^4 states that was 173,000 page
faults and 0.4 s of system time against none with these thresholds, and 20-25% more CPU
(docs/scaling.md). These values are the ceilings glibc's own adaptive policy reaches; a worker
keeps up to 64 MiB of freed memory for reuse.
"""

_malloc_set = False


def _set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc malloc's mmap and trim thresholds in this process; False where malloc is not glibc's."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, int(mmap_threshold))) and bool(mallopt(m_trim_threshold, int(trim_threshold)))


def _build_on_worker(build: Callable, malloc: tuple[int, int] | None, *args: Any) -> Any:
    """``build(*args)`` after setting :data:`WORKER_MALLOC` once in this worker process.

    Only in a process started for the worker (by a nanny): a worker inside the client's
    process (``LocalCluster(processes=False)``) or in its own main process keeps its malloc.
    """
    global _malloc_set
    if malloc is not None and not _malloc_set:
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            _set_malloc_thresholds(*malloc)
        _malloc_set = True
    return build(*args)


def _use_worker_threads() -> None:
    """Numba threads of this call = the Dask worker's threads (its share of the cores).

    A worker process sees every core, so Numba (and MetaRL's units in parallel) would
    start one thread per core in every worker: two workers on two cores ran four busy
    threads. The setting is per calling thread and results do not depend on it.
    """
    import numba

    try:
        threads = int(_distributed().get_worker().state.nthreads)
    except (ValueError, AttributeError):  # not inside a Dask task
        return
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def _writable(f: np.ndarray) -> np.ndarray:
    """A deserialised f may arrive read-only or unaligned (another Numba specialisation);
    a writable C-order copy has the type model.energy gives the kernels in one process."""
    return np.array(f, dtype=np.float64, order="C", copy=True)


def _rl_partials(shard: _ShardMetaRL, f: np.ndarray, want_grad: bool) -> list[tuple[float, np.ndarray | None]]:
    _use_worker_threads()
    return shard._partials(_writable(f), range(len(shard._units)), want_grad)


def _theory_partials(shard: _ShardMetaRL, call: int, kind: str, fs: tuple, keep: bool) -> list[rl_units.Sums]:
    """The shard's per-unit sums of a theory pass; with ``keep`` its per-task measures stay here for the second."""
    _use_worker_threads()
    shard._kept = None  # a stale call's measures (say, of an interrupted call) go first
    partials, kept = rl_units.shard_partials(shard, kind, tuple(_writable(f) for f in fs), keep)
    if keep:
        shard._kept = (call, kept)
    return partials


def _theory_finish(shard: _ShardMetaRL, call: int, kind: str, fs: tuple, varrho: np.ndarray | None,
                   want_rows: bool) -> tuple[float | None, list | None]:
    """The shard's part of C0 and, if asked, its varsigma_i (local task order), from the kept measures.

    A shard rebuilt since the first pass (its worker was lost) has none: it computes them
    again from ``fs``, with the same bits.
    """
    _use_worker_threads()
    if shard._kept is not None and shard._kept[0] == call:
        kept = shard._kept[1]
    else:
        kept = rl_units.shard_partials(shard, kind, tuple(_writable(f) for f in fs), True)[1]
    shard._kept = None
    return rl_units.finish(kept, varrho, want_rows)


@dataclass(frozen=True)
class _StepSampler:
    """A fit sampler as a task factory: spec = step, tasks = ``sampler(default_rng([seed, step]), step)``."""

    sampler: Callable[[np.random.Generator, int], Any]
    seed: int

    def __call__(self, step: int) -> Any:
        return self.sampler(np.random.default_rng([self.seed, step]), step)


def _compute_then_fold(state: Any, compute: Callable, fold: Callable, *args: Any) -> Any:
    return fold(None, compute(state, *args))


def _describe_shard(shard: _ShardMetaRL) -> tuple[dict, list[str], dict]:
    """(checkpoint tag without the per-task entries, solver methods, normalised settings)."""
    tag = {k: v for k, v in shard._tag().items() if not k.startswith("tasks[")}
    settings = dict(tau=shard.tau, eta=shard.eta, solver=shard.solver, tol=shard.tol, maxiter=shard.maxiter)
    return tag, list(shard.solver_methods), settings


def _describe_rl(factory: Callable, spec: Any) -> list[tuple]:
    """What the client needs to know of the tasks ``factory(spec)`` without holding them."""
    return [_task_meta(task) for task in _made(factory, spec)]


def _task_meta(task: Any) -> tuple:
    if not isinstance(task, TabularMDP):
        raise TypeError(f"A task factory of DaskMetaRL must return TabularMDP objects. "
                        f"Got {type(task).__name__} instead.")
    nbytes = task.P.data.nbytes + task.P.indices.nbytes + task.P.indptr.nbytes + task.r.nbytes + task.init.nbytes
    return (task.kernel_fingerprint, task.gamma, digest(task.r), digest(task.init), task.shape, nbytes)


class _ShardSL:
    """One shard of a meta-SL problem; :meth:`rows` gives each of its tasks' loss and gradient row.

    The built-in linear model and MLP fill per-task rows in one compiled call and then
    sum them; the shard calls the same kernel on its own tasks, choosing the serial or
    parallel variant by the whole problem's size (``full_rows``) as one process does, so
    every row has the one-process bits. Other predictors run one task per call (a sum of
    one row, divided by 1, is that row).
    """

    def __init__(self, tasks: list[SLTask], model: Any, settings: dict, full_rows: tuple[int, int]):
        self.meta = MetaSL(tasks, model, **settings)
        self.full_rows = full_rows
        self.packs = None if self._fused() is not None else [self.meta.pack([task]) for task in tasks]

    def _fused(self):
        from .linear_model import _PARALLEL_WORK as LINEAR_WORK, LinearModel
        from .models.mlp import _PARALLEL_WORK as MLP_WORK, MLP

        model, (ns, nq) = self.meta.model, self.full_rows
        if type(model) is LinearModel:
            variant = "parallel" if ns * model.n_params >= LINEAR_WORK else "serial"
            return lambda theta, *rest: getattr(_ksl.linear_meta, variant)(theta, *rest)
        if type(model) is MLP:
            from ._kernels import mlp as _kmlp

            variant = "parallel" if (ns + nq) * model.n_params >= MLP_WORK else "serial"
            return lambda theta, *rest: getattr(_kmlp.mlp_meta, variant)(theta, *model._layout, *rest)
        return None

    def rows(self, theta: np.ndarray, mode: int) -> tuple[np.ndarray, np.ndarray | None]:
        meta = self.meta
        n = meta.n_tasks
        loss = np.empty(n)
        grad = None if mode == _ksl.MODE_VALUE else np.empty((n, theta.shape[0]))
        fused = self._fused()
        if fused is not None:
            p = meta._packed
            fused(theta, p.Zs, p.ys, p.offs, p.Zq, p.yq, p.offq, meta.eta, meta._loss_code, mode, loss,
                  np.empty((n, theta.shape[0])) if grad is None else grad)
            return loss, grad
        one = np.empty(1)
        for j, packed in enumerate(self.packs):
            if meta._meta_terms is not None:
                g = meta._meta_terms(theta, packed, meta.eta, meta._loss_code, mode, one)
            else:
                g = meta._run_generic(theta, packed, mode, one)
            loss[j] = one[0]
            if grad is not None:
                grad[j] = g
        return loss, grad


def _build_sl(tasks: bytes | None, factory: Callable | None, picks: list | None, model: bytes, settings: dict,
              full_rows: tuple[int, int]) -> _ShardSL:
    tasks = _factory_tasks(factory, picks) if tasks is None else _unpack(tasks)
    return _ShardSL(tasks, _unpack(model), settings, full_rows)


def _describe_sl(factory: Callable, spec: Any) -> list[tuple[int, int, int]]:
    """(support rows, query rows, input dimension) of every task of ``factory(spec)``."""
    out = []
    for task in _made(factory, spec):
        if not isinstance(task, SLTask):
            raise TypeError(f"A task factory of DaskMetaSL must return SLTask objects or a TaskBatch. "
                            f"Got {type(task).__name__} instead.")
        out.append((task.X.shape[0], task.split("query")[0].shape[0], task.in_dim))
    return out


def _first_sl_task(factory: Callable, spec: Any) -> SLTask:
    return _made(factory, spec)[0]


def _packed_sl(factory: Callable, spec: Any, model: bytes, settings: dict) -> tuple[np.ndarray, ...]:
    """(Zs, ys, Zq, yq) of ``factory(spec)``'s tasks, packed as one-process MetaSL packs them."""
    p = MetaSL(_made(factory, spec), _unpack(model), **settings)._packed
    return p.Zs, p.ys, p.Zq, p.yq


def _sl_rows(shard: _ShardSL, theta: np.ndarray, mode: int):
    _use_worker_threads()
    theta = np.array(theta, dtype=np.float64, order="C", copy=True)   # writable, as in _rl_partials
    return shard.rows(theta, mode)


def _shard_bytes(shard: Any) -> int:
    """Bytes of the arrays a shard holds (tasks, batches, packed data)."""
    seen: set[tuple[int, int]] = set()   # (buffer address, bytes): views of one buffer count once
    total = 0

    def add(arr: Any) -> None:
        nonlocal total
        if isinstance(arr, np.ndarray):
            key = (arr.__array_interface__["data"][0], arr.nbytes)
            if key not in seen:
                seen.add(key)
                total += arr.nbytes

    if isinstance(shard, _ShardMetaRL):
        for task in shard.tasks:
            for arr in (task.P.data, task.P.indices, task.P.indptr, task.r, task.init):
                add(arr)
        for unit in shard._units:
            if isinstance(unit, _Batch):
                for arr in vars(unit).values():
                    add(arr)
        for pattern in shard._patterns.values():
            for arr in (pattern.indptr, pattern.indices, pattern.nnz_map, pattern.diag_pos):
                add(arr)
    else:
        for packed in [shard.meta._packed, *(shard.packs or [])]:
            for arr in vars(packed).values():
                add(arr)
    return total


def _worker_rss() -> int:
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


# ---------------------------------------------------------------------- client side
@dataclass
class _Shard:
    units: list[int]                       # indices of the client's units, ascending
    tasks: list[int]                       # indices of the problem's tasks, in the shard's local order
    layout: list[list[int]]                # every unit's tasks as local indices
    worker: str | None = None
    state: Any = None                      # the Future of the worker-side object
    extra: dict = field(default_factory=dict)


def _contiguous(costs: Sequence[float], n_shards: int) -> list[list[int]]:
    """0..len(costs)-1 cut into at most ``n_shards`` non-empty runs of about equal cost, in order."""
    n_shards = max(1, min(n_shards, len(costs)))
    target = sum(costs) / n_shards
    parts: list[list[int]] = [[]]
    load = 0.0
    for u, cost in enumerate(costs):
        left = len(costs) - u  # units still to place, this one included
        if parts[-1] and len(parts) < n_shards and (load >= target * len(parts) or left <= n_shards - len(parts)):
            parts.append([])
        parts[-1].append(u)
        load += cost
    return parts


def _partition(costs: Sequence[float], n_shards: int) -> list[list[int]]:
    """Indices into ``costs`` cut into at most ``n_shards`` non-empty lists (largest first onto the lightest)."""
    n_shards = max(1, min(n_shards, len(costs)))
    load = [0.0] * n_shards
    parts: list[list[int]] = [[] for _ in range(n_shards)]
    for u in sorted(range(len(costs)), key=lambda u: (-costs[u], u)):
        k = min(range(n_shards), key=lambda k: (load[k], k))
        parts[k].append(u)
        load[k] += costs[u]
    return [sorted(p) for p in parts if p]


class _Cluster:
    """Shards on workers: placement, calls with fault recovery, memory report (shared by RL and SL)."""

    def __init__(self, client: Any, owner: str, build: Callable[[_Shard, str], Any] | None = None):
        """``build(shard, worker)`` submits the task that builds ``shard``'s state on ``worker``."""
        dist = _distributed()
        if not isinstance(client, dist.Client):
            raise TypeError(f"The 'client' parameter of {owner} must be a dask.distributed.Client. "
                            f"Got {type(client).__name__} instead.")
        self.client, self.owner, self._build = client, owner, build
        self.shards: list[_Shard] = []
        self.rebuilds = 0

    def workers(self, grace: float = 0.0) -> list[str]:
        """The live workers; with none, wait up to ``grace`` seconds for one (a nanny restarting it)."""
        workers = sorted(self.client.nthreads())
        deadline = time.monotonic() + grace
        while not workers and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            workers = sorted(self.client.nthreads())
        if not workers:
            raise RuntimeError(f"{self.owner}: no Dask worker is left in the cluster at "
                               f"{self.client.scheduler.address}; start workers (or a new cluster) "
                               f"and call again, or resume fit from its checkpoint.")
        return workers

    def place(self, shard: _Shard, worker: str) -> None:
        shard.worker = worker
        shard.state = self._build(shard, worker)

    def place_all(self) -> None:
        workers = self.workers()
        for k, shard in enumerate(self.shards):
            self.place(shard, workers[k % len(workers)])
        self.client.gather([s.state for s in self.shards])  # build errors surface here, once

    def map(self, fn: Callable, *args: Any) -> list[Any]:
        """``fn(shard_state, *args)`` on every shard, where it lives; results in shard order."""
        dist = _distributed()
        client = self.client

        def submit(shard: _Shard) -> Any:
            return client.submit(fn, shard.state, *args, workers=[shard.worker], allow_other_workers=False,
                                 pure=False)

        pending = {k: submit(shard) for k, shard in enumerate(self.shards)}
        results: dict[int, Any] = {}
        rebuilt = 0
        while pending:
            try:  # the usual case: everything finishes, and is gathered in one round trip
                dist.wait(list(pending.values()), timeout=POLL_SECONDS)
            except Exception:  # noqa: BLE001 - a timeout or a cancelled future: the statuses below tell
                pass
            finished = [k for k, fut in pending.items() if fut.status == "finished"]
            if finished:
                try:
                    values = client.gather([pending[k] for k in finished])
                except Exception:  # noqa: BLE001 - lost between finishing and gathering: recomputed below
                    values = None
                if values is not None:
                    for k, value in zip(finished, values):
                        results[k] = value
                        del pending[k]
            if not pending:
                break
            alive = set(self.workers(RESTART_GRACE_SECONDS))
            for k, fut in list(pending.items()):
                shard = self.shards[k]
                lost = shard.worker not in alive or fut.status in ("cancelled", "lost")
                if fut.status == "error":
                    if not _is_worker_loss(fut.exception()):
                        fut.result()  # a genuine error of the computation: raise it as is
                    lost = True
                if not lost:
                    continue
                rebuilt += 1
                if rebuilt > MAX_REBUILDS:
                    raise RuntimeError(f"{self.owner}: shards were lost {rebuilt} times in one call; "
                                       f"the workers keep dying (memory limit?).")
                fut.cancel()
                self.rebuilds += 1
                self.place(shard, self._lightest(alive, exclude=k))
                pending[k] = submit(shard)
        return [results[k] for k in range(len(self.shards))]

    def chain(self, compute: Callable, fold: Callable, *args: Any) -> Any:
        """``fold`` of every shard's ``compute(state, *args)``, passed along the shards in order.

        Every shard computes at once; then shard k folds its results into the running
        value it receives from shard k - 1, on its own worker, so one value travels
        between workers and one comes back. A lost shard is rebuilt and the chain run again.
        """
        dist = _distributed()
        client = self.client
        common = dict(allow_other_workers=False, pure=False)
        rebuilt = 0
        while True:
            # The first shard computes and starts the sum in one task (one round trip when alone).
            first = self.shards[0]
            parts = [client.submit(_compute_then_fold, first.state, compute, fold, *args, workers=[first.worker],
                                   **common)]
            parts += [client.submit(compute, s.state, *args, workers=[s.worker], **common) for s in self.shards[1:]]
            acc = parts[0]
            for shard, part in zip(self.shards[1:], parts[1:]):
                acc = client.submit(fold, acc, part, workers=[shard.worker], **common)
            while True:
                try:
                    dist.wait([acc], timeout=POLL_SECONDS)
                except Exception:  # noqa: BLE001 - a timeout or a cancelled future: the statuses below tell
                    pass
                if acc.status == "finished":
                    try:
                        return acc.result()
                    except Exception as exc:  # noqa: BLE001 - lost between finishing and gathering
                        if not _is_worker_loss(exc):
                            raise
                        break
                if acc.status == "error" and not _is_worker_loss(acc.exception()):
                    acc.result()  # a genuine error of the computation: raise it as is
                if self._lost(parts) or acc.status in ("error", "cancelled", "lost"):
                    break
            lost = self._lost(parts)
            for future in parts + [acc]:
                future.cancel()
            rebuilt += 1
            if rebuilt > MAX_REBUILDS:
                raise RuntimeError(f"{self.owner}: shards were lost {rebuilt} times in one call; "
                                   f"the workers keep dying (memory limit?).")
            alive = set(self.workers(RESTART_GRACE_SECONDS))
            for k in lost:
                self.rebuilds += 1
                self.place(self.shards[k], self._lightest(alive, exclude=k))

    def _lost(self, parts: list[Any]) -> list[int]:
        """Shards whose worker has left or whose computation died (raises with no worker left)."""
        alive = set(self.workers(RESTART_GRACE_SECONDS))
        return [k for k, (shard, part) in enumerate(zip(self.shards, parts))
                if shard.worker not in alive or part.status in ("error", "cancelled", "lost")]

    def _lightest(self, alive: set[str], exclude: int) -> str:
        load = {w: 0 for w in alive}
        for j, shard in enumerate(self.shards):
            if j != exclude and shard.worker in load:
                load[shard.worker] += len(shard.tasks)
        return min(sorted(load), key=lambda w: load[w])

    def memory_report(self) -> dict[str, dict[str, int]]:
        rss = self.client.run(_worker_rss)
        sizes = self.map(_shard_bytes)
        report = {w: {"rss_bytes": int(v), "shard_bytes": 0, "n_tasks": 0} for w, v in rss.items()}
        for shard, size in zip(self.shards, sizes):
            entry = report.setdefault(shard.worker, {"rss_bytes": 0, "shard_bytes": 0, "n_tasks": 0})
            entry["shard_bytes"] += int(size)
            entry["n_tasks"] += len(shard.tasks)
        return report


def _is_worker_loss(exc: BaseException | None) -> bool:
    """Whether a failed call died with its worker (then its shard is rebuilt) rather than by its own error."""
    import concurrent.futures

    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    loss_types: tuple = (KilledWorker, CommClosedError, concurrent.futures.CancelledError)
    cancelled = getattr(_distributed().client, "FutureCancelledError", None)
    if cancelled is not None:
        loss_types += (cancelled,)
    return isinstance(exc, loss_types)


_RL_SETTINGS = ("tau", "eta", "solver", "tol", "maxiter", "task_workers")


def _check_keywords(settings: dict, allowed: Any, base: str, owner: str) -> dict:
    """The keywords of ``base`` (MetaRL or MetaSL) that a distributed class passes on."""
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise TypeError(f"{owner} got unexpected keyword(s) {unknown}; {base}'s are {list(allowed)}.")
    return dict(settings)


def _describe_factory(client: Any, describe: Any, factory: Any, specs: list, owner: str) -> tuple[list, list]:
    """Run ``describe(factory, spec)`` on the workers for every spec: ((spec, position) of
    each task in order, each task's description); an error when no task was built."""
    described = client.gather(client.map(describe, [factory] * len(specs), specs, pure=False))
    spec_of = [(s, j) for s, metas in enumerate(described) for j in range(len(metas))]
    metas = [m for metas in described for m in metas]
    if not metas:
        raise ValueError(f"The 'factory' of {owner} built no task from the {len(specs)} specs.")
    return spec_of, metas


def _submit_shard(owner: Any, shard: _Shard, worker: str, build: Any, *rest: Any) -> Any:
    """Submit ``build(data, factory, picks, *rest)`` for one shard, pinned to ``worker``.

    With the client's tasks, they are scattered straight to that worker (the scheduler
    never holds them) as one packed blob; with a task factory, only the specs and the
    positions to keep travel, as consecutive runs per spec.
    """
    client = owner._cluster.client
    common = dict(workers=[worker], allow_other_workers=False, pure=False)
    if owner.tasks is not None:
        [data] = client.scatter([_pack([owner.tasks[i] for i in shard.tasks])], workers=[worker], hash=False)
        return client.submit(_build_on_worker, build, WORKER_MALLOC, data, None, None, *rest, **common)
    picks: list[tuple[int, list[int]]] = []  # (spec index, positions in factory(spec))
    for i in shard.tasks:
        s, j = owner._spec_of[i]
        if picks and picks[-1][0] == s:
            picks[-1][1].append(j)
        else:
            picks.append((s, [j]))
    specs = [(owner._specs[s], positions) for s, positions in picks]
    return client.submit(_build_on_worker, build, WORKER_MALLOC, None, owner._factory, specs, *rest, **common)


class DaskMetaRL(EnergyObjective):
    """:class:`fastmeta.MetaRL` with its tasks spread over a Dask cluster; the same bits as one process.

    Parameters
    ----------
    client : dask.distributed.Client
        A client of the cluster; shards are placed on the workers present now.
    tasks : TabularMDP or sequence of TabularMDP
        The tasks, as for MetaRL; the client keeps them to rebuild shards of lost
        workers. (To build tasks on the workers instead, use :meth:`from_factory`.)
    model : Energy
        The energy f_theta; it lives on the client (the gradient's last step,
        ``energy_vjp``, runs there) and is sent once to every shard.
    **settings
        ``tau``, ``eta``, ``solver``, ``tol``, ``maxiter``, ``task_workers``: as for MetaRL.

    Notes
    -----
    ``objective``, ``gradient``, ``value_and_grad``, ``grad_energy`` and ``fit`` (with or
    without a task sampler) equal MetaRL's on the same tasks bit for bit, computed in the
    client's process. A checkpoint written by either class resumes in the other. The
    theory measures :func:`fastmeta.theory.meta_visitation` (also :meth:`meta_visitation`)
    and :func:`fastmeta.theory.rl_gap` take a DaskMetaRL: their per-task work runs on the
    workers unit by unit and is added in unit order, with the same bits as on one-process
    MetaRL (:mod:`fastmeta.theory.rl_units`).
    """

    _owner = "DaskMetaRL"

    def __init__(self, client: Any, tasks: TabularMDP | Sequence[TabularMDP], model: Any, **settings: Any):
        owner = "DaskMetaRL"
        tasks = check_nonempty_list(tasks, "tasks", owner)
        self._settings = self._check_settings(settings, owner)
        # Validates model, settings and the first task exactly as MetaRL does.
        MetaRL(tasks[:1], model, **self._settings)
        S_A = tasks[0].shape
        for i, task in enumerate(tasks):
            if not isinstance(task, TabularMDP):
                raise TypeError(f"The 'tasks' parameter of {owner} must hold TabularMDP objects. "
                                f"Got {type(task).__name__} at position {i} instead.")
            if task.shape != S_A:
                raise ValueError(f"The 'tasks' parameter of {owner} must hold tasks with one (S, A). "
                                 f"Task 0 has {S_A}, task {i} has {task.shape}.")
        self.tasks: list[TabularMDP] | None = tasks
        self._factory = None
        self._setup(client, model, [_task_meta(t) for t in tasks], owner)

    @classmethod
    def from_factory(cls, client: Any, factory: Callable[[Any], Sequence[TabularMDP]], specs: Sequence[Any],
                     model: Any, **settings: Any) -> "DaskMetaRL":
        """Build the tasks on the workers: ``factory(spec)`` returns a list of TabularMDP.

        The problem's tasks are those of ``factory(specs[0])``, then ``factory(specs[1])``
        and so on (the one-process equivalent is ``MetaRL(sum((factory(s) for s in specs),
        []), model, ...)``). ``factory`` must be deterministic (build from a seed or a file
        path) and importable on the workers; it is called once per spec to describe the
        tasks, then again wherever a shard (or a lost shard's replacement) is built. The
        client never holds the tasks.
        """
        owner = "DaskMetaRL.from_factory"
        if not callable(factory):
            raise TypeError(f"The 'factory' parameter of {owner} must be a callable spec -> list of TabularMDP. "
                            f"Got {type(factory).__name__} instead.")
        specs = check_nonempty_list(specs, "specs", owner)
        self = cls.__new__(cls)
        self._settings = self._check_settings(settings, owner)
        self.tasks = None
        self._factory, self._specs = factory, specs
        _Cluster(client, owner).workers()  # a clear error before any work when the cluster is empty
        self._spec_of, metas = _describe_factory(client, _describe_rl, factory, specs, owner)
        shapes = {m[4] for m in metas}
        if len(shapes) != 1:
            raise ValueError(f"The 'factory' of {owner} must build tasks with one (S, A). Got {sorted(shapes)}.")
        self._setup(client, model, metas, owner)
        return self

    @staticmethod
    def _check_settings(settings: dict, owner: str) -> dict:
        return _check_keywords(settings, _RL_SETTINGS, "MetaRL", owner)

    def _setup(self, client: Any, model: Any, metas: list[tuple], owner: str) -> None:
        self.model = model
        self._model_blob = _pack(model)
        self._metas = metas
        self._theory_calls = itertools.count()
        self.n_tasks = len(metas)
        self.n_states, self.n_actions = metas[0][4]
        solver = self._settings.get("solver", "auto")
        # The units of one-process MetaRL, from the tasks' kernel fingerprints and discounts alone.
        groups: dict[tuple[str, float], list[int]] = {}
        for i, meta in enumerate(metas):
            groups.setdefault((meta[0], meta[1]), []).append(i)
        self._batched = solver == "batched" or (solver == "auto" and self.n_states <= BATCH_MAX_STATES)
        self._unit_tasks = (batch_layout((self.n_states, self.n_actions), list(groups.values()))
                            if self._batched else list(groups.values()))
        self._cluster = cluster = _Cluster(client, owner, self._submit_build)
        # Contiguous runs of units, so that the running sum can pass from shard to shard in unit order.
        for units in _contiguous([sum(metas[i][5] for i in u) for u in self._unit_tasks], len(cluster.workers())):
            order = [i for u in units for i in self._unit_tasks[u]]
            local = {i: j for j, i in enumerate(order)}
            cluster.shards.append(_Shard(units, order, [[local[i] for i in self._unit_tasks[u]] for u in units]))
        cluster.place_all()
        # Settings as MetaRL normalises them, and the solvers "auto" chose, from the shards themselves.
        described = cluster.map(_describe_shard)
        self._base_tag = described[0][0]
        self.solver_methods = sorted({m for _, methods, _ in described for m in methods})
        for name, value in described[0][2].items():
            setattr(self, name, value)

    def _submit_build(self, shard: _Shard, worker: str) -> Any:
        return _submit_shard(self, shard, worker, _build_rl, shard.layout, self._model_blob, self._settings)

    # ------------------------------------------------------------------ the MetaRL API
    # init_params, objective, gradient, value_and_grad, grad_energy: EnergyObjective's, over _run.
    def _run(self, theta: np.ndarray, want_grad: bool) -> tuple[float, np.ndarray | None]:
        f = self.model.energy(theta)
        # The running sum passes along the shards in unit order: MetaRL._combine's additions.
        return mean_of_sums(self._cluster.chain(_rl_partials, add_partials, f, want_grad), self.n_tasks)

    def fit(self, theta0: Any = None, *, steps: int = 100, lr: StepSize = 1.0, tol: float = 0.0,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1, resume: Any = False,
            overwrite: bool = False, progress: bool = True, optimizer: str = "gd",
            label: str | None = None, sampler: Any = None, seed: int = 0) -> FitResult:
        """Algorithm 1, as :meth:`fastmeta.MetaRL.fit`: same trajectory, same checkpoints.

        With ``sampler``, step l's tasks are ``sampler(numpy.random.default_rng([seed, l]), l)``
        as for MetaRL, but drawn on the workers (the sampler is this step's task factory,
        :meth:`from_factory`), so the client never holds them; the sampler must be
        importable there. A resumed run draws exactly the tasks the uninterrupted one drew.
        """
        theta0 = self.model.init_params() if theta0 is None else self.model.check_params(theta0, "DaskMetaRL")
        value_and_grad, tag = self.value_and_grad, self._tag
        if sampler is not None:
            _, tag = MetaRL._sampled(self, sampler, seed)  # MetaRL's checks and checkpoint tag
            draw = _StepSampler(sampler, seed)
            client = self._cluster.client

            def value_and_grad(theta: np.ndarray, step: int) -> tuple[float, np.ndarray]:
                meta = DaskMetaRL.from_factory(client, draw, [step], self.model, **self._settings)
                return meta.value_and_grad(theta)

        return run_gradient_method(value_and_grad, theta0, steps=steps, lr=lr, maximize=True, tol=tol,
                                   project=self.model.project, checkpoint=checkpoint,
                                   checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite,
                                   progress=progress, optimizer=optimizer, tag=tag,
                                   owner="MetaRL.fit", label=label or "DaskMetaRL.fit",
                                   step_aware=sampler is not None)

    def _tag(self) -> dict[str, str]:
        """MetaRL's checkpoint tag, from the tasks' digests (so checkpoints move between the classes)."""
        tag = dict(self._base_tag)
        tag.update(solver=",".join(self.solver_methods), n_tasks=str(self.n_tasks))
        for i, (fp, gamma, r_digest, init_digest, _, _) in enumerate(self._metas):
            tag[f"tasks[{i}].P"] = "blake2b:" + fp
            tag[f"tasks[{i}].r"] = r_digest
            tag[f"tasks[{i}].gamma"] = repr(gamma)
            tag[f"tasks[{i}].init"] = init_digest
        return tag

    # ------------------------------------------------------------------ theory measures
    def meta_visitation(self, theta: Any, *, per_task: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """:func:`fastmeta.theory.meta_visitation` computed on the workers: (varsigma, varrho).

        The same bits as ``theory.meta_visitation(MetaRL(tasks, ...), theta)``. With
        ``per_task=False`` only varrho (S x A) comes back; the n x S x A varsigma_i stay
        on the workers. :func:`fastmeta.theory.rl_gap` takes a DaskMetaRL too.
        """
        from .theory import meta_visitation

        return meta_visitation(self, theta, per_task=per_task)

    def _theory_units(self) -> "_ClusterUnits":
        """The per-unit forms of :mod:`fastmeta.theory` on this problem's shards (used by the theory functions)."""
        return _ClusterUnits(self)

    # ------------------------------------------------------------------ distributed extras
    def local(self) -> MetaRL:
        """A one-process MetaRL on the client's tasks (or, from a factory, on tasks built here)."""
        tasks = self.tasks
        if tasks is None:
            tasks = [t for spec in self._specs for t in self._factory(spec)]
        return MetaRL(tasks, self.model, **self._settings)

    def memory_report(self) -> dict[str, dict[str, int]]:
        """Per worker: ``rss_bytes`` (the process's resident memory), ``shard_bytes`` (arrays of its
        tasks, batches and patterns; factorisations live only during a call) and ``n_tasks``."""
        return self._cluster.memory_report()

    @property
    def placement(self) -> dict[str, list[int]]:
        """Worker address -> the unit indices it computes."""
        out: dict[str, list[int]] = {}
        for shard in self._cluster.shards:
            out.setdefault(shard.worker, []).extend(shard.units)
        return out

    @property
    def rebuilds(self) -> int:
        """Shards rebuilt after a worker was lost (since construction)."""
        return self._cluster.rebuilds

    def __repr__(self) -> str:
        return (f"DaskMetaRL(n_tasks={self.n_tasks}, S={self.n_states}, A={self.n_actions}, "
                f"units={len(self._unit_tasks)}, shards={len(self._cluster.shards)})")


class _ClusterUnits:
    """:class:`fastmeta.theory.rl_units.LocalUnits` for a DaskMetaRL: the passes run on its shards.

    ``sums`` passes the running sums along the shards in unit order (the additions of
    one process), one set of S x A sums travelling worker to worker and one coming back;
    each shard keeps its tasks' measures for ``finish``, which sends varrho to every shard
    and brings back one float each (and the varsigma_i only when asked).
    """

    def __init__(self, meta: DaskMetaRL):
        self._meta = meta
        self._call = next(meta._theory_calls)
        self.n_tasks = meta.n_tasks
        self.gammas = np.array([m[1] for m in meta._metas])

    def sums(self, kind: str, fs: tuple, keep: bool) -> rl_units.Sums:
        return self._meta._cluster.chain(_theory_partials, rl_units.add_sums, self._call, kind, fs, keep)

    def finish(self, kind: str, fs: tuple, varrho: np.ndarray | None,
               want_rows: bool) -> tuple[float | None, np.ndarray | None]:
        cluster = self._meta._cluster
        results = cluster.map(_theory_finish, self._call, kind, fs, varrho, want_rows)
        c0 = None if varrho is None else max(c for c, _ in results)
        if not want_rows:
            return c0, None
        meta = self._meta
        varsigma = np.empty((meta.n_tasks, meta.n_states, meta.n_actions))
        for shard, (_, rows) in zip(cluster.shards, results):
            for local, vs in rows:
                varsigma[shard.tasks[local]] = vs
        return c0, varsigma


_SL_SETTINGS = ("loss", "eta", "first_order")


class DaskMetaSL:
    """:class:`fastmeta.MetaSL` with its tasks spread over a Dask cluster; the same bits as one process.

    Parameters
    ----------
    client : dask.distributed.Client
    tasks : sequence of SLTask
        The tasks, as for MetaSL; the client keeps them to rebuild shards of lost
        workers. (To build tasks on the workers instead, use :meth:`from_factory`.)
    model : Predictor
    **settings
        ``loss``, ``eta``, ``first_order``: as for MetaSL.

    Attributes
    ----------
    local : MetaSL or None
        The one-process MetaSL on the client's tasks (for ``adapt``, ``risk`` and the
        theory tools); None when the tasks were built on the workers.

    Notes
    -----
    Every worker returns one loss and one gradient row per task; the client reduces
    them exactly as the model's one-process kernel does (task order), so the result
    does not depend on the number of workers. Bytes back per call: n_tasks *
    (n_params + 1) * 8.
    """

    def __init__(self, client: Any, tasks: Sequence[SLTask], model: Any, **settings: Any):
        owner = "DaskMetaSL"
        self._settings = self._check_settings(settings, owner)
        self.local: MetaSL | None = MetaSL(tasks, model, **self._settings)
        self.tasks: list[SLTask] | None = self.local.tasks
        self._factory = self._specs = None
        rows = [(t.X.shape[0], t.split("query")[0].shape[0]) for t in self.tasks]
        self._setup(client, self.local, rows, owner)

    @classmethod
    def from_factory(cls, client: Any, factory: Callable[[Any], Any], specs: Sequence[Any], model: Any,
                     **settings: Any) -> "DaskMetaSL":
        """Build the tasks on the workers: ``factory(spec)`` returns a list of SLTask or a TaskBatch.

        As :meth:`DaskMetaRL.from_factory`: the problem's tasks are those of
        ``factory(specs[0])``, then ``factory(specs[1])`` and so on; ``factory`` must be
        deterministic and importable on the workers. The client fetches one task (to
        check the model against it) and, only if a checkpoint tag is asked for, the
        packed data one spec at a time (to digest it as MetaSL does); it never holds
        all the tasks.
        """
        owner = "DaskMetaSL.from_factory"
        if not callable(factory):
            raise TypeError(f"The 'factory' parameter of {owner} must be a callable spec -> list of SLTask. "
                            f"Got {type(factory).__name__} instead.")
        specs = check_nonempty_list(specs, "specs", owner)
        self = cls.__new__(cls)
        self._settings = self._check_settings(settings, owner)
        self.local, self.tasks = None, None
        self._factory, self._specs = factory, specs
        _Cluster(client, owner).workers()  # a clear error before any work when the cluster is empty
        self._spec_of, metas = _describe_factory(client, _describe_sl, factory, specs, owner)
        dims = sorted({m[2] for m in metas})
        if len(dims) != 1:
            raise ValueError(f"The 'factory' of {owner} must build tasks of one input dimension. Got {dims}.")
        # A one-task MetaSL on the client: the model's checks, binding, parameters and projection.
        first = client.submit(_first_sl_task, factory, specs[0], pure=False).result()
        self._setup(client, MetaSL([first], model, **self._settings), [m[:2] for m in metas], owner)
        return self

    @staticmethod
    def _check_settings(settings: dict, owner: str) -> dict:
        return _check_keywords(settings, _SL_SETTINGS, "MetaSL", owner)

    def _setup(self, client: Any, proto: MetaSL, rows: list[tuple[int, int]], owner: str) -> None:
        self._proto = proto  # a MetaSL with this problem's model and settings (all tasks, or one)
        self.model, self.n_tasks, self.n_params = proto.model, len(rows), proto.n_params
        self._rows = rows
        self._full_rows = (sum(r[0] for r in rows), sum(r[1] for r in rows))
        self._model_blob = _pack(self.model)
        self._tag_cache: dict[str, str] | None = None
        self._cluster = cluster = _Cluster(client, owner, self._submit_build)
        for part in _partition([ns + nq for ns, nq in rows], len(cluster.workers())):
            cluster.shards.append(_Shard(part, part, [[j] for j in range(len(part))]))
        cluster.place_all()

    def _submit_build(self, shard: _Shard, worker: str) -> Any:
        return _submit_shard(self, shard, worker, _build_sl, self._model_blob, self._settings, self._full_rows)

    def init_params(self) -> np.ndarray:
        """The model's starting parameters, as :meth:`fastmeta.MetaSL.init_params`."""
        return self._proto.init_params()

    def objective(self, theta: Any) -> float:
        """L(theta), as :meth:`fastmeta.MetaSL.objective`."""
        theta = self._proto._check_params(theta, "DaskMetaSL.objective")
        return self._run(theta, _ksl.MODE_VALUE)[0]

    def gradient(self, theta: Any) -> np.ndarray:
        """grad L(theta), as :meth:`fastmeta.MetaSL.gradient`."""
        theta = self._proto._check_params(theta, "DaskMetaSL.gradient")
        return self._run(theta, self._proto._grad_mode)[1]

    def value_and_grad(self, theta: Any) -> tuple[float, np.ndarray]:
        """(L, grad L), as :meth:`fastmeta.MetaSL.value_and_grad`."""
        theta = self._proto._check_params(theta, "DaskMetaSL.value_and_grad")
        return self._run(theta, self._proto._grad_mode)

    def _run(self, theta: np.ndarray, mode: int) -> tuple[float, np.ndarray | None]:
        n = self.n_tasks
        task_loss = np.empty(n)
        rows = None if mode == _ksl.MODE_VALUE else np.empty((n, theta.shape[0]))
        for shard, (loss, grad) in zip(self._cluster.shards, self._cluster.map(_sl_rows, theta, mode)):
            task_loss[shard.tasks] = loss
            if rows is not None:
                rows[shard.tasks] = grad
        value = float(task_loss.sum()) / n  # MetaSL._run's reduction
        check_computed_finite(value, "the meta-objective L", "DaskMetaSL", "")
        if rows is None:
            return value, None
        grad = _reduce_rows(self.model, rows)
        check_computed_finite(grad, "the meta-gradient", "DaskMetaSL", "")
        return value, grad

    def fit(self, theta0: Any = None, *, steps: int = 100, lr: StepSize = 0.1, tol: float = 0.0,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1, resume: Any = False,
            overwrite: bool = False, progress: bool = True, optimizer: str = "gd",
            label: str | None = None, sampler: Any = None, seed: int = 0) -> FitResult:
        """(4.5), as :meth:`fastmeta.MetaSL.fit`: same trajectory, same checkpoints.

        With ``sampler``, step l's tasks are ``sampler(numpy.random.default_rng([seed, l]), l)``
        (a list of SLTask or a TaskBatch) as for MetaSL, drawn on the workers (the sampler
        is this step's task factory, :meth:`from_factory`); a resumed run draws exactly
        the tasks the uninterrupted one drew.
        """
        proto = self._proto
        theta0 = proto.init_params() if theta0 is None else proto._check_params(theta0, "MetaSL.fit", "theta0")
        value_and_grad, tag = self.value_and_grad, self.tag_components
        if sampler is not None:
            _, tag = proto._sampled(sampler, seed, "MetaSL.fit")  # MetaSL's checks and checkpoint tag
            draw = _StepSampler(sampler, seed)
            client = self._cluster.client

            def value_and_grad(theta: np.ndarray, step: int) -> tuple[float, np.ndarray]:
                return DaskMetaSL.from_factory(client, draw, [step], self.model, **self._settings).value_and_grad(theta)

        return run_gradient_method(value_and_grad, theta0, steps=steps, lr=lr, maximize=False, tol=tol,
                                   project=proto._project, checkpoint=checkpoint,
                                   checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite,
                                   progress=progress, optimizer=optimizer, tag=tag, owner="MetaSL.fit",
                                   label=label or "DaskMetaSL.fit", step_aware=sampler is not None)

    def tag_components(self) -> dict[str, str]:
        """:meth:`fastmeta.MetaSL.tag_components` of the same tasks (so checkpoints move between the classes)."""
        if self._tag_cache is None:
            self._tag_cache = self.local.tag_components() if self.local is not None else self._streamed_tag()
        return dict(self._tag_cache)

    def _streamed_tag(self) -> dict[str, str]:
        """MetaSL's tag from the packed data of one spec at a time (the client never holds all of it)."""
        client = self._cluster.client
        dz = self._proto._packed.Zs.shape[1]
        (ns, nq), n = self._full_rows, self.n_tasks
        support, query = _StreamDigest(ns * dz + ns), _StreamDigest(nq * dz + nq)
        ys, yq = [], []
        for spec in self._specs:
            Zs_k, ys_k, Zq_k, yq_k = client.submit(_packed_sl, self._factory, spec, self._model_blob,
                                                   self._settings, pure=False).result()
            support.update(Zs_k)
            query.update(Zq_k)
            ys.append(ys_k)
            yq.append(yq_k)
        for y in ys:
            support.update(y)
        for y in yq:
            query.update(y)
        offs = np.zeros(n + 1, dtype=np.int64)
        offq = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([r[0] for r in self._rows], out=offs[1:])
        np.cumsum([r[1] for r in self._rows], out=offq[1:])
        return {**self._proto._settings_tag(), "n_tasks": str(n), "support data": support.hexdigest(),
                "support sizes": digest(offs), "query data": query.hexdigest(), "query sizes": digest(offq)}

    def memory_report(self) -> dict[str, dict[str, int]]:
        """As :meth:`DaskMetaRL.memory_report`."""
        return self._cluster.memory_report()

    @property
    def rebuilds(self) -> int:
        """Shards rebuilt after a worker was lost (since construction)."""
        return self._cluster.rebuilds

    def __repr__(self) -> str:
        return f"DaskMetaSL(n_tasks={self.n_tasks}, shards={len(self._cluster.shards)})"


class _StreamDigest:
    """:func:`fastmeta._optim.digest` of a float64 vector of known length, fed in pieces."""

    def __init__(self, length: int):
        import hashlib

        from ._fingerprint import DIGEST_SIZE

        self._h = hashlib.blake2b(digest_size=DIGEST_SIZE)
        self._h.update(f"nd:{np.dtype(np.float64).str}:{(length,)}:".encode())  # array_digest's header
        self._left = length

    def update(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float64).ravel()
        self._left -= arr.size
        self._h.update(memoryview(arr).cast("B"))

    def hexdigest(self) -> str:
        if self._left != 0:
            raise RuntimeError("the workers' packed data does not have the sizes they described")
        return "blake2b:" + self._h.hexdigest()


def _reduce_rows(model: Any, rows: np.ndarray) -> np.ndarray:
    """The mean of the per-task rows with the one-process kernel's arithmetic (a sum in task order)."""
    from .neural import TwoLayerReLU

    n = rows.shape[0]
    if isinstance(model, TwoLayerReLU):  # relu_meta sums in task order, then multiplies by 1/n
        return rows.sum(axis=0) * (1.0 / n)
    return rows.sum(axis=0) / n  # LinearModel, MLP (task_grad.sum(axis=0) / n) and MetaSL._run_generic


def profile_on_cluster(scheduler: str, tasks: Sequence[TabularMDP], model: Any, theta: np.ndarray,
                       repeats: int = 3, **settings: Any) -> dict:
    """Set-up and gradient time of :class:`DaskMetaRL` on the cluster at ``scheduler``, with memory.

    Used by ``fastmeta profile --scheduler ADDRESS``; prints a short report and returns it.
    """
    dist = _distributed()
    with dist.Client(scheduler) as client:
        t0 = time.perf_counter()
        meta = DaskMetaRL(client, tasks, model, **settings)
        setup = time.perf_counter() - t0
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            meta.value_and_grad(theta)
            times.append(time.perf_counter() - t0)
        memory = meta.memory_report()
    report = {"scheduler": scheduler, "workers": len(memory), "setup_seconds": setup,
              "gradient_seconds": float(np.median(times)), "memory": memory}
    print(f"distributed on {scheduler}: {len(memory)} workers, set-up {setup:.3f} s, "
          f"gradient {report['gradient_seconds']:.4f} s (median of {len(times)})")
    for worker, entry in sorted(memory.items()):
        print(f"  {worker:<40}{entry['n_tasks']:>6} tasks{entry['shard_bytes'] / 2**20:>10.1f} MiB shard"
              f"{entry['rss_bytes'] / 2**20:>10.0f} MiB RSS")
    return report
