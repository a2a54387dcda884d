// Shared experts: always-on experts whose output is added to the routed output of every token.
//   plain (DeepSeek-MoE/V2/V3):  y += Σ_s expert_s(x)
//   gated (Qwen2-MoE):           y += σ(x·w_gateᵀ) · Σ_s expert_s(x)     w_gate: [1, d_model]
// (DeepSeek stores its n shared experts as one FFN of width n·d_ff; load it as one expert.)
// They run through the same runner as the routed experts, on a batch in which every expert sees
// every token (read in place), in tiles of kTileRows rows.
#pragma once

#include "moe/concepts.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/detail/scratch.hpp"
#include "moe/dispatch/expert_batch.hpp"
#include "moe/dispatch/runner.hpp"
#include "moe/errors.hpp"
#include "moe/random.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace moe {

template <Expert X>
class SharedExperts {
 public:
  using S = typename X::Scalar;

  // What a training forward keeps for backward.
  struct Cache {
    RowMatrix<S> sum;        // [T, d_model]  Σ_s expert_s(x), before the gate
    Vector<S> gate;          // [T]           σ(x·w_gateᵀ) (gated only)
    ExpertBatch<S> batch;    // the experts' outputs [E·T, d_model] (x is read in place during the call)
    SavedBlocks<S> saved;    // each block's forward working memory
  };

  // Gradients: the same names and shapes as the parameters.
  struct Gradients {
    typename X::Gradients experts;
    RowMatrix<S> gate_weight;
    void collect_parameters(const std::string& prefix, ParameterList<S>& out) {
      experts.collect_parameters(prefix, out);
      add_parameter(out, prefix, "gate_weight", gate_weight);
    }
  };

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

  // The memory of one inference call: one per thread when threads share the experts.
  struct Workspace {
    ExpertBatch<S> batch;  // the experts' outputs [E·T, d_model] (x is read in place during the call)
    ExpertRunner<X> runner{kTileRows};
    Vector<S> gate;

    Workspace() = default;
    Workspace(const Workspace&) : Workspace() {}  // memory, not state: a copy starts empty
    Workspace& operator=(const Workspace&) { return *this; }
    Workspace(Workspace&&) noexcept = default;
    Workspace& operator=(Workspace&&) noexcept = default;
    ~Workspace() = default;
  };

  // y[t] += g_t · Σ_s expert_s(x[t])   (s ascending), g_t = σ(⟨x[t], w_gate⟩) or 1.
  //   x: [T, d_model];  y: [T, d_model] (accumulated).
  // The const form only reads the experts (threads with workspaces of their own may share them;
  // unpacked weights are packed panel by panel as used: prepack() first); the plain form packs
  // first and uses the object's own workspace; the training form fills cache for backward.
  // The bits do not depend on the thread count, nor on the form.
  void forward_add(ConstMatrixRef<S> x, MatrixRef<S> y, int threads, Workspace& work) const {
    work.batch.broadcast(x, num_experts());
    work.batch.reserve(d_model());
    work.runner.forward(experts_, work.batch, threads);
    add_sum(x, work.batch, work.gate, nullptr, y);
  }
  void forward_add(ConstMatrixRef<S> x, MatrixRef<S> y, int threads) {
    prepack();
    forward_add(x, y, threads, own_);
  }
  void forward_add(ConstMatrixRef<S> x, MatrixRef<S> y, int threads, Cache& cache) {
    cache.batch.broadcast(x, num_experts());
    cache.batch.reserve(d_model());
    runner_.forward(experts_, cache.batch, cache.saved, threads);
    cache.sum.resize(x.rows(), d_model());
    add_sum(x, cache.batch, cache.gate, &cache.sum, y);
  }

  // Frees the buffers of the plain and training forwards and of backward.
  void release_workspace() {
    runner_ = ExpertRunner<X>(kTileRows);
    own_ = Workspace();
    inputs_.release(), d_out_.release(), d_in_.release();
  }

  // The fast path's copies of the weights (see SparseMoE::prepack): made now, or dropped.
  void prepack() { ExpertRunner<X>::prepack(experts_, 1); }
  void weights_changed() { ExpertRunner<X>::weights_changed(experts_); }

