"""GrammarState: one sequence's position in its grammar, advanced on every token it emits.

The state follows the sequence's emitted tokens only, so preemption (which recomputes K/V but
keeps the tokens) leaves it valid, and an abort simply drops it. Masks are written into rows of
a shared int32 bitmask (bit t of a row set = token t allowed).
"""

from __future__ import annotations

import logging

import llguidance
import torch

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

    def fill(self, bitmask: torch.Tensor, row: int, drafts: list[int]) -> None:
        """Write the masks of rows row..row+len(drafts): row + i is the state after drafts[:i].

        Rows past the first draft the grammar refuses are irrelevant to verification (the masked
        target can never emit that draft, so nothing after it is accepted); they allow everything.
        """
        self._fill_row(bitmask, row)
        if not drafts:
            return
        valid = self.matcher.try_consume_tokens(drafts)
        self.matcher.rollback(valid)
        for i in range(valid):
            self.matcher.consume_token(drafts[i])
            self._fill_row(bitmask, row + 1 + i)
        self.matcher.rollback(valid)
        if valid < len(drafts):
            bitmask[row + 1 + valid:row + 1 + len(drafts)] = -1

    def _fill_row(self, bitmask: torch.Tensor, row: int) -> None:
        v = bitmask[row]
        self.matcher.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())
