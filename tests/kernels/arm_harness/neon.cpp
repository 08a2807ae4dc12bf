// Checks inferd's NEON kernels (tiles_neon.h, attention_neon.h, vec_neon.h) against the scalar
// references on an ARM64 CPU or under qemu-aarch64, without torch: built with dot products, so
// quant_kernels.h takes tiles_neon.h here while ref.cpp (plain ARMv8) takes tiles_scalar.h.
//   tiles      bitwise: quantize_rows' X, sx, group sums; int4 / int8 tile_range outputs
//   exp4       bitwise against exp16's formula in scalar code (= vec_avx2.h's exp8)
//   bf16       round_bf16 + store4 against c10's conversion
//   attention  attend_heads (dispatching to attend_heads_neon) against attend_heads_scalar,
//              within float rounding
// Prints one line per family and exits 1 on any mismatch.
#include "quant_kernels.h"
#include "attention.h"
#include "harness.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <random>

#if !defined(__ARM_FEATURE_DOTPROD) || !defined(__ARM_NEON)
#error "build neon.cpp with -march=armv8.2-a+dotprod+fp16"
#endif
static_assert(inferd_quant::TILES_FAST, "quant_kernels.h must have taken tiles_neon.h");
#if !defined(INFERD_ATTEND_SIMD)
#error "attention.h must have taken attention_neon.h"
#endif

namespace {

int failures = 0;

void fail(const char* what) {
  if (++failures <= 20) std::printf("FAIL %s\n", what);
}

uint16_t bf16_bits(float v) { return c10::BFloat16(v).x; }
uint16_t half_bits(float v) { return c10::Half(v).x; }

// ---------------------------------------------------------------- tiles

// Activations with the awkward cases: zero groups, NaN and infinity, outliers, subnormals.
std::vector<uint16_t> make_x(std::mt19937& rng, int64_t rows, int64_t k, int64_t group, int variant) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> x(rows * k);
  for (auto& v : x) v = bf16_bits(nd(rng));
  const int64_t groups = k / group;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t g = (r + variant) % groups, base = r * k + g * group;
    switch ((r + variant) % 7) {
      case 0: for (int64_t i = 0; i < group; ++i) x[base + i] = 0; break;
      case 1: x[base + 3] = bf16_bits(NAN); break;
      case 2: x[base + 5] = bf16_bits(-INFINITY); break;
      case 3: x[base + 1] = bf16_bits(3.0e38f); break;
      case 4: for (int64_t i = 0; i < group; ++i) x[base + i] = static_cast<uint16_t>(rng() % 3);  // subnormals
              break;
      case 5: for (int64_t i = 0; i < group; ++i) x[base + i] = bf16_bits(nd(rng) * 1e-30f); break;
      default: x[base + 7] = bf16_bits(-40000.f); break;
    }
  }
  return x;
}

template <typename T> bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

void check_quantize(const std::vector<uint16_t>& x, int64_t rows, int64_t k, int64_t group, const char* what) {
  harness::Quant ref;
  harness::ref_quantize(x.data(), rows, k, group, ref);
  inferd_quant::QuantizedRows q;
  inferd_quant::quantize_rows(reinterpret_cast<const c10::BFloat16*>(x.data()), rows, k, group, q);
  char msg[160];
  const std::vector<int16_t> x16(q.x16.begin(), q.x16.begin() + rows * k);
  if (!same_bits(x16, ref.x16)) std::snprintf(msg, sizeof msg, "quantize x16 %s", what), fail(msg);
  if (!same_bits(q.scale, ref.scale)) std::snprintf(msg, sizeof msg, "quantize scale %s", what), fail(msg);
  if (!same_bits(q.sum, ref.sum)) std::snprintf(msg, sizeof msg, "quantize sum %s", what), fail(msg);
  if (!same_bits(q.isum, ref.isum)) std::snprintf(msg, sizeof msg, "quantize isum %s", what), fail(msg);
  for (int64_t i = 0; i < rows * k; ++i)
    if (256 * q.hi[i] + q.lo[i] != q.x16[i] || q.hi[i] == -128) {
      std::snprintf(msg, sizeof msg, "quantize digits %s at %" PRId64, what, i), fail(msg);
      break;
    }
}

