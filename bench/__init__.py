"""The gradserve benchmark harness: `uv run python -m bench` (README, "Benchmarks")."""
