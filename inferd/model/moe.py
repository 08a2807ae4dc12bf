"""Sparse mixture-of-experts feed-forward block: Mixtral, Qwen3-MoE and Qwen2-MoE (shared expert).

One module, `SparseMoeBlock`, maps x [T, hidden] -> [T, hidden] exactly as transformers 5.23's
`*SparseMoeBlock`s do, runs the experts grouped (tokens sorted by expert, one matmul per active
expert), counts tokens per expert for metrics, and loads its weights from HF or GGUF tensor names.
It knows nothing about attention, layers or requests: the model file places it where the MLP goes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Architectures whose router keeps the renormalised top-k weights in float32 (transformers'
# MixtralTopKRouter never casts them back); the Qwen routers cast them to the logits' dtype.
# This matters only below float32: bf16 expert outputs are then multiplied in float32.
_FP32_ROUTING_WEIGHTS = ("mixtral",)
MOE_MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe")
GGUF_MOE_ARCHITECTURES = {"llama": "mixtral", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}


@dataclass(frozen=True)
class MoeConfig:
    """The numbers one MoE block needs; build it with `from_hf_config` or `from_gguf_metadata`."""

    model_type: str  # "mixtral" | "qwen2_moe" | "qwen3_moe": fixes the router's rounding
    hidden_size: int
    expert_intermediate_size: int
    num_experts: int
    top_k: int
    norm_topk_prob: bool  # renormalise the k kept probabilities to sum to 1
    shared_expert_intermediate_size: int = 0  # 0: no shared expert (Qwen2-MoE has one)

    def __post_init__(self) -> None:
        if self.model_type not in MOE_MODEL_TYPES:
            raise ValueError(f"unsupported MoE model_type {self.model_type!r}; inferd implements {MOE_MODEL_TYPES}")
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in 1..num_experts={self.num_experts}, got {self.top_k}")

    @property
    def fp32_routing_weights(self) -> bool:
        return self.model_type in _FP32_ROUTING_WEIGHTS

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> MoeConfig:
        """From a config.json dict. Mixtral always renormalises (no `norm_topk_prob` key)."""
        model_type = cfg.get("model_type")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"MoE experts implement silu only, config has hidden_act={cfg['hidden_act']!r}")
        if model_type == "mixtral":
            return cls(model_type, cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"],
                       cfg["num_experts_per_tok"], norm_topk_prob=True)
        if model_type in ("qwen2_moe", "qwen3_moe"):
            shared = cfg.get("shared_expert_intermediate_size", 0) if model_type == "qwen2_moe" else 0
            return cls(model_type, cfg["hidden_size"], cfg["moe_intermediate_size"], _num_experts(cfg),
                       cfg["num_experts_per_tok"], bool(cfg.get("norm_topk_prob", False)), int(shared or 0))
        raise ValueError(f"unsupported MoE model_type {model_type!r}; inferd implements {MOE_MODEL_TYPES}")

    @classmethod
    def from_gguf_metadata(cls, fields: Mapping[str, Any], arch: str) -> MoeConfig:
        """From GGUF metadata (`GGUFFile.fields`). GGUF has no norm_topk_prob: llama.cpp fixes it
        per architecture (Mixtral, stored as `llama`, and qwen3moe renormalise; qwen2moe does not),
        and so do we, reading `{arch}.expert_weights_norm` where a file has it."""
        if arch not in GGUF_MOE_ARCHITECTURES:
            raise ValueError(f"unsupported MoE GGUF architecture {arch!r}")
        model_type = GGUF_MOE_ARCHITECTURES[arch]

        def need(key: str) -> int:
            if f"{arch}.{key}" not in fields:
                raise ValueError(f"GGUF metadata key {arch}.{key} missing")
            return int(fields[f"{arch}.{key}"])

        intermediate = (need("expert_feed_forward_length") if f"{arch}.expert_feed_forward_length" in fields
                        else need("feed_forward_length"))
        norm = bool(fields.get(f"{arch}.expert_weights_norm", model_type != "qwen2_moe"))
        shared = int(fields.get(f"{arch}.expert_shared_feed_forward_length", 0) or 0)
        return cls(model_type, need("embedding_length"), intermediate, need("expert_count"),
                   need("expert_used_count"), norm, shared)


def _num_experts(cfg: Mapping[str, Any]) -> int:
    """Expert count; transformers 5 saves Qwen-MoE's `num_experts` as `num_local_experts` (an
    attribute alias), older configs and hub files say `num_experts`."""
    return int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)


def is_moe_layer(cfg: Mapping[str, Any], layer_idx: int) -> bool:
    """Whether HF config `cfg` puts a sparse block (not a dense MLP) in layer `layer_idx`,
    following Qwen-MoE's `mlp_only_layers` / `decoder_sparse_step` (Mixtral: every layer)."""
    if cfg.get("model_type") == "mixtral":
        return True
    step = int(cfg.get("decoder_sparse_step", 1) or 1)
    return (layer_idx not in (cfg.get("mlp_only_layers") or [])
            and _num_experts(cfg) > 0 and (layer_idx + 1) % step == 0)


