"""Every ```python block of the README runs as written (each in a fresh process, in an empty
folder), so that a user who copies one gets what it says."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", SAGAN_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", BLOCKS[i]], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, f"README block {i}:\n{BLOCKS[i]}\n{run.stderr[-3000:]}"
