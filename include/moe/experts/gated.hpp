// GatedExpert: y = W2 · (act(W1 · x) ⊙ W3 · x), the gated FFN of Shazeer 2020 ("GLU variants").
// SwiGLU is Mixtral's expert: w1 is the activated branch, w3 the up projection, w2 the down.
//   w1, w3: [E, d_ff, d_model]   w2: [E, d_model, d_ff]   (no biases, as in Mixtral/DeepSeek/Qwen)
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
#include <type_traits>

namespace moe {

// F: the weight format of the fast path (kernels/format.hpp).
template <class S, class Activation, class F = kernels::NativeFormat<S>>
class GatedExpert {
 public:
  using Scalar = S;
  using Format = F;
  using Gradients = GatedExpert;  // gradients have the parameters' names and shapes

  explicit GatedExpert(const ExpertConfig& config) : GatedExpert(config, /*zeros=*/false) {}

  Index num_experts() const { return config_.num_experts; }
  Index d_model() const { return config_.d_model; }
  Index d_ff() const { return config_.d_ff; }
  const ExpertConfig& config() const { return config_; }

  // forward's working memory, kept for backward in training: h1 = x·w1ᵀ, h3 = x·w3ᵀ and
  // h = act(h1) ⊙ h3, each [n, d_ff].
  Index scratch_size(Index n) const { return 3 * n * config_.d_ff; }
  // backward's: d_h1 and d_h3, each [n, d_ff], and kernels::gemm's workspace for its products on
  // `threads` threads.
  Index backward_scratch_size(Index n, int threads = 1) const {
    const Index d = d_model(), f = d_ff();
    const auto work = [&](Index m, Index cols, Index depth) {
      return kernels::gemm_workspace_size<S>(m, cols, depth, threads);
    };
    return 2 * n * f + std::max({work(d, f, n), work(f, d, n), work(n, f, d), work(n, d, f)});
  }

  // See the Expert concept.
  void forward(Index e, ConstMatrixRef<S> x, MatrixRef<S> y, std::span<S> scratch) const {
    packed_.check_masters("GatedExpert::forward");
    detail::check_expert_call<S>("GatedExpert::forward", e, num_experts(), d_model(), x, y,
                                 scratch_size(x.rows()), scratch);
    const Index n = x.rows(), f = d_ff();
    Eigen::Map<RowMatrix<S>> h1(scratch.data(), n, f), h3(scratch.data() + n * f, n, f),
        h(scratch.data() + 2 * n * f, n, f);
    h1.noalias() = x * w1_[e].transpose();
    h3.noalias() = x * w3_[e].transpose();
    elementwise<S>(n * f, h.data(), gated, h1.data(), h3.data());
    y.noalias() = h * w2_[e].transpose();
  }

  // See the TrainableExpert concept. With d_h = d_y·w2:
  //   d_w2 += d_yᵀ·h,  d_h1 = d_h ⊙ h3 ⊙ act'(h1),  d_h3 = d_h ⊙ act(h1),
  //   d_w1 += d_h1ᵀ·x, d_w3 += d_h3ᵀ·x,  d_x = d_h1·w1 + d_h3·w3.
  // Every product runs on kernels::gemm, which packs both operands block by block: unlike the
  // forward's, the backward's products by the weights read them by columns, and d_x's left operands
  // (d_h1 and d_h3, 2·n·d_ff) are too big to be reread from cache for every weight panel. The
  // activation's derivative is one contiguous pass over d_h. With threads > 1 each product's
  // columns are split over them (the same bits): for experts too few to keep every thread busy.
  void backward(Index e, ConstMatrixRef<S> x, std::span<const S> saved, ConstMatrixRef<S> d_y, MatrixRef<S> d_x,
                Gradients& grads, std::span<S> scratch, int threads = 1) const {
    packed_.check_masters("GatedExpert::backward");
    detail::check_expert_backward<S>("GatedExpert::backward", e, num_experts(), d_model(), x, d_y, d_x,
                                     scratch_size(x.rows()), saved, backward_scratch_size(x.rows(), threads), scratch);
    detail::check_same_shape("GatedExpert::backward", config_, grads.config_);
    using kernels::gemm;
    using kernels::strided;
    const Index n = x.rows(), f = d_ff();
    const Eigen::Map<const RowMatrix<S>> h1(saved.data(), n, f), h3(saved.data() + n * f, n, f),
        h(saved.data() + 2 * n * f, n, f);
    Eigen::Map<RowMatrix<S>> d_h1(scratch.data(), n, f), d_h3(scratch.data() + n * f, n, f);
    const std::span<S> work = scratch.subspan(static_cast<std::size_t>(2 * n * f));

    gemm<S>(strided<S>(d_y).transposed(), strided<S>(h), n, grads.w2_[e], true, work, threads);  // d_w2 += d_yᵀ·h
    gemm<S>(strided<S>(d_y), strided<S>(w2_[e]), d_model(), d_h3, false, work, threads);        // d_h, in d_h3's place
    elementwise<S>(n * f, d_h1.data(), [](const auto& d_h, const auto& a3, const auto& a1) {
      return d_h * a3 * Activation::derivative(a1);
    }, d_h3.data(), h3.data(), h1.data());
    elementwise<S>(n * f, d_h3.data(), [](const auto& d_h, const auto& a1) { return d_h * Activation::apply(a1); },
                   d_h3.data(), h1.data());
    gemm<S>(strided<S>(d_h1).transposed(), strided<S>(x), n, grads.w1_[e], true, work, threads);  // d_w1 += d_h1ᵀ·x
    gemm<S>(strided<S>(d_h3).transposed(), strided<S>(x), n, grads.w3_[e], true, work, threads);  // d_w3 += d_h3ᵀ·x
    gemm<S>(strided<S>(d_h1), strided<S>(w1_[e]), f, d_x, false, work, threads);                 // d_x = d_h1·w1
    gemm<S>(strided<S>(d_h3), strided<S>(w3_[e]), f, d_x, true, work, threads);                  //     + d_h3·w3
  }

