"""The machine's defaults: the dtype and quantization that run a model file fastest here without
losing anything against the file, for whatever the user left to `auto`.

`choose_defaults` is the whole policy, a pure function of the settings, the file and the machine.
`describe_gguf`, `describe_safetensors` and `probe_machine` gather those facts for `load_model`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from inferd.config import ModelConfig

# GGUF tensors a layer's linears come from (what `keep_gguf_blocks` swaps).
_LAYER_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_GGUF_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass(frozen=True)
class Checkpoint:
    """What the defaults need to know about a model file."""

    name: str  # as the log line names it
    gguf: bool
    float_dtype: torch.dtype  # what its weights need to lose nothing (GGUF blocks: fp16 scales)
    layer_types: tuple[str, ...] = ()  # GGUF types of the layers' linear weights, most common first
    exact_types: frozenset[str] = frozenset()  # those inferd runs as they are (Q4_0/Q4_1/Q4_K/Q8_0)
    head_type: str | None = None  # GGUF type of the output head (its tied embedding if none)

    @property
    def has_blocks(self) -> bool:
        """Whether any layer holds blocks inferd can keep (`--quantization gguf` changes anything)."""
        return bool(self.exact_types & set(self.layer_types))

    def blocks_text(self) -> str:
        """`Q4_1 layers, Q8_0 head`, with the types that stay in float named."""
        text = f"{'/'.join(self.layer_types)} layers" + (f", {self.head_type} head" if self.head_type else "")
        kept = [t for t in dict.fromkeys((*self.layer_types, self.head_type)) if t and t not in self.exact_types]
        return text + (f"; {'/'.join(kept)} in bfloat16" if kept else "")


@dataclass(frozen=True)
class Machine:
    """What the defaults need to know about where the model runs."""

    device: str  # "cpu" or "cuda"
    native_bf16: bool = False  # the CPU multiplies bf16 in hardware (AVX512_BF16, AMX-BF16, ARM BF16)
    isa: str = ""  # the CPU's best kernel level, for the log line
    # inferd's CPU tile kernels are built: they run GGUF Q4/Q8 blocks with the file's own fp16
    # scales (torch's fallback kernels round them to bf16).
    exact_gguf_kernels: bool = False


@dataclass(frozen=True)
class Choice:
    """The resolved settings and the one line that says why."""

    dtype: str
    quantization: str
    quant_lm_head: bool | str
    reason: str


def _given(dtype: str | torch.dtype | None) -> bool:
    return dtype not in (None, "auto")


def _name(dtype: str | torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype)) if isinstance(dtype, torch.dtype) else dtype


def choose_defaults(cfg: ModelConfig, ckpt: Checkpoint, machine: Machine) -> Choice:
    """Resolve `dtype="auto"` and `quantization="auto"`; anything given explicitly is kept.

    - A GGUF file on a CPU where inferd's tile kernels are built: its own blocks, head included
      (`--quantization gguf --quant-lm-head`, bf16 activations), what llama.cpp runs. Elsewhere
      torch's int4 kernels would round the file's fp16 scales to bf16, so the file is dequantized
      and treated like a 16-bit checkpoint. An explicit `--dtype` (or a `--quant-lm-head METHOD`)
      also means dequantized weights: quantization `auto` then becomes `none`.
    - A 16-bit checkpoint on CPU: bf16 only where the CPU multiplies bf16 natively; elsewhere bf16
      is emulated through fp32 and slower than fp32 itself, so fp32.
    - A float32 checkpoint on CPU: float32.
    - An explicit quantization (int8/int4/fp8/gguf) on CPU: bf16, the quantized kernels' dtype.
    - CUDA: bfloat16 and no quantization, as before.
    """
    quant, head = cfg.quantization, cfg.quant_lm_head
    name = ckpt.name
    blocks = ckpt.gguf and ckpt.has_blocks
    if quant == "auto":
        keep = (not _given(cfg.dtype) and not isinstance(head, str) and machine.device == "cpu"
                and blocks and machine.exact_gguf_kernels)
        if keep:
            return Choice("bfloat16", "gguf", True,
                          f"inferd: {name} is a GGUF ({ckpt.blocks_text()}): running its own blocks "
                          "(--quantization gguf --quant-lm-head); override with --quantization none "
                          "--dtype float32")
        quant = "none"
    weights = f"GGUF ({ckpt.blocks_text()})" if blocks else _name(ckpt.float_dtype)
    if _given(cfg.dtype):
        dtype = _name(cfg.dtype)
        how = f"--quantization {quant}" if quant != "none" else "dequantized" if ckpt.gguf else "unquantized"
        hint = "; --quantization gguf --quant-lm-head runs the file's own blocks" \
            if blocks and cfg.quantization == "auto" and machine.device == "cpu" else ""
        return Choice(dtype, quant, head, f"inferd: {name}: computing its {weights} weights in {dtype} as "
                      f"given ({how}){hint}")
    if machine.device != "cpu":
        return Choice("bfloat16", quant, head, f"inferd: {name} on {machine.device.upper()}: computing its "
                      f"{weights} weights in bfloat16; --dtype float32 to override")
    if quant != "none":
        return Choice("bfloat16", quant, head, f"inferd: {name} with --quantization {quant}: computing in "
                      "bfloat16, the quantized kernels' dtype; --dtype float32 to override")
    if ckpt.float_dtype == torch.float32:
        return Choice("float32", "none", head, f"inferd: {name} holds float32 weights: computing in "
                      "float32, which loses nothing; --dtype bfloat16 to override")
    dtype, other = ("bfloat16", "float32") if machine.native_bf16 else ("float32", "bfloat16")
    cpu = f"this CPU has {'native' if machine.native_bf16 else 'no native'} bf16 ({machine.isa.upper() or '?'})"
    if blocks and cfg.quantization == "auto" and not isinstance(head, str):
        return Choice(dtype, "none", head, f"inferd: {name} is a GGUF ({ckpt.blocks_text()}) but inferd's "
                      f"exact block kernels are not built here: computing its dequantized weights in {dtype} "
                      f"({cpu}); override with --quantization gguf --quant-lm-head or --dtype {other}")
    return Choice(dtype, "none", head, f"inferd: {cpu}: computing {name}'s {weights} weights in {dtype}; "
                  f"--dtype {other} to override")


def describe_safetensors(tensors: dict[str, torch.Tensor], name: str) -> Checkpoint:
    """The dtype holding most of the weights' elements is the checkpoint's (a few norms kept in
    float32 next to bf16 matrices do not make it a float32 checkpoint)."""
    counts: Counter = Counter()
    for t in tensors.values():
        counts[t.dtype] += t.numel()
    return Checkpoint(name, gguf=False, float_dtype=counts.most_common(1)[0][0] if counts else torch.float32)


def describe_gguf(reader, tie_word_embeddings: bool, name: str) -> Checkpoint:
    """`reader`: an open GGUF file (its tensors' names and types; no data is read)."""
    from gguf import GGMLQuantizationType

    from inferd.quant.gguf_blocks import SUPPORTED_GGUF_TYPES

    def type_name(t) -> str:
        return GGMLQuantizationType(t.ggml_type).name

    tensors = {t.name: t for t in reader.tensors}
    layers = Counter(type_name(t) for n, t in tensors.items()
                     if n.startswith("blk.") and n.split(".")[-2] in _LAYER_LINEARS and n.endswith(".weight"))
    head = tensors.get("output.weight") or (tensors.get("token_embd.weight") if tie_word_embeddings else None)
    head_type = type_name(head) if head is not None else None
    kinds = set(layers) | ({head_type} if head_type else set())
    # Only float32 tensors need float32; blocks carry fp16 scales, like a 16-bit checkpoint.
    float_dtype = (torch.float32 if kinds and kinds <= {"F32"} else
                   torch.bfloat16 if kinds == {"BF16"} else torch.float16)
    return Checkpoint(name, gguf=True, float_dtype=float_dtype,
                      layer_types=tuple(k for k, _ in layers.most_common()),
                      exact_types=frozenset(t.name for t in SUPPORTED_GGUF_TYPES), head_type=head_type)


def probe_machine(device: torch.device, gguf_kernels: bool = False) -> Machine:
    """The facts about `device`; `gguf_kernels` also asks whether the exact GGUF block kernels are
    built (that builds or loads the native CPU kernels, which the runner does next anyway)."""
    if device.type != "cpu":
        return Machine(device.type)
    from inferd.kernels import cpu_isa, cpu_ops

    exact = gguf_kernels and cpu_ops.available() and bool(cpu_ops.ops().int4_mm_built())
    return Machine("cpu", native_bf16=cpu_isa.has_native_bf16(), isa=cpu_isa.describe(),
                   exact_gguf_kernels=exact)


def machine_defaults(cfg: ModelConfig, ckpt: Checkpoint, device: torch.device) -> Choice:
    """`choose_defaults` with this machine's facts (the kernels probed only where they matter)."""
    probe = (cfg.quantization == "auto" and not _given(cfg.dtype) and not isinstance(cfg.quant_lm_head, str)
             and ckpt.has_blocks)
    return choose_defaults(cfg, ckpt, probe_machine(device, gguf_kernels=probe))
