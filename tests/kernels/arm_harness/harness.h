// The interface between the harness's two translation units: ref.cpp (built for plain ARMv8,
// so quant_kernels.h takes tiles_scalar.h) and neon.cpp (built with dot products, so it takes
// tiles_neon.h). Plain types only: each side has its own QuantizedRows.
#pragma once

#include <cstdint>
#include <vector>

namespace harness {

struct Quant {  // a copy of one side's QuantizedRows
  std::vector<int16_t> x16;
  std::vector<int8_t> hi, lo;
  std::vector<float> scale, sum;
  std::vector<int32_t> isum;
};

// x: bf16 bits [rows, k]; codes, scales: a tile layout (quant_kernels.h); y: bf16 bits [rows, n].
void ref_quantize(const uint16_t* x, int64_t rows, int64_t k, int64_t group, Quant& out);
// int8 with_min: scales are (scale, min) pairs per tile and group, as int4's always are.
void ref_tiles(bool int4, const uint16_t* x, int64_t rows, const uint8_t* codes, const uint16_t* scales, int64_t k,
               int64_t group, int64_t begin, int64_t end, uint16_t* y, int64_t n, bool with_min = false);
bool ref_tiles_fast();

}  // namespace harness
