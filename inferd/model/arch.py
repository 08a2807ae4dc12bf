"""ArchConfig: the shape of a decoder-only transformer, independent of the file it came from.

Both loaders (GGUF metadata, HF config.json) translate into this one dataclass, so the model code
never sees a file format. Which model class runs a config is `architectures.py`'s table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ArchConfig:
    architecture: str  # the canonical name in architectures.ARCHITECTURES (llama, qwen3, gemma3, ...)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q/k/v
    mlp_bias: bool = False
    sliding_window: int | None = None
    # Layers that use `sliding_window` (Gemma 3: five local to one global); None: every layer.
    sliding_layers: tuple[int, ...] | None = None
    rope_local_theta: float | None = None  # rope base of the sliding layers, where it differs (Gemma 3)
    hidden_act: str = "silu"
    query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 (Gemma)
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of layer `layer` (None: it attends to the whole context)."""
        if self.sliding_layers is None or layer in self.sliding_layers:
            return self.sliding_window
        return None

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], architecture: str) -> ArchConfig:
        """Build from a parsed config.json whose model class `architecture` names (canonical)."""
        arch = architecture
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        rope_theta, rope_scaling, local_theta = _hf_rope(cfg)
        window, sliding_layers = _hf_sliding(cfg, arch)
        return cls(
            architecture=arch,
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rope_scaling=rope_scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            sliding_window=window,
            sliding_layers=sliding_layers,
            rope_local_theta=local_theta,
            hidden_act=cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu",
            query_pre_attn_scalar=cfg.get("query_pre_attn_scalar"),
            attn_logit_softcap=cfg.get("attn_logit_softcapping"),
            final_logit_softcap=cfg.get("final_logit_softcapping"),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


def _hf_rope(cfg: dict[str, Any]) -> tuple[float | None, dict[str, Any] | None, float | None]:
    """(global rope base, global rope scaling, sliding layers' base) from either config layout:
    transformers < 5 (`rope_theta`, `rope_scaling`, `rope_local_base_freq`) or >= 5
    (`rope_parameters`, nested per layer type where the types differ)."""
    theta, scaling = cfg.get("rope_theta"), cfg.get("rope_scaling") or None
    local = cfg.get("rope_local_base_freq")
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:
        local = (params.get("sliding_attention") or {}).get("rope_theta", local)
        params = params["full_attention"]
    if isinstance(params, dict):
        theta = params.get("rope_theta", theta)
        if params.get("rope_type", "default") != "default":
            scaling = params
    return theta, scaling, local


def _hf_sliding(cfg: dict[str, Any], arch: str) -> tuple[int | None, tuple[int, ...] | None]:
    """(window, the layers using it; None: all) from `layer_types`, `sliding_window_pattern` or
    `use_sliding_window` (Mistral and Gemma slide without saying so)."""
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if not types and cfg.get("sliding_window_pattern"):
        pattern = int(cfg["sliding_window_pattern"])
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                 for i in range(cfg["num_hidden_layers"])]
    use = cfg.get("use_sliding_window")
    if use is None:
        use = arch in ("mistral", "gemma3") or "sliding_attention" in (types or ())
    if not use or not window:
        return None, None
    if not types or all(t == "sliding_attention" for t in types):
        return int(window), None
    layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    return (int(window), layers) if layers else (None, None)
