// The torch op namespace this build registers into: inferd_cpu_<level> (cpu_ops.py passes
// -DINFERD_OPS_NS per ISA level), so libraries built for different levels load side by side.
#pragma once

#include <torch/library.h>

#ifndef INFERD_OPS_NS
#define INFERD_OPS_NS inferd_cpu
#endif

#define INFERD_STR_(x) #x
#define INFERD_STR(x) INFERD_STR_(x)
// torch's macros paste their namespace argument unexpanded: expand it one level up first.
#define INFERD_LIBRARY_(ns, m) TORCH_LIBRARY(ns, m)
#define INFERD_LIBRARY(m) INFERD_LIBRARY_(INFERD_OPS_NS, m)
#define INFERD_FRAGMENT_(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define INFERD_FRAGMENT(m) INFERD_FRAGMENT_(INFERD_OPS_NS, m)
#define INFERD_IMPL_(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)
#define INFERD_IMPL(key, m) INFERD_IMPL_(INFERD_OPS_NS, key, m)
// "inferd_cpu_<level>::name", for dispatcher look-ups of this build's own ops.
#define INFERD_OP(name) INFERD_STR(INFERD_OPS_NS) "::" name
