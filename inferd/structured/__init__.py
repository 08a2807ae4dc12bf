"""Structured output: grammar-constrained decoding (JSON schema, regex, choice, Lark/GBNF grammars).

Library: llguidance (PyPI `llguidance`, pinned in pyproject.toml), not xgrammar. Both compile a
JSON schema in milliseconds and compute a 49k-token mask in tens of microseconds on this CPU, but
`pip install xgrammar` pulls `triton` (hundreds of MB, GPU-only) and apache-tvm-ffi into a
CPU-first install, while llguidance is one self-contained abi3 wheel with no dependencies. It also
gives what speculative decoding needs (try_consume_tokens + rollback), takes Lark and GBNF
(vLLM's guided_grammar), regexes and choices, and embeds JSON schemas in Lark (`%json`), which
is how required tool calls are constrained.

Boundary: `guide.Guide` says what a request wants (plain data, in SamplingParams); `compiler`
turns it into a matcher template (cached); `state.GrammarState` follows one sequence;
`masks.GrammarMasker` computes a step's masks beside the model forward. The sampler and the
verifier only see boolean "allowed" tensors.
"""

from inferd.structured.compiler import GrammarCompiler, GrammarError
from inferd.structured.guide import Guide
from inferd.structured.masks import GrammarMasker, StepMasks, mask_logits
from inferd.structured.state import GrammarState

__all__ = ["Guide", "GrammarCompiler", "GrammarError", "GrammarMasker", "GrammarState", "StepMasks",
           "mask_logits"]
