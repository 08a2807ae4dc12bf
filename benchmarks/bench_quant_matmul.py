"""Time quantized linears against fp32 / bf16 `nn.Linear` at inferd's model shapes.

Decode is memory-bound, so by default every timed call reads weights that are not in cache:
each format gets enough copies of the layer to overflow the last-level cache and the timer
cycles through them (`--hot` turns that off). Formats are interleaved round by round, so that
noise from other processes hits them all alike; a cell is the median over rounds of the mean
time per call, in microseconds.

    .venv/bin/python benchmarks/bench_quant_matmul.py              # the table
    .venv/bin/python benchmarks/bench_quant_matmul.py --crossover  # kernel vs dequant+GEMM by M
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from inferd.quant import linear as qlinear
from inferd.quant.formats import quantize_int8
from inferd.quant.linear import Fp8Linear, Int4Linear, Int8Linear

# (name, in_features, out_features): SmolLM2-135M's linears, then a 7B-class square layer.
SHAPES = [
    ("qkv_proj", 576, 960),
    ("o_proj", 576, 576),
    ("gate_up_proj", 576, 3072),
    ("down_proj", 1536, 576),
    ("lm_head", 576, 49152),
    ("square_4k", 4096, 4096),
]
FORMATS = ["fp32", "bf16", "int8", "int8_g32", "int4_g32", "int4_g64", "int4_g128", "fp8"]


def build(fmt: str, base: nn.Linear, device: torch.device) -> tuple[nn.Module, torch.dtype] | None:
    """A module of `fmt` and the activation dtype it is fed; None where the shape does not fit."""
    bf16 = torch.bfloat16
    if fmt == "fp32":
        return nn.Linear(base.in_features, base.out_features, bias=False).to(device), torch.float32
    if fmt == "bf16":
        return nn.Linear(base.in_features, base.out_features, bias=False).to(device, bf16), bf16
    if fmt == "int8":
        return Int8Linear.from_linear(base, device=device, compute_dtype=bf16), bf16
    if fmt == "int8_g32":  # the GGUF Q8_0 layout (exact two-plane int4 path)
        return Int8Linear(quantize_int8(base.weight, group_size=32), device=device), bf16
    if fmt.startswith("int4_g"):
        group = int(fmt.removeprefix("int4_g"))
        if base.in_features % group:
            return None
        return Int4Linear.from_linear(base, group_size=group, device=device), bf16
    if fmt == "fp8":  # CUDA sm89+: W8A8 via _scaled_mm; elsewhere weight-only
        return Fp8Linear.from_linear(base, device=device, compute_dtype=bf16), bf16
    raise ValueError(fmt)


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def make_runner(fmt: str, k: int, n: int, batch: int, hot: bool, cache_bytes: int,
                device: torch.device, graph: bool) -> tuple[Callable[[], None], int] | None:
    """A closure that runs one call on each copy of the layer, and the number of copies."""
    base = nn.Linear(k, n, bias=False)
    built = build(fmt, base, device)
    if built is None:
        return None
    first, dtype = built
    copies = 1 if hot else max(2, math.ceil(3 * cache_bytes / module_bytes(first)))
    modules = [first] + [copy.deepcopy(first) for _ in range(copies - 1)]  # fresh storage each
    x = torch.randn(batch, k).to(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run() -> None:
        for module in modules:
            module(x)
        sync()

    if graph:  # replay the loop as one CUDA graph: kernel time without Python launch overhead
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            for module in modules:
                module(x)

        def run(_keep_alive=(modules, x)) -> None:  # the graph reads their memory
            cuda_graph.replay()
            sync()

    return run, copies


def bench_shape(k: int, n: int, batch: int, formats: list[str], rounds: int, hot: bool,
                cache_bytes: int, device: torch.device, graph: bool) -> dict[str, float]:
    runners = {f: make_runner(f, k, n, batch, hot, cache_bytes, device, graph) for f in formats}
    live = {f: r for f, r in runners.items() if r is not None}
    samples: dict[str, list[float]] = {f: [] for f in live}
    with torch.inference_mode():
        for run, _ in live.values():
            run()  # warm-up: first-touch page faults, oneDNN primitive creation
        for _ in range(rounds):
            for fmt, (run, copies) in live.items():
                start = time.perf_counter()
                run()
                samples[fmt].append((time.perf_counter() - start) / copies * 1e6)
    return {f: statistics.median(s) for f, s in samples.items()}


def print_table(batches: list[int], formats: list[str], rounds: int, hot: bool,
                cache_bytes: int, device: torch.device, graph: bool,
                max_load: float | None = None, shapes: list[tuple[str, int, int]] = SHAPES) -> None:
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
             f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"# {where}, torch {torch.__version__}, {'hot' if hot else 'cold'} cache"
          f"{', CUDA graphs' if graph else ''}; "
          f"median us per call (x = speed-up over bf16)")
    header = f"| {'layer':<13}| {'in->out':<11}| M  |" + "".join(f" {f:>15} |" for f in formats)
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for batch in batches:
        for name, k, n in shapes:
            while max_load is not None and os.getloadavg()[0] > max_load:
                time.sleep(5)  # a shared machine: wait for the other jobs to calm down
            times = bench_shape(k, n, batch, formats, rounds, hot, cache_bytes, device, graph)
            bf16 = times.get("bf16")
            cells = []
            for f in formats:
                if f not in times:
                    cells.append(f" {'n/a':>15} |")
                    continue
                ratio = f" {bf16 / times[f]:4.2f}x" if bf16 else ""
                cells.append(f" {times[f]:8.1f}{ratio:>7} |")
            print(f"| {name:<13}| {f'{k}->{n}':<11}| {batch:<3}|" + "".join(cells), flush=True)


def crossover(rounds: int) -> None:
    """Per-call time of the int8 / int4 CPU kernels vs dequantize-then-bf16-GEMM, by batch
    (inferd's kernels only: torch's, where those are not built, never switch, so both columns
    then time the kernel)."""
    k, n = 576, 3072
    base = nn.Linear(k, n, bias=False)
    mods = {"int8": Int8Linear.from_linear(base),
            "int4_g64": Int4Linear.from_linear(base, group_size=64),
            "bf16": base.to(torch.bfloat16)}
    print(f"# {k}->{n}, hot cache, us per call: kernel / dequant+GEMM")
    saved = qlinear.CPU_INT8_DEQUANT_FROM, qlinear.CPU_TILES_DEQUANT_FROM
    try:
        with torch.inference_mode():
            for m in (1, 8, 16, 32, 48, 64, 96, 128, 256, 512):
                x = torch.randn(m, k, dtype=torch.bfloat16)
                row = [f"M={m:<4}"]
                for name, mod in mods.items():
                    for label, threshold in (("kernel", 1 << 30), ("dequant", 0)):
                        if name == "bf16" and label == "dequant":
                            continue
                        qlinear.CPU_INT8_DEQUANT_FROM = threshold
                        qlinear.CPU_TILES_DEQUANT_FROM = threshold
                        mod(x)
                        ts = []
                        for _ in range(rounds):
                            start = time.perf_counter()
                            mod(x)
                            ts.append((time.perf_counter() - start) * 1e6)
                        row.append(f"{name}/{label} {statistics.median(ts):8.1f}")
                print("  ".join(row), flush=True)
    finally:
        qlinear.CPU_INT8_DEQUANT_FROM, qlinear.CPU_TILES_DEQUANT_FROM = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS)
    parser.add_argument("--layers", nargs="+", default=[s[0] for s in SHAPES],
                        choices=[s[0] for s in SHAPES])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--hot", action="store_true", help="reuse one copy (weights stay cached)")
    parser.add_argument("--cache-mib", type=int, default=32, help="last-level cache size to overflow")
    parser.add_argument("--crossover", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cuda-graph", action="store_true", help="time CUDA graph replays")
    parser.add_argument("--max-load", type=float, default=None,
                        help="before each row, wait until the 1-minute load average is below this")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.crossover:
        crossover(args.rounds)
    else:
        print_table(args.batches, args.formats, args.rounds, args.hot, args.cache_mib * 2**20,
                    torch.device(args.device), args.cuda_graph, args.max_load,
                    [s for s in SHAPES if s[0] in args.layers])


if __name__ == "__main__":
    main()
