// SparseMoE: a sparse Mixture-of-Experts layer composed of an expert bank, a gate, and optional
// shared experts and auxiliary losses.
//
//   x [T, d_model] ─► gate.route ─► RoutingPlan [T, k] ─► build_dispatch (stable counting sort)
//     ─► gather rows into the expert-major buffer [rows, d_model]
//     ─► expert e on its contiguous block (experts in parallel, one work item each)
//     ─► combine y[t] = Σ_j w[t, j] · out[row(t, j)] in slot order ─► + shared experts ─► stats
//
// Backward runs the same way in reverse (DESIGN.md §5). The same inputs give the same bits for
// any thread count: each expert's block is computed by one thread with single-threaded Eigen,
// each expert's gradients are owned by one work item, and every sum over slots has a fixed order.
// Buffers grow to the largest batch seen and are reused: a steady state does not allocate.
#pragma once

#include "moe/concepts.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/errors.hpp"
#include "moe/kernels/combine.hpp"
#include "moe/kernels/dispatch.hpp"
#include "moe/layer/layer_cache.hpp"
#include "moe/layer/routing_stats.hpp"
#include "moe/layer/shared_experts.hpp"

#include <algorithm>
#include <concepts>
#include <optional>
#include <span>
#include <tuple>
#include <utility>
#include <vector>

namespace moe {

template <Expert X, Gate G, AuxLoss... Losses>
  requires std::same_as<typename X::Scalar, typename G::Scalar> &&
           (std::same_as<typename X::Scalar, typename Losses::Scalar> && ...)
class SparseMoE {
 public:
  using Scalar = typename X::Scalar;
  using S = Scalar;
  using Cache = LayerCache<S, SharedExperts<X>>;

  // Gradients of every parameter, with the names and shapes of parameters().
  struct Gradients {
    typename G::Gradients gate;
    typename X::Gradients experts;
    std::optional<typename SharedExperts<X>::Gradients> shared;

    ParameterList<S> parameters() {
      ParameterList<S> out;
      gate.collect_parameters("gate.", out);
      experts.collect_parameters("experts.", out);
      if (shared) shared->collect_parameters("shared_experts.", out);
      return out;
    }
  };

  // The auxiliary losses, if any, follow the parts in the order of the template arguments.
  explicit SparseMoE(G gate, X experts, Losses... losses)
      : gate_(std::move(gate)), experts_(std::move(experts)), losses_(std::move(losses)...) {
    check_parts();
  }

  SparseMoE(G gate, X experts, SharedExperts<X> shared, Losses... losses)
      : gate_(std::move(gate)), experts_(std::move(experts)), shared_(std::move(shared)), losses_(std::move(losses)...) {
    check_parts();
  }

  Index d_model() const { return experts_.d_model(); }
  Index num_experts() const { return experts_.num_experts(); }

  // Inference: y = MoE(x).
  //   requires: x: [T, d_model] row-major (T may be 0; a row block or Map binds without a copy;
  //             a column-major x does not compile — convert it explicitly); y: [T, d_model]
  //             (y may be x itself: the layer reads x only before it writes y).
  //   ensures:  y overwritten; last_plan() and last_stats() describe this batch.
  //   throws:   shape_error on a wrong shape, std::domain_error if a router logit is not finite;
  //             on a throw, y, last_plan() and last_stats() are unchanged.
  template <class Derived>
    requires RowMajorTokens<Derived> && std::same_as<typename Derived::Scalar, S>
  void forward(const Eigen::MatrixBase<Derived>& x, MatrixRef<S> y) {
    forward_rows(ConstMatrixRef<S>(x.derived()), y, state_, /*training=*/false);
  }

  // Training forward: as above, and fills cache for backward(). mask: empty, or [T] with 0 for
  // padding tokens (the auxiliary losses skip them). Returns Σ of the auxiliary losses (each
  // already times its coefficient). Noise is drawn only when mode() is Mode::training.
  template <class Derived>
    requires RowMajorTokens<Derived> && std::same_as<typename Derived::Scalar, S>
  double forward(const Eigen::MatrixBase<Derived>& x, MatrixRef<S> y, Cache& cache,
                 std::span<const std::uint8_t> mask = {}) {
    const ConstMatrixRef<S> rows(x.derived());
    if (!mask.empty()) detail::check_dim("SparseMoE::forward", "mask.size()", Index(mask.size()), "x.rows()", rows.rows());
    forward_rows(rows, y, cache, /*training=*/true);
    cache.mask.assign(mask.begin(), mask.end());
    // The auxiliary losses, once per step: their gradients wait in the cache for backward.
    cache.aux_grads.reset(cache.plan);
    cache.aux = std::apply(
        [&](const auto&... loss) { return (0.0 + ... + loss.evaluate(cache.plan, cache.mask, &cache.aux_grads)); },
        losses_);
    return cache.aux;
  }

