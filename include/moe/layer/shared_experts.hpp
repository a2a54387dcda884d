// Shared experts: always-on experts whose output is added to the routed output of every token.
//   plain (DeepSeek-MoE/V2/V3):  y += Σ_s expert_s(x)
//   gated (Qwen2-MoE):           y += σ(x·w_gateᵀ) · Σ_s expert_s(x)     w_gate: [1, d_model]
// (DeepSeek stores its n shared experts as one FFN of width n·d_ff; load it as one expert.)
#pragma once

#include "moe/concepts.hpp"
#include "moe/detail/aligned_allocator.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/errors.hpp"
#include "moe/kernels/gemm.hpp"
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

  // What a training forward keeps for backward.
  struct Cache {
    RowMatrix<S> sum;                 // [T, d_model]  Σ_s expert_s(x), before the gate
    Vector<S> gate;                   // [T]           σ(x·w_gateᵀ) (gated only)
    detail::AlignedVector<S> saved;   // each (tile, expert)'s forward working memory
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

  // y[t] += g_t · Σ_s expert_s(x[t])   (s ascending), g_t = σ(⟨x[t], w_gate⟩) or 1.
  //   x: [T, d_model];  y: [T, d_model] (accumulated);  cache: nullptr, or filled for backward.
  // Rows are processed in fixed tiles, a tile per thread while there are as many tiles as threads.
  // Experts with a packed path (PackedExpert: GatedExpert, FfnExpert) run on it as the routed
  // experts do, with their weights packed once per call in training (they may have changed) and
  // once for all in inference; with fewer tiles than threads (T ≤ 128 on two), each projection's
  // panels are split over the threads instead. Every output element is computed by one work item
  // in a fixed order: the bits do not depend on the thread count.
  void forward_add(ConstMatrixRef<S> x, MatrixRef<S> y, int threads, Cache* cache = nullptr) {
    const Index T = x.rows(), d = d_model(), tiles = num_tiles(T), rows = std::min(T, kTileRows);
    const Index scratch = experts_.scratch_size(rows);
    if (cache) {
      cache->sum.resize(T, d);
      cache->gate.resize(gated_ ? T : 0);
      cache->saved.resize(static_cast<std::size_t>(tiles * num_experts() * scratch));
      weights_changed();
    }
    prepack();
    threads = detail::threads_for_work(T * num_experts() * d * std::max(d, experts_.scratch_size(1)), threads);
    const bool tile_per_thread = tiles >= threads || !PackedExpert<X>;
    const int slots = tile_per_thread ? static_cast<int>(std::min<Index>(threads, std::max<Index>(tiles, 1))) : 1;
    const int panel_threads = tile_per_thread ? 1 : threads;
    const Index per_slot = slot_size(rows, cache != nullptr, panel_threads);
    workspace_.resize(static_cast<std::size_t>(per_slot * slots));
    const auto run_tile = [&](Index tile, int slot) {
      const Index begin = tile * kTileRows, n = std::min(kTileRows, T - begin);
      S* const base = workspace_.data() + slot * per_slot;  // laid out as slot_size says
      Eigen::Map<RowMatrix<S>> sum(base, n, d), out(base + rows * d, n, d);
      Eigen::Map<Vector<S>> gate(base + 2 * rows * d, n);
      S* const own_memory = base + 2 * rows * d + rows;
      const auto x_tile = x.middleRows(begin, n);
      S* const packed = own_memory + (cache ? 0 : scratch);
      if constexpr (PackedExpert<X>) kernels::pack_a(kernels::strided<S>(x_tile), n, d, packed);
      for (Index s = 0; s < num_experts(); ++s) {
        S* const memory = cache ? cache->saved.data() + (tile * num_experts() + s) * scratch : own_memory;
        run_expert(s, x_tile, s == 0 ? sum : out, std::span<S>(memory, static_cast<std::size_t>(scratch)), packed,
                   rows, panel_threads, cache != nullptr);
        if (s > 0) sum += out;
      }
      if (cache) cache->sum.middleRows(begin, n) = sum;
      if (gated_) {
        gate.noalias() = x_tile * gate_weight_.row(0).transpose();
        gate = (S(1) + (-gate.array()).exp()).inverse().matrix();
        sum.array().colwise() *= gate.array();
        if (cache) cache->gate.segment(begin, n) = gate;
      }
      y.middleRows(begin, n) += sum;
    };
    if (tile_per_thread)
      detail::parallel_for(tiles, slots, run_tile);
    else
      for (Index tile = 0; tile < tiles; ++tile) run_tile(tile, 0);
    if (cache) weights_changed();  // training's packed copies were for this call: the weights step next
  }

  // The packed path's copies of the weights (see SparseMoE::prepack): made now, or dropped.
  void prepack() {
    if constexpr (PackedExpert<X>)
      for (Index s = 0; s < num_experts(); ++s) experts_.prepack(s);
  }
  void weights_changed() {
    if constexpr (PackedExpert<X>) experts_.weights_changed();
  }

  // d_x += ∂⟨y, d_y⟩/∂x through the shared experts; grads += ∂⟨y, d_y⟩/∂θ.
  //   requires: cache filled by forward_add(x, ·, ·, &cache) on this x; d_y, d_x: [T, d_model].
  // One work item per shared expert (it owns its gradients); their d_x add up in expert order. With
  // fewer experts than threads (Qwen2-MoE's one), experts whose backward can split its products over
  // threads (GatedExpert, FfnExpert) run one after the other on all of them instead.
  void backward(ConstMatrixRef<S> x, const Cache& cache, ConstMatrixRef<S> d_y, MatrixRef<S> d_x, Gradients& grads,
                int threads) {
    const Index T = x.rows(), d = d_model(), tiles = num_tiles(T), E = num_experts();
    const Index scratch = experts_.scratch_size(std::min(T, kTileRows));
    const int product_threads = kSplitsBackward && E < threads ? threads : 1;
    const Index back_scratch = backward_scratch_size(std::min(T, kTileRows), product_threads);
    d_sum_ = d_y;
    if (gated_) {
      // y += g ⊙ sum:  ∂/∂sum = g ⊙ d_y;  ∂/∂u = ⟨d_y, sum⟩ · g (1 − g) for u = x·w_gateᵀ.
      const Vector<S> d_u = (d_y.cwiseProduct(cache.sum).rowwise().sum().array() * cache.gate.array() *
                             (S(1) - cache.gate.array())).matrix();
      grads.gate_weight.row(0).noalias() += d_u.transpose() * x;
      d_x.noalias() += d_u * gate_weight_.row(0);
      d_sum_.array().colwise() *= cache.gate.array();
    }
    threads = product_threads > 1 ? 1 : static_cast<int>(std::max<Index>(1, std::min<Index>(threads, E)));
    d_x_expert_.resize(E * T, d);
    back_workspace_.resize(static_cast<std::size_t>(back_scratch * threads));
    detail::parallel_for(E, threads, [&](Index s, int thread) {
      const std::span<S> work(back_workspace_.data() + thread * back_scratch, static_cast<std::size_t>(back_scratch));
      for (Index tile = 0; tile < tiles; ++tile) {
        const Index begin = tile * kTileRows, n = std::min(kTileRows, T - begin);
        const std::span<const S> saved(cache.saved.data() + (tile * E + s) * scratch,
                                       static_cast<std::size_t>(scratch));
        const auto d_x_tile = d_x_expert_.middleRows(s * T + begin, n);
        if constexpr (kSplitsBackward)
          experts_.backward(s, x.middleRows(begin, n), saved, d_sum_.middleRows(begin, n), d_x_tile, grads.experts, work,
                            product_threads);
        else
          experts_.backward(s, x.middleRows(begin, n), saved, d_sum_.middleRows(begin, n), d_x_tile, grads.experts, work);
      }
    });
    for (Index s = 0; s < E; ++s) d_x += d_x_expert_.middleRows(s * T, T);
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
  static constexpr Index kTileRows = 128;
  // Experts whose backward can split its products over threads (GatedExpert, FfnExpert).
  static constexpr bool kSplitsBackward = requires(const X& expert) { expert.backward_scratch_size(Index(1), 1); };
  Index backward_scratch_size(Index n, int threads) const {
    if constexpr (kSplitsBackward)
      return experts_.backward_scratch_size(n, threads);
    else
      return experts_.backward_scratch_size(n);
  }
  static Index num_tiles(Index T) { return (T + kTileRows - 1) / kTileRows; }

  // A slot's workspace for tiles of up to `rows` rows: sum, out [rows, d_model] and gate [rows];
  // the experts' working memory unless cached; and, on the packed path, the packed x [rows,
  // d_model], the packed hidden [rows, d_ff] and the kernels' work of each of `panel_threads`.
  Index slot_size(Index rows, bool cached, int panel_threads) const {
    const Index own = 2 * rows * d_model() + rows + (cached ? 0 : experts_.scratch_size(rows));
    if constexpr (PackedExpert<X>)
      return own + rows * (d_model() + experts_.d_ff()) + panel_threads * experts_.work_size(rows);
    else
      return own;
  }

  // out = expert_s(x), memory being the expert's working memory (scratch_size(n), kept for backward
  // when keep). On the packed path, packed holds kernels::pack_a(x) followed by slot_size's other
  // packed operands for tiles of `rows` rows; with panel_threads > 1, each projection's panels are
  // split into ~4 ranges per thread over them.
  void run_expert(Index s, ConstMatrixRef<S> x, MatrixRef<S> out, std::span<S> memory, S* packed, Index rows,
                  int panel_threads, bool keep) const {
    if constexpr (PackedExpert<X>) {
      const Index n = x.rows(), d = d_model(), f = experts_.d_ff();
      S* const packed_h = packed + rows * d;
      S* const works = packed_h + rows * f;
      const Index work = experts_.work_size(rows);
      const auto split = [&](Index panels, auto&& body) {  // body(p0, p1, work)
        const Index ranges = panel_threads > 1 ? 4 * panel_threads : 1;
        const Index chunk = std::max<Index>(1, (panels + ranges - 1) / ranges);
        detail::parallel_for((panels + chunk - 1) / chunk, panel_threads, [&](Index item, int thread) {
          body(item * chunk, std::min(panels, (item + 1) * chunk), works + thread * work);
        });
      };
      split(experts_.up_panels(), [&](Index p0, Index p1, S* w) { experts_.forward_up(s, n, packed, p0, p1, w, memory, keep); });
      kernels::pack_a(kernels::Strided<S>{experts_.hidden(memory, n), f, 1}, n, f, packed_h);
      split(experts_.down_panels(), [&](Index p0, Index p1, S* w) { experts_.forward_down(s, n, packed_h, p0, p1, w, nullptr, out); });
    } else {
      (void)packed, (void)rows, (void)panel_threads, (void)keep;
      experts_.forward(s, x, out, memory);
    }
  }

  X experts_;
  bool gated_ = false;
  RowMatrix<S> gate_weight_;
  detail::AlignedVector<S> workspace_, back_workspace_;
  RowMatrix<S> d_sum_, d_x_expert_;
};

}  // namespace moe
