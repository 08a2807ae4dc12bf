"""The mask plumbing without a model: bit layout -> bias, the fallback for rows other processing
emptied, and the cache's LRU bound."""

from __future__ import annotations

import torch

from inferd.structured import GrammarCompiler, Guide, mask_logits
from inferd.structured.masks import to_bias


def test_bitmask_bits_become_zero_or_minus_inf():
    words = torch.zeros((2, 2), dtype=torch.int32)
    words[0, 0] = 0b101  # tokens 0 and 2
    words[1, 1] = 1 << 3  # token 35
    words[1, 0] = -(1 << 31)  # bit 31: token 31 (the sign bit)
    bias = to_bias(words, 40)
    assert bias.shape == (2, 40) and bias.dtype == torch.float32
    assert (bias[0] == 0).nonzero().flatten().tolist() == [0, 2]
    assert (bias[1] == 0).nonzero().flatten().tolist() == [31, 35]
    assert torch.isneginf(bias[0, 1])


def test_a_row_emptied_by_other_processing_falls_back_to_the_grammar():
    raw = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    processed = raw.clone()
    processed[1, 0] = float("-inf")  # e.g. min_tokens banned the only token the grammar allows
    bias = torch.tensor([[0.0, float("-inf"), 0.0], [0.0, float("-inf"), float("-inf")]])
    out = mask_logits(processed, bias, raw)
    assert out[0].tolist() == [1.0, float("-inf"), 3.0]
    assert out[1].tolist() == [1.0, float("-inf"), float("-inf")]


def test_compiled_grammars_are_cached_with_an_lru_bound(tiny_llama):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_llama))
    grammars = GrammarCompiler(hf, 49152, frozenset({2}), cache_size=2)
    a, b, c = (Guide.choice([x]) for x in "abc")
    first = grammars.compile(a)
    assert grammars.compile(a) is first and grammars.num_compiled == 1
    grammars.compile(b)
    grammars.compile(c)  # evicts a, the least recently used
    assert grammars.num_compiled == 3 and grammars.compile(b) is not None and grammars.num_compiled == 3
    assert grammars.compile(a) is not first and grammars.num_compiled == 4
    state = grammars.new_state(a)
    assert state.accept(hf.encode("a", add_special_tokens=False)[0]) and state.finished
