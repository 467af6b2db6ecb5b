"""nntrain vs PyTorch, side by side on the reference workloads (issue 6).

Run `python -m bench --help`. Not part of the test suite.
"""
