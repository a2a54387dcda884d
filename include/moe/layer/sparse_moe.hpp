// SparseMoE: a sparse Mixture-of-Experts layer composed of a gate, an expert bank, and optional
// shared experts and auxiliary losses; BasicSparseMoE is the same layer over any exchange.
//
//   x [T, d_model] ─► gate.route ─► RoutingPlan [T, k] ─► exchange.dispatch ─► ExpertBatch
//     ─► runner: every expert on its rows ─► exchange.combine: y[t] = Σ_j w[t, j] · out[row(t, j)]
//     ─► + shared experts ─► stats
//
// The layer only orchestrates: the exchange moves rows to the experts and back (LocalExchange:
// within this process), the runner runs the experts (dispatch/runner.hpp), each expert packs its
// own operands. Backward runs the same way in reverse (docs/architecture.md). The same inputs give
// the same bits for any thread count. Buffers grow to the largest batch seen and are reused.
//
// Threads: the const forward(x, y, workspace) may run on many threads at once, each with a
// Workspace of its own (layer/inference.hpp); non-const calls need the layer to themselves.
#pragma once

#include "moe/concepts.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/detail/scratch.hpp"
#include "moe/dispatch/local_exchange.hpp"
#include "moe/dispatch/runner.hpp"
#include "moe/errors.hpp"
#include "moe/layer/inference.hpp"
#include "moe/layer/layer_cache.hpp"
#include "moe/layer/layer_parts.hpp"
#include "moe/layer/routing_stats.hpp"
#include "moe/layer/shared_experts.hpp"

#include <concepts>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>

namespace moe {

template <class Exchange, Expert X, Gate G, AuxLoss... Losses>
  requires std::same_as<typename X::Scalar, typename G::Scalar> &&
           (std::same_as<typename X::Scalar, typename Losses::Scalar> && ...)
class BasicSparseMoE {
 public:
  using Scalar = typename X::Scalar;
  using S = Scalar;
  using Cache = LayerCache<S, typename Exchange::Record, typename SharedExperts<X>::Cache>;
  using Workspace = LayerWorkspace<S, typename Exchange::Record, X>;

  // Gradients of every parameter, with the names and shapes of parameters().
  using Gradients = LayerGradients<S, G, X>;

  // The auxiliary losses, if any, follow the parts in the order of the template arguments. An
  // exchange that needs settings (a communicator) comes first; otherwise it is default-made.
  explicit BasicSparseMoE(G gate, X experts, Losses... losses)
    requires std::default_initializable<Exchange>
      : BasicSparseMoE(Exchange{}, std::move(gate), std::move(experts), std::nullopt, std::move(losses)...) {}
  BasicSparseMoE(G gate, X experts, SharedExperts<X> shared, Losses... losses)
    requires std::default_initializable<Exchange>
      : BasicSparseMoE(Exchange{}, std::move(gate), std::move(experts), std::move(shared), std::move(losses)...) {}
  BasicSparseMoE(Exchange exchange, G gate, X experts, std::optional<SharedExperts<X>> shared, Losses... losses)
      : exchange_(std::move(exchange)), gate_(std::move(gate)), experts_(std::move(experts)),
        shared_(std::move(shared)), losses_(std::move(losses)...) {
    detail::check_layer<Losses...>(exchange_, gate_, experts_, shared_);
  }

  Index d_model() const { return experts_.d_model(); }
  Index num_experts() const { return gate_.num_experts(); }

  // Inference: y = MoE(x).
  //   requires: x: [T, d_model] row-major (T may be 0; a row block or Map binds without a copy;
  //             a column-major x does not compile — convert it explicitly); y: [T, d_model]
  //             (y may be x itself: the layer reads x only before it writes y).
  //   ensures:  y overwritten; last_plan() and last_stats() describe this batch. Experts with a
  //             fast path pack their weights on first use (see prepack()).
  //   throws:   shape_error on a wrong shape, std::domain_error if a router logit is not finite;
  //             on a throw, y, last_plan() and last_stats() are unchanged.
  template <class Derived>
    requires RowMajorTokens<Derived> && std::same_as<typename Derived::Scalar, S>
  void forward(const Eigen::MatrixBase<Derived>& x, MatrixRef<S> y) {
    const ConstMatrixRef<S> rows(x.derived());
    infer(rows, y, own_, [&](RoutingPlan<S>& plan) { gate_.route(rows, plan, mode_); });
    last_plan_ = own_.plan;
    stats_ = own_.stats;
  }

  // Concurrent inference: the same y as forward(x, y) in Mode::inference, but const, with the
  // call's memory in `work` (work.plan and work.stats describe the call): threads with workspaces
  // of their own may run it at once on one layer, without locks. It only reads the weights: call
  // prepack() before sharing the layer (an expert without packed weights packs each panel as it
  // uses it: the same bits, slower).
  template <class Derived>
    requires RowMajorTokens<Derived> && std::same_as<typename Derived::Scalar, S> && ConcurrentGate<G>
  void forward(const Eigen::MatrixBase<Derived>& x, MatrixRef<S> y, Workspace& work) const {
    const ConstMatrixRef<S> rows(x.derived());
    infer(rows, y, work, [&](RoutingPlan<S>& plan) { gate_.route(rows, plan); });
  }

