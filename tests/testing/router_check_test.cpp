// The public checkers of a gate and of an auxiliary loss: check_gate and check_aux_loss pass on the
// library's gates and losses, and fail, naming the tensor or the contract, on a small gate and a
// small loss written here with deliberate bugs of each kind their contracts forbid; check_gate
// reports a finite-difference step that changes the selection.
#include <moe/gating/dense_gate.hpp>
#include <moe/gating/top_k_gate.hpp>
#include <moe/loss/importance_load.hpp>
#include <moe/loss/load_balancing.hpp>
#include <moe/loss/router_z_loss.hpp>
#include <moe/testing/router_check.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <sstream>
#include <string>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::Mode;
using moe::RowMatrix;
using moe::testing::check_aux_loss;
using moe::testing::check_gate;
using moe::testing::GradCheckResult;

constexpr Index kTokens = 7, kModel = 5, kExperts = 4;

// The line of a log that starts with `label` (leading spaces ignored), or "" if there is none.
std::string line_of(const std::string& log, const std::string& label) {
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);)
    if (line.find_first_not_of(' ') != std::string::npos && line.substr(line.find_first_not_of(' ')).starts_with(label))
      return line;
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Expects a line starting with each label, "ok" on those not in `failing`, "FAIL" on the others.
void expect_verdicts(const GradCheckResult& result, const std::vector<std::string>& labels,
                     const std::vector<std::string>& failing) {
  for (const auto& label : labels) {
    const std::string line = line_of(result.log, label);
    const bool fails = std::find(failing.begin(), failing.end(), label) != failing.end();
    EXPECT_TRUE(contains(line, fails ? "FAIL" : "  ok")) << label << "\n" << result.log;
  }
}

// ---------------------------------------------------------------------------------------------
// check_gate

enum class GateBug {
  none,
  bias_gradient,        // d_b twice too large
  overwrites_d_x,       // d_x "=" instead of "+="
  overwrites_grads,     // d_w "=" instead of "+="
  nonzero_gradients,    // make_gradients() starts d_b at 1
};

// logits = x·Wᵀ + b, scores = softmax(logits), every token to every expert with weight = scores.
//   w: [E, d]  b: [1, E]
class TinySoftmaxGate {
 public:
  using Scalar = double;
  using Gradients = TinySoftmaxGate;

  explicit TinySoftmaxGate(GateBug bug = GateBug::none)
      : bug_(bug), w_(moe::test::random_matrix<double>(kExperts, kModel, 61)),
        b_(moe::test::random_matrix<double>(1, kExperts, 62)) {}

  Index d_model() const { return w_.cols(); }
  Index num_experts() const { return w_.rows(); }
  Index slots_per_token() const { return w_.rows(); }

  void route(moe::ConstMatrixRef<double> x, moe::RoutingPlan<double>& plan, Mode) const {
    const Index T = x.rows(), E = num_experts();
    plan.reset(T, E, E);
    plan.logits.noalias() = x * w_.transpose();
    plan.logits.rowwise() += b_.row(0);
    for (Index t = 0; t < T; ++t) {
      const auto p = (plan.logits.row(t).array() - plan.logits.row(t).maxCoeff()).exp();
      plan.scores.row(t) = p / p.sum();
      for (Index e = 0; e < E; ++e) plan.expert(t, e) = static_cast<std::int32_t>(e);
    }
    plan.weight = plan.scores;
  }

  // d_p = d_scores + d_weight (weight = scores), d_z = p ⊙ (d_p − ⟨d_p, p⟩) + d_logits  [T, E];
  // d_w += d_zᵀ·x, d_b += Σ_t d_z, d_x += d_z·w.
  void backward(moe::ConstMatrixRef<double> x, const moe::RoutingPlan<double>& plan,
                const moe::RouterGradients<double>& grads, moe::MatrixRef<double> d_x, Gradients& param_grads) const {
    RowMatrix<double> d_z = grads.d_logits;
    for (Index t = 0; t < x.rows(); ++t) {
      const auto p = plan.scores.row(t).array();
      const auto d_p = (grads.d_scores.row(t) + grads.d_weight.row(t)).array();
      d_z.row(t).array() += p * (d_p - (d_p * p).sum());
    }
    if (bug_ == GateBug::overwrites_grads) {
      param_grads.w_.noalias() = d_z.transpose() * x;
    } else {
      param_grads.w_.noalias() += d_z.transpose() * x;
    }
    param_grads.b_ += (bug_ == GateBug::bias_gradient ? 2.0 : 1.0) * d_z.colwise().sum();
    if (bug_ == GateBug::overwrites_d_x) {
      d_x.noalias() = d_z * w_;
    } else {
      d_x.noalias() += d_z * w_;
    }
  }