  Gradients make_gradients() const { return GatedExpert(config_, /*zeros=*/true); }

  // Hands out mutable views: the packed copies below are dropped.
  void collect_parameters(const std::string& prefix, ParameterList<S>& out) {
    weights_changed();
    add_parameter(out, prefix, "w1", w1_);
    add_parameter(out, prefix, "w2", w2_);
    add_parameter(out, prefix, "w3", w3_);
  }

  // Mutable access drops the packed copies (the caller may write).
  ParamBank<S>& w1() { return weights_changed(), w1_; }
  const ParamBank<S>& w1() const { return packed_.check_masters("GatedExpert::w1"), w1_; }
  ParamBank<S>& w2() { return weights_changed(), w2_; }
  const ParamBank<S>& w2() const { return packed_.check_masters("GatedExpert::w2"), w2_; }
  ParamBank<S>& w3() { return weights_changed(), w3_; }
  const ParamBank<S>& w3() const { return packed_.check_masters("GatedExpert::w3"), w3_; }

  // Inference only: packs every expert, then frees the master weights, so that the bank holds just
  // its packed copy (bf16: half the bytes of the fp32 masters, and no fp32 copy). The fast path —
  // the layer's inference forwards — runs as before with the same bits; whatever reads or changes
  // the masters (forward(), backward(), w1()…, collect_parameters, weights_changed, training)
  // throws state_error from then on.
  void release_master_weights() {
    for (Index e = 0; e < num_experts(); ++e) prepack(e);
    w1_ = w2_ = w3_ = ParamBank<S>();
    packed_.release_masters();
  }
  // An inference-only bank that never holds master weights (as after release_master_weights()):
  // pack_expert_up(e, w1, w3) and pack_expert_down(e, w2) pack each expert from weights the caller
  // holds — how a loader keeps just one expert's weights beside the packed bank. Every expert must
  // be packed before it runs.
  static GatedExpert without_masters(const ExpertConfig& config) {
    GatedExpert bank(config, /*zeros=*/true, /*masters=*/false);
    bank.packed_.release_masters();
    return bank;
  }
  // The weights in S, or (bf16 experts) as a BF16 tensor of a file holds them; the panels are
  // packed on `threads` threads.
  void pack_expert_up(Index e, ConstMatrixRef<S> w1, ConstMatrixRef<S> w3, int threads = 1) {
    pack_given_up(e, w1, w3, threads);
  }
  void pack_expert_down(Index e, ConstMatrixRef<S> w2, int threads = 1) { pack_given_down(e, w2, threads); }
  void pack_expert_up(Index e, const kernels::Bf16Rows& w1, const kernels::Bf16Rows& w3, int threads = 1)
    requires std::same_as<F, kernels::Bf16Format> { pack_given_up(e, w1, w3, threads); }
  void pack_expert_down(Index e, const kernels::Bf16Rows& w2, int threads = 1)
    requires std::same_as<F, kernels::Bf16Format> { pack_given_down(e, w2, threads); }

  // The bytes the weights hold now: masters and packed copies.
  std::size_t weight_bytes() const {
    return sizeof(S) * static_cast<std::size_t>(w1_.size() + w2_.size() + w3_.size()) + packed_.bytes();
  }

