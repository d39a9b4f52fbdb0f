"""benchmarks/gpu_check.sh in its CPU smoke mode: every step of the GPU check runs, at toy size."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_step_at_toy_size_on_the_cpu(tmp_path, tiny_folder):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path / "out"),
                        "--data", str(tiny_folder)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 0, summary + r.stderr[-2000:]
    steps = ("attention", "throughput", "cifar10", "cifar10_grid", "cifar10_samples", "celeba64", "celeba64_grid",
             "celeba64_samples", "tests_gpu")
    for step in steps:  # in the order the GPU call needs them: measurements first, tests last
        assert f"== {step}:" in summary, step
    assert [summary.index(f"== {s}:") for s in steps] == sorted(summary.index(f"== {s}:") for s in steps)
    assert summary.count("stopped cleanly by SIGTERM with a checkpoint") == 2
    assert summary.count("img/s (second half of the run)") == 2
    rows = (out / "RESULTS.md").read_text()
    assert rows.count("| cifar10 |") == 1 and rows.count("| imagenet128 |") == 1 and "16x16" in rows
    assert (out / "cifar10_grid.png").stat().st_size > 0 and (out / "celeba64_grid.png").stat().st_size > 0
    import zipfile

    assert len(zipfile.ZipFile(out / "cifar10_samples.zip").namelist()) == 20
    assert len(zipfile.ZipFile(out / "celeba64_samples.zip").namelist()) == 10
    assert list(out.glob("profile_*.txt")) and "Self CPU" in next(out.glob("profile_*.txt")).read_text()
