"""The gradserve benchmark harness: `uv run python -m bench` (docs/benchmarks.md)."""
