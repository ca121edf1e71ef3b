"""fastmeta's solvers against pyamg, PARDISO, SciPy's Krylov methods and value iteration.

    PYTHONPATH=. python benchmarks/solver_comparison.py                 # writes to $TMPDIR/fastmeta-bench
    PYTHONPATH=. python benchmarks/solver_comparison.py --publish       # writes bench_results/solver_comparison.*
    PYTHONPATH=. python benchmarks/solver_comparison.py --sizes 1e4 1e5 --reps 3

Systems: the matrices M = I - gamma P_pi of one real meta-gradient (captured from
``MetaRL.value_and_grad`` at theta = 0.5 N(0, I), seed 0): the main effect's M with the
4 task rewards as an (S, 4) block, and the first adapted M_1 with its forward right-hand
side warm-started from the main effect's values (as rl.py does) and its transposed one.
Families: gridworld goals (slip 0.1; gamma 0.99 at every size, 0.9 and 0.999 up to 10^5),
RL^2 random MDPs (k = 4 successors), and a ring (a chain with one long cycle: "forward"
moves s -> s+1, "back" s -> s-1, slip 0.1).

Candidates (each: set-up = everything that depends on the values, then the solves to
a relative residual of 1e-10 per column, measured with the true residual):
  fastmeta splu | pardiso | krylov (GMRES + aggregation AMG or Gauss-Seidel, lockstep block)
  scipy gmres / lgmres / bicgstab preconditioned by pyamg AIR, gmres + pyamg smoothed
  aggregation (SA), gmres + spilu; value iteration x <- b + gamma P_pi x (= x + (b - M x)),
  warm-started from the previous outer step where rl.py warm-starts.
Peak memory = high-water mark of the process RSS above its level before the candidate
(sampled every 5 ms). Candidates run interleaved, round-robin, in one process; medians.
A STREAM-like triad (Numba, all threads) gives the machine's bandwidth for the bound.
The machine is shared: the load average (``uptime``) is recorded with every row.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numba
import numpy as np
import psutil
import scipy
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import fastmeta
from fastmeta import linalg

from benchmarks.solver_study import record_solves

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-10
VI_MAXITER = 3_000


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


# --------------------------------------------------------------------------
# systems
# --------------------------------------------------------------------------
def ring_tasks(S: int, n_tasks: int, gamma: float, seed: int = 0):
    """A ring of S states, actions forward/back/stay/jump-back-2, slip 0.1: one long cycle."""
    A, slip = 4, 0.1
    s = np.arange(S)
    dest = np.stack([(s + 1) % S, (s - 1) % S, s, (s - 2) % S])
    rows, cols, vals = [], [], []
    for a in range(A):
        for b in range(A):
            rows.append(s * A + a)
            cols.append(dest[b])
            vals.append(np.full(S, (1 - slip) * (a == b) + slip / A))
    P = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(S * A, S))
    P.sum_duplicates()
    rng = np.random.default_rng(seed)
    tasks = []
    for g in rng.choice(S, n_tasks, replace=False):
        r = np.zeros((S, A))
        r[g] = 1.0
        tasks.append(fastmeta.TabularMDP(P, r, gamma, np.full(S, 1.0 / S)))
    phi = fastmeta.tasks.random_features(S, A, 32, rng)
    return tasks, phi


def make_problem(family: str, S: int, gamma: float):
    if family == "grid":
        N = int(round(np.sqrt(S)))
        return fastmeta.tasks.gridworld_goals(4, N, gamma=gamma, seed=0)
    if family == "rl2":
        tasks, phi = fastmeta.tasks.random_mdps(4, S, 4, k=4, seed=0)
        return [fastmeta.TabularMDP(t.P, t.r, gamma, t.init) for t in tasks], phi
    return ring_tasks(S, 4, gamma)


def capture(family: str, S: int, gamma: float):
    """(M, R, M_1, r_1, x0_1, zeta_1) of one meta-gradient at theta = 0.5 N(0, I)."""
    tasks, phi = make_problem(family, S, gamma)
    meta = fastmeta.MetaRL(tasks, fastmeta.LinearEnergy(phi), tau=1.0, eta=1.0,
                           solver="auto")
    theta = 0.5 * np.random.default_rng(0).standard_normal(phi.shape[2])
    log = record_solves(meta, theta)
    Ms = [e[1] for e in log if e[0] == "M"]
    R = next(e[2] for e in log if e[0] == "N" and e[1] == 0)
    fwd1 = next(e for e in log if e[0] == "N" and e[1] == 1 if len(Ms) > 1)
    adj1 = next(e for e in log if e[0] == "T" and e[1] == 1)
    return dict(M=Ms[0], R=np.ascontiguousarray(R), M1=Ms[1], r1=fwd1[2], x01=fwd1[3], z1=adj1[2],
                tasks=(tasks, phi), meta=meta)


# --------------------------------------------------------------------------
# candidates: make(M) -> object with solve(B, X0, trans) -> (X, iterations)
# --------------------------------------------------------------------------
class FastmetaCand:
    def __init__(self, method):
        self.method = method
        self.plan = None

    def setup(self, M):
        if self.plan is None or not self.plan.matches(M):
            self.plan = linalg.analyse(M)
            if self.method != "dense":  # pattern work, done once per MDP in rl.py
                self.plan.transpose_pattern
            if self.method == "pardiso":
                self.plan._return_pardiso(self.plan._borrow_pardiso())
        self.fac = linalg.factorize(M, self.method, rtol=RTOL, plan=self.plan)

    def solve(self, B, X0, trans):
        X = (self.fac.solve_transposed if trans else self.fac.solve)(B, X0)
        its = getattr(self.fac, "iterations_transposed" if trans else "iterations", 0) or 0
        return X, its

    def free(self):
        self.fac = None


class ScipyKrylovCand:
    """scipy.sparse.linalg Krylov method with a preconditioner; columns one by one."""

    def __init__(self, krylov, prec):
        self.krylov, self.prec = krylov, prec

    def _precond(self, A):
        import pyamg
        if self.prec == "air":
            ml = pyamg.air_solver(A)
        elif self.prec == "sa":
            ml = pyamg.smoothed_aggregation_solver(A, symmetry="nonsymmetric")
        else:
            ilu = spla.spilu(A.tocsc(), drop_tol=1e-4, fill_factor=5)
            return spla.LinearOperator(A.shape, ilu.solve)
        return ml.aspreconditioner(cycle="V")

    def setup(self, M):
        self.M, self.MT = M, M.T.tocsr()
        self.P = self._precond(M)
        self.PT = None  # built on the first transposed solve, as fastmeta does

    def solve(self, B, X0, trans):
        if trans and self.PT is None:
            self.PT = self._precond(self.MT)
        A, P = (self.MT, self.PT) if trans else (self.M, self.P)
        Bm = B.reshape(B.shape[0], -1)
        X, total = np.empty_like(Bm), 0
        fn = dict(gmres=spla.gmres, lgmres=spla.lgmres, bicgstab=spla.bicgstab)[self.krylov]
        for j in range(Bm.shape[1]):
            cnt = [0]
            kw = dict(rtol=RTOL, atol=0.0, M=P, maxiter=1000, callback=lambda *_: cnt.__setitem__(0, cnt[0] + 1))
            if self.krylov == "gmres":  # SciPy's maxiter counts restart cycles
                kw.update(restart=30, callback_type="pr_norm", maxiter=1000 // 30)
            x0 = None if X0 is None else X0.reshape(Bm.shape)[:, j]
            x, info = fn(A, Bm[:, j], x0=x0, **kw)
            if info != 0:
                raise RuntimeError(f"{self.krylov} info={info}")
            X[:, j] = x
            total = max(total, cnt[0])
        return X.reshape(B.shape), total

    def free(self):
        self.M = self.MT = self.P = self.PT = None


class ValueIterationCand:
    """x <- b + gamma P_pi x, i.e. x <- x + (b - M x): the RL practitioner's baseline."""

    def setup(self, M):
        self.M, self.MT = M, M.T.tocsr()

    def solve(self, B, X0, trans):
        A = self.MT if trans else self.M
        X = np.zeros_like(B) if X0 is None else np.array(X0, dtype=float)
        bn = np.linalg.norm(B, axis=0)
        for it in range(VI_MAXITER + 1):
            R = B - A @ X
            if np.all(np.linalg.norm(R, axis=0) <= RTOL * bn):
                break
            X += R
        return X, it  # at VI_MAXITER the residual column shows how far it got

    def free(self):
        self.M = self.MT = None


