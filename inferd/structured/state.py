"""GrammarState: one sequence's position in its grammar, advanced on every token it emits.

The state follows the sequence's emitted tokens only, so preemption (which recomputes K/V but
keeps the tokens) leaves it valid, and an abort simply drops it. Its masks are computed by
`masks.GrammarMasker`, for all of a step's sequences at once.
"""

from __future__ import annotations

import logging

import llguidance

log = logging.getLogger(__name__)


class GrammarState:
    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher

    @property
    def finished(self) -> bool:
        """Nothing but EOS can follow (the grammar is complete), or the matcher failed."""
        return self.matcher.is_stopped()

    def accept(self, token: int) -> bool:
        """Advance over an emitted token; False if the grammar refused it (then it stays stopped)."""
        ok = self.matcher.consume_token(token)
        if not ok:
            log.warning("grammar refused emitted token %d: %s", token, self.matcher.get_error())
        return ok
