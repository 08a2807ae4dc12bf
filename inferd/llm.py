"""LLM: the offline, batched Python API (vLLM's `LLM` semantics) over one LLMEngine."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq
from dataclasses import replace
from typing import Any

from inferd.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig
from inferd.embedder import Embedder
from inferd.engine.engine import LLMEngine, PromptInput
from inferd.model.embedding_models import resolve_embedding_model
from inferd.outputs import EmbeddingOutput, EmbeddingRequestOutput, RequestOutput
from inferd.sampling_params import SamplingParams
from inferd.tokenizer import Message


def build_engine_config(model: str, **kwargs: Any) -> EngineConfig:
    """Route flat keyword arguments (as vLLM's LLM takes them) to the right config dataclass."""
    parts = {"model": ModelConfig(model=model), "cache": CacheConfig(),
             "scheduler": SchedulerConfig(), "speculative": SpeculativeConfig()}
    aliases = {"kv_cache_memory": "kv_cache_memory_gib", "speculative": "method",
               "speculative_method": "method", "enable_prefix_caching": "enable_prefix_caching"}
    for key, value in kwargs.items():
        key = aliases.get(key, key)
        for name, cfg in parts.items():
            if key in cfg.__dataclass_fields__:
                parts[name] = replace(cfg, **{key: value})
                break
        else:
            raise TypeError(f"LLM() got an unexpected keyword argument {key!r}")
    return EngineConfig(**parts)


# What an embedding model's LLM takes (it has no KV cache, scheduler or sampler to configure).
_EMBEDDER_KWARGS = ("dtype", "device", "max_batch_tokens", "truncate")


class LLM:
    def __init__(self, model: str = "smollm2-135m", **kwargs: Any):
        self._ids = itertools.count()
        self.engine: LLMEngine | None = None
        self.embedder: Embedder | None = None
        if resolve_embedding_model(model) is not None:  # an encoder: embed() only
            unknown = sorted(set(kwargs) - set(_EMBEDDER_KWARGS))
            if unknown:
                raise TypeError(f"LLM() got keyword arguments an embedding model does not use: "
                                f"{unknown} (it takes {', '.join(_EMBEDDER_KWARGS)})")
            self.embedder = Embedder.from_path(model, **kwargs)
            self.tokenizer = self.embedder.tokenizer
            return
        self.engine = LLMEngine(build_engine_config(model, **kwargs))
        self.tokenizer = self.engine.tokenizer

    def embed(self, prompts: str | Seq[int] | Seq[str | Seq[int]], dimensions: int | None = None,
              truncate: bool | None = None) -> list[EmbeddingRequestOutput]:
        """One vector per prompt, in prompt order (vLLM's `LLM.embed`). `truncate` None keeps the
        model's default (cut to max_seq_length, as sentence-transformers does); False refuses
        longer inputs with a ValueError."""
        if self.embedder is None:
            raise ValueError("this model generates text; embed() needs an embedding model "
                             "(e.g. LLM(model='all-minilm-l6-v2'))")
        ids = self.embedder.tokenize(prompts, truncate)
        vectors = self.embedder.embed(ids, dimensions=dimensions).vectors
        return [EmbeddingRequestOutput(str(next(self._ids)), seq, EmbeddingOutput(vec.tolist()))
                for seq, vec in zip(ids, vectors, strict=True)]

    def generate(self, prompts: PromptInput | Seq[PromptInput],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Run every prompt to completion, batched; results come back in prompt order."""
        if self.engine is None:
            raise ValueError("this is an embedding model; use embed(), not generate()/chat()")
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one string or one list of token ids
        params = sampling_params or SamplingParams()
        per_prompt = list(params) if isinstance(params, list | tuple) else [params] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise ValueError("sampling_params must be one object or one per prompt")
        ids = []
        for prompt, p in zip(prompts, per_prompt, strict=True):
            rid = str(next(self._ids))
            self.engine.add_request(rid, prompt, p)
            ids.append(rid)
        final: dict[str, RequestOutput] = {}

        def keep(out: RequestOutput) -> None:
            if out.finished:
                final[out.request_id] = out

        self.engine.run_until_done(keep)
        return [final[i] for i in ids]

    def chat(self, messages: list[Message] | list[list[Message]],
             sampling_params: SamplingParams | None = None) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them, then generate."""
        if self.engine is None:
            raise ValueError("this is an embedding model; use embed(), not generate()/chat()")
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.tokenizer.encode_chat(c) for c in convs]
        return self.generate(prompts, sampling_params)