  // backward(cache, d_y, d_x, grads)
  //   requires: cache filled by the training forward(x, y, cache) with these parameters;
  //             d_y, d_x: [T, d_model].
  //   ensures:  d_x = ∂(⟨y, d_y⟩ + aux losses)/∂x                 (overwritten)
  //             grads += ∂(⟨y, d_y⟩ + aux losses)/∂θ              (accumulated)
  //             The selection bias gets no gradient (it is updated by its own rule).
  void backward(const Cache& cache, ConstMatrixRef<S> d_y, MatrixRef<S> d_x, Gradients& grads)
    requires TrainableExpert<X> && TrainableGate<G>
  {
    constexpr const char* who = "SparseMoE::backward";
    check_cache(cache, who);
    detail::check_dim(who, "d_y.rows()", d_y.rows(), "x.rows()", cache.x.rows());
    detail::check_dim(who, "d_y.cols()", d_y.cols(), "d_model", d_model());
    // d_weight[t, j] = ⟨d_y[t], out[row(t, j)]⟩ and d_out[row(t, j)] = weight[t, j] · d_y[t].
    const Index T = cache.x.rows(), k = cache.plan.slots_per_token(), rows = cache.dispatch.num_rows();
    d_weight_.setZero(T, k);
    grow(d_out_, rows, d_model());
    for (Index t = 0; t < T; ++t)
      for (Index j = 0; j < k; ++j)
        if (const auto r = cache.dispatch.row[t * k + j]; r != kEmptySlot) {
          d_weight_(t, j) = d_y.row(t).dot(cache.expert_out.row(r));
          d_out_.row(r) = cache.plan.weight(t, j) * d_y.row(t);
        }
    backward_experts(cache, d_out_.topRows(rows), d_weight_, d_x, grads);
    if (shared_) shared_->backward(cache.x, cache.shared, d_y, d_x, *grads.shared, threads());
  }

  // Backward from gradients with respect to each expert output (dispatch order) and each combine
  // weight — for losses that look at the experts' outputs one by one (loss/mixture.hpp).
  //   d_expert_out: [rows, d_model];  d_weight: [T, k];  d_x, grads as in backward()
  //   (shared experts are not reached from here).
  void backward_experts(const Cache& cache, ConstMatrixRef<S> d_expert_out, ConstMatrixRef<S> d_weight,
                        MatrixRef<S> d_x, Gradients& grads)
    requires TrainableExpert<X> && TrainableGate<G>
  {
    constexpr const char* who = "SparseMoE::backward";
    check_cache(cache, who);
    const Index T = cache.x.rows(), k = cache.plan.slots_per_token(), rows = cache.dispatch.num_rows();
    detail::check_dim(who, "d_x.rows()", d_x.rows(), "x.rows()", T);
    detail::check_dim(who, "d_x.cols()", d_x.cols(), "d_model", d_model());
    detail::check_dim(who, "d_expert_out.rows()", d_expert_out.rows(), "dispatch rows", rows);
    detail::check_dim(who, "d_weight.rows()", d_weight.rows(), "x.rows()", T);
    detail::check_dim(who, "d_weight.cols()", d_weight.cols(), "slots", k);
    [[maybe_unused]] const detail::EigenSingleThreaded single_threaded_eigen;

    // Experts, one work item each; then d_x[t] = Σ_j d_rows[row(t, j)] in slot order.
    grow(d_rows_, rows, d_model());
    const auto& offset = cache.dispatch.offset;
    run_on_active_experts(cache.dispatch, experts_.backward_scratch_size(max_rows(cache.dispatch)),
                          [&](Index e, std::span<S> scratch) {
      const Index begin = offset[e], n = offset[e + 1] - begin;
      experts_.backward(e, cache.gathered.middleRows(begin, n), saved_block(cache, e), d_expert_out.middleRows(begin, n),
                        d_rows_.middleRows(begin, n), grads.experts, scratch);
    });
    ones_.setOnes(T, k);
    kernels::combine<S>(ones_, cache.dispatch, d_rows_.topRows(rows), d_x);

    // Router: combine weights and auxiliary losses → the gate's backward → d_x.
    router_grads_ = cache.aux_grads;
    router_grads_.d_weight += d_weight;
    gate_.backward(cache.x, cache.plan, router_grads_, d_x, grads.gate);
  }

