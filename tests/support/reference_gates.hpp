// Plain per-token references for the gates, written from the papers and from the formulas the
// headers document, not from the library's code: explicit loops in double, and every selection is
// a std::stable_sort of indices by value, descending, so equal values keep the lower index first.
// The gates are read only for their configuration and parameters.
//
//   logits[t, e]  = Σ_i x[t, i]·W[e, i] (+ b[e])                       W: router().weight() [E, d_model]
//   scores[t]     = softmax(logits[t]) or σ(logits[t])
//   choice[t, e]  = scores[t, e] (logits[t, e] for softmax_selected) (+ selection_bias[e])
//   groups        = n_group blocks of E / n_group experts; a group's value is the sum of its two best
//                   choices (top2_sum) or its best (max); all but the topk_group best groups → −inf
//   experts       = the top_k best choices
//   weights       = the unbiased scores of the chosen experts, / their sum if normalize (+1e-20 for
//                   sigmoid, as HF DeepSeek-V3), or softmax over the chosen logits (softmax_selected);
//                   then × scale
//   capacity      = max(min_capacity, ceil(factor·T·k / E)); slots beyond it are dropped in priority
//                   order: token_order (all first choices in token order, then all second choices, ...)
//                   or highest_score (by weight, equal weights in token_order priority)
#pragma once

#include <moe/gating/capacity.hpp>
#include <moe/gating/dense_gate.hpp>
#include <moe/gating/expert_choice_gate.hpp>
#include <moe/gating/top_k_gate.hpp>
#include <moe/routing.hpp>
#include <moe/types.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

namespace moe::test::ref {

using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Row = std::vector<double>;

// What a gate should have produced, in double.
struct Routing {
  IndexMatrix expert;   // [T, slots]  expert id or kEmptySlot
  Mat weight;           // [T, slots]  0 in an empty slot
  IndexMatrix dropped;  // [T, slots]  0 or 1
  Mat logits;           // [T, E]
  Mat scores;           // [T, E]
  Index num_experts = 0;

  void reset(Index T, Index slots, Index E) {
    num_experts = E;
    expert.setConstant(T, slots, kEmptySlot);
    weight.setZero(T, slots);
    dropped.setZero(T, slots);
    logits.setZero(T, E);
    scores.setZero(T, E);
  }
};

template <class Derived>
Mat to_double(const Eigen::MatrixBase<Derived>& m) {
  Mat out(m.rows(), m.cols());
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) out(i, j) = static_cast<double>(m(i, j));
  return out;
}

template <class S>
Row to_row(const Vector<S>& v) {
  Row out(static_cast<std::size_t>(v.size()));
  for (Index i = 0; i < v.size(); ++i) out[static_cast<std::size_t>(i)] = static_cast<double>(v[i]);
  return out;
}

// logits[t, e] = Σ_i x[t, i]·W[e, i] + bias[e]   (bias empty: none)
inline Mat router_logits(const Mat& x, const Mat& weight, const Row& bias) {
  const Index T = x.rows(), E = weight.rows(), d = weight.cols();
  Mat logits(T, E);
  for (Index t = 0; t < T; ++t)
    for (Index e = 0; e < E; ++e) {
      double dot = 0;
      for (Index i = 0; i < d; ++i) dot += x(t, i) * weight(e, i);
      logits(t, e) = dot + (bias.empty() ? 0.0 : bias[static_cast<std::size_t>(e)]);
    }
  return logits;
}

inline Row softmax(const Row& z) {
  double max = -std::numeric_limits<double>::infinity();
  for (const double v : z) max = std::max(max, v);
  Row p(z.size());
  double sum = 0;
  for (std::size_t i = 0; i < z.size(); ++i) sum += (p[i] = std::exp(z[i] - max));
  for (double& v : p) v /= sum;
  return p;
}

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// Indices of `values` from the largest value to the smallest; equal values: lower index first.
inline std::vector<int> ranked(const Row& values) {
  std::vector<int> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return values[a] > values[b]; });
  return order;
}

inline Row row_of(const Mat& m, Index t) {
  Row r(static_cast<std::size_t>(m.cols()));
  for (Index e = 0; e < m.cols(); ++e) r[static_cast<std::size_t>(e)] = m(t, e);
  return r;
}

// C = max(min_capacity, ceil(factor·T·k / E)); T·k without a factor (dropless).
inline Index capacity(const Capacity& c, Index T, Index k, Index E) {
  if (!c.factor) return T * k;
  const double ideal = *c.factor * static_cast<double>(T) * static_cast<double>(k) / static_cast<double>(E);
  return std::max(c.min_capacity, static_cast<Index>(std::ceil(ideal)));
}

