"""`quantize_model`: swap a model's `nn.Linear` layers for quantized ones, in place, and report.

The model code keeps plain `nn.Linear` modules; this is the one hook that turns them into
`Int8Linear` / `Int4Linear` / `Fp8Linear`. Every check runs before the first module is replaced,
so a bad request leaves the model untouched.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from inferd.quant import kernels
from inferd.quant.embedding import embedding_from_quantized
from inferd.quant.formats import Fp8Weight, Int4Weight, Int8Weight, QuantizedWeight
from inferd.quant.linear import (
    Fp8Linear,
    Int4Linear,
    Int8Linear,
    QuantLinear,
    default_compute_dtype,
)
from inferd.quant.registry import METHODS, quant_method, quantize


@dataclass
class QuantReport:
    """What `quantize_model` did. Bytes count unique storage (a tied weight counts once)."""

    method: str
    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # module name -> why it kept its dtype
    tied: dict[str, str] = field(default_factory=dict)  # output head -> how its tie was kept
    bytes_before: int = 0  # weights of the replaced modules
    bytes_after: int = 0
    model_bytes_before: int = 0  # every parameter and buffer of the model
    model_bytes_after: int = 0

    def summary(self) -> str:
        mib = 2**20
        lines = [
            f"{self.method}: {len(self.quantized)} modules quantized, {len(self.skipped)} kept; "
            f"their weights {self.bytes_before / mib:.1f} -> {self.bytes_after / mib:.1f} MiB, "
            f"model {self.model_bytes_before / mib:.1f} -> {self.model_bytes_after / mib:.1f} MiB"
        ]
        lines += [f"  kept {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  tied {name}: {how}" for name, how in self.tied.items()]
        return "\n".join(lines)


def _unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    storages = {(t.device, t.untyped_storage().data_ptr()): t.untyped_storage().nbytes()
                for t in tensors}
    return sum(storages.values())


def _model_bytes(model: nn.Module) -> int:
    return _unique_bytes([*model.parameters(), *model.buffers()])


def _weights(module: nn.Module) -> list[torch.Tensor]:
    named = [*module.named_parameters(), *module.named_buffers()]
    return [t for n, t in named if n != "bias"]


def _identity(t: torch.Tensor) -> tuple:
    """Same for two tensors viewing the same memory, e.g. a head tied to its embedding."""
    return t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _skip_pattern(name: str, skip: Sequence[str]) -> str | None:
    return next((p for p in skip if fnmatch.fnmatchcase(name, p)), None)


def _check_int4_shape(name: str, n: int, k: int, group_size: int, device: torch.device) -> None:
    if problem := kernels.int4_shape_problem(n, k, group_size, device):
        raise ValueError(f"cannot quantize {name} ({k} -> {n}) to int4: {problem}; "
                         f"pick another group_size or add {name!r} to skip")


def _linear_module(linear: nn.Linear, weight: QuantizedWeight) -> QuantLinear:
    device = linear.weight.device
    if isinstance(weight, Int4Weight):
        return Int4Linear(weight, linear.bias, device=device)
    if isinstance(weight, Int8Weight):  # bf16 kernels on both devices
        return Int8Linear(weight, linear.bias, device=device)
    return Fp8Linear(weight, linear.bias, device=device,
                     compute_dtype=default_compute_dtype(device, linear.weight.dtype))


def _tied_table(head: QuantLinear, weight: QuantizedWeight, embedding: nn.Embedding) -> nn.Module:
    """The embedding of a tied head: int8 (in tiles or rows) and fp8 read the head's own buffers
    (one copy, same values); tinygemm layouts (int4, int8 on CUDA) cannot be gathered by row, so
    the table keeps the same codes in row layout."""
    if isinstance(head, Int4Linear) or getattr(head, "two_plane", False):
        return embedding_from_quantized(weight, embedding)
    if isinstance(head, Int8Linear) and head.tiles is not None:
        return embedding_from_quantized(head.tiles, embedding)
    scale = head.scale.reshape(head.out_features, 1)
    shared = (Int8Weight(head.qweight, scale, head.in_features) if isinstance(head, Int8Linear)
              else Fp8Weight(head.qweight, scale))
    return embedding_from_quantized(shared, embedding)


def quantize_model(model: nn.Module, method: str, *, group_size: int = 64, symmetric: bool = True,
                   skip: Sequence[str] = (), quantize_embeddings: bool = False) -> QuantReport:
    """Replace the model's `nn.Linear` modules by quantized ones, in place.

    method: "int8" (per channel), "int4" (group-wise, `group_size`, `symmetric`) or "fp8".
    skip: fnmatch patterns on module names (`*self_attn*`, `model.layers.0.*`) left as they are.
    The output head (a Linear named `lm_head`, or any Linear sharing an embedding's weight) and
    `nn.Embedding` tables stay unquantized unless `quantize_embeddings`; a tied head and its
    embedding are then quantized together and always read the same values.
    Modules are quantized on the device their weights are on: move the model there first.
    """
    entry = quant_method(method)
    if entry.quantize is None:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {METHODS}")
    if entry.group_sizes and group_size not in entry.group_sizes:
        raise ValueError(f"{method} group_size must be one of {entry.group_sizes}, got {group_size}")
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    report = QuantReport(method, model_bytes_before=_model_bytes(model))
    modules = dict(model.named_modules())
    tables = {n: m for n, m in modules.items() if isinstance(m, nn.Embedding)}
    table_of = {_identity(m.weight): n for n, m in tables.items()}

    # Plan every replacement first, so that an error leaves the model untouched.
    heads: dict[str, str] = {}  # tied head -> its embedding
    plan: list[str] = []
    for name, module in modules.items():
        if type(module) is not nn.Linear:  # subclasses may mean something else: leave them be
            continue
        tied = table_of.get(_identity(module.weight))
        if tied is not None:
            heads[name] = tied
        if pattern := _skip_pattern(name, skip):
            report.skipped[name] = f"matches skip pattern {pattern!r}"
        elif (tied or name.rpartition(".")[2] == "lm_head") and not quantize_embeddings:
            report.skipped[name] = "output head stays in higher precision (quantize_embeddings=False)"
        else:
            if method == "int4":
                n, k = module.weight.shape
                _check_int4_shape(name, n, k, group_size, module.weight.device)
            plan.append(name)
    table_plan: list[str] = []
    tied_tables = {t: h for h, t in heads.items()}
    for name, table in tables.items():
        head = tied_tables.get(name)
        if head in plan:
            continue  # quantized together with its head
        if head is not None:
            report.skipped[name] = f"tied to {head}, which stays in higher precision"
        elif not quantize_embeddings:
            report.skipped[name] = "embedding stays in higher precision (quantize_embeddings=False)"
        elif pattern := _skip_pattern(name, skip):
            report.skipped[name] = f"matches skip pattern {pattern!r}"
        else:
            if method == "int4" and table.embedding_dim % group_size:
                raise ValueError(f"cannot quantize {name} to int4: group_size {group_size} does not "
                                 f"divide embedding_dim {table.embedding_dim}")
            table_plan.append(name)

    report.bytes_before = _unique_bytes(
        [t for n in plan for t in _weights(modules[n])] + [tables[n].weight for n in table_plan])
    new: list[nn.Module] = []
    for name in plan:
        linear = modules[name]
        weight = quantize(linear.weight, method, group_size=group_size, symmetric=symmetric)
        module = _linear_module(linear, weight)
        _set_module(model, name, module)
        new.append(module)
        report.quantized.append(name)
        if name in heads:
            table_name = heads[name]
            table = _tied_table(module, weight, tables[table_name])
            _set_module(model, table_name, table)
            new.append(table)
            report.quantized.append(table_name)
            report.tied[name] = (f"{table_name} shares its quantized storage"
                                 if table.qweight is module.qweight else
                                 f"{table_name} holds the same {method} codes in row layout")
    for name in table_plan:
        weight = quantize(tables[name].weight, method, group_size=group_size, symmetric=symmetric)
        table = embedding_from_quantized(weight, tables[name])
        _set_module(model, name, table)
        new.append(table)
        report.quantized.append(name)
    report.bytes_after = _unique_bytes(t for m in new for t in _weights(m))
    report.model_bytes_after = _model_bytes(model)
    return report


def quantize_model_and_head(model: nn.Module, method: str, head: bool | str, *, group_size: int = 64,
                            symmetric: bool = True, skip: Sequence[str] = ()) -> QuantReport:
    """`quantize_model`, with the output head (and a tied embedding) quantized as `head` says:
    False keeps it, True uses `method`, or a method of its own ("int8" next to int4 layers keeps
    most of the head's precision for a quarter of its bf16 bytes)."""
    head_method = method if head is True else head or None
    if head_method is not None and head_method not in METHODS:
        raise ValueError(f"unknown LM-head quantization {head_method!r}; choose one of {METHODS}")
    report = quantize_model(model, method, group_size=group_size, symmetric=symmetric, skip=skip,
                            quantize_embeddings=head_method == method)
    if head_method is None or head_method == method:
        return report
    # The body is already quantized (no plain nn.Linear left but the head and skipped layers):
    # a second pass over the head only.
    extra = quantize_model(model, head_method, group_size=group_size, symmetric=symmetric,
                           skip=(*skip, "model.*"), quantize_embeddings=True)
    report.method = f"{method} (LM head {head_method})"
    report.quantized += extra.quantized
    report.tied.update(extra.tied)
    for name in extra.quantized:
        report.skipped.pop(name, None)
    report.bytes_before += extra.bytes_before
    report.bytes_after += extra.bytes_after
    report.model_bytes_after = extra.model_bytes_after
    return report