  // Zero gradients shaped like the parameters.
  Gradients make_gradients() const
    requires TrainableExpert<X> && TrainableGate<G>
  {
    Gradients grads{gate_.make_gradients(), experts_.make_gradients(), std::nullopt};
    if (shared_) grads.shared = shared_->make_gradients();
    return grads;
  }

  // (name, view) of every trainable tensor: "gate.weight", "experts.w1", "shared_experts.w1", ...
  ParameterList<S> parameters()
    requires TrainableExpert<X> && TrainableGate<G>
  {
    ParameterList<S> out;
    gate_.collect_parameters("gate.", out);
    experts_.collect_parameters("experts.", out);
    if (shared_) shared_->collect_parameters("shared_experts.", out);
    return out;
  }

  // The fast path (PackedExpert: GatedExpert and FfnExpert; routed and shared experts) packs
  // each expert's weights for its kernels on the expert's first inference use. prepack() packs them
  // all now (after loading, say), so that no forward pays for it. The packed copies are dropped
  // whenever the weights may change: mutable access to the weights (w1() of a non-const
  // GatedExpert…), parameters(), and every training forward (which keeps none). Writing through
  // views kept from before, then calling the inference forward, needs weights_changed() first.
  void prepack() {
    if constexpr (PackedExpert<X>)
      detail::parallel_for(num_experts(), threads(), [&](Index e, int) { experts_.prepack(e); });
    if (shared_) shared_->prepack();
  }
  void weights_changed() {
    if constexpr (PackedExpert<X>) experts_.weights_changed();
    if (shared_) shared_->weights_changed();
  }

  const RoutingStats& last_stats() const { return stats_; }
  const RoutingPlan<S>& last_plan() const { return last_plan_; }

  // Mode::training lets the gate draw noise (noisy top-k, jitter); inference is deterministic.
  void set_mode(Mode mode) { mode_ = mode; }
  Mode mode() const { return mode_; }
  // Threads for the experts: 0 (the default) is OpenMP's default (OMP_NUM_THREADS); ignored
  // without OpenMP. The result does not depend on it.
  void set_num_threads(int threads) { num_threads_ = threads; }

  G& gate() { return gate_; }
  const G& gate() const { return gate_; }
  X& experts() { return experts_; }
  const X& experts() const { return experts_; }
  SharedExperts<X>* shared() { return shared_ ? &*shared_ : nullptr; }
  const SharedExperts<X>* shared() const { return shared_ ? &*shared_ : nullptr; }
  std::tuple<Losses...>& losses() { return losses_; }
  const std::tuple<Losses...>& losses() const { return losses_; }

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

  void check_cache(const Cache& cache, const char* who) const {
    if (!cache.training) MOE_THROW(state_error(detail::concat(who, ": the cache was not filled by a training forward")));
  }

  int threads() const { return detail::resolve_threads(num_threads_); }