int64_t check_tiles(std::mt19937& rng, bool int4, int64_t rows, int64_t group, bool with_min = false) {
  const int64_t k = group * 3, tiles = 7, n = tiles * 16, groups = k / group;
  const int64_t kc = int4 ? 8 : 4, halves = int4 || with_min ? 32 : 16;
  std::vector<uint8_t> codes(tiles * (k / kc) * 64);
  for (auto& c : codes) c = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> ud(-1.f, 1.f);
  std::vector<uint16_t> sc(tiles * groups * halves);
  for (int64_t i = 0; i < static_cast<int64_t>(sc.size()); ++i)
    sc[i] = half_bits(i % halves < 16 ? ud(rng) * 0.05f : ud(rng) * 0.5f);  // scales, then (int4) mins
  int64_t checked = 0;
  for (int variant = 0; variant < 2; ++variant) {
    const std::vector<uint16_t> x = make_x(rng, rows, k, group, variant);
    char what[96];
    std::snprintf(what, sizeof what, "%s rows=%" PRId64 " group=%" PRId64 " variant=%d",
                  int4 ? "int4" : with_min ? "int8+min" : "int8", rows, group, variant);
    check_quantize(x, rows, k, group, what);
    const int64_t ranges[][2] = {{0, tiles}, {1, 6}, {5, 7}};
    for (const auto& range : ranges) {
      std::vector<uint16_t> y_ref(rows * n, 0xAAAA), y(rows * n, 0xAAAA);
      harness::ref_tiles(int4, x.data(), rows, codes.data(), sc.data(), k, group, range[0], range[1], y_ref.data(), n,
                         with_min);
      inferd_quant::QuantizedRows q;
      inferd_quant::quantize_rows(reinterpret_cast<const c10::BFloat16*>(x.data()), rows, k, group, q);
      const auto* scp = reinterpret_cast<const c10::Half*>(sc.data());
      auto* yp = reinterpret_cast<c10::BFloat16*>(y.data());
      if (int4)
        inferd_quant::int4_tile_range(q, rows, codes.data(), scp, k, group, range[0], range[1], yp, n);
      else
        inferd_quant::int8_tile_range(q, rows, codes.data(), scp, k, group, range[0], range[1], yp, n, with_min);
      for (int64_t i = 0; i < rows * n; ++i)
        if (y[i] != y_ref[i]) {
          char msg[200];
          std::snprintf(msg, sizeof msg, "tiles %s range [%" PRId64 ", %" PRId64 ") at row %" PRId64 " col %" PRId64
                        ": neon %04x ref %04x", what, range[0], range[1], i / n, i % n, y[i], y_ref[i]);
          fail(msg);
          break;
        }
      checked += rows * n;
    }
  }
  return checked;
}

// ---------------------------------------------------------------- vec_neon.h

float exp_ref(float x) {  // exp16's steps in scalar code; scalef's single rounding is ldexp's
  x = x > -104.f ? x : -104.f;  // NaN -> -104, as max_ps(x, -104) has it
  x = x < 89.f ? x : 89.f;
  const float t = x * 1.4426950408889634f;
  const float nn = std::nearbyint(t);
  const float f = (t - nn) * 0.6931471805599453f;
  float p = 1.f / 5040.f;
  p = std::fma(p, f, 1.f / 720.f);
  p = std::fma(p, f, 1.f / 120.f);
  p = std::fma(p, f, 1.f / 24.f);
  p = std::fma(p, f, 1.f / 6.f);
  p = std::fma(p, f, 0.5f);
  p = std::fma(p, f, 1.f);
  p = std::fma(p, f, 1.f);
  return std::ldexp(p, static_cast<int>(nn));
}

