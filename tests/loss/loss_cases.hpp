// Shared inputs of the loss tests: hand-built routing plans (plain and noisy) whose selection
// cannot flip under a ±1e-6 perturbation, central finite differences in double, and the
// ‖a − b‖ / ‖a + b‖ error.
#pragma once

#include <moe/gating/scoring.hpp>
#include <moe/kernels/top_k.hpp>
#include <moe/random.hpp>
#include <moe/routing.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <string>
#include <vector>

namespace moe::test::loss {

using Mat = RowMatrix<double>;

// Logits whose entries in every row are at least 0.3 apart: a random permutation of the ranks
// 0.5·(r − E/2) plus U(−0.1, 0.1). Any top-k of them (and of their softmax or sigmoid) keeps a
// clear gap between the k-th and the (k+1)-th entry.
inline Mat spaced_logits(Index T, Index E, std::uint64_t seed) {
  Generator rng(seed);
  Mat z(T, E);
  std::vector<Index> rank(static_cast<std::size_t>(E));
  for (Index t = 0; t < T; ++t) {
    std::iota(rank.begin(), rank.end(), Index{0});
    for (Index i = E - 1; i > 0; --i)
      std::swap(rank[static_cast<std::size_t>(i)], rank[rng() % static_cast<std::uint64_t>(i + 1)]);
    for (Index e = 0; e < E; ++e)
      z(t, e) = 0.5 * (static_cast<double>(rank[static_cast<std::size_t>(e)]) - 0.5 * static_cast<double>(E)) +
                uniform(rng, -0.1, 0.1);
  }
  return z;
}

// plan.scores = softmax or σ of plan.logits, in S, as a gate computes them.
template <class S>
void rescore(RoutingPlan<S>& plan, Scoring scoring) {
  scoring::score_rows<S>(scoring, plan.logits, plan.scores);
}

// ∂L/∂logits from what a loss wrote: d_logits, plus d_scores through the score function (what a
// gate's backward does with them).
template <class S>
RowMatrix<S> logit_gradient(const RoutingPlan<S>& plan, const RouterGradients<S>& grads, Scoring scoring) {
  RowMatrix<S> d_logits = grads.d_logits;
  for (Index t = 0; t < plan.num_tokens(); ++t)
    scoring::add_scores_backward(scoring, plan.scores.row(t).data(), grads.d_scores.row(t).data(), plan.num_experts,
                                 d_logits.row(t).data());
  return d_logits;
}

// A plan for these logits: scores by `scoring`, the k best scores selected (best first), weights
// the selected scores normalised to sum 1.
template <class S>
RoutingPlan<S> make_plan(const Mat& logits, Index k, Scoring scoring = Scoring::softmax) {
  RoutingPlan<S> plan;
  const Index T = logits.rows(), E = logits.cols();
  plan.reset(T, k, E);
  plan.logits = logits.cast<S>();
  rescore(plan, scoring);
  for (Index t = 0; t < T; ++t) {
    kernels::top_k(plan.scores.row(t).data(), E, k, plan.expert.row(t).data());
    S sum = 0;
    for (Index j = 0; j < k; ++j) sum += plan.weight(t, j) = plan.scores(t, plan.expert(t, j));
    for (Index j = 0; j < k; ++j) plan.weight(t, j) /= sum;
  }
  return plan;
}

// A noisy plan: spaced noisy logits, N(0, 1) noise, noise_std in [0.5, 1.5), the top k noisy
// logits selected with softmax weights over them (Shazeer's gate).
template <class S>
RoutingPlan<S> noisy_plan(Index T, Index E, Index k, std::uint64_t seed) {
  auto plan = make_plan<S>(spaced_logits(T, E, seed), k);
  Generator rng(seed + 1000);
  plan.noisy = true;
  plan.noise.resize(T, E);
  plan.noise_std.resize(T, E);
  for (Index i = 0; i < plan.noise.size(); ++i) {
    plan.noise.data()[i] = S(standard_normal(rng));
    plan.noise_std.data()[i] = S(uniform(rng, 0.5, 1.5));
  }
  for (Index t = 0; t < T; ++t) {
    double sum = 0;
    for (Index j = 0; j < k; ++j) sum += std::exp(double(plan.logits(t, plan.expert(t, j))));
    for (Index j = 0; j < k; ++j) plan.weight(t, j) = S(std::exp(double(plan.logits(t, plan.expert(t, j)))) / sum);
  }
  return plan;
}

// The plan of the rows `rows` of `plan` (for the mask tests: the unpadded sub-batch).
template <class S>
RoutingPlan<S> sub_plan(const RoutingPlan<S>& plan, const std::vector<Index>& rows) {
  RoutingPlan<S> sub;
  sub.reset(static_cast<Index>(rows.size()), plan.slots_per_token(), plan.num_experts);
  sub.noisy = plan.noisy;
  if (plan.noisy) {
    sub.noise.resize(sub.num_tokens(), plan.num_experts);
    sub.noise_std.resize(sub.num_tokens(), plan.num_experts);
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const Index r = static_cast<Index>(i), t = rows[i];
    sub.expert.row(r) = plan.expert.row(t);
    sub.weight.row(r) = plan.weight.row(t);
    sub.dropped.row(r) = plan.dropped.row(t);
    sub.logits.row(r) = plan.logits.row(t);
    sub.scores.row(r) = plan.scores.row(t);
    if (plan.noisy) {
      sub.noise.row(r) = plan.noise.row(t);
      sub.noise_std.row(r) = plan.noise_std.row(t);
    }
  }
  return sub;
}

// Central differences of value() with respect to every entry of x: (f(x + h) − f(x − h)) / 2h.
inline Mat finite_differences(Mat& x, const std::function<double()>& value, double h = 1e-6) {
  Mat d(x.rows(), x.cols());
  for (Index i = 0; i < x.size(); ++i) {
    const double saved = x.data()[i];
    x.data()[i] = saved + h;
    const double plus = value();
    x.data()[i] = saved - h;
    const double minus = value();
    x.data()[i] = saved;
    d.data()[i] = (plus - minus) / (2 * h);
  }
  return d;
}

// ‖a − b‖ / ‖a + b‖ (the gradient-check error of STYLE.md); a and b both zero give 0.
template <class A, class B>
double relative_error(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const auto ad = a.template cast<double>();
  const auto bd = b.template cast<double>();
  const double sum = (ad + bd).norm();
  return sum > 0 ? (ad - bd).norm() / sum : (ad - bd).norm();
}

// The bound on relative_error for an analytic gradient computed in S against one in double.
template <class S>
constexpr double gradient_tolerance() {
  return sizeof(S) == sizeof(float) ? 1e-5 : 1e-6;
}

// Runs f, expecting an exception of type X whose message contains every one of `parts`.
template <class X, class F>
void expect_throw_naming(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown";
  } catch (const X& error) {
    const std::string message = error.what();
    for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message << " lacks " << part;
  } catch (...) {
    ADD_FAILURE() << "an exception of another type was thrown";
  }
}

}  // namespace moe::test::loss
