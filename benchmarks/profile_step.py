"""Where one batch-1 decode step's time goes: wall-clock timers around the runner's parts.

Usage: python benchmarks/profile_step.py [--model smollm2-135m] [--config int4-g32-asym+head-int8] [--steps 300]
(configs as in bench_quant.py; `--model gemma3-270m --config default` profiles Gemma 3 as inferd runs it). Prints ms per step for the whole step, the model forward, the
native decoder stack, the LM head and the sampler; the rest is scheduling and bookkeeping.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_quant import CONFIGS  # noqa: E402
from inferd import LLM, SamplingParams  # noqa: E402
from inferd.engine import runner as runner_module  # noqa: E402


def _timed(totals: dict[str, float], label: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - start
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m", help="a bundled model or a local path")
    ap.add_argument("--config", default="int4-g32-asym+head-int8", choices=sorted(CONFIGS))
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    dtype, quant, kw = CONFIGS[args.config]
    llm = LLM(args.model, dtype=dtype, quantization=quant, kv_cache_memory=1, **kw)
    engine, runner = llm.engine, llm.engine.runner
    totals: dict[str, float] = {}
    model = runner.model
    model.forward = _timed(totals, "model forward", model.forward)
    if model.native_stack is not None:
        stack_type = type(model.native_stack)
        stack_type.__call__ = _timed(totals, "  native decoder stack", stack_type.__call__)
    runner._logits = _timed(totals, "LM head (logits)", runner._logits)
    runner_module.sample = _timed(totals, "sampler", runner_module.sample)
    engine.add_request("p", list(range(5, 69)), SamplingParams(temperature=0, max_tokens=args.steps + 40,
                                                              ignore_eos=True))
    for _ in range(30):  # prefill and warm-up
        engine.step()
    totals.clear()
    start = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    step = (time.perf_counter() - start) / args.steps
    print(f"{args.config}: step {step * 1e3:.3f} ms ({1 / step:.1f} tok/s)")
    for label, total in totals.items():
        print(f"  {label:28s} {total / args.steps * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