  // ---- The fast path (the PackedExpert concept, experts/packed_expert.hpp) ----
  // The weights are packed into the format's panels, expert by expert on first use, and the
  // packed copies are dropped whenever the weights may change (mutable access, collect_parameters,
  // weights_changed()). With U = kNR / 2 hidden units per up panel:
  //   up panel p:   hidden units [p·U, p·U + U): those rows of w1, then the same rows of w3, so one
  //                 tile holds x·w1ᵀ and x·w3ᵀ for U units and act(h1) ⊙ h3 is formed as it is stored;
  //   down panel p: outputs [p·kNR, p·kNR + kNR) of h·w2ᵀ, scaled by the routing weight as stored.
  Index up_panels() const { return (d_ff() + kUnits - 1) / kUnits; }
  Index down_panels() const { return (d_model() + kNR - 1) / kNR; }
  void weights_changed() { packed_.clear(); }
  void prepack(Index e) {
    packed_.check_usable(e, "GatedExpert::prepack");
    packed_.ensure(e, up_panels(), d_model(), down_panels(), d_ff(),
                   [&](Index p, Weight* panel) { pack_up_panel(w1_[e], w3_[e], p, panel); },
                   [&](Index p, Weight* panel) { kernels::pack_weight_panel<F>(w2_[e], p, panel); });
  }

  Index work_size(Index n) const { return kernels::bank_work_size<F>(n, std::max(d_model(), d_ff())); }
  Index packed_input_size(Index n) const { return F::input_size(n, d_model()); }
  Index packed_hidden_size(Index n) const { return F::input_size(n, d_ff()); }
  void pack_input(ConstMatrixRef<S> x, typename F::Input* packed) const {
    F::pack_input(kernels::strided<S>(x), x.rows(), d_model(), packed);
  }
  // memory is forward()'s: [h1 | h3 | h], each [n, d_ff]; h1 = x·w1ᵀ and h3 = x·w3ᵀ are stored only
  // when kept for backward.
  void pack_hidden(Index n, std::span<S> memory, typename F::Input* packed) const {
    F::pack_input(kernels::Strided<S>{hidden(memory, n), d_ff(), 1}, n, d_ff(), packed);
  }

  void forward_up(Index e, Index n, const typename F::Input* packed_x, Index p_begin, Index p_end, S* work,
                  std::span<S> memory, bool keep) const {
    using Tile = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
    using Out = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
    packed_.check_usable(e, "GatedExpert::forward_up");
    const Index f = d_ff();
    S* const h1 = memory.data();
    S* const h3 = h1 + n * f;
    S* const h = hidden(memory, n);
    const auto gate_row = gate_kernel();
    kernels::multiply_bank<F>(
        packed_.up(), e, n, d_model(), packed_x, p_begin, p_end, work,
        [&](Index p, Weight* panel) { pack_up_panel(w1_[e], w3_[e], p, panel); },
        [&](Index p) { return up_source(e, p); },
        [&](Index i0, Index mr, Index p, const S* tile) {
      const Index unit = p * kUnits, units = std::min<Index>(kUnits, f - unit), at = i0 * f + unit;
      for (Index i = 0; i < mr; ++i) gate_row(units, tile + i * kNR, tile + i * kNR + kUnits, h + at + i * f);
      if (!keep) return;
      if (units == kUnits) {  // read again only by backward: past the caches
        kernels::stream_rows<S>(tile, kNR, mr, kUnits, h1 + at, f);
        kernels::stream_rows<S>(tile + kUnits, kNR, mr, kUnits, h3 + at, f);
        return;
      }
      Out(h1 + at, mr, units, Eigen::OuterStride<>(f)) = Tile(tile, mr, units, Eigen::OuterStride<>(kNR));
      Out(h3 + at, mr, units, Eigen::OuterStride<>(f)) = Tile(tile + kUnits, mr, units, Eigen::OuterStride<>(kNR));
    });
    if (keep) kernels::stream_fence();
  }

  // y = scale ⊙ h·w2ᵀ.
  void forward_down(Index e, Index n, const typename F::Input* packed_h, Index p_begin, Index p_end, S* work,
                    const S* scale, MatrixRef<S> y) const {
    kernels::multiply_bank<F>(
        packed_.down(), e, n, d_ff(), packed_h, p_begin, p_end, work,
        [&](Index p, Weight* panel) { kernels::pack_weight_panel<F>(w2_[e], p, panel); },
        [&](Index p) { return kernels::weight_panel_source<F>(w2_[e], p); },
        [&](Index i0, Index mr, Index p, const S* tile) { kernels::store_output_tile<F>(y, i0, mr, p, tile, scale, nullptr); });
  }

