// The reference shapes, token counts and counting conventions of benchmarks/README.md ("Shapes and
// conventions"), shared by every benchmark so that labels and counters mean the same thing everywhere.
#pragma once

#include "moe/types.hpp"

#include <array>
#include <span>
#include <string_view>

namespace moe::bench {

struct Shape {
  std::string_view name;  // the label used in benchmark names: BM_<...>/<name>/...
  Index d_model = 0;
  Index d_ff = 0;
  Index num_experts = 0;
  Index top_k = 0;
  Index num_shared = 0;   // shared (always-on) experts, each of width shared_d_ff
  Index shared_d_ff = 0;
};

inline constexpr Shape kSmall{"small", 512, 1024, 8, 2};
inline constexpr Shape kMixtralMini{"mixtral-mini", 1024, 3584, 8, 2};
inline constexpr Shape kDeepseekMoe{"deepseek-moe", 2048, 1408, 64, 6, 2, 1408};
inline constexpr Shape kMixtral8x7b{"mixtral-8x7b", 4096, 14336, 8, 2};

inline constexpr std::array kShapes{kSmall, kMixtralMini, kDeepseekMoe, kMixtral8x7b};

// Token counts T, decode to prefill: up to kDecodeTokens a batch is decode (memory-bound: each
// weight is read for a few tokens), above it prefill (compute-bound). Thread counts: 1 and 2.
// Constant arrays rather than brace-initialised std::vectors: GCC 12.2 with -march=native has been
// seen to miscompile constant vector initialisers of integers.
inline constexpr std::array<Index, 4> kTokenCounts{1, 16, 128, 1024};
inline constexpr std::array<Index, 2> kDecodeTokenCounts{1, 16};
inline constexpr Index kDecodeTokens = 16;
inline constexpr std::array<int, 2> kThreadCounts{1, 2};

// mixtral-8x7b, one real Mixtral layer, is benchmarked at decode only: prefill would take seconds
// per batch.
constexpr bool decode_only(const Shape& s) { return s.name == kMixtral8x7b.name; }

constexpr std::span<const Index> token_counts(const Shape& s) {
  return decode_only(s) ? std::span<const Index>(kDecodeTokenCounts) : std::span<const Index>(kTokenCounts);
}

// Parameters of one routed SwiGLU expert: w1, w3 [d_ff, d_model] and w2 [d_model, d_ff].
constexpr double expert_params(const Shape& s) { return 3.0 * double(s.d_model) * double(s.d_ff); }

// FLOP convention: routed expert FLOPs only (router and shared experts excluded), one multiply-add
// = 2 FLOPs. For `assignments` computed (token, expert) pairs: 2·3·d_model·d_ff·assignments.
constexpr double expert_flops(const Shape& s, Index assignments) {
  return 2.0 * expert_params(s) * double(assignments);
}

// The nominal count for T tokens when nothing is dropped: 2·T·k·3·d_model·d_ff.
constexpr double nominal_expert_flops(const Shape& s, Index num_tokens) {
  return expert_flops(s, num_tokens * s.top_k);
}

// Bytes convention: bytes of the distinct routed expert weights a batch touches (each weight read
// once however many tokens use it; router and shared experts excluded, like the FLOPs).
constexpr double expert_bytes(const Shape& s, Index distinct_experts, double bytes_per_weight = 4.0) {
  return expert_params(s) * double(distinct_experts) * bytes_per_weight;
}

// All routed expert weights of the layer: what must fit in cache for weights to stay resident.
constexpr double routed_weight_bytes(const Shape& s, double bytes_per_weight = 4.0) {
  return expert_bytes(s, s.num_experts, bytes_per_weight);
}

static_assert(routed_weight_bytes(kMixtralMini) == 8.0 * 3 * 1024 * 3584 * 4);  // 352 MB
static_assert(nominal_expert_flops(kSmall, 1) == 2.0 * 2 * 3 * 512 * 1024);

}  // namespace moe::bench
