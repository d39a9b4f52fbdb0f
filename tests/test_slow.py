"""Longer checks. Run with: pytest -m slow"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_preset_trains_through_the_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sagan", "train", "--steps", "100", "--out", str(tmp_path / "demo"),
                        "--no_progress"], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 100
    # D separates real from fake but has not run away: hinge D loss well inside (0, 2)
    assert 0.2 < rows[-1]["d_loss"] < 1.9
    assert (tmp_path / "demo" / "samples" / "latest.png").exists()
