// ExpertRunner: runs a bank of experts over an ExpertBatch — inference forward, training forward
// (keeping what backward needs) and backward — with the work split over threads, the scratch and
// the saved memory. The one place that knows whether an expert has a fast path (PackedExpert).
//
// Work is cut into blocks: an expert's rows, or (tile_rows > 0: shared experts, which see every
// token) runs of at most tile_rows of them. On the fast path the forward runs in two phases of
// (block × panel range) work items — up (hidden units) and down (outputs) — after each block's
// input, then hidden activations, are packed by the expert; other experts run a block per item.
// Backward gives each expert to one work item (it owns the expert's gradients, summed over its
// blocks in order), or runs the experts one after another with every thread splitting each
// product when there are fewer experts than threads. Every output element is computed by one work
// item in a fixed order: the bits do not depend on the thread count.
#pragma once

#include "moe/concepts.hpp"
#include "moe/detail/aligned_allocator.hpp"
#include "moe/detail/parallel.hpp"
#include "moe/detail/scratch.hpp"
#include "moe/dispatch/expert_batch.hpp"
#include "moe/experts/packed_expert.hpp"
#include "moe/isa.hpp"

#include <algorithm>
#include <concepts>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace moe {

// The working memory a training forward keeps for backward, block by block (the runner's layout).
template <class S>
struct SavedBlocks {
  detail::AlignedVector<S> memory;
  std::vector<Index> offset;  // [blocks + 1]
};

// What runs bank X's products now: "<format> weights on <isa> kernels" on the fast path (the
// kernels of moe::active_isa(), kernels/micro_kernel.hpp), "Eigen products" otherwise.
template <class X>
std::string kernel_description() {
  if constexpr (PackedExpert<X>)
    return std::string(X::Format::name) + " weights on " + std::string(isa_name(X::Format::kernels().isa)) + " kernels";
  else
    return "Eigen products";
}

// What an expert's packed operands are made of: its format's Input on the fast path.
template <class X>
struct PackedInputOf {
  using type = typename X::Scalar;
};
template <PackedExpert X>
struct PackedInputOf<X> {
  using type = typename X::Format::Input;
};

template <Expert X>
class ExpertRunner {
 public:
  using S = typename X::Scalar;

  explicit ExpertRunner(Index tile_rows = 0) : tile_rows_(tile_rows) {}

  // The fast path's packed copies of the weights (see SparseMoE::prepack): made now, or dropped.
  static void prepack(X& experts, int threads) {
    if constexpr (PackedExpert<X>)
      detail::parallel_for(experts.num_experts(), threads, [&](Index e, int) { experts.prepack(e); });
  }
  static void weights_changed(X& experts) {
    if constexpr (PackedExpert<X>) experts.weights_changed();
  }

  // Inference: the output rows of batch.out = expert(input rows) for every expert of the batch,
  // times batch.scale where the expert applies it as it stores (then batch.scaled is set). On the
  // fast path an expert without packed weights packs each weight panel as it uses it (the same
  // bits, slower). The experts are only read: runners of their own may share them across threads.
  void forward(const X& experts, ExpertBatch<S>& batch, int threads) { run(experts, batch, own_, false, threads); }
  // The same, after packing the weights of every expert with rows that has none packed yet.
  void forward(X& experts, ExpertBatch<S>& batch, int threads) {
    prepack_rows(experts, batch, threads);
    forward(std::as_const(experts), batch, threads);
  }

  // Training: the same, unscaled, and saved keeps each block's working memory for backward. The
  // inference's packed copies are dropped: the caller may have stepped the weights through views.
  // Each weight panel is packed as it is used (a packed copy would be written to memory to be read
  // once), unless an expert has several blocks to reuse it for: then for this call only.
  void forward(X& experts, ExpertBatch<S>& batch, SavedBlocks<S>& saved, int threads) {
    weights_changed(experts);
    const bool reuse = tile_rows_ > 0 && batch.num_rows() > 0 && max_rows(batch) > tile_rows_;
    if (reuse) prepack_rows(experts, batch, threads);
    run(experts, batch, saved, true, threads);
    if (reuse) weights_changed(experts);
  }

