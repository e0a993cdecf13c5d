"""Benchmarks: `uv run python -m bench [--quick]` runs every scenario and writes docs/benchmarks.md."""
