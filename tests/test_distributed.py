"""DaskMetaRL / DaskMetaSL: the same bits as one process, through worker loss and cluster restarts.

Every one-process reference is computed here, in the test process, whatever this
process compiled itself or loaded from Numba's cache before: the kernels are compiled
without reassociation or contraction (fastmeta/_kernels/_config.py), so every
compilation of a kernel rounds the same way, and the workers receive arrays of the
client's types (one compilation per kernel, the client's). No kernel is compiled
ahead of the cluster on purpose.
"""
import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")
from distributed import Client, LocalCluster  # noqa: E402

import fastmeta  # noqa: E402
from fastmeta import theory  # noqa: E402
from fastmeta.distributed import DaskMetaRL, DaskMetaSL  # noqa: E402
from fastmeta.theory import rl_units  # noqa: E402
from fastmeta.tasks.gridworld import gridworld_kernel  # noqa: E402


def _mixed_tasks(size: int, seed: int) -> tuple[list, np.ndarray]:
    """Gridworld goals (one shared kernel), random MDPs (own kernels), a repeat and a second discount."""
    grid, phi = fastmeta.tasks.gridworld_goals(n_tasks=4, size=size, seed=seed)
    rand, _ = fastmeta.tasks.random_mdps(n_tasks=3, n_states=size * size, n_actions=4, seed=seed + 1)
    other = fastmeta.TabularMDP(grid[0].P, grid[1].r, 0.9, grid[1].init)  # shared kernel, other gamma
    return grid + rand + [rand[0], other, grid[2]], phi


def _slip_factory(spec):
    """Tasks of one spec: two goals on a gridworld whose slip depends on the spec (own kernel)."""
    size, seed = spec
    P = gridworld_kernel(size, slip=0.05 + 0.01 * seed)
    S = size * size
    tasks = []
    for goal in (seed % S, (7 * seed + 3) % S):
        r = np.zeros((S, 4))
        r[goal] = 1.0
        tasks.append(fastmeta.TabularMDP(P, r, 0.95, np.full(S, 1.0 / S)))
    return tasks


RL_CASES = {
    "grid-batched": lambda: (fastmeta.tasks.gridworld_goals(n_tasks=6, size=6, seed=0), {}),
    "mixed-batched": lambda: (_mixed_tasks(6, 1), {}),
    "grid-sparse": lambda: (fastmeta.tasks.gridworld_goals(n_tasks=6, size=6, seed=2), {"solver": "splu"}),
    "mixed-sparse": lambda: (_mixed_tasks(6, 3), {"solver": "splu"}),
    "mixed-auto-large": lambda: (_mixed_tasks(18, 4), {}),
}


def _sl_tasks(n: int = 13):
    rng = np.random.default_rng(5)
    return [fastmeta.SLTask(rng.normal(size=(6, 3)), rng.normal(size=6), rng.normal(size=(4, 3)), rng.normal(size=4))
            for _ in range(n)]


SL_MODELS = {
    "linear": lambda: fastmeta.LinearModel("affine"),
    "relu": lambda: fastmeta.TwoLayerReLU(3, width=16, seed=0),
    "mlp": lambda: fastmeta.models.MLP(3, hidden=(8, 8)),
}


def _rl_reference(tasks, model, settings, theta, steps):
    meta = fastmeta.MetaRL(tasks, model, **settings)
    fit = meta.fit(theta, steps=steps, lr=0.5, progress=False) if steps else None
    return meta.value_and_grad(theta), meta.objective(theta), meta.grad_energy(theta), meta._tag(), fit


def _sl_reference(tasks, model, theta, steps):
    meta = fastmeta.MetaSL(tasks, model, eta=0.2)
    fit = meta.fit(theta, steps=steps, lr=0.1, progress=False) if steps else None
    return meta.value_and_grad(theta), meta.objective(theta), fit


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0")
    with Client(cluster) as c:
        yield c
    cluster.close()


