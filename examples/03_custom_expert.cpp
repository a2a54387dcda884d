// 03 — your own expert: any type that meets the moe::Expert concept plugs into SparseMoE, and one
// that meets moe::TrainableExpert trains in it too.
//
// The concepts (include/moe/concepts.hpp) ask for a *bank*: one object holding the parameters of
// all experts of the layer, which runs expert e on a block of rows. Here: a low-rank expert
//     expert_e(x) = U_e · tanh(V_e · x),   V_e: [rank, d_model], U_e: [d_model, rank]
// with both projections of all experts in one contiguous moe::ParamBank each. Its backward is
// checked against finite differences by the library's public gradient checker, moe::testing.
//
//   moe_03_custom_expert [--smoke]
#include <moe/moe.hpp>
#include <moe/testing/gradient_check.hpp>

#include <cstdio>
#include <algorithm>
#include <span>
#include <string>
#include <string_view>

template <class S>
class LowRankExpert {
 public:
  using Scalar = S;                // the concept's first requirement: the scalar type
  using Gradients = LowRankExpert;  // gradients are shaped like the parameters

  LowRankExpert(moe::Index num_experts, moe::Index d_model, moe::Index rank, std::uint64_t seed)
      : v_(num_experts, rank, d_model), u_(num_experts, d_model, rank) {
    moe::Generator rng(seed);
    v_.init_uniform(d_model, rng);  // torch.nn.Linear's default initialisation
    u_.init_uniform(rank, rng);
  }

  moe::Index num_experts() const { return v_.num_experts(); }
  moe::Index d_model() const { return v_.cols(); }

  // Working memory forward() needs for n rows: the hidden block [n, rank]. The layer owns it
  // (one piece per thread), so forward() stays const and experts can run concurrently. In
  // training the layer keeps each block's piece until backward(), which reads tanh(V·x) there.
  moe::Index scratch_size(moe::Index n) const { return n * v_.rows(); }
  moe::Index backward_scratch_size(moe::Index n) const { return n * v_.rows(); }

  // y = expert_e(x) for a block of rows: x and y are [n, d_model] views into the layer's buffers.
  void forward(moe::Index e, moe::ConstMatrixRef<S> x, moe::MatrixRef<S> y, std::span<S> scratch) const {
    Eigen::Map<moe::RowMatrix<S>> hidden(scratch.data(), x.rows(), v_.rows());
    hidden.noalias() = x * v_[e].transpose();  // weights are [out, in], like torch.nn.Linear
    hidden = hidden.array().tanh().matrix();
    y.noalias() = hidden * u_[e].transpose();
  }

  // Backward for the rows of expert e, with h = tanh(V·x) from forward's scratch:
  //   d_U += d_yᵀ·h,  d_pre = (d_y·U) ⊙ (1 − h²),  d_V += d_preᵀ·x,  d_x = d_pre·V
  // d_x is overwritten, the gradients accumulate (+=): micro-batches add up.
  void backward(moe::Index e, moe::ConstMatrixRef<S> x, std::span<const S> saved, moe::ConstMatrixRef<S> d_y,
                moe::MatrixRef<S> d_x, Gradients& grads, std::span<S> scratch) const {
    const Eigen::Map<const moe::RowMatrix<S>> hidden(saved.data(), x.rows(), v_.rows());
    Eigen::Map<moe::RowMatrix<S>> d_pre(scratch.data(), x.rows(), v_.rows());
    grads.u_[e].noalias() += d_y.transpose() * hidden;
    d_pre.noalias() = d_y * u_[e];
    d_pre.array() *= S(1) - hidden.array().square();
    grads.v_[e].noalias() += d_pre.transpose() * x;
    d_x.noalias() = d_pre * v_[e];
  }

  Gradients make_gradients() const {
    LowRankExpert zeros = *this;
    zeros.v_.all().setZero();
    zeros.u_.all().setZero();
    return zeros;
  }

  // The (name, tensor) pairs optimizers and checkpoints see.
  void collect_parameters(const std::string& prefix, moe::ParameterList<S>& out) {
    moe::add_parameter(out, prefix, "v", v_);
    moe::add_parameter(out, prefix, "u", u_);
  }

  const moe::ParamBank<S>& v() const { return v_; }
  const moe::ParamBank<S>& u() const { return u_; }

 private:
  moe::ParamBank<S> v_, u_;
};

// The compiler checks the contract; a missing or misspelt member fails here, not deep in the layer.
static_assert(moe::Expert<LowRankExpert<float>>);
static_assert(moe::TrainableExpert<LowRankExpert<float>>);

int main(int argc, char** argv) {
  const bool smoke = argc > 1 && std::string_view(argv[1]) == "--smoke";
  const moe::Index d_model = smoke ? 16 : 256, rank = smoke ? 4 : 32, num_experts = 4, num_tokens = smoke ? 9 : 1000;

  moe::SparseMoE<LowRankExpert<double>, moe::TopKGate<double>> layer(
      moe::TopKGate<double>({.d_model = d_model, .num_experts = num_experts, .top_k = 2, .seed = 7}),
      LowRankExpert<double>(num_experts, d_model, rank, /*seed=*/8));

  moe::Generator rng(9);
  moe::RowMatrix<double> x(num_tokens, d_model), y(num_tokens, d_model);
  for (moe::Index i = 0; i < x.size(); ++i) x.data()[i] = moe::standard_normal(rng);
  layer.forward(x, y);

  // Check the layer against the definition, one token at a time:
  //   y[t] = Σ_j weight[t, j] · U_e · tanh(V_e · x[t]),  e = expert[t, j]
  const moe::RoutingPlan<double>& plan = layer.last_plan();
  const LowRankExpert<double>& experts = layer.experts();
  double worst = 0;
  for (moe::Index t = 0; t < num_tokens; ++t) {
    Eigen::RowVectorXd expected = Eigen::RowVectorXd::Zero(d_model);
    for (moe::Index j = 0; j < plan.slots_per_token(); ++j) {
      if (!plan.active(t, j)) continue;
      const auto e = plan.expert(t, j);
      const Eigen::VectorXd hidden = (experts.v()[e] * x.row(t).transpose()).array().tanh();
      expected += plan.weight(t, j) * (experts.u()[e] * hidden).transpose();
    }
    worst = std::max(worst, (y.row(t) - expected).cwiseAbs().maxCoeff());
  }
  std::printf("LowRankExpert (rank %lld) in a top-2 layer of %lld experts, %lld tokens\n", static_cast<long long>(rank),
              static_cast<long long>(num_experts), static_cast<long long>(num_tokens));
  std::printf("tokens per expert:");
  for (const moe::Index n : layer.last_stats().tokens_per_expert) std::printf(" %lld", static_cast<long long>(n));
  std::printf("\nlargest difference from the per-token definition: %.3g\n", worst);
  if (worst > 1e-12) {
    std::printf("FAILED: the layer and the definition disagree\n");
    return 1;
  }

  // Check the backward against central finite differences, expert by expert: d_x and every
  // parameter, relative error ‖analytic − numeric‖ / ‖analytic + numeric‖ ≤ 1e-6.
  const moe::testing::GradCheckResult check =
      moe::testing::check_expert(LowRankExpert<double>(num_experts, smoke ? 6 : 12, rank, /*seed=*/10), /*rows=*/5);
  std::printf("\ngradient check of LowRankExpert::backward:\n%s", check.log.c_str());
  if (!check.ok) {
    std::printf("FAILED: backward disagrees with finite differences\n");
    return 1;
  }
  return 0;
}
