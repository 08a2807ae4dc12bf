"""Quantization end to end on a bundled model: decode tokens/s at batch 1 and 32, model memory,
and quality (perplexity delta, KL, from quant-eval) for each precision, in one run.

llama.cpp's batch-1 figure for the same GGUF file comes from its own llama-bench when built
(`bash benchmarks/setup_peers.sh`), run on as many threads as inferd uses.
Usage: python benchmarks/bench_quant.py [--model smollm2-135m] [--repeats 3] [--json out.json]
(`--model gemma3-270m --configs default` runs Gemma 3 270M's Q4_K_M file as inferd chooses to.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import torch  # noqa: E402

from benchmarks.common import machine, median, random_prompts  # noqa: E402
from inferd import LLM, SamplingParams  # noqa: E402
from inferd.model.registry import resolve_model_path  # noqa: E402

G32_ASYM = {"quant_group_size": 32, "quant_symmetric": False}
CONFIGS = {  # label -> (dtype, quantization, extra LLM keywords)
    "default": ("auto", "auto", {}),  # what the machine chooses with no flags
    "fp32": ("float32", "none", {}), "bf16": ("bfloat16", "none", {}),
    "int8": ("bfloat16", "int8", {}), "int4-gguf-blocks": ("bfloat16", "gguf", {}),
    "int4-g32-asym": ("bfloat16", "int4", G32_ASYM), "fp8": ("bfloat16", "fp8", {}),
    "int8+head": ("bfloat16", "int8", {"quant_lm_head": True}),
    "int4-g32-asym+head": ("bfloat16", "int4", {**G32_ASYM, "quant_lm_head": True}),
    "int4-g32-asym+head-int8": ("bfloat16", "int4", {**G32_ASYM, "quant_lm_head": "int8"}),
    # The file's own Q4_1 blocks for the layers and the head: what llama.cpp runs.
    "int4-gguf-blocks+head": ("bfloat16", "gguf", {"quant_lm_head": True}),
}


def decode_rate(llm: LLM, batch: int, tokens: int, repeats: int) -> float:
    prompts = random_prompts(batch, 64, seed=batch)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    rates = []
    for _ in range(repeats):
        for i, p in enumerate(prompts):
            llm.engine.add_request(f"q{time.monotonic_ns()}-{i}", p, params)
        while any(s.num_computed_tokens < s.prompt_len for s in llm.engine.scheduler.running) \
                or llm.engine.scheduler.num_waiting:
            llm.engine.step()  # prefill (and first tokens): not part of the decode rate
        t, n = time.perf_counter(), 0
        while llm.engine.has_unfinished():
            n += sum(len(o.outputs[0].delta_token_ids) for o in llm.engine.step())
        rates.append(n / (time.perf_counter() - t))
    return median(rates)


def llama_bench(model: str, tokens: int, repeats: int) -> float | None:
    """llama.cpp's batch-1 decode tokens/s on the same file (None where it is not built)."""
    exe = ROOT / ".bench/llama.cpp/build/bin/llama-bench"
    if not exe.exists():
        return None
    threads = str(torch.get_num_threads() or os.cpu_count())
    out = subprocess.run([str(exe), "-m", str(resolve_model_path(model)), "-p", "0", "-n", str(tokens),
                          "-r", str(repeats), "-t", threads, "-o", "json"], capture_output=True, text=True,
                         timeout=600)
    runs = json.loads(out.stdout)
    return float(runs[0]["avg_ts"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m",
                    help="a bundled GGUF (smollm2-135m, gemma3-270m) or a .gguf path; llama-bench runs the same file")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--quality", action="store_true", help="also run quant-eval (slow)")
    ap.add_argument("--configs", default="fp32,bf16,int8,int4-gguf-blocks,int4-g32-asym,fp8",
                    help=f"comma list from {sorted(CONFIGS)}")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res: dict[str, object] = {"machine": machine(), "model": args.model,
                              "llama.cpp_batch1_tok_s": llama_bench(args.model, args.tokens, args.repeats)}
    labels = args.configs.split(",")
    for label in labels:
        dtype, quant, kw = CONFIGS[label]
        llm = LLM(args.model, dtype=dtype, quantization=quant, kv_cache_memory=1, **kw)
        model = llm.engine.loaded.model
        mem = sum(t.numel() * t.element_size() for t in {id(t): t for t in
                                                          list(model.parameters()) + list(model.buffers())}.values())
        llm.generate([[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=4))
        res[label] = {"load_s": llm.engine.loaded.load_seconds,
                      "batch1_tok_s": decode_rate(llm, 1, args.tokens, args.repeats),
                      "batch32_tok_s": decode_rate(llm, 32, args.tokens, args.repeats),
                      "model_mib": mem / 2**20}
        print(json.dumps({label: res[label]}), flush=True)
        del llm
    if "bf16" in res:
        for label in labels:
            res[label]["batch1_vs_bf16"] = res[label]["batch1_tok_s"] / res["bf16"]["batch1_tok_s"]
    if args.quality:
        from inferd.quant.eval import evaluate

        for label, method, kw in (("int8", "int8", {}), ("int4-g32-asym", "int4", {"group_size": 32, "symmetric": False}),
                                  ("int4-g64-sym", "int4", {}), ("fp8", "fp8", {})):
            r = evaluate(args.model, method, sensitivity=False, greedy_tokens=16, **kw)
            res.setdefault(label, {}).update(ppl_increase_pct=r.quantized.ppl_increase_pct,
                                             mean_kl=r.quantized.mean_kl, top1=r.quantized.top1_agreement)
            print(json.dumps({label: res[label]}), flush=True)
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
