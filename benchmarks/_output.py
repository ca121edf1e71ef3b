"""Where benchmark scripts write: a scratch directory unless ``--publish`` is given.

Committed results live in ``bench_results/``; a benchmark run must leave ``git status``
clean unless the user asks to publish. The scratch directory is
``$FASTMETA_BENCH_SCRATCH`` if set, else ``<tmp>/fastmeta-bench``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO / "bench_results"


def scratch_dir() -> Path:
    """The scratch directory (created if missing)."""
    path = Path(os.environ.get("FASTMETA_BENCH_SCRATCH") or Path(tempfile.gettempdir()) / "fastmeta-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_dir(publish: bool) -> Path:
    """``bench_results/`` when publishing, the scratch directory otherwise."""
    if publish:
        PUBLISHED.mkdir(exist_ok=True)
        return PUBLISHED
    return scratch_dir()


def add_publish_flag(parser) -> None:
    """The ``--publish`` option every benchmark script shares."""
    parser.add_argument("--publish", action="store_true",
                        help="write the results into bench_results/ (committed files); default: the scratch "
                             "directory $FASTMETA_BENCH_SCRATCH or <tmp>/fastmeta-bench, leaving git status clean")
