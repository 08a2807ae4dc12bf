// The scalar reference side (built with -march=armv8-a: no dot products, so quant_kernels.h
// includes tiles_scalar.h). Its namespace is renamed so the NEON side's inline functions of
// the same names stay apart.
#define inferd_quant inferd_quant_ref
#include "quant_kernels.h"
#undef inferd_quant

#include "harness.h"

namespace harness {

static_assert(!inferd_quant_ref::TILES_FAST, "the reference side must have taken tiles_scalar.h");

bool ref_tiles_fast() { return inferd_quant_ref::TILES_FAST; }

void ref_quantize(const uint16_t* x, int64_t rows, int64_t k, int64_t group, Quant& out) {
  inferd_quant_ref::QuantizedRows q;
  inferd_quant_ref::quantize_rows(reinterpret_cast<const c10::BFloat16*>(x), rows, k, group, q);
  out.x16 = q.x16;
  out.scale = q.scale;
  out.sum = q.sum;
  out.isum = q.isum;
}

void ref_tiles(bool int4, const uint16_t* x, int64_t rows, const uint8_t* codes, const uint16_t* scales, int64_t k,
               int64_t group, int64_t begin, int64_t end, uint16_t* y, int64_t n, bool with_min) {
  inferd_quant_ref::QuantizedRows q;
  inferd_quant_ref::quantize_rows(reinterpret_cast<const c10::BFloat16*>(x), rows, k, group, q);
  const auto* sc = reinterpret_cast<const c10::Half*>(scales);
  auto* out = reinterpret_cast<c10::BFloat16*>(y);
  if (int4)
    inferd_quant_ref::int4_tile_range(q, rows, codes, sc, k, group, begin, end, out, n);
  else
    inferd_quant_ref::int8_tile_range(q, rows, codes, sc, k, group, begin, end, out, n, with_min);
}

}  // namespace harness
