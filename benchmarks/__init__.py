"""Benchmarks of the Mean Teacher port (run as modules, e.g. `python -m benchmarks.train_step`)."""
