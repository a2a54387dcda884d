// FfnExpert: y = W2 · act(W1 · x + b1) + b2 (biases optional), the classic transformer FFN.
//   w1: [E, d_ff, d_model]   w2: [E, d_model, d_ff]   b1: [E, 1, d_ff]   b2: [E, 1, d_model]
#pragma once

#include "moe/experts/activations.hpp"
#include "moe/experts/expert_config.hpp"
#include "moe/experts/packed_expert.hpp"
#include "moe/kernels/format.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/packed_product.hpp"
#include "moe/param_bank.hpp"
#include "moe/parameters.hpp"

#include <algorithm>

namespace moe {

// F: the weight format of the fast path (kernels/format.hpp).
template <class S, class Activation, class F = kernels::NativeFormat<S>>
class FfnExpert {
 public:
  using Scalar = S;
  using Format = F;
  using Gradients = FfnExpert;  // gradients have the parameters' names and shapes

  explicit FfnExpert(const ExpertConfig& config) : FfnExpert(config, /*zeros=*/false) {}

  Index num_experts() const { return config_.num_experts; }
  Index d_model() const { return config_.d_model; }
  Index d_ff() const { return config_.d_ff; }
  const ExpertConfig& config() const { return config_; }

  // forward's working memory, kept for backward in training: a = x·w1ᵀ + b1 and h = act(a),
  // each [n, d_ff].
  Index scratch_size(Index n) const { return 2 * n * config_.d_ff; }
  // backward's: d_a [n, d_ff] and kernels::gemm's workspace for its products on `threads` threads.
  Index backward_scratch_size(Index n, int threads = 1) const {
    const Index d = d_model(), f = d_ff();
    const auto work = [&](Index m, Index cols, Index depth) {
      return kernels::gemm_workspace_size<S>(m, cols, depth, threads);
    };
    return n * f + std::max({work(d, f, n), work(n, f, d), work(f, d, n), work(n, d, f)});
  }

  // See the Expert concept.
  void forward(Index e, ConstMatrixRef<S> x, MatrixRef<S> y, std::span<S> scratch) const {
    packed_.check_masters("FfnExpert::forward");
    detail::check_expert_call<S>("FfnExpert::forward", e, num_experts(), d_model(), x, y,
                                 scratch_size(x.rows()), scratch);
    const Index n = x.rows(), f = d_ff();
    Eigen::Map<RowMatrix<S>> a(scratch.data(), n, f), h(scratch.data() + n * f, n, f);
    a.noalias() = x * w1_[e].transpose();
    if (config_.bias) a.rowwise() += b1_[e].row(0);
    elementwise<S>(n * f, h.data(), activation, a.data());
    y.noalias() = h * w2_[e].transpose();
    if (config_.bias) y.rowwise() += b2_[e].row(0);
  }

  // See the TrainableExpert concept:
  //   d_w2 += d_yᵀ·h, d_b2 += Σ_rows d_y, d_a = (d_y·w2) ⊙ act'(a), d_w1 += d_aᵀ·x,
  //   d_b1 += Σ_rows d_a, d_x = d_a·w1.
  // The products run on kernels::gemm, on `threads` threads, as GatedExpert's do (see there why).
  void backward(Index e, ConstMatrixRef<S> x, std::span<const S> saved, ConstMatrixRef<S> d_y, MatrixRef<S> d_x,
                Gradients& grads, std::span<S> scratch, int threads = 1) const {
    packed_.check_masters("FfnExpert::backward");
    detail::check_expert_backward<S>("FfnExpert::backward", e, num_experts(), d_model(), x, d_y, d_x,
                                     scratch_size(x.rows()), saved, backward_scratch_size(x.rows(), threads), scratch);
    detail::check_same_shape("FfnExpert::backward", config_, grads.config_);
    using kernels::gemm;
    using kernels::strided;
    const Index n = x.rows(), f = d_ff();
    const Eigen::Map<const RowMatrix<S>> a(saved.data(), n, f), h(saved.data() + n * f, n, f);
    Eigen::Map<RowMatrix<S>> d_a(scratch.data(), n, f);
    const std::span<S> work = scratch.subspan(static_cast<std::size_t>(n * f));
    gemm<S>(strided<S>(d_y).transposed(), strided<S>(h), n, grads.w2_[e], true, work, threads);  // d_w2 += d_yᵀ·h
    gemm<S>(strided<S>(d_y), strided<S>(w2_[e]), d_model(), d_a, false, work, threads);        // d_y·w2
    elementwise<S>(n * f, d_a.data(), [](const auto& d, const auto& v) { return d * Activation::derivative(v); },
                   d_a.data(), a.data());
    gemm<S>(strided<S>(d_a).transposed(), strided<S>(x), n, grads.w1_[e], true, work, threads);  // d_w1 += d_aᵀ·x
    if (config_.bias) {
      grads.b2_[e].row(0) += d_y.colwise().sum();
      grads.b1_[e].row(0) += d_a.colwise().sum();
    }
    gemm<S>(strided<S>(d_a), strided<S>(w1_[e]), f, d_x, false, work, threads);  // d_x = d_a·w1
  }

