"""Incremental detokenizer: turns a growing list of ids into text deltas that are valid UTF-8.

Byte-level BPE can split one character across tokens; decoding a window of recent tokens and
holding back output that ends in U+FFFD (an incomplete character) means streamed text never shows
garbage, and the concatenated deltas equal the full decode of the final ids.
Stop strings are matched here too, and text that could still become a stop string is held back.
"""

from __future__ import annotations

from inferd.tokenizer import Tokenizer

_CONTEXT = 6  # tokens of left context re-decoded so merges across the boundary are right


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], stop: list[str],
                 skip_special_tokens: bool = True, include_stop_str: bool = False):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.ids: list[int] = list(prompt_ids[-_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""  # all output text decoded so far
        self.stop = stop
        self.include_stop_str = include_stop_str
        self.hold = max((len(s) for s in stop), default=1) - 1  # chars a stop could still claim
        self.emitted = 0  # chars of self.text already handed out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def add(self, token_id: int) -> str | None:
        """Append one id; return the stop string if text now contains one (text is cut there)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return None  # incomplete UTF-8 sequence (or nothing visible yet): wait
        new = full[len(prefix):]
        search_from = max(0, len(self.text) - self.hold)
        self.text += new
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        # Bound the window: ids before prefix_offset are never decoded again.
        if self.prefix_offset > 64:
            drop = self.prefix_offset - _CONTEXT
            self.ids = self.ids[drop:]
            self.prefix_offset -= drop
            self.read_offset -= drop
        for s in self.stop:
            pos = self.text.find(s, search_from)
            if pos != -1:
                self.text = self.text[:pos + len(s)] if self.include_stop_str else self.text[:pos]
                return s
        return None

    def flush(self) -> None:
        """At the end of a sequence, release text held back by a dangling partial character."""
        tail = self._decode(self.ids[self.prefix_offset:])
        done = self._decode(self.ids[self.prefix_offset:self.read_offset])
        if len(tail) > len(done):
            self.text += tail[len(done):]

    def take_delta(self, finished: bool) -> str:
        """New text safe to show: everything when finished, else all but what a stop could claim."""
        end = len(self.text) if finished or not self.stop else max(self.emitted, len(self.text) - self.hold)
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta
