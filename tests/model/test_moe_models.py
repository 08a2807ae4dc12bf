"""Mixtral, Qwen3-MoE and Qwen2-MoE models compute what transformers computes, from safetensors and
from GGUF; the engine batches them (chunked prefill included); int8 / int4 / GGUF-block experts;
the native CPU stack refuses them, saying why; expert token counts reach /metrics without the
runner's padding rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q

from inferd import LLM, SamplingParams
from inferd.config import ModelConfig
from inferd.model.gguf_reader import GGUFFile
from inferd.model.loader import load_model
from inferd.model.moe import RouterLinear, SparseMoeBlock, expert_token_totals
from inferd.quant.gguf_blocks import from_gguf_expert_blocks
from inferd.quant.linear import QuantLinear, linear_from_quantized
from inferd.quant.registry import quantize
from inferd.serve.metrics import ServerMetrics
from tests.helpers import forward_logits
from tests.model.test_new_architectures import BOUND, PROMPTS, check_parity
from tests.model.tiny_checkpoints import make_checkpoint
from tests.model.tiny_gguf import write_moe_gguf
from tests.quant.test_gguf_blocks import random_blocks
from tests.serve.helpers import metric_value
from tests.serve.test_metrics import fake_engine

KINDS = ("mixtral", "qwen3_moe", "qwen2_moe")
CANONICAL = {"mixtral": "mixtral", "qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe"}
TOP_K = 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    """checkpoint(kind, **overrides) -> a saved tiny checkpoint, built once per module."""
    made: dict[str, Path] = {}

    def get(kind: str, seed: int = 31, **overrides) -> Path:
        key = f"{kind}-{seed}-{sorted(overrides.items())}"
        if key not in made:
            made[key] = make_checkpoint(tmp_path_factory.mktemp(kind), kind, tokenizer_dir, seed=seed, **overrides)
        return made[key]
    return get


def moe_blocks_of(model: torch.nn.Module) -> list[SparseMoeBlock]:
    return [m for m in model.modules() if isinstance(m, SparseMoeBlock)]


# ---- parity with transformers -----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_matches_transformers_from_safetensors(kind, checkpoint):
    """fp32 logits within BOUND and 40 greedy tokens equal, three prompts (check_parity)."""
    path = checkpoint(kind)
    loaded = load_model(ModelConfig(model=str(path), dtype="float32"))
    assert loaded.arch.architecture == CANONICAL[kind]
    expected_layers = (0, 2) if kind == "qwen3_moe" else (0, 1)  # Qwen3-MoE's layer 1 is dense
    assert loaded.arch.moe_layers == expected_layers
    assert [i for i, layer in enumerate(loaded.model.model.layers)
            if isinstance(layer.mlp, SparseMoeBlock)] == list(expected_layers)
    check_parity(path, greedy_tokens=40)


@pytest.mark.parametrize("expert_type", [None, Q.Q8_0], ids=["f32", "q8_0"])
def test_qwen3_moe_gguf_matches_transformers_loading_the_gguf(expert_type, checkpoint, tmp_path):
    """The same GGUF file through inferd and through transformers' GGUF loader. transformers 5.23
    reads no `expert_feed_forward_length` and no dense layers for qwen3moe GGUF, so it gets the
    checkpoint's config and an all-sparse model."""
    directory = checkpoint("qwen3_moe", seed=32, mlp_only_layers=[])
    path = write_moe_gguf(directory, tmp_path / "tiny-qwen3moe.gguf", expert_type)
    loaded = load_model(ModelConfig(model=str(path), dtype="float32", quantization="none"))
    assert (loaded.arch.architecture, loaded.arch.moe_layers) == ("qwen3moe", (0, 1, 2))
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, config=transformers.AutoConfig.from_pretrained(str(directory)),
        dtype=torch.float32).eval()
    llm = LLM(str(path), dtype="float32", quantization="none", kv_cache_memory=0.05)
    for prompt in PROMPTS:
        ids = loaded.tokenizer.encode(prompt)
        with torch.no_grad():
            theirs = ref(torch.tensor([ids])).logits[0]
            want = ref.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, len(ids):].tolist()
        assert (forward_logits(loaded.model, ids) - theirs).abs().max() < BOUND
        got = llm.generate([ids], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0].outputs[0]
        assert got.token_ids == want, prompt