  // Frees the buffers of the plain forward, training forward and backward (they grow back).
  void release_workspace() {
    own_.release(), train_.release();
    if (shared_) shared_->release_workspace();
  }

  // Inference forwards send the routed tokens through the experts at most `tokens` at a time
  // (default 4096; 0: all at once): their workspace is one chunk's, plus the whole batch's
  // routing. The output bits do not depend on it. Training forwards are not chunked.
  void set_chunk_tokens(Index tokens) {
    detail::check_config(tokens >= 0, "SparseMoE::set_chunk_tokens", "tokens = ", tokens, " < 0");
    chunk_tokens_ = tokens;
  }
  Index chunk_tokens() const { return chunk_tokens_; }

  // Training forward: as above, and fills cache for backward(). mask: empty, or [T] with 0 for
  // padding tokens (the auxiliary losses skip them). Returns Σ of the auxiliary losses (each
  // already times its coefficient) over the whole batch — every process's tokens when the experts
  // are split over processes — whose gradients wait in the cache for backward. Noise is drawn only
  // when mode() is Mode::training.
  template <class Derived>
    requires RowMajorTokens<Derived> && std::same_as<typename Derived::Scalar, S>
  double forward(const Eigen::MatrixBase<Derived>& x, MatrixRef<S> y, Cache& cache,
                 std::span<const std::uint8_t> mask = {}) {
    const ConstMatrixRef<S> rows(x.derived());
    const auto checks = [&] {
      check_io(rows, y);
      if (!mask.empty())
        detail::check_dim("SparseMoE::forward", "mask.size()", Index(mask.size()), "x.rows()", rows.rows());
    };
    return exchange_.collective(checks, [&] { return forward_training(rows, y, cache, mask); });
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
    const auto& tokens = cache.tokens;
    const Index T = tokens.x.rows();
    const auto checks = [&] {
      detail::check_trained(cache.tokens.training, who);
      detail::check_backward_io(who, d_model(), T, d_y, d_x);
    };
    exchange_.collective(checks, [&] {
      const auto& batch = cache.experts.batch;
      detail::grow_rows(train_.d_out, batch.num_rows(), d_model());
      detail::grow_rows(train_.d_weight, T, tokens.plan.slots_per_token());
      exchange_.combine_backward(tokens.plan, tokens.dispatch, batch, d_y, train_.d_out.topRows(batch.num_rows()),
                                 train_.d_weight.topRows(T));
      backward_experts(cache, train_.d_out.topRows(batch.num_rows()), train_.d_weight.topRows(T), d_x, grads);
      if (shared_) shared_->backward(tokens.x, tokens.shared, d_y, d_x, *grads.shared, threads());
    });
  }

  // Backward from gradients with respect to each expert output (batch order) and each combine
  // weight — for losses that look at the experts' outputs one by one (loss/mixture.hpp).
  //   d_expert_out: [rows, d_model];  d_weight: [T, k];  d_x, grads as in backward()
  //   (shared experts are not reached from here).
  void backward_experts(const Cache& cache, ConstMatrixRef<S> d_expert_out, ConstMatrixRef<S> d_weight,
                        MatrixRef<S> d_x, Gradients& grads)
    requires TrainableExpert<X> && TrainableGate<G>
  {
    const auto checks = [&] {
      detail::check_trained(cache.tokens.training, "SparseMoE::backward");
      detail::check_backward_experts_io(d_model(), cache.tokens.plan, cache.experts.batch.num_rows(), d_expert_out,
                                        d_weight, d_x);
    };
    exchange_.collective(checks, [&] {
      const auto& tokens = cache.tokens;
      const auto& batch = cache.experts.batch;
      const Index rows = batch.num_rows();
      [[maybe_unused]] const detail::EigenSingleThreaded single_threaded_eigen;
      detail::grow_rows(train_.d_in, rows, d_model());
      train_.runner.backward(experts_, batch, cache.experts.saved, d_expert_out, train_.d_in.topRows(rows),
                             grads.experts, threads());
      exchange_.dispatch_backward(tokens.plan, tokens.dispatch, batch, train_.d_in.topRows(rows), d_x);
      // Router: combine weights and auxiliary losses → the gate's backward, which adds to d_x.
      train_.router_grads = tokens.aux_grads;
      train_.router_grads.d_weight += d_weight;
      gate_.backward(tokens.x, tokens.plan, train_.router_grads, d_x, grads.gate);
    });
  }

  // Zero gradients shaped like the parameters.
  Gradients make_gradients() const
    requires TrainableExpert<X> && TrainableGate<G>
  {
    return {gate_.make_gradients(), experts_.make_gradients(),
            shared_ ? std::optional(shared_->make_gradients()) : std::nullopt};
  }

  // (name, view) of every trainable tensor: "gate.weight", "experts.w1", "shared_experts.w1", ...
  ParameterList<S> parameters()
    requires TrainableExpert<X> && TrainableGate<G>
  {
    return layer_parameters<S>(gate_, experts_, shared_);
  }

