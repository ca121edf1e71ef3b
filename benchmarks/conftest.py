"""pytest configuration of the benchmark suites.

Registers the ``huge`` marker (the 10^6-state meta-RL benchmark: ~2 GB, minutes) and
skips it unless asked for with ``-m huge`` (or any -m expression naming it) or
FASTMETA_BENCH_HUGE=1.
"""
from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "huge: 10^6-state benchmarks; run with -m huge or FASTMETA_BENCH_HUGE=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FASTMETA_BENCH_HUGE", "") not in ("", "0") or "huge" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="10^6-state benchmark: run with -m huge or FASTMETA_BENCH_HUGE=1")
    for item in items:
        if "huge" in item.keywords:
            item.add_marker(skip)
