// The public gradient checker: check_gradients on functions with hand-written gradients (right and
// wrong), its error formula and restoration of θ; check_expert on a small TrainableExpert written
// here, correct and with deliberate bugs of each kind the contract forbids.
#include <moe/testing/gradient_check.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::testing::check_expert;
using moe::testing::check_gradients;
using moe::testing::GradCheckResult;

// The lines of a log whose first word is `name` (leading spaces ignored).
std::vector<std::string> lines_of(const std::string& log, const std::string& name) {
  std::vector<std::string> lines;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string first;
    if (words >> first && first == name) lines.push_back(line);
  }
  return lines;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---------------------------------------------------------------------------------------------
// check_gradients

// loss = Σ sin(θ)·θ² over two tensors; ∂loss/∂θ = cos(θ)·θ² + 2θ·sin(θ).
struct SinProblem {
  RowMatrix<double> a = moe::test::random_matrix<double>(2, 3, 1) * 2;
  RowMatrix<double> b = moe::test::random_matrix<double>(1, 4, 2) * 2;
  RowMatrix<double> d_a = gradient(a), d_b = gradient(b);

  static RowMatrix<double> gradient(const RowMatrix<double>& t) {
    return (t.array().cos() * t.array().square() + 2 * t.array() * t.array().sin()).matrix();
  }
  static double loss(const RowMatrix<double>& t) { return (t.array().sin() * t.array().square()).sum(); }
  double loss() const { return loss(a) + loss(b); }
  moe::ParameterList<double> params() { return {moe::view("a", a), moe::view("b", b)}; }
  moe::ParameterList<double> grads() { return {moe::view("a", d_a), moe::view("b", d_b)}; }
};

TEST(GradCheckTest, HandWrittenGradientPasses) {
  SinProblem p;
  const GradCheckResult result = check_gradients([&] { return p.loss(); }, p.params(), p.grads());
  EXPECT_TRUE(result.ok) << result.log;
  EXPECT_LT(result.worst_error, 1e-8) << result.log;
  ASSERT_EQ(lines_of(result.log, "a").size(), 1u) << result.log;
  ASSERT_EQ(lines_of(result.log, "b").size(), 1u) << result.log;
  EXPECT_TRUE(contains(lines_of(result.log, "a")[0], "[2 x 3]")) << result.log;
  EXPECT_TRUE(contains(lines_of(result.log, "a")[0], "ok")) << result.log;
  EXPECT_TRUE(contains(lines_of(result.log, "b")[0], "[1 x 4]")) << result.log;
  EXPECT_FALSE(contains(result.log, "FAIL")) << result.log;
}

TEST(GradCheckTest, OneWrongEntryFailsAndTheLogNamesTheTensorAndTheEntry) {
  SinProblem p;
  p.d_b(0, 2) += 0.1;
  const GradCheckResult result = check_gradients([&] { return p.loss(); }, p.params(), p.grads());
  EXPECT_FALSE(result.ok) << result.log;
  EXPECT_GT(result.worst_error, 1e-3);
  EXPECT_TRUE(contains(lines_of(result.log, "a")[0], "ok")) << result.log;
  EXPECT_TRUE(contains(lines_of(result.log, "b")[0], "FAIL")) << result.log;
  // The worst entry comes first under the failing tensor, with both values.
  const auto worst = result.log.substr(result.log.find("FAIL"));
  EXPECT_TRUE(contains(worst, "(0, 2): analytic")) << result.log;
  std::ostringstream numeric;
  numeric << std::setprecision(10) << SinProblem::gradient(p.b)(0, 2);
  EXPECT_TRUE(contains(worst, numeric.str().substr(0, 6))) << result.log;
}

