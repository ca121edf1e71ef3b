"""Finn, Abbeel and Levine's (2017) sinusoid MAML benchmark, on their settings, with fastmeta.

Settings (Finn et al. section 5.1): a 1-40-40-1 ReLU network with every weight and bias
trained (:class:`fastmeta.MLP`), one inner gradient step of 0.01 on the mean squared error
of K = 10 support points, the meta-loss on K = 10 query points (their data generator draws
2K points per task and splits them in halves), Adam with step 0.001, a meta-batch of 25
fresh tasks per iteration (``MetaSL.fit(sampler=...)``), 70,000 iterations; amplitude
U[0.1, 5], phase U[0, pi], x U[-5, 5]. The one trained model is then fine-tuned on K = 5
(the published 5-shot table); ``--train-k 5`` trains on the test's K instead. fastmeta's squared loss is half the squared error,
so its inner step is eta = 0.02 (the same update) and MSE = 2 x its risk. The baseline
("pretraining") trains the same network for the same iterations on the same task stream
to minimise the average risk (eta = 0). Evaluation: 600 fresh tasks, K = 5 support
points, 100 query points, 0..10 gradient steps of 0.01 (on the MSE) from the trained
weights; the table reports the query MSE after 1, 5 and 10 steps.

Then the wall time of one meta-step (sample 25 tasks, exact meta-gradient, Adam) next to
the same step written in PyTorch with ``create_graph=True`` (benchmarks/baselines/torch_maml.py),
interleaved in this process, medians.

    python benchmarks/finn_sinusoid.py [--seed S] [--train-k 5]  # writes to /tmp/fastmeta-bench/
    python benchmarks/finn_sinusoid.py --publish            # writes bench_results/finn.md
    python benchmarks/finn_sinusoid.py --iterations 2000    # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastmeta  # noqa: E402
from fastmeta import MetaSL  # noqa: E402
from fastmeta.models import MLP  # noqa: E402
from fastmeta.tasks import sinusoid_sampler, sinusoid_tasks  # noqa: E402

PUBLISHED = {"MAML": (0.67, 0.38, 0.35), "pretrained": (2.41, 2.23, 2.19)}
TORCH_REFERENCE = {"mse": (0.61, 0.47, 0.42), "seconds": 895.0}
ETA = 0.02            # = Finn's 0.01 on the MSE, for fastmeta's half-squared loss
EVAL_STEPS = (1, 5, 10)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "n/a"


def evaluate_all(meta: MetaSL, theta: np.ndarray, n_tasks: int, seed: int) -> np.ndarray:
    """Query MSE of every task after 0..10 fine-tuning steps, shape (n_tasks, 11)."""
    tasks = sinusoid_tasks(n_tasks, k_shot=5, k_query=100, seed=seed)
    return np.array([[2.0 * meta.risk(th, task, "query")
                      for th in meta.adapt(theta, task, steps=max(EVAL_STEPS), eta=ETA, return_path=True)]
                     for task in tasks])


def evaluate(meta: MetaSL, theta: np.ndarray, n_tasks: int, seed: int) -> np.ndarray:
    """Mean query MSE after 0..10 fine-tuning steps, over ``n_tasks`` fresh tasks."""
    return evaluate_all(meta, theta, n_tasks, seed).mean(axis=0)


def train(eta: float, iterations: int, chunk: int, seed: int, eval_tasks: int, workdir: str, label: str,
          init: str = "uniform", train_k: int = 10):
    """Meta-train in chunks (resuming from a checkpoint), evaluating after each chunk.

    Each training task has ``train_k`` support and ``train_k`` query points (Finn's data
    generator draws 2K points per task and splits them in halves); evaluation always
    fine-tunes on K = 5.
    """
    sampler = sinusoid_sampler(25, k_shot=train_k, k_query=train_k)
    model = MLP(1, hidden=(40, 40), seed=seed, init=init)
    meta = MetaSL(sampler(np.random.default_rng(seed), 0).tasks(), model, eta=eta)
    ckpt = os.path.join(workdir, f"finn_{label}.npz")
    if os.path.exists(ckpt):
        os.remove(ckpt)
    curve, seconds, theta = [], 0.0, model.init_params()
    done = 0
    while done < iterations:
        done = min(iterations, done + chunk)
        res = meta.fit(steps=done, lr=0.001, optimizer="adam", sampler=sampler, seed=seed,
                       checkpoint=ckpt, checkpoint_every=chunk, resume=True, progress=False)
        seconds += res.seconds
        theta = res.theta
        # the same 600 held-out tasks for every seed and run (seed 10,000)
        mse = evaluate(meta, theta, eval_tasks if done == iterations else 100, 10_000)
        train_mse = 2.0 * float(np.mean(res.objective[-chunk:]))
        curve.append({"iteration": done, "seconds": seconds, "train_mse_last_chunk": train_mse,
                      "mse": [float(mse[k]) for k in EVAL_STEPS], "mse0": float(mse[0])})
        print(f"{label} it={done} {seconds:.1f}s train={train_mse:.3f} "
              f"1/5/10={[round(float(mse[k]), 3) for k in EVAL_STEPS]} load: {uptime()}", flush=True)
    return meta, theta, curve, seconds


def time_steps(n_steps: int, seed: int) -> dict:
    """Median wall time of one meta-step: fastmeta vs PyTorch create_graph (loop and batched)."""
    from benchmarks.baselines.torch_maml import TorchMAML
    import torch
    sampler = sinusoid_sampler(25, k_shot=5, k_query=5)
    model = MLP(1, hidden=(40, 40), seed=seed)
    meta = MetaSL(sampler(np.random.default_rng(seed), 0).tasks(), model, eta=ETA)
    theta = model.init_params()
    layers = model.unflatten(theta)
    impls = {"fastmeta": None,
             "torch_loop_f32": TorchMAML(layers, dtype="float32", batched=False),
             "torch_batched_f32": TorchMAML(layers, dtype="float32", batched=True)}
    adam_m, adam_v = np.zeros_like(theta), np.zeros_like(theta)
    times = {k: [] for k in impls}
    parts = {"sample": [], "pack": [], "gradient": []}
    for step in range(n_steps):
        for name, impl in impls.items():
            t0 = time.perf_counter()
            batch = sampler(np.random.default_rng([seed, step]), step)
            if impl is None:
                t1 = time.perf_counter()
                packed = meta.pack(batch)
                t2 = time.perf_counter()
                _, g = meta.value_and_grad_on(theta, packed)
                t3 = time.perf_counter()
                # Adam as in fit (same arithmetic as fastmeta._optim._Adam)
                adam_m = 0.9 * adam_m + 0.1 * g
                adam_v = 0.999 * adam_v + 0.001 * g * g
                theta = theta - 0.001 * (adam_m / (1 - 0.9 ** (step + 1))) / (
                    np.sqrt(adam_v / (1 - 0.999 ** (step + 1))) + 1e-8)
                parts["sample"].append(t1 - t0)
                parts["pack"].append(t2 - t1)
                parts["gradient"].append(t3 - t2)
            else:
                impl.step(batch)
            times[name].append(time.perf_counter() - t0)
    out = {k: float(np.median(v[5:])) for k, v in times.items()}
    out.update({f"fastmeta_{k}": float(np.median(v[5:])) for k, v in parts.items()})
    out["torch_threads"] = torch.get_num_threads()
    out["steps"] = n_steps
    return out


def final_theta(path: str) -> np.ndarray:
    """theta of a run's last checkpoint (also from runs saved before checkpoints carried a format marker)."""
    with np.load(path, allow_pickle=False) as z:
        return np.array(z["theta"])


