"""Weight-only quantization: formats, GGUF block conversion, quantized Linear modules, and the
`quantize_model` hook that swaps a model's `nn.Linear` layers in place."""

from inferd.quant.apply import QuantReport, quantize_model
from inferd.quant.embedding import QuantizedEmbedding
from inferd.quant.formats import (
    INT4_GROUP_SIZES,
    Fp8Weight,
    Int4Weight,
    Int8Weight,
    QuantizedWeight,
    pack_int4,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from inferd.quant.gguf_blocks import from_gguf_blocks
from inferd.quant.linear import (
    Fp8Linear,
    Int4Linear,
    Int8Linear,
    QuantLinear,
    linear_from_quantized,
)
from inferd.quant.registry import (
    GGUF_BLOCK_FORMATS,
    METHODS,
    QUANT_METHODS,
    SUPPORTED_GGUF_TYPES,
    quantize,
)

__all__ = [
    "GGUF_BLOCK_FORMATS",
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
    "QUANT_METHODS",
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
