"""The machine's defaults: `auto` dtype and quantization resolve to the fastest settings that lose
nothing against the file, explicit settings always win, and one log line says why."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from gguf import GGMLQuantizationType as Q

from inferd.config import ModelConfig
from inferd.model.defaults import (
    Checkpoint,
    Machine,
    choose_defaults,
    describe_gguf,
    describe_safetensors,
    machine_defaults,
)
from inferd.model.loader import load_model

AVX2 = Machine("cpu", native_bf16=False, isa="avx2", exact_gguf_kernels=True)
AMX = Machine("cpu", native_bf16=True, isa="amx (+avx512_bf16, amx_bf16)", exact_gguf_kernels=True)
CUDA = Machine("cuda")
AUTO = ModelConfig()


def fake_gguf(types: dict[str, Q], layers: int = 2) -> SimpleNamespace:
    """An open GGUF file as describe_gguf reads it: tensor names and types only."""
    tensors = [SimpleNamespace(name=name, ggml_type=int(t)) for name, t in types.items() if "." in name
               and not name.startswith("blk.")]
    for i in range(layers):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            t = types.get(part, types["layers"])
            tensors.append(SimpleNamespace(name=f"blk.{i}.{part}.weight", ggml_type=int(t)))
        tensors.append(SimpleNamespace(name=f"blk.{i}.attn_norm.weight", ggml_type=int(Q.F32)))
    return SimpleNamespace(tensors=tensors)


# The bundled model's layout: Q4_1 layers, a tied Q8_0 token_embd as the head.
SMOLLM2 = describe_gguf(fake_gguf({"layers": Q.Q4_1, "token_embd.weight": Q.Q8_0}), True, "smollm2-135m")
BF16 = Checkpoint("tiny", gguf=False, float_dtype=torch.bfloat16)
FP16 = Checkpoint("tiny", gguf=False, float_dtype=torch.float16)
FP32 = Checkpoint("tiny", gguf=False, float_dtype=torch.float32)


def settings(choice) -> tuple:
    return choice.dtype, choice.quantization, choice.quant_lm_head


# ---- the policy -------------------------------------------------------------------------------

@pytest.mark.parametrize("machine", [AVX2, AMX], ids=["avx2", "native-bf16"])
def test_gguf_runs_its_own_blocks_where_inferds_exact_kernels_are_built(machine):
    choice = choose_defaults(AUTO, SMOLLM2, machine)
    assert settings(choice) == ("bfloat16", "gguf", True)
    assert choice.reason == ("inferd: smollm2-135m is a GGUF (Q4_1 layers, Q8_0 head): running its own blocks "
                             "(--quantization gguf --quant-lm-head); override with --quantization none "
                             "--dtype float32")


@pytest.mark.parametrize("machine,dtype", [(AVX2, "float32"), (AMX, "bfloat16")], ids=["avx2", "native-bf16"])
def test_gguf_without_the_exact_kernels_is_dequantized_like_a_16_bit_checkpoint(machine, dtype):
    """torch's fallback int4 kernels round the file's fp16 scales to bf16: not the file any more."""
    choice = choose_defaults(AUTO, SMOLLM2, replace(machine, exact_gguf_kernels=False))
    assert settings(choice) == (dtype, "none", False)
    assert "exact block kernels are not built here" in choice.reason
    assert "--quantization gguf --quant-lm-head" in choice.reason


@pytest.mark.parametrize("ckpt", [BF16, FP16], ids=["bf16", "fp16"])
def test_16_bit_checkpoint_computes_in_bf16_only_where_the_cpu_has_native_bf16(ckpt):
    slow = choose_defaults(AUTO, ckpt, AVX2)
    assert settings(slow) == ("float32", "none", False)
    assert slow.reason.startswith("inferd: this CPU has no native bf16 (AVX2): computing tiny's ")
    assert slow.reason.endswith(" weights in float32; --dtype bfloat16 to override")
    fast = choose_defaults(AUTO, ckpt, AMX)
    assert settings(fast) == ("bfloat16", "none", False)
    assert "this CPU has native bf16 (AMX (+AVX512_BF16, AMX_BF16))" in fast.reason
    assert fast.reason.endswith("--dtype float32 to override")


@pytest.mark.parametrize("machine", [AVX2, AMX], ids=["avx2", "native-bf16"])
def test_fp32_checkpoint_computes_in_fp32(machine):
    choice = choose_defaults(AUTO, FP32, machine)
    assert settings(choice) == ("float32", "none", False)
    assert "holds float32 weights" in choice.reason


@pytest.mark.parametrize("cfg,ckpt,machine,expected", [
    (ModelConfig(dtype="float32"), SMOLLM2, AVX2, ("float32", "none", False)),  # parity with fp32
    (ModelConfig(dtype="bfloat16"), SMOLLM2, AVX2, ("bfloat16", "none", False)),
    (ModelConfig(dtype="bfloat16"), FP32, AVX2, ("bfloat16", "none", False)),
    (ModelConfig(dtype="float32"), BF16, AMX, ("float32", "none", False)),
    (ModelConfig(quantization="none"), SMOLLM2, AVX2, ("float32", "none", False)),
    (ModelConfig(quantization="none"), SMOLLM2, AMX, ("bfloat16", "none", False)),
    (ModelConfig(quantization="int8"), FP32, AVX2, ("bfloat16", "int8", False)),
    (ModelConfig(quantization="gguf"), SMOLLM2, replace(AVX2, exact_gguf_kernels=False),
     ("bfloat16", "gguf", False)),
    (ModelConfig(quantization="gguf", quant_lm_head=True, dtype="float32"), SMOLLM2, AVX2,
     ("float32", "gguf", True)),
    (ModelConfig(quant_lm_head="int8"), SMOLLM2, AVX2, ("float32", "none", "int8")),
], ids=["dtype-fp32-gguf", "dtype-bf16-gguf", "dtype-bf16-fp32-file", "dtype-fp32-native", "none-avx2",
        "none-native", "int8", "gguf-without-exact-kernels", "gguf-fp32-head", "head-method-alone"])
def test_explicit_settings_win(cfg, ckpt, machine, expected):
    assert settings(choose_defaults(cfg, ckpt, machine)) == expected


def test_explicit_dtype_says_how_to_get_the_files_blocks():
    choice = choose_defaults(ModelConfig(dtype="float32"), SMOLLM2, AVX2)
    assert choice.reason == ("inferd: smollm2-135m: computing its GGUF (Q4_1 layers, Q8_0 head) weights in "
                             "float32 as given (dequantized); --quantization gguf --quant-lm-head runs the "
                             "file's own blocks")


@pytest.mark.parametrize("ckpt", [SMOLLM2, BF16, FP16, FP32], ids=["gguf", "bf16", "fp16", "fp32"])
def test_cuda_keeps_bf16_without_quantization(ckpt):
    choice = choose_defaults(AUTO, ckpt, CUDA)
    assert settings(choice) == ("bfloat16", "none", False)
    assert "on CUDA" in choice.reason
    assert settings(choose_defaults(ModelConfig(dtype="float16"), ckpt, CUDA)) == ("float16", "none", False)
    assert settings(choose_defaults(ModelConfig(quantization="int4"), ckpt, CUDA)) == ("bfloat16", "int4", False)


# ---- the facts --------------------------------------------------------------------------------

def test_describe_gguf_reads_layer_and_head_types():
    assert SMOLLM2.gguf and SMOLLM2.has_blocks and SMOLLM2.float_dtype == torch.float16
    assert SMOLLM2.blocks_text() == "Q4_1 layers, Q8_0 head"
    # Q6_K is kept exactly (Q4_K_M's mix); IQ4_XS has no exact format and stays in float.
    mixed = describe_gguf(fake_gguf({"layers": Q.Q4_K, "ffn_down": Q.Q6_K, "output.weight": Q.IQ4_XS,
                                     "token_embd.weight": Q.Q4_K}), False, "m")
    assert mixed.head_type == "IQ4_XS"  # the untied head, not the embedding
    assert mixed.blocks_text() == "Q4_K/Q6_K layers, IQ4_XS head; IQ4_XS in bfloat16"
    floats = describe_gguf(fake_gguf({"layers": Q.F32, "token_embd.weight": Q.F32}), True, "f")
    assert not floats.has_blocks and floats.float_dtype == torch.float32
    assert settings(choose_defaults(AUTO, floats, AVX2)) == ("float32", "none", False)
    halves = describe_gguf(fake_gguf({"layers": Q.F16, "token_embd.weight": Q.F16}), True, "h")
    assert not halves.has_blocks and settings(choose_defaults(AUTO, halves, AVX2))[:2] == ("float32", "none")


def test_describe_safetensors_goes_by_the_bulk_of_the_weights():
    tensors = {"w": torch.zeros(64, 64, dtype=torch.bfloat16), "norm": torch.zeros(64)}
    assert describe_safetensors(tensors, "m").float_dtype == torch.bfloat16
    assert describe_safetensors({"w": torch.zeros(8, 8)}, "m").float_dtype == torch.float32


def test_the_bundled_gguf_is_described_from_its_header(bundled_gguf):
    from inferd.model.gguf_loader import open_gguf

    ckpt = describe_gguf(open_gguf(bundled_gguf), True, "smollm2-135m")
    assert (ckpt.layer_types, ckpt.head_type) == (SMOLLM2.layer_types, SMOLLM2.head_type)


@pytest.mark.parametrize("built", [True, False])
def test_machine_probe_asks_the_native_kernels_for_exact_blocks(monkeypatch, built):
    from inferd.kernels import cpu_isa, cpu_ops

    monkeypatch.setattr(cpu_isa, "has_native_bf16", lambda: False)
    monkeypatch.setattr(cpu_ops, "available", lambda: built)
    monkeypatch.setattr(cpu_ops, "ops", lambda: SimpleNamespace(int4_mm_built=lambda: True))
    choice = machine_defaults(AUTO, SMOLLM2, torch.device("cpu"))
    assert settings(choice) == (("bfloat16", "gguf", True) if built else ("float32", "none", False))
    # Only a GGUF with blocks under `auto` asks the kernels (which may build them).
    monkeypatch.setattr(cpu_ops, "available", lambda: pytest.fail("probed the kernels needlessly"))
    assert machine_defaults(AUTO, BF16, torch.device("cpu")).dtype == "float32"
    assert machine_defaults(ModelConfig(dtype="float32"), SMOLLM2, torch.device("cpu")).quantization == "none"


# ---- through load_model, LLM and the CLI --------------------------------------------------------

def _converted(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        save_file({k: v.to(dtype) for k, v in load_file(str(f)).items()}, str(f), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def tiny_bf16(tiny_llama, tmp_path_factory) -> Path:
    return _converted(tiny_llama, tmp_path_factory.mktemp("tiny_bf16") / "tiny_bf16", torch.bfloat16)


@pytest.mark.parametrize("native", [False, True], ids=["avx2", "native-bf16"])
def test_load_model_resolves_auto_for_a_bf16_checkpoint_and_logs_why(tiny_bf16, monkeypatch, caplog, native):
    from inferd.kernels import cpu_isa

    monkeypatch.setattr(cpu_isa, "has_native_bf16", lambda: native)
    caplog.set_level(logging.INFO, logger="inferd.model.loader")
    loaded = load_model(ModelConfig(model=str(tiny_bf16), device="cpu"))
    assert loaded.dtype == (torch.bfloat16 if native else torch.float32)
    assert loaded.config.dtype == ("bfloat16" if native else "float32")
    assert loaded.config.quantization == "none" and loaded.quant_report is None
    lines = [r.getMessage() for r in caplog.records if r.name == "inferd.model.loader"]
    assert lines == [loaded.choice.reason]
    assert ("this CPU has native bf16" if native else "this CPU has no native bf16") in lines[0]
    assert "tiny_bf16's bfloat16 weights" in lines[0]


def test_llm_default_on_an_fp32_checkpoint_is_fp32_even_with_native_bf16(tiny_llama, monkeypatch):
    from inferd import LLM
    from inferd.kernels import cpu_isa

    monkeypatch.setattr(cpu_isa, "has_native_bf16", lambda: True)
    llm = LLM(str(tiny_llama), kv_cache_memory=0.02, device="cpu")
    assert llm.engine.loaded.dtype == torch.float32
    assert llm.engine.config.model.dtype == "auto"  # the request; the loaded model holds the answer
    assert llm.engine.loaded.config.quantization == "none"


def test_explicit_dtype_beats_the_machine(tiny_bf16, monkeypatch):
    from inferd.kernels import cpu_isa

    monkeypatch.setattr(cpu_isa, "has_native_bf16", lambda: False)
    assert load_model(ModelConfig(model=str(tiny_bf16), dtype="bfloat16")).dtype == torch.bfloat16
    monkeypatch.setattr(cpu_isa, "has_native_bf16", lambda: True)
    assert load_model(ModelConfig(model=str(tiny_bf16), dtype="float32")).dtype == torch.float32


def test_cli_defaults_are_auto_and_none_stays_possible():
    from inferd.cli import build_parser
    from inferd.engine_args import engine_config_from_args

    args = build_parser().parse_args(["generate", "--prompt", "hi"])
    assert (args.dtype, args.quantization) == ("auto", "auto")
    model = engine_config_from_args(args).model
    assert (model.dtype, model.quantization, model.quant_lm_head) == ("auto", "auto", False)
    args = build_parser().parse_args(["generate", "--prompt", "hi", "--quantization", "none", "--dtype", "float32"])
    assert (engine_config_from_args(args).model.quantization, args.dtype) == ("none", "float32")
    serve = build_parser().parse_args(["serve"])
    assert (serve.dtype, serve.quantization) == ("auto", "auto")


@pytest.mark.slow
def test_bundled_model_default_matches_the_machine(monkeypatch):
    """No flags: the bundled GGUF runs its own blocks where the exact kernels are built, else
    its dequantized weights in the CPU's dtype."""
    from inferd import LLM
    from inferd.kernels import cpu_isa, cpu_ops

    llm = LLM("smollm2-135m", kv_cache_memory=0.1, device="cpu")
    loaded = llm.engine.loaded
    if cpu_ops.available() and cpu_ops.ops().int4_mm_built():
        assert loaded.dtype == torch.bfloat16 and loaded.quant_report.method == "gguf"
        assert "lm_head" in loaded.quant_report.quantized and not loaded.quant_report.skipped
    else:
        assert loaded.quant_report is None
        assert loaded.dtype == (torch.bfloat16 if cpu_isa.has_native_bf16() else torch.float32)
