"""Offline engine throughput on the bundled model, inferd vs transformers, in one run.

Measures (same dtype, same prompts; medians of --repeats):
  1. 64 requests (128-token prompts, 128 greedy output tokens) through `LLM.generate`;
  2. the naive loop users write: transformers `model.generate`, one request at a time (fp32 and bf16);
  3. a padded static batch of 32 in transformers;
  4. batch-1 decode tokens/s for inferd in fp32 and bf16, against the memory-bandwidth bound
     (weight bytes read per token / read bandwidth: measured here, and the issue's 30 GB/s);
  5. prefix caching: TTFT of a request whose 1,024-token system prompt is cached vs cold.
Usage: python benchmarks/bench_offline.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, median, random_prompts  # noqa: E402
from inferd import LLM, SamplingParams  # noqa: E402
from inferd.model.registry import resolve_model_path  # noqa: E402


def read_bandwidth_gbs() -> float:
    """Memory read bandwidth: a reduction over 512 MiB (far past every cache), median of 9."""
    x = torch.ones(128 * 2**20, dtype=torch.float32)
    rates = []
    for _ in range(9):
        t = time.perf_counter()
        x.sum()
        rates.append(x.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return median(rates)


def weight_bytes_read_per_token(model: torch.nn.Module) -> int:
    """Every weight a decode step reads: all parameters but the embedding table (one row of it
    is read; a tied output head has its own packed copy, counted)."""
    embed = {id(p) for p in model.model.embed_tokens.parameters()} - {id(p) for p in model.lm_head.parameters()}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in embed)


def inferd_throughput(llm: LLM, prompts, max_tokens: int, repeats: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    rates = []
    for _ in range(repeats):
        llm.engine.pool.reset_prefix_cache()
        t = time.perf_counter()
        outs = llm.generate(prompts, params)
        rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t))
    return median(rates)


def inferd_batch1(llm: LLM, prompt, tokens: int, repeats: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    rates = []
    for _ in range(repeats):
        llm.engine.add_request("b1", prompt, params)
        llm.engine.step()  # prefill + first token, not part of the decode rate
        t = time.perf_counter()
        n = 0
        while llm.engine.has_unfinished():
            n += len(llm.engine.step())
        rates.append(n / (time.perf_counter() - t))
    return median(rates)


def prefix_ttft(llm: LLM, repeats: int) -> tuple[float, float]:
    system = random_prompts(1, 1024, seed=7)[0]
    cold, warm = [], []
    for r in range(repeats):
        llm.engine.pool.reset_prefix_cache()
        for bucket, suffix_seed in ((cold, 100 + r), (warm, 200 + r)):
            prompt = system + random_prompts(1, 16, seed=suffix_seed)[0]
            t = time.perf_counter()
            llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1))
            bucket.append(time.perf_counter() - t)
    return median(cold), median(warm)


def hf_model(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    path = resolve_model_path("smollm2-135m")
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()


def hf_naive(model, prompts, max_tokens: int) -> float:
    t = time.perf_counter()
    with torch.no_grad():
        for p in prompts:
            model.generate(torch.tensor([p]), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                           do_sample=False, pad_token_id=0)
    return len(prompts) * max_tokens / (time.perf_counter() - t)


def hf_static_batch(model, prompts, max_tokens: int) -> float:
    ids = torch.tensor(prompts)  # equal lengths: no padding needed, the best case for a static batch
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                       min_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    return len(prompts) * max_tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--naive-requests", type=int, default=3, help="naive loop is slow: time a few")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res: dict[str, object] = {"machine": machine()}
    prompts = random_prompts(args.requests, args.prompt_len)
    for dtype in ("float32", "bfloat16"):
        llm = LLM("smollm2-135m", dtype=dtype, kv_cache_memory=2, max_num_seqs=64, max_num_batched_tokens=2048)
        llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4))  # warm-up
        res[f"inferd_{dtype}_offline_tok_s"] = inferd_throughput(llm, prompts, args.max_tokens, args.repeats)
        res[f"inferd_{dtype}_batch1_decode_tok_s"] = inferd_batch1(llm, prompts[0], 64, args.repeats)
        if dtype == "float32":
            cold, warm = prefix_ttft(llm, args.repeats)
            res["prefix_ttft_cold_s"], res["prefix_ttft_cached_s"] = cold, warm
            res["prefix_ttft_speedup"] = cold / warm
        res[f"weight_bytes_{dtype}"] = weight_bytes_read_per_token(llm.engine.loaded.model)
        print(json.dumps(res, indent=1), flush=True)
        del llm
    bw = read_bandwidth_gbs()
    res["read_bandwidth_gb_s"] = bw
    for dtype in ("float32", "bfloat16"):
        for label, gbs in (("measured", bw), ("issue_30gbs", 30.0)):
            bound = gbs * 1e9 / res[f"weight_bytes_{dtype}"]
            res[f"bandwidth_bound_{label}_{dtype}_tok_s"] = bound
            res[f"batch1_fraction_of_bound_{label}_{dtype}"] = res[f"inferd_{dtype}_batch1_decode_tok_s"] / bound
    if not args.skip_hf:
        for dtype in ("float32", "bfloat16"):
            model = hf_model(getattr(torch, dtype))
            hf_naive(model, prompts[:1], 8)  # warm-up
            res[f"hf_naive_{dtype}_tok_s"] = median([hf_naive(model, prompts[:args.naive_requests], args.max_tokens)
                                                     for _ in range(max(1, args.repeats - 1))])
            res[f"hf_static_batch32_{dtype}_tok_s"] = median(
                [hf_static_batch(model, prompts[:32], args.max_tokens) for _ in range(max(1, args.repeats - 1))])
            res[f"ratio_inferd_vs_naive_{dtype}"] = res[f"inferd_{dtype}_offline_tok_s"] / res[f"hf_naive_{dtype}_tok_s"]
            res[f"ratio_inferd_vs_static32_{dtype}"] = (res[f"inferd_{dtype}_offline_tok_s"]
                                                        / res[f"hf_static_batch32_{dtype}_tok_s"])
            del model
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
