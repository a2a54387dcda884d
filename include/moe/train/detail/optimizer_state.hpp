// What the optimizers share: the per-tensor buffers they keep between steps, and the checks a
// step makes before it changes anything (so that a throwing step leaves parameters and state as
// they were).
#pragma once

#include "moe/errors.hpp"
#include "moe/parameters.hpp"

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::detail {

// Buffers (momentum, first and second moments, ...) made on an optimizer's first step with the
// names and shapes of its parameters, `slots` zero-filled [rows, cols] matrices per tensor.
template <class S>
class OptimizerState {
 public:
  bool empty() const { return !bound_; }

  // Throws shape_error unless the state is empty or was made for these names and shapes, in order.
  void check(const ParameterList<S>& params, std::string_view who) const {
    if (!bound_) return;
    check_dim(who, "params.size()", static_cast<Index>(params.size()), "tensors in the optimizer state",
              static_cast<Index>(names_.size()));
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (params[i].name != names_[i])
        MOE_THROW(shape_error(concat(who, ": params[", i, "] is '", params[i].name,
                                     "' but the optimizer state was made for '", names_[i], "'")));
      check_dim(who, params[i].name + " rows", params[i].rows, "rows in the optimizer state", shapes_[i].first);
      check_dim(who, params[i].name + " cols", params[i].cols, "cols in the optimizer state", shapes_[i].second);
    }
  }

  // Makes the buffers on the first call; later calls do nothing (check() them first).
  void bind(const ParameterList<S>& params, int slots) {
    if (bound_) return;
    slots_ = slots;
    for (const auto& p : params) {
      names_.push_back(p.name);
      shapes_.emplace_back(p.rows, p.cols);
      for (int k = 0; k < slots; ++k) buffers_.push_back(RowMatrix<S>::Zero(p.rows, p.cols));
    }
    bound_ = true;
  }

  // Buffer `slot` of tensor `tensor`, [rows, cols] of that tensor.
  RowMatrix<S>& buffer(std::size_t tensor, int slot) { return buffers_[tensor * slots_ + slot]; }
  const RowMatrix<S>& buffer(std::size_t tensor, int slot) const { return buffers_[tensor * slots_ + slot]; }

 private:
  bool bound_ = false;
  int slots_ = 0;
  std::vector<std::string> names_;
  std::vector<std::pair<Index, Index>> shapes_;
  std::vector<RowMatrix<S>> buffers_;
};

// Throws std::domain_error naming the tensor and the entry if a gradient is NaN or infinite.
template <class S>
void check_finite_gradients(const ParameterList<S>& grads, std::string_view who) {
  for (const auto& g : grads) {
    const auto values = g.values();
    for (std::size_t i = 0; i < values.size(); ++i)
      if (!std::isfinite(values[i])) {
        const Index row = g.cols > 0 ? static_cast<Index>(i) / g.cols : 0;
        const Index col = g.cols > 0 ? static_cast<Index>(i) % g.cols : 0;
        MOE_THROW(std::domain_error(concat(who, ": gradient of '", g.name, "' is ", values[i], " at (", row,
                                           ", ", col, "); no parameter was changed")));
      }
  }
}

// Throws config_error "who: name = value but must be ..." unless value is finite and within range.
inline void check_positive(double value, std::string_view who, std::string_view name) {
  check_config(std::isfinite(value) && value > 0, who, name, " = ", value, " but must be > 0");
}
inline void check_non_negative(double value, std::string_view who, std::string_view name) {
  check_config(std::isfinite(value) && value >= 0, who, name, " = ", value, " but must be >= 0");
}

}  // namespace moe::detail
