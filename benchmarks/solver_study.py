"""Solver study for fastmeta.linalg: M = I - gamma P_pi on gridworlds and RL^2-style random MDPs.

Usage: python benchmarks/solver_study.py [section ...]
sections: grid (10^5 and 10^6 krylov), rl2 (random MDP 10^5), auto (thresholds for choose_method),
workload N [N ...] (the linear algebra of one meta-gradient of the benchmark problem, replayed
with splu and krylov), restart (GMRES restart length vs iterations), variants N [name ...]
(one captured meta-gradient replayed with krylov under settings variants, interleaved in one
process: smoother sweeps, restart, float32 hierarchy, reorthogonalisation; ``rounds=R``, default 2), gradients N [name ...] (whole
MetaRL gradients with features on the fly under those variants, one process, alternating order),
interpolation N [name ...] [rounds=R] [pkl=PATH] (per system of one captured gradient: iterations,
set-up and solve seconds of the multigrid interpolation variants, default constant and smoothed),
families [family:S ...] [rounds=R] (the same, constant against smoothed, on 10^4/10^5 grids, a 10^5 ring and
10^4 RL^2 random MDPs of benchmarks/solver_comparison.py).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import scipy.sparse as sp

from fastmeta import linalg


def gridworld(N, slip=0.1, A=4):
    S = N * N
    x, y = np.divmod(np.arange(S), N)
    moves = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    rows, cols, vals = [], [], []
    for a in range(A):
        for b, (ex, ey) in enumerate(moves):
            p = (1 - slip) * (a == b) + slip / 4
            d = np.clip(x + ex, 0, N - 1) * N + np.clip(y + ey, 0, N - 1)
            rows.append(np.arange(S) * A + a); cols.append(d); vals.append(np.full(S, p))
    P = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(S * A, S))
    P.sum_duplicates()
    return P


def random_mdp(S, A=4, k=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(S * A), k)
    cols = rng.integers(0, S, size=S * A * k)
    vals = rng.dirichlet(np.ones(k), size=S * A).ravel()
    P = sp.csr_matrix((vals, (rows, cols)), shape=(S * A, S))
    P.sum_duplicates()
    return P


def policies(S, A, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, logits in [("uniform", np.zeros((S, A))), ("random3", rng.normal(size=(S, A)) * 3),
                         ("drift", np.tile([2.0, 0, 0, 2], (S, 1)))]:
        pi = np.exp(logits - logits.max(1, keepdims=True)); pi /= pi.sum(1, keepdims=True)
        out[name] = pi
    return out


def build_M(P, pi, gamma):
    S, A = pi.shape
    Pi = sp.csr_matrix((pi.ravel(), np.arange(S * A), np.arange(0, S * A + 1, A)), shape=(S, S * A))
    Ppi = (Pi @ P).tocsr()
    M = (sp.identity(S, format="csr") - gamma * Ppi).tocsr()
    M.sum_duplicates(); M.sort_indices()
    return M


def krylov_run(M, plan, tol, prec="auto", restart=30):
    n = M.shape[0]
    b = np.random.default_rng(1).normal(size=n)
    t0 = time.perf_counter()
    f = linalg.factorize(M, "krylov", tol=tol, plan=plan, preconditioner=prec, restart=restart)
    t1 = time.perf_counter()
    x = f.solve(b)
    t2 = time.perf_counter()
    xt = f.solve_transposed(b)
    t3 = time.perf_counter()
    rel = np.linalg.norm(b - M @ x) / np.linalg.norm(b)
    relt = np.linalg.norm(b - M.T @ xt) / np.linalg.norm(b)
    return dict(setup=t1 - t0, solve=t2 - t1, solveT=t3 - t2, its=f.iterations, itsT=f.iterations_transposed,
                rel=rel, relT=relt)


def grid_section(Ns, tols=(1e-8, 1e-10), precs=("amg",), gamma=0.99):
    rows = []
    for N in Ns:
        P = gridworld(N)
        pis = policies(N * N, 4)
        plan = None
        for pname, pi in pis.items():
            t0 = time.perf_counter(); M = build_M(P, pi, gamma); tb = time.perf_counter() - t0
            if plan is None:
                t0 = time.perf_counter(); plan = linalg.analyse(M); ta = time.perf_counter() - t0
                print(f"# N={N} n={N*N}: analyse {ta:.2f}s", flush=True)
            for prec in precs:
                for tol in tols:
                    r = krylov_run(M, plan, tol, prec)
                    row = (f"| grid {N}x{N} | {pname} | {prec} | {tol:.0e} | {tb:.2f} | {r['setup']:.3f} | "
                           f"{r['solve']:.3f} ({r['its']}) | {r['solveT']:.3f} ({r['itsT']}) | "
                           f"{max(r['rel'], r['relT']):.1e} |")
                    print(row, flush=True); rows.append(row)
    return rows


def best_of(fn, reps=3):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return min(ts)


def auto_section():
    """Time factorize + solve + solve_transposed for each method at small/moderate n."""
    rows = []
    for kind in ("grid", "random"):
        for n_target in (100, 300, 1000, 3000, 10_000, 30_000, 100_000):
            if kind == "grid":
                N = int(round(n_target ** 0.5)); P = gridworld(N); S = N * N
            else:
                S = n_target; P = random_mdp(S)
            M = build_M(P, policies(S, 4)["random3"], 0.99)
            plan = linalg.analyse(M)
            b = np.ones(S)
            res = {}
            for method in ("dense", "splu", "krylov"):
                if method == "dense" and S > 3000:
                    res[method] = "-"; continue
                if method == "splu" and kind == "random" and S > 30_000:
                    res[method] = "-"; continue
                def run():
                    f = linalg.factorize(M, method, plan=plan, tol=1e-10)
                    f.solve(b); f.solve_transposed(b)
                    return f
                res[method] = f"{best_of(run, 3 if S <= 30000 else 1) * 1e3:.1f}"
            fill = "-"
            if S <= 30_000 or kind == "grid":
                lu = linalg.SpluFactorization(M)._lu
                fill = f"{(lu.L.nnz + lu.U.nnz) / M.nnz:.0f}"
            bw = plan.bandwidth if S <= 100_000 else -1
            row = (f"| {kind} | {S} | {M.nnz / S:.1f} | {bw} ({bw / S ** 0.5:.1f} sqrt n) | {fill} | "
                   f"{res['dense']} | {res['splu']} | {res['krylov']} | {choose_method_str(M)} |")
            print(row, flush=True); rows.append(row)
    return rows


def choose_method_str(M):
    return linalg.choose_method(M)


def rl2_section(S=100_000, tols=(1e-8, 1e-10)):
    P = random_mdp(S)
    plan = None
    for pname, pi in policies(S, 4).items():
        t0 = time.perf_counter(); M = build_M(P, pi, 0.99); tb = time.perf_counter() - t0
        plan = plan or linalg.analyse(M)
        for prec in ("amg", "sgs"):
            for tol in tols:
                r = krylov_run(M, plan, tol, prec)
                print(f"| RL2 {S} | {pname} | {prec} | {tol:.0e} | {tb:.2f} | {r['setup']:.3f} | "
                      f"{r['solve']:.3f} ({r['its']}) | {r['solveT']:.3f} ({r['itsT']}) | "
                      f"{max(r['rel'], r['relT']):.1e} |", flush=True)


def record_solves(meta, theta):
    """Run ``meta.value_and_grad(theta)`` and record its linear algebra, in order:
    ("M", matrix) per factorisation, ("N" | "T", factorisation index, b, x0) per solve."""
    log = []
    orig = linalg.factorize

    def copy(x0):  # a start, or a list of candidate starts
        return None if x0 is None else [np.array(x) for x in x0] if isinstance(x0, (list, tuple)) else np.array(x0)

    def fz(M, *a, **k):
        f = orig(M, *a, **k)
        idx = sum(1 for e in log if e[0] == "M")
        log.append(("M", M.copy()))
        s, st = f.solve, f.solve_transposed
        f.solve = lambda b, x0=None: (log.append(("N", idx, np.array(b), copy(x0))), s(b, x0))[1]
        f.solve_transposed = lambda b, x0=None: (log.append(("T", idx, np.array(b), copy(x0))), st(b, x0))[1]
        return f

    linalg.factorize = fz
    try:
        meta.value_and_grad(theta)
    finally:
        linalg.factorize = orig
    return log


def capture_workload(N, n_tasks=4, seed=0):
    """Matrices and right-hand sides of one meta-gradient of the benchmark problem.

    gridworld_goals(4, N), theta = 0.5 N(0, 1)^32, tau = eta = 1: 5 matrices (the
    main effect's M and the 4 adapted M_i), M gets 4 + 4 solves (as two (n, 4)
    blocks), each M_i one forward solve (warm start) and one transposed solve.
    """
    import fastmeta
    tasks, phi = fastmeta.tasks.gridworld_goals(n_tasks, N, seed=seed)
    m = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=1.0, eta=1.0, solver="krylov")
    th = 0.5 * np.random.default_rng(0).standard_normal(32)
    log = record_solves(m, th)
    Ms = [e[1] for e in log if e[0] == "M"]
    R = np.column_stack([e[2] for e in log if e[0] == "N" and e[1] == 0])
    MU = np.column_stack([e[2] for e in log if e[0] == "T" and e[1] == 0])
    per = {i: [e for e in log if e[0] != "M" and e[1] == i] for i in range(1, len(Ms))}
    return Ms, R, MU, per


def replay_workload(Ms, R, MU, per, method, plan=None, **kw):
    """Time factorisations + solves of one meta-gradient; returns (total s, setup s, [(its, s)])."""
    plan = plan or linalg.analyse(Ms[0])
    out, tset = [], 0.0
    t0 = time.perf_counter()

    def solve(fac, b, x0, trans):
        t = time.perf_counter()
        (fac.solve_transposed if trans else fac.solve)(b, x0)
        its = getattr(fac, "iterations_transposed" if trans else "iterations", 0)
        rel = getattr(fac, "residual_transposed" if trans else "residual", None) or 0.0
        out.append((its, round(time.perf_counter() - t, 3), rel))

    t = time.perf_counter(); f = linalg.factorize(Ms[0], method, plan=plan, **kw); tset += time.perf_counter() - t
    solve(f, R, None, False)
    for i, calls in per.items():
        t = time.perf_counter(); fi = linalg.factorize(Ms[i], method, plan=plan, **kw); tset += time.perf_counter() - t
        for kind, _, b, x0 in calls:
            solve(fi, b, x0, kind == "T")
        del fi
    solve(f, MU, None, True)
    return time.perf_counter() - t0, tset, out


def workload_section(Ns, methods=("splu", "pardiso", "krylov"), reps=3):
    for N in Ns:
        data = capture_workload(N)
        plan = linalg.analyse(data[0][0])
        res = {m: [] for m in methods}
        for r in range(reps):
            for m in methods:
                if m == "splu" and N * N > 400_000:
                    continue
                tot, tset, out = replay_workload(*data, m, plan=plan)
                res[m].append(tot)
                print(f"# N={N} n={N*N} {m}: total {tot:.3f} s, factorisations {tset:.3f} s, "
                      f"solves (its, s) {out}", flush=True)
        print(f"| {N*N} | " + " | ".join(f"{np.median(v):.3f}" if v else "-" for v in res.values()) + " |",
              flush=True)


def restart_section(N=150, restarts=(2, 3, 5, 8, 12, 20, 30)):
    P = gridworld(N)
    b = np.random.default_rng(1).normal(size=N * N)
    for name, pi in policies(N * N, 4).items():
        M = build_M(P, pi, 0.99)
        plan = linalg.analyse(M)
        row = []
        for r in restarts:
            f = linalg.factorize(M, "krylov", plan=plan, restart=r)
            f.solve(b); f.solve_transposed(b)
            row.append(f"{r}: {f.iterations}/{f.iterations_transposed}")
        print(f"grid {N}x{N} {name}: restart: its/itsT  " + ", ".join(row), flush=True)


#: name: (linalg module constants, factorize keywords) of the variants section
VARIANTS = {
    "base": ({}, {}),
    "fine1": ({"AMG_NSWEEP_PRE": 1, "AMG_NSWEEP": 1}, {}),
    "coarse1": ({"AMG_NSWEEP_COARSE": 1}, {}),
    "both1": ({"AMG_NSWEEP_PRE": 1, "AMG_NSWEEP": 1, "AMG_NSWEEP_COARSE": 1}, {}),
    "restart4": ({}, {"restart": 4}),
    "restart6": ({}, {"restart": 6}),
    "f64": ({"AMG_DTYPE": np.float64}, {}),
    "f64-restart12": ({"AMG_DTYPE": np.float64}, {"restart": 12}),
    "f32": ({"AMG_DTYPE": np.float32}, {}),
    "f32-restart12": ({"AMG_DTYPE": np.float32}, {"restart": 12}),
    "f32-restart5": ({"AMG_DTYPE": np.float32}, {"restart": 5}),
    "before": ({"AMG_DTYPE": np.float64, "KRYLOV_BASIS_DTYPE": np.float64}, {"restart": 12}),
    "f32-amg": ({"AMG_DTYPE": np.float32, "KRYLOV_BASIS_DTYPE": np.float64}, {"restart": 12}),
    "f32-amg-restart5": ({"AMG_DTYPE": np.float32, "KRYLOV_BASIS_DTYPE": np.float64}, {"restart": 5}),
    "now": ({}, {}),
    "dgks-never": ({"DGKS_ETA": 0.0}, {}),
    "dgks-1e-2": ({"DGKS_ETA": 1e-2}, {}),
    "dgks-classic": ({"DGKS_ETA": 0.7071067811865476}, {}),
    "fine-pre2": ({"AMG_NSWEEP_PRE": 2}, {}),
    "fine-post1": ({"AMG_NSWEEP_PRE": 2, "AMG_NSWEEP": 1}, {}),
    "fine-pre1": ({"AMG_NSWEEP_PRE": 1}, {}),
    "fine-pre3-post1": ({"AMG_NSWEEP_PRE": 3, "AMG_NSWEEP": 1}, {}),
    # round 7: interpolation of the multigrid cycle
    "constant": ({"AMG_INTERPOLATION": "constant"}, {}),
    "smoothed": ({"AMG_INTERPOLATION": "smoothed"}, {}),
    "sa-w0.66": ({"AMG_INTERPOLATION": "smoothed", "AMG_SA_OMEGA": 0.66}, {}),
    "sa-2levels": ({"AMG_INTERPOLATION": "smoothed", "AMG_SA_LEVELS": 2}, {}),
    "sa-all-levels": ({"AMG_INTERPOLATION": "smoothed", "AMG_SA_LEVELS": 20}, {}),
    "sa-fine1": ({"AMG_INTERPOLATION": "smoothed", "AMG_NSWEEP_PRE": 1, "AMG_NSWEEP": 1}, {}),
    "sa-post1": ({"AMG_INTERPOLATION": "smoothed", "AMG_NSWEEP": 1}, {}),
    "sa-coarse1": ({"AMG_INTERPOLATION": "smoothed", "AMG_NSWEEP_COARSE": 1}, {}),
}


def _with_variant(name, fn):
    """``fn()`` with the linalg constants of variant ``name`` set (restored afterwards)."""
    consts, _ = VARIANTS[name]
    saved = {c: getattr(linalg, c) for c in consts}
    try:
        for c, x in consts.items():
            setattr(linalg, c, x)
        return fn()
    finally:
        for c, x in saved.items():
            setattr(linalg, c, x)


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def systems_replay(Ms, R, MU, per, plan):
    """Set-up and solves of the main effect's M (4-column cold solves of M and M^T) and of the
    first adapted M_1 (its forward warm-started and its transposed solve), each system apart:
    {system: (iterations, set-up s, solve s)}."""
    out = {}
    t = time.perf_counter()
    f = linalg.factorize(Ms[0], "krylov", plan=plan)
    ts = time.perf_counter() - t
    t = _timed(lambda: f.solve(R))
    out["M, 4 columns"] = (f.iterations, ts, t)
    ts = _timed(lambda: f._hierarchy(True))
    t = _timed(lambda: f.solve_transposed(MU))
    out["M^T, 4 columns"] = (f.iterations_transposed, ts, t)
    t = time.perf_counter()
    fi = linalg.factorize(Ms[1], "krylov", plan=plan if plan.matches(Ms[1]) else None)  # RL^2: own kernels
    ts = time.perf_counter() - t
    for kind, _, b, x0 in per[1]:
        trans = kind == "T"
        if trans:
            ts = _timed(lambda: fi._hierarchy(True))
        t = _timed(lambda: (fi.solve_transposed if trans else fi.solve)(b, x0))
        name = "M_1^T" if trans else "M_1, warm start"
        out[name] = (fi.iterations_transposed if trans else fi.iterations, ts, t)
    return out


def interpolation_section(N, names=("constant", "smoothed"), reps=3, pkl=None):
    """Constant against smoothed interpolation on the systems of one captured meta-gradient at
    N x N (or the ``(Ms, R, MU, per)`` pickled at ``pkl``): per system, iterations, set-up and
    solve seconds; variants alternate in every round (order reversed every other round), medians
    over ``reps`` rounds after an untimed warm-up round."""
    import pickle
    if pkl:
        with open(pkl, "rb") as fh:
            Ms, R, MU, per = pickle.load(fh)
    else:
        Ms, R, MU, per = capture_workload(N)
    plan = linalg.analyse(Ms[0])
    res = {v: [] for v in names}
    for r in range(reps + 1):
        for v in (names if r % 2 else names[::-1]):
            out = _with_variant(v, lambda: systems_replay(Ms, R, MU, per, plan))
            if r:
                res[v].append(out)
            print(f"# {v} round {r}{' (warm-up)' if not r else ''}: "
                  + "; ".join(f"{k} {i} its, set-up {a:.3f} s, solve {b:.3f} s" for k, (i, a, b) in out.items())
                  + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    print("| system | " + " | ".join(f"{v}: its, set-up s, solve s" for v in names) + " |")
    _print_system_rows(res, names, "")


def _print_system_rows(res, names, prefix):
    """Table rows "its, set-up s, solve s" per system and variant (medians over the rounds)."""
    for system in res[names[0]][0]:
        cells = []
        for v in names:
            cells.append(f"{int(np.median([o[system][0] for o in res[v]]))}, "
                         f"{np.median([o[system][1] for o in res[v]]):.3f}, "
                         f"{np.median([o[system][2] for o in res[v]]):.3f}")
        print(f"| {prefix}{system} | " + " | ".join(cells) + " |", flush=True)


def variants_section(N, names=None, reps=2):
    """Replay one captured meta-gradient at N x N under each variant, round-robin; medians."""
    names = names or list(VARIANTS)
    data = capture_workload(N)
    plan = linalg.analyse(data[0][0])
    res = {v: [] for v in names}
    for r in range(reps):
        for v in names:
            consts, kw = VARIANTS[v]
            saved = {c: getattr(linalg, c) for c in consts}
            try:
                for c, x in consts.items():
                    setattr(linalg, c, x)
                tot, tset, out = replay_workload(*data, "krylov", plan=plan, **kw)
            finally:
                for c, x in saved.items():
                    setattr(linalg, c, x)
            res[v].append(tot)
            its = [o[0] for o in out]
            print(f"# N={N} {v} round {r}: total {tot:.2f} s, set-ups {tset:.2f} s, its {sum(its)} {its}, "
                  f"times {[o[1] for o in out]}, max rel. residual {max(o[2] for o in out):.1e}", flush=True)
    base = np.median(res[names[0]])
    for v in names:
        print(f"| {v} | {np.median(res[v]):.2f} | {np.median(res[v]) / base:.3f} |", flush=True)


def gradient_variants_section(N, names=("before", "now"), reps=2):
    """Whole ``MetaRL.gradient`` (features on the fly) at N x N under each variant, in one process;
    the order alternates between rounds (a falling or rising load favours no variant)."""
    import fastmeta
    tasks, fmap = fastmeta.tasks.gridworld_goals(4, N, feature_map=True, seed=0)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(fmap), tau=1.0, eta=1.0, solver="krylov")
    th = 0.5 * np.random.default_rng(0).standard_normal(32)
    orig = linalg.factorize
    res = {v: [] for v in names}
    for r in range(reps + 1):  # round 0 is the untimed warm-up of every variant
        for v in (names if r % 2 else names[::-1]):
            consts, kw = VARIANTS[v]
            saved = {c: getattr(linalg, c) for c in consts}
            try:
                for c, x in consts.items():
                    setattr(linalg, c, x)
                linalg.factorize = lambda *a, **k: orig(*a, **{**kw, **k})
                t = time.perf_counter()
                meta.gradient(th)
                dt = time.perf_counter() - t
            finally:
                linalg.factorize = orig
                for c, x in saved.items():
                    setattr(linalg, c, x)
            if r:
                res[v].append(dt)
            print(f"# N={N} gradient {v} round {r}{' (warm-up)' if not r else ''}: {dt:.2f} s, load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    base = np.median(res[names[0]])
    for v in names:
        print(f"| {v} | {np.median(res[v]):.2f} | {np.median(res[v]) / base:.3f} |", flush=True)


def families_section(reps=3, cases=(("grid", 10_000), ("grid", 100_000), ("ring", 100_000), ("rl2", 10_000))):
    """Constant against smoothed interpolation, krylov with its automatic preconditioner, on the
    systems of one meta-gradient of the solver comparison's families (main effect's M with the
    4 task rewards, forward and transposed; M_1 warm-started and transposed)."""
    from benchmarks.solver_comparison import capture
    names = ("constant", "smoothed")
    for family, S in cases:
        c = capture(family, S, 0.99)
        Ms, per = [c["M"], c["M1"]], {1: [("N", 1, c["r1"], c["x01"]), ("T", 1, c["z1"], None)]}
        plan = linalg.analyse(Ms[0])
        res = {v: [] for v in names}
        for r in range(reps + 1):
            for v in (names if r % 2 else names[::-1]):
                out = _with_variant(v, lambda: systems_replay(Ms, c["R"], c["R"], per, plan))
                if r:
                    res[v].append(out)
        print(f"# {family} S={S} preconditioner {plan.preconditioner}, load {os.getloadavg()[0]:.1f}", flush=True)
        _print_system_rows(res, names, f"{family} {S} | ")


if __name__ == "__main__":
    import numba
    sec = sys.argv[1:] or ["grid"]
    if "warm" in sec:
        grid_section([10], tols=(1e-8,), precs=("amg", "sgs", "none"))
    print("numba", numba.__version__, "threads", numba.get_num_threads())
    if "grid" in sec:
        grid_section([316], precs=("amg", "sgs"))
    if "grid6" in sec:
        grid_section([1000], precs=("amg",))
    if "rl2" in sec:
        rl2_section()
    if "auto" in sec:
        auto_section()
    if "workload" in sec:
        i = sec.index("workload") + 1
        Ns = []
        while i < len(sec) and sec[i].isdigit():
            Ns.append(int(sec[i])); i += 1
        workload_section(Ns or [141, 224, 316, 447, 548])
    if "restart" in sec:
        restart_section()
    if "gradients" in sec:
        i = sec.index("gradients")
        gradient_variants_section(int(sec[i + 1]), tuple(v for v in sec[i + 2:] if v in VARIANTS) or ("before", "now"))
    if "variants" in sec:
        i = sec.index("variants")
        rounds = [int(v.split("=")[1]) for v in sec[i + 2:] if v.startswith("rounds=")]
        variants_section(int(sec[i + 1]), [v for v in sec[i + 2:] if v in VARIANTS] or None, *rounds[:1])
    if "interpolation" in sec:
        i = sec.index("interpolation")
        opts = dict(v.split("=", 1) for v in sec[i + 2:] if "=" in v)
        interpolation_section(int(sec[i + 1]), tuple(v for v in sec[i + 2:] if v in VARIANTS) or
                              ("constant", "smoothed"), int(opts.get("rounds", 3)), opts.get("pkl"))
    if "families" in sec:
        i = sec.index("families")
        opts = dict(v.split("=", 1) for v in sec[i + 1:] if "=" in v)
        cases = [(f, int(S)) for f, S in (v.split(":") for v in sec[i + 1:] if ":" in v)]
        families_section(int(opts.get("rounds", 3)), *([cases] if cases else []))
    if "tune" in sec:
        N = int(sec[sec.index("tune") + 1])
        P = gridworld(N); pis = policies(N * N, 4)
        Ms = {k: build_M(P, v, 0.99) for k, v in pis.items()}
        plan = linalg.analyse(Ms["uniform"])
        for k, M in Ms.items():
            f = linalg.factorize(M, "krylov", plan=plan)
            print(k, [(lv.n, lv.indices.shape[0]) for lv in f._hier.levels])
        for ns, cyc in [(1, 1), (2, 1), (1, 2), (2, 2)]:
            linalg.AMG_NSWEEP_PRE, linalg.AMG_NSWEEP, linalg.AMG_CYCLE_INDEX = ns, ns, cyc
            for k, M in Ms.items():
                r = krylov_run(M, plan, 1e-10)
                print(ns, cyc, k, f"setup {r['setup']:.3f} solve {r['solve']:.3f} ({r['its']}) T {r['solveT']:.3f} ({r['itsT']})", flush=True)
