// What the tests of ExpertRunner (runner_test.cpp) run it on: expert banks with a fast path
// (SwiGluExpert, and FfnExpert with biases) and without (LinearExpert), batches of odd per-expert
// row counts, the runner's blocks restated from its documentation, and a probe that records the
// widest thread team an expert was called from.
#pragma once

#include <moe/concepts.hpp>
#include <moe/dispatch/expert_batch.hpp>
#include <moe/dispatch/runner.hpp>
#include <moe/experts/ffn.hpp>
#include <moe/experts/gated.hpp>
#include <moe/experts/linear.hpp>
#include <moe/parameters.hpp>

#include "support/compare.hpp"

#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace moe::test::runner {

inline constexpr Index kExperts = 5;

// Rows per expert. kRows: an empty expert, a decode-sized one (1 row) and experts of several
// 16-row tiles, 290 rows in all — enough work for the runner to start threads (it keeps one thread
// below ~1M multiply-adds: 290 · 40 · 140 for the FFN, 290 · 71 · 71 for LinearExpert's wider
// d_model). kEdges: empty experts first, inside and last. kOneExpert: fewer experts with rows than
// threads (backward then splits each product over the threads). kNone: no rows at all.
inline const std::vector<Index> kRows{61, 0, 97, 1, 131}, kEdges{0, 37, 0, 12, 0}, kOneExpert{0, 0, 290, 0, 0},
    kNone{0, 0, 0, 0, 0};

// d_model 40, d_ff 70, 5 experts; FfnExpert with biases; LinearExpert at d_model 71 (see kRows).
template <class X>
X make_experts() {
  constexpr bool has_biases = requires(const X& x) { x.b1(); };
  if constexpr (!PackedExpert<X>)
    return X({.num_experts = kExperts, .d_model = 71, .bias = true, .seed = 11});
  else
    return X({.num_experts = kExperts, .d_model = 40, .d_ff = 70, .bias = has_biases, .seed = 12});
}

// A gathered batch with these rows per expert: seeded inputs, and outputs with 3 rows more than
// the batch (NaN, as every output row is: the runner must write the batch's and only those).
template <class S>
ExpertBatch<S> make_batch(const std::vector<Index>& rows_per_expert, Index d_model, std::uint64_t seed) {
  ExpertBatch<S> batch;
  for (const Index n : rows_per_expert) batch.offset.push_back(batch.offset.back() + n);
  batch.out = RowMatrix<S>::Constant(batch.num_rows() + 3, d_model, std::numeric_limits<S>::quiet_NaN());
  batch.reserve(d_model);
  batch.rows.topRows(batch.num_rows()) = random_matrix<S>(batch.num_rows(), d_model, seed);
  return batch;
}

// The runner's blocks: each expert's rows in order, cut into runs of tile_rows from its first row
// when tile_rows > 0 (the last run shorter); experts without rows have none.
struct Block {
  Index expert, begin, rows;
};
template <class S>
std::vector<Block> blocks_of(const ExpertBatch<S>& batch, Index tile_rows) {
  std::vector<Block> blocks;
  for (Index i = 0; i < batch.num_experts(); ++i) {
    const Index n = batch.rows_of(i), tile = tile_rows > 0 ? tile_rows : n;
    for (Index r = 0; r < n; r += tile) blocks.push_back({i, batch.begin(i) + r, std::min(tile, n - r)});
  }
  return blocks;
}

// Block b's input rows.
template <class S>
ConstMatrixRef<S> block_input(const ExpertBatch<S>& batch, const Block& b) {
  return batch.input(b.expert).middleRows(b.begin - batch.begin(b.expert), b.rows);
}

// Each expert's own forward() on its rows: [num_rows, d_model].
template <class X>
RowMatrix<typename X::Scalar> reference_forward(const X& experts, const ExpertBatch<typename X::Scalar>& batch) {
  using S = typename X::Scalar;
  RowMatrix<S> y(batch.num_rows(), experts.d_model());
  for (Index i = 0; i < batch.num_experts(); ++i) {
    std::vector<S> scratch(static_cast<std::size_t>(experts.scratch_size(batch.rows_of(i))));
    experts.forward(i, batch.input(i), y.middleRows(batch.begin(i), batch.rows_of(i)), scratch);
  }
  return y;
}

// Every tensor of a gradient object, by name, as doubles.
template <class G>
std::vector<std::pair<std::string, std::vector<double>>> tensors(G& grads) {
  ParameterList<typename G::Scalar> list;
  grads.collect_parameters("", list);
  std::vector<std::pair<std::string, std::vector<double>>> out;
  for (const auto& view : list) out.emplace_back(view.name, std::vector<double>(view.values().begin(), view.values().end()));
  return out;
}

// ‖a − b‖ / ‖a + b‖ (STYLE.md's gradient error) of a result against its reference, both computed in
// S: within rounding of S.
template <class S>
constexpr double gradient_tolerance() {
  return sizeof(S) == sizeof(float) ? 1e-5 : 1e-12;
}

// X, recording in *widest the widest thread team (or, backward, the most threads each product was
// split over) any of its expert calls came from. The runner treats it as X: it inherits X's fast
// path, if any, and computes the same bits.
template <class X>
class Probed : public X {
 public:
  using S = typename X::Scalar;
  static constexpr bool kSplits = requires(const X& x) { x.backward_scratch_size(Index(1), 1); };

  Probed(X experts, std::atomic<int>* widest) : X(std::move(experts)), widest_(widest) {}

  void forward(Index e, ConstMatrixRef<S> x, MatrixRef<S> y, std::span<S> scratch) const {
    note(team());
    X::forward(e, x, y, scratch);
  }
  void forward_up(Index e, Index n, const typename PackedInputOf<X>::type* packed_x, Index p_begin, Index p_end, S* work,
                  std::span<S> memory, bool keep) const
    requires PackedExpert<X>
  {
    note(team());
    X::forward_up(e, n, packed_x, p_begin, p_end, work, memory, keep);
  }
  void backward(Index e, ConstMatrixRef<S> x, std::span<const S> saved, ConstMatrixRef<S> d_y, MatrixRef<S> d_x,
                typename X::Gradients& grads, std::span<S> scratch) const {
    note(team());
    X::backward(e, x, saved, d_y, d_x, grads, scratch);
  }
  void backward(Index e, ConstMatrixRef<S> x, std::span<const S> saved, ConstMatrixRef<S> d_y, MatrixRef<S> d_x,
                typename X::Gradients& grads, std::span<S> scratch, int threads) const
    requires kSplits
  {
    note(std::max(team(), threads));
    X::backward(e, x, saved, d_y, d_x, grads, scratch, threads);
  }

 private:
  static int team() {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
  }
  void note(int threads) const {
    int seen = widest_->load();
    while (threads > seen && !widest_->compare_exchange_weak(seen, threads)) {
    }
  }

  std::atomic<int>* widest_;
};

}  // namespace moe::test::runner
