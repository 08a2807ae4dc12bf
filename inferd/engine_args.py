"""Command-line flags shared by every command that builds an engine, and their EngineConfig."""

from __future__ import annotations

import argparse

from inferd.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig
from inferd.model.registry import DEFAULT_MODEL
from inferd.quant.registry import GROUP_SIZES, HEAD_METHODS, LOAD_METHODS


def add_quant_lm_head_flag(group) -> None:
    """`--quant-lm-head [METHOD]`: shared by `serve` and `quant-eval`."""
    group.add_argument("--quant-lm-head", nargs="?", const="same", default=None, metavar="METHOD",
                       choices=["same", *HEAD_METHODS],
                       help="quantize the LM head too (and the embedding tied to it), with "
                            "--quantization's method or the one given (e.g. int8 next to int4)")


def lm_head_setting(value: str | None) -> bool | str:
    """The flag's value as ModelConfig.quant_lm_head takes it."""
    return False if value is None else True if value == "same" else value


def add_engine_args(p: argparse.ArgumentParser, model_nargs: str | None = None) -> None:
    g = p.add_argument_group("model")
    if model_nargs == "append":
        g.add_argument("--model", action="append", default=None,
                       help=f"model name or path (repeat to serve several; default {DEFAULT_MODEL})")
    else:
        g.add_argument("--model", default=DEFAULT_MODEL, help="bundled model name, .gguf file or HF directory")
    g.add_argument("--dtype", default="auto",
                   help="auto (the machine's choice for this file, logged at start: float32 on CPUs "
                        "without native bf16), float32, bfloat16, float16 (CUDA only)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--max-model-len", type=int, default=None, help="context window (default: the model's)")
    g.add_argument("--seed", type=int, default=0)
    q = p.add_argument_group("quantization")
    q.add_argument("--quantization", default="auto", choices=["auto", "none", *LOAD_METHODS],
                   help="weight quantization applied at load time (gguf: keep the file's quantized blocks; "
                        "auto: gguf with --quant-lm-head for a GGUF file where inferd's kernels run its "
                        "blocks exactly and --dtype is auto, else none)")
    q.add_argument("--quant-group-size", type=int, default=64, choices=GROUP_SIZES)
    q.add_argument("--quant-asymmetric", action="store_true", help="int4 with a zero point per group")
    q.add_argument("--quant-skip", action="append", default=[], metavar="PATTERN",
                   help="keep modules matching this glob in higher precision (repeatable)")
    add_quant_lm_head_flag(q)
    c = p.add_argument_group("KV cache")
    c.add_argument("--kv-cache-memory", type=float, default=None, metavar="GIB",
                   help="KV-cache pool size in GiB (default: a fraction of free memory)")
    c.add_argument("--block-size", type=int, default=16)
    c.add_argument("--no-prefix-caching", action="store_true", help="disable KV reuse across requests")
    c.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "int8", "fp8"])
    s = p.add_argument_group("scheduler")
    s.add_argument("--max-num-seqs", type=int, default=64)
    s.add_argument("--max-num-batched-tokens", type=int, default=1024)
    s.add_argument("--max-waiting-requests", type=int, default=512,
                   help="queue limit beyond which requests are refused with 429")
    sp = p.add_argument_group("speculative decoding")
    sp.add_argument("--speculative", default=None, choices=["ngram", "draft"])
    sp.add_argument("--num-speculative-tokens", type=int, default=4)
    sp.add_argument("--draft-model", default=None)
    sp.add_argument("--no-adaptive-speculation", action="store_true")


def engine_config_from_args(args: argparse.Namespace, model: str | None = None) -> EngineConfig:
    return EngineConfig(
        model=ModelConfig(
            model=model or args.model, dtype=args.dtype, device=args.device,
            max_model_len=args.max_model_len, quantization=args.quantization,
            quant_group_size=args.quant_group_size, quant_symmetric=not args.quant_asymmetric,
            quant_skip=tuple(args.quant_skip), quant_lm_head=lm_head_setting(args.quant_lm_head), seed=args.seed),
        cache=CacheConfig(block_size=args.block_size, kv_cache_memory_gib=args.kv_cache_memory,
                          enable_prefix_caching=not args.no_prefix_caching,
                          kv_cache_dtype=args.kv_cache_dtype),
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs,
                                  max_num_batched_tokens=args.max_num_batched_tokens,
                                  max_waiting_requests=args.max_waiting_requests),
        speculative=SpeculativeConfig(method=args.speculative,
                                      num_speculative_tokens=args.num_speculative_tokens,
                                      draft_model=args.draft_model,
                                      adaptive=not args.no_adaptive_speculation),
    )