  // d_in = ∂⟨out, d_out⟩/∂in (batch order, overwritten); grads += ∂⟨out, d_out⟩/∂θ (accumulated).
  //   requires: forward(experts, batch, saved, ·) on this batch with these weights;
  //             d_out, d_in: [num_rows, d_model].
  template <class Gradients>
    requires TrainableExpert<X> && std::same_as<Gradients, typename X::Gradients>
  void backward(const X& experts, const ExpertBatch<S>& batch, const SavedBlocks<S>& saved, ConstMatrixRef<S> d_out,
                MatrixRef<S> d_in, Gradients& grads, int threads) {
    make_blocks(batch);
    std::vector<Index>& first = first_block_;  // the blocks of expert item i: [first[i], first[i + 1])
    first.clear();
    for (Index b = 0; b < Index(blocks_.size()); ++b)
      if (b == 0 || blocks_[b].expert != blocks_[b - 1].expert) first.push_back(b);
    const Index items = Index(first.size());
    first.push_back(Index(blocks_.size()));
    const int work_threads = expert_threads(experts, batch, threads);
    // Too few experts for the threads: one after another, each product split over all of them.
    constexpr bool kSplits = requires { experts.backward_scratch_size(Index(1), 1); };
    const int product_threads = kSplits && items < work_threads ? work_threads : 1;
    const int item_threads = product_threads > 1 ? 1 : int(std::max<Index>(1, std::min<Index>(work_threads, items)));
    const Index per_thread = aligned(backward_scratch_size(experts, max_block_rows(), product_threads));
    grow(scratch_, per_thread * item_threads);
    detail::parallel_for(items, item_threads, [&](Index item, int thread) {
      const std::span<S> scratch(scratch_.data() + thread * per_thread, static_cast<std::size_t>(per_thread));
      for (Index b = first[item]; b < first[item + 1]; ++b) {
        const Block& block = blocks_[b];
        const auto x = input(batch, block);
        const auto d_y = d_out.middleRows(block.begin, block.rows);
        const auto d_x = d_in.middleRows(block.begin, block.rows);
        if constexpr (kSplits)
          experts.backward(block.expert, x, memory(saved, b), d_y, d_x, grads, scratch, product_threads);
        else
          experts.backward(block.expert, x, memory(saved, b), d_y, d_x, grads, scratch);
      }
    });
  }

 private:
  struct Block {
    Index expert, begin, rows;  // bank index; rows [begin, begin + rows) of the batch
  };

  static void prepack_rows(X& experts, const ExpertBatch<S>& batch, int threads) {
    if constexpr (PackedExpert<X>)
      detail::parallel_for(batch.num_experts(), expert_threads(experts, batch, threads), [&](Index i, int) {
        if (batch.rows_of(i) > 0) experts.prepack(i);
      });
  }

  static Index max_rows(const ExpertBatch<S>& batch) {
    Index most = 0;
    for (Index i = 0; i < batch.num_experts(); ++i) most = std::max(most, batch.rows_of(i));
    return most;
  }

  void run(const X& experts, ExpertBatch<S>& batch, SavedBlocks<S>& saved, bool training, int threads) {
    batch.scaled = false;
    make_blocks(batch);
    saved.offset.assign(1, 0);
    for (const Block& block : blocks_) saved.offset.push_back(saved.offset.back() + experts.scratch_size(block.rows));
    grow(saved.memory, saved.offset.back());
    const int n_threads = expert_threads(experts, batch, threads);
    if constexpr (PackedExpert<X>) {
      run_packed(experts, batch, saved, training, n_threads);
    } else {
      const int block_threads = int(std::max<Index>(1, std::min<Index>(n_threads, Index(blocks_.size()))));
      detail::parallel_for(Index(blocks_.size()), block_threads, [&](Index b, int) {
        const Block& block = blocks_[b];
        experts.forward(block.expert, input(batch, block), batch.out.middleRows(block.begin, block.rows),
                        memory(saved, b));
      });
    }
  }