def _kernel_signatures():
    """{kernel: set of compiled signatures} of this process's fastmeta kernels."""
    import importlib
    import pkgutil

    import numba

    import fastmeta._kernels as kernels

    out = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"fastmeta._kernels.{info.name}")
        for obj in vars(module).values():
            for dispatcher in (obj, getattr(obj, "serial", None), getattr(obj, "parallel", None)):
                if isinstance(dispatcher, numba.core.registry.CPUDispatcher) and dispatcher.signatures:
                    name = f"{info.name}.{dispatcher.py_func.__qualname__}"
                    out.setdefault(name, set()).update(str(sig) for sig in dispatcher.signatures)
    return out


def _let_the_nanny_restart(client):
    """Give a killed worker's nanny time to start it again (later tests work with one worker too)."""
    try:
        client.wait_for_workers(2, timeout=120)
    except Exception:  # noqa: BLE001 - a slow restart on a loaded machine is not what these tests check
        pass


def _same_fit(a, b):
    assert np.array_equal(a.theta, b.theta)
    assert np.array_equal(a.objective, b.objective)
    assert np.array_equal(a.grad_norm, b.grad_norm)


@pytest.mark.parametrize("case", sorted(RL_CASES))
def test_rl_equals_one_process_bit_for_bit(client, case):
    (tasks, phi), settings = RL_CASES[case]()
    model = fastmeta.LinearEnergy(phi)
    theta = np.random.default_rng(0).normal(size=model.n_params) * 0.3
    steps = 5 if case in ("mixed-batched", "mixed-sparse") else 0
    (L, g), obj, dfe, tag, fit = _rl_reference(tasks, model, settings, theta, steps)
    meta = DaskMetaRL(client, tasks, model, **settings)
    assert len(meta._cluster.shards) == min(2, len(meta._unit_tasks))
    L2, g2 = meta.value_and_grad(theta)
    assert L2 == L and np.array_equal(g2, g)
    assert meta.objective(theta) == obj
    assert np.array_equal(meta.grad_energy(theta), dfe)
    assert np.array_equal(meta.gradient(theta), g)
    assert meta._tag() == tag  # checkpoints move between MetaRL and DaskMetaRL
    if steps:
        _same_fit(meta.fit(theta, steps=5, lr=0.5, progress=False), fit)
    # A unit is never split: every unit's tasks live on one worker.
    placed = sorted(u for units in meta.placement.values() for u in units)
    assert placed == list(range(len(meta._unit_tasks)))
    # The workers ran kernels compiled for the client's array types, no other specialisation.
    here = _kernel_signatures()
    for worker, theirs in client.run(_kernel_signatures).items():
        for kernel, signatures in theirs.items():
            assert signatures <= here.get(kernel, set()), (worker, kernel, signatures - here.get(kernel, set()))


