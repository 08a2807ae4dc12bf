"""Token counting for benchmark records, in order of trust: server `usage`, a local tokenizer, then
counting SSE content events (output) or the workload's estimate (prompt).

Counting runs after a run finishes, never while requests are timed. The tokenizer is loaded
lazily with `transformers.AutoTokenizer`, only when something actually needs it.
"""

from __future__ import annotations

from typing import Any

from inferd.bench.records import RequestRecord, RequestSpec


class LazyTokenizer:
    """`AutoTokenizer.from_pretrained(path)` on first use; None path means "no tokenizer"."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._tok: Any = None

    @property
    def available(self) -> bool:
        return self.path is not None

    def get(self) -> Any:
        if self._tok is None:
            if self.path is None:
                raise RuntimeError("no tokenizer configured")
            from transformers import AutoTokenizer  # heavy import, only when asked for

            self._tok = AutoTokenizer.from_pretrained(self.path)
        return self._tok

    def count(self, text: str) -> int:
        return len(self.get().encode(text, add_special_tokens=False))

    def count_prompt(self, spec: RequestSpec, endpoint: str) -> int:
        tok = self.get()
        if endpoint == "chat" and getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                spec.as_messages(), tokenize=True, add_generation_prompt=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in newer transformers
                ids = ids["input_ids"]
            return len(ids)
        return len(tok.encode(spec.as_prompt(), add_special_tokens=True))

    def fit(self, text: str, n_tokens: int) -> str:
        """Cut `text` to exactly `n_tokens` tokens (as far as decode/encode round-trips allow)."""
        tok = self.get()
        ids = tok.encode(text, add_special_tokens=False)
        return tok.decode(ids[:n_tokens]) if len(ids) > n_tokens else text


def fill_token_counts(
    records: list[RequestRecord],
    specs: dict[int, RequestSpec],
    endpoint: str,
    tokenizer: LazyTokenizer,
) -> None:
    """Set prompt/output token counts and their sources on every record, in place."""
    for rec in records:
        usage = rec.usage or {}
        completion = usage.get("completion_tokens")
        if isinstance(completion, int):
            rec.output_tokens, rec.output_token_source = completion, "usage"
        elif tokenizer.available:
            rec.output_tokens, rec.output_token_source = (
                tokenizer.count(rec.output_text),
                "tokenizer",
            )
        else:
            rec.output_tokens, rec.output_token_source = len(rec.token_times), "sse-events"

        prompt = usage.get("prompt_tokens")
        spec = specs.get(rec.index)
        if isinstance(prompt, int):
            rec.prompt_tokens, rec.prompt_token_source = prompt, "usage"
        elif spec is not None and tokenizer.available:
            rec.prompt_tokens, rec.prompt_token_source = (
                tokenizer.count_prompt(spec, endpoint),
                "tokenizer",
            )
        elif spec is not None and spec.estimated_prompt_tokens is not None:
            rec.prompt_tokens, rec.prompt_token_source = spec.estimated_prompt_tokens, "estimate"