// Marks r.dropped for every filled slot past its expert's capacity C, in the policy's priority order.
inline void apply_capacity(Routing& r, Index C, DropPolicy policy) {
  const Index T = r.expert.rows(), k = r.expert.cols();
  struct Slot {
    Index t, j;
  };
  std::vector<Slot> slots;
  for (Index j = 0; j < k; ++j)
    for (Index t = 0; t < T; ++t)
      if (r.expert(t, j) != kEmptySlot) slots.push_back({t, j});
  if (policy == DropPolicy::highest_score)
    std::stable_sort(slots.begin(), slots.end(),
                     [&](const Slot& a, const Slot& b) { return r.weight(a.t, a.j) > r.weight(b.t, b.j); });
  std::vector<Index> taken(static_cast<std::size_t>(r.num_experts), 0);
  r.dropped.setZero(T, k);
  for (const Slot& s : slots) {
    Index& n = taken[static_cast<std::size_t>(r.expert(s.t, s.j))];
    if (n == C)
      r.dropped(s.t, s.j) = 1;
    else
      ++n;
  }
}

// The experts that remain selectable after group-limited routing: choice with every expert outside
// the topk_group best groups set to −inf.
inline Row limit_groups(Row choice, Index n_group, Index topk_group, GroupScore how) {
  const std::size_t size = choice.size() / static_cast<std::size_t>(n_group);
  Row group_value(static_cast<std::size_t>(n_group));
  for (std::size_t g = 0; g < group_value.size(); ++g) {
    Row members(choice.begin() + static_cast<std::ptrdiff_t>(g * size),
                choice.begin() + static_cast<std::ptrdiff_t>((g + 1) * size));
    std::sort(members.begin(), members.end(), std::greater<>());
    group_value[g] = how == GroupScore::max || size == 1 ? members[0] : members[0] + members[1];
  }
  const std::vector<int> best = ranked(group_value);
  for (std::size_t i = static_cast<std::size_t>(topk_group); i < best.size(); ++i)
    for (std::size_t e = 0; e < size; ++e)
      choice[static_cast<std::size_t>(best[i]) * size + e] = -std::numeric_limits<double>::infinity();
  return choice;
}

// What TopKGate::route(x, plan, Mode::inference) should produce, from the gate's config and parameters.
template <class S>
Routing top_k_gate(const TopKGate<S>& gate, const RowMatrix<S>& x) {
  const TopKGateConfig& c = gate.config();
  const Index T = x.rows(), E = c.num_experts, k = c.top_k;
  Routing r;
  r.reset(T, k, E);
  const Row bias = gate.router().has_bias() ? to_row(gate.router().bias()) : Row{};
  const Row selection_bias = c.selection_bias ? to_row(gate.selection_bias()) : Row(E, 0.0);
  r.logits = router_logits(to_double(x), to_double(gate.router().weight()), bias);
  for (Index t = 0; t < T; ++t) {
    const Row z = row_of(r.logits, t);
    Row s(z.size());
    if (c.scoring == Scoring::sigmoid)
      for (std::size_t e = 0; e < z.size(); ++e) s[e] = sigmoid(z[e]);
    else
      s = softmax(z);
    Row choice(z.size());
    for (std::size_t e = 0; e < z.size(); ++e)
      choice[e] = (c.scoring == Scoring::softmax_selected ? z[e] : s[e]) + selection_bias[e];
    if (c.n_group > 1) choice = limit_groups(choice, c.n_group, c.topk_group, c.group_score);
    const std::vector<int> order = ranked(choice);

    Row w(static_cast<std::size_t>(k));
    if (c.scoring == Scoring::softmax_selected) {
      Row chosen_logits(static_cast<std::size_t>(k));
      for (Index j = 0; j < k; ++j) chosen_logits[static_cast<std::size_t>(j)] = z[order[j]];
      w = softmax(chosen_logits);
    } else {
      double sum = 0;
      for (Index j = 0; j < k; ++j) sum += (w[static_cast<std::size_t>(j)] = s[order[j]]);
      if (c.normalize)
        for (double& v : w) v /= c.scoring == Scoring::sigmoid ? sum + 1e-20 : sum;
    }
    for (Index j = 0; j < k; ++j) {
      r.expert(t, j) = order[j];
      r.weight(t, j) = w[static_cast<std::size_t>(j)] * c.scale;
    }
    for (Index e = 0; e < E; ++e) r.scores(t, e) = s[static_cast<std::size_t>(e)];
  }
  if (c.capacity.factor) apply_capacity(r, capacity(c.capacity, T, k, E), c.capacity.policy);
  return r;
}

