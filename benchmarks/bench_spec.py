"""Speculative decoding, measured offline: output tokens/s and ITL of `LLM.generate` with
speculation off, n-gram, and a draft model, at several concurrencies, on two workloads.

Workloads come from `inferd.bench.workloads`: `repetitive` (copy/edit a paragraph, where
proposals get accepted) and `chat` (plain questions, where they mostly do not). Every method runs
in its own engine, loaded once and warmed up; methods are interleaved within each repeat so that
noise from other processes hits them alike. Cells are medians over repeats.

    .venv/bin/python benchmarks/bench_spec.py                       # fp32, 1/8/32, both workloads
    .venv/bin/python benchmarks/bench_spec.py --dtype float32 bfloat16 --repeats 5
    .venv/bin/python benchmarks/bench_spec.py --quick               # a short smoke run

The draft model defaults to `auto`, a cheaper copy of the target (see `resolve_draft`): bf16 for
an fp32 target, int4 for a bf16 target once quantization is wired into the loader (otherwise the
draft rows are skipped for bf16). Pass --draft-model to use any same-tokenizer model.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from inferd.bench.config import WorkloadConfig
from inferd.bench.workloads import RequestSource
from inferd.engine.engine import EngineObserver
from inferd.engine.sequence import Request
from inferd.llm import LLM
from inferd.sampling_params import SamplingParams


class LatencyRecorder(EngineObserver):
    """Per finished request: mean inter-token latency (first to last token over gaps)."""

    def __init__(self) -> None:
        self.itls: list[float] = []

    def on_finished(self, request: Request, now: float) -> None:
        t = request.timing
        n = sum(s.num_output_tokens for s in request.seqs)
        if t.first_token is not None and t.last_token is not None and n > 1:
            self.itls.append((t.last_token - t.first_token) / (n - 1))


def quantization_is_wired(model: str) -> bool:
    """Whether load_model(quantization="int4") really swaps in quantized layers."""
    from inferd.config import ModelConfig
    from inferd.model.loader import load_model

    try:
        loaded = load_model(ModelConfig(model=model, quantization="int4", dtype="bfloat16"))
    except Exception:  # the quantization path is not there (yet) or refuses this model
        return False
    return any(type(m).__module__.startswith("inferd.quant") for m in loaded.model.modules())


def resolve_draft(args: argparse.Namespace, dtype: str) -> str | None:
    """The draft for a target of this dtype: a cheaper copy of the target with its tokenizer.

    No smaller model shares SmolLM2's tokenizer here, so `auto` uses the target itself in a
    cheaper form: bf16 weights for an fp32 target (half the bytes per token; bf16 matmuls are
    fast on CPUs with AVX512-BF16/AMX), int4 weights for a bf16 target when quantization is wired.
    """
    if args.draft_model != "auto":
        return args.draft_model
    if dtype == "float32":
        return f"{args.model}:bfloat16"
    return f"{args.model}:int4:bfloat16" if quantization_is_wired(args.model) else None


def make_prompts(llm: LLM, workload: str, count: int, max_tokens: int, seed: int
                 ) -> tuple[list[list[int]], list[SamplingParams]]:
    source = RequestSource(WorkloadConfig(kind=workload), seed)
    prompts, params = [], []
    for i in range(count):
        spec = source(i)
        prompts.append(llm.tokenizer.encode_chat(spec.as_messages()))
        params.append(SamplingParams(temperature=0.0, max_tokens=min(max_tokens, spec.max_tokens),
                                     ignore_eos=False))
    return prompts, params


def run_once(llm: LLM, prompts: list[list[int]], params: list[SamplingParams]) -> dict[str, float]:
    rec = LatencyRecorder()
    llm.engine.observer = rec
    spec = llm.engine.speculator
    before = (spec.num_draft_tokens, spec.num_accepted_tokens) if spec else (0, 0)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    wall = time.perf_counter() - t0
    llm.engine.observer = EngineObserver()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    drafted = spec.num_draft_tokens - before[0] if spec else 0
    accepted = spec.num_accepted_tokens - before[1] if spec else 0
    return {"tps": tokens / wall, "itl_ms": 1000 * statistics.median(rec.itls) if rec.itls else 0.0,
            "accept": accepted / drafted if drafted else 0.0, "drafted": drafted,
            "tokens": tokens, "outputs": [o.outputs[0].token_ids for o in outs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--workloads", default="repetitive,chat")
    ap.add_argument("--methods", default="off,ngram,draft")
    ap.add_argument("--draft-model", default="auto",
                    help="same-tokenizer model, e.g. PATH or smollm2-135m:int4 (default: auto)")
    ap.add_argument("--num-speculative-tokens", type=int, default=4)
    ap.add_argument("--no-adaptive", action="store_true", help="always propose k tokens")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--kv-cache-memory", type=float, default=1.0, metavar="GIB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="1 repeat, concurrency 1 and 8, 32 tokens")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.concurrency, args.max_tokens = 1, "1,8", 32
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [int(c) for c in args.concurrency.split(",")]
    workloads = args.workloads.split(",")
    all_methods = args.methods.split(",")
    print(f"# bench_spec: {args.model}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"k = {args.num_speculative_tokens}, "
          f"adaptive = {not args.no_adaptive}")
    rows = []
    for dtype in args.dtype:
        draft = resolve_draft(args, dtype) if "draft" in all_methods else None
        methods = [m for m in all_methods if m != "draft" or draft]
        if "draft" in all_methods:
            print(f"# {dtype}: draft model = {draft or 'none available (draft rows skipped)'}")
        engines: dict[str, LLM] = {}
        for m in methods:
            kw = dict(dtype=dtype, kv_cache_memory=args.kv_cache_memory,
                      max_num_seqs=max(64, max(levels)))
            if m != "off":
                kw.update(speculative=m, num_speculative_tokens=args.num_speculative_tokens,
                          adaptive=not args.no_adaptive)
                if m == "draft":
                    kw["draft_model"] = draft
            engines[m] = LLM(args.model, **kw)
        for wl in workloads:
            for c in levels:
                prompts, params = make_prompts(engines[methods[0]], wl, c, args.max_tokens,
                                               args.seed)
                for m in methods:  # warm-up: first-call costs and the adaptive tables
                    run_once(engines[m], prompts, params)
                runs: dict[str, list[dict]] = {m: [] for m in methods}
                for _ in range(args.repeats):
                    for m in methods:
                        runs[m].append(run_once(engines[m], prompts, params))
                ref = runs[methods[0]][0]["outputs"]
                for m in methods:
                    r = runs[m]
                    same = all(x["outputs"] == ref for x in r)
                    rows.append({"dtype": dtype, "workload": wl, "concurrency": c, "method": m,
                                 "tps": statistics.median(x["tps"] for x in r),
                                 "itl_ms": statistics.median(x["itl_ms"] for x in r),
                                 "accept": statistics.median(x["accept"] for x in r),
                                 "same_output": same})
                print_rows(rows[-len(methods):], methods[0])
    print("\n## summary (medians over repeats)")
    print_rows(rows, methods[0], header=True)


def print_rows(rows: list[dict], base_method: str, header: bool = False) -> None:
    if header:
        print("| dtype | workload | conc | method | out tok/s | vs off | ITL ms | accept | same |")
        print("|---|---|---|---|---|---|---|---|---|")
    base = {(r["dtype"], r["workload"], r["concurrency"]): r["tps"] for r in rows
            if r["method"] == base_method}
    for r in rows:
        b = base.get((r["dtype"], r["workload"], r["concurrency"]))
        ratio = f"{r['tps'] / b:.2f}x" if b else "-"
        print(f"| {r['dtype']} | {r['workload']} | {r['concurrency']} | {r['method']} | "
              f"{r['tps']:.1f} | {ratio} | {r['itl_ms']:.1f} | {r['accept']:.2f} | "
              f"{'yes' if r['same_output'] else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
