"""`inferd quant-eval`: the quality guardrail's command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inferd.engine_args import add_quant_lm_head_flag, lm_head_setting
from inferd.quant.registry import GROUP_SIZES, METHODS


def _percent(text: str) -> float:
    return float(text.rstrip("%"))


def add_quant_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quant-eval", help="measure what a quantization costs in quality")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--quantization", required=True, choices=METHODS)
    p.add_argument("--quant-group-size", type=int, default=64, choices=GROUP_SIZES)
    p.add_argument("--quant-asymmetric", action="store_true")
    p.add_argument("--quant-skip", action="append", default=[], metavar="PATTERN")
    add_quant_lm_head_flag(p)
    p.add_argument("--dtype", default="float32", help="reference precision (default float32)")
    p.add_argument("--corpus", type=Path, help="text file (default: the corpus inferd ships)")
    p.add_argument("--window", type=int, default=512, help="tokens per scored window")
    p.add_argument("--greedy-tokens", type=int, default=24)
    p.add_argument("--no-sensitivity", action="store_true", help="skip the per-layer table")
    p.add_argument("--max-ppl-increase", type=_percent, default=None, metavar="PCT",
                   help="recommend layers to skip to stay within this perplexity increase, e.g. 2%%")
    p.add_argument("--json", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inferd.quant.eval import evaluate, format_result

    result = evaluate(args.model, args.quantization, dtype=args.dtype, group_size=args.quant_group_size,
                      symmetric=not args.quant_asymmetric, skip=args.quant_skip,
                      corpus=args.corpus.read_text() if args.corpus else None, window=args.window,
                      greedy_tokens=args.greedy_tokens, sensitivity=not args.no_sensitivity,
                      max_ppl_increase_pct=args.max_ppl_increase,
                      lm_head=lm_head_setting(args.quant_lm_head))
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=1))
    return 0
