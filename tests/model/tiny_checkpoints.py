"""Tiny random-weight Qwen3 and Gemma 3 checkpoints, saved by transformers itself.

Their norm weights are random too (not HF's 1 / 0 init), so that qk-norm and Gemma's (1 + w)
norms change the result and a mistake in them shows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import transformers

COMMON = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
# Gemma 3's own shape in miniature: sliding layers with a short window around one global layer,
# a query_pre_attn_scalar unlike head_dim, and rope scaling on the global layers only.
GEMMA3 = dict(num_hidden_layers=4, layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                                "sliding_attention"],
              sliding_window=8, query_pre_attn_scalar=24, tie_word_embeddings=True,
              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                               "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}})
QWEN3 = dict(num_hidden_layers=2, tie_word_embeddings=False)

_CLASSES = {"qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, 1.0),
            "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, 0.0)}


def make_checkpoint(out: Path, arch: str, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    config_cls, model_cls, norm_centre = _CLASSES[arch]
    settings = {**COMMON, **(GEMMA3 if arch == "gemma3" else QWEN3), **overrides}
    torch.manual_seed(seed)
    model = model_cls(config_cls(**settings)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
            else:  # norm weights around their neutral value (1, or 0 for Gemma's 1 + w)
                p.normal_(norm_centre, 0.2)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out
