"""Speculative decoding: cheap proposers guess several tokens, one target forward verifies them.

Proposers: `ngram` (prompt lookup in the sequence's own tokens) and `draft` (a smaller model with
the target's tokenizer, its own paged KV cache). Verification is lossless (greedy: identical
tokens; sampling: rejection sampling keeps the target's distribution), and the number of tokens
proposed adapts per sequence and per step to measured acceptance and step cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inferd.spec.draft import DraftProposer, IncompatibleDraftModel
from inferd.spec.ngram import NgramProposer
from inferd.spec.speculator import Speculator

if TYPE_CHECKING:
    from inferd.engine.engine import LLMEngine

__all__ = ["DraftProposer", "IncompatibleDraftModel", "NgramProposer", "Speculator",
           "build_speculator"]


def build_speculator(engine: LLMEngine) -> Speculator:
    """The speculator for engine.config.speculative (called by LLMEngine when a method is set)."""
    cfg = engine.config.speculative
    if cfg.num_speculative_tokens < 1:
        raise ValueError("num_speculative_tokens must be at least 1, "
                         f"got {cfg.num_speculative_tokens}")
    if cfg.method == "ngram":
        proposer: NgramProposer | DraftProposer = NgramProposer(cfg.ngram_min, cfg.ngram_max)
    elif cfg.method == "draft":
        if not cfg.draft_model:
            raise ValueError("speculative method 'draft' needs a draft model (--draft-model)")
        proposer = DraftProposer(engine.config, engine.loaded, engine.pool.num_blocks,
                                 cfg.draft_model)
    else:
        raise ValueError(f"unknown speculative method {cfg.method!r}; choose ngram or draft")
    return Speculator(engine, proposer)
