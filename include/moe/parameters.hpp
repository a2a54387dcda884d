// Parameter and gradient views: what optimizers, clipping and checkpoints iterate over.
//
// Every trainable part lists its tensors as (name, view) pairs in a fixed order; the gradient
// object of a part lists the same names in the same order with the same shapes, so an optimizer
// walks the two lists side by side. A view does not own its memory: it stays valid as long as the
// part it came from is alive and not resized.
//
//   for (auto& p : layer.parameters()) std::cout << p.name << " " << p.rows << "x" << p.cols << "\n";
#pragma once

#include "moe/errors.hpp"
#include "moe/param_bank.hpp"
#include "moe/types.hpp"

#include <cmath>
#include <span>
#include <string>
#include <vector>

namespace moe {

template <class S>
struct ParameterView {
  std::string name;  // e.g. "gate.weight", "experts.w1" (a bank: [E·rows, cols])
  S* data = nullptr;
  Index rows = 0, cols = 0;

  Index size() const { return rows * cols; }
  std::span<S> values() const { return {data, static_cast<std::size_t>(size())}; }
  Eigen::Map<RowMatrix<S>> matrix() const { return {data, rows, cols}; }
};

template <class S>
using ParameterList = std::vector<ParameterView<S>>;

template <class S>
ParameterView<S> view(std::string name, RowMatrix<S>& m) {
  return {std::move(name), m.data(), m.rows(), m.cols()};
}
template <class S>
ParameterView<S> view(std::string name, Vector<S>& v) {
  return {std::move(name), v.data(), 1, v.size()};
}
template <class S>
ParameterView<S> view(std::string name, ParamBank<S>& bank) {
  return {std::move(name), bank.all().data(), bank.num_experts() * bank.rows(), bank.cols()};
}

// Adds view(prefix + name, tensor) to out unless the tensor is empty (an absent optional bias).
template <class S, class Tensor>
void add_parameter(ParameterList<S>& out, const std::string& prefix, const char* name, Tensor& tensor) {
  if (tensor.size() > 0) out.push_back(view(prefix + name, tensor));
}

// Throws shape_error unless grads lists the same names and shapes as params, in order.
template <class S>
void check_matching(const ParameterList<S>& params, const ParameterList<S>& grads, std::string_view who) {
  detail::check_dim(who, "grads.size()", static_cast<Index>(grads.size()), "params.size()",
                    static_cast<Index>(params.size()));
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (grads[i].name != params[i].name)
      MOE_THROW(shape_error(detail::concat(who, ": grads[", i, "] is '", grads[i].name, "' but params[", i,
                                           "] is '", params[i].name, "'")));
    detail::check_dim(who, grads[i].name + " rows", grads[i].rows, "parameter rows", params[i].rows);
    detail::check_dim(who, grads[i].name + " cols", grads[i].cols, "parameter cols", params[i].cols);
  }
}

// Sets every tensor of the list to zero (between optimizer steps: gradients accumulate).
template <class S>
void zero(const ParameterList<S>& tensors) {
  for (const auto& t : tensors) t.matrix().setZero();
}

// √(Σ over all tensors of Σ x²), accumulated in double in list order.
template <class S>
double global_norm(const ParameterList<S>& tensors) {
  double sum = 0;
  for (const auto& t : tensors)
    for (const S v : t.values()) sum += double(v) * double(v);
  return std::sqrt(sum);
}

// Scales all gradients by max_norm / norm when their global norm exceeds max_norm
// (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.
template <class S>
double clip_grad_norm(const ParameterList<S>& grads, double max_norm) {
  detail::check_config(max_norm > 0, "clip_grad_norm", "max_norm = ", max_norm, " but must be > 0");
  const double norm = global_norm(grads);
  if (norm > max_norm) {
    const S factor = S(max_norm / (norm + 1e-6));
    for (const auto& t : grads) t.matrix() *= factor;
  }
  return norm;
}

}  // namespace moe
