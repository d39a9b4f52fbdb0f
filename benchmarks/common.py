"""What every benchmark script shares: a name for the device, peak throughput figures, running
one measurement in a fresh process, and appending rows to a table of RESULTS.md."""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

import os

# $SAGAN_RESULTS redirects recorded rows (gpu_check.sh keeps a device run's rows in its output folder)
RESULTS = Path(os.environ.get("SAGAN_RESULTS", Path(__file__).with_name("RESULTS.md")))

# dense peak TFLOP/s by GPU name fragment: (bf16/fp16 tensor cores, tf32 tensor cores, plain fp32)
PEAK_TFLOPS = {
    "H200": (989.4, 494.7, 66.9),
    "H100": (989.4, 494.7, 66.9),  # SXM; the PCIe card is lower (756 / 378 / 51)
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.1, 183.0, 91.6),
    "RTX 4090": (165.2, 82.6, 82.6),
}


def device_name(device: torch.device | None = None) -> str:
    """The GPU's name, or the CPU model and the number of threads torch uses."""
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device or 0)
    cpu = platform.processor() or "CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    """Wait for the GPU, so that a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def command_line(script: str) -> str:
    """How this script was invoked, for the results table (``--record`` left out)."""
    args = shlex.join(a for a in sys.argv[1:] if a != "--record")
    return f"python benchmarks/{script} {args}".strip()


def add_protocol_args(ap: argparse.ArgumentParser) -> None:
    """``--record``, and the internal ``--one SPEC`` that :func:`run_isolated` passes a child."""
    ap.add_argument("--record", action="store_true", help="append the rows to benchmarks/RESULTS.md")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)


def run_child(args: argparse.Namespace, measure) -> bool:
    """In a child started by :func:`run_isolated` (``--one SPEC``): measure SPEC, hand the
    result to the parent and return True; in the parent, return False."""
    if not args.one:
        return False
    print("RESULT " + json.dumps(measure(json.loads(args.one))), flush=True)
    return True


def run_isolated(script: str, spec: dict) -> tuple[dict | None, str]:
    """Run ``script --one SPEC`` in a fresh Python, so that peak memory, compile caches and an
    out-of-memory kill belong to this one measurement. Returns (result, "") or, when the child
    printed none, (None, the last line of its stderr). ``spec["timeout"]``, when set, bounds the child
    in seconds."""
    try:
        run = subprocess.run([sys.executable, script, "--one", json.dumps(spec)], capture_output=True, text=True,
                             timeout=spec.get("timeout"))
    except subprocess.TimeoutExpired:
        return None, f"timed out after {spec['timeout']} s (compilation included)"
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
    if lines:
        return json.loads(lines[-1][len("RESULT "):]), ""
    return None, (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak in FLOP/s for ``precision`` (fp32 counts TF32 when cuDNN may use
    it for convolutions); None when unknown (every CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32, fp32) in PEAK_TFLOPS.items():
        if key in name:
            if precision in ("bf16", "fp16"):
                return half * 1e12
            # convolutions are nearly all of a SAGAN's FLOPs, and cuDNN runs fp32 convolutions on
            # TF32 tensor cores unless told not to (torch's default), whatever matmuls do
            tf32_on = torch.backends.cudnn.allow_tf32
            return (tf32 if tf32_on else fp32) * 1e12
    return None


def table_row(cells: list[str]) -> str:
    """One row of a markdown table."""
    return "| " + " | ".join(cells) + " |"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """The rows as a markdown table on stdout (its header without the separator line)."""
    print("\n".join(table_row(r) for r in [header, *rows]))


def append_rows(section: str, header: list[str], rows: list[list[str]]) -> None:
    """Add ``rows`` at the end of the table under ``## section`` in RESULTS.md, creating the
    section (at the end of the file) and the table header when they are missing."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    lines = text.splitlines()
    title = f"## {section}"
    if title not in lines:
        lines += ["", title, "", table_row(header), table_row(["---"] * len(header))]
        at = len(lines)
    else:
        i = lines.index(title) + 1
        while i < len(lines) and not lines[i].startswith("|"):
            if lines[i].startswith("## "):
                break
            i += 1
        if i >= len(lines) or not lines[i].startswith("|"):  # section without a table yet
            lines[i:i] = [table_row(header), table_row(["---"] * len(header))]
            i += 2
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        at = i
    lines[at:at] = [table_row(r) for r in rows]
    RESULTS.write_text("\n".join(lines) + "\n")


def training_seconds(run) -> dict[int, float]:
    """Seconds of training up to each logged step of a single-process torch-sagan run (a
    ``sagan.rundir.RunDir``), from its log: each log interval lasted its images / ``img_per_s``."""
    cfg = run.saved_config()
    per_step = cfg.train.batch_size * cfg.train.n_dis  # real images through D per step
    total, last, out = 0.0, 0, {}
    for line in run.metrics.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("eval") or "img_per_s" not in rec or rec["step"] <= last:
            continue
        total += (rec["step"] - last) * per_step / rec["img_per_s"]
        last = rec["step"]
        out[last] = total
    return out
