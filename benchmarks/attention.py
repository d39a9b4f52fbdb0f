"""Time and peak memory of the self-attention block (forward + backward) against a naive
reference that materialises the N x N/4 softmax, over feature maps from 16x16 to 128x128.

    python benchmarks/attention.py                                  # GPU: batch 128, 128 channels, bf16
    python benchmarks/attention.py --batch 2 --channels 64 --dtype fp32   # CPU-sized
    python benchmarks/attention.py ... --record                     # append the rows to RESULTS.md

Both columns run the same `SelfAttention2d` with the same weights: "fused" is its training
path (`F.scaled_dot_product_attention` with query and key zero-padded to the value's size),
"naive" is `forward(x, return_attention=True)`, which computes softmax(q k^T) explicitly as
every earlier implementation does. Memory is the peak above what the inputs and weights hold:
on CUDA from max_memory_allocated, on the CPU from the peak RSS of a fresh subprocess per
measurement. The kernel column names the attention op the profiler saw. An out-of-memory
error is recorded as such: that is the point of the fused path.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import sys
import time

import torch
from common import RESULTS, add_protocol_args, append_rows, command_line, device_name, print_table, run_child, run_isolated, sync

SECTION = "Attention block (`benchmarks/attention.py`)"
HEADER = ["date", "device", "torch", "command", "feature map", "N x N/4", "batch, channels, dtype",
          "fused ms", "naive ms", "fused peak", "naive peak", "fused kernel"]


def measure(spec: dict) -> dict:
    """Forward + backward of one configuration: median time over ``repeats`` and peak memory."""
    from sagan.layers import SelfAttention2d

    device = torch.device(spec["device"])
    torch.manual_seed(0)
    m = SelfAttention2d(spec["channels"]).to(device)
    with torch.no_grad():
        m.gamma.fill_(1.0)
    s = spec["size"]
    x = torch.randn(spec["batch"], spec["channels"], s, s, device=device, requires_grad=True)
    naive = spec["impl"] == "naive"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec["dtype"])

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            y = m(x, return_attention=True)[0] if naive else m(x)
        y.float().sum().backward()
        x.grad = None
        m.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        step()  # warm-up, and the memory peak
        sync(device)
        peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
        times = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        return {"oom": True}
    kernel = "softmax + bmm (explicit matrix)"
    if not naive:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        ops = sorted({e.name for e in prof.events() if "attention" in e.name and "backward" not in e.name
                      and e.name != "aten::scaled_dot_product_attention"})
        kernel = ", ".join(o.replace("aten::", "") for o in ops) or "?"
    times.sort()
    return {"oom": False, "ms": 1e3 * times[len(times) // 2], "peak": peak, "kernel": kernel}


def _fmt_mem(r: dict) -> str:
    return "out of memory" if r["oom"] else f"{r['peak'] / 2**20:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    ap.add_argument("--sizes", nargs="+", type=int, default=[16, 32, 64, 128], help="feature-map sides")
    ap.add_argument("--batch", type=int, default=128 if gpu else 2)
    ap.add_argument("--channels", type=int, default=128 if gpu else 64)
    ap.add_argument("--dtype", default="bf16" if gpu else "fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if gpu else "cpu")
    add_protocol_args(ap)
    args = ap.parse_args()
    if run_child(args, measure):
        return

    command = command_line("attention.py")
    rows = []
    for s in args.sizes:
        res = {}
        for impl in ("fused", "naive"):
            spec = dict(size=s, impl=impl, batch=args.batch, channels=args.channels, dtype=args.dtype,
                        repeats=args.repeats, device=args.device)
            r, err = run_isolated(__file__, spec)
            # no result: killed (the CPU's out-of-memory killer) or crashed
            res[impl] = r if r is not None else {"oom": True, "error": err}
        f, n = res["fused"], res["naive"]
        nk = (s // 2) ** 2
        row = [str(datetime.date.today()), device_name(torch.device(args.device)), f"torch {torch.__version__}",
               f"`{command}`", f"{s}x{s}", f"{s * s:,} x {nk:,}", f"{args.batch}, {args.channels}, {args.dtype}",
               "OOM" if f["oom"] else f"{f['ms']:.1f}", "OOM" if n["oom"] else f"{n['ms']:.1f}",
               _fmt_mem(f), _fmt_mem(n), f.get("kernel", f.get("error", ""))]
        rows.append(row)
        print(f"{s}x{s}: fused {row[7]} ms, {row[9]}; naive {row[8]} ms, {row[10]}; kernel {row[11]}",
              file=sys.stderr, flush=True)
    print_table(HEADER, rows)
    if args.record:
        append_rows(SECTION, HEADER, rows)
        print(f"recorded in {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
