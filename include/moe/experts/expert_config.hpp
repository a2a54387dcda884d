// Shape and initialisation of an expert bank, shared by the library's expert types.
#pragma once

#include "moe/errors.hpp"
#include "moe/types.hpp"

#include <cstdint>
#include <span>
#include <string_view>

namespace moe {

// How a bank's parameters start: drawn at random, or zeros for weights about to be loaded (a
// loader then pays for no random draws: most of the load time of a large layer).
enum class Init { uniform, zeros };

struct ExpertConfig {
  Index num_experts = 0;
  Index d_model = 0;
  Index d_ff = 0;            // hidden width; unused by LinearExpert
  bool bias = false;         // biases on every projection (LinearExpert and FfnExpert only)
  std::uint64_t seed = 0;    // uniform: weights ~ U(±1/√fan_in), drawn from Generator(seed)
  Init init = Init::uniform;
};

namespace detail {

inline void check_expert_config(const ExpertConfig& c, std::string_view who, bool needs_d_ff) {
  check_config(c.num_experts >= 1, who, "num_experts = ", c.num_experts, " but must be >= 1");
  check_config(c.d_model >= 1, who, "d_model = ", c.d_model, " but must be >= 1");
  if (needs_d_ff) check_config(c.d_ff >= 1, who, "d_ff = ", c.d_ff, " but must be >= 1");
}

// The shape checks every Expert::forward makes before touching memory.
template <class S>
void check_expert_call(std::string_view who, Index e, Index num_experts, Index d_model,
                       const ConstMatrixRef<S>& x, const MatrixRef<S>& y, Index scratch_needed,
                       std::span<S> scratch) {
  if (e < 0 || e >= num_experts)
    MOE_THROW(shape_error(concat(who, ": expert = ", e, " but num_experts = ", num_experts)));
  check_dim(who, "x.cols()", x.cols(), "d_model", d_model);
  check_dim(who, "y.rows()", y.rows(), "x.rows()", x.rows());
  check_dim(who, "y.cols()", y.cols(), "d_model", d_model);
  if (static_cast<Index>(scratch.size()) < scratch_needed)
    MOE_THROW(shape_error(concat(who, ": scratch.size() = ", scratch.size(),
                                 " but scratch_size(n) = ", scratch_needed)));
}

// The shape checks every TrainableExpert::backward makes before touching memory.
template <class S>
void check_expert_backward(std::string_view who, Index e, Index num_experts, Index d_model,
                           const ConstMatrixRef<S>& x, const ConstMatrixRef<S>& d_y, const MatrixRef<S>& d_x,
                           Index saved_needed, std::span<const S> saved, Index scratch_needed, std::span<S> scratch) {
  if (e < 0 || e >= num_experts)
    MOE_THROW(shape_error(concat(who, ": expert = ", e, " but num_experts = ", num_experts)));
  check_dim(who, "x.cols()", x.cols(), "d_model", d_model);
  check_dim(who, "d_y.rows()", d_y.rows(), "x.rows()", x.rows());
  check_dim(who, "d_y.cols()", d_y.cols(), "d_model", d_model);
  check_dim(who, "d_x.rows()", d_x.rows(), "x.rows()", x.rows());
  check_dim(who, "d_x.cols()", d_x.cols(), "d_model", d_model);
  if (static_cast<Index>(saved.size()) < saved_needed)
    MOE_THROW(shape_error(concat(who, ": saved.size() = ", saved.size(), " but scratch_size(n) = ", saved_needed)));
  if (static_cast<Index>(scratch.size()) < scratch_needed)
    MOE_THROW(shape_error(concat(who, ": scratch.size() = ", scratch.size(),
                                 " but backward_scratch_size(n) = ", scratch_needed)));
}

// Gradients must come from make_gradients() of an expert bank of the same shape.
inline void check_same_shape(std::string_view who, const ExpertConfig& expert, const ExpertConfig& grads) {
  check_dim(who, "grads.num_experts()", grads.num_experts, "num_experts", expert.num_experts);
  check_dim(who, "grads.d_model()", grads.d_model, "d_model", expert.d_model);
  check_dim(who, "grads.d_ff()", grads.d_ff, "d_ff", expert.d_ff);
  if (grads.bias != expert.bias)
    MOE_THROW(shape_error(concat(who, ": grads.bias = ", grads.bias, " but bias = ", expert.bias)));
}

}  // namespace detail
}  // namespace moe