  // The fast path: inputs packed per block; then two phases of (block × panel range) work items.
  void run_packed(const X& experts, ExpertBatch<S>& batch, SavedBlocks<S>& saved, bool training, int n_threads)
    requires PackedExpert<X>
  {
    if (blocks_.empty()) return;
    const bool scaled = !training && !batch.scale.empty();
    const auto packed_size = [&](Index rows) {
      return std::max(experts.packed_input_size(rows), experts.packed_hidden_size(rows));
    };
    packed_offset_.assign(1, 0);
    for (const Block& block : blocks_) packed_offset_.push_back(packed_offset_.back() + aligned(packed_size(block.rows)));
    // Sized for any routing of as many rows (the sizes grow linearly with the rows, and each of at
    // most `rows` blocks rounds up by less than a line), so that the next call allocates nothing.
    const Index rows = total_rows();
    grow(packed_, aligned(packed_size(rows)) + aligned(1) * rows);
    const Index per_thread = aligned(experts.work_size(tile_rows_ > 0 ? std::min(tile_rows_, rows) : rows));
    grow(scratch_, per_thread * n_threads);
    const auto packed = [&](Index b) { return packed_.data() + packed_offset_[static_cast<std::size_t>(b)]; };

    const auto per_block = [&](auto&& body) {
      detail::parallel_for(Index(blocks_.size()), n_threads, [&](Index b, int) { body(b, blocks_[b]); });
    };
    const auto per_panel_range = [&](Index panels, auto&& body) {
      // At least ~8 items per thread for balance; a block is split no more than that needs.
      const Index blocks = Index(blocks_.size());
      const Index splits = std::max<Index>(1, (8 * n_threads + blocks - 1) / blocks);
      const Index chunk = (panels + splits - 1) / splits, per = (panels + chunk - 1) / chunk;
      detail::parallel_for(blocks * per, n_threads, [&](Index item, int thread) {
        const Index b = item / per, p0 = item % per * chunk;
        body(b, blocks_[b], p0, std::min(panels, p0 + chunk), scratch_.data() + thread * per_thread);
      });
    };

    per_block([&](Index b, const Block& block) { experts.pack_input(input(batch, block), packed(b)); });
    per_panel_range(experts.up_panels(), [&](Index b, const Block& block, Index p0, Index p1, S* work) {
      experts.forward_up(block.expert, block.rows, packed(b), p0, p1, work, memory(saved, b), training);
    });
    per_block([&](Index b, const Block& block) { experts.pack_hidden(block.rows, memory(saved, b), packed(b)); });
    per_panel_range(experts.down_panels(), [&](Index b, const Block& block, Index p0, Index p1, S* work) {
      experts.forward_down(block.expert, block.rows, packed(b), p0, p1, work,
                           scaled ? batch.scales(block.begin) : nullptr, batch.out.middleRows(block.begin, block.rows));
    });
    batch.scaled = scaled;
  }

  // blocks_: every expert's rows, in tiles of at most tile_rows_ when set; experts without rows
  // have none.
  void make_blocks(const ExpertBatch<S>& batch) {
    blocks_.clear();
    for (Index i = 0; i < batch.num_experts(); ++i) {
      const Index n = batch.rows_of(i), tile = tile_rows_ > 0 ? tile_rows_ : std::max<Index>(n, 1);
      for (Index r = 0; r < n; r += tile) blocks_.push_back({i, batch.begin(i) + r, std::min(tile, n - r)});
    }
  }

  Index total_rows() const {
    Index rows = 0;
    for (const Block& block : blocks_) rows += block.rows;
    return rows;
  }

  Index max_block_rows() const {
    Index most = 0;
    for (const Block& block : blocks_) most = std::max(most, block.rows);
    return most;
  }

  ConstMatrixRef<S> input(const ExpertBatch<S>& batch, const Block& block) const {
    return batch.input(block.expert).middleRows(block.begin - batch.begin(block.expert), block.rows);
  }

  template <class Saved>
  static auto memory(Saved& saved, Index b) {
    using Element = std::conditional_t<std::is_const_v<Saved>, const S, S>;
    const auto at = saved.offset[static_cast<std::size_t>(b)], end = saved.offset[static_cast<std::size_t>(b) + 1];
    return std::span<Element>(saved.memory.data() + at, static_cast<std::size_t>(end - at));
  }

  // Threads for the batch: one for less work than starting them costs.
  static int expert_threads(const X& experts, const ExpertBatch<S>& batch, int threads) {
    const Index d = experts.d_model();
    return detail::threads_for_work(batch.num_rows() * d * std::max(d, experts.scratch_size(1)), threads);
  }

  static Index backward_scratch_size(const X& experts, Index rows, int threads) {
    if constexpr (requires { experts.backward_scratch_size(rows, threads); })
      return experts.backward_scratch_size(rows, threads);
    else
      return experts.backward_scratch_size(rows);
  }

  // n rounded up to whole cache lines of S: per-thread and per-block memory starts on a line.
  static Index aligned(Index n) {
    constexpr auto line = static_cast<Index>(detail::kAlignment / sizeof(S));
    return (n + line - 1) / line * line;
  }

  // Buffers only grow: shrinking and growing back would zero-fill the difference on every call.
  template <class T>
  static void grow(detail::AlignedVector<T>& v, Index size) {
    if (v.size() < static_cast<std::size_t>(size)) v.resize(static_cast<std::size_t>(size));
  }

  Index tile_rows_ = 0;
  // Buffers, which a copy of the runner does not copy.
  detail::Scratch<std::vector<Block>> blocks_;
  detail::Scratch<std::vector<Index>> first_block_, packed_offset_;
  detail::Scratch<SavedBlocks<S>> own_;                                    // inference's working memory
  detail::Scratch<detail::AlignedVector<S>> scratch_;                      // per-thread work
  detail::Scratch<detail::AlignedVector<typename PackedInputOf<X>::type>> packed_;  // packed inputs and hidden rows
};

}  // namespace moe
