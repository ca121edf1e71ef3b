"""Benchmark suites of fastmeta (asv and pytest-benchmark); see README.md."""