  void forward_rows(ConstMatrixRef<S> x, MatrixRef<S> y, Cache& state, bool training) {
    constexpr const char* who = "SparseMoE::forward";
    const Index d = d_model();
    detail::check_dim(who, "x.cols()", x.cols(), "d_model", d);
    detail::check_dim(who, "y.rows()", y.rows(), "x.rows()", x.rows());
    detail::check_dim(who, "y.cols()", y.cols(), "d_model", d);
    [[maybe_unused]] const detail::EigenSingleThreaded single_threaded_eigen;
    state.training = false;
    if (training) state.x = x;  // x may be y itself (an in-place call): nothing reads x after y is written

    gate_.route(x, state.plan, mode_);
    kernels::build_dispatch(state.plan, state.dispatch);
    const Index rows = state.dispatch.num_rows();
    grow(state.gathered, rows, d);
    grow(state.expert_out, rows, d);
    kernels::gather_rows<S>(x, state.dispatch.token, state.gathered.topRows(rows));
    run_experts(state, training);
    // The fast path's inference applies the routing weights as the experts store their outputs.
    const bool weighted = PackedExpert<X> && !training;
    if (weighted) ones_.setOnes(x.rows(), state.plan.slots_per_token());
    const auto& combine_weight = weighted ? ones_ : state.plan.weight;
    if (shared_) {  // the shared experts read x: combine into a buffer and write y last
      grow(routed_, x.rows(), d);
      auto routed = routed_.topRows(x.rows());
      kernels::combine<S>(combine_weight, state.dispatch, state.expert_out.topRows(rows), routed);
      shared_->forward_add(x, routed, threads(), training ? &state.shared : nullptr);
      y = routed;
    } else {
      kernels::combine<S>(combine_weight, state.dispatch, state.expert_out.topRows(rows), y);
    }

    state.training = training;
    last_plan_ = state.plan;
    compute_routing_stats(state.plan, state.dispatch, stats_);
  }

  // expert_out[block of e] = expert_e(gathered[block of e]) for every expert with tokens. Each
  // block has its own working memory in state.saved, which a training forward keeps for backward.
  void run_experts(Cache& state, bool training) {
    const DispatchPlan& dispatch = state.dispatch;
    state.saved_offset.resize(static_cast<std::size_t>(num_experts() + 1));
    state.saved_offset[0] = 0;
    for (Index e = 0; e < num_experts(); ++e)
      state.saved_offset[e + 1] = state.saved_offset[e] + experts_.scratch_size(dispatch.rows_of(e));
    grow(state.saved, state.saved_offset.back());
    if constexpr (PackedExpert<X>) {
      find_active_experts(dispatch);
      run_packed_experts(state, training);
    } else {
      run_on_active_experts(dispatch, 0, [&](Index e, std::span<S>) {
        const Index begin = dispatch.offset[e], n = dispatch.rows_of(e);
        experts_.forward(e, state.gathered.middleRows(begin, n), state.expert_out.middleRows(begin, n),
                         saved_block(state, e));
      });
    }
  }

  // The fast path (DESIGN.md §4): weights packed once; inputs packed per expert; then two phases of
  // (expert × panel range) work items — up (w1, w3, activation) and down (w2, routing weight in
  // inference) — in which every output element is computed by one item in a fixed order.
  void run_packed_experts(Cache& state, bool training)
    requires PackedExpert<X>
  {
    const DispatchPlan& dispatch = state.dispatch;
    const Index d = d_model(), f = experts_.d_ff(), rows = dispatch.num_rows(), k = state.plan.slots_per_token();
    const int n_threads = expert_threads(dispatch);
    // Training packs each panel as it uses it (the weights change on every step: a packed copy
    // would be written to memory to be read once), and drops the inference's packed copies: the
    // caller may have stepped the weights through views.
    if (training) experts_.weights_changed();
    if (active_.empty()) return;
    grow(packed_in_, rows * std::max(d, f));
    const Index per_thread = experts_.work_size(rows);  // ≥ any expert's: no growth at a given T
    grow(scratch_, per_thread * n_threads);
    if (!training) {  // inference applies the routing weights in the down projection
      row_weight_.resize(static_cast<std::size_t>(rows));
      for (Index slot = 0; slot < state.plan.weight.size(); ++slot)
        if (const auto r = dispatch.row[slot]; r != kEmptySlot) row_weight_[r] = state.plan.weight(slot / k, slot % k);
    }

    const auto per_expert = [&](auto&& body) {
      detail::parallel_for(static_cast<Index>(active_.size()), n_threads, [&](Index item, int) {
        const Index e = active_[item];
        body(e, dispatch.offset[e], dispatch.rows_of(e));
      });
    };
    const auto per_panel_range = [&](Index panels, auto&& body) {
      // At least ~8 items per thread for balance; an expert is split no more than that needs.
      const Index splits = std::max<Index>(1, (8 * n_threads + Index(active_.size()) - 1) / Index(active_.size()));
      const Index chunk = (panels + splits - 1) / splits, per = (panels + chunk - 1) / chunk;
      detail::parallel_for(Index(active_.size()) * per, n_threads, [&](Index item, int thread) {
        const Index e = active_[item / per], p0 = item % per * chunk;
        body(e, dispatch.offset[e], dispatch.rows_of(e), p0, std::min(panels, p0 + chunk), scratch_.data() + thread * per_thread);
      });
    };

    per_expert([&](Index e, Index begin, Index n) {
      if (!training) experts_.prepack(e);
      kernels::pack_a(kernels::strided<S>(state.gathered.middleRows(begin, n)), n, d, packed_in_.data() + begin * d);
    });
    per_panel_range(experts_.up_panels(), [&](Index e, Index begin, Index n, Index p0, Index p1, S* work) {
      experts_.forward_up(e, n, packed_in_.data() + begin * d, p0, p1, work, saved_block(state, e), training);
    });
    per_expert([&](Index e, Index begin, Index n) {
      kernels::pack_a(kernels::Strided<S>{experts_.hidden(saved_block(state, e), n), f, 1}, n, f, packed_in_.data() + begin * f);
    });
    per_panel_range(experts_.down_panels(), [&](Index e, Index begin, Index n, Index p0, Index p1, S* work) {
      experts_.forward_down(e, n, packed_in_.data() + begin * f, p0, p1, work,
                            training ? nullptr : row_weight_.data() + begin, state.expert_out.middleRows(begin, n));
    });
  }

