// ExpertBatch: the rows a bank of experts runs on, expert by expert — what an exchange hands to the
// runner and the runner hands back (docs/architecture.md §5, "The engine room").
//
// The batch covers the experts [first_expert, first_expert + num_experts()) of a layer, in the
// exchange's order of experts (the layer's own order but for an MpiExchange with an explicit
// placement: mpi/placement.hpp); expert i of the bank owns rows [offset[i], offset[i + 1]) of the
// batch, in the order the exchange put them (token order inside an expert: the global token order
// when tokens come from several processes). Its inputs are those rows of `rows` (gathered by the
// exchange) or — when every expert sees every token, as shared experts do — all of one matrix x
// for every expert, read in place. Outputs go to the same row positions of `out`.
//
// scale (optional, [num_rows]): a factor per row, the routing weight of the (token, expert) pair.
// The runner folds it into the expert's down projection as it stores its tiles when the expert
// can, and says so in `scaled`; otherwise `out` is unscaled and combine applies the weights.
#pragma once

#include "moe/detail/scratch.hpp"
#include "moe/types.hpp"

#include <algorithm>
#include <vector>

namespace moe {

template <class S>
class ExpertBatch {
 public:
  Index first_expert = 0;
  std::vector<Index> offset{0};  // [num_experts + 1]
  RowMatrix<S> rows;             // [≥ num_rows, d_model]  gathered inputs (unless broadcast)
  std::vector<S> scale;          // [num_rows] or empty
  RowMatrix<S> out;              // [≥ num_rows, d_model]  expert outputs
  bool scaled = false;           // out includes scale

  Index num_experts() const { return static_cast<Index>(offset.size()) - 1; }
  Index num_rows() const { return offset.back(); }
  Index begin(Index i) const { return offset[static_cast<std::size_t>(i)]; }
  Index rows_of(Index i) const { return begin(i + 1) - begin(i); }

  // Expert i's input rows [rows_of(i), d_model].
  ConstMatrixRef<S> input(Index i) const {
    if (broadcast_) return Input(broadcast_, broadcast_rows_, broadcast_cols_, Eigen::OuterStride<>(broadcast_stride_));
    return rows.middleRows(begin(i), rows_of(i));
  }
  // Expert i's output rows.
  auto output(Index i) { return out.middleRows(begin(i), rows_of(i)); }
  auto output(Index i) const { return out.middleRows(begin(i), rows_of(i)); }
  // Rows [from, from + count) of the batch's scales, or null when there are none.
  const S* scales(Index from) const { return scale.empty() ? nullptr : scale.data() + from; }

  // Every one of `experts` experts on all rows of x (read in place, so x must outlive the use of the
  // batch); outputs [experts · x.rows(), d_model], expert i's at rows [i · T, i · T + T).
  void broadcast(ConstMatrixRef<S> x, Index experts) {
    broadcast_ = x.data();
    broadcast_rows_ = x.rows();
    broadcast_cols_ = x.cols();
    broadcast_stride_ = x.outerStride();
    first_expert = 0;
    offset.resize(static_cast<std::size_t>(experts + 1));
    for (Index i = 0; i <= experts; ++i) offset[static_cast<std::size_t>(i)] = i * x.rows();
    scale.clear();
    scaled = false;
  }
  // Back to gathered rows (what an exchange's dispatch fills).
  void gathered() { broadcast_ = nullptr; }

  // Sizes `rows` and `out` for num_rows() rows of d_model columns; they only grow, so a steady state
  // does not allocate.
  void reserve(Index d_model) {
    detail::grow_rows(rows, broadcast_ ? 0 : num_rows(), d_model);
    detail::grow_rows(out, num_rows(), d_model);
  }

 private:
  using Input = Eigen::Map<const RowMatrix<S>, 0, Eigen::OuterStride<>>;

  const S* broadcast_ = nullptr;
  Index broadcast_rows_ = 0, broadcast_cols_ = 0, broadcast_stride_ = 0;
};

}  // namespace moe
