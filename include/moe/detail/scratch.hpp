// Buffers an object reuses from call to call. Scratch<T>: a T that is memory, not state — a copy
// starts empty (a default T), an assignment from another Scratch keeps this one's memory; moves
// move — so that copying the object does not copy them. grow_rows: they only grow, so a steady
// state does not allocate.
#pragma once

#include "moe/types.hpp"

#include <algorithm>

namespace moe::detail {

template <class T>
struct Scratch : T {
  using T::operator=;

  Scratch() = default;
  Scratch(const Scratch&) : T() {}
  Scratch& operator=(const Scratch&) { return *this; }
  Scratch(Scratch&&) noexcept = default;
  Scratch& operator=(Scratch&&) noexcept = default;
  ~Scratch() = default;

  void release() { static_cast<T&>(*this) = T(); }
};

// m: at least `rows` rows (more if it has them) of `cols` columns.
template <class S>
void grow_rows(RowMatrix<S>& m, Index rows, Index cols) {
  if (m.rows() < rows || m.cols() != cols) m.resize(std::max(rows, m.rows()), cols);
}

}  // namespace moe::detail