  // Experts with a fast path (GatedExpert, FfnExpert; routed and shared) pack their weights for
  // its kernels on first use by the plain forward; prepack() packs them all now (after loading;
  // before sharing the layer between threads). The packed copies are dropped whenever the weights
  // may change: mutable access to them, parameters(), every training forward; after writing
  // through views kept from before, call weights_changed() before the next inference forward.
  void prepack() {
    ExpertRunner<X>::prepack(experts_, threads());
    if (shared_) shared_->prepack();
  }
  void weights_changed() {
    ExpertRunner<X>::weights_changed(experts_);
    if (shared_) shared_->weights_changed();
  }
  // Inference only: packs every expert, then frees their master weights (GatedExpert's
  // release_master_weights: a bf16 layer then holds no fp32 copy of its experts).
  void release_master_weights()
    requires requires(X& x) { x.release_master_weights(); }
  {
    prepack();
    experts_.release_master_weights();
    if (shared_) shared_->experts().release_master_weights();
  }

  const RoutingStats& last_stats() const { return stats_; }
  const RoutingPlan<S>& last_plan() const { return last_plan_; }

  // Mode::training lets the gate draw noise (noisy top-k, jitter); inference is deterministic.
  void set_mode(Mode mode) { mode_ = mode; }
  Mode mode() const { return mode_; }
  // Threads for the experts: 0 (the default) is OpenMP's default (OMP_NUM_THREADS); ignored
  // without OpenMP. The result does not depend on it.
  void set_num_threads(int threads) { num_threads_ = threads; }
  // The experts' (and shared experts') kernels as they run now, e.g. "f32 weights on avx512 kernels".
  std::string kernels() const { return kernel_description<X>(); }

  G& gate() { return gate_; }
  const G& gate() const { return gate_; }
  X& experts() { return experts_; }
  const X& experts() const { return experts_; }
  SharedExperts<X>* shared() { return shared_ ? &*shared_ : nullptr; }
  const SharedExperts<X>* shared() const { return shared_ ? &*shared_ : nullptr; }
  std::tuple<Losses...>& losses() { return losses_; }
  const std::tuple<Losses...>& losses() const { return losses_; }
  Exchange& exchange() { return exchange_; }
  const Exchange& exchange() const { return exchange_; }

 private:
  void check_io(ConstMatrixRef<S> x, MatrixRef<S> y) const { detail::check_forward_io<S>(d_model(), x, y); }
  int threads() const { return detail::resolve_threads(num_threads_); }

  // Both inference forwards: route(plan) routes x.
  template <class Route>
  void infer(ConstMatrixRef<S> x, MatrixRef<S> y, Workspace& work, Route&& route) const {
    exchange_.collective([&] { check_io(x, y); },
                         [&] { detail::infer<S>(exchange_, experts_, shared_, num_experts(), threads(), chunk_tokens_,
                                                x, y, work, route); });
  }

  double forward_training(ConstMatrixRef<S> x, MatrixRef<S> y, Cache& cache, std::span<const std::uint8_t> mask) {
    [[maybe_unused]] const detail::EigenSingleThreaded single_threaded_eigen;
    auto& tokens = cache.tokens;
    auto& batch = cache.experts.batch;
    tokens.training = false;
    tokens.x = x;  // x may be y itself (an in-place call): nothing reads x after y is written
    gate_.route(x, tokens.plan, mode_);
    exchange_.dispatch(tokens.plan, x, exchange_.owned(num_experts()), /*with_scales=*/false, tokens.dispatch, batch);
    train_.runner.forward(experts_, batch, cache.experts.saved, threads());
    detail::combine_output<S>(exchange_, shared_, x, y, tokens.plan, tokens.dispatch, batch, train_.routed,
                              [&](MatrixRef<S> routed) { shared_->forward_add(x, routed, threads(), tokens.shared); });
    tokens.training = true;
    last_plan_ = tokens.plan;
    compute_routing_stats(tokens.plan, stats_, exchange_);
    tokens.mask.assign(mask.begin(), mask.end());
    tokens.aux_grads.reset(tokens.plan);
    tokens.aux = detail::evaluate_losses(losses_, tokens.plan, tokens.mask, tokens.aux_grads, exchange_);
    return tokens.aux;
  }

  Exchange exchange_;
  G gate_;
  X experts_;
  std::optional<SharedExperts<X>> shared_;
  std::tuple<Losses...> losses_;
  int num_threads_ = 0;
  Index chunk_tokens_ = 4096;
  Mode mode_ = Mode::inference;

  RoutingPlan<S> last_plan_;
  RoutingStats stats_;
  // Buffers, which a copy of the layer does not copy: the plain forward's, and training's.
  Workspace own_;
  detail::Scratch<detail::TrainingBuffers<S, X>> train_;
};

// The layer of one process: every expert here.
template <Expert X, Gate G, AuxLoss... Losses>
using SparseMoE = BasicSparseMoE<LocalExchange, X, G, Losses...>;

}  // namespace moe