  Gradients make_gradients() const {
    TinySoftmaxGate zeros = *this;
    zeros.w_.setZero();
    zeros.b_.setConstant(bug_ == GateBug::nonzero_gradients ? 1.0 : 0.0);
    return zeros;
  }

  void collect_parameters(const std::string& prefix, moe::ParameterList<double>& list) {
    moe::add_parameter(list, prefix, "w", w_);
    moe::add_parameter(list, prefix, "b", b_);
  }

 private:
  GateBug bug_;
  RowMatrix<double> w_, b_;
};

static_assert(moe::TrainableGate<TinySoftmaxGate>);

const std::vector<std::string> kGateLabels = {"w [", "b [", "x [", "d_x: accumulated (+=)",
                                              "parameter grads again: accumulated, twice"};

RowMatrix<double> gate_input() { return moe::test::random_matrix<double>(kTokens, kModel, 63); }

TEST(CheckGateTest, CorrectGatePasses) {
  const GradCheckResult result = check_gate(TinySoftmaxGate(), gate_input());
  EXPECT_TRUE(result.ok) << result.log;
  EXPECT_LT(result.worst_error, 1e-8) << result.log;
  expect_verdicts(result, kGateLabels, {});
  EXPECT_TRUE(contains(line_of(result.log, "w ["), "[4 x 5]")) << result.log;
  EXPECT_TRUE(contains(line_of(result.log, "x ["), "[7 x 5]")) << result.log;
  EXPECT_TRUE(result.log.starts_with("check_gate: num_tokens = 7, d_model = 5, num_experts = 4")) << result.log;
  EXPECT_FALSE(contains(result.log, "FAIL")) << result.log;
}

TEST(CheckGateTest, LibraryGatesPass) {
  const RowMatrix<double> x = gate_input();
  const auto dense = check_gate(moe::DenseGate<double>({.d_model = kModel, .num_experts = kExperts, .seed = 4}), x);
  EXPECT_TRUE(dense.ok) << dense.log;
  // Noisy top-2 in training: the noise is drawn again, the same, for every route.
  moe::TopKGate<double> noisy({.d_model = kModel, .num_experts = kExperts, .top_k = 2, .noisy = true, .seed = 4});
  noisy.noise_weight() = moe::test::random_matrix<double>(kExperts, kModel, 64);
  const auto top_k = check_gate(noisy, x, Mode::training);
  EXPECT_TRUE(top_k.ok) << top_k.log;
  EXPECT_TRUE(contains(line_of(top_k.log, "noise_weight ["), "  ok")) << top_k.log;
}

TEST(CheckGateTest, WrongParameterGradientFailsAndTheLogNamesIt) {
  const GradCheckResult result = check_gate(TinySoftmaxGate(GateBug::bias_gradient), gate_input());
  EXPECT_FALSE(result.ok) << result.log;
  expect_verdicts(result, kGateLabels, {"b ["});
  EXPECT_TRUE(contains(result.log, "analytic")) << result.log;  // the worst entries are listed
}

TEST(CheckGateTest, OverwrittenInsteadOfAccumulatedInputGradientFails) {
  const GradCheckResult result = check_gate(TinySoftmaxGate(GateBug::overwrites_d_x), gate_input());
  EXPECT_FALSE(result.ok) << result.log;
  expect_verdicts(result, kGateLabels, {"d_x: accumulated (+=)"});  // into zeros, "=" is right
}

TEST(CheckGateTest, OverwrittenInsteadOfAccumulatedParameterGradientsFail) {
  const GradCheckResult result = check_gate(TinySoftmaxGate(GateBug::overwrites_grads), gate_input());
  EXPECT_FALSE(result.ok) << result.log;
  expect_verdicts(result, kGateLabels, {"parameter grads again: accumulated, twice"});
}

TEST(CheckGateTest, NonZeroFreshGradientsAreReported) {
  const GradCheckResult result = check_gate(TinySoftmaxGate(GateBug::nonzero_gradients), gate_input());
  EXPECT_FALSE(result.ok) << result.log;
  EXPECT_TRUE(contains(result.log, "FAIL: make_gradients() gave a non-zero b")) << result.log;
}

