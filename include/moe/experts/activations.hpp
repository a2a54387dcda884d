// Elementwise activations of the expert hidden layer. Each is a policy type with
//   apply(a):      the activation of an Eigen array expression (vectorised where Eigen can),
//   derivative(a): its derivative at a, for backward (vectorised too where Eigen can), and
//   name:          how it is spelled in configs and messages.
// Formulas follow torch.nn.functional (relu, gelu, gelu(approximate="tanh"), silu).
#pragma once

#include "moe/kernels/blocking.hpp"
#include "moe/types.hpp"

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>  // ArrayBase::erf (vectorised for float)

#include <algorithm>
#include <cmath>
#include <numbers>

namespace moe {

struct Relu {
  static constexpr const char* name = "relu";
  template <class A>
  static auto apply(const Eigen::ArrayBase<A>& a) {
    return a.cwiseMax(typename A::Scalar(0));
  }
  // 1 for a > 0, else 0 (torch's choice at 0).
  template <class A>
  static auto derivative(const Eigen::ArrayBase<A>& a) {
    using S = typename A::Scalar;
    return (a > S(0)).template cast<S>();
  }
};

// GELU, exact form: x · Φ(x) = x/2 · (1 + erf(x/√2)). Eigen's erf is vectorised for float, a
// rational approximation: GELU within 2e-6 of the exact value over [-12, 12]
// (tests/experts/activations_test.cpp), where a scalar std::erf per element would be a large part
// of a GELU layer's forward (benchmarks/README.md); for double it calls std::erf.
struct Gelu {
  static constexpr const char* name = "gelu";
  template <class A>
  static auto apply(const Eigen::ArrayBase<A>& a) {
    using S = typename A::Scalar;
    return S(0.5) * a * (S(1) + (a * S(std::numbers::sqrt2 / 2)).erf());
  }
  // Φ(x) + x·φ(x), φ the standard normal density.
  template <class A>
  static auto derivative(const Eigen::ArrayBase<A>& a) {
    using S = typename A::Scalar;
    return S(0.5) * (S(1) + (a * S(std::numbers::sqrt2 / 2)).erf()) +
           S(std::numbers::inv_sqrtpi / std::numbers::sqrt2) * a * (S(-0.5) * a.square()).exp();
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
  // With t = tanh(u), u = c·(x + 0.044715 x³):  (1 + t)/2 + x/2 · (1 − t²) · c · (1 + 3·0.044715 x²).
  template <class A>
  static auto derivative(const Eigen::ArrayBase<A>& a) {
    using S = typename A::Scalar;
    const S c = S(std::numbers::sqrt2 * std::numbers::inv_sqrtpi);
    const auto t = (c * (a + S(0.044715) * a.cube())).tanh();
    return S(0.5) * (S(1) + t) + S(0.5) * c * a * (S(1) - t.square()) * (S(1) + S(3 * 0.044715) * a.square());
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
  // σ(x) · (1 + x · (1 − σ(x))).
  template <class A>
  static auto derivative(const Eigen::ArrayBase<A>& a) {
    using S = typename A::Scalar;
    const auto sigma = (S(1) + (-a).exp()).inverse();
    return sigma * (S(1) + a * (S(1) - sigma));
  }
};

// out[i] = fn(in[i]...) for i < n, with fn an expression of Eigen arrays (an activation, its
// derivative, a product with one): every element is evaluated by the same vectorised code. Eigen
// evaluates the unaligned head and the tail of a dynamic-size array with its scalar functions
// (std::exp, std::erf) and the rest with its packet ones, which differ in the last bits, so an
// element's result would depend on where its buffer sits — in per-thread scratch, on the thread.
// Here every chunk of a packet is a fixed-size array (evaluated as one packet, aligned or not),
// and the last partial chunk a zero-padded copy. out may be one of the inputs.
template <class S, class Fn, class... In>
void elementwise(Index n, S* out, Fn&& fn, const In*... in) {
  constexpr int P = kernels::Blocking<S>::kPacket;
  using Chunk = Eigen::Array<S, P, 1>;
  const Index whole = n / P * P;
  for (Index i = 0; i < whole; i += P) Eigen::Map<Chunk>(out + i) = fn(Eigen::Map<const Chunk>(in + i)...);
  if (whole == n) return;
  const auto padded = [&](const S* from) {
    Chunk chunk = Chunk::Zero();
    std::copy_n(from + whole, n - whole, chunk.data());
    return chunk;
  };
  const Chunk tail = fn(padded(in)...);
  std::copy_n(tail.data(), n - whole, out + whole);
}

}  // namespace moe