def candidates(S: int, family: str):
    out = {"fastmeta krylov": FastmetaCand("krylov"), "fastmeta pardiso": FastmetaCand("pardiso")}
    if family == "rl2":
        # LU of an expander fills in almost completely: PARDISO took 529 s (load 16) against
        # 1.3 s for krylov on the 10^4 RL^2 system (first run of this script), and 10^5 would
        # need tens of GB, so the direct methods are left out on RL^2 chains
        del out["fastmeta pardiso"]
    if S > 200_000:
        # pyamg+SciPy lose 11-24x and value iteration 27x on the 10^5 grid (neither scales
        # better than linearly): not rerun at 10^6 on a shared machine.
        if family == "grid":
            out["fastmeta splu"] = FastmetaCand("splu")
        return out
    if family != "rl2":
        out["fastmeta splu"] = FastmetaCand("splu")
    if family == "rl2":
        # pyamg's AIR set-up on the 10^4 RL^2 chain had not finished after 7 minutes, SA's on the
        # 10^5 one after 5 (load 6-14)
        if S <= 10_000:
            out["gmres+SA (pyamg)"] = ScipyKrylovCand("gmres", "sa")
        out["value iteration (warm)"] = ValueIterationCand()
        return out
    out["gmres+AIR (pyamg)"] = ScipyKrylovCand("gmres", "air")
    if S <= 10_000:  # 10^5 prototypes: SA set-up 15-22 s, ILU-GMRES 166 iterations, 6-26 s
        out["bicgstab+AIR (pyamg)"] = ScipyKrylovCand("bicgstab", "air")
        out["lgmres+AIR (pyamg)"] = ScipyKrylovCand("lgmres", "air")
        out["gmres+ILU (spilu)"] = ScipyKrylovCand("gmres", "ilu")
        out["gmres+SA (pyamg)"] = ScipyKrylovCand("gmres", "sa")
    out["value iteration (warm)"] = ValueIterationCand()
    return out


