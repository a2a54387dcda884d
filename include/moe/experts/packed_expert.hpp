// The fast path of an expert bank (GatedExpert, FfnExpert): its contract with the runner
// (dispatch/runner.hpp), and the packed copies of its two projections that the experts share.
//
// An expert with a fast path keeps its weights packed for the kernels (kernels/packed_product.hpp)
// in a weight format F (kernels/format.hpp), packs its own inputs and hidden activations, and
// computes a block of rows in two phases that the runner splits into (expert × panel range) work
// items over its threads: up (hidden units from the input) and down (outputs from the hidden units).
#pragma once

#include "moe/concepts.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/errors.hpp"
#include "moe/kernels/bf16_format.hpp"
#include "moe/kernels/packed_product.hpp"
#include "moe/types.hpp"

#include <concepts>
#include <span>

namespace moe {

// using Format: the weight format (kernels/format.hpp); Format::Input is what pack_input and
//   pack_hidden write.
// prepack(e): packs expert e's weights unless already packed (calls for different e may run
//   concurrently); weights_changed(): drops every packed copy.
// up_panels(), down_panels(): work units of the two phases.
// work_size(n): scalars of `work` below for a block of n rows (each thread has its own).
// packed_input_size(n), packed_hidden_size(n): Format::Input elements of the packed operands.
// pack_input(x, packed_x): x [n, d_model()] → packed_x.
// forward_up(e, n, packed_x, p_begin, p_end, work, memory, keep):
//   requires: packed_x from pack_input of the block; memory: the block's working memory of
//             scratch_size(n) scalars. Expert e prepacked or not (then each panel is packed as it
//             is used: training).
//   ensures:  the hidden units of up panels [p_begin, p_end) are in memory; with keep, memory also
//             holds what backward() reads.
// pack_hidden(n, memory, packed_h): after every up panel ran, the hidden activations → packed_h.
// forward_down(e, n, packed_h, p_begin, p_end, work, scale, y):
//   ensures:  the outputs of down panels [p_begin, p_end) of y [n, d_model()] = scale[i] ·
//             expert_e(x)[i] (scale null: 1), the same values as forward() up to rounding, and the
//             same bits whether e was prepacked or not.
template <class X>
concept PackedExpert =
    Expert<X> && requires(X& expert, const X& const_expert, Index e, Index n, ConstMatrixRef<typename X::Scalar> x,
                          const typename X::Format::Input* in, typename X::Format::Input* packed,
                          typename X::Scalar* out, std::span<typename X::Scalar> memory,
                          MatrixRef<typename X::Scalar> y) {
      requires std::same_as<typename X::Format::Scalar, typename X::Scalar>;
      { const_expert.up_panels() } -> std::convertible_to<Index>;
      { const_expert.down_panels() } -> std::convertible_to<Index>;
      { const_expert.work_size(n) } -> std::convertible_to<Index>;
      { const_expert.packed_input_size(n) } -> std::convertible_to<Index>;
      { const_expert.packed_hidden_size(n) } -> std::convertible_to<Index>;
      expert.prepack(e);
      expert.weights_changed();
      const_expert.pack_input(x, packed);
      const_expert.forward_up(e, n, in, e, e, out, memory, true);
      const_expert.pack_hidden(n, memory, packed);
      const_expert.forward_down(e, n, in, e, e, out, out, y);
    };

// The weight formats of the experts with a packed path: fp32 (the default) and bfloat16, as in
// SwiGluExpert<float, Bf16> (kernels/format.hpp, kernels/bf16_format.hpp).
using F32 = kernels::NativeFormat<float>;
using Bf16 = kernels::Bf16Format;

// The packed copies (format F) of a bank's up and down projections, expert by expert on first
// use, dropped together whenever the master weights may change: the bookkeeping of every expert
// with a fast path, in one place. After release_masters() (the expert freed its master weights:
// inference only) the copies are all there is: clear() and check_masters() throw state_error.
template <class F>
class PackedProjections {
 public:
  using Weight = typename F::Weight;

  explicit PackedProjections(Index num_experts = 0) : up_(num_experts), down_(num_experts) {}

  // Packs expert e unless it is packed: up panel p by pack_up(p, panel), each panel
  // F::packed_depth(up_depth) · kNR weights; the same for down. Calls for different e may run concurrently.
  template <class PackUp, class PackDown>
  void ensure(Index e, Index up_panels, Index up_depth, Index down_panels, Index down_depth, PackUp&& pack_up,
              PackDown&& pack_down) {
    pack(up_, e, up_panels, up_depth, pack_up);
    pack(down_, e, down_panels, down_depth, pack_down);
  }
  // Packs one projection of expert e again (a bank without masters, from weights given to it),
  // its panels on `threads` threads.
  template <class Pack>
  void repack_up(Index e, Index panels, Index depth, int threads, Pack&& pack_panel) {
    up_.drop(e);
    pack(up_, e, panels, depth, pack_panel, threads);
  }
  template <class Pack>
  void repack_down(Index e, Index panels, Index depth, int threads, Pack&& pack_panel) {
    down_.drop(e);
    pack(down_, e, panels, depth, pack_panel, threads);
  }
  void clear() {
    check_masters("weights_changed");
    up_.clear();
    down_.clear();
  }
  void release_masters() { released_ = true; }
  bool masters_released() const { return released_; }
  // Throws state_error naming `who` once the master weights are gone.
  void check_masters(const char* who) const {
    if (released_)
      MOE_THROW(state_error(detail::concat(who, ": the master weights were released (release_master_weights(): ",
                                           "the experts serve inference only)")));
  }
  // Throws state_error unless expert e can run: packed, or with master weights to pack from.
  void check_usable(Index e, const char* who) const {
    if (released_ && !(up_.packed(e) && down_.packed(e)))
      MOE_THROW(state_error(detail::concat(who, ": expert ", e, " has neither master weights nor a packed copy")));
  }
  std::size_t bytes() const { return up_.bytes() + down_.bytes(); }
  const kernels::PackedBank<F>& up() const { return up_; }
  const kernels::PackedBank<F>& down() const { return down_; }

 private:
  template <class Pack>
  static void pack(kernels::PackedBank<F>& bank, Index e, Index panels, Index depth, Pack&& pack_panel,
                   int threads = 1) {
    const Index size = F::packed_depth(depth) * F::kNR;
    bank.ensure(e, panels * size, [&](Weight* out) {
      detail::parallel_for(panels, threads, [&](Index p, int) { pack_panel(p, out + p * size); });
    });
  }

  kernels::PackedBank<F> up_, down_;
  bool released_ = false;
};

}  // namespace moe