// Two experts with the same router row tie on every token; top-1 goes to the lower index, and a
// step on either row decides the tie by the sign of x: the first step, +h on weight (0, 0), sends
// the tokens with x(t, 0) < 0 to expert 1.
TEST(CheckGateTest, AStepThatChangesTheSelectionIsReported) {
  const RowMatrix<double> x = gate_input();
  ASSERT_LT(x.col(0).minCoeff(), 0.0);
  moe::TopKGate<double> gate({.d_model = kModel, .num_experts = 2, .top_k = 1, .normalize = false});
  gate.router().weight().row(1) = gate.router().weight().row(0);
  const GradCheckResult result = check_gate(gate, x);
  EXPECT_FALSE(result.ok) << result.log;
  EXPECT_TRUE(contains(result.log, "finite-difference steps changed the selection (expert ids or drop marks), "
                                   "first the step +h on weight (0, 0)"))
      << result.log;
  // With the rows apart the same check passes: the report came from the tie. On inputs of at
  // least 0.1, logit 0 − logit 1 = Σ_i x(t, i) >= 0.5.
  gate.router().weight().row(1).array() -= 1.0;
  const RowMatrix<double> positive = (x.array().abs() + 0.1).matrix();
  const GradCheckResult apart = check_gate(gate, positive);
  EXPECT_TRUE(apart.ok) << apart.log;
}

// ---------------------------------------------------------------------------------------------
// check_aux_loss

enum class LossBug {
  none,
  d_scores_factor,       // d_scores twice too large
  overwrites_d_logits,   // d_logits "=" instead of "+="
  value_with_grads,      // returns another value when it writes gradients
  resizes_grads,         // d_scores resized to [T, E + 1]
};

// L = c · Σ_t [½ Σ_e scores² + ⅓ Σ_j weight³ + Σ_e sin(logits) + ½ Σ_e noise_std²] over the real
// tokens, with the noise_std term only for a noisy plan.
class TinyLoss {
 public:
  using Scalar = double;

  explicit TinyLoss(LossBug bug = LossBug::none, double coefficient = 0.7) : bug_(bug), c_(coefficient) {}

  double evaluate(const moe::RoutingPlan<double>& plan, std::span<const std::uint8_t> mask,
                  moe::RouterGradients<double>* grads) const {
    double value = 0;
    for (Index t = 0; t < plan.num_tokens(); ++t) {
      if (!mask.empty() && mask[static_cast<std::size_t>(t)] == 0) continue;
      value += 0.5 * plan.scores.row(t).squaredNorm() + plan.weight.row(t).array().cube().sum() / 3 +
               plan.logits.row(t).array().sin().sum();
      if (plan.noisy) value += 0.5 * plan.noise_std.row(t).squaredNorm();
      if (!grads) continue;
      grads->d_scores.row(t) += (bug_ == LossBug::d_scores_factor ? 2 : 1) * c_ * plan.scores.row(t);
      grads->d_weight.row(t).array() += c_ * plan.weight.row(t).array().square();
      if (bug_ == LossBug::overwrites_d_logits) {
        grads->d_logits.row(t) = c_ * plan.logits.row(t).array().cos().matrix();
      } else {
        grads->d_logits.row(t).array() += c_ * plan.logits.row(t).array().cos();
      }
      if (plan.noisy) grads->d_noise_std.row(t) += c_ * plan.noise_std.row(t);
    }
    if (grads && bug_ == LossBug::resizes_grads) grads->d_scores.setZero(plan.num_tokens(), plan.num_experts + 1);
    return c_ * value + (grads && bug_ == LossBug::value_with_grads ? 1e-3 : 0.0);
  }

 private:
  LossBug bug_;
  double c_;
};

static_assert(moe::AuxLoss<TinyLoss>);

// The plan of a noisy top-2 gate in training (noise and noise_std filled), or of a plain one.
moe::RoutingPlan<double> routed_plan(bool noisy) {
  moe::TopKGate<double> gate({.d_model = kModel, .num_experts = kExperts, .top_k = 2, .noisy = noisy, .seed = 8});
  if (noisy) gate.noise_weight() = moe::test::random_matrix<double>(kExperts, kModel, 65);
  moe::RoutingPlan<double> plan;
  gate.route(gate_input(), plan, Mode::training);
  return plan;
}

const std::vector<std::string> kLossLabels = {
    "grads keep the plan's shapes", "value with grads = without", "plan.weight [", "plan.scores [",
    "plan.logits [", "plan.noise_std [", "d_weight: accumulated (+=)", "d_scores: accumulated (+=)",
    "d_logits: accumulated (+=)", "d_noise_std: accumulated (+=)"};