 private:
  GatedExpert(const ExpertConfig& config, bool zeros, bool masters = true) : config_(config) {
    detail::check_expert_config(config, "GatedExpert", /*needs_d_ff=*/true);
    detail::check_config(!config.bias, "GatedExpert", "bias = true but gated experts have no biases");
    const Index E = config.num_experts, d = config.d_model, f = config.d_ff;
    packed_ = PackedProjections<F>(E);
    if (!masters) return;
    w1_ = ParamBank<S>(E, f, d);
    w3_ = ParamBank<S>(E, f, d);
    w2_ = ParamBank<S>(E, d, f);
    if (zeros || config.init == Init::zeros) return;
    Generator rng(config.seed);
    w1_.init_uniform(d, rng);
    w3_.init_uniform(d, rng);
    w2_.init_uniform(f, rng);
  }

  using Weight = typename F::Weight;
  static constexpr int kNR = F::kNR, kUnits = F::kNR / 2;
  // h = act(h1) ⊙ h3, for elementwise().
  static constexpr auto gated = [](const auto& a1, const auto& a3) { return Activation::apply(a1) * a3; };

  S* hidden(std::span<S> memory, Index n) const { return memory.data() + 2 * n * d_ff(); }

  // h = act(h1) ⊙ h3 for a row of a tile: SiLU at the active ISA's width where the kernels have it
  // (the build's own may be narrower: kernels/tile_kernels.inc), else Eigen's, by `gated`.
  static auto gate_kernel() {
    decltype(F::kernels().silu_gate) kernel = nullptr;
    if constexpr (std::is_same_v<Activation, Silu>) kernel = F::kernels().silu_gate;
    return kernel ? kernel : +[](Index n, const S* h1, const S* h3, S* h) { elementwise<S>(n, h, gated, h1, h3); };
  }

  template <class W>
  void pack_given_up(Index e, const W& w1, const W& w3, int threads) {
    check_given(e, "w1", w1, {d_ff(), "d_ff"}, {d_model(), "d_model"});
    check_given(e, "w3", w3, {d_ff(), "d_ff"}, {d_model(), "d_model"});
    packed_.repack_up(e, up_panels(), d_model(), threads,
                      [&](Index p, Weight* panel) { pack_up_panel(w1, w3, p, panel); });
  }
  template <class W>
  void pack_given_down(Index e, const W& w2, int threads) {
    check_given(e, "w2", w2, {d_model(), "d_model"}, {d_ff(), "d_ff"});
    packed_.repack_down(e, down_panels(), d_ff(), threads,
                        [&](Index p, Weight* panel) { kernels::pack_weight_panel<F>(w2, p, panel); });
  }
  struct Dim {
    Index size;
    const char* name;
  };
  template <class W>
  void check_given(Index e, std::string_view name, const W& w, Dim rows, Dim cols) const {
    constexpr const char* who = "GatedExpert::pack_expert";
    detail::check_config(e >= 0 && e < num_experts(), who, "expert = ", e, " but num_experts = ", num_experts());
    detail::check_dim(who, detail::concat(name, ".rows()"), w.rows(), rows.name, rows.size);
    detail::check_dim(who, detail::concat(name, ".cols()"), w.cols(), cols.name, cols.size);
  }

  // Up panel p: hidden units [p·U, p·U + U) of w1, then of w3, as columns; [d_model][kNR].
  template <class W>
  void pack_up_panel(const W& w1, const W& w3, Index p, Weight* panel) const {
    const Index unit = p * kUnits, units = std::min<Index>(kUnits, d_ff() - unit);
    if (units < kUnits) std::fill_n(panel, F::packed_depth(d_model()) * kNR, Weight(0));
    F::pack_weight_rows(w1.middleRows(unit, units), panel, 0);
    F::pack_weight_rows(w3.middleRows(unit, units), panel, kUnits);
  }
  // The weights pack_up_panel reads: rows of w1 and w3.
  kernels::Ahead up_source(Index e, Index p) const {
    const Index unit = p * kUnits, bytes = std::min<Index>(kUnits, d_ff() - unit) * d_model() * Index(sizeof(S));
    return {{reinterpret_cast<const char*>(w1_[e].row(unit).data()), reinterpret_cast<const char*>(w3_[e].row(unit).data())},
            {bytes, bytes}};
  }

  ExpertConfig config_;
  ParamBank<S> w1_, w2_, w3_;
  PackedProjections<F> packed_;
};

template <class S, class F = kernels::NativeFormat<S>> using SwiGluExpert = GatedExpert<S, Silu, F>;
template <class S, class F = kernels::NativeFormat<S>> using GeGluExpert = GatedExpert<S, Gelu, F>;

}  // namespace moe
