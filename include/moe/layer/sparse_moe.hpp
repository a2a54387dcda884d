// SparseMoE: a sparse Mixture-of-Experts layer composed of an expert bank and a gate.
//
//   x [T, d_model] ─► gate.route ─► RoutingPlan [T, k] ─► build_dispatch (stable counting sort)
//     ─► gather rows into the expert-major buffer [rows, d_model]
//     ─► expert e on its contiguous block (experts in parallel, one work item each)
//     ─► combine y[t] = Σ_j w[t, j] · out[row(t, j)] in slot order ─► + shared experts ─► stats
//
// The same inputs give the same bits for any thread count: each expert's block is computed by one
// thread with single-threaded Eigen, and the combine order is fixed. Buffers grow to the largest
// batch seen and are reused, so a steady state of equal batch sizes does not allocate.
#pragma once

#include "moe/concepts.hpp"
#include "moe/detail/aligned_allocator.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/errors.hpp"
#include "moe/kernels/combine.hpp"
#include "moe/kernels/dispatch.hpp"
#include "moe/layer/routing_stats.hpp"
#include "moe/layer/shared_experts.hpp"

#include <algorithm>
#include <concepts>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace moe {

struct LayerOptions {
  int num_threads = 0;  // 0: OpenMP's default (OMP_NUM_THREADS); ignored without OpenMP
};

template <Expert X, Gate G>
  requires std::same_as<typename X::Scalar, typename G::Scalar>
class SparseMoE {
 public:
  using Scalar = typename X::Scalar;
  using S = Scalar;

  SparseMoE(G gate, X experts, LayerOptions options = {})
      : gate_(std::move(gate)), experts_(std::move(experts)), options_(options) {
    check_parts();
  }

  SparseMoE(G gate, X experts, SharedExperts<X> shared, LayerOptions options = {})
      : gate_(std::move(gate)), experts_(std::move(experts)), shared_(std::move(shared)), options_(options) {
    check_parts();
  }

  Index d_model() const { return experts_.d_model(); }
  Index num_experts() const { return experts_.num_experts(); }

  // y = MoE(x)
  //   requires: x: [T, d_model] row-major (T may be 0; a row block or Map binds without a copy;
  //             a column-major x does not compile — convert it explicitly); y: [T, d_model].
  //   ensures:  y overwritten; last_plan() and last_stats() describe this batch.
  //   throws:   shape_error on a wrong shape, std::domain_error if a router logit is not finite;
  //             on a throw, y, the plan and the statistics are unchanged.
  template <class Derived>
    requires RowMajorTokens<Derived> && std::same_as<typename Derived::Scalar, S>
  void forward(const Eigen::MatrixBase<Derived>& x, MatrixRef<S> y) {
    forward_rows(ConstMatrixRef<S>(x.derived()), y);
  }

  const RoutingStats& last_stats() const { return stats_; }
  const RoutingPlan<S>& last_plan() const { return plan_; }

  // Mode::training lets the gate draw noise (noisy top-k, jitter); inference is deterministic.
  void set_mode(Mode mode) { mode_ = mode; }
  Mode mode() const { return mode_; }
  void set_num_threads(int threads) { options_.num_threads = threads; }

  G& gate() { return gate_; }
  const G& gate() const { return gate_; }
  X& experts() { return experts_; }
  const X& experts() const { return experts_; }
  SharedExperts<X>* shared() { return shared_ ? &*shared_ : nullptr; }
  const SharedExperts<X>* shared() const { return shared_ ? &*shared_ : nullptr; }

 private:
  void check_parts() const {
    constexpr const char* who = "SparseMoE";
    detail::check_config(gate_.d_model() == experts_.d_model(), who, "gate.d_model() = ", gate_.d_model(),
                         " but experts.d_model() = ", experts_.d_model());
    detail::check_config(gate_.num_experts() == experts_.num_experts(), who, "gate.num_experts() = ",
                         gate_.num_experts(), " but experts.num_experts() = ", experts_.num_experts());
    if (shared_)
      detail::check_config(shared_->d_model() == experts_.d_model(), who, "shared.d_model() = ",
                           shared_->d_model(), " but experts.d_model() = ", experts_.d_model());
  }

  void forward_rows(ConstMatrixRef<S> x, MatrixRef<S> y) {
    constexpr const char* who = "SparseMoE::forward";
    const Index d = d_model();
    detail::check_dim(who, "x.cols()", x.cols(), "d_model", d);
    detail::check_dim(who, "y.rows()", y.rows(), "x.rows()", x.rows());
    detail::check_dim(who, "y.cols()", y.cols(), "d_model", d);
    // Resolve before EigenSingleThreaded sets OpenMP's default to 1, or "0: OpenMP's default"
    // would always mean one thread.
    const int threads = detail::resolve_threads(options_.num_threads);
    const detail::EigenSingleThreaded single_threaded_eigen;

    // Route into a scratch plan, so that a throw leaves the last plan and stats intact.
    gate_.route(x, next_plan_, mode_);
    MOE_ASSERT(next_plan_.num_tokens() == x.rows() && next_plan_.num_experts == num_experts());
    kernels::build_dispatch(next_plan_, dispatch_);
    const Index rows = dispatch_.num_rows();
    grow(buffer_, rows, d);
    grow(expert_out_, rows, d);
    kernels::gather_rows<S>(x, dispatch_.token, buffer_.topRows(rows));
    run_experts(threads);
    kernels::combine<S>(next_plan_, dispatch_, expert_out_.topRows(rows), y);
    if (shared_) shared_->forward_add(x, y, threads);

    std::swap(plan_, next_plan_);
    compute_routing_stats(plan_, dispatch_, stats_);
  }

  // expert_out[block of e] = expert_e(buffer[block of e]) for every expert with tokens.
  void run_experts(int threads) {
    active_.clear();
    Index max_rows = 0;
    for (Index e = 0; e < num_experts(); ++e)
      if (const Index n = dispatch_.rows_of(e); n > 0) {
        active_.push_back(e);
        max_rows = std::max(max_rows, n);
      }
    if (active_.empty()) return;
    threads = static_cast<int>(std::min<Index>(threads, static_cast<Index>(active_.size())));
    const Index per_thread = experts_.scratch_size(max_rows);
    scratch_.resize(static_cast<std::size_t>(per_thread * threads));
    detail::parallel_for(static_cast<Index>(active_.size()), threads, [&](Index item, int thread) {
      const Index e = active_[item], begin = dispatch_.offset[e], n = dispatch_.rows_of(e);
      const std::span<S> scratch(scratch_.data() + thread * per_thread,
                                 static_cast<std::size_t>(experts_.scratch_size(n)));
      experts_.forward(e, buffer_.middleRows(begin, n), expert_out_.middleRows(begin, n), scratch);
    });
  }

  static void grow(RowMatrix<S>& m, Index rows, Index cols) {
    if (m.rows() < rows || m.cols() != cols) m.resize(std::max(rows, m.rows()), cols);
  }

  G gate_;
  X experts_;
  std::optional<SharedExperts<X>> shared_;
  LayerOptions options_;
  Mode mode_ = Mode::inference;

  RoutingPlan<S> plan_, next_plan_;
  DispatchPlan dispatch_;
  RoutingStats stats_;
  RowMatrix<S> buffer_, expert_out_;  // [rows, d_model] dispatch order
  detail::AlignedVector<S> scratch_;  // per-thread expert scratch
  std::vector<Index> active_;
};

}  // namespace moe
