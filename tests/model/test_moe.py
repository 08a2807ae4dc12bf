"""SparseMoeBlock computes what transformers 5.23's Mixtral / Qwen3-MoE / Qwen2-MoE blocks compute.

The references are transformers' own `*SparseMoeBlock` classes with random weights (their eager
per-expert loop, and the grouped_mm path a loaded PreTrainedModel uses by default). fp32 must
match the eager loop bitwise (same GEMMs, rows and summation order); the grouped
dispatch must equal a naive per-token loop; quantized experts must match their dequantized weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from inferd.model.moe import (
    ExpertMLP,
    MoeConfig,
    SparseMoeBlock,
    expert_token_totals,
    is_moe_layer,
    moe_state_dict,
)
from inferd.quant.apply import quantize_model
from inferd.quant.linear import Int4Linear, Int8Linear
from inferd.quant.registry import quantize

HIDDEN, INTER, SHARED, EXPERTS, TOP_K = 64, 32, 48, 8, 2
# Qwen3-MoE checkpoints renormalise the top-k weights, Qwen1.5/2-MoE ones do not (config defaults).
KINDS = ("mixtral", "qwen3_moe", "qwen3_moe_unnormed", "qwen2_moe")


def hf_config(kind: str, hidden: int = HIDDEN, inter: int = INTER, shared: int = SHARED) -> dict:
    common = dict(vocab_size=64, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, num_experts_per_tok=TOP_K, hidden_act="silu")
    if kind == "mixtral":
        return dict(common, model_type="mixtral", intermediate_size=inter, num_local_experts=EXPERTS)
    cfg = dict(common, model_type=kind.removesuffix("_unnormed"), intermediate_size=4 * inter,
               moe_intermediate_size=inter, num_experts=EXPERTS, norm_topk_prob=kind == "qwen3_moe")
    if kind == "qwen2_moe":
        cfg["shared_expert_intermediate_size"] = shared
    return cfg


def hf_block(kind: str, seed: int = 0, **sizes) -> tuple[torch.nn.Module, dict]:
    """transformers' block with random weights (its experts are torch.empty until initialised)."""
    cfg = hf_config(kind, **sizes)
    config_class = {"mixtral": transformers.MixtralConfig, "qwen3_moe": transformers.Qwen3MoeConfig,
                    "qwen2_moe": transformers.Qwen2MoeConfig}[cfg["model_type"]]
    block_class = {"mixtral": MixtralSparseMoeBlock, "qwen3_moe": Qwen3MoeSparseMoeBlock,
                   "qwen2_moe": Qwen2MoeSparseMoeBlock}[cfg["model_type"]]
    config = config_class(**{k: v for k, v in cfg.items() if k != "model_type"})
    block = block_class(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return block, cfg


def ours_from(hf: torch.nn.Module, cfg: dict, dtype: torch.dtype = torch.float32) -> SparseMoeBlock:
    block = SparseMoeBlock(MoeConfig.from_hf_config(cfg), layer_idx=3, dtype=dtype)
    block.load_checkpoint({f"layer.{k}": v for k, v in hf.state_dict().items()}, "layer")
    return block.eval()


def inputs(t: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(t, HIDDEN, generator=torch.Generator().manual_seed(seed)).to(dtype)


def naive_moe(block: SparseMoeBlock, x: torch.Tensor) -> torch.Tensor:
    """The definition, one token and one chosen expert at a time."""
    weights, experts = block.route(x)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(experts.shape[1]):
            y = block.experts[int(experts[t, k])](x[t:t + 1])[0]
            out[t] += (y * weights[t, k]).to(x.dtype)
    if block.shared_expert is not None:
        out = out + torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tokens", [1, 2, 37])
def test_matches_transformers_fp32(kind: str, tokens: int) -> None:
    hf, cfg = hf_block(kind)
    ours = ours_from(hf, cfg)
    x = inputs(tokens)
    with torch.no_grad():
        want = hf(x[None])[0]
        got = ours(x)
    if kind == "qwen2_moe":  # our shared expert fuses gate/up: another GEMM shape than HF's two
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    else:  # same GEMMs on the same rows in the same order, same summation order: bitwise
        assert torch.equal(got, want), (got - want).abs().max()
    if tokens == 2:  # 2 tokens x top-2 reach at most 4 of the 8 experts: idle experts are skipped
        assert (ours.expert_tokens == 0).sum() >= EXPERTS - 2 * TOP_K


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_matches_transformers_grouped_mm_path(kind: str) -> None:
    """A PreTrainedModel runs its experts through transformers' grouped_mm by default; it sums a
    token's k expert outputs in another order, so fp32 agrees to rounding, not bitwise."""
    hf, cfg = hf_block(kind)
    hf.experts.config._experts_implementation = "grouped_mm"
    ours = ours_from(hf, cfg)
    x = inputs(19)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x[None])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_matches_transformers_bf16(kind: str) -> None:
    """bf16 weights and activations: the router's float32 softmax and (Mixtral) float32 routing
    weights must be reproduced, or whole experts flip and outputs move by O(1)."""
    hf, cfg = hf_block(kind)
    hf = hf.to(torch.bfloat16)
    ours = ours_from(hf, cfg, dtype=torch.bfloat16)
    x = inputs(23, dtype=torch.bfloat16)
    with torch.no_grad():
        want = hf(x[None])[0]
        got = ours(x)
        _, hf_experts = torch.topk(torch.softmax(hf.gate(x)[0].float(), -1), TOP_K)
    assert got.dtype == torch.bfloat16
    assert torch.equal(ours.route(x)[1], hf_experts)
    # Only the rounding of bf16 matmuls over differently-shaped row slices may differ.
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    assert (got.float() - want.float()).abs().mean() < 2e-3


def test_mixtral_routing_weights_stay_fp32_qwen_cast_back() -> None:
    mixtral = ours_from(*hf_block("mixtral"), dtype=torch.bfloat16)
    qwen = ours_from(*hf_block("qwen3_moe"), dtype=torch.bfloat16)
    x = inputs(4, dtype=torch.bfloat16)
    assert mixtral.route(x)[0].dtype == torch.float32
    assert qwen.route(x)[0].dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_grouped_dispatch_equals_naive_per_token_loop(kind: str) -> None:
    ours = ours_from(*hf_block(kind))
    x = inputs(29)
    with torch.no_grad():
        # The naive loop sums a token's experts in choice order, not expert order: rounding only.
        torch.testing.assert_close(ours(x), naive_moe(ours, x), rtol=1e-5, atol=1e-5)


def test_accepts_leading_batch_dims_and_empty_input() -> None:
    ours = ours_from(*hf_block("qwen3_moe"))
    x = inputs(12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x.reshape(3, 4, HIDDEN)), ours(x).reshape(3, 4, HIDDEN))
        assert ours(x[:0]).shape == (0, HIDDEN)


