// Shared experts: always-on experts whose output is added to the routed output of every token.
//   plain (DeepSeek-MoE/V2/V3):  y += Σ_s expert_s(x)
//   gated (Qwen2-MoE):           y += σ(x·w_gateᵀ) · Σ_s expert_s(x)     w_gate: [1, d_model]
// (DeepSeek stores its n shared experts as one FFN of width n·d_ff; load it as one expert.)
#pragma once

#include "moe/concepts.hpp"
#include "moe/detail/aligned_allocator.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/errors.hpp"
#include "moe/random.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace moe {

template <Expert X>
class SharedExperts {
 public:
  using S = typename X::Scalar;

  // experts: every expert of the bank runs on every token. gated: Qwen2-MoE's sigmoid gate,
  // initialised like torch.nn.Linear(d_model, 1) from Generator(seed).
  explicit SharedExperts(X experts, bool gated = false, std::uint64_t seed = 0)
      : experts_(std::move(experts)), gated_(gated) {
    if (gated) {
      Generator rng(seed);
      gate_weight_.resize(1, experts_.d_model());
      init_linear_uniform(gate_weight_, experts_.d_model(), rng);
    }
  }

  Index d_model() const { return experts_.d_model(); }
  Index num_experts() const { return experts_.num_experts(); }
  bool gated() const { return gated_; }

  // y[t] += g_t · Σ_s expert_s(x[t])   (s ascending), g_t = σ(⟨x[t], w_gate⟩) or 1.
  //   x: [T, d_model];  y: [T, d_model] (accumulated)
  // Rows are processed in fixed tiles, so the bits do not depend on the thread count.
  void forward_add(ConstMatrixRef<S> x, MatrixRef<S> y, int threads) {
    const Index T = x.rows(), d = d_model();
    const Index tiles = (T + kTileRows - 1) / kTileRows;
    const Index scratch = experts_.scratch_size(std::min(T, kTileRows));
    const Index per_thread = 2 * kTileRows * d + kTileRows + scratch;  // sum, out, gate, expert scratch
    threads = static_cast<int>(std::max<Index>(1, std::min<Index>(threads, tiles)));
    workspace_.resize(static_cast<std::size_t>(per_thread * threads));
    detail::parallel_for(tiles, threads, [&](Index tile, int thread) {
      const Index begin = tile * kTileRows, n = std::min(kTileRows, T - begin);
      S* base = workspace_.data() + thread * per_thread;
      Eigen::Map<RowMatrix<S>> sum(base, n, d), out(base + kTileRows * d, n, d);
      Eigen::Map<Vector<S>> gate(base + 2 * kTileRows * d, n);
      const std::span<S> expert_scratch(base + 2 * kTileRows * d + kTileRows, static_cast<std::size_t>(scratch));
      const auto x_tile = x.middleRows(begin, n);
      for (Index s = 0; s < num_experts(); ++s) {
        experts_.forward(s, x_tile, s == 0 ? sum : out, expert_scratch);
        if (s > 0) sum += out;
      }
      if (gated_) {
        gate.noalias() = x_tile * gate_weight_.row(0).transpose();
        gate = (S(1) + (-gate.array()).exp()).inverse().matrix();
        sum.array().colwise() *= gate.array();
      }
      y.middleRows(begin, n) += sum;
    });
  }

  X& experts() { return experts_; }
  const X& experts() const { return experts_; }
  RowMatrix<S>& gate_weight() { return gate_weight_; }  // [1, d_model], empty unless gated
  const RowMatrix<S>& gate_weight() const { return gate_weight_; }

 private:
  static constexpr Index kTileRows = 128;

  X experts_;
  bool gated_ = false;
  RowMatrix<S> gate_weight_;
  detail::AlignedVector<S> workspace_;
};

}  // namespace moe
