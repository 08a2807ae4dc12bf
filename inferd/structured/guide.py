"""Guide: what output shape a request asks for, as plain data that SamplingParams can carry.

A Guide is hashable (the compiled-grammar cache key) and knows how to become llguidance grammar
text; it knows nothing about tokenizers or matchers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import llguidance

Kind = Literal["json", "regex", "choice", "grammar", "lark"]

# JSON is generated in one fixed layout (", " and ": ", no newlines). With free whitespace a
# model may emit whitespace until max_tokens (a known failure of xgrammar's any-whitespace mode in
# vLLM), and the output would not parse; json.dumps writes this layout too.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Guide:
    """kind: json (a JSON schema, as text), regex, choice (a JSON list of strings), grammar
    (Lark or llama.cpp GBNF, as vLLM's guided_grammar) or lark (llguidance's Lark, which may embed
    `%json {schema}`). lenient: JSON schema keywords llguidance cannot enforce are ignored
    instead of refused (OpenAI's non-strict json_schema)."""

    kind: Kind
    spec: str
    lenient: bool = False

    @classmethod
    def json(cls, schema: dict[str, Any] | str | bool, lenient: bool = False) -> Guide:
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return cls("json", text, lenient)

    @classmethod
    def json_object(cls) -> Guide:
        """Any JSON object (response_format json_object)."""
        return cls.json({"type": "object"})

    @classmethod
    def choice(cls, options: list[str]) -> Guide:
        return cls("choice", json.dumps(list(options)))

    def grammar_text(self) -> str:
        """llguidance grammar text; raises ValueError for text that is not even well-formed."""
        if self.kind == "json":
            options = dict(JSON_LAYOUT, lenient=self.lenient)
            return llguidance.LLMatcher.grammar_from_json_schema(self.spec, overrides=options)
        if self.kind == "choice":
            options = json.loads(self.spec)
            if not options:
                raise ValueError("a choice needs at least one option")
            return llguidance.LLMatcher.grammar_from_lark(
                "start: " + " | ".join(json.dumps(o) for o in options))
        if self.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(self.spec)
        return llguidance.grammar_from(self.kind, self.spec)