int64_t check_vec(std::mt19937& rng) {
  std::uniform_real_distribution<float> ud(-110.f, 95.f);
  int64_t checked = 0;
  for (int it = 0; it < 50000; ++it) {
    float xs[4];
    for (auto& v : xs) v = ud(rng);
    if (it == 0) xs[0] = NAN, xs[1] = -INFINITY, xs[2] = INFINITY, xs[3] = -0.f;
    if (it == 1) xs[0] = -103.99f, xs[1] = -87.5f, xs[2] = 88.7f, xs[3] = 0.f;
    float out[4];
    vst1q_f32(out, inferd_vec::exp4(vld1q_f32(xs)));
    for (int i = 0; i < 4; ++i) {
      const float r = exp_ref(xs[i]);
      if (std::memcmp(&r, &out[i], 4) != 0) {
        char msg[120];
        std::snprintf(msg, sizeof msg, "exp4(%a) = %a, exp16's formula gives %a", xs[i], out[i], r);
        fail(msg);
      }
      ++checked;
    }
  }
  std::normal_distribution<float> nd(0.f, 100.f);
  for (int it = 0; it < 20000; ++it) {
    float xs[4];
    for (auto& v : xs) v = nd(rng);
    uint16_t got[4];
    inferd_vec::store4(reinterpret_cast<c10::BFloat16*>(got), inferd_vec::round_as4(vld1q_f32(xs), c10::BFloat16()));
    for (int i = 0; i < 4; ++i)
      if (got[i] != bf16_bits(xs[i])) fail("round_bf16/store4 against c10::BFloat16");
    float back[4];
    vst1q_f32(back, inferd_vec::load4(reinterpret_cast<const c10::BFloat16*>(got)));
    for (int i = 0; i < 4; ++i)
      if (back[i] != static_cast<float>(c10::BFloat16(xs[i]))) fail("load4(bf16) against c10::BFloat16");
    const float h = inferd_vec::hsum4(vld1q_f32(xs));
    if (h != (xs[0] + xs[1]) + (xs[2] + xs[3])) fail("hsum4's tree");
    checked += 4;
  }
  return checked;
}

// ---------------------------------------------------------------- attention

double max_attention_err[2] = {0, 0};  // fp32, bf16: |neon - scalar| / (1 + |scalar|)

template <typename T, int D, int G>
int64_t check_attention_case(std::mt19937& rng, int64_t block_size, int64_t lo, int64_t hi, int64_t h0, int64_t h1) {
  constexpr int64_t kv_heads = 3;
  const int64_t blocks = (hi + block_size - 1) / block_size, pool = blocks + 3;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<T> kc(pool * block_size * kv_heads * D), vc(kc.size()), q(kv_heads * G * D);
  for (auto& v : kc) v = static_cast<T>(nd(rng));
  for (auto& v : vc) v = static_cast<T>(nd(rng));
  for (auto& v : q) v = static_cast<T>(nd(rng));
  std::vector<int64_t> table(blocks);
  for (int64_t b = 0; b < blocks; ++b) table[b] = (b * 5 + 2) % pool;  // scattered, distinct (pool >= 4)
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  std::vector<float> scratch((h1 - h0) * G * ((hi - lo) + D));
  std::vector<T> out(q.size(), static_cast<T>(0.f)), ref(q.size(), static_cast<T>(0.f));
  inferd_rows::attend_heads<T, D, G>(q.data(), kc.data(), vc.data(), table.data(), block_size, kv_heads, h0, h1, lo,
                                     hi, scale, scratch.data(), out.data());
  const inferd_rows::PagedRows<T> paged{table.data(), block_size, kv_heads * D, hi};
  std::fill(scratch.begin(), scratch.end(), 0.f);
  inferd_rows::attend_heads_scalar<T, D, G>(q.data(), kc.data(), vc.data(), paged, h0, h1, lo, hi, scale,
                                            scratch.data(), ref.data());
  constexpr bool bf16 = std::is_same_v<T, c10::BFloat16>;
  for (int64_t i = 0; i < static_cast<int64_t>(q.size()); ++i) {
    const float a = static_cast<float>(out[i]), b = static_cast<float>(ref[i]);
    const bool inside = i >= h0 * G * D && i < h1 * G * D;
    const double err = std::fabs(static_cast<double>(a) - b);
    // fp32: a few float roundings of O(1) sums; bf16: one output rounding apart at most.
    const double tol = bf16 ? std::ldexp(std::fabs(b), -7) + 1e-4 : 1e-5 * (1 + std::fabs(b));
    if (inside) max_attention_err[bf16] = std::max(max_attention_err[bf16], err / (1 + std::fabs(b)));
    if (!(inside ? err <= tol : a == 0.f)) {
      char msg[200];
      std::snprintf(msg, sizeof msg, "attention %s D=%d G=%d bs=%" PRId64 " [%" PRId64 ", %" PRId64 ") heads [%" PRId64
                    ", %" PRId64 ") at %" PRId64 ": neon %g scalar %g", bf16 ? "bf16" : "fp32", D, G, block_size, lo,
                    hi, h0, h1, i, a, b);
      fail(msg);
      break;
    }
  }
  return (h1 - h0) * G * D;
}