class PeakRSS:
    """High-water mark of this process's RSS above the level at entry (sampled every 5 ms)."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.gb = (self.peak - self.base) / 1e9


def run_case(cand, sysd):
    """Set-up + the 3 systems of the case; returns timings, iterations, residuals, memory."""
    M, M1 = sysd["M"], sysd["M1"]
    out = {}
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        cand.setup(M)
        t1 = time.perf_counter()
        X, its = cand.solve(sysd["R"], None, False)
        t2 = time.perf_counter()
        res = np.max(np.linalg.norm(sysd["R"] - M @ X, axis=0) / np.linalg.norm(sysd["R"], axis=0))
        cand.free()
        t3 = time.perf_counter()
        cand.setup(M1)
        t4 = time.perf_counter()
        x, its1 = cand.solve(sysd["r1"], sysd["x01"], False)
        t5 = time.perf_counter()
        xt, its1t = cand.solve(sysd["z1"], None, True)
        t6 = time.perf_counter()
        res1 = np.linalg.norm(sysd["r1"] - M1 @ x) / np.linalg.norm(sysd["r1"])
        res1t = np.linalg.norm(sysd["z1"] - M1.T @ xt) / np.linalg.norm(sysd["z1"])
        cand.free()
    out.update(setup=(t1 - t0) + (t4 - t3), solve=(t2 - t1) + (t5 - t4) + (t6 - t5),
               its=f"{its}/{its1}/{its1t}", res=float(max(res, res1, res1t)), mem_gb=mem.gb)
    out["total"] = out["setup"] + out["solve"]
    return out


# --------------------------------------------------------------------------
# bandwidth
# --------------------------------------------------------------------------
@numba.njit(parallel=True, cache=True)
def _triad(a, b, c, s):  # pragma: no cover - numba
    for i in numba.prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


def stream_bandwidth(n=40_000_000, reps=7):
    """Best-of triad bandwidth in GB/s (3 arrays of n doubles, 24 bytes per element)."""
    a, b, c = np.zeros(n), np.ones(n), np.full(n, 2.0)
    _triad(a, b, c, 3.0)
    best = min(_timed(lambda: _triad(a, b, c, 3.0)) for _ in range(reps))
    return 24 * n / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def krylov_iteration_cost(sysd, reps=3):
    """Seconds per GMRES iteration of fastmeta's krylov on M (4-column block) and one SpMV."""
    M = sysd["M"]
    plan = linalg.analyse(M)
    fac = linalg.factorize(M, "krylov", rtol=RTOL, plan=plan)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fac.solve(sysd["R"])
        ts.append((time.perf_counter() - t) / max(1, fac.iterations))
    X = np.ones((M.shape[0], 4))
    Y = np.empty_like(X)
    from fastmeta._kernels import krylov as kk
    ip, ix = plan.indptr, plan.indices
    kk.csr_matvec(ip, ix, fac.data, X, Y)
    spmv = min(_timed(lambda: kk.csr_matvec(ip, ix, fac.data, X, Y)) for _ in range(5))
    levels = [(lv.n, lv.indices.shape[0]) for lv in fac._hier.levels] if fac._hier is not None else []
    return float(np.median(ts)), spmv, levels, fac.iterations


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1e4", "1e5", "1e6"])
    ap.add_argument("--families", nargs="+", default=["grid", "rl2", "ring"])
    ap.add_argument("--reps", type=int, default=3, help="repeats up to 10^5 (1 at 10^6)")
    ap.add_argument("--publish", action="store_true", help="write into bench_results/")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fastmeta-bench")
    ap.add_argument("--tag", default="", help="suffix of the json file (runs of several sizes)")
    ap.add_argument("--merge", nargs="+", type=Path, help="only write table and plot from these json files")
    args = ap.parse_args()
    out_dir = ROOT / "bench_results" if args.publish else args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.merge:
        runs = [json.loads(p.read_text()) for p in args.merge]
        rows = [r for run in runs for r in run["rows"]]
        write_table(out_dir, [run["meta"] for run in runs], rows)
        plot(out_dir, rows)
        return
    sizes = [int(float(s)) for s in args.sizes]
    meta = dict(date=time.strftime("%Y-%m-%dT%H:%M:%S"), python=platform.python_version(),
                numba=numba.__version__, numpy=np.__version__, scipy=scipy.__version__,
                threads=numba.get_num_threads(), cpu_count=os.cpu_count(), load_start=load())
    try:
        import pyamg
        import pypardiso
        meta.update(pyamg=pyamg.__version__, pypardiso=getattr(pypardiso, "__version__", "?"))
    except ImportError as exc:
        sys.exit(f"needs pyamg and pypardiso: {exc}")
    meta["stream_gb_s"] = stream_bandwidth()
    meta["load_after_stream"] = load()
    print(json.dumps(meta), flush=True)
    rows = []
    cases = []
    for fam in args.families:
        for S in sizes:
            if fam == "ring" and S != 100_000:
                continue
            for gamma in ((0.9, 0.99, 0.999) if fam == "grid" and S <= 100_000 else (0.99,)):
                cases.append((fam, S, gamma))
    for fam, S, gamma in cases:
        sysd = capture(fam, S, gamma)
        n = sysd["M"].shape[0]
        cands = candidates(n, fam)
        reps = args.reps if n <= 200_000 else 1
        times = {name: [] for name in cands}
        info = {}
        for r in range(reps):
            for name, cand in cands.items():
                if name.startswith("value iteration") and n > 20_000 and r > 0:
                    continue  # thousands of sweeps: measured once above 10^4
                ld = load()
                try:
                    res = run_case(cand, sysd)
                except Exception as exc:  # a candidate that fails is reported, not fatal
                    res = dict(error=f"{type(exc).__name__}: {exc}"[:120])
                res["load"] = ld
                times[name].append(res.get("total", np.nan))
                info.setdefault(name, []).append(res)
                print(fam, n, gamma, name, r, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()},
                      flush=True)
        for name, rs in info.items():
            ok = [x for x in rs if "error" not in x]
            row = dict(family=fam, S=n, gamma=gamma, candidate=name, reps=len(rs),
                       loads=[x["load"] for x in rs])
            if ok:
                for key in ("setup", "solve", "total", "mem_gb"):
                    row[key] = float(np.median([x[key] for x in ok]))
                row.update(its=ok[0]["its"], res=max(x["res"] for x in ok))
            else:
                row["error"] = rs[0]["error"]
            rows.append(row)
        if fam == "grid" and gamma == 0.99:
            it, spmv, levels, its = krylov_iteration_cost(sysd)
            meta.setdefault("krylov_iteration", []).append(dict(S=n, s_per_iteration=it, spmv_4col=spmv,
                                                                levels=levels, nnz=int(sysd["M"].nnz),
                                                                iterations=its, load=load()))
        del sysd
        (out_dir / f"solver_comparison{args.tag}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    meta["load_end"] = load()
    (out_dir / f"solver_comparison{args.tag}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    write_table(out_dir, [meta], rows)
    plot(out_dir, rows)


def write_table(out_dir, metas, rows):
    lines = [f"Runs: " + "; ".join(f"{m['date']}, load at start {m['load_start']}, at end "
                                   f"{m.get('load_end', '? (stopped after the rows below)')}, "
                                   f"STREAM triad {m['stream_gb_s']:.1f} GB/s" for m in metas), "",f"| family | S | gamma | candidate | setup s | solve s | total s | total / fastmeta best | "
             f"iterations M/M_1/M_1^T | max rel. residual | peak RSS +GB | load during rows |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted({(r["family"], r["S"], r["gamma"]) for r in rows}, key=lambda k: ("grid rl2 ring".split().index(k[0]), k[1], k[2])):
        group = [r for r in rows if (r["family"], r["S"], r["gamma"]) == key]
        best = min((r["total"] for r in group if r["candidate"].startswith("fastmeta") and "total" in r), default=np.nan)
        for r in sorted(group, key=lambda r: r.get("total", np.inf)):
            if "error" in r:
                lines.append(f"| {key[0]} | {key[1]:,} | {key[2]} | {r['candidate']} | failed: {r['error']} "
                             f"| | | | | | | {'; '.join(r['loads'])} |")
                continue
            lines.append(f"| {key[0]} | {key[1]:,} | {key[2]} | {r['candidate']} | {r['setup']:.3f} | {r['solve']:.3f} | "
                         f"**{r['total']:.3f}** | {r['total'] / best:.2f} | {r['its']} | {r['res']:.1e} | "
                         f"{r['mem_gb']:.2f} | {'; '.join(r['loads'])} |")
    (out_dir / "solver_comparison_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(out_dir, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fams = sorted({r["family"] for r in rows if r["gamma"] == 0.99})
    names = sorted({r["candidate"] for r in rows})
    colour = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}  # same colour in every panel
    fig, axes = plt.subplots(1, len(fams), figsize=(5.5 * len(fams), 4.5), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        sel = [r for r in rows if r["family"] == fam and r["gamma"] == 0.99 and "total" in r]
        for name in names:
            pts = sorted((r["S"], r["total"]) for r in sel if r["candidate"] == name)
            if pts:
                ax.loglog(*zip(*pts), marker="o", label=name, color=colour[name],
                          lw=2.5 if name.startswith("fastmeta") else 1)
        ax.set_xlabel("states S")
        ax.set_ylabel("set-up + solves of M, M_1, M_1^T [s]")
        ax.set_title(f"{fam}, gamma 0.99, rtol 1e-10 (load 5-18)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "solver_comparison.png", dpi=110)


if __name__ == "__main__":
    main()