def test_expert_token_counter_equals_direct_count() -> None:
    ours = ours_from(*hf_block("qwen2_moe"))
    model = torch.nn.ModuleDict({"a": ours})
    want = torch.zeros(EXPERTS, dtype=torch.int64)
    with torch.inference_mode():  # how the runner calls it: the counter must still update
        for t, seed in ((5, 1), (1, 2), (17, 3)):
            x = inputs(t, seed)
            want += torch.bincount(ours.route(x)[1].flatten(), minlength=EXPERTS)
            ours(x)
        # Padding rows are routed but not counted.
        x = inputs(6, 4)
        want += torch.bincount(ours.route(x[:4])[1].flatten(), minlength=EXPERTS)
        ours(x, counted_rows=4)
    assert ours.expert_tokens.tolist() == want.tolist()
    assert sum(want.tolist()) == (5 + 1 + 17 + 4) * TOP_K
    assert expert_token_totals(model) == {3: want.tolist()}
    assert "expert_tokens" not in ours.state_dict()
    ours.reset_expert_tokens()
    assert expert_token_totals(model) == {3: [0] * EXPERTS}


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("kind", ["qwen3_moe", "qwen2_moe"])
def test_quantized_experts_match_dequantized_reference(method: str, kind: str) -> None:
    """quantize_model swaps each expert's linears (router and shared gate stay float); the block
    then computes what it computes with the dequantized weights, within bf16 activation rounding."""
    hidden = 128  # int4 groups of 64 along every in_features
    hf, cfg = hf_block(kind, hidden=hidden, inter=64, shared=128)
    ours = SparseMoeBlock(MoeConfig.from_hf_config(cfg))
    ours.load_checkpoint({f"p.{k}": v for k, v in hf.state_dict().items()}, "p")
    reference = copy.deepcopy(ours)
    with torch.no_grad():
        for module in reference.modules():
            if type(module) is torch.nn.Linear:
                module.weight.copy_(quantize(module.weight, method, group_size=64).dequantize())
    report = quantize_model(ours, method, group_size=64)
    linear = Int8Linear if method == "int8" else Int4Linear
    expected = {f"experts.{e}.{p}" for e in range(EXPERTS) for p in ("gate_up_proj", "down_proj")}
    if kind == "qwen2_moe":
        expected |= {"shared_expert.gate_up_proj", "shared_expert.down_proj"}
    assert set(report.quantized) == expected  # never gate / shared_expert_gate
    assert all(isinstance(ours.get_submodule(n), linear) for n in expected)
    assert type(ours.gate.weight) is torch.nn.Parameter and ours.gate.weight.dtype == torch.float32

    x = torch.randn(40, hidden, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = reference(x), ours(x)
        assert torch.equal(ours.route(x)[1], reference.route(x)[1])
    scale = want.abs().max()
    assert (got - want).abs().max() < 2e-2 * scale
    assert (got - want).abs().mean() < 2e-3 * scale
    with torch.no_grad():  # a single decode token takes the GEMV-shaped kernels
        torch.testing.assert_close(ours(x[:1]), reference(x[:1]), rtol=0, atol=float(2e-2 * scale))


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_loads_what_save_pretrained_writes(kind: str, tmp_path) -> None:
    """transformers 5.23 fuses experts in memory but saves them per expert (w1/w3/w2 under
    block_sparse_moe for Mixtral; gate_proj/up_proj/down_proj under mlp for Qwen)."""
    from safetensors.torch import load_file

    cfg = hf_config(kind)
    config = transformers.AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".experts." in name:
                p.normal_(0, 0.2)
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    prefix = "model.layers.0.block_sparse_moe" if kind == "mixtral" else "model.layers.0.mlp"
    assert f"{prefix}.experts.0.{'w1' if kind == 'mixtral' else 'gate_proj'}.weight" in saved
    ours = SparseMoeBlock(MoeConfig.from_hf_config(config.to_dict()))
    ours.load_checkpoint(saved, prefix)
    x = inputs(9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model.model.layers[0].mlp(x[None])[0], rtol=1e-6, atol=1e-6)


def _gguf_layer(hf: torch.nn.Module, blk: str) -> dict[str, np.ndarray]:
    """What llama.cpp's converter writes for one layer (numpy shapes = torch order)."""
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    gate_up = sd["experts.gate_up_proj"]
    out = {f"{blk}.ffn_gate_inp.weight": sd["gate.weight"],
           f"{blk}.ffn_gate_exps.weight": gate_up[:, :INTER], f"{blk}.ffn_up_exps.weight": gate_up[:, INTER:],
           f"{blk}.ffn_down_exps.weight": sd["experts.down_proj"]}
    if "shared_expert_gate.weight" in sd:
        out[f"{blk}.ffn_gate_inp_shexp.weight"] = sd["shared_expert_gate.weight"].reshape(-1)
        for p in ("gate", "up", "down"):
            out[f"{blk}.ffn_{p}_shexp.weight"] = sd[f"shared_expert.{p}_proj.weight"]
    return out


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
def test_loads_gguf_names_through_a_real_gguf_file(kind: str, tmp_path) -> None:
    import gguf

    from inferd.model.gguf_reader import GGUFFile

    hf, cfg = hf_block(kind)
    arch = {"mixtral": "llama", "qwen2_moe": "qwen2moe"}[kind]
    writer = gguf.GGUFWriter(str(tmp_path / "moe.gguf"), arch)
    writer.add_uint32(f"{arch}.embedding_length", HIDDEN)
    writer.add_uint32(f"{arch}.expert_count", EXPERTS)
    writer.add_uint32(f"{arch}.expert_used_count", TOP_K)
    writer.add_uint32(f"{arch}.expert_feed_forward_length", INTER)
    if kind == "qwen2_moe":
        writer.add_uint32(f"{arch}.expert_shared_feed_forward_length", SHARED)
    for name, arr in _gguf_layer(hf, "blk.5").items():
        writer.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = GGUFFile(tmp_path / "moe.gguf")
    config = MoeConfig.from_gguf_metadata(reader.fields, arch)
    assert config == MoeConfig.from_hf_config(cfg)
    tensors = {t.name: torch.from_numpy(np.array(t.data)) for t in reader.tensors}
    ours = SparseMoeBlock(config)
    ours.load_checkpoint(tensors, "blk.5")
    x = inputs(11)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x[None])[0], rtol=1e-6, atol=1e-6)