  void find_active_experts(const DispatchPlan& dispatch) {
    active_.clear();
    for (Index e = 0; e < num_experts(); ++e)
      if (dispatch.rows_of(e) > 0) active_.push_back(e);
  }

  int expert_threads(const DispatchPlan& dispatch) const {
    return detail::threads_for_work(dispatch.num_rows() * d_model() * std::max(d_model(), experts_.scratch_size(1)),
                                    threads());
  }

  // body(e, scratch) for every expert with rows, in parallel; scratch: per_thread scalars.
  template <class Body>
  void run_on_active_experts(const DispatchPlan& dispatch, Index per_thread, Body&& body) {
    find_active_experts(dispatch);
    const int n_threads = static_cast<int>(std::max<Index>(1, std::min<Index>(expert_threads(dispatch), Index(active_.size()))));
    grow(scratch_, per_thread * n_threads);
    detail::parallel_for(static_cast<Index>(active_.size()), n_threads, [&](Index item, int thread) {
      body(active_[item], std::span<S>(scratch_.data() + thread * per_thread, static_cast<std::size_t>(per_thread)));
    });
  }

  static Index max_rows(const DispatchPlan& dispatch) {
    Index most = 0;
    for (std::size_t e = 0; e + 1 < dispatch.offset.size(); ++e) most = std::max(most, dispatch.rows_of(Index(e)));
    return most;
  }

  template <class C>
  static auto saved_block(C& cache, Index e) {
    using Element = std::conditional_t<std::is_const_v<C>, const S, S>;
    return std::span<Element>(cache.saved.data() + cache.saved_offset[e],
                              static_cast<std::size_t>(cache.saved_offset[e + 1] - cache.saved_offset[e]));
  }

  static void grow(RowMatrix<S>& m, Index rows, Index cols) {
    if (m.rows() < rows || m.cols() != cols) m.resize(std::max(rows, m.rows()), cols);
  }
  // Buffers only grow: shrinking and growing back would zero-fill the difference on every call.
  static void grow(detail::AlignedVector<S>& v, Index size) {
    if (v.size() < static_cast<std::size_t>(size)) v.resize(static_cast<std::size_t>(size));
  }

  G gate_;
  X experts_;
  std::optional<SharedExperts<X>> shared_;
  std::tuple<Losses...> losses_;
  int num_threads_ = 0;
  Mode mode_ = Mode::inference;

  Cache state_;                       // the inference forward's buffers
  RoutingPlan<S> last_plan_;
  RoutingStats stats_;
  detail::AlignedVector<S> scratch_;  // per-thread expert scratch
  detail::AlignedVector<S> packed_in_;  // the fast path's packed expert inputs [rows · max(d_model, d_ff)]
  std::vector<S> row_weight_;         // [rows] routing weight of each dispatch row
  std::vector<Index> active_;
  // backward's buffers
  RowMatrix<S> routed_;               // [≥ T, d_model] routed output before the shared experts
  RowMatrix<S> d_weight_, d_out_, d_rows_, ones_;
  RouterGradients<S> router_grads_;
};

}  // namespace moe
