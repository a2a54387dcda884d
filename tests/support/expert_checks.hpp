// Contracts that every expert of the library meets in the same way, checked the same way: the
// scratch its backward asks for, and the fast path (the PackedExpert concept).
#pragma once

#include <moe/concepts.hpp>
#include <moe/errors.hpp>
#include <moe/experts/packed_expert.hpp>
#include <moe/parameters.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

namespace moe::test {

// A scratch buffer of exactly `size` scalars, filled with NaN: whoever is handed it must overwrite
// what it reads.
template <class S>
std::vector<S> nan_scratch(Index size) {
  return std::vector<S>(static_cast<std::size_t>(size), std::numeric_limits<S>::quiet_NaN());
}

// The scratch backward asks for (n rows, expert e) is enough and all it touches: a shorter one is
// refused, and with a longer one the scalars past the size it asked for keep their values. The
// first backward accumulates into zero gradients; the refused call must leave them alone.
template <class X>
void check_backward_scratch(const X& expert, Index e, Index n) {
  using S = typename X::Scalar;
  const Index d = expert.d_model(), size = expert.backward_scratch_size(n);
  const RowMatrix<S> x = random_matrix<S>(n, d, 7), d_y = random_matrix<S>(n, d, 8);
  auto saved = nan_scratch<S>(expert.scratch_size(n));
  RowMatrix<S> y(n, d), d_x(n, d);
  expert.forward(e, x, y, saved);
  auto grads = expert.make_gradients();
  auto scratch = nan_scratch<S>(size + 64);
  std::fill(scratch.begin() + size, scratch.end(), S(5));
  expert.backward(e, x, saved, d_y, d_x, grads, scratch);
  EXPECT_TRUE(std::all_of(scratch.begin() + size, scratch.end(), [](S v) { return v == S(5); }));
  EXPECT_TRUE(d_x.allFinite());
  auto short_scratch = nan_scratch<S>(size - 1);
  EXPECT_THROW(expert.backward(e, x, saved, d_y, d_x, grads, short_scratch), shape_error);

  // On two threads (each product's columns split between them): the same bits, in the scratch it
  // asks for on two.
  auto grads_two = expert.make_gradients();
  RowMatrix<S> d_x_two(n, d);
  auto scratch_two = nan_scratch<S>(expert.backward_scratch_size(n, 2));
  expert.backward(e, x, saved, d_y, d_x_two, grads_two, scratch_two, 2);
  EXPECT_TRUE(d_x_two == d_x);
  ParameterList<S> sums, sums_two;
  grads.collect_parameters("", sums);
  grads_two.collect_parameters("", sums_two);
  ASSERT_EQ(sums.size(), sums_two.size());
  for (std::size_t i = 0; i < sums.size(); ++i)
    EXPECT_TRUE(std::equal(sums[i].values().begin(), sums[i].values().end(), sums_two[i].values().begin())) << sums[i].name;
}

// Expert e of `expert` (d_model d) on n rows, through forward_up and forward_down split into two
// panel ranges each, the expert packing its own input and hidden rows: the same bits from
// prepacked weights and from panels packed as they are used (training), and close to forward() —
// the output, and the working memory kept for backward (which forward() fills too). Ragged sizes
// (rows past a tile, units past a panel) are the caller's. `tolerance` bounds normalised_error
// against forward(), which computes in S from the master weights (a narrower format rounds).
template <PackedExpert X>
void check_packed_path(X& expert, Index e, Index n, double tolerance = test::tolerance<typename X::Scalar>()) {
  using S = typename X::Scalar;
  using Input = typename X::Format::Input;
  const Index d = expert.d_model();
  const RowMatrix<S> x = random_matrix<S>(n, d, 3);
  std::vector<Input> packed_x(static_cast<std::size_t>(expert.packed_input_size(n))),
      packed_h(static_cast<std::size_t>(expert.packed_hidden_size(n)));
  std::vector<S> work = nan_scratch<S>(expert.work_size(n));
  expert.pack_input(x, packed_x.data());
  const auto run = [&](bool prepacked) {
    expert.weights_changed();
    if (prepacked) expert.prepack(e);
    std::vector<S> memory = nan_scratch<S>(expert.scratch_size(n));
    RowMatrix<S> y(n, d);
    const Index up = expert.up_panels(), down = expert.down_panels();
    expert.forward_up(e, n, packed_x.data(), 0, up / 2, work.data(), memory, /*keep=*/true);
    expert.forward_up(e, n, packed_x.data(), up / 2, up, work.data(), memory, /*keep=*/true);
    expert.pack_hidden(n, memory, packed_h.data());
    expert.forward_down(e, n, packed_h.data(), 0, 1, work.data(), nullptr, y);
    expert.forward_down(e, n, packed_h.data(), 1, down, work.data(), nullptr, y);
    return std::pair{memory, y};
  };
  const auto [memory, y] = run(/*prepacked=*/true);
  const auto [memory_as_used, y_as_used] = run(/*prepacked=*/false);
  EXPECT_TRUE(memory == memory_as_used) << "the working memory kept for backward";
  EXPECT_TRUE(y == y_as_used);
  RowMatrix<S> y_forward(n, d);
  std::vector<S> memory_forward = nan_scratch<S>(expert.scratch_size(n));
  expert.forward(e, x, y_forward, memory_forward);
  EXPECT_LE(normalised_error(y, y_forward), tolerance);
  const Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>> kept(memory.data(), Index(memory.size())),
      kept_forward(memory_forward.data(), Index(memory_forward.size()));
  EXPECT_LE(normalised_error(kept, kept_forward), tolerance) << "the working memory kept for backward";
}

}  // namespace moe::test