TEST(CheckAuxLossTest, CorrectLossPasses) {
  const auto plan = routed_plan(/*noisy=*/true);
  ASSERT_TRUE(plan.noisy);
  const GradCheckResult result = check_aux_loss(TinyLoss(), plan);
  EXPECT_TRUE(result.ok) << result.log;
  EXPECT_LT(result.worst_error, 1e-8) << result.log;
  expect_verdicts(result, kLossLabels, {});
  EXPECT_TRUE(contains(line_of(result.log, "plan.weight ["), "[7 x 2]")) << result.log;
  EXPECT_TRUE(contains(line_of(result.log, "plan.noise_std ["), "[7 x 4]")) << result.log;
  EXPECT_FALSE(contains(result.log, "FAIL")) << result.log;

  // Without noise there is no noise_std to check; a mask leaves its padding out of every check.
  const std::vector<std::uint8_t> mask = {1, 0, 1, 1, 0, 1, 1};
  const GradCheckResult masked = check_aux_loss(TinyLoss(), routed_plan(/*noisy=*/false), mask);
  EXPECT_TRUE(masked.ok) << masked.log;
  EXPECT_EQ(line_of(masked.log, "plan.noise_std"), "") << masked.log;
  EXPECT_EQ(line_of(masked.log, "d_noise_std"), "") << masked.log;
  EXPECT_TRUE(contains(masked.log, "mask = 2 padding tokens")) << masked.log;
}

TEST(CheckAuxLossTest, LibraryLossesPass) {
  const auto plan = routed_plan(/*noisy=*/true);
  const auto balance = check_aux_loss(moe::LoadBalancingLoss<double>({.coefficient = 0.5}), plan);
  EXPECT_TRUE(balance.ok) << balance.log;
  const auto z = check_aux_loss(moe::RouterZLoss<double>({.coefficient = 0.5}), plan);
  EXPECT_TRUE(z.ok) << z.log;
  const auto importance = check_aux_loss(moe::ImportanceLoadLoss<double>(), plan);
  EXPECT_TRUE(importance.ok) << importance.log;
  EXPECT_TRUE(contains(line_of(importance.log, "plan.noise_std ["), "  ok")) << importance.log;
}

TEST(CheckAuxLossTest, WrongGradientFailsAndTheLogNamesTheTensor) {
  const GradCheckResult result = check_aux_loss(TinyLoss(LossBug::d_scores_factor), routed_plan(true));
  EXPECT_FALSE(result.ok) << result.log;
  expect_verdicts(result, kLossLabels, {"plan.scores ["});
  // 2·g against g: ‖g‖ / ‖3g‖ = 1/3.
  EXPECT_NEAR(result.worst_error, 1.0 / 3.0, 1e-6) << result.log;
}

TEST(CheckAuxLossTest, OverwrittenInsteadOfAccumulatedGradientFails) {
  const GradCheckResult result = check_aux_loss(TinyLoss(LossBug::overwrites_d_logits), routed_plan(true));
  EXPECT_FALSE(result.ok) << result.log;
  expect_verdicts(result, kLossLabels, {"d_logits: accumulated (+=)"});
}

TEST(CheckAuxLossTest, ValueThatDependsOnTheGradientsFails) {
  const GradCheckResult result = check_aux_loss(TinyLoss(LossBug::value_with_grads), routed_plan(true));
  EXPECT_FALSE(result.ok) << result.log;
  expect_verdicts(result, kLossLabels, {"value with grads = without"});
}

TEST(CheckAuxLossTest, ResizedGradientsAreReportedBeforeAnyDifference) {
  const GradCheckResult result = check_aux_loss(TinyLoss(LossBug::resizes_grads), routed_plan(true));
  EXPECT_FALSE(result.ok) << result.log;
  EXPECT_TRUE(contains(result.log, "FAIL: evaluate resized the gradient of plan.scores to [7 x 5]; reset(plan) "
                                   "made it [7 x 4]"))
      << result.log;
  EXPECT_EQ(line_of(result.log, "plan.weight ["), "") << result.log;
}

TEST(RouterCheckTest, BadOptionsThrow) {
  EXPECT_THROW(check_aux_loss(TinyLoss(), routed_plan(false), {}, 7, {.step = 0}), moe::config_error);
  EXPECT_THROW(check_gate(TinySoftmaxGate(), gate_input(), Mode::inference, 5, {.tolerance = -1}), moe::config_error);
}

}  // namespace
