"""quantize_model: which modules are swapped, skip patterns, the tied output head, bad requests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inferd.quant import (
    Fp8Linear,
    Int4Linear,
    Int8Linear,
    QuantizedEmbedding,
    quantize_model,
)
from inferd.quant.formats import unpack_int4
from inferd.quant.kernels import unpack_int4_cpu

VOCAB, HIDDEN, INTER, LAYERS = 128, 64, 96, 2
LAYER_LINEARS = ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.Module()
        self.self_attn.qkv_proj = nn.Linear(HIDDEN, HIDDEN + 2 * 32, bias=False)
        self.self_attn.o_proj = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.mlp = nn.Module()
        self.mlp.gate_up_proj = nn.Linear(HIDDEN, 2 * INTER, bias=False)
        self.mlp.down_proj = nn.Linear(INTER, HIDDEN, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn.o_proj(self.self_attn.qkv_proj(h)[:, :HIDDEN])
        gate, up = self.mlp.gate_up_proj(h).chunk(2, dim=-1)
        return h + self.mlp.down_proj(torch.nn.functional.silu(gate) * up)


class TinyLM(nn.Module):
    """The module names of inferd's Llama: model.embed_tokens, model.layers.{i}..., lm_head."""

    def __init__(self, tied: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
        self.model.layers = nn.ModuleList(_Block() for _ in range(LAYERS))
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)
        if tied:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            h = layer(h)
        return self.lm_head(h)


def _layer_names() -> list[str]:
    return [f"model.layers.{i}.{n}" for i in range(LAYERS) for n in LAYER_LINEARS]


@pytest.mark.parametrize(("method", "cls"), [("int8", Int8Linear), ("int4", Int4Linear),
                                             ("fp8", Fp8Linear)])
def test_replaces_layer_linears_and_keeps_head_and_embeddings(method: str, cls: type) -> None:
    model = TinyLM(tied=True)
    ids = torch.tensor([1, 5, 9, 77, 3])
    before = model(ids)
    report = quantize_model(model, method, group_size=32)
    assert report.quantized == _layer_names()
    for name in _layer_names():
        assert isinstance(model.get_submodule(name), cls)
    assert type(model.lm_head) is nn.Linear and type(model.model.embed_tokens) is nn.Embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tie is intact
    assert set(report.skipped) == {"lm_head", "model.embed_tokens"}
    assert report.bytes_after < report.bytes_before / 1.5
    assert report.model_bytes_after < report.model_bytes_before
    assert "modules quantized" in report.summary()
    after = model(ids)
    assert after.dtype == before.dtype
    # A weight-only quantized model still ranks the same way (loose: int4 on random weights).
    assert torch.corrcoef(torch.stack([before.flatten(), after.flatten()]))[0, 1] > 0.95


def test_skip_patterns() -> None:
    model = TinyLM(tied=False)
    report = quantize_model(model, "int8", skip=["*self_attn*", "model.layers.0.*"])
    assert report.quantized == ["model.layers.1.mlp.gate_up_proj", "model.layers.1.mlp.down_proj"]
    assert report.skipped["model.layers.0.mlp.down_proj"] == "matches skip pattern 'model.layers.0.*'"
    assert report.skipped["model.layers.1.self_attn.o_proj"] == "matches skip pattern '*self_attn*'"
    assert type(model.model.layers[1].self_attn.qkv_proj) is nn.Linear


def test_tied_head_int8_shares_one_quantized_copy() -> None:
    model = TinyLM(tied=True)
    report = quantize_model(model, "int8", quantize_embeddings=True)
    head, table = model.lm_head, model.model.embed_tokens
    assert isinstance(head, Int8Linear) and isinstance(table, QuantizedEmbedding)
    assert table.qweight.data_ptr() == head.qweight.data_ptr()
    assert table.scale.data_ptr() == head.scale.data_ptr()
    assert "shares its quantized storage" in report.tied["lm_head"]
    # The head's logit for token t given hidden e_j is table[t][j]: same values on both sides.
    rows = table(torch.arange(VOCAB))
    eye = torch.eye(HIDDEN)
    torch.testing.assert_close(head(eye).t(), rows, rtol=2**-8, atol=1e-6)
    assert rows.dtype == torch.float32


def test_tied_head_int4_keeps_the_same_codes() -> None:
    model = TinyLM(tied=True)
    report = quantize_model(model, "int4", group_size=32, quantize_embeddings=True)
    head, table = model.lm_head, model.model.embed_tokens
    assert isinstance(head, Int4Linear) and isinstance(table, QuantizedEmbedding)
    assert torch.equal(unpack_int4_cpu(head.qweight, VOCAB, HIDDEN), unpack_int4(table.qweight))
    assert "same int4 codes" in report.tied["lm_head"]


def test_tie_by_shared_storage_is_detected() -> None:
    model = TinyLM(tied=False)
    model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.data)  # other Parameter
    report = quantize_model(model, "int8", quantize_embeddings=True)
    assert "lm_head" in report.tied


def test_tied_head_kept_keeps_its_embedding() -> None:
    model = TinyLM(tied=True)
    report = quantize_model(model, "fp8", skip=["lm_head"], quantize_embeddings=True)
    assert type(model.lm_head) is nn.Linear and type(model.model.embed_tokens) is nn.Embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert report.skipped["model.embed_tokens"] == "tied to lm_head, which stays in higher precision"


@pytest.mark.parametrize("method", ["int8", "int4", "fp8"])
def test_untied_embeddings_quantized_on_request(method: str) -> None:
    model = TinyLM(tied=False)
    reference = model.model.embed_tokens.weight.detach().clone()
    report = quantize_model(model, method, group_size=32, quantize_embeddings=True)
    assert "lm_head" in report.quantized and "model.embed_tokens" in report.quantized
    rows = model.model.embed_tokens(torch.tensor([[0, 5], [127, 5]]))
    assert rows.shape == (2, 2, HIDDEN)
    torch.testing.assert_close(rows[0, 1], reference[5], rtol=0, atol=0.15 * reference.abs().max().item())


def test_bad_requests_leave_the_model_untouched() -> None:
    model = TinyLM(tied=False)
    with pytest.raises(ValueError, match=r"unknown quantization method 'int2'.*'int8', 'int4', 'fp8'"):
        quantize_model(model, "int2")
    with pytest.raises(ValueError, match="group_size must be one of"):
        quantize_model(model, "int4", group_size=48)
    # down_proj has in_features 96: group 64 does not divide it.
    with pytest.raises(ValueError, match=r"cannot quantize model\.layers\.0\.mlp\.down_proj.*96"):
        quantize_model(model, "int4", group_size=64)
    assert all(type(model.get_submodule(n)) is nn.Linear for n in _layer_names())
    # ...and skipping the offending modules makes the same request valid.
    report = quantize_model(model, "int4", group_size=64, skip=["*down_proj"])
    assert len(report.quantized) == 3 * LAYERS


def test_second_run_finds_nothing_left() -> None:
    model = TinyLM(tied=True)
    quantize_model(model, "int8")
    assert quantize_model(model, "int8").quantized == []