TEST(GradCheckTest, RelativeErrorIsDiffNormOverSumNorm) {
  // A linear loss: central differences are exact up to rounding, so an analytic gradient of
  // 1.1·c gives ‖0.1·c‖ / ‖2.1·c‖ = 1/21.
  RowMatrix<double> theta = moe::test::random_matrix<double>(3, 3, 3), c = moe::test::random_matrix<double>(3, 3, 4);
  RowMatrix<double> analytic = 1.1 * c;
  const auto result = check_gradients([&] { return (c.array() * theta.array()).sum(); }, {moe::view("theta", theta)},
                                      {moe::view("theta", analytic)});
  EXPECT_NEAR(result.worst_error, 1.0 / 21.0, 1e-8);
  EXPECT_FALSE(result.ok);

  using moe::testing::relative_error;
  const std::vector<double> zero{0, 0}, a{1, 2}, minus_a{-1, -2}, n{1, 4};
  EXPECT_EQ(relative_error(zero, zero), 0.0);  // both zero
  EXPECT_EQ(relative_error(a, a), 0.0);
  EXPECT_EQ(relative_error(zero, a), 1.0);
  EXPECT_EQ(relative_error(a, minus_a), std::numeric_limits<double>::infinity());
  EXPECT_DOUBLE_EQ(relative_error(a, n), 2.0 / std::sqrt(4.0 + 36.0));
  EXPECT_TRUE(std::isnan(relative_error(std::vector<double>{std::nan("")}, std::vector<double>{1.0})));

  // A loss that does not depend on θ and a zero gradient: error 0, ok.
  RowMatrix<double> zero_grad = RowMatrix<double>::Zero(3, 3);
  const auto constant =
      check_gradients([] { return 2.5; }, {moe::view("theta", theta)}, {moe::view("theta", zero_grad)});
  EXPECT_TRUE(constant.ok) << constant.log;
  EXPECT_EQ(constant.worst_error, 0.0);
}

TEST(GradCheckTest, CentralDifferencesAtPlusAndMinusStepThenThetaRestoredExactly) {
  SinProblem p;
  const RowMatrix<double> a0 = p.a, b0 = p.b;
  std::vector<double> seen;  // a(0, 0) at every call
  const auto loss = [&] {
    seen.push_back(p.a(0, 0));
    return p.loss();
  };
  const auto result = check_gradients(loss, p.params(), p.grads(), {.step = 1e-5, .tolerance = 1e-6});
  EXPECT_TRUE(result.ok) << result.log;
  EXPECT_EQ(seen.size(), 2u * (6 + 4));  // two evaluations per entry
  EXPECT_EQ(seen[0], a0(0, 0) + 1e-5);
  EXPECT_EQ(seen[1], a0(0, 0) - 1e-5);
  EXPECT_EQ(seen[2], a0(0, 0));  // restored before the next entry
  EXPECT_EQ(p.a, a0);            // bit for bit
  EXPECT_EQ(p.b, b0);
}

TEST(GradCheckTest, ThetaIsRestoredWhenTheLossThrows) {
  SinProblem p;
  const RowMatrix<double> a0 = p.a, b0 = p.b;
  int calls = 0;
  const auto loss = [&] {
    if (++calls == 9) throw std::runtime_error("loss failed");
    return p.loss();
  };
  EXPECT_THROW(check_gradients(loss, p.params(), p.grads()), std::runtime_error);
  EXPECT_EQ(p.a, a0);
  EXPECT_EQ(p.b, b0);
}

TEST(GradCheckTest, OptionsAndShapeErrors) {
  SinProblem p;
  const auto loss = [&] { return p.loss(); };
  // A larger step has a larger truncation error; a zero tolerance fails a nonlinear function.
  const double fine = check_gradients(loss, p.params(), p.grads()).worst_error;
  const double coarse = check_gradients(loss, p.params(), p.grads(), {.step = 1e-2}).worst_error;
  EXPECT_GT(coarse, 100 * fine);
  EXPECT_FALSE(check_gradients(loss, p.params(), p.grads(), {.tolerance = 0}).ok);

  RowMatrix<double> wrong(2, 2);
  EXPECT_THROW((check_gradients(loss, p.params(), {moe::view("a", wrong), moe::view("b", p.d_b)})), moe::shape_error);
  EXPECT_THROW((check_gradients(loss, p.params(), {moe::view("b", p.d_b), moe::view("a", p.d_a)})), moe::shape_error);
  EXPECT_THROW(check_gradients(loss, p.params(), p.grads(), {.step = 0}), moe::config_error);
  EXPECT_THROW(check_gradients(loss, p.params(), p.grads(), {.tolerance = -1}), moe::config_error);
}

// ---------------------------------------------------------------------------------------------
// check_expert

enum class Bug {
  none,
  d_w1,                // forgets tanh' in ∂/∂w1
  d_x,                 // forgets tanh' in d_x
  writes_other_expert, // adds into the next expert's w2 block
  overwrites_grads,    // w2 gradient "=" instead of "+="
  accumulates_d_x,     // d_x "+=" instead of "="
  not_a_bank,          // lists a tensor that is not split by expert
};

// y = tanh(x·W1ᵀ + b1)·W2ᵀ per expert.  w1: [E·f, d]  b1: [E, f]  w2: [E·d, f] (banks by rows).
// forward keeps h = tanh(·) [n, f] in its scratch for backward; backward uses [n, f] of its own.
class TinyMlpExpert {
 public:
  using Scalar = double;
  using Gradients = TinyMlpExpert;