@pytest.mark.parametrize("kind", KINDS)
def test_gguf_layouts_match_safetensors_reference(kind, checkpoint, tmp_path):
    """llama.cpp's layout of each: Mixtral as `llama` + expert_count (q/k permuted), Qwen2-MoE's
    shared expert, Qwen3-MoE with a dense layer among sparse ones (found by its tensors)."""
    directory = checkpoint(kind)
    path = write_moe_gguf(directory, tmp_path / f"{kind}.gguf")
    loaded = load_model(ModelConfig(model=str(path), dtype="float32", quantization="none"))
    assert loaded.arch.architecture == CANONICAL[kind]
    assert loaded.arch.moe_layers == ((0, 2) if kind == "qwen3_moe" else (0, 1))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    ids = loaded.tokenizer.encode(PROMPTS[1])
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits[0]
    assert (forward_logits(loaded.model, ids) - theirs).abs().max() < BOUND


# ---- the engine -------------------------------------------------------------------------------
def test_batched_chunked_generation_and_expert_counts(checkpoint):
    """Several prompts at once, prefill in 8-token chunks beside decodes: each continuation is
    transformers' own; the counters saw every real token once per chosen expert and no padding
    row (decode steps of one sequence run padded to 4 rows)."""
    path = checkpoint("qwen2_moe")
    llm = LLM(str(path), dtype="float32", kv_cache_memory=0.05, max_num_batched_tokens=8,
              enable_prefix_caching=False)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    model = llm.engine.runner.model
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outs = llm.generate(prompts, params)
    for ids, out in zip(prompts, outs, strict=True):
        with torch.no_grad():
            want = ref.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, len(ids):].tolist()
        assert out.outputs[0].token_ids == want
    fed = sum(len(ids) + 24 - 1 for ids in prompts)  # the last sampled token is never fed back
    totals = expert_token_totals(model)
    assert sorted(totals) == [0, 1]
    assert all(sum(counts) == TOP_K * fed for counts in totals.values()), totals
    # One prompt alone: its decode steps are padded (1 real row of 4) and must count 1 row each.
    for block in moe_blocks_of(model):
        block.reset_expert_tokens()
    llm.generate([prompts[0]], params)
    assert all(sum(c) == TOP_K * (len(prompts[0]) + 23) for c in expert_token_totals(model).values())


def test_native_stack_refuses_moe_layers_and_says_why(checkpoint, caplog):
    with caplog.at_level(logging.INFO, logger="inferd.kernels.native_stack"):
        llm = LLM(str(checkpoint("mixtral")), dtype="float32", kv_cache_memory=0.05)
    assert llm.engine.runner.model.native_stack is None
    assert "'mlp': 'sparse-moe'" in caplog.text


def test_metrics_export_expert_token_counts(checkpoint):
    llm = LLM(str(checkpoint("mixtral")), dtype="float32", kv_cache_memory=0.05)
    llm.generate([llm.tokenizer.encode(PROMPTS[0])], SamplingParams(temperature=0, max_tokens=4))
    totals = expert_token_totals(llm.engine.runner.model)
    engine = fake_engine()
    engine.engine.loaded = SimpleNamespace(device=torch.device("cpu"), model=llm.engine.loaded.model)
    metrics = ServerMetrics()
    metrics.attach("tiny-moe", engine)
    text = metrics.render()[0].decode()
    for layer, counts in totals.items():
        for expert, n in enumerate(counts):
            assert metric_value(text, "inferd_moe_expert_tokens_total", model="tiny-moe", layer=str(layer),
                                expert=str(expert)) == n
    assert sum(sum(c) for c in totals.values()) > 0
    dense = ServerMetrics()
    dense.attach("dense", fake_engine())
    assert "inferd_moe_expert_tokens" not in dense.render()[0].decode()