def _same_report(got, want, per_task=True):
    """Every term of two Theorem 3.5 reports, bit for bit."""
    assert got.to_dict() == want.to_dict()
    assert got.notes == want.notes
    for name in ("varrho", "gbar", "f_omega", "f_omega_printed", "grad", "v", "omega", "comparator"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    if per_task:
        assert np.array_equal(got.varsigma, want.varsigma)
    else:
        assert got.varsigma is None


def _same_theory(meta, one, seed):
    """meta_visitation and rl_gap of a DaskMetaRL against one-process MetaRL on the same tasks."""
    omega, comparator = np.random.default_rng(seed).normal(size=(2, one.model.n_params)) * 0.3
    varsigma, varrho = theory.meta_visitation(one, omega)
    got_varsigma, got_varrho = meta.meta_visitation(omega)
    assert np.array_equal(got_varsigma, varsigma) and np.array_equal(got_varrho, varrho)
    none, only_varrho = theory.meta_visitation(meta, omega, per_task=False)
    assert none is None and np.array_equal(only_varrho, varrho)
    report = theory.rl_gap(one, omega, comparator)
    _same_report(theory.rl_gap(meta, omega, comparator), report, per_task=False)  # measures stay on the workers
    _same_report(theory.rl_gap(meta, omega, comparator, per_task=True), report)
    return report


@pytest.mark.parametrize("case", ["mixed-sparse", "mixed-auto-large", "mixed-batched-split"])
def test_theory_measures_equal_one_process_bit_for_bit(client, case, monkeypatch):
    if case == "mixed-batched-split":  # 3 tasks per batch: kernel groups cut across batches and shards
        from fastmeta import _rl_batch

        monkeypatch.setattr(_rl_batch, "BATCH_BYTES", 3 * _rl_batch.task_bytes(36, 4))
        (tasks, phi), settings = RL_CASES["mixed-batched"]()
    else:
        (tasks, phi), settings = RL_CASES[case]()
    model = fastmeta.LinearEnergy(phi)
    one = fastmeta.MetaRL(tasks, model, **settings)
    meta = DaskMetaRL(client, tasks, model, **settings)
    assert len(meta._cluster.shards) == 2 and len(meta._unit_tasks) > 2
    report = _same_theory(meta, one, seed=3)
    if settings:  # sparse path: the theory's sums are the gradient's, unit by unit
        assert report.L_omega == one.objective(report.omega)
    # A shard that lost its kept measures between the two passes (a rebuilt shard) computes them again.
    units = meta._theory_units()
    fs = (model.energy(report.omega), model.energy(report.comparator))
    sums = units.sums(rl_units.GAP, fs, keep=True)
    assert np.array_equal(sums["varsigma"] / meta.n_tasks, report.varrho)
    units._call = -1  # not the call the shards kept measures for
    C0, varsigma = units.finish(rl_units.GAP, fs, report.varrho, True)
    assert C0 == report.C0 and np.array_equal(varsigma, report.varsigma)


def test_theory_rejects_other_objects():
    with pytest.raises(TypeError, match="'meta' parameter of meta_visitation must be a fastmeta.MetaRL or a "
                                        "fastmeta.distributed.DaskMetaRL"):
        theory.meta_visitation(object(), np.zeros(3))


def test_one_worker_equals_one_process():
    (tasks, phi), _ = RL_CASES["mixed-batched"]()
    model = fastmeta.LinearEnergy(phi)
    theta = np.random.default_rng(1).normal(size=model.n_params) * 0.3
    (L, g), obj, dfe, _, fit = _rl_reference(tasks, model, {}, theta, 5)
    sl_tasks, sl_model = _sl_tasks(), SL_MODELS["mlp"]()
    sl_theta = fastmeta.MetaSL(sl_tasks, sl_model).init_params() + 0.05
    (Ls, gs), _, sl_fit = _sl_reference(sl_tasks, sl_model, sl_theta, 5)
    with LocalCluster(processes=True, n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as one:
        meta = DaskMetaRL(one, tasks, model)
        assert len(meta._cluster.shards) == 1
        L2, g2 = meta.value_and_grad(theta)
        assert L2 == L and np.array_equal(g2, g) and meta.objective(theta) == obj
        assert np.array_equal(meta.grad_energy(theta), dfe)
        _same_fit(meta.fit(theta, steps=5, lr=0.5, progress=False), fit)
        _same_theory(meta, fastmeta.MetaRL(tasks, model), seed=1)
        sl = DaskMetaSL(one, sl_tasks, sl_model, eta=0.2)
        Ls2, gs2 = sl.value_and_grad(sl_theta)
        assert Ls2 == Ls and np.array_equal(gs2, gs)
        _same_fit(sl.fit(sl_theta, steps=5, lr=0.1, progress=False), sl_fit)


def test_sl_checkpoint_of_one_process_resumes_distributed(client, tmp_path):
    tasks, model = _sl_tasks(), SL_MODELS["linear"]()
    path = tmp_path / "sl.npz"
    whole = fastmeta.MetaSL(tasks, model, eta=0.2).fit(steps=4, lr=0.1, progress=False)
    fastmeta.MetaSL(tasks, model, eta=0.2).fit(steps=2, lr=0.1, progress=False, checkpoint=path)
    resumed = DaskMetaSL(client, tasks, model, eta=0.2).fit(steps=4, lr=0.1, progress=False, checkpoint=path,
                                                             resume=True)
    _same_fit(resumed, whole)
    assert resumed.extra["resumed_from"] == 2


@pytest.mark.parametrize("name", sorted(SL_MODELS))
def test_sl_equals_one_process_bit_for_bit(client, name):
    tasks, model = _sl_tasks(), SL_MODELS[name]()
    theta = fastmeta.MetaSL(tasks, model).init_params() + 0.05
    steps = 5 if name in ("linear", "mlp") else 0
    (L, g), obj, fit = _sl_reference(tasks, model, theta, steps)
    meta = DaskMetaSL(client, tasks, model, eta=0.2)
    L2, g2 = meta.value_and_grad(theta)
    assert L2 == L and np.array_equal(g2, g)
    assert meta.objective(theta) == obj
    assert np.array_equal(meta.gradient(theta), g)
    if steps:
        _same_fit(meta.fit(theta, steps=5, lr=0.1, progress=False), fit)
    report = meta.memory_report()
    assert sum(entry["n_tasks"] for entry in report.values()) == len(tasks)


def test_worker_killed_during_gradient(client):
    specs = [(40, seed) for seed in range(12)]
    tasks = [t for spec in specs for t in _slip_factory(spec)]
    model = fastmeta.LinearEnergy(fastmeta.tasks.random_features(1600, 4, 8, seed=0))
    theta = np.full(model.n_params, 0.1)
    (L, g), *_ = _rl_reference(tasks, model, {}, theta, 0)
    meta = DaskMetaRL(client, tasks, model)
    victim = meta._cluster.shards[0].worker
    pid = client.run(os.getpid, workers=[victim])[victim]
    out = {}
    call = threading.Thread(target=lambda: out.update(result=meta.value_and_grad(theta)))
    call.start()
    deadline = time.monotonic() + 30
    while not client.processing(workers=[victim])[victim] and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    call.join(120)
    L2, g2 = out["result"]
    assert L2 == L and np.array_equal(g2, g)
    if meta.rebuilds == 0:  # the call beat the kill (a very fast machine): the next call meets the loss
        L2, g2 = meta.value_and_grad(theta)
        assert L2 == L and np.array_equal(g2, g)
    assert meta.rebuilds >= 1
    assert victim not in meta.placement
    _let_the_nanny_restart(client)


def test_fit_resumes_after_cluster_restart(client, tmp_path):
    (tasks, phi), _ = RL_CASES["mixed-sparse"]()
    model = fastmeta.LinearEnergy(phi)
    settings = {"solver": "splu"}
    whole = DaskMetaRL(client, tasks, model, **settings).fit(steps=5, lr=0.5, progress=False)
    path = tmp_path / "fit.npz"
    first = DaskMetaRL(client, tasks, model, **settings)
    first.fit(steps=2, lr=0.5, progress=False, checkpoint=path)
    client.restart()
    client.wait_for_workers(2, timeout=120)
    resumed = DaskMetaRL(client, tasks, model, **settings).fit(steps=5, lr=0.5, progress=False,
                                                               checkpoint=path, resume=True)
    _same_fit(resumed, whole)
    assert resumed.extra["resumed_from"] == 2
    # The object built before the restart rebuilds its shards on the new workers.
    assert first.value_and_grad(whole.theta)[0] == whole.objective[-1]
    # A checkpoint of one-process MetaRL resumes in DaskMetaRL (the same tag).
    one_path = tmp_path / "one.npz"
    fastmeta.MetaRL(tasks, model, **settings).fit(steps=3, lr=0.5, progress=False, checkpoint=one_path)
    _same_fit(DaskMetaRL(client, tasks, model, **settings).fit(steps=5, lr=0.5, progress=False,
                                                               checkpoint=one_path, resume=True), whole)


def test_task_factory_builds_on_workers(client):
    specs = [(6, seed) for seed in range(5)] + [(6, 2)]  # the last spec repeats kernels of the third
    model = fastmeta.LinearEnergy(fastmeta.tasks.random_features(36, 4, 8, seed=1))
    theta = np.full(model.n_params, 0.2)
    tasks = [t for spec in specs for t in _slip_factory(spec)]
    for settings in ({}, {"solver": "splu"}):
        (L, g), *_, tag, _ = _rl_reference(tasks, model, settings, theta, 0)
        meta = DaskMetaRL.from_factory(client, _slip_factory, specs, model, **settings)
        assert meta.tasks is None and meta.n_tasks == len(tasks)
        L2, g2 = meta.value_and_grad(theta)
        assert L2 == L and np.array_equal(g2, g)
        assert meta._tag() == tag
        assert [t.kernel_fingerprint for t in meta.local().tasks] == [t.kernel_fingerprint for t in tasks]
        # The theory measures run where the factory built the tasks.
        _same_theory(meta, fastmeta.MetaRL(tasks, model, **settings), seed=2)
        report = meta.memory_report()
        assert sum(entry["n_tasks"] for entry in report.values()) == len(tasks)
        assert all(entry["rss_bytes"] > 0 for entry in report.values())
        assert sum(entry["shard_bytes"] for entry in report.values()) > sum(t.r.nbytes for t in tasks)
        if settings:
            continue
        # A lost shard is rebuilt by calling the factory again on a live worker.
        victim = meta._cluster.shards[0].worker
        os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
        L3, g3 = meta.value_and_grad(theta)
        assert L3 == L and np.array_equal(g3, g) and meta.rebuilds >= 1
        _let_the_nanny_restart(client)


def _page_faults_of_reused_arrays():
    """Minor page faults of 50 allocations of a 320 KB array, each freed before the next."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        np.ones(40_000).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_workers_reuse_freed_memory(client):
    # Dask's MALLOC_TRIM_THRESHOLD_ pins glibc's mmap threshold at 128 KiB: every such array
    # would be a fresh mmap (about 80 page faults each). A shard's worker raises the thresholds.
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the thresholds are glibc malloc's")
    (tasks, phi), settings = RL_CASES["mixed-sparse"]()
    meta = DaskMetaRL(client, tasks, fastmeta.LinearEnergy(phi), **settings)
    workers = sorted(meta.placement)
    assert len(workers) == 2
    faults = client.run(_page_faults_of_reused_arrays, workers=workers)
    assert all(count < 500 for count in faults.values()), faults


def test_no_worker_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(fastmeta.distributed, "RESTART_GRACE_SECONDS", 0.5)
    cluster = LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0")
    with Client(cluster) as c:
        tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=2, size=4, seed=0)
        model = fastmeta.LinearEnergy(phi)
        meta = DaskMetaRL(c, tasks, model)
        meta.objective(model.init_params())
        cluster.scale(0)
        deadline = time.monotonic() + 30
        while c.nthreads() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(RuntimeError, match="no Dask worker is left"):
            meta.objective(model.init_params())
        with pytest.raises(RuntimeError, match="no Dask worker is left"):
            DaskMetaRL(c, tasks, model)
        with pytest.raises(RuntimeError, match="no Dask worker is left"):
            DaskMetaRL.from_factory(c, _slip_factory, [(4, 0)], model)
    cluster.close()


def test_bad_arguments(client):
    tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks=2, size=4, seed=0)
    with pytest.raises(TypeError, match="'client' parameter of DaskMetaRL"):
        DaskMetaRL("tcp://127.0.0.1:8786", tasks, fastmeta.LinearEnergy(phi))
    with pytest.raises(TypeError, match="unexpected keyword"):
        DaskMetaRL(client, tasks, fastmeta.LinearEnergy(phi), taux=1.0)
    with pytest.raises(ValueError, match="'tau' parameter"):
        DaskMetaRL(client, tasks, fastmeta.LinearEnergy(phi), tau=-1.0)
    with pytest.raises(TypeError, match="'factory' parameter"):
        DaskMetaRL.from_factory(client, "not callable", [1], fastmeta.LinearEnergy(phi))


def test_profile_command_with_scheduler(client, capsys, tmp_path):
    from fastmeta import cli

    out = tmp_path / "profile.json"
    assert cli.main(["profile", "--states", "36", "--tasks", "3", "--features", "8", "--repeats", "1",
                     "--scheduler", client.scheduler.address, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"distributed on {client.scheduler.address}: {len(client.nthreads())} workers" in printed
    import json

    report = json.loads(out.read_text())["distributed"]
    assert report["gradient_seconds"] > 0 and sum(e["n_tasks"] for e in report["memory"].values()) == 3


def _goal_sampler(rng, step):
    """Step ``step``'s tasks: three goals of a 5 x 5 gridworld with a slip drawn from ``rng``."""
    P = gridworld_kernel(5, slip=float(rng.uniform(0.05, 0.2)))
    tasks = []
    for goal in rng.choice(25, size=3, replace=False):
        r = np.zeros((25, 4))
        r[goal] = 1.0
        tasks.append(fastmeta.TabularMDP(P, r, 0.9, np.full(25, 1 / 25)))
    return tasks


def test_rl_fit_with_sampler_resumes_the_stream(client, tmp_path):
    phi = fastmeta.tasks.random_features(25, 4, 6, seed=3)
    model = fastmeta.LinearEnergy(phi)
    kwargs = dict(steps=4, lr=0.5, progress=False, sampler=_goal_sampler, seed=7)
    whole = fastmeta.MetaRL(_goal_sampler(np.random.default_rng(0), 0), model).fit(**kwargs)
    meta = DaskMetaRL(client, _goal_sampler(np.random.default_rng(1), 0), model)
    _same_fit(meta.fit(**kwargs), whole)
    path = tmp_path / "sampled.npz"
    meta.fit(**{**kwargs, "steps": 2}, checkpoint=path)
    resumed = meta.fit(**kwargs, checkpoint=path, resume=True)
    _same_fit(resumed, whole)
    assert resumed.extra["resumed_from"] == 2
    # The checkpoint of the one-process sampled run resumes in the distributed class.
    one = tmp_path / "one.npz"
    fastmeta.MetaRL(_goal_sampler(np.random.default_rng(0), 0), model).fit(
        **{**kwargs, "steps": 3}, checkpoint=one)
    _same_fit(meta.fit(**kwargs, checkpoint=one, resume=True), whole)


def _sl_factory(spec):
    """Regression tasks of one spec (a seed), built where the factory runs."""
    rng = np.random.default_rng(spec)
    return [fastmeta.SLTask(rng.normal(size=(5, 3)), rng.normal(size=5), rng.normal(size=(4, 3)), rng.normal(size=4))
            for _ in range(1 + spec % 3)]


def test_sl_task_factory_and_sampler(client, tmp_path):
    specs = [3, 4, 5, 6]
    tasks = [t for spec in specs for t in _sl_factory(spec)]
    for name in ("linear", "mlp"):
        model = SL_MODELS[name]()
        one = fastmeta.MetaSL(tasks, model, eta=0.2)
        theta = one.init_params() + 0.05
        meta = DaskMetaSL.from_factory(client, _sl_factory, specs, model, eta=0.2)
        assert meta.tasks is None and meta.local is None and meta.n_tasks == len(tasks)
        L, g = one.value_and_grad(theta)
        L2, g2 = meta.value_and_grad(theta)
        assert L2 == L and np.array_equal(g2, g)
        # MetaSL's checkpoint tag, from data digested one spec at a time on the client.
        assert meta.tag_components() == one.tag_components()
    sampler = fastmeta.tasks.sinusoid_sampler(n_tasks=6, k_shot=4, k_query=3)
    model = fastmeta.models.MLP(1, hidden=(8, 8))
    one = fastmeta.MetaSL(fastmeta.tasks.sinusoid_tasks(2, k_shot=4, seed=0), model, eta=0.2)
    kwargs = dict(steps=3, lr=0.05, progress=False, sampler=sampler, seed=11)
    whole = one.fit(**kwargs)
    meta = DaskMetaSL(client, fastmeta.tasks.sinusoid_tasks(3, k_shot=4, seed=1), model, eta=0.2)
    _same_fit(meta.fit(**kwargs), whole)
    path = tmp_path / "sl.npz"
    one.fit(**{**kwargs, "steps": 1}, checkpoint=path)
    _same_fit(meta.fit(**kwargs, checkpoint=path, resume=True), whole)
