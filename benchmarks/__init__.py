"""The speed harness behind tools/benchmark.py and docs/benchmark.md (not installed):
harness.py runs the parts (search.py, bars.py, train.py, inputs.py, export.py, and
reference.py against the PyTorch reference) on process.py's fresh processes and
timing, with config.py's settings, reference figures and targets; table.py prints."""
