// Contracts that every optimizer of the library (include/moe/train/) meets in the same way,
// checked the same way for each. A case C names one optimizer with its settings:
//   C::template make<S>()  the optimizer in S, fresh (no step taken);
//   C::kWho                the origin its errors name ("Sgd::step", "Adam::step", ...).
// step(params, grads) is the contract checked: params updated, grads read; shape_error for lists
// that disagree with each other or with the first step's; std::domain_error for a non-finite
// gradient; on a throw no parameter and no optimizer state has changed.
#pragma once

#include <moe/errors.hpp>
#include <moe/parameters.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace moe::test {

// f(θ) = ½ Σ a ⊙ (θ − c)² over two tensors of odd shapes, "w" [3, 4] and "b" [1, 5]: convex, with
// curvatures a in [0.5, 2] and the minimum c at least 0.3 away from the start in every entry, so
// that every entry of the first gradient is at least 0.15 in size.
template <class S>
struct Quadratic {
  RowMatrix<S> w = random_matrix<S>(3, 4, 51), b = random_matrix<S>(1, 5, 52);
  RowMatrix<S> d_w = RowMatrix<S>::Zero(3, 4), d_b = RowMatrix<S>::Zero(1, 5);
  RowMatrix<S> a_w = curvature(3, 4, 53), a_b = curvature(1, 5, 54);
  RowMatrix<S> c_w = w + offset(3, 4, 55), c_b = b + offset(1, 5, 56);

  static RowMatrix<S> curvature(Index rows, Index cols, std::uint64_t seed) {
    return (random_matrix<S>(rows, cols, seed).array() * S(0.75) + S(1.25)).matrix();
  }
  static RowMatrix<S> offset(Index rows, Index cols, std::uint64_t seed) {
    const RowMatrix<S> u = random_matrix<S>(rows, cols, seed);
    return (u.array().sign() * (S(0.3) + S(0.7) * u.array().abs())).matrix();
  }

  ParameterList<S> params() { return {view<S>("w", w), view<S>("b", b)}; }
  ParameterList<S> grads() { return {view<S>("w", d_w), view<S>("b", d_b)}; }
  // ∇f = a ⊙ (θ − c), written into the existing storage (earlier views stay valid).
  void compute_gradients() {
    d_w.array() = a_w.array() * (w - c_w).array();
    d_b.array() = a_b.array() * (b - c_b).array();
  }
  double value() const {
    return 0.5 * ((a_w.array() * (w - c_w).array().square()).sum() + (a_b.array() * (b - c_b).array().square()).sum());
  }
  bool operator==(const Quadratic& other) const { return w == other.w && b == other.b; }
};

// Runs f, expecting an exception of type X whose message contains every one of `parts`.
template <class X, class F>
void expect_error_naming(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown";
  } catch (const X& error) {
    for (const auto& part : parts) EXPECT_NE(std::string(error.what()).find(part), std::string::npos) << error.what();
  } catch (...) {
    ADD_FAILURE() << "an exception of another type was thrown";
  }
}

// One gradient evaluation and one step.
template <class Optimizer, class S>
void descend(Optimizer& optimizer, Quadratic<S>& q) {
  q.compute_gradients();
  optimizer.step(q.params(), q.grads());
}

// The first step moves every entry against its gradient and lowers f; more steps lower it further
// (after 25 and 200 steps), to below 1 % of where it started. Not at every step: momentum and
// Adam overshoot, and Adam with L2 decay settles at the decayed minimum, not at c.
template <class C, class S>
void check_descends() {
  Quadratic<S> q;
  auto optimizer = C::template make<S>();
  const Quadratic<S> start = q;
  const double f0 = q.value();
  descend(optimizer, q);
  for (Index i = 0; i < q.w.size(); ++i)
    EXPECT_LT((q.w.data()[i] - start.w.data()[i]) * q.d_w.data()[i], S(0)) << "w entry " << i;
  for (Index i = 0; i < q.b.size(); ++i)
    EXPECT_LT((q.b.data()[i] - start.b.data()[i]) * q.d_b.data()[i], S(0)) << "b entry " << i;
  double previous = q.value();
  EXPECT_LT(previous, f0);
  int taken = 1;
  for (const int checkpoint : {25, 200}) {
    for (; taken < checkpoint; ++taken) descend(optimizer, q);
    EXPECT_LT(q.value(), previous) << "after " << checkpoint << " steps";
    previous = q.value();
  }
  EXPECT_LT(previous, 1e-2 * f0);
}

// Two optimizers fed the same steps give the same parameters, bit for bit.
template <class C, class S>
void check_same_steps_same_bits() {
  Quadratic<S> q1, q2;
  auto first = C::template make<S>(), second = C::template make<S>();
  for (int step = 0; step < 6; ++step) {
    descend(first, q1);
    descend(second, q2);
    EXPECT_TRUE(q1 == q2) << "after step " << step + 1;
  }
}

