"""Quantized weights moved into one huge-page buffer: same values, every holder rebound."""

from __future__ import annotations

import torch
from torch import nn

from inferd.kernels import cpu_ops
from inferd.kernels.weight_arena import move_to_hugepages
from inferd.quant.apply import quantize_model_and_head
from tests.kernels.conftest import needs_native


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(256, 64)
        self.proj = nn.Linear(64, 128, bias=True)
        self.head = nn.Linear(64, 256, bias=False)
        self.head.weight = self.embed.weight


def test_weights_move_into_one_buffer_and_compute_the_same():
    needs_native()
    model = _Tiny()
    quantize_model_and_head(model, "int4", "int8", group_size=32)
    x = torch.randn(3, 64).to(torch.bfloat16)
    ids = torch.tensor([1, 7, 255])
    before = (model.proj(x), model.head(x), model.embed(ids))
    moved = move_to_hugepages(model)
    assert cpu_ops.available() and moved >= model.proj.qweight.nbytes + model.head.qweight.nbytes
    storages = {m.qweight.untyped_storage().data_ptr() for m in (model.proj, model.head)}
    assert len(storages) == 1, "one buffer holds every streamed tensor"
    # The int8 head's tied table reads the head's own buffers: still one copy, in its own shape.
    assert model.embed.qweight is model.head.qweight
    assert model.embed.scale.data_ptr() == model.head.scale.data_ptr()
    after = (model.proj(x), model.head(x), model.embed(ids))
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