def summarize(dirs: list[str], publish: bool, notes: str = "") -> None:
    """Every run in ``dirs`` (finn.json + final checkpoints) in one table, re-evaluated on the
    same 600 held-out tasks: mean and median query MSE (the mean is the published statistic)."""
    runs = []
    for d in dirs:
        with open(os.path.join(d, "finn.json")) as f:
            r = json.load(f)
        r.setdefault("seed", 0)
        r.setdefault("init", "uniform")
        r["dir"] = d
        model = MLP(1, hidden=(40, 40), seed=r["seed"], init=r["init"])
        meta = MetaSL(sinusoid_tasks(1, 5, 5, seed=0), model, eta=ETA)
        for label in ("maml", "pretrained"):
            path = os.path.join(d, f"finn_{label}.npz")
            if os.path.exists(path) and r[f"{'maml' if label == 'maml' else 'pretrained'}_curve"]:
                M = evaluate_all(meta, final_theta(path), 600, 10_000)
                r[f"{label}_mean"] = [float(M[:, k].mean()) for k in EVAL_STEPS]
                r[f"{label}_median"] = [float(np.median(M[:, k])) for k in EVAL_STEPS]
                r[f"{label}_worst"] = [float(M[:, k].max()) for k in EVAL_STEPS]
                # Finn et al.'s test reports the same: 1.96 standard deviations over sqrt(tasks)
                r[f"{label}_ci95"] = [float(1.96 * M[:, k].std() / np.sqrt(M.shape[0])) for k in EVAL_STEPS]
        runs.append(r)
    # the learning curve of the first run listed; the per-step timing of the first run that measured it
    main_run = dict(runs[0], timing=next((r["timing"] for r in runs if r.get("timing")), None))
    text = render(main_run, runs) + (f"\n## Notes\n\n{notes}\n" if notes else "")
    dest = os.path.join("bench_results" if publish else dirs[0], "finn.md")
    with open(dest, "w") as f:
        f.write(text)
    print(text)
    print(f"written to {dest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=70_000)
    ap.add_argument("--chunk", type=int, default=10_000, help="iterations between evaluations")
    ap.add_argument("--eval-tasks", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-steps", type=int, default=105)
    ap.add_argument("--skip-pretraining", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--train-k", type=int, default=10,
                    help="support (and query) points per training task: 10 in Finn et al. section 5.1 "
                         "(one model, fine-tuned on K = 5 at test); 5 trains on the test's K")
    ap.add_argument("--init", default="uniform", choices=("uniform", "normal"),
                    help="MLP initialisation: PyTorch's default or Finn's TensorFlow code")
    ap.add_argument("--publish", action="store_true", help="write bench_results/finn.md")
    ap.add_argument("--out", default="/tmp/fastmeta-bench")
    ap.add_argument("--summarize", nargs="+", metavar="DIR",
                    help="re-evaluate and tabulate the finished runs in these output directories")
    ap.add_argument("--notes", default="", help="a paragraph appended to the summary (conditions of the runs)")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize, args.publish, args.notes)
        return
    os.makedirs(args.out, exist_ok=True)
    load_before = uptime()
    chunk = min(args.chunk, args.iterations)
    timing = None if args.skip_timing else time_steps(args.timing_steps, args.seed)
    print("per meta-step (s):", timing, flush=True)
    _, _, maml_curve, maml_s = train(ETA, args.iterations, chunk, args.seed, args.eval_tasks, args.out, "maml",
                                     args.init, args.train_k)
    pre_curve, pre_s = [], 0.0
    if not args.skip_pretraining:
        _, _, pre_curve, pre_s = train(0.0, args.iterations, chunk, args.seed, args.eval_tasks, args.out,
                                       "pretrained", args.init, args.train_k)
    load_after = uptime()
    import numba
    result = {"iterations": args.iterations, "seed": args.seed, "init": args.init, "train_k": args.train_k, "maml_curve": maml_curve, "maml_seconds": maml_s,
              "pretrained_curve": pre_curve, "pretrained_seconds": pre_s, "timing": timing,
              "load_before": load_before, "load_after": load_after, "numba_threads": numba.get_num_threads(),
              "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
              "fastmeta": fastmeta.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}
    with open(os.path.join(args.out, "finn.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = render(result)
    dest = os.path.join("bench_results" if args.publish else args.out, "finn.md")
    with open(dest, "w") as f:
        f.write(text)
    print(text)
    print(f"written to {dest}")


def _fmt(xs) -> str:
    return " | ".join(f"{x:.3f}" for x in xs)


def render(r: dict, runs: list[dict] | None = None) -> str:
    """Markdown of the main run ``r`` (curve, timing) and, from ``summarize``, every run."""
    t = r["timing"]
    lines = [
        "# Finn et al. (2017) sinusoid regression, on their settings (benchmarks/finn_sinusoid.py)",
        "",
        "1-40-40-1 ReLU network, every weight and bias trained (`fastmeta.MLP`); training tasks of",
        "K support + K query points (\"train K\": 10 in Finn et al. section 5.1, which fine-tune the",
        "one model on K = 5 at test; 5 in the issue's reading); one inner step of 0.01 on the MSE",
        "(eta = 0.02 on fastmeta's half-squared",
        "loss: the same update); exact second-order meta-gradient; Adam 0.001; 25 fresh tasks per",
        "iteration (`MetaSL.fit(sampler=...)`); 70,000 iterations. Evaluation: the same 600",
        "held-out tasks for every run (K = 5 support, 100 query points), fine-tuning steps of 0.01",
        "on the MSE. Pretrained: same network, task stream and iterations, trained on the average",
        "risk (eta = 0). Init \"uniform\" is PyTorch's default, \"normal\" Finn's TensorFlow code.",
        "",
        "    python benchmarks/finn_sinusoid.py --out DIR [--seed S] [--init normal]   # one run",
        "    python benchmarks/finn_sinusoid.py --summarize DIR ... --publish          # this file",
        "",
    ]
    if runs is None:
        runs = [dict(r, maml_mean=r["maml_curve"][-1]["mse"],
                     pretrained_mean=r["pretrained_curve"][-1]["mse"] if r["pretrained_curve"] else None)]
    lines += [
        "| run | training wall time | mean MSE ± 95% CI k = 1 | k = 5 | k = 10 | median k = 1 | k = 5 | k = 10 | worst task k = 1 / 5 / 10 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def stats(x: dict, label: str) -> str:
        med, worst, ci = x.get(f"{label}_median"), x.get(f"{label}_worst"), x.get(f"{label}_ci95")
        mean = (" | ".join(f"{m:.3f} ± {c:.3f}" for m, c in zip(x[f"{label}_mean"], ci)) if ci
                else _fmt(x[f"{label}_mean"]))
        return (f"{mean} | {_fmt(med) if med else ' | '.join(['n/a'] * 3)} | "
                + (" / ".join(f"{w:.1f}" for w in worst) if worst else "n/a") + " |")

    groups: dict = {}
    for x in runs:
        key = (x.get("train_k", 5), x.get("init", "uniform"))
        name = f"train K {key[0]}, seed {x.get('seed', 0)}, init {key[1]}"
        lines.append(f"| MAML, {name} | {x['maml_seconds']:.0f} s{x.get('note', '')} | {stats(x, 'maml')}")
        if x.get("pretrained_mean"):
            lines.append(f"| pretrained, {name} | {x['pretrained_seconds']:.0f} s | {stats(x, 'pretrained')}")
        groups.setdefault(key, []).append(x)
    for (k, init), xs in groups.items():
        if len(xs) > 1:
            mean = [float(np.mean([x["maml_mean"][j] for x in xs])) for j in range(3)]
            seeds = ", ".join(str(x.get("seed", 0)) for x in xs)
            lines.append(f"| **MAML, train K {k}, init {init}: mean of seeds {seeds}** | "
                         f"{np.mean([x['maml_seconds'] for x in xs]):.0f} s | {_fmt(mean)} | | | | |")
    lines += [
        "| Finn et al., published MAML | | 0.67 | 0.38 | 0.35 | | | | |",
        "| Finn et al., published pretrained | | 2.41 | 2.23 | 2.19 | | | | |",
        "| standard PyTorch implementation on this machine (the issue's figure) | 895 s | 0.61 | 0.47 | 0.42 | | | | |",
        "",
        f"Learning curve of the first run (train K {r.get('train_k', 5)}, seed {r.get('seed', 0)}, init "
        f"{r.get('init', 'uniform')}): mean query "
        "MSE on 100 held-out tasks after each chunk (the last row on 600):",
        "",
        "| iteration | seconds | train MSE (chunk mean) | 1 step | 5 steps | 10 steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in r["maml_curve"]:
        lines.append(f"| {c['iteration']:,} | {c['seconds']:.0f} | {c['train_mse_last_chunk']:.3f} | {_fmt(c['mse'])} |")
    if t is not None:
        lines += [
            "",
            f"## One meta-step (25 fresh tasks of K = 5 + 5, exact meta-gradient, Adam), median of "
            f"{t['steps'] - 5}, interleaved",
            "",
            "| implementation | per meta-step | x fastmeta |",
            "| --- | --- | --- |",
            f"| fastmeta (sample {t['fastmeta_sample'] * 1e3:.2f} ms + pack {t['fastmeta_pack'] * 1e3:.3f} ms + "
            f"exact meta-gradient {t['fastmeta_gradient'] * 1e3:.2f} ms + Adam) | {t['fastmeta'] * 1e3:.2f} ms | 1.0 |",
            f"| PyTorch create_graph=True, loop over tasks (float32) | {t['torch_loop_f32'] * 1e3:.2f} ms | "
            f"{t['torch_loop_f32'] / t['fastmeta']:.1f} |",
            f"| PyTorch create_graph=True, tasks batched by bmm (float32) | {t['torch_batched_f32'] * 1e3:.2f} ms | "
            f"{t['torch_batched_f32'] / t['fastmeta']:.1f} |",
        ]
    lines += ["", "Conditions: 2 CPUs (x86_64), shared with other jobs; Numba threads "
              f"{r['numba_threads']}, torch threads {t['torch_threads'] if t else 'n/a'}, warm Numba cache; Python "
              f"{r['python']}, NumPy {r['numpy']}, Numba {r['numba']}."]
    for x in runs:
        lines.append(f"- train K {x.get('train_k', 5)}, seed {x.get('seed', 0)}, init {x.get('init', 'uniform')}: load before "
                     f"`{x['load_before']}`, after `{x['load_after']}`.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
