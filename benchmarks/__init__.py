"""The speed harness (harness.py): reference figures, acceptance targets and the timed
measurements behind tools/benchmark.py and docs/benchmark.md. Not installed."""