class RouterLinear(nn.Module):
    """A bias-free projection that deliberately is not an `nn.Linear`.

    `quantize_model` replaces every `nn.Linear`; the router and the shared-expert gate must stay in
    float: their outputs pick experts (a discrete choice a small weight error flips, which is why
    llama.cpp never quantizes `ffn_gate_inp` either), and their row counts (E, or 1) are often not
    a multiple of 16, which the int4 kernels require and would fail the whole model on.
    """

    def __init__(self, in_features: int, out_features: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class ExpertMLP(nn.Module):
    """One SwiGLU expert, down(silu(gate(x)) * up(x)), with gate and up fused in one `nn.Linear`
    ([gate; up] rows, transformers' `gate_up_proj` layout): one matmul instead of two, and one
    module that `quantize_model` swaps for an Int8/Int4/Fp8 linear by its name."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False, device=device, dtype=dtype)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class SparseMoeBlock(nn.Module):
    """Router + experts (+ Qwen2-MoE's gated shared expert), x [..., hidden] -> same shape.

    Storage: `experts` is an `nn.ModuleList` of `ExpertMLP`s rather than stacked 3-D tensors, so
    the unchanged `quantize_model` quantizes experts like any other linear (names
    `...experts.<e>.gate_up_proj` / `.down_proj`; skip patterns work on them) and inferd's 2-D
    quantized kernels run them. Dispatch: the flat top-k assignment is argsorted once, so each
    expert's tokens form one contiguous slice; each active expert runs once on its slice; the
    weighted rows are added back with one `index_add_`. torch's CPU `_grouped_mm` over stacked
    3-D weights gives the same numbers; in benchmarks/bench_moe.py (Qwen3-30B-A3B's layer scaled
    down, fp32, one thread, a shared 2-core EPYC) it matched this loop at batch 1 and 256-token
    prefill and ran ~1.2x faster at 32-row decode, but it takes no quantized weights, and int8
    experts through this loop ran 1.5-2.4x faster than either in the same run.
    """

    def __init__(self, config: MoeConfig, layer_idx: int = 0, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        h, e = config.hidden_size, config.num_experts
        self.gate = RouterLinear(h, e, device=device, dtype=dtype)
        self.experts = nn.ModuleList(
            ExpertMLP(h, config.expert_intermediate_size, device=device, dtype=dtype) for _ in range(e))
        self.shared_expert: ExpertMLP | None = None
        self.shared_expert_gate: RouterLinear | None = None
        if config.shared_expert_intermediate_size:
            self.shared_expert = ExpertMLP(h, config.shared_expert_intermediate_size, device=device, dtype=dtype)
            self.shared_expert_gate = RouterLinear(h, 1, device=device, dtype=dtype)
        # Tokens routed to each expert since build or reset (one per token and chosen expert, so
        # the sum is top_k x tokens). Not persistent: a metric, not a weight.
        self.register_buffer("expert_tokens", torch.zeros(e, dtype=torch.int64, device=device), persistent=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, k], experts [T, k]) exactly as transformers' TopKRouter: logits in x's
        dtype, softmax in float32 over all experts, top-k, optional renormalisation, then (Qwen)
        back to the logits' dtype or (Mixtral) left in float32."""
        logits = self.gate(x)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.config.top_k, dim=-1)
        if self.config.norm_topk_prob:
            weights /= weights.sum(dim=-1, keepdim=True)
        if not self.config.fp32_routing_weights:
            weights = weights.to(logits.dtype)
        return weights, experts

    def forward(self, x: torch.Tensor, counted_rows: int | None = None) -> torch.Tensor:
        """`counted_rows`: only the first rows are real tokens; the rest are a runner's padding
        rows (there to keep dense GEMMs on one kernel), which are neither routed nor counted and
        get no routed-expert output: each would otherwise pull in up to top_k experts' weights
        (a 1-token decode padded to 4 rows read 4x the experts). None: every row is real."""
        shape = x.shape
        x = x.reshape(-1, self.config.hidden_size)
        real = x if counted_rows is None or counted_rows >= x.shape[0] else x[:max(counted_rows, 0)]
        weights, experts = self.route(real)
        out = self._run_experts(real, weights, experts)
        if real.shape[0] < x.shape[0]:
            out = torch.cat([out, out.new_zeros(x.shape[0] - real.shape[0], x.shape[1])])
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            # transformers' order: shared output scaled by its sigmoid gate, then added.
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.reshape(shape)

    def _run_experts(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Grouped dispatch (and the count of tokens per expert). Rows are sorted by expert and
        added back in that order, so each token sums its experts' outputs in ascending expert
        order into zeros, as transformers' per-expert loop does."""
        out = torch.zeros_like(x)
        if x.shape[0] == 0:
            return out
        tokens = x.shape[0]
        # Choice-major (all first choices, then all second ...): within an expert, rows then come
        # in the order transformers' torch.where gives them, and BLAS may round a row differently
        # at another position in the slice (tail blocks), so this keeps fp32 results bitwise.
        flat = experts.t().reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.config.num_experts)
        self.expert_tokens += counts
        token_of = order % tokens  # source row of each sorted slot
        rows = x.index_select(0, token_of)
        parts: list[torch.Tensor] = []
        start = 0
        for expert, n in enumerate(counts.tolist()):
            if n:
                parts.append(self.experts[expert](rows[start:start + n]))
                start += n
        expert_out = parts[0] if len(parts) == 1 else torch.cat(parts)
        scaled = expert_out * weights.t().reshape(-1).index_select(0, order).unsqueeze(1)
        return out.index_add_(0, token_of, scaled.to(out.dtype))

    # ---- metrics ---------------------------------------------------------------------------
    def reset_expert_tokens(self) -> None:
        self.expert_tokens.zero_()

    # ---- loading ---------------------------------------------------------------------------
    def load_checkpoint(self, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
        """Load this block from a checkpoint's tensors (see `moe_state_dict`), casting to the
        block's dtype; any missing or misshapen tensor raises ValueError naming it."""
        state = moe_state_dict(tensors, prefix, self.config)
        own = self.state_dict()
        for name, t in state.items():
            if tuple(t.shape) != tuple(own[name].shape):
                raise ValueError(f"{prefix}: {name} has shape {tuple(t.shape)}, expected {tuple(own[name].shape)}")
        self.load_state_dict(state, strict=True)


# ---- checkpoint names ------------------------------------------------------------------------
_HF_EXPERT_NAMES = {  # per-expert HF names: (gate, up, down)
    "mixtral": ("w1", "w3", "w2"),
    "qwen": ("gate_proj", "up_proj", "down_proj"),
}


def _take(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tensors:
        raise ValueError(f"checkpoint tensor {name} missing")
    return tensors[name]


def _expert_stacks(tensors: Mapping[str, torch.Tensor], prefix: str,
                   cfg: MoeConfig) -> tuple[torch.Tensor, torch.Tensor] | list[tuple[torch.Tensor, ...]]:
    """Either fused stacks (gate_up [E, 2I, H], down [E, H, I]) or per-expert (gate, up, down)."""
    e = cfg.num_experts
    if f"{prefix}.experts.gate_up_proj" in tensors:  # transformers' in-memory layout
        return _take(tensors, f"{prefix}.experts.gate_up_proj"), _take(tensors, f"{prefix}.experts.down_proj")
    if f"{prefix}.ffn_gate_exps.weight" in tensors:  # GGUF 3-D: [E, I, H] x2, [E, H, I]
        gate, up = (_take(tensors, f"{prefix}.ffn_{p}_exps.weight") for p in ("gate", "up"))
        return torch.cat([gate, up], dim=1), _take(tensors, f"{prefix}.ffn_down_exps.weight")
    if f"{prefix}.ffn_gate.0.weight" in tensors:  # GGUF written before 3-D experts (old Mixtral files)
        return [tuple(_take(tensors, f"{prefix}.ffn_{p}.{i}.weight") for p in ("gate", "up", "down"))
                for i in range(e)]
    for names in _HF_EXPERT_NAMES.values():  # what save_pretrained writes
        if f"{prefix}.experts.0.{names[0]}.weight" in tensors:
            return [tuple(_take(tensors, f"{prefix}.experts.{i}.{n}.weight") for n in names) for i in range(e)]
    raise ValueError(f"no expert weights under {prefix!r} (looked for experts.gate_up_proj, "
                     "experts.<e>.w1/gate_proj, ffn_gate_exps, ffn_gate.<e>)")


def moe_state_dict(tensors: Mapping[str, torch.Tensor], prefix: str, cfg: MoeConfig) -> dict[str, torch.Tensor]:
    """`SparseMoeBlock` state dict from one layer's checkpoint tensors under `prefix`.

    Accepted names, detected per layer:
      HF as saved (transformers 5.23 `save_pretrained` reverts its fused experts to these):
        Mixtral `model.layers.N.block_sparse_moe` + gate.weight, experts.<e>.w1/w3/w2.weight;
        Qwen `model.layers.N.mlp` + gate.weight, experts.<e>.gate_proj/up_proj/down_proj.weight,
        shared_expert.{gate,up,down}_proj.weight, shared_expert_gate.weight
      HF fused (transformers' module state): experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]
      GGUF `blk.N` (float tensors, e.g. from `load_gguf_tensors`' dequantization):
        ffn_gate_inp.weight [E, H]; ffn_gate_exps/ffn_up_exps [E, I, H], ffn_down_exps [E, H, I]
        (or old per-expert ffn_gate.<e>.weight ...); ffn_{gate,up,down}_shexp.weight,
        ffn_gate_inp_shexp.weight [H]
    """
    gguf = f"{prefix}.ffn_gate_inp.weight" in tensors
    state = {"gate.weight": _take(tensors, f"{prefix}.{'ffn_gate_inp' if gguf else 'gate'}.weight")}
    experts = _expert_stacks(tensors, prefix, cfg)
    for i in range(cfg.num_experts):
        if isinstance(experts, tuple):
            gate_up, down = experts[0][i], experts[1][i]
        else:
            gate, up, down = experts[i]
            gate_up = torch.cat([gate, up], dim=0)
        state[f"experts.{i}.gate_up_proj.weight"] = gate_up
        state[f"experts.{i}.down_proj.weight"] = down
    if cfg.shared_expert_intermediate_size:
        if gguf:
            parts = [_take(tensors, f"{prefix}.ffn_{p}_shexp.weight") for p in ("gate", "up", "down")]
            shared_gate = _take(tensors, f"{prefix}.ffn_gate_inp_shexp.weight").reshape(1, -1)
        else:
            parts = [_take(tensors, f"{prefix}.shared_expert.{p}_proj.weight") for p in ("gate", "up", "down")]
            shared_gate = _take(tensors, f"{prefix}.shared_expert_gate.weight")
        state["shared_expert.gate_up_proj.weight"] = torch.cat(parts[:2], dim=0)
        state["shared_expert.down_proj.weight"] = parts[2]
        state["shared_expert_gate.weight"] = shared_gate
    return state


# ---- metrics accessor --------------------------------------------------------------------------
def moe_blocks(model: nn.Module) -> Iterator[SparseMoeBlock]:
    return (m for m in model.modules() if isinstance(m, SparseMoeBlock))


def expert_token_totals(model: nn.Module) -> dict[int, list[int]]:
    """{layer_idx: [tokens routed to expert 0, 1, ...]} for every MoE block in `model`, since build
    or `reset_expert_tokens`: what `inferd_moe_expert_tokens_total{layer,expert}` exports. Reads
    the counters only (one small copy per layer); the server's /metrics reads them from its own
    thread, which is safe for monotonic int64 counters on CPU."""
    return {block.layer_idx: block.expert_tokens.tolist() for block in moe_blocks(model)}
