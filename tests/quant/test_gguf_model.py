"""`keep_gguf_blocks` on a file mixing block types: fused parts in different formats become one
exact module, and a type with no exact format keeps its float weight with a log line."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from torch import nn

from inferd.model.gguf_reader import GGUFTensor
from inferd.quant import kernels
from inferd.quant.gguf_model import keep_gguf_blocks
from tests.quant.test_gguf_blocks import random_blocks

HIDDEN, KV, FFN = 256, 64, 512
# One layer in the spirit of a Q4_K_M file: q, k Q4_K with a Q6_K v; o in a type inferd has no
# exact format for (IQ4_NL); gate/up Q5_0; down Q2_K.
TYPES = {"attn_q": (Q.Q4_K, HIDDEN, HIDDEN), "attn_k": (Q.Q4_K, KV, HIDDEN), "attn_v": (Q.Q6_K, KV, HIDDEN),
         "attn_output": (Q.IQ4_NL, HIDDEN, HIDDEN), "ffn_gate": (Q.Q5_0, FFN, HIDDEN),
         "ffn_up": (Q.Q5_0, FFN, HIDDEN), "ffn_down": (Q.Q2_K, HIDDEN, FFN)}


def _raw(qtype: Q, n: int, k: int, seed: int) -> np.ndarray:
    if qtype == Q.IQ4_NL:  # never decoded here: any bytes of the right size
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return np.zeros((n, k // block * size), dtype=np.uint8)
    return random_blocks(qtype, n, k, seed)


@pytest.fixture
def mixed_file():
    tensors = [GGUFTensor(f"blk.0.{p}.weight", (n, k), int(t), _raw(t, n, k, i))
               for i, (p, (t, n, k)) in enumerate(TYPES.items())]
    layer = nn.Module()
    layer.self_attn, layer.mlp = nn.Module(), nn.Module()
    layer.self_attn.qkv_proj = nn.Linear(HIDDEN, HIDDEN + 2 * KV, bias=False)
    layer.self_attn.o_proj = nn.Linear(HIDDEN, HIDDEN, bias=False)
    layer.mlp.gate_up_proj = nn.Linear(HIDDEN, 2 * FFN, bias=False)
    layer.mlp.down_proj = nn.Linear(FFN, HIDDEN, bias=False)
    model = nn.Module()
    model.model = nn.Module()
    model.model.layers = nn.ModuleList([layer])
    arch = SimpleNamespace(num_layers=1, architecture="gemma3", num_heads=4, num_kv_heads=1,
                           tie_word_embeddings=False)
    return model, SimpleNamespace(tensors=tensors), arch, {t.name: t for t in tensors}


def _reference(tensors: dict, parts: tuple[str, ...]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([gguf.quants.dequantize(tensors[f"blk.0.{p}.weight"].data,
                                                                   tensors[f"blk.0.{p}.weight"].ggml_type)
                                            for p in parts]))


def test_mixed_file_keeps_what_it_can_exactly(mixed_file, caplog) -> None:
    if kernels.int4_shape_problem(16, 256, 16, torch.device("cpu")):
        pytest.skip("group-16 layers need inferd's CPU tile kernels, not in use here")
    model, reader, arch, tensors = mixed_file
    float_o = model.model.layers[0].self_attn.o_proj
    with caplog.at_level(logging.INFO, logger="inferd.quant.gguf_model"):
        report = keep_gguf_blocks(model, reader, arch)
    prefix = "model.layers.0."
    assert sorted(report.quantized) == sorted(prefix + m for m in
                                              ("self_attn.qkv_proj", "mlp.gate_up_proj", "mlp.down_proj"))
    assert "IQ4_NL" in report.skipped[prefix + "self_attn.o_proj"]
    assert model.model.layers[0].self_attn.o_proj is float_o
    assert "o_proj keeps its dequantized float weight" in caplog.text
    assert "Q6_K -> int8 g16" in caplog.text
    layer = model.model.layers[0]
    x = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(0))
    for module, parts in ((layer.self_attn.qkv_proj, ("attn_q", "attn_k", "attn_v")),
                          (layer.mlp.gate_up_proj, ("ffn_gate", "ffn_up"))):
        ref = x.double() @ _reference(tensors, parts).double().t()
        err = (module(x).double() - ref).abs().max()
        assert err <= 2e-2 * ref.abs().max(), (parts, float(err))
    assert layer.self_attn.qkv_proj.symmetric is False  # Q4_K's mins came along exactly
