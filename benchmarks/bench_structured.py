"""Structured-output overhead, measured offline: output tokens/s of `LLM.generate` with a JSON
schema vs without, at 1 and 32 streams, on the bundled model; and the first request's grammar
cost (the tokenizer view, built once per model, plus the schema's compile).

On a machine other processes load, tokens/s swing with them; the CPU time of the grammar's work
per step (masks for every stream, their bias, the add), set against a free step's CPU time, is
printed too, as a load-independent figure. Both arms generate exactly max_tokens per sequence: the schema asks for a long array
(minItems far past max_tokens), so every step of the constrained arm computes and applies a real
mask, and the free arm ignores EOS. Arms alternate within each repeat, so noise from other
processes hits them alike; cells are the best of the repeats.

    .venv/bin/python benchmarks/bench_structured.py                 # 1 and 32 streams, 3 repeats
    .venv/bin/python benchmarks/bench_structured.py --streams 1 8 32 --max-tokens 64 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import machine
from inferd.llm import LLM
from inferd.sampling_params import SamplingParams
from inferd.structured import GrammarCompiler, GrammarMasker, Guide, mask_logits

SCHEMA = {"type": "array", "minItems": 1000, "items": {
    "type": "object", "required": ["name", "age", "city"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                   "city": {"enum": ["Paris", "Berlin", "Lima", "Oslo"]}}}}
PROMPT = "List people as JSON: name, age and city of each."


def first_request_compile(llm: LLM) -> tuple[float, float]:
    """Seconds for the tokenizer view and for compiling SCHEMA, in a fresh compiler (no cache)."""
    eng = llm.engine
    fresh = GrammarCompiler(eng.tokenizer.hf, eng.loaded.arch.vocab_size, eng.tokenizer.eos_token_ids)
    t0 = time.perf_counter()
    _ = fresh.tokenizer
    t1 = time.perf_counter()
    fresh.compile(Guide.json(SCHEMA))
    return t1 - t0, time.perf_counter() - t1


def run(llm: LLM, streams: int, max_tokens: int, guided: bool) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=not guided,
                            guide=Guide.json(SCHEMA) if guided else None)
    t0 = time.perf_counter()
    outs = llm.generate([PROMPT] * streams, params)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    assert tokens == streams * max_tokens, "a sequence ended early: the comparison would be unfair"
    return tokens / seconds


def grammar_cpu_per_step(llm: LLM, streams: int, repeats: int = 20) -> float:
    """CPU seconds of one step's grammar work for `streams` sequences in mid-JSON."""
    eng = llm.engine
    tokens = eng.tokenizer.encode('[{"name": "Ann", "age": 31, "city": "Lima"}, {"name": "Bo', add_special_tokens=False)

    class Seq:  # what the masker reads of a sequence
        def __init__(self, i: int):
            self.seq_id, self.grammar = i, eng.grammars.new_state(Guide.json(SCHEMA))
            for t in tokens:
                self.grammar.accept(t)

    seqs = [Seq(i) for i in range(streams)]
    masker = GrammarMasker(eng.loaded.arch.vocab_size)
    logits = torch.randn(streams, eng.loaded.arch.vocab_size)
    masker.start(seqs, None).result()  # warm-up (starts the worker)
    t0 = time.process_time()
    for _ in range(repeats):
        masks = masker.start(seqs, None).result()
        mask_logits(logits, masks.bias, logits)
    return (time.process_time() - t0) / repeats


def free_step_cpu(llm: LLM, streams: int, max_tokens: int) -> float:
    """CPU seconds (all threads) per decode step of a free run (the prefill step taken out)."""
    def cpu(tokens: int) -> float:
        t0 = time.process_time()
        llm.generate([PROMPT] * streams, SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))
        return time.process_time() - t0

    return (cpu(max_tokens) - cpu(1)) / (max_tokens - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    llm = LLM("smollm2-135m", enable_prefix_caching=False)
    view, compile_s = first_request_compile(llm)
    print(f"machine: {machine()}")
    print(f"first request: tokenizer view {view * 1e3:.0f} ms (once per model), "
          f"schema compile {compile_s * 1e3:.1f} ms (then cached)")
    run(llm, 2, 8, True), run(llm, 2, 8, False)  # warm-up
    print("streams  free tok/s  schema tok/s  ratio")
    for n in args.streams:
        free, guided = [], []
        for _ in range(args.repeats):
            free.append(run(llm, n, args.max_tokens, False))
            guided.append(run(llm, n, args.max_tokens, True))
        print(f"{n:7d}  {max(free):10.1f}  {max(guided):12.1f}  {max(guided) / max(free):5.3f}")
    print("streams  grammar CPU ms/step  free step CPU ms  grammar share")
    for n in args.streams:
        g, f = grammar_cpu_per_step(llm, n), free_step_cpu(llm, n, args.max_tokens)
        print(f"{n:7d}  {g * 1e3:19.2f}  {f * 1e3:16.1f}  {g / f:12.1%}")


if __name__ == "__main__":
    main()