  Gradients make_gradients() const { return FfnExpert(config_, /*zeros=*/true); }

  // Hands out mutable views: the packed copies below are dropped.
  void collect_parameters(const std::string& prefix, ParameterList<S>& out) {
    weights_changed();
    add_parameter(out, prefix, "w1", w1_);
    add_parameter(out, prefix, "b1", b1_);
    add_parameter(out, prefix, "w2", w2_);
    add_parameter(out, prefix, "b2", b2_);
  }

  // Mutable access to a weight drops its packed copies (the caller may write); the biases are not
  // packed.
  ParamBank<S>& w1() { return weights_changed(), w1_; }
  const ParamBank<S>& w1() const { return packed_.check_masters("FfnExpert::w1"), w1_; }
  ParamBank<S>& w2() { return weights_changed(), w2_; }
  const ParamBank<S>& w2() const { return packed_.check_masters("FfnExpert::w2"), w2_; }
  ParamBank<S>& b1() { return b1_; }  // empty without bias
  const ParamBank<S>& b1() const { return b1_; }
  ParamBank<S>& b2() { return b2_; }
  const ParamBank<S>& b2() const { return b2_; }

  // As GatedExpert's: packs every expert and frees the master weights (the biases stay).
  void release_master_weights() {
    for (Index e = 0; e < num_experts(); ++e) prepack(e);
    w1_ = w2_ = ParamBank<S>();
    packed_.release_masters();
  }
  std::size_t weight_bytes() const {
    return sizeof(S) * static_cast<std::size_t>(w1_.size() + w2_.size() + b1_.size() + b2_.size()) + packed_.bytes();
  }

  // ---- The fast path (the PackedExpert concept, experts/packed_expert.hpp) ----
  // As GatedExpert's, with both projections in kernels::pack_weight_panel's panels: up panel p is
  // hidden units [p·kNR, p·kNR + kNR) of x·w1ᵀ, to which b1 is added and the activation applied as
  // the tile is stored; down panel p is outputs [p·kNR, p·kNR + kNR) of h·w2ᵀ, plus b2, scaled by
  // the routing weight.
  Index up_panels() const { return (d_ff() + kNR - 1) / kNR; }
  Index down_panels() const { return (d_model() + kNR - 1) / kNR; }
  void weights_changed() { packed_.clear(); }
  void prepack(Index e) {
    packed_.ensure(e, up_panels(), d_model(), down_panels(), d_ff(),
                   [&](Index p, Weight* panel) { kernels::pack_weight_panel<F>(w1_[e], p, panel); },
                   [&](Index p, Weight* panel) { kernels::pack_weight_panel<F>(w2_[e], p, panel); });
  }

  Index work_size(Index n) const { return kernels::bank_work_size<F>(n, std::max(d_model(), d_ff())); }
  Index packed_input_size(Index n) const { return F::input_size(n, d_model()); }
  Index packed_hidden_size(Index n) const { return F::input_size(n, d_ff()); }
  void pack_input(ConstMatrixRef<S> x, typename F::Input* packed) const {
    F::pack_input(kernels::strided<S>(x), x.rows(), d_model(), packed);
  }
  // memory is forward()'s: [a | h], each [n, d_ff]; a = x·w1ᵀ + b1 is stored only when kept for
  // backward.
  void pack_hidden(Index n, std::span<S> memory, typename F::Input* packed) const {
    F::pack_input(kernels::Strided<S>{hidden(memory, n), d_ff(), 1}, n, d_ff(), packed);
  }

