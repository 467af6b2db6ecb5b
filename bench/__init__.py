"""nntrain vs PyTorch, side by side on the reference workloads (bench/workloads.py).

Run `python -m bench --help`. Not part of the test suite.
"""
