"""A kernel module of fastmeta as it was at an earlier commit, importable next to today's.

Before/after benchmarks (``solver_kernel_fold.py``, ``solver_kernel_ab.py``) compare kernels
in one process: the old source is read from git, its relative ``_config`` import made
absolute, written to a scratch directory (where Numba caches its machine code) and imported
under its own name.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kernel_module_at(commit: str, name: str, path: str = "fastmeta/_kernels/krylov.py"):
    """The module ``path`` at ``commit``, imported as ``name`` from a scratch copy of its source."""
    src = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    src = src.replace("from ._config import", "from fastmeta._kernels._config import")
    scratch = Path(tempfile.gettempdir()) / "fastmeta-bench" / name
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / f"{name}.py"
    if not copy.exists() or copy.read_text() != src:
        copy.write_text(src)
    sys.path.insert(0, str(scratch))
    return importlib.import_module(name)
