"""GrammarCompiler: Guide -> a compiled llguidance matcher, cached by guide (LRU), per tokenizer.

Compiling builds the grammar's lexer and parser tables against the vocabulary (about a
millisecond for a small schema, up to hundreds for huge ones; llguidance drops the GIL while it
runs). The cache keeps the compiled matcher in its start state; each sequence gets a deep copy,
which costs microseconds. The tokenizer view (every token's bytes) is built once, on first use.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import llguidance
import llguidance.hf

from inferd.sampling_params import InvalidParameter
from inferd.structured.guide import Guide
from inferd.structured.state import GrammarState

DEFAULT_CACHE_SIZE = 256


class GrammarError(InvalidParameter):
    """A guide llguidance cannot compile (bad schema, regex or grammar); the message is its own."""


class GrammarCompiler:
    def __init__(self, hf_tokenizer, vocab_size: int, eos_token_ids: frozenset[int],
                 cache_size: int = DEFAULT_CACHE_SIZE):
        self._hf = hf_tokenizer
        self.vocab_size = vocab_size  # the model's logits width (may exceed the tokenizer's)
        self._eos = sorted(eos_token_ids)
        self._cache_size = cache_size
        self._cache: OrderedDict[Guide, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._tokenizer: llguidance.LLTokenizer | None = None
        self.num_compiled = 0  # cache misses, for tests and metrics

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf, n_vocab=self.vocab_size, eos_token=self._eos or None)
            return self._tokenizer

    def compile(self, guide: Guide, param: str = "response_format") -> llguidance.LLMatcher:
        """The cached start-state matcher of guide; raises GrammarError naming `param`."""
        with self._lock:
            hit = self._cache.get(guide)
            if hit is not None:
                self._cache.move_to_end(guide)
                return hit
        tokenizer = self.tokenizer
        try:
            text = guide.grammar_text()
        except (ValueError, TypeError) as exc:
            raise GrammarError(param, f"{param}: could not build a grammar: {exc}") from None
        matcher = llguidance.LLMatcher(tokenizer, text, log_level=0)
        if matcher.is_error():
            raise GrammarError(param, f"{param}: {matcher.get_error()}")
        with self._lock:
            self.num_compiled += 1
            self._cache[guide] = matcher
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return matcher

    def new_state(self, guide: Guide) -> GrammarState:
        """A fresh per-sequence state (one per sample of an n>1 request)."""
        return GrammarState(self.compile(guide).deep_copy())
