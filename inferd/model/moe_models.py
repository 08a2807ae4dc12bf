"""Mixture-of-experts decoders: Mixtral, Qwen3-MoE and Qwen2-MoE (with its shared expert).

Each is its dense sibling's layer (Llama; Qwen3 with qk-norm; Qwen2 with q/k/v bias) whose MLP is
inferd/model/moe.py's `SparseMoeBlock` in the layers the config names (`ArchConfig.moe_layers`;
Qwen's `mlp_only_layers` / `decoder_sparse_step` leave some dense). The block loads its own
weights, whatever the format calls them, and counts the tokens routed to each expert.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from inferd.kernels.attention import AttentionMetadata
from inferd.kernels.native_stack import LayerStructure
from inferd.model.arch import ArchConfig
from inferd.model.layers import Attention, GatedMLP, PreNormDecoderLayer, RMSNorm
from inferd.model.llama import LLAMA_GGUF_LAYER_NAMES, LlamaForCausalLM
from inferd.model.moe import SparseMoeBlock
from inferd.model.qwen3 import Qwen3ForCausalLM

# llama.cpp's MoE tensors keep their GGUF names under the layer's `mlp.`: SparseMoeBlock's
# loader (moe_state_dict) reads the GGUF layout from them, 3-D expert stacks included.
MOE_GGUF_LAYER_NAMES = {f"{name}.weight": f"mlp.{name}.weight" for name in (
    "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps",
    "ffn_gate_inp_shexp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")}
# HF prefixes of a layer's MoE block: Mixtral checkpoints say `block_sparse_moe`, Qwen ones `mlp`.
_HF_BLOCK_NAMES = ("block_sparse_moe", "mlp")


class MoeDecoderLayer(PreNormDecoderLayer):
    """The pre-norm layer; where its MLP is sparse, the block hears how many rows are real."""

    def mlp_forward(self, x: torch.Tensor, meta: AttentionMetadata, fused: bool) -> torch.Tensor:
        if isinstance(self.mlp, SparseMoeBlock):
            return self.mlp(x, counted_rows=meta.query_start[-1])
        return self.mlp(x, fused)

    def native_structure(self) -> LayerStructure:
        """Says "sparse-moe" for a sparse MLP, so the native stack's refusal names the reason:
        decoder_stack.cpp runs one dense gated MLP per layer, not a router and top-k experts."""
        structure = super().native_structure()
        return replace(structure, mlp="sparse-moe") if isinstance(self.mlp, SparseMoeBlock) else structure


def moe_or_dense_mlp(cfg: ArchConfig, layer_index: int) -> nn.Module:
    """The MLP of layer `layer_index`: the sparse block where the config puts one."""
    if cfg.moe is not None and layer_index in cfg.moe_layers:
        return SparseMoeBlock(cfg.moe, layer_index)
    return GatedMLP(cfg)


class MoeModelMixin:
    """Building MoE layers and loading their blocks, shared by the three architectures."""

    model: nn.Module
    config: ArchConfig
    qk_norm: type[RMSNorm] | None = None
    make_mlp = staticmethod(moe_or_dense_mlp)

    def build_layers(self, cfg: ArchConfig) -> list[nn.Module]:
        if cfg.moe is None:
            raise ValueError(f"{cfg.architecture}: the config describes no experts")
        return [MoeDecoderLayer(cfg, Attention(cfg, window=cfg.layer_window(i), qk_norm=self.qk_norm),
                                self.make_mlp(cfg, i))
                for i in range(cfg.num_layers)]

    def load_own_modules(self, tensors: dict[str, torch.Tensor]) -> set[str]:
        """Each sparse block from its layer's tensors (HF per-expert, HF fused or GGUF names),
        which are then removed; the counters start at zero (the model was built on `meta`)."""
        filled: set[str] = set()
        for i in self.config.moe_layers:
            block: SparseMoeBlock = self.model.layers[i].mlp
            base = f"model.layers.{i}"
            prefix = next((f"{base}.{n}" for n in _HF_BLOCK_NAMES
                           if f"{base}.{n}.gate.weight" in tensors or f"{base}.{n}.ffn_gate_inp.weight" in tensors),
                          f"{base}.mlp")
            block.load_checkpoint(tensors, prefix)
            for name in [n for n in tensors if n.startswith(prefix + ".")]:
                del tensors[name]
            block.reset_expert_tokens()
            filled |= {f"{base}.mlp.{n}" for n, _ in block.named_parameters()}
        return filled


class MixtralForCausalLM(MoeModelMixin, LlamaForCausalLM):
    """Mixtral: Llama attention (llama.cpp permutes its q/k rows; its GGUF architecture is `llama`
    with `llama.expert_count` > 0), a sparse block in every layer."""

    gguf_layer_names = {**LLAMA_GGUF_LAYER_NAMES, **MOE_GGUF_LAYER_NAMES}


class Qwen3MoeForCausalLM(MoeModelMixin, Qwen3ForCausalLM):
    """Qwen3-MoE: Qwen3's qk-norm attention; dense layers where `mlp_only_layers` says."""

    gguf_layer_names = {**Qwen3ForCausalLM.gguf_layer_names, **MOE_GGUF_LAYER_NAMES}
    qk_norm = RMSNorm


class Qwen2MoeForCausalLM(MoeModelMixin, LlamaForCausalLM):
    """Qwen2-MoE (Qwen1.5-MoE): q/k/v bias, and a sigmoid-gated shared expert beside the routed ones."""

    gguf_layer_names = {**LLAMA_GGUF_LAYER_NAMES, **MOE_GGUF_LAYER_NAMES}
    gguf_permuted_qk = False
