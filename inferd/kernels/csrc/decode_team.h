// The quantized decode stack run by one thread team (decode_team.cpp), and the argument layout
// it shares with decoder_stack.cpp.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <optional>

namespace inferd_team {

// The linear kinds are defined once, in inferd/kernels/native_kinds.py; cpu_ops.py passes them
// as -DINFERD_KIND_<NAME>=<id> (list every new one in INFERD_LINEAR_KINDS below too).
#define INFERD_LINEAR_KINDS(X) X(PACKED) X(INT4) X(INT8) X(FP8) X(INT8_PLANES) X(INT8_TILES)
#if !defined(INFERD_KIND_PACKED) || !defined(INFERD_KIND_INT4) || !defined(INFERD_KIND_INT8) || \
    !defined(INFERD_KIND_FP8) || !defined(INFERD_KIND_INT8_PLANES) || !defined(INFERD_KIND_INT8_TILES)
#error "linear kinds missing: build with inferd/kernels/native_kinds.py's compile_defines()"
#endif
#define INFERD_KIND_ENUM(name) name = INFERD_KIND_##name,
enum Kind : int64_t { INFERD_LINEAR_KINDS(INFERD_KIND_ENUM) };
#undef INFERD_KIND_ENUM
constexpr int64_t TEAM_MAX_ROWS = 8;  // more rows than this are matmul-bound: the per-op path

// Whether the team runs this step: bf16 rows, at most min(max_rows, TEAM_MAX_ROWS) of them,
// and every linear quantized (oneDNN's float GEMMs bring their own threads).
bool serves(const at::Tensor& x, at::IntArrayRef layout, int64_t max_rows);

// decoder_stack's contract (see decoder_stack.cpp), computed by the team; bitwise the same.
at::Tensor decoder_stack(const at::Tensor& x_in, const c10::List<std::optional<at::Tensor>>& weights,
                         at::IntArrayRef layout, int64_t structure, double eps, double scale, int64_t num_heads,
                         int64_t head_dim, at::IntArrayRef windows, at::TensorList cos, at::TensorList sin_signed,
                         at::IntArrayRef layer_rope, at::TensorList kv_caches, const at::Tensor& slots,
                         const at::Tensor& tables, const at::Tensor& lens);

}  // namespace inferd_team
