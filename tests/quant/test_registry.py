"""Everything that lists quantization methods or GGUF types reads the one table (registry.py)."""

from __future__ import annotations

import argparse

import pytest
import torch

from inferd.engine_args import add_engine_args
from inferd.quant import registry
from inferd.quant.eval_cli import add_quant_eval_parser
from inferd.spec import draft


def _choices(parser: argparse.ArgumentParser, flag: str) -> list:
    action = next(a for a in parser._actions if flag in a.option_strings)
    return list(action.choices)


def test_engine_flags_read_the_table() -> None:
    p = argparse.ArgumentParser()
    add_engine_args(p)
    assert _choices(p, "--quantization") == ["auto", "none", *registry.LOAD_METHODS]
    assert _choices(p, "--quant-group-size") == list(registry.GROUP_SIZES)
    assert _choices(p, "--quant-lm-head") == ["same", *registry.HEAD_METHODS]
    # Behaviour of the existing flags is unchanged.
    assert registry.LOAD_METHODS == ("int8", "int4", "fp8", "gguf")
    assert registry.GROUP_SIZES == (32, 64, 128)
    assert registry.HEAD_METHODS == ("int8", "int4", "fp8")


def test_quant_eval_and_draft_read_the_table() -> None:
    sub = argparse.ArgumentParser().add_subparsers()
    add_quant_eval_parser(sub)
    p = sub.choices["quant-eval"]
    assert _choices(p, "--quantization") == list(registry.METHODS)
    assert _choices(p, "--quant-group-size") == list(registry.GROUP_SIZES)
    assert draft.QUANT_SUFFIXES == registry.LOAD_METHODS


def test_quantize_dispatches_on_the_table() -> None:
    w = torch.randn(32, 64)
    for entry in registry.QUANT_METHODS:
        if entry.quantize is None:
            with pytest.raises(ValueError, match="does not quantize float weights"):
                registry.quantize(w, entry.name)
            continue
        q = registry.quantize(w, entry.name, group_size=32)
        assert q.shape == (32, 64)
        assert (q.dequantize() - w).abs().max() < 0.1 * w.abs().max()
    with pytest.raises(ValueError, match="unknown quantization method 'int3'"):
        registry.quantize(w, "int3")


def test_gguf_entries_are_unique_and_named() -> None:
    types = [f.qtype for f in registry.GGUF_BLOCK_FORMATS]
    assert len(types) == len(set(types))
    assert all(f.layout.startswith(("int8 ", "int4 ")) for f in registry.GGUF_BLOCK_FORMATS)
    assert registry.gguf_block_format(int(types[0])) is registry.GGUF_BLOCK_FORMATS[0]
    assert registry.gguf_block_format(0) is None  # F32: no quantized format