// DenseGate: slot j is expert j with weight softmax(logits)[j].
template <class S>
Routing dense_gate(const DenseGate<S>& gate, const RowMatrix<S>& x) {
  const Index T = x.rows(), E = gate.num_experts();
  Routing r;
  r.reset(T, E, E);
  const Row bias = gate.router().has_bias() ? to_row(gate.router().bias()) : Row{};
  r.logits = router_logits(to_double(x), to_double(gate.router().weight()), bias);
  for (Index t = 0; t < T; ++t) {
    const Row p = softmax(row_of(r.logits, t));
    for (Index e = 0; e < E; ++e) {
      r.scores(t, e) = r.weight(t, e) = p[static_cast<std::size_t>(e)];
      r.expert(t, e) = static_cast<std::int32_t>(e);
    }
  }
  return r;
}

// ExpertChoiceGate: expert e takes the C = min(T, ceil(cf·T / E)) tokens with the highest score for e
// (equal scores: lower token); slot e of a taken token holds e with weight = its score.
template <class S>
Routing expert_choice_gate(const ExpertChoiceGate<S>& gate, const RowMatrix<S>& x) {
  const Index T = x.rows(), E = gate.num_experts();
  Routing r;
  r.reset(T, E, E);
  const Row bias = gate.router().has_bias() ? to_row(gate.router().bias()) : Row{};
  r.logits = router_logits(to_double(x), to_double(gate.router().weight()), bias);
  for (Index t = 0; t < T; ++t) {
    const Row p = softmax(row_of(r.logits, t));
    for (Index e = 0; e < E; ++e) r.scores(t, e) = p[static_cast<std::size_t>(e)];
  }
  const double ideal = gate.config().capacity_factor * static_cast<double>(T) / static_cast<double>(E);
  const Index C = std::min(T, static_cast<Index>(std::ceil(ideal)));
  for (Index e = 0; e < E; ++e) {
    Row column(static_cast<std::size_t>(T));
    for (Index t = 0; t < T; ++t) column[static_cast<std::size_t>(t)] = r.scores(t, e);
    const std::vector<int> order = ranked(column);
    for (Index i = 0; i < C; ++i) {
      r.expert(order[i], e) = static_cast<std::int32_t>(e);
      r.weight(order[i], e) = r.scores(order[i], e);
    }
  }
  return r;
}

// EXPECTs that a plan equals the reference: sizes, expert ids and drop marks exactly; weights,
// logits and scores within tolerance<S>() of normalised error.
template <class S>
void expect_plan_matches(const RoutingPlan<S>& plan, const Routing& expected) {
  EXPECT_EQ(plan.num_experts, expected.num_experts);
  ASSERT_EQ(plan.expert.rows(), expected.expert.rows()) << "num_tokens";
  ASSERT_EQ(plan.expert.cols(), expected.expert.cols()) << "slots_per_token";
  ASSERT_EQ(plan.weight.rows(), expected.weight.rows());
  ASSERT_EQ(plan.weight.cols(), expected.weight.cols());
  ASSERT_EQ(plan.dropped.rows(), expected.dropped.rows());
  ASSERT_EQ(plan.dropped.cols(), expected.dropped.cols());
  ASSERT_EQ(plan.logits.rows(), expected.logits.rows());
  ASSERT_EQ(plan.logits.cols(), expected.logits.cols());
  ASSERT_EQ(plan.scores.rows(), expected.scores.rows());
  ASSERT_EQ(plan.scores.cols(), expected.scores.cols());
  EXPECT_TRUE(plan.expert == expected.expert) << "expert ids\n"
                                              << plan.expert << "\nexpected\n"
                                              << expected.expert;
  EXPECT_TRUE(plan.dropped.template cast<std::int32_t>() == expected.dropped)
      << "dropped\n" << plan.dropped.template cast<int>() << "\nexpected\n" << expected.dropped;
  MOE_EXPECT_CLOSE(S, plan.weight, expected.weight);
  MOE_EXPECT_CLOSE(S, plan.logits, expected.logits);
  MOE_EXPECT_CLOSE(S, plan.scores, expected.scores);
}

}  // namespace moe::test::ref

namespace moe::test {

// EXPECTs that call() throws Error (a std::invalid_argument for the library's own errors) with a
// message containing every one of `parts` (the origin, the quantity and both numbers).
template <class Error, class Call>
void expect_throws_with(Call&& call, std::initializer_list<std::string> parts) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected one mentioning \"" << *parts.begin() << '"';
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "\"" << part << "\" not in: " << message;
  }
}

}  // namespace moe::test
