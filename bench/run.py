"""`python bench/run.py ...`: the same as `python -m bench ...` (this script puts the repository root,
the folder above bench/, on sys.path so that the bench package imports)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.cli import main

    raise SystemExit(main())
