"""nntrain vs PyTorch, side by side on the reference workloads (issue 6).

Run `python -m bench --help` (or `python bench/run.py --help`). Not part of the test suite.
"""
