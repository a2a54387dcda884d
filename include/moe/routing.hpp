// What a gate decides and how the layer acts on it (docs/architecture.md §4).
//
//   RoutingPlan  — per token: which experts (slots [T, k]), with which weights, and the router's
//                  logits and scores [T, E] that backward and the losses need.
//   DispatchPlan — per expert: the contiguous block of dispatch rows it owns (CSR by expert).
#pragma once

#include "moe/detail/aligned_allocator.hpp"
#include "moe/detail/scratch.hpp"
#include "moe/types.hpp"

#include <cstdint>
#include <vector>

namespace moe {

// A slot holds one (token, expert) assignment. kEmptySlot marks a slot with no assignment
// (expert-choice routing leaves most slots empty); a dropped slot keeps its expert and weight
// for statistics and backward but contributes nothing to the output.
inline constexpr std::int32_t kEmptySlot = -1;

template <class S>
struct RoutingPlan {
  IndexMatrix expert;                                          // [T, k]  expert id or kEmptySlot
  RowMatrix<S> weight;                                         // [T, k]  combine weight
  Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> dropped;  // [T, k]
  RowMatrix<S> logits;                                         // [T, E]  router output x·Wgᵀ (+b) (+ noise)
  RowMatrix<S> scores;                                         // [T, E]  softmax or sigmoid of logits
  Index num_experts = 0;

  // Noisy gating (training only): logits = clean + noise ⊙ noise_std, so clean logits are
  // logits − noise ⊙ noise_std. Jitter (training only): the router saw x ⊙ jitter.
  bool noisy = false, jittered = false;
  RowMatrix<S> noise;      // [T, E]        standard-normal draws       (valid when noisy)
  RowMatrix<S> noise_std;  // [T, E]        softplus(x·W_noiseᵀ)        (valid when noisy)
  RowMatrix<S> jitter;     // [T, d_model]  multipliers U(1−ε, 1+ε)     (valid when jittered)
  // The gate's working memory (meaningless outside route()): with the plan, not the gate, so that
  // threads routing into plans of their own can share one gate; kept to avoid allocation.
  // A copy of the plan does not copy it.
  struct Work {
    Vector<S> values, group_values;
    std::vector<std::int32_t> ids;
    std::vector<Index> order, load;
    detail::AlignedVector<S> product;  // the router's
  };
  detail::Scratch<Work> work;

  Index num_tokens() const { return expert.rows(); }
  Index slots_per_token() const { return expert.cols(); }

  // Whether slot (t, j) sends token t to an expert whose output is combined.
  bool active(Index t, Index j) const {
    return expert(t, j) != kEmptySlot && dropped(t, j) == 0;
  }

  // The slots of tokens [first, first + count) of `from` (experts, weights, drops; no logits or
  // scores): the part of a routed batch that one chunk of a forward sends to the experts.
  void assign_slots(const RoutingPlan& from, Index first, Index count) {
    num_experts = from.num_experts;
    expert = from.expert.middleRows(first, count);
    weight = from.weight.middleRows(first, count);
    dropped = from.dropped.middleRows(first, count);
  }

  // Sizes every array for T tokens, k slots and E experts; slots start empty and not dropped.
  void reset(Index num_tokens, Index slots, Index experts) {
    num_experts = experts;
    expert.setConstant(num_tokens, slots, kEmptySlot);
    weight.setZero(num_tokens, slots);
    dropped.setZero(num_tokens, slots);
    logits.resize(num_tokens, experts);
    scores.resize(num_tokens, experts);
    noisy = jittered = false;
  }
};

// Gradients with respect to what a gate produced; the layer and the auxiliary losses add into
// them, the gate's backward consumes them: it maps d_weight and d_scores through its score
// function to the logits, so a loss needs to know only the plan's arrays.
template <class S>
struct RouterGradients {
  RowMatrix<S> d_weight;          // [T, k]  ∂L/∂plan.weight
  RowMatrix<double> d_scores;     // [T, E]  ∂L/∂plan.scores (in double: the losses compute in double)
  RowMatrix<S> d_logits;          // [T, E]  ∂L/∂plan.logits, other than through the scores
  RowMatrix<S> d_noise_std;       // [T, E]  ∂L/∂plan.noise_std (noisy gating only)

  // Zeros of the plan's shapes.
  void reset(const RoutingPlan<S>& plan) {
    d_weight.setZero(plan.num_tokens(), plan.slots_per_token());
    d_scores.setZero(plan.num_tokens(), plan.num_experts);
    d_logits.setZero(plan.num_tokens(), plan.num_experts);
    d_noise_std.setZero(plan.noisy ? plan.num_tokens() : 0, plan.noisy ? plan.num_experts : 0);
  }
};

// Dispatch order: the active assignments sorted by expert (stable: token order, then slot order,
// inside an expert). Expert e owns dispatch rows [offset[e], offset[e + 1]).
struct DispatchPlan {
  std::vector<Index> offset;         // [E + 1]
  std::vector<std::int32_t> token;   // [rows]   token of each dispatch row
  std::vector<std::int32_t> row;     // [T * k]  dispatch row of slot (t, j), or kEmptySlot
  std::vector<Index> cursor;         // [E]      scratch of build_dispatch, kept to avoid allocation

  Index num_rows() const { return static_cast<Index>(token.size()); }
  Index rows_of(Index e) const { return offset[e + 1] - offset[e]; }
};

}  // namespace moe
