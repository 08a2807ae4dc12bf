"""Configuration: one frozen dataclass per concern, built once (by the CLI or `LLM`) and passed down.

Nothing below this module reads environment variables or mutates configuration; a component
receives exactly the dataclass it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | None) -> torch.device:
    """`auto` (or None) picks CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """An explicit dtype by name. `auto` depends on the model file and the machine: `load_model`
    resolves it first (inferd.model.defaults.choose_defaults)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        raise ValueError("dtype 'auto' depends on the model file; resolve it with "
                         "inferd.model.defaults.choose_defaults first")
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and how to run its arithmetic."""

    model: str = "smollm2-135m"
    dtype: str = "auto"  # auto: the machine's choice for this file (inferd.model.defaults)
    device: str = "auto"
    max_model_len: int | None = None  # None: the model's own context length
    # auto (the machine's choice: a GGUF's own blocks where inferd runs them exactly, else none)
    # | none | a method of inferd.quant.registry.QUANT_METHODS (int8 | int4 | fp8 | gguf: keep GGUF blocks)
    quantization: str = "auto"
    quant_group_size: int = 64
    quant_symmetric: bool = True
    quant_skip: tuple[str, ...] = ()
    # Also quantize the LM head (and a tied embedding with it): True = with `quantization`'s
    # method, or a method of its own (inferd.quant.registry.HEAD_METHODS: "int8", "int4", "fp8").
    quant_lm_head: bool | str = False
    seed: int = 0


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: block geometry, pool size and prefix reuse."""

    block_size: int = 16
    kv_cache_memory_gib: float | None = None  # None: use memory_fraction of free memory
    memory_fraction: float = 0.25
    max_kv_cache_gib: float = 4.0  # cap when sized from free memory (CPU RAM is shared with us)
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"  # auto | int8 | fp8


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of one engine step and of the waiting queue."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    max_waiting_requests: int = 512  # the server refuses (429) beyond this
    enable_chunked_prefill: bool = True


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding; method None means off."""

    method: str | None = None  # None | ngram | draft
    num_speculative_tokens: int = 4
    draft_model: str | None = None
    ngram_min: int = 1
    ngram_max: int = 4
    adaptive: bool = True


@dataclass(frozen=True)
class EngineConfig:
    """Everything one engine instance needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
