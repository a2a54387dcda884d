// Top-k selection with a fixed tie rule: a higher value first, and among equal values the lower
// index first (docs/architecture.md §8), so the choice never depends on the sort implementation.
#pragma once

#include "moe/types.hpp"

#include <algorithm>
#include <cstdint>

namespace moe::kernels {

// ids[0..k) = indices of the k largest of values[0..n), best first.
//   requires: 1 <= k <= n; no NaN in values (the gates check finiteness first).
// Insertion into a sorted list of k: O(n·k), and k is small (≤ 8 in every real router).
template <class S>
void top_k(const S* values, Index n, Index k, std::int32_t* ids) {
  Index filled = 0;
  for (Index i = 0; i < n; ++i) {
    const S v = values[i];
    // Equal values keep the earlier (lower) index ahead: insert after them.
    if (filled == k && !(v > values[ids[k - 1]])) continue;
    Index pos = std::min(filled, k - 1);
    while (pos > 0 && v > values[ids[pos - 1]]) {
      ids[pos] = ids[pos - 1];
      --pos;
    }
    ids[pos] = static_cast<std::int32_t>(i);
    filled = std::min(filled + 1, k);
  }
}

}  // namespace moe::kernels