  TinyMlpExpert(Index num_experts, Index d_model, Index d_ff, Bug bug = Bug::none)
      : num_experts_(num_experts), d_(d_model), f_(d_ff), bug_(bug),
        w1_(moe::test::random_matrix<double>(num_experts * d_ff, d_model, 51)),
        b1_(moe::test::random_matrix<double>(num_experts, d_ff, 52)),
        w2_(moe::test::random_matrix<double>(num_experts * d_model, d_ff, 53)),
        scale_(RowMatrix<double>::Constant(1, 1, 1.0)) {}

  // Expert e's blocks (declared before use: their return type is deduced).
  auto w1(Index e) const { return w1_.middleRows(e * f_, f_); }
  auto w1(Index e) { return w1_.middleRows(e * f_, f_); }
  auto w2(Index e) const { return w2_.middleRows(e * d_, d_); }
  auto w2(Index e) { return w2_.middleRows(e * d_, d_); }

  Index num_experts() const { return num_experts_; }
  Index d_model() const { return d_; }
  Index scratch_size(Index n) const { return n * f_; }
  Index backward_scratch_size(Index n) const { return n * f_; }

  void forward(Index e, moe::ConstMatrixRef<double> x, moe::MatrixRef<double> y, std::span<double> scratch) const {
    Eigen::Map<RowMatrix<double>> h(scratch.data(), x.rows(), f_);
    h.noalias() = x * w1(e).transpose();
    h.rowwise() += b1_.row(e);
    h = h.array().tanh().matrix();
    y.noalias() = h * w2(e).transpose();
  }

  void backward(Index e, moe::ConstMatrixRef<double> x, std::span<double> saved, moe::ConstMatrixRef<double> d_y,
                moe::MatrixRef<double> d_x, Gradients& grads, std::span<double> scratch) const {
    const Index n = x.rows();
    const Eigen::Map<const RowMatrix<double>> h(saved.data(), n, f_);
    Eigen::Map<RowMatrix<double>> d_h(scratch.data(), n, f_);
    d_h.noalias() = d_y * w2(e);  // [n, f]
    if (bug_ == Bug::overwrites_grads) {
      grads.w2(e).noalias() = d_y.transpose() * h;
    } else {
      grads.w2(e).noalias() += d_y.transpose() * h;  // [d, f]
    }
    if (bug_ == Bug::writes_other_expert) grads.w2((e + 1) % num_experts_)(0, 0) += 1e-3;
    const RowMatrix<double> d_z = (d_h.array() * (1 - h.array().square())).matrix();  // [n, f]
    grads.w1(e).noalias() += (bug_ == Bug::d_w1 ? RowMatrix<double>(d_h) : d_z).transpose() * x;
    grads.b1_.row(e) += d_z.colwise().sum();
    if (bug_ == Bug::accumulates_d_x) {
      d_x.noalias() += d_z * w1(e);
    } else {
      d_x.noalias() = (bug_ == Bug::d_x ? RowMatrix<double>(d_h) : d_z) * w1(e);
    }
  }

  Gradients make_gradients() const {
    TinyMlpExpert zero = *this;
    zero.w1_.setZero();
    zero.b1_.setZero();
    zero.w2_.setZero();
    zero.scale_.setZero();
    return zero;
  }

  void collect_parameters(const std::string& prefix, moe::ParameterList<double>& list) {
    moe::add_parameter(list, prefix, "w1", w1_);
    moe::add_parameter(list, prefix, "b1", b1_);
    moe::add_parameter(list, prefix, "w2", w2_);
    if (bug_ == Bug::not_a_bank) moe::add_parameter(list, prefix, "scale", scale_);
  }

 private:
  Index num_experts_, d_, f_;
  Bug bug_;
  RowMatrix<double> w1_, b1_, w2_, scale_;
};

static_assert(moe::TrainableExpert<TinyMlpExpert>);

constexpr Index kExperts = 3, kModel = 4, kHidden = 5;

// Every line of the log for tensor `name` over all experts, e.g. "w1[0]", "w1[1]", ...
std::vector<std::string> expert_lines(const std::string& log, const std::string& name) {
  if (name == "x") return lines_of(log, "x");
  std::vector<std::string> lines;
  for (Index e = 0; e < kExperts; ++e) {
    const auto found = lines_of(log, name + "[" + std::to_string(e) + "]");
    lines.insert(lines.end(), found.begin(), found.end());
  }
  return lines;
}

