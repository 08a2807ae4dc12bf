"""Whole MoE models end to end: inferd's LLM.generate against transformers' model.generate on one
random-weight Qwen3-MoE checkpoint shaped like Qwen3-30B-A3B scaled down (bench_moe.py times the
block alone).

Shape by default: 4 layers, hidden 1024, 16 query / 2 KV heads of 64, 64 experts, top-8, expert
width 384 (the real model: 48 layers, hidden 2048, 32 / 4 heads of 128, 128 experts, top-8, 768).
Prompts of --prompt-len random tokens, --max-tokens greedy tokens each, at each batch size; a cell
is generated tokens / wall seconds (prefill included), median over --repeats rounds run
interleaved across variants, so noise from other processes hits them alike:

  inferd           LLM.generate, experts grouped (tokens sorted by expert, one matmul per expert)
  inferd_per_token the same engine with a Python loop over tokens and their chosen experts
  hf               transformers' generate, its default experts path (grouped_mm)
  hf_eager         transformers' generate, its per-expert loop (torch.where per expert)

    .venv/bin/python benchmarks/bench_moe_model.py --batches 1,8,32 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, median, random_prompts  # noqa: E402
from inferd import LLM, SamplingParams  # noqa: E402
from inferd.model import moe  # noqa: E402


def make_checkpoint(out: Path, args: argparse.Namespace) -> Path:
    """A random-weight Qwen3-MoE saved by transformers, with the bundled model's tokenizer."""
    import transformers

    from inferd.model.registry import resolve_model_path

    config = transformers.Qwen3MoeConfig(
        vocab_size=49152, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads, intermediate_size=4 * args.inter,
        moe_intermediate_size=args.inter, num_experts=args.experts, num_experts_per_tok=args.top_k,
        norm_topk_prob=True, max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.Qwen3MoeForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3 if name.endswith("mlp.gate.weight") else 0.03)
    model.save_pretrained(str(out))
    gguf = resolve_model_path("smollm2-135m")
    transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(out))
    return out


def per_token_experts(self: moe.SparseMoeBlock, x, weights, experts):
    """The loop grouping avoids: every token, every chosen expert, one call each."""
    self.expert_tokens += torch.bincount(experts.reshape(-1), minlength=self.config.num_experts)
    out = torch.zeros_like(x)
    for t, (ws, es) in enumerate(zip(weights.tolist(), experts.tolist(), strict=True)):
        for w, e in zip(ws, es, strict=True):
            out[t] += self.experts[e](x[t:t + 1])[0] * w
    return out


@contextmanager
def patched_experts(fn: Callable | None):
    original = moe.SparseMoeBlock._run_experts
    if fn is not None:
        moe.SparseMoeBlock._run_experts = fn
    try:
        yield
    finally:
        moe.SparseMoeBlock._run_experts = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--inter", type=int, default=384)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--quantization", default="none", help="inferd's --quantization (experts included)")
    parser.add_argument("--skip", default="", help="comma-separated variants to leave out")
    parser.add_argument("--checkpoint", type=Path, help="reuse a checkpoint this script saved")
    args = parser.parse_args()
    tmp = None
    path = args.checkpoint
    if path is None or not (path / "config.json").exists():
        tmp = None if path else Path(tempfile.mkdtemp(prefix="bench_moe_model_"))
        path = make_checkpoint(path or tmp, args)

    import transformers

    dtype = getattr(torch, args.dtype)
    llm = LLM(str(path), dtype=args.dtype, quantization=args.quantization, kv_cache_memory=1.0,
              enable_prefix_caching=False, max_num_seqs=max(int(b) for b in args.batches.split(",")))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)

    def inferd_run(prompts: list[list[int]], experts_fn: Callable | None = None) -> int:
        with patched_experts(experts_fn):
            outs = llm.generate(prompts, params)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    def hf_run(prompts: list[list[int]], implementation: str) -> int:
        hf.config._experts_implementation = implementation  # read per call by its experts
        for layer in hf.model.layers:
            layer.mlp.experts.config._experts_implementation = implementation
        ids = torch.tensor(prompts)
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_tokens,
                              min_new_tokens=args.max_tokens, do_sample=False, pad_token_id=0)
        return (out.shape[1] - ids.shape[1]) * ids.shape[0]

    variants: dict[str, Callable[[list[list[int]]], int]] = {
        "inferd": inferd_run,
        "inferd_per_token": lambda p: inferd_run(p, per_token_experts),
        "hf": lambda p: hf_run(p, "grouped_mm"),
        "hf_eager": lambda p: hf_run(p, "eager"),
    }
    for name in filter(None, args.skip.split(",")):
        variants.pop(name)
    print(f"# Qwen3-MoE, {args.layers} layers, hidden {args.hidden}, {args.heads}/{args.kv_heads} heads, "
          f"{args.experts} experts top-{args.top_k} width {args.inter}, {args.dtype}, inferd quantization "
          f"{args.quantization}; prompts {args.prompt_len} tokens, {args.max_tokens} generated; "
          f"median of {args.repeats}; torch threads {torch.get_num_threads()}")
    print(f"# machine: {machine()}")
    print(f"{'batch':>5} " + " ".join(f"{v:>16}" for v in variants) + "   (generated tokens/s)")
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = random_prompts(batch, args.prompt_len, seed=batch)
        for fn in variants.values():  # warm-up
            fn(prompts[:1])
        times: dict[str, list[float]] = {v: [] for v in variants}
        tokens: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                tokens[name] = fn(prompts)
                times[name].append(time.perf_counter() - start)
        rates = {v: tokens[v] / median(t) for v, t in times.items()}
        print(f"{batch:>5} " + " ".join(f"{rates[v]:>16.1f}" for v in variants))
        base = rates.get("hf")
        if base:
            print(f"{'':>5} " + " ".join(f"{rates[v] / base:>15.2f}x" for v in variants) + "   (vs hf)")
    if tmp is not None:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
