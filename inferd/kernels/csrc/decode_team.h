// The quantized decode stack run by one thread team (decode_team.cpp), and the argument layout
// it shares with decoder_stack.cpp.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <optional>

namespace inferd_team {

constexpr int64_t PER_LAYER = 14;  // tensors per layer in decoder_stack's `weights`
enum Kind : int64_t { PACKED = 0, INT4 = 1, INT8 = 2, FP8 = 3, INT8_PLANES = 4, INT8_TILES = 5 };
constexpr int64_t TEAM_MAX_ROWS = 8;  // more rows than this are matmul-bound: the per-op path

// Whether the team runs this step: bf16 rows, at most min(max_rows, TEAM_MAX_ROWS) of them,
// and every linear quantized (oneDNN's float GEMMs bring their own threads).
bool serves(const at::Tensor& x, at::IntArrayRef layout, int64_t max_rows);

// decoder_stack's contract (see decoder_stack.cpp), computed by the team; bitwise the same.
at::Tensor decoder_stack(const at::Tensor& x_in, const c10::List<std::optional<at::Tensor>>& weights,
                         at::IntArrayRef layout, double eps, double scale, int64_t num_heads, int64_t head_dim,
                         int64_t window, const at::Tensor& cos, const at::Tensor& sin_signed,
                         at::TensorList kv_caches, const at::Tensor& slots, const at::Tensor& tables,
                         const at::Tensor& lens);

}  // namespace inferd_team