def test_gguf_per_expert_names_and_missing_tensor_message() -> None:
    hf, cfg = hf_block("mixtral")
    sd = hf.state_dict()
    tensors = {"blk.0.ffn_gate_inp.weight": sd["gate.weight"]}
    for e in range(EXPERTS):
        tensors[f"blk.0.ffn_gate.{e}.weight"] = sd["experts.gate_up_proj"][e, :INTER]
        tensors[f"blk.0.ffn_up.{e}.weight"] = sd["experts.gate_up_proj"][e, INTER:]
        tensors[f"blk.0.ffn_down.{e}.weight"] = sd["experts.down_proj"][e]
    state = moe_state_dict(tensors, "blk.0", MoeConfig.from_hf_config(cfg))
    assert torch.equal(state["experts.3.gate_up_proj.weight"], sd["experts.gate_up_proj"][3])
    del tensors["blk.0.ffn_down.6.weight"]
    with pytest.raises(ValueError, match=r"blk\.0\.ffn_down\.6\.weight missing"):
        SparseMoeBlock(MoeConfig.from_hf_config(cfg)).load_checkpoint(tensors, "blk.0")


def test_wrong_shape_is_named() -> None:
    hf, cfg = hf_block("qwen3_moe")
    small = MoeConfig.from_hf_config(dict(cfg, moe_intermediate_size=INTER // 2))
    with pytest.raises(ValueError, match=r"experts\.0\.gate_up_proj\.weight has shape"):
        SparseMoeBlock(small).load_checkpoint({f"p.{k}": v for k, v in hf.state_dict().items()}, "p")


def test_config_and_layer_placement() -> None:
    cfg = hf_config("qwen2_moe")
    assert MoeConfig.from_hf_config(cfg).shared_expert_intermediate_size == SHARED
    assert MoeConfig.from_hf_config(hf_config("mixtral")).norm_topk_prob
    assert not MoeConfig.from_hf_config(hf_config("qwen3_moe_unnormed")).norm_topk_prob
    sparse = dict(cfg, decoder_sparse_step=2, mlp_only_layers=[3])
    assert [is_moe_layer(sparse, i) for i in range(6)] == [False, True, False, False, False, True]
    with pytest.raises(ValueError, match="silu"):
        MoeConfig.from_hf_config(dict(cfg, hidden_act="gelu"))
    assert isinstance(SparseMoeBlock(MoeConfig.from_hf_config(cfg)).shared_expert, ExpertMLP)
