"""Write a tiny MoE checkpoint (as `tiny_checkpoints.make_checkpoint` saves it) as a GGUF file, the
way llama.cpp's converter lays it out: `qwen3moe` / `qwen2moe`, or Mixtral as `llama` with
`llama.expert_count` and q/k rows permuted; experts as 3-D `ffn_{gate,up,down}_exps` stacks,
optionally quantized; the tokenizer copied from the bundled SmolLM2 GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.torch import load_file

from inferd.model.gguf_reader import GGUFFile
from inferd.model.registry import resolve_model_path

GGUF_ARCH = {"mixtral": "llama", "qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe"}
_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
          "mlp.gate": "ffn_gate_inp", "block_sparse_moe.gate": "ffn_gate_inp",
          "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
          "mlp.shared_expert.down_proj": "ffn_down_shexp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation for its interleaved rope (what inferd's loader undoes)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(directory: Path, cfg: dict, model_type: str) -> dict[str, np.ndarray]:
    sd = {k: v.float().numpy() for k, v in load_file(str(directory / "model.safetensors")).items()}
    out = {"token_embd.weight": sd.pop("model.embed_tokens.weight"), "output_norm.weight": sd.pop("model.norm.weight"),
           "output.weight": sd.pop("lm_head.weight")}
    experts: dict[tuple[int, str], dict[int, np.ndarray]] = {}
    for name, value in sd.items():
        _, _, layer, rest = name.split(".", 3)
        rest = rest.removesuffix(".weight").removesuffix(".bias")
        kind = name.rsplit(".", 1)[1]
        if ".experts." in rest:  # <block>.experts.<e>.<proj>
            e, proj = rest.split(".experts.")[1].split(".")
            part = {"w1": "gate", "gate_proj": "gate", "w3": "up", "up_proj": "up", "w2": "down",
                    "down_proj": "down"}[proj]
            experts.setdefault((int(layer), part), {})[int(e)] = value
            continue
        gguf_name = _LAYER[rest]
        if model_type == "mixtral" and gguf_name in ("attn_q", "attn_k"):
            value = _permute(value, cfg["num_attention_heads"] if gguf_name == "attn_q" else cfg["num_key_value_heads"])
        if gguf_name == "ffn_gate_inp_shexp":
            value = value.reshape(-1)
        out[f"blk.{layer}.{gguf_name}.{kind}"] = value
    for (layer, part), by_expert in experts.items():
        out[f"blk.{layer}.ffn_{part}_exps.weight"] = np.stack([by_expert[e] for e in sorted(by_expert)])
    return out


def write_moe_gguf(directory: Path, out: Path, expert_type: gguf.GGMLQuantizationType | None = None) -> Path:
    """The checkpoint in `directory` as GGUF at `out`; expert stacks in `expert_type` (None: F32)."""
    cfg = json.loads((directory / "config.json").read_text())
    model_type = cfg["model_type"]
    arch = GGUF_ARCH[model_type]
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(f"tiny-{model_type}")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_key_length(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    writer.add_value_length(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_expert_count(cfg.get("num_experts") or cfg["num_local_experts"])
    writer.add_expert_used_count(cfg["num_experts_per_tok"])
    if model_type != "mixtral":
        writer.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if cfg.get("shared_expert_intermediate_size"):
        writer.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    _add_tokenizer(writer)
    for name, value in _tensors(directory, cfg, model_type).items():
        if expert_type is not None and "_exps." in name:
            writer.add_tensor(name, gguf.quants.quantize(value, expert_type), raw_dtype=expert_type)
        else:
            writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_tokenizer(writer: gguf.GGUFWriter) -> None:
    """The bundled SmolLM2 file's BPE tokenizer (same vocabulary as the tiny checkpoints)."""
    src = GGUFFile(resolve_model_path("smollm2-135m"))
    writer.add_tokenizer_model(src.get("tokenizer.ggml.model"))
    writer.add_tokenizer_pre(src.get("tokenizer.ggml.pre") or "default")
    writer.add_token_list(list(src.get("tokenizer.ggml.tokens")))
    writer.add_token_types([int(t) for t in src.get("tokenizer.ggml.token_type")])
    writer.add_token_merges(list(src.get("tokenizer.ggml.merges")))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
