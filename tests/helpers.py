"""Small helpers the tests share."""

from __future__ import annotations

from inferd.model.scoring import sequence_logits as forward_logits

__all__ = ["forward_logits"]
