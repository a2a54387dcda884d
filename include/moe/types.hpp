// The vocabulary types: token matrices are row-major [T, d_model] (docs/architecture.md §3).
#pragma once

#include <Eigen/Core>

#include <cstdint>

namespace moe {

using Index = Eigen::Index;

// A row-major matrix: one token (or one weight row, `torch.nn.Linear` layout) per row.
template <class S>
using RowMatrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class S>
using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;

// Inputs: any row-major matrix, row block or Map binds without a copy.
template <class S>
using ConstMatrixRef = Eigen::Ref<const RowMatrix<S>>;

// Outputs: pre-sized, row-major; a column-major argument does not compile.
template <class S>
using MatrixRef = Eigen::Ref<RowMatrix<S>>;

// Integer matrices used for routing ([T, k] expert ids).
using IndexMatrix = Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Tokens are rows: a column-major argument would be silently copied by ConstMatrixRef, so public
// templates that take token matrices are constrained on this concept instead.
template <class Derived>
concept RowMajorTokens = bool(Derived::IsRowMajor);

// Whether the layer samples noise (training) or is deterministic given its inputs (inference).
enum class Mode { inference, training };

}  // namespace moe