template <typename T, int D, int G>
int64_t check_attention(std::mt19937& rng) {
  int64_t checked = 0;
  const int64_t spans[][2] = {{0, 1}, {0, 3}, {0, 37}, {9, 50}};
  const int64_t heads[][2] = {{0, 3}, {1, 2}};
  for (int64_t bs : {16, 5})
    for (const auto& s : spans)
      for (const auto& h : heads) checked += check_attention_case<T, D, G>(rng, bs, s[0], s[1], h[0], h[1]);
  return checked;
}

template <typename T, int D>
int64_t check_attention_groups(std::mt19937& rng) {
  return check_attention<T, D, 1>(rng) + check_attention<T, D, 2>(rng) + check_attention<T, D, 3>(rng) +
         check_attention<T, D, 8>(rng);
}

}  // namespace

int main() {
  std::mt19937 rng(20240611);
  int before = failures;
  int64_t n = check_vec(rng);
  std::printf("vec_neon: %" PRId64 " values, %s\n", n, failures == before ? "bitwise equal" : "MISMATCH");

  before = failures;
  n = 0;
  for (bool int4 : {true, false})
    for (int64_t group : {16, 32, 64, 128, 256}) {  // 16: GGUF Q6_K (int8), Q2_K/Q3_K (int4)
      if (!int4 && group > 128) continue;  // int8 tiles take groups up to 128
      for (int64_t rows = 1; rows <= 9; ++rows) {
        n += check_tiles(rng, int4, rows, group);
        if (!int4) n += check_tiles(rng, false, rows, group, true);  // int8 with mins (GGUF Q5_1/Q5_K)
      }
    }
  std::printf("tiles: %" PRId64 " outputs (int4, int8, int8 with mins; rows 1..9, groups 16..256), %s\n", n,
              failures == before ? "bitwise equal to tiles_scalar.h" : "MISMATCH");

  before = failures;
  n = check_attention_groups<float, 4>(rng) + check_attention_groups<float, 12>(rng) +
      check_attention_groups<float, 64>(rng) + check_attention_groups<float, 128>(rng) +
      check_attention_groups<c10::BFloat16, 4>(rng) + check_attention_groups<c10::BFloat16, 12>(rng) +
      check_attention_groups<c10::BFloat16, 64>(rng) + check_attention_groups<c10::BFloat16, 128>(rng);
  std::printf("attention: %" PRId64 " outputs (fp32 and bf16, D 4..128, G 1..8), max error fp32 %.3g bf16 %.3g, %s\n",
              n, max_attention_err[0], max_attention_err[1], failures == before ? "within rounding of attend_heads_scalar" : "MISMATCH");

  std::printf(failures ? "FAILED (%d)\n" : "OK\n", failures);
  return failures ? 1 : 0;
}
