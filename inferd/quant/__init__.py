"""Weight-only quantization: formats, GGUF block conversion, quantized Linear modules, and the
`quantize_model` hook that swaps a model's `nn.Linear` layers in place."""

from inferd.quant.apply import QuantReport, quantize_model
from inferd.quant.embedding import QuantizedEmbedding
from inferd.quant.formats import (
    INT4_GROUP_SIZES,
    METHODS,
    Fp8Weight,
    Int4Weight,
    Int8Weight,
    QuantizedWeight,
    pack_int4,
    quantize,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from inferd.quant.gguf_blocks import SUPPORTED_GGUF_TYPES, from_gguf_blocks
from inferd.quant.linear import (
    Fp8Linear,
    Int4Linear,
    Int8Linear,
    QuantLinear,
    linear_from_quantized,
)

__all__ = [
    "INT4_GROUP_SIZES",
    "METHODS",
    "SUPPORTED_GGUF_TYPES",
    "Fp8Linear",
    "Fp8Weight",
    "Int4Linear",
    "Int4Weight",
    "Int8Linear",
    "Int8Weight",
    "QuantLinear",
    "QuantReport",
    "QuantizedEmbedding",
    "QuantizedWeight",
    "from_gguf_blocks",
    "linear_from_quantized",
    "pack_int4",
    "quantize",
    "quantize_fp8",
    "quantize_int4",
    "quantize_int8",
    "quantize_model",
    "unpack_int4",
]