// Expects one line per expert for each tensor, "FAIL" on those of `failing`, "ok" on the others.
void expect_tensor_verdicts(const GradCheckResult& result, const std::vector<std::string>& failing) {
  for (const std::string name : {"x", "w1", "b1", "w2"}) {
    const auto lines = expert_lines(result.log, name);
    EXPECT_EQ(lines.size(), std::size_t(kExperts)) << name << "\n" << result.log;
    const bool fails = std::find(failing.begin(), failing.end(), name) != failing.end();
    for (const auto& line : lines) EXPECT_TRUE(contains(line, fails ? "FAIL" : "ok")) << line << "\n" << result.log;
  }
}

TEST(CheckExpertGradTest, CorrectExpertPasses) {
  const TinyMlpExpert expert(kExperts, kModel, kHidden);
  const GradCheckResult result = check_expert(expert);
  EXPECT_TRUE(result.ok) << result.log;
  EXPECT_LT(result.worst_error, 1e-8) << result.log;
  for (Index e = 0; e < kExperts; ++e) EXPECT_TRUE(contains(result.log, "expert " + std::to_string(e) + ":"));
  expect_tensor_verdicts(result, {});
  EXPECT_TRUE(contains(lines_of(result.log, "w1[2]")[0], "[5 x 4]")) << result.log;  // expert 2's block
  EXPECT_TRUE(contains(lines_of(result.log, "x")[0], "[5 x 4]")) << result.log;      // rows = 5 by default
  EXPECT_FALSE(contains(result.log, "FAIL")) << result.log;

  EXPECT_TRUE(check_expert(expert, /*rows=*/1, /*seed=*/7).ok);
  EXPECT_THROW(check_expert(expert, /*rows=*/0), moe::config_error);
}

TEST(CheckExpertGradTest, WrongWeightGradientFails) {
  const GradCheckResult result = check_expert(TinyMlpExpert(kExperts, kModel, kHidden, Bug::d_w1));
  EXPECT_FALSE(result.ok) << result.log;
  expect_tensor_verdicts(result, {"w1"});
  EXPECT_TRUE(contains(result.log, "analytic")) << result.log;  // worst entries listed
}

TEST(CheckExpertGradTest, WrongInputGradientFails) {
  const GradCheckResult result = check_expert(TinyMlpExpert(kExperts, kModel, kHidden, Bug::d_x));
  EXPECT_FALSE(result.ok) << result.log;
  expect_tensor_verdicts(result, {"x"});
}

TEST(CheckExpertGradTest, GradientOutsideTheExpertsBlockFails) {
  const GradCheckResult result = check_expert(TinyMlpExpert(kExperts, kModel, kHidden, Bug::writes_other_expert));
  EXPECT_FALSE(result.ok) << result.log;
  expect_tensor_verdicts(result, {});  // expert e's own gradients are right
  // Expert 0 writes into expert 1's block of w2, rows [4, 8), on each of the two backward calls.
  EXPECT_TRUE(contains(result.log, "FAIL: w2 (4, 0) = 0.002 is outside expert 0's rows [0, 4)")) << result.log;
}

TEST(CheckExpertGradTest, OverwrittenInsteadOfAccumulatedGradientsFail) {
  const GradCheckResult result = check_expert(TinyMlpExpert(kExperts, kModel, kHidden, Bug::overwrites_grads));
  EXPECT_FALSE(result.ok) << result.log;
  expect_tensor_verdicts(result, {});  // a single backward from zero is right
  const auto doubled = result.log.substr(result.log.find("grads[0] again: accumulated, twice"));
  EXPECT_TRUE(contains(doubled.substr(0, doubled.find('\n')), "FAIL")) << result.log;
}

TEST(CheckExpertGradTest, AccumulatedInsteadOfOverwrittenInputGradientFails) {
  // d_x starts as NaN, so "+=" leaves NaN: the relative error is NaN and the tensor fails.
  const GradCheckResult result = check_expert(TinyMlpExpert(kExperts, kModel, kHidden, Bug::accumulates_d_x));
  EXPECT_FALSE(result.ok) << result.log;
  expect_tensor_verdicts(result, {"x"});
  EXPECT_TRUE(std::isnan(result.worst_error));
}

TEST(CheckExpertGradTest, TensorThatIsNotABankIsReported) {
  const GradCheckResult result = check_expert(TinyMlpExpert(kExperts, kModel, kHidden, Bug::not_a_bank));
  EXPECT_FALSE(result.ok) << result.log;
  EXPECT_TRUE(contains(result.log, "scale [1 x 1]  FAIL: rows = 1 is not a multiple of num_experts() = 3"))
      << result.log;
}

}  // namespace