  void forward_up(Index e, Index n, const typename F::Input* packed_x, Index p_begin, Index p_end, S* work,
                  std::span<S> memory, bool keep) const {
    using Tile = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
    using Out = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
    const Index f = d_ff();
    S* const a = memory.data();
    S* const h = hidden(memory, n);
    kernels::multiply_bank<F>(
        packed_.up(), e, n, d_model(), packed_x, p_begin, p_end, work,
        [&](Index p, Weight* panel) { kernels::pack_weight_panel<F>(w1_[e], p, panel); },
        [&](Index p) { return kernels::weight_panel_source<F>(w1_[e], p); }, [&](Index i0, Index mr, Index p, const S* tile) {
      const Index unit = p * kNR, units = std::min<Index>(kNR, f - unit), at = i0 * f + unit;
      const Tile t(tile, mr, units, Eigen::OuterStride<>(kNR));
      if (config_.bias) {
        Out h_tile(h + at, mr, units, Eigen::OuterStride<>(f));
        h_tile = t.rowwise() + b1_[e].row(0).segment(unit, units).array();  // a, for now
        if (keep) Out(a + at, mr, units, Eigen::OuterStride<>(f)) = h_tile;
        for (Index i = 0; i < mr; ++i) elementwise<S>(units, h + at + i * f, activation, h + at + i * f);
        return;
      }
      for (Index i = 0; i < mr; ++i) elementwise<S>(units, h + at + i * f, activation, tile + i * kNR);
      if (!keep) return;
      if (units == kNR) {  // read again only by backward: past the caches
        kernels::stream_rows<S>(tile, kNR, mr, kNR, a + at, f);
        return;
      }
      Out(a + at, mr, units, Eigen::OuterStride<>(f)) = t;
    });
    if (keep) kernels::stream_fence();
  }

  // y = scale ⊙ (h·w2ᵀ + b2).
  void forward_down(Index e, Index n, const typename F::Input* packed_h, Index p_begin, Index p_end, S* work,
                    const S* scale, MatrixRef<S> y) const {
    const S* const b2 = config_.bias ? b2_[e].data() : nullptr;
    kernels::multiply_bank<F>(
        packed_.down(), e, n, d_ff(), packed_h, p_begin, p_end, work,
        [&](Index p, Weight* panel) { kernels::pack_weight_panel<F>(w2_[e], p, panel); },
        [&](Index p) { return kernels::weight_panel_source<F>(w2_[e], p); },
        [&](Index i0, Index mr, Index p, const S* tile) { kernels::store_output_tile<F>(y, i0, mr, p, tile, scale, b2); });
  }

 private:
  FfnExpert(const ExpertConfig& config, bool zeros) : config_(config) {
    detail::check_expert_config(config, "FfnExpert", /*needs_d_ff=*/true);
    const Index E = config.num_experts, d = config.d_model, f = config.d_ff;
    w1_ = ParamBank<S>(E, f, d);
    w2_ = ParamBank<S>(E, d, f);
    packed_ = PackedProjections<F>(E);
    if (config.bias) {
      b1_ = ParamBank<S>(E, 1, f);
      b2_ = ParamBank<S>(E, 1, d);
    }
    if (zeros || config.init == Init::zeros) return;
    Generator rng(config.seed);
    w1_.init_uniform(d, rng);
    w2_.init_uniform(f, rng);
    if (config.bias) {
      b1_.init_uniform(d, rng);
      b2_.init_uniform(f, rng);
    }
  }

  using Weight = typename F::Weight;
  static constexpr int kNR = F::kNR;
  static constexpr auto activation = [](const auto& a) { return Activation::apply(a); };  // for elementwise()

  S* hidden(std::span<S> memory, Index n) const { return memory.data() + n * d_ff(); }

  ExpertConfig config_;
  ParamBank<S> w1_, w2_, b1_, b2_;
  PackedProjections<F> packed_;
};

template <class S, class F = kernels::NativeFormat<S>> using ReluExpert = FfnExpert<S, Relu, F>;
template <class S, class F = kernels::NativeFormat<S>> using GeluExpert = FfnExpert<S, Gelu, F>;
template <class S, class F = kernels::NativeFormat<S>> using GeluTanhExpert = FfnExpert<S, GeluTanh, F>;
template <class S, class F = kernels::NativeFormat<S>> using SiluExpert = FfnExpert<S, Silu, F>;

}  // namespace moe
