"""--quantization is applied at load time: the right modules are swapped, skips and the LM head
are honoured, and the GGUF mode keeps the file's own blocks (same logits as the float copy)."""

from __future__ import annotations

import pytest
import torch

from inferd import LLM, SamplingParams
from inferd.config import ModelConfig
from inferd.model.loader import load_model
from inferd.quant import Int4Linear, Int8Linear
from tests.helpers import forward_logits


def test_int8_at_load_time_with_skip_and_head(tiny_llama):
    loaded = load_model(ModelConfig(model=str(tiny_llama), dtype="bfloat16", quantization="int8",
                                    quant_skip=("model.layers.0.*",), quant_lm_head=True))
    m = loaded.model
    assert isinstance(m.model.layers[1].self_attn.qkv_proj, Int8Linear)
    assert isinstance(m.model.layers[1].mlp.gate_up_proj, Int8Linear)
    assert isinstance(m.model.layers[0].self_attn.qkv_proj, torch.nn.Linear)
    assert "model.layers.0.self_attn.qkv_proj" in loaded.quant_report.skipped
    assert isinstance(m.lm_head, Int8Linear)


def test_quantized_engine_generates(tiny_llama):
    llm = LLM(str(tiny_llama), dtype="bfloat16", quantization="int4", quant_group_size=32,
              kv_cache_memory=0.02)
    assert isinstance(llm.engine.loaded.model.model.layers[0].mlp.down_proj, Int4Linear)
    out = llm.generate([[5, 6, 7, 8] * 4], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 8


def test_gguf_mode_needs_a_gguf_file(tiny_llama):
    from inferd.model.errors import ModelLoadError

    with pytest.raises((ValueError, ModelLoadError), match="gguf"):
        load_model(ModelConfig(model=str(tiny_llama), quantization="gguf"))


@pytest.mark.slow
def test_gguf_mode_keeps_the_files_blocks_exactly():
    base = load_model(ModelConfig(dtype="bfloat16"))
    kept = load_model(ModelConfig(dtype="bfloat16", quantization="gguf"))
    report = kept.quant_report
    assert len(report.quantized) == 4 * base.arch.num_layers and not report.skipped
    assert isinstance(kept.model.model.layers[3].self_attn.qkv_proj, Int4Linear)
    # The blocks hold exactly the values the float copy was dequantized from; only bf16 rounding
    # inside the kernels separates the two.
    ids = base.tokenizer.encode("The capital of France is")
    a, b = forward_logits(base.model, ids), forward_logits(kept.model, ids)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert (a - b).abs().max().item() < 1.0


@pytest.mark.slow
def test_gguf_mode_with_head_keeps_the_files_head_blocks():
    """--quantization gguf --quant-lm-head: the head comes from the file's own (tied) token_embd
    blocks, as llama.cpp runs it; the embedding looks up the same values (from the head's own
    int8 tiles where those are built, else from its float copy)."""
    base = load_model(ModelConfig(dtype="float32"))
    kept = load_model(ModelConfig(dtype="float32", quantization="gguf", quant_lm_head=True))
    table = base.model.model.embed_tokens.weight  # the float table *is* the dequantized file
    head, embed = kept.model.lm_head, kept.model.model.embed_tokens
    assert "lm_head" in kept.quant_report.quantized and not isinstance(head, torch.nn.Linear)
    assert head.weight_bytes < table.numel() * 2  # 8 bits or fewer a weight, not a float copy
    x = torch.randn(3, table.shape[1])
    ref = x.double() @ table.double().T
    err = (head(x).double() - ref).abs().max() / ref.abs().max()
    assert err < 1e-2  # bf16 activations, scales and output only
    ids = torch.tensor([0, 1, 17, 4242, table.shape[0] - 1])
    assert torch.equal(embed(ids), table[ids])
    if isinstance(head, Int8Linear) and head.tiles is not None:
        assert embed.qweight is head.qweight, "the tied table reads the head's tiles: one copy"
        assert "shares its quantized storage" in kept.quant_report.tied["lm_head"]
    with pytest.raises(ValueError, match="takes no method"):
        load_model(ModelConfig(dtype="float32", quantization="gguf", quant_lm_head="int8"))


def test_lm_head_can_take_its_own_method(tiny_llama):
    """int4 layers with an int8 head: each module gets the method asked for, the tie holds."""
    loaded = load_model(ModelConfig(model=str(tiny_llama), dtype="bfloat16", quantization="int4",
                                    quant_group_size=32, quant_lm_head="int8"))
    m = loaded.model
    assert isinstance(m.model.layers[0].mlp.gate_up_proj, Int4Linear)
    assert isinstance(m.lm_head, Int8Linear)
    with pytest.raises(ValueError, match="LM-head quantization"):
        load_model(ModelConfig(model=str(tiny_llama), dtype="bfloat16", quantization="int4",
                               quant_group_size=32, quant_lm_head="int3"))


def test_quant_lm_head_flag_parses_with_and_without_a_method():
    import argparse

    from inferd.engine_args import add_quant_lm_head_flag, lm_head_setting

    p = argparse.ArgumentParser()
    add_quant_lm_head_flag(p)
    assert lm_head_setting(p.parse_args([]).quant_lm_head) is False
    assert lm_head_setting(p.parse_args(["--quant-lm-head"]).quant_lm_head) is True
    assert lm_head_setting(p.parse_args(["--quant-lm-head", "int8"]).quant_lm_head) == "int8"
    with pytest.raises(SystemExit):
        p.parse_args(["--quant-lm-head", "int3"])
