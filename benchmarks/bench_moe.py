"""Time inferd's grouped MoE dispatch against the alternatives, on a stack of random-weight layers.

Shape: Qwen3-30B-A3B's MoE layer scaled down to fit a laptop (64 experts, top-8, expert width
384, hidden 1024 by default; the real one is 128 / 8 / 768 / 2048). Cases: decode at batch 1 and
32 (1 and 32 rows per step) and a 256-token prefill. Variants, interleaved round by round so that
noise from other processes hits them alike; a cell is the median over rounds, in tokens/s:

  inferd       SparseMoeBlock: sort rows by expert, one matmul pair per active expert
  grouped_mm   the same sort, then torch._grouped_mm over stacked weights (the option we weighed)
  per_token    a Python loop over tokens and their chosen experts (what grouping avoids)
  hf_eager     transformers' Qwen3MoeSparseMoeBlock, per-expert loop with torch.where
  hf_grouped   the same block on transformers' grouped_mm path (a PreTrainedModel's default)

    .venv/bin/python benchmarks/bench_moe.py --repeats 5
    .venv/bin/python benchmarks/bench_moe.py --quant int8   # inferd with int8 experts too
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, median  # noqa: E402
from inferd.model.moe import MoeConfig, SparseMoeBlock  # noqa: E402

CASES = {"decode_b1": 1, "decode_b32": 32, "prefill_256": 256}


def hf_blocks(args: argparse.Namespace) -> list[nn.Module]:
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    config = Qwen3MoeConfig(hidden_size=args.hidden, moe_intermediate_size=args.inter, num_experts=args.experts,
                            num_experts_per_tok=args.top_k, norm_topk_prob=True)
    gen = torch.Generator().manual_seed(0)
    blocks = []
    for _ in range(args.layers):
        block = Qwen3MoeSparseMoeBlock(config).eval()
        with torch.no_grad():
            for p in block.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.03)
        blocks.append(block.to(args.dtype))
    return blocks


def hf_forward(block: nn.Module, implementation: str | None, x: torch.Tensor) -> torch.Tensor:
    """One HF block on the experts path named (its experts read the choice from their config on
    every call, so one set of weights serves both HF variants)."""
    block.experts.config._experts_implementation = implementation
    return block(x[None])[0]


def inferd_blocks(hf: list[nn.Module], args: argparse.Namespace) -> list[SparseMoeBlock]:
    cfg = MoeConfig("qwen3_moe", args.hidden, args.inter, args.experts, args.top_k, norm_topk_prob=True)
    blocks = []
    for i, h in enumerate(hf):
        block = SparseMoeBlock(cfg, i, dtype=args.dtype)
        block.load_checkpoint({f"l.{k}": v for k, v in h.state_dict().items()}, "l")
        blocks.append(block.eval())
    return blocks


def grouped_mm_forward(hf: nn.Module, ours: SparseMoeBlock, x: torch.Tensor) -> torch.Tensor:
    """inferd's routing and sort, then one torch._grouped_mm per projection over stacked weights."""
    weights, experts = ours.route(x)
    tokens = x.shape[0]
    flat = experts.t().reshape(-1)
    order = flat.argsort(stable=True)
    offs = torch.bincount(flat, minlength=ours.config.num_experts).cumsum(0).to(torch.int32)
    token_of = order % tokens
    rows = x.index_select(0, token_of)
    gate, up = torch._grouped_mm(rows, hf.experts.gate_up_proj.transpose(1, 2), offs=offs).chunk(2, dim=-1)
    h = (F.silu(gate) * up).contiguous()
    y = torch._grouped_mm(h, hf.experts.down_proj.transpose(1, 2), offs=offs)
    y = y * weights.t().reshape(-1).index_select(0, order).unsqueeze(1)
    return torch.zeros_like(x).index_add_(0, token_of, y.to(x.dtype))


def per_token_forward(ours: SparseMoeBlock, x: torch.Tensor) -> torch.Tensor:
    weights, experts = ours.route(x)
    out = torch.zeros_like(x)
    for t, (ws, es) in enumerate(zip(weights.tolist(), experts.tolist(), strict=True)):
        for w, e in zip(ws, es, strict=True):
            out[t] += ours.experts[e](x[t:t + 1])[0] * w
    return out


def stack(fn: Callable[[int, torch.Tensor], torch.Tensor], layers: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        for i in range(layers):
            x = x + fn(i, x)  # residual, so each layer routes a different input
        return x
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--inter", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--quant", choices=["none", "int8", "int4"], default="none",
                        help="also time inferd with its experts quantized this way")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 steadies figures on a shared machine")
    parser.add_argument("--skip", default="", help="comma-separated variants to leave out (e.g. per_token)")
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    hf = hf_blocks(args)
    ours = inferd_blocks(hf, args)
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "inferd": stack(lambda i, x: ours[i](x), args.layers),
        "grouped_mm": stack(lambda i, x: grouped_mm_forward(hf[i], ours[i], x), args.layers),
        "per_token": stack(lambda i, x: per_token_forward(ours[i], x), args.layers),
        "hf_eager": stack(lambda i, x: hf_forward(hf[i], None, x), args.layers),  # None: eager loop
        "hf_grouped": stack(lambda i, x: hf_forward(hf[i], "grouped_mm", x), args.layers),
    }
    if args.quant != "none":
        from inferd.quant.apply import quantize_model

        quantized = inferd_blocks(hf, args)
        for block in quantized:
            quantize_model(block, args.quant)
        variants[f"inferd_{args.quant}"] = stack(lambda i, x: quantized[i](x), args.layers)
    for name in filter(None, args.skip.split(",")):
        variants.pop(name)

    print(f"# MoE stack: {args.layers} layers, hidden {args.hidden}, {args.experts} experts, top-{args.top_k}, "
          f"expert width {args.inter}, {str(args.dtype).removeprefix('torch.')}; median of {args.repeats} rounds")
    print(f"# machine: {machine()}")
    print(f"{'case':<12} {'tokens':>6} " + " ".join(f"{v:>12}" for v in variants) + "   (tokens/s)")
    for case in filter(None, args.cases.split(",")):
        tokens = CASES[case]
        x = torch.randn(tokens, args.hidden, generator=torch.Generator().manual_seed(1)).to(args.dtype)
        times: dict[str, list[float]] = {v: [] for v in variants}
        with torch.inference_mode():
            reference = variants["inferd"](x) if "inferd" in variants else None
            for name, fn in variants.items():  # warm-up, and a check that all compute the same thing
                y = fn(x)
                if reference is not None and not name.startswith("inferd_"):
                    err = (y.float() - reference.float()).abs().max().item()
                    if err > 1e-2 * reference.float().abs().max().item():
                        raise SystemExit(f"{name} disagrees with inferd on {case}: max |diff| {err:.3g}")
            for _ in range(args.repeats):
                for name, fn in variants.items():
                    start = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - start)
        rates = {v: tokens / median(t) for v, t in times.items()}
        print(f"{case:<12} {tokens:>6} " + " ".join(f"{rates[v]:>12.1f}" for v in variants))
        if "hf_eager" in rates:
            print(f"{'':<12} {'ratio':>6} " + " ".join(f"{rates[v] / rates['hf_eager']:>11.2f}x" for v in variants)
                  + "   (vs hf_eager)")


if __name__ == "__main__":
    main()