// A NaN or ±inf in the last tensor's gradient, on the first step or a later one: std::domain_error
// naming the origin, the tensor and the entry; no parameter changes, nor the step count, nor the
// state: the next good step gives the bits of an optimizer that never saw the bad one.
template <class C, class S>
void check_non_finite_gradient() {
  for (const S bad : {std::numeric_limits<S>::quiet_NaN(), std::numeric_limits<S>::infinity(),
                      -std::numeric_limits<S>::infinity()})
    for (const int good_steps : {0, 2}) {
      SCOPED_TRACE(::testing::Message() << bad << " after " << good_steps << " good steps");
      Quadratic<S> q, twin;
      auto optimizer = C::template make<S>(), untouched = C::template make<S>();
      for (int step = 0; step < good_steps; ++step) {
        descend(optimizer, q);
        descend(untouched, twin);
      }
      q.compute_gradients();
      q.d_b(0, 3) = bad;  // "w" comes first and must not have been updated either
      const Quadratic<S> before = q;
      expect_error_naming<std::domain_error>([&] { optimizer.step(q.params(), q.grads()); },
                                             {C::kWho, "'b'", "(0, 3)"});
      EXPECT_TRUE(q == before);
      EXPECT_EQ(optimizer.steps(), good_steps);
      descend(optimizer, q);
      descend(untouched, twin);
      EXPECT_TRUE(q == twin);
    }
}

// Gradients whose list disagrees with the parameters' (one tensor short, another name, another
// number of rows or columns): shape_error naming both sides, before any step changed anything.
template <class C, class S>
void check_mismatched_lists() {
  Quadratic<S> q, twin;
  auto optimizer = C::template make<S>(), untouched = C::template make<S>();
  q.compute_gradients();
  const Quadratic<S> before = q;
  RowMatrix<S> fewer_rows = RowMatrix<S>::Zero(2, 4), fewer_cols = RowMatrix<S>::Zero(3, 3);
  const std::vector<std::pair<ParameterList<S>, std::vector<std::string>>> cases{
      {{q.grads()[0]}, {C::kWho, "grads.size() = 1", "params.size() = 2"}},
      {{view<S>("v", q.d_w), q.grads()[1]}, {C::kWho, "grads[0] is 'v' but params[0] is 'w'"}},
      {{view<S>("w", fewer_rows), q.grads()[1]}, {C::kWho, "w rows = 2", "parameter rows = 3"}},
      {{view<S>("w", fewer_cols), q.grads()[1]}, {C::kWho, "w cols = 3", "parameter cols = 4"}},
  };
  for (const auto& [grads, parts] : cases)
    expect_error_naming<shape_error>([&] { optimizer.step(q.params(), grads); }, parts);
  EXPECT_TRUE(q == before);
  EXPECT_EQ(optimizer.steps(), 0);
  descend(optimizer, q);  // the refused lists fixed no shapes: the first step is a first step
  descend(untouched, twin);
  EXPECT_TRUE(q == twin);
}

// After the first step the parameter list is fixed: a tensor fewer or more, another name, another
// order, another number of rows or columns throw shape_error naming the optimizer's state, and
// change nothing.
template <class C, class S>
void check_fixed_parameter_list() {
  Quadratic<S> q, twin;
  auto optimizer = C::template make<S>(), untouched = C::template make<S>();
  descend(optimizer, q);
  descend(untouched, twin);
  q.compute_gradients();
  const Quadratic<S> before = q;
  RowMatrix<S> more_rows = RowMatrix<S>::Zero(4, 4), d_more_rows = RowMatrix<S>::Zero(4, 4);
  RowMatrix<S> more_cols = RowMatrix<S>::Zero(3, 5), d_more_cols = RowMatrix<S>::Zero(3, 5);
  RowMatrix<S> extra = RowMatrix<S>::Zero(2, 2), d_extra = RowMatrix<S>::Zero(2, 2);
  const ParameterList<S> p = q.params(), g = q.grads();
  struct Change {
    ParameterList<S> params, grads;
    std::vector<std::string> parts;
  };
  const std::vector<Change> changes{
      {{p[0]}, {g[0]}, {C::kWho, "params.size() = 1", "tensors in the optimizer state = 2"}},
      {{p[0], p[1], view<S>("extra", extra)},
       {g[0], g[1], view<S>("extra", d_extra)},
       {C::kWho, "params.size() = 3", "tensors in the optimizer state = 2"}},
      {{view<S>("v", q.w), p[1]}, {view<S>("v", q.d_w), g[1]}, {C::kWho, "params[0] is 'v'", "made for 'w'"}},
      {{p[1], p[0]}, {g[1], g[0]}, {C::kWho, "params[0] is 'b'", "made for 'w'"}},
      {{view<S>("w", more_rows), p[1]},
       {view<S>("w", d_more_rows), g[1]},
       {C::kWho, "w rows = 4", "rows in the optimizer state = 3"}},
      {{view<S>("w", more_cols), p[1]},
       {view<S>("w", d_more_cols), g[1]},
       {C::kWho, "w cols = 5", "cols in the optimizer state = 4"}},
  };
  for (const auto& change : changes)
    expect_error_naming<shape_error>([&] { optimizer.step(change.params, change.grads); }, change.parts);
  EXPECT_TRUE(q == before);
  EXPECT_TRUE(more_rows.isZero(0) && more_cols.isZero(0) && extra.isZero(0));
  EXPECT_EQ(optimizer.steps(), 1);
  descend(optimizer, q);
  descend(untouched, twin);
  EXPECT_TRUE(q == twin);
}

}  // namespace moe::test