  // d_x += ∂⟨y, d_y⟩/∂x through the shared experts; grads += ∂⟨y, d_y⟩/∂θ.
  //   requires: cache filled by forward_add(x, ·, ·, cache) on this x; d_y, d_x: [T, d_model].
  // The experts' d_x add up in expert order.
  void backward(ConstMatrixRef<S> x, const Cache& cache, ConstMatrixRef<S> d_y, MatrixRef<S> d_x, Gradients& grads,
                int threads) {
    const Index T = x.rows(), d = d_model(), E = num_experts();
    d_out_.resize(E * T, d);
    d_out_.topRows(T) = d_y;
    if (gated_) {
      // y += g ⊙ sum:  ∂/∂sum = g ⊙ d_y;  ∂/∂u = ⟨d_y, sum⟩ · g (1 − g) for u = x·w_gateᵀ.
      const Vector<S> d_u = (d_y.cwiseProduct(cache.sum).rowwise().sum().array() * cache.gate.array() *
                             (S(1) - cache.gate.array())).matrix();
      grads.gate_weight.row(0).noalias() += d_u.transpose() * x;
      d_x.noalias() += d_u * gate_weight_.row(0);
      d_out_.topRows(T).array().colwise() *= cache.gate.array();
    }
    for (Index s = 1; s < E; ++s) d_out_.middleRows(s * T, T) = d_out_.topRows(T);
    inputs_.broadcast(x, E);  // the rows forward ran on, from the caller (the cache's x may be gone)
    d_in_.resize(E * T, d);
    runner_.backward(experts_, inputs_, cache.saved, d_out_, d_in_, grads.experts, threads);
    for (Index s = 0; s < E; ++s) d_x += d_in_.middleRows(s * T, T);
  }

  Gradients make_gradients() const
    requires TrainableExpert<X>
  {
    return {experts_.make_gradients(), RowMatrix<S>::Zero(gate_weight_.rows(), gate_weight_.cols())};
  }

  void collect_parameters(const std::string& prefix, ParameterList<S>& out) {
    experts_.collect_parameters(prefix, out);
    add_parameter(out, prefix, "gate_weight", gate_weight_);
  }

  X& experts() { return experts_; }
  const X& experts() const { return experts_; }
  RowMatrix<S>& gate_weight() { return gate_weight_; }  // [1, d_model], empty unless gated
  const RowMatrix<S>& gate_weight() const { return gate_weight_; }

 private:
  // Rows per block: a tile's packed input stays in cache while every weight panel passes by.
  static constexpr Index kTileRows = 128;

  // y += gate ⊙ Σ_s out_s, tile by tile; sum (training) keeps the sum before the gate.
  void add_sum(ConstMatrixRef<S> x, ExpertBatch<S>& batch, Vector<S>& gate, RowMatrix<S>* sum_out,
               MatrixRef<S> y) const {
    const Index T = x.rows();
    gate.resize(gated_ ? T : 0);
    for (Index begin = 0; begin < T; begin += kTileRows) {
      const Index n = std::min(kTileRows, T - begin);
      auto sum = batch.out.middleRows(begin, n);  // expert 0's rows, the others added in order in place
      for (Index s = 1; s < num_experts(); ++s) sum += batch.out.middleRows(s * T + begin, n);
      if (sum_out) sum_out->middleRows(begin, n) = sum;
      if (gated_) {
        // Token by token (a dot product and a scalar exp), so that a token's gate has the same
        // bits whatever else is in the batch.
        auto g = gate.segment(begin, n);
        for (Index t = 0; t < n; ++t) g[t] = S(1) / (S(1) + std::exp(-x.row(begin + t).dot(gate_weight_.row(0))));
        sum.array().colwise() *= g.array();
      }
      y.middleRows(begin, n) += sum;
    }
  }

  X experts_;
  bool gated_ = false;
  RowMatrix<S> gate_weight_;
  // Buffers, which a copy does not copy.
  ExpertRunner<X> runner_{kTileRows};       // training's
  Workspace own_;                            // the plain forward_add's
  detail::Scratch<ExpertBatch<S>> inputs_;  // backward's view of x
  detail::Scratch<RowMatrix<S>> d_out_, d_in_;
};

}  // namespace moe
