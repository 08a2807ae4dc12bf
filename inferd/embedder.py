"""Embedder: texts or token-id lists in, one float32 vector per input out, for embedding models.

It owns the steps around inferd's encoder: tokenizing (with the length limit the model's
sentence-transformers files set), batching by total tokens, pooling, and `dimensions`. Input
errors a user can make are `EmbeddingInputError` (a ValueError): the API layer answers 400.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from inferd.config import resolve_dtype
from inferd.model.bert import BertEncoder, PackedBatch, load_bert_encoder
from inferd.model.embedding_models import resolve_embedding_model
from inferd.model.errors import ModelLoadError
from inferd.model.pooling import PoolingConfig, check_dimensions, pool, truncate_dimensions

EmbedInput = str | Sequence[int]
# 8192-token batches measured slower on CPU (50 MB temporaries), 2048 slower on a busy machine
# (more, smaller multi-threaded ops); 4096 was best there and close to 2048 on a quiet one.
DEFAULT_MAX_BATCH_TOKENS = 4096


class EmbeddingInputError(ValueError):
    """A request the model cannot embed (wrong type, empty, unknown token id, too long)."""


class InputTooLongError(EmbeddingInputError):
    """An input over the model's limit while truncation is off (vLLM answers 400 too)."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(f"input {index} has {tokens} tokens, more than this model's maximum of "
                         f"{limit}; shorten it or allow truncation")
        self.index, self.tokens, self.limit = index, tokens, limit


class Embeddings(NamedTuple):
    """`vectors` float32 [N, D] in input order; `token_counts[i]`: tokens input i was embedded
    with (after truncation, special tokens included): what usage reports."""

    vectors: torch.Tensor
    token_counts: list[int]


def load_backend_tokenizer(directory: Path):
    """A private copy of the model's fast (Rust) tokenizer with truncation and padding off.

    A copy, because tokenizer.json files often fix padding/truncation (this one pads to 128) and
    transformers mutates those settings on every call, which races between threads; this one is
    never changed after loading, so concurrent encode calls are safe.
    """
    from tokenizers import Tokenizer

    from inferd.model.safetensors_loader import load_hf_tokenizer

    backend = getattr(load_hf_tokenizer(directory), "backend_tokenizer", None)
    if backend is None:
        raise ModelLoadError(str(directory), "needs a fast tokenizer (tokenizer.json)")
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


