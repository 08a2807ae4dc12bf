"""Engine logprob entries -> OpenAI's two logprob shapes (chat's `content` list, completions' columns).

An engine entry is {token_id: logprob} with the chosen token first, then the top alternatives.
Chat lists exactly `top_logprobs` alternatives; completions keep the chosen token in
`top_logprobs` as vLLM does (lm-eval compares it against the column's maximum).
"""

from __future__ import annotations

from inferd.outputs import TokenLogprobs
from inferd.serve.protocol import ChatTokenLogprob, CompletionLogprobs, PromptLogprob, TopLogprob
from inferd.tokenizer import Tokenizer

FLOOR = -9999.0  # JSON has no -inf; OpenAI reports tokens the model rules out with a large negative


def _lp(value: float) -> float:
    return max(value, FLOOR)


class LogprobFormatter:
    """Per request: caches token texts, since the same ids recur across positions."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        t = self._texts.get(token_id)
        if t is None:
            t = self._texts[token_id] = self.tokenizer.token_to_text(token_id)
        return t

    def chat(self, token_ids: list[int], entries: list[TokenLogprobs], top_n: int) -> list[ChatTokenLogprob]:
        out = []
        for tok, entry in zip(token_ids, entries, strict=False):
            ranked = sorted(entry.items(), key=lambda kv: kv[1], reverse=True)[:top_n]
            text = self.text(tok)
            out.append(ChatTokenLogprob(
                token=text, logprob=_lp(entry[tok]), bytes=list(text.encode()),
                top_logprobs=[TopLogprob(token=self.text(t), logprob=_lp(lp), bytes=list(self.text(t).encode()))
                              for t, lp in ranked]))
        return out

    def completion(self, token_ids: list[int], entries: list[TokenLogprobs | None],
                   offset: int = 0) -> CompletionLogprobs:
        """Columns for tokens starting at character `offset` of the returned text; None entries
        (the first prompt token has no context) give null logprobs."""
        result = CompletionLogprobs()
        for tok, entry in zip(token_ids, entries, strict=False):
            text = self.text(tok)
            result.tokens.append(text)
            result.text_offset.append(offset)
            offset += len(text)
            if entry is None:
                result.token_logprobs.append(None)
                result.top_logprobs.append(None)
                continue
            result.token_logprobs.append(_lp(entry[tok]))
            tops: dict[str, float] = {}
            for t, lp in entry.items():
                tops.setdefault(self.text(t), _lp(lp))
            result.top_logprobs.append(tops)
        return result

    def prompt(self, token_ids: list[int], entries: list[TokenLogprobs | None], top_n: int
               ) -> list[dict[str, PromptLogprob] | None]:
        """vLLM's `prompt_logprobs`: per prompt token, {token id: logprob, rank, text} for the
        token itself and the top_n alternatives (None for the first token)."""
        out: list[dict[str, PromptLogprob] | None] = []
        for tok, entry in zip(token_ids, entries, strict=False):
            if entry is None:
                out.append(None)
                continue
            # More entries than top_n: the prompt token is not among the top_n and its rank unknown.
            outside = len(entry) > top_n
            result: dict[str, PromptLogprob] = {}
            rank = 0
            for t, lp in sorted(entry.items(), key=lambda kv: kv[1], reverse=True):
                known = not (outside and t == tok)
                rank += known
                result[str(t)] = PromptLogprob(logprob=_lp(lp), rank=rank if known else None,
                                               decoded_token=self.text(t))
            out.append(result)
        return out


def merge(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(tokens=a.tokens + b.tokens, token_logprobs=a.token_logprobs + b.token_logprobs,
                              top_logprobs=a.top_logprobs + b.top_logprobs,
                              text_offset=a.text_offset + b.text_offset)
