"""Time the per-ISA native kernels level against level: decode attention over the paged cache
(paged_attention_rows) and the row-major int8 / fp8 matmuls, at SmolLM2-135M's shapes (9 query
heads over 3 kv heads of 64, hidden 576, intermediate 1536).

Levels are interleaved round by round, so noise from other processes hits them all alike; a
cell is the median over rounds of the mean time per call, in microseconds. One thread by default,
timed by its own CPU time (time.thread_time), so time slices lost to other processes do not
count; with --threads N > 1 wall time, where a busy machine makes every parallel call wait for a
descheduled thread. Inputs stay in cache (the K/V of one decode step and one layer's weights
are small): this measures the kernels' arithmetic, not DRAM.

    .venv/bin/python benchmarks/bench_isa_kernels.py                    # every level this CPU runs
    .venv/bin/python benchmarks/bench_isa_kernels.py --levels avx2 generic --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import machine
from inferd.kernels import cpu_isa, cpu_ops


def _attention_case(rows: int, context: int, heads=9, kv_heads=3, dim=64, block=16, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(rows * 100_000 + context)
    per_seq = -(-context // block)
    num_blocks = rows * per_seq + 1
    k_cache = torch.randn(num_blocks, block, kv_heads, dim, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block, kv_heads, dim, generator=g).to(dtype)
    tables = (torch.randperm(num_blocks - 1, generator=g) + 1).view(rows, per_seq).contiguous()
    q = torch.randn(rows, heads, dim, generator=g).to(dtype)
    lens = torch.full((rows,), context, dtype=torch.long)
    out = torch.empty_like(q)
    return q, k_cache, v_cache, tables, lens, out, dim ** -0.5


def _cases(levels: dict[str, object]) -> dict[str, dict[str, Callable[[], object]]]:
    cases: dict[str, dict[str, Callable[[], object]]] = {}
    for rows in (1, 8):
        for context in (128, 1024):
            q, kc, vc, tables, lens, out, scale = _attention_case(rows, context)
            cases[f"attention bf16 9/3x64 ctx {context:>4} rows {rows}"] = {
                name: (lambda ops=ops, q=q, kc=kc, vc=vc, t=tables, n=lens, o=out, s=scale:
                       ops.paged_attention_rows(o, q, kc, vc, t, n, s, 0))
                for name, ops in levels.items()}
    g = torch.Generator().manual_seed(0)
    for n, k in ((1536, 576), (576, 1536)):
        x = torch.randn(1, k, generator=g).to(torch.bfloat16)
        w8 = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
        wf8 = torch.randn(n, k, generator=g).to(torch.float8_e4m3fn)
        scale = (torch.rand(n, generator=g) * 0.01).to(torch.bfloat16)
        cases[f"int8_rows_mm {n}x{k} rows 1"] = {
            name: (lambda ops=ops, x=x, w=w8, s=scale: ops.int8_rows_mm(x, w, s)) for name, ops in levels.items()}
        cases[f"fp8_rows_mm  {n}x{k} rows 1"] = {
            name: (lambda ops=ops, x=x, w=wf8, s=scale: ops.fp8_rows_mm(x, w, s)) for name, ops in levels.items()}
    return cases


def _time(fn: Callable[[], object], budget_s: float, clock: Callable[[], float]) -> float:
    fn()
    calls, start = 0, clock()
    while True:
        fn()
        calls += 1
        elapsed = clock() - start
        if elapsed >= budget_s:
            return elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", nargs="*", help="levels to compare (default: every level this CPU runs)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per cell per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    names = args.levels or [lv.name for lv in cpu_isa.levels() if cpu_isa.supported(lv)]
    levels = {}
    for name in names:
        ops = cpu_ops.ops_for(name)
        if ops is None:
            print(f"{name}: did not build, skipped")
        else:
            levels[name] = ops
    cases = _cases(levels)
    times: dict[str, dict[str, list[float]]] = {c: {n: [] for n in levels} for c in cases}
    for _ in range(args.rounds):
        for case, fns in cases.items():
            for name, fn in fns.items():
                times[case][name].append(_time(fn, args.budget, clock))
    clock_name = "thread CPU time" if args.threads == 1 else "wall time"
    print(f"# {machine()}; CPU level {cpu_isa.describe()}; {clock_name}")
    header = f"{'kernel':<42}" + "".join(f"{n:>12}" for n in levels)
    if len(levels) > 1:
        header += f"{'speedup':>10}"
    print(header + "   (us per call, median of rounds)")
    for case in cases:
        med = {n: statistics.median(times[case][n]) for n in levels}
        line = f"{case:<42}" + "".join(f"{med[n]:>12.1f}" for n in levels)
        if len(levels) > 1:
            line += f"{max(med.values()) / min(med.values()):>9.1f}x"
        print(line)


if __name__ == "__main__":
    main()
