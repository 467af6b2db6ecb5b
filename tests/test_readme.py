"""The README's library examples run as written (from the repository root)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def library_blocks() -> list[str]:
    """The ```python blocks of the README's 'Using it' section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Using it"):text.index("\n## ", text.index("## Using it") + 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.parametrize("index", range(2))
def test_readme_library_block_runs(index: int) -> None:
    blocks = library_blocks()
    assert len(blocks) == 2
    proc = subprocess.run([sys.executable, "-c", blocks[index]], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    if index == 1:   # the loop learns: the last epoch's loss is below the first's
        losses = [float(m) for m in re.findall(r"last batch loss ([0-9.]+)", proc.stdout)]
        assert len(losses) == 3 and losses[-1] < losses[0], proc.stdout
