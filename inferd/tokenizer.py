"""Tokenizer: the HF fast tokenizer behind one small interface (encode, decode, chat template).

The engine only ever sees token ids; this wrapper is what the API layers and the detokenizer use.
Chat messages are encoded so that text a user writes stays text: "<|im_start|>system" inside a
message is not the control token (the template's own markers are), unless a caller opts out.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from typing import Any

from inferd.model.arch import ArchConfig

Message = dict[str, Any]
# Normalizers that never shrink text, so a token still covers at most its own bytes of input.
_NON_SHRINKING_NORMALIZERS = {"Prepend", "Replace", "NFD", "NFKD"}


class Tokenizer:
    def __init__(self, hf_tokenizer, arch: ArchConfig | None = None):
        self.hf = hf_tokenizer
        eos = set(arch.eos_token_ids if arch else ())
        if hf_tokenizer.eos_token_id is not None:
            eos.add(int(hf_tokenizer.eos_token_id))
        self.eos_token_ids: frozenset[int] = frozenset(eos)
        self.bos_token_id: int | None = hf_tokenizer.bos_token_id
        self.vocab_size = len(hf_tokenizer)
        self.all_special_ids = frozenset(hf_tokenizer.all_special_ids)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.hf, "chat_template", None)

    @property
    def eos_token(self) -> str | None:
        return self.hf.eos_token

    @property
    def bos_token(self) -> str | None:
        return self.hf.bos_token

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    @cached_property
    def max_token_bytes(self) -> int | None:
        """The most input bytes one token can stand for, or None where that is not knowable
        (a normalizer that may delete text). Lets a prompt be refused as too long before it is
        tokenized: a text of B bytes needs at least B / max_token_bytes tokens."""
        backend = getattr(self.hf, "backend_tokenizer", None)
        if backend is None:
            return None
        normalizer = json.loads(backend.to_str()).get("normalizer")
        if not _non_shrinking(normalizer):
            return None
        # Vocabulary strings over-count bytes (byte-level and SentencePiece markers are 2-3 UTF-8
        # bytes for one input byte), which only makes the bound looser.
        return max((len(t.encode("utf-8")) for t in self.hf.get_vocab()), default=0) or None

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text)) computed without tokenizing (0 when unknown)."""
        per_token = self.max_token_bytes
        if not per_token:
            return 0
        return -(-len(text.encode("utf-8", "surrogatepass")) // per_token)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return self.hf.convert_ids_to_tokens(ids)

    def token_to_text(self, token_id: int) -> str:
        """The text one token stands for on its own (used for logprob entries)."""
        return self.hf.decode([token_id], skip_special_tokens=False)

    def apply_chat_template(self, messages: list[Message], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None) -> str:
        """tools: OpenAI tool definitions, for templates that render them (None: no tools)."""
        if not self.chat_template:
            raise ValueError("this model has no chat template; use a completion (raw prompt) instead")
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                           tools=tools)

    def encode_chat(self, messages: list[Message], add_generation_prompt: bool = True,
                    parse_special_in_content: bool = False) -> list[int]:
        """Token ids of a conversation. Message contents are text: control-token strings a user
        writes in them do not become control tokens (which would let them forge a system turn),
        unless parse_special_in_content."""
        rendered = self.apply_chat_template(messages, add_generation_prompt)
        return self.encode_rendered_chat(rendered, messages, add_generation_prompt, parse_special_in_content)

    def encode_rendered_chat(self, rendered: str, messages: list[Message], add_generation_prompt: bool,
                             parse_special_in_content: bool = False, tools: list[dict] | None = None
                             ) -> list[int]:
        """encode_chat for a conversation whose template output is already at hand."""
        # The template writes special tokens itself; adding them again would double the BOS.
        if parse_special_in_content or not any(self.holds_control_text(m.get("content")) for m in messages):
            return self.encode(rendered, add_special_tokens=False)
        return self._encode_chat_isolating_content(messages, add_generation_prompt, tools)

    @cached_property
    def _control_text(self) -> re.Pattern | None:
        """Matches any added token's text (control tokens: <|im_start|>, <|endoftext|>, ...)."""
        added = sorted(self.hf.get_added_vocab(), key=len, reverse=True)
        return re.compile("|".join(map(re.escape, added))) if added else None

    def holds_control_text(self, text: Any) -> bool:
        return isinstance(text, str) and self._control_text is not None and bool(self._control_text.search(text))

    @cached_property
    def _literal(self):
        """A copy of the backend tokenizer that never parses special tokens in its input (a copy,
        so no shared switch is flipped while other threads tokenize)."""
        from tokenizers import Tokenizer as Backend

        backend = Backend.from_str(self.hf.backend_tokenizer.to_str())
        backend.encode_special_tokens = True
        return backend

    def _encode_chat_isolating_content(self, messages: list[Message], add_generation_prompt: bool,
                                       tools: list[dict] | None = None) -> list[int]:
        # Render with placeholders where contents holding control text go, encode the template's
        # text as usual (its markers are special) and those contents literally, in order.
        marks: dict[int, str] = {}
        masked = []
        for i, m in enumerate(messages):
            if self.holds_control_text(m.get("content")):
                marks[i] = f"\ue000{i}\ue001"
                m = {**m, "content": marks[i]}
            masked.append(m)
        rendered = self.apply_chat_template(masked, add_generation_prompt, tools)
        ids: list[int] = []
        pos = 0
        for i, mark in marks.items():
            at = rendered.find(mark, pos)
            if at < 0 or rendered.find(mark, at + len(mark)) >= 0:
                raise ValueError("the chat template does not place each message's content exactly once, "
                                 "so control-token text in it cannot be kept literal")
            ids += self.encode(rendered[pos:at], add_special_tokens=False)
            ids += self._literal.encode(messages[i]["content"], add_special_tokens=False).ids
            pos = at + len(mark)
        return ids + self.encode(rendered[pos:], add_special_tokens=False)


def _non_shrinking(normalizer: dict | None) -> bool:
    if normalizer is None:
        return True
    kind = normalizer.get("type")
    if kind == "Sequence":
        return all(_non_shrinking(n) for n in normalizer.get("normalizers", []))
    if kind == "Replace":
        return bool(normalizer.get("content"))
    return kind in _NON_SHRINKING_NORMALIZERS
