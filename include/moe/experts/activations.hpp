// Elementwise activations of the expert hidden layer. Each is a policy type with
//   apply(a): the activation of an Eigen array expression (vectorised where Eigen can), and
//   name:     how it is spelled in configs and messages.
// Formulas follow torch.nn.functional (relu, gelu, gelu(approximate="tanh"), silu).
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <numbers>

namespace moe {

struct Relu {
  static constexpr const char* name = "relu";
  template <class A>
  static auto apply(const Eigen::ArrayBase<A>& a) {
    return a.cwiseMax(typename A::Scalar(0));
  }
};

// GELU, exact form: x · Φ(x) = x/2 · (1 + erf(x/√2)).
struct Gelu {
  static constexpr const char* name = "gelu";
  template <class A>
  static auto apply(const Eigen::ArrayBase<A>& a) {
    using S = typename A::Scalar;
    return a.unaryExpr([](S x) { return S(0.5) * x * (S(1) + std::erf(x * S(std::numbers::sqrt2 / 2))); });
  }
};

// GELU, tanh approximation: x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³))).
struct GeluTanh {
  static constexpr const char* name = "gelu_tanh";
  template <class A>
  static auto apply(const Eigen::ArrayBase<A>& a) {
    using S = typename A::Scalar;
    const S c = S(std::numbers::sqrt2 * std::numbers::inv_sqrtpi);  // √(2/π)
    return S(0.5) * a * (S(1) + (c * (a + S(0.044715) * a.cube())).tanh());
  }
};

// SiLU (swish): x · σ(x) = x / (1 + e^{-x}).
struct Silu {
  static constexpr const char* name = "silu";
  template <class A>
  static auto apply(const Eigen::ArrayBase<A>& a) {
    using S = typename A::Scalar;
    return a / (S(1) + (-a).exp());
  }
};

}  // namespace moe