class Embedder:
    """One embedding model, ready to embed. Safe to call from several threads: tokenizing runs
    concurrently, the forward passes one at a time (each already uses every core)."""

    def __init__(self, encoder: BertEncoder, tokenizer, pooling: PoolingConfig, name: str,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, truncate: bool = True):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.name = name
        self.max_batch_tokens = max_batch_tokens
        self.truncate = truncate
        cfg = encoder.config
        limit = pooling.max_seq_length or cfg.max_position_embeddings
        self.max_seq_length = min(limit, cfg.max_position_embeddings)
        self.vocab_size = cfg.vocab_size
        self._specials = tokenizer.num_special_tokens_to_add(False)
        self._lock = threading.Lock()
        with torch.inference_mode():
            probe = torch.zeros(1, cfg.hidden_size)
            self.dimensions = pool(probe, torch.tensor([1]), pooling).shape[1]

    @classmethod
    def from_path(cls, model: str | Path, dtype: str | torch.dtype = "float32",
                  device: str = "cpu", max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                  truncate: bool = True) -> Embedder:
        """`model`: a bundled name (`all-minilm-l6-v2`) or a HF encoder directory. `dtype`
        'auto' means float32 on CPU, bfloat16 on CUDA. `truncate`: the default for `embed`."""
        path = resolve_embedding_model(str(model))
        if path is None:
            raise ModelLoadError(str(model), "not an embedding model (expected a bundled "
                                 "embedding model name or a directory with a BERT config.json)")
        if dtype in (None, "auto"):
            dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
        encoder = load_bert_encoder(path, resolve_dtype(dtype), device)
        return cls(encoder, load_backend_tokenizer(path), PoolingConfig.from_dir(path), str(model),
                   max_batch_tokens, truncate)

    def tokenize(self, inputs: EmbedInput | Sequence[EmbedInput],
                 truncate: bool | None = None, max_tokens: int | None = None) -> list[list[int]]:
        """Validated token ids per input, special tokens included.

        Texts are stripped (and lowercased where sentence_bert_config.json says do_lower_case)
        and, when longer than max_seq_length, cut the way sentence-transformers cuts them: the
        text's tokens are right-truncated so that they plus [CLS]/[SEP] fit. Token-id lists are
        taken as the whole model input, as vLLM takes them, and right-truncated to the limit.
        With truncation off, an input over the limit raises InputTooLongError instead.
        `max_tokens` (at most max_seq_length) lowers the limit (vLLM's truncate_prompt_tokens).
        """
        truncate = self.truncate if truncate is None else truncate
        items = _as_items(inputs)
        texts = {i: x for i, x in enumerate(items) if isinstance(x, str)}
        if self.pooling.do_lower_case:
            texts = {i: t.lower() for i, t in texts.items()}
        encoded = self.tokenizer.encode_batch([t.strip() for t in texts.values()],
                                              add_special_tokens=False)
        by_index = dict(zip(texts, encoded, strict=True))
        limit, out = min(max_tokens or self.max_seq_length, self.max_seq_length), []
        for i, item in enumerate(items):
            if i in by_index:
                enc = by_index[i]
                n = len(enc.ids) + self._specials
                if n > limit and not truncate:
                    raise InputTooLongError(i, n, limit)
                enc.truncate(max(0, limit - self._specials))
                out.append(list(self.tokenizer.post_process(enc).ids))
            else:
                ids = self._check_ids(i, item)
                if len(ids) > limit and not truncate:
                    raise InputTooLongError(i, len(ids), limit)
                out.append(ids[:limit])
        return out

    def _check_ids(self, index: int, item: Sequence[int]) -> list[int]:
        ids = list(item)
        if not ids:
            raise EmbeddingInputError(f"input {index} is an empty list of token ids")
        bad = [t for t in ids if not isinstance(t, int) or isinstance(t, bool)
               or not 0 <= t < self.vocab_size]
        if bad:
            raise EmbeddingInputError(f"input {index} has token ids outside this model's "
                                      f"vocabulary [0, {self.vocab_size}): {bad[:5]}")
        return ids

    def embed(self, inputs: EmbedInput | Sequence[EmbedInput], dimensions: int | None = None,
              truncate: bool | None = None) -> Embeddings:
        """Embed a text, a token-id list, or a list of either (not mixed with other types).

        `dimensions` cuts vectors to that size (renormalized) only for Matryoshka models; other
        models refuse it with a ValueError, as vLLM does. Results do not depend on batching.
        """
        check_dimensions(dimensions, self.pooling, self.dimensions, self.name)
        seqs = self.tokenize(inputs, truncate)
        return Embeddings(self.shorten(self.embed_tokens(seqs), dimensions), [len(s) for s in seqs])

    def embed_tokens(self, seqs: list[list[int]]) -> torch.Tensor:
        """Pooled float32 vectors [N, D] for already tokenized and checked sequences (`tokenize`'s
        output), full size: the server's batching queue runs several requests' sequences at once."""
        vectors = torch.empty(len(seqs), self.dimensions, dtype=torch.float32)
        for batch in self._batches(seqs):
            packed = PackedBatch.from_sequences([seqs[i] for i in batch], self.encoder.word.weight.device)
            with self._lock, torch.inference_mode():
                states = self.encoder(packed)
                vectors[batch] = pool(states, packed.lengths, self.pooling).cpu()
        return vectors

    def check_dimensions(self, dimensions: int | None) -> None:
        """Raise ValueError when `dimensions` is not allowed for this model."""
        check_dimensions(dimensions, self.pooling, self.dimensions, self.name)

    def shorten(self, vectors: torch.Tensor, dimensions: int | None) -> torch.Tensor:
        """Vectors cut to `dimensions` and renormalized (Matryoshka models); as is for None."""
        return truncate_dimensions(vectors, dimensions, self.pooling)

    def _batches(self, seqs: list[list[int]]) -> list[list[int]]:
        """Indices grouped longest first, each group's padded size (count x its longest) within
        max_batch_tokens: sorting keeps the attention grid's padding small."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]), reverse=True)
        batches: list[list[int]] = []
        for i in order:
            if batches and (len(batches[-1]) + 1) * len(seqs[batches[-1][0]]) <= self.max_batch_tokens:
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches


def _as_items(inputs) -> list[EmbedInput]:
    """The OpenAI `input` forms: a string, a list of strings, a list of token ids, or a list of
    token-id lists."""
    if isinstance(inputs, str):
        return [inputs]
    if not isinstance(inputs, Sequence) or isinstance(inputs, bytes):
        raise EmbeddingInputError(f"input must be a string, a list of strings or a list of token "
                                  f"id lists, not {type(inputs).__name__}")
    items = list(inputs)
    if not items:
        raise EmbeddingInputError("input is an empty list; nothing to embed")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        return [items]  # one token-id list
    for i, x in enumerate(items):
        ok = isinstance(x, str) or (isinstance(x, Sequence) and not isinstance(x, bytes))
        if not ok:
            raise EmbeddingInputError(f"input {i} is a {type(x).__name__}; expected a string or a "
                                      "list of token ids")
    return items
