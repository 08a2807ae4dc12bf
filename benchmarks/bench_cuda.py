"""CUDA throughput of inferd vs the naive transformers loop, same GPU, same run.

The bundled GGUF cannot travel to the lent GPU machine, so this builds a random-weight model
with SmolLM2-135M's exact shapes (speed depends on shapes, not on weight values).
Usage: python benchmarks/bench_cuda.py [--requests 64] [--prompt-len 128] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from inferd import LLM, SamplingParams

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    bos_token_id=1, eos_token_id=2)


def build_model(tokenizer_dir: Path, out: Path) -> Path:
    import shutil

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM2_135M))
    model.save_pretrained(str(out), safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-dir", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--naive-requests", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = build_model(args.tokenizer_dir, Path(tempfile.mkdtemp()) / "smollm2-shaped")
    results: dict[str, object] = {"device": torch.cuda.get_device_name(0)}
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (args.prompt_len,), generator=g).tolist() for _ in range(args.requests)]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    for dtype in ("bfloat16",):
        llm = LLM(str(path), dtype=dtype, device="cuda", max_num_seqs=256, max_num_batched_tokens=8192,
                  kv_cache_memory=4)
        llm.generate(prompts[:4], SamplingParams(temperature=0, max_tokens=8))  # warm-up
        rates, one = [], []
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            t = time.perf_counter()
            outs = llm.generate(prompts, params)
            torch.cuda.synchronize()
            rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t))
            t = time.perf_counter()
            llm.generate(prompts[:1], params)
            one.append(args.max_tokens / (time.perf_counter() - t))
        results[f"inferd_{dtype}_batch{args.requests}_tok_s"] = statistics.median(rates)
        results[f"inferd_{dtype}_batch1_tok_s"] = statistics.median(one)
        del llm
        ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).cuda().eval()
        naive = []
        with torch.no_grad():
            ref.generate(torch.tensor([prompts[0]], device="cuda"), max_new_tokens=8, do_sample=False)
            for _ in range(args.repeats):
                t = time.perf_counter()
                for p in prompts[:args.naive_requests]:
                    ref.generate(torch.tensor([p], device="cuda"), max_new_tokens=args.max_tokens,
                                 min_new_tokens=args.max_tokens, do_sample=False, pad_token_id=0)
                torch.cuda.synchronize()
                naive.append(args.naive_requests * args.max_tokens / (time.perf_counter() - t))
        results[f"transformers_naive_{dtype}_tok_s"] = statistics.median(naive)
        results[f"ratio_{dtype}"] = results[f"inferd_{dtype}_batch{args.requests}_tok_s"] / statistics.median(naive)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
