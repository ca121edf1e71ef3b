"""Meta-SL kernels of an earlier revision against the current ones, side by side in one process.

    PYTHONPATH=. python benchmarks/sl_kernel_order.py --before a0820cc [--rounds 5]

The kernel package ``fastmeta/_kernels`` of ``--before`` is copied twice into a scratch
directory: once as it is and once with ``reassoc`` and ``contract`` added to its FASTMATH
(the flags the kernels were compiled with before they were dropped for reproducibility).
Each model's kernel module is then swapped in turn for the copies' and the current one,
round after round, timing ``MetaSL.value_and_grad`` (32 tasks of 10 + 10 samples, squared
loss): TwoLayerReLU(8, 1024), MLP 8-64-64-1, LinearModel on d = 8 and d = 64 features.
Prints a Markdown table of wall-time medians (median over rounds of per-round medians)
and the ratios to the old kernels with the old flags. Writes nothing but its Numba cache
in the scratch directory.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

OLD_FLAGS = '{"nsz", "arcp", "afn", "reassoc", "contract"}'
VARIANTS = {"before, with reassoc/contract": "k_before_reassoc", "before": "k_before", "now": None}


def _copy_kernels(rev: str, scratch: Path) -> None:
    """Unpack fastmeta/_kernels at ``rev`` as packages k_before and k_before_reassoc in ``scratch``."""
    archive = subprocess.run(["git", "archive", rev, "fastmeta/_kernels"], check=True, capture_output=True).stdout
    for name in ("k_before", "k_before_reassoc"):
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith(".py"):
                    target = scratch / name / Path(member.name).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
    config = scratch / "k_before_reassoc" / "_config.py"
    text = config.read_text()
    start = text.index("FASTMATH = {")
    end = text.index("}", start) + 1
    config.write_text(text[:start] + "FASTMATH = " + OLD_FLAGS + text[end:])


def _problems():
    import fastmeta
    from fastmeta.sl import MetaSL, SLTask

    rng = np.random.default_rng(0)
    tasks8 = [SLTask(rng.normal(size=(10, 8)), rng.normal(size=10), rng.normal(size=(10, 8)), rng.normal(size=10))
              for _ in range(32)]
    tasks64 = [SLTask(rng.normal(size=(10, 64)), rng.normal(size=10), rng.normal(size=(10, 64)),
                      rng.normal(size=10)) for _ in range(32)]
    models = {"TwoLayerReLU(8, 1024)": (tasks8, fastmeta.TwoLayerReLU(8, 1024, seed=0)),
              "MLP 8-64-64-1": (tasks8, fastmeta.models.MLP(8, hidden=(64, 64))),
              "LinearModel, d = 8": (tasks8, fastmeta.LinearModel()),
              "LinearModel, d = 64": (tasks64, fastmeta.LinearModel())}
    out = {}
    for name, (tasks, model) in models.items():
        meta = MetaSL(tasks, model, eta=0.1)
        out[name] = (meta, meta.init_params() + 0.01)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision whose kernels are the baseline")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fastmeta-kernel-order-"))
    _copy_kernels(args.before, scratch)
    sys.path.insert(0, str(scratch))
    import fastmeta.linear_model
    import fastmeta.models.mlp
    import fastmeta.neural

    modules = {}
    for label, package in VARIANTS.items():
        package = package or "fastmeta._kernels"
        modules[label] = tuple(importlib.import_module(f"{package}.{m}") for m in ("relu", "sl", "mlp"))

    def use(label):
        fastmeta.neural._k, fastmeta.linear_model._ksl, fastmeta.models.mlp._k = modules[label]

    problems = _problems()
    for meta, theta in problems.values():
        for label in VARIANTS:
            use(label)
            meta.value_and_grad(theta)          # compile or load from the cache
    per_round = {(p, v): [] for p in problems for v in VARIANTS}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, (meta, theta) in problems.items():
            calls = 400 if name.startswith("Linear") else 20
            for label in VARIANTS:
                use(label)
                times = []
                for _ in range(calls):
                    start = time.perf_counter()
                    meta.value_and_grad(theta)
                    times.append(time.perf_counter() - start)
                per_round[name, label].append(statistics.median(times))
        loads.append(os.getloadavg()[0])
    head = list(VARIANTS)
    print("| problem | " + " | ".join(f"{v} (ms)" for v in head) + " | now / before | now / before with reassoc |")
    print("|---" * (len(head) + 3) + "|")
    for name in problems:
        med = {v: statistics.median(per_round[name, v]) for v in head}
        print(f"| {name} | " + " | ".join(f"{med[v] * 1e3:.4g}" for v in head)
              + f" | {med['now'] / med['before']:.2f}x | {med['now'] / med[head[0]]:.2f}x |")
    import numba
    print(f"\nwall-time medians, {args.rounds} rounds, numba {numba.__version__}, {numba.get_num_threads()} threads, "
          f"warm cache; load average (1 min) {min(loads):.1f} to {max(loads):.1f}; baseline kernels from {args.before}")


if __name__ == "__main__":
    main()
