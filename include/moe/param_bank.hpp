// ParamBank: the same parameter of every expert of a layer, in one contiguous 64-byte-aligned
// block [num_experts, rows, cols] (docs/architecture.md §3). Expert e's matrix is a row-major Map view.
#pragma once

#include "moe/detail/aligned_allocator.hpp"
#include "moe/random.hpp"
#include "moe/types.hpp"

namespace moe {

template <class S>
class ParamBank {
 public:
  using Scalar = S;

  ParamBank() = default;
  ParamBank(Index num_experts, Index rows, Index cols)
      : data_(static_cast<std::size_t>(num_experts * rows * cols), S(0)),
        num_experts_(num_experts), rows_(rows), cols_(cols) {}

  Index num_experts() const { return num_experts_; }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Index size() const { return static_cast<Index>(data_.size()); }
  bool empty() const { return data_.empty(); }

  // Expert e's [rows, cols] matrix.
  Eigen::Map<const RowMatrix<S>> operator[](Index e) const {
    return Eigen::Map<const RowMatrix<S>>(data_.data() + e * rows_ * cols_, rows_, cols_);
  }
  Eigen::Map<RowMatrix<S>> operator[](Index e) {
    return Eigen::Map<RowMatrix<S>>(data_.data() + e * rows_ * cols_, rows_, cols_);
  }

  // The whole bank as [num_experts * rows, cols].
  Eigen::Map<const RowMatrix<S>> all() const {
    return Eigen::Map<const RowMatrix<S>>(data_.data(), num_experts_ * rows_, cols_);
  }
  Eigen::Map<RowMatrix<S>> all() {
    return Eigen::Map<RowMatrix<S>>(data_.data(), num_experts_ * rows_, cols_);
  }

  // torch.nn.Linear's default initialisation, expert by expert: U(±1/√fan_in).
  void init_uniform(Index fan_in, Generator& rng) { init_linear_uniform(all(), fan_in, rng); }

 private:
  detail::AlignedVector<S> data_;
  Index num_experts_ = 0, rows_ = 0, cols_ = 0;
};

}  // namespace moe