# ---- quantization -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_quantized_experts(kind, method, checkpoint):
    """--quantization int8/int4 swaps every expert (and the shared expert); routers stay float; the
    model then computes what the float model with those weights dequantized computes (up to the
    kernels' activation rounding)."""
    path = checkpoint(kind)
    llm = LLM(str(path), dtype="float32", quantization=method, kv_cache_memory=0.05)
    model, report, cfg = llm.engine.loaded.model, llm.engine.loaded.quant_report, llm.engine.loaded.config
    ref = load_model(ModelConfig(model=str(path), dtype="float32"))
    with torch.no_grad():
        for name in report.quantized:
            weight = ref.model.get_submodule(name).weight
            weight.copy_(quantize(weight, method, group_size=cfg.quant_group_size,
                                  symmetric=cfg.quant_symmetric).dequantize())
    for i in (0, 1):
        experts = [f"model.layers.{i}.mlp.experts.{e}.{p}" for e in range(8) for p in ("gate_up_proj", "down_proj")]
        if kind == "qwen2_moe":
            experts += [f"model.layers.{i}.mlp.shared_expert.{p}" for p in ("gate_up_proj", "down_proj")]
        assert set(experts) <= set(report.quantized)
        assert all(isinstance(model.get_submodule(n), QuantLinear) for n in experts)
        block = model.model.layers[i].mlp
        assert isinstance(block.gate, RouterLinear) and block.gate.weight.dtype == torch.float32
    ids = llm.tokenizer.encode(PROMPTS[0])
    want, got = forward_logits(ref.model, ids), forward_logits(model, ids)
    assert (got - want).abs().max() < 0.02 * want.abs().max()
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    out = llm.generate([ids], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) == 8


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q6_K])
def test_expert_blocks_are_bit_exact(qtype):
    """One expert's rows of a 3-D stack, converted, dequantize to gguf's own numbers bit for bit."""
    experts, n, k = 4, 32, 256
    raw = random_blocks(qtype, experts * n, k, seed=int(qtype))
    want = gguf.quants.dequantize(raw, qtype).reshape(experts, n, k)
    for e in range(experts):
        got = from_gguf_expert_blocks(raw, qtype, (experts, n, k), e).dequantize().numpy()
        assert np.array_equal(got, want[e]), e
    with pytest.raises(ValueError, match="out of range"):
        from_gguf_expert_blocks(raw, qtype, (experts, n, k), experts)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0])
def test_quantization_gguf_keeps_expert_blocks(qtype, checkpoint, tmp_path):
    """--quantization gguf: each expert runs from its own rows of the file's blocks (exactly the
    file's numbers), the F32 router stays float; results track the dequantized model."""
    kind = "qwen2_moe"
    path = write_moe_gguf(checkpoint(kind), tmp_path / "q.gguf", qtype)
    floats = load_model(ModelConfig(model=str(path), dtype="float32", quantization="none"))
    kept = load_model(ModelConfig(model=str(path), dtype="float32", quantization="gguf"))
    experts = {f"model.layers.{i}.mlp.experts.{e}.{p}" for i in (0, 1) for e in range(8)
               for p in ("gate_up_proj", "down_proj")}
    assert experts <= set(kept.quant_report.quantized)
    assert not any(".gate" in n and "gate_up" not in n for n in kept.quant_report.quantized)
    # Expert 5's module is built from expert 5's rows of the file (another expert's would differ).
    stack = next(t for t in GGUFFile(path).tensors if t.name == "blk.1.ffn_down_exps.weight")
    own = linear_from_quantized(from_gguf_expert_blocks(stack.data, stack.ggml_type, stack.shape, 5))
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    module = kept.model.get_submodule("model.layers.1.mlp.experts.5.down_proj")
    with torch.no_grad():
        assert torch.equal(module(x), own(x))
        assert not torch.equal(kept.model.get_submodule("model.layers.1.mlp.experts.4.down_proj")(x), own(x))
    ids = floats.tokenizer.encode(PROMPTS[2])
    ref = forward_logits(floats.model, ids)
    assert (forward_logits(kept.model, ids) - ref).abs().max() < 0.02 * ref.abs().max()
