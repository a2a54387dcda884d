// Plain per-token reference experts, written from the formulas and not from the library's code:
// one token at a time, one dot product per output, everything in double. Weights are read through
// the library's ParamBank accessors ([out, in] row-major, torch.nn.Linear layout), so a test can
// compare an expert's forward with the formula it claims to implement.
#pragma once

#include <moe/experts/activations.hpp>
#include <moe/experts/ffn.hpp>
#include <moe/experts/gated.hpp>
#include <moe/experts/linear.hpp>
#include <moe/param_bank.hpp>
#include <moe/types.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace moe::test::reference {

// ---- activations, scalar, from their definitions ----------------------------------------------

inline double relu(double x) { return x > 0.0 ? x : 0.0; }

// x · Φ(x) = x/2 · (1 + erf(x/√2))
inline double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

// x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))
inline double gelu_tanh(double x) {
  const double pi = 3.14159265358979323846;
  const double c = std::sqrt(2.0 / pi);
  return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
}

// x · σ(x) = x / (1 + e^{-x})
inline double silu(double x) { return x / (1.0 + std::exp(-x)); }

// The reference function for each of the library's activation policies.
template <class Activation>
struct ActivationOf;
template <>
struct ActivationOf<Relu> {
  static double apply(double x) { return relu(x); }
};
template <>
struct ActivationOf<Gelu> {
  static double apply(double x) { return gelu(x); }
};
template <>
struct ActivationOf<GeluTanh> {
  static double apply(double x) { return gelu_tanh(x); }
};
template <>
struct ActivationOf<Silu> {
  static double apply(double x) { return silu(x); }
};

// ---- building blocks -----------------------------------------------------------------------------

// One token of x as doubles.
template <class Derived>
std::vector<double> token(const Eigen::MatrixBase<Derived>& x, Index t) {
  std::vector<double> v(static_cast<std::size_t>(x.cols()));
  for (Index j = 0; j < x.cols(); ++j) v[static_cast<std::size_t>(j)] = static_cast<double>(x(t, j));
  return v;
}

// out[i] = Σ_j w[e](i, j) · in[j]  (+ b[e](0, i) when bias is non-empty); w is [out, in].
template <class S>
std::vector<double> linear(const ParamBank<S>& w, const ParamBank<S>& b, Index e,
                           const std::vector<double>& in) {
  const Index out_features = w.rows(), in_features = w.cols();
  std::vector<double> out(static_cast<std::size_t>(out_features));
  for (Index i = 0; i < out_features; ++i) {
    double sum = 0.0;
    for (Index j = 0; j < in_features; ++j)
      sum += static_cast<double>(w[e](i, j)) * in[static_cast<std::size_t>(j)];
    if (!b.empty()) sum += static_cast<double>(b[e](0, i));
    out[static_cast<std::size_t>(i)] = sum;
  }
  return out;
}

template <class S>
std::vector<double> linear(const ParamBank<S>& w, Index e, const std::vector<double>& in) {
  return linear(w, ParamBank<S>(), e, in);
}

inline void set_row(RowMatrix<double>& y, Index t, const std::vector<double>& v) {
  for (Index j = 0; j < y.cols(); ++j) y(t, j) = v[static_cast<std::size_t>(j)];
}

// ---- experts -------------------------------------------------------------------------------------

// y[t] = W_e · x[t] (+ b_e)
template <class S, class Derived>
RowMatrix<double> linear_expert(const LinearExpert<S>& expert, Index e,
                                const Eigen::MatrixBase<Derived>& x) {
  RowMatrix<double> y(x.rows(), expert.d_model());
  for (Index t = 0; t < x.rows(); ++t)
    set_row(y, t, linear(expert.weight(), expert.bias(), e, token(x, t)));
  return y;
}

// y[t] = W2_e · act(W1_e · x[t] (+ b1_e)) (+ b2_e)
template <class S, class Activation, class Derived>
RowMatrix<double> ffn_expert(const FfnExpert<S, Activation>& expert, Index e,
                             const Eigen::MatrixBase<Derived>& x) {
  RowMatrix<double> y(x.rows(), expert.d_model());
  for (Index t = 0; t < x.rows(); ++t) {
    std::vector<double> h = linear(expert.w1(), expert.b1(), e, token(x, t));
    for (double& v : h) v = ActivationOf<Activation>::apply(v);
    set_row(y, t, linear(expert.w2(), expert.b2(), e, h));
  }
  return y;
}

// y[t] = W2_e · (act(W1_e · x[t]) ⊙ (W3_e · x[t]))
template <class S, class Activation, class Derived>
RowMatrix<double> gated_expert(const GatedExpert<S, Activation>& expert, Index e,
                               const Eigen::MatrixBase<Derived>& x) {
  RowMatrix<double> y(x.rows(), expert.d_model());
  for (Index t = 0; t < x.rows(); ++t) {
    const std::vector<double> in = token(x, t);
    std::vector<double> gate = linear(expert.w1(), e, in);
    const std::vector<double> up = linear(expert.w3(), e, in);
    for (std::size_t i = 0; i < gate.size(); ++i) gate[i] = ActivationOf<Activation>::apply(gate[i]) * up[i];
    set_row(y, t, linear(expert.w2(), e, gate));
  }
  return y;
}

}  // namespace moe::test::reference

namespace moe::test {

// EXPECTs that call() throws Error with a message containing every one of `parts`
// (the function's name and both numbers, docs/architecture.md §9).
template <class Error, class Call>
void expect_throw_containing(Call&& call, std::initializer_list<std::string_view> parts) {
  try {
    call();
    ADD_FAILURE() << "expected an exception, none was thrown";
  } catch (const Error& error) {
    const std::string message = error.what();
    for (std::string_view part : parts)
      EXPECT_NE(message.find(part), std::string::npos)
          << "message \"" << message << "\" does not contain \"" << part << "\"";
  } catch (const std::exception& other) {
    ADD_FAILURE() << "threw the wrong exception type: " << other.what();
  }
}

}  // namespace moe::test
