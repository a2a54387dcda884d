// The concepts of moe/concepts.hpp and PackedExpert (experts/packed_expert.hpp): the library's
// types satisfy them, and a stub that has every member a concept asks for does too, while the
// same stub without any one member (or with it of the wrong shape) does not. The checks are
// static_asserts: this file does not compile if one of them fails.
#include <moe/concepts.hpp>
#include <moe/experts/ffn.hpp>
#include <moe/experts/gated.hpp>
#include <moe/experts/linear.hpp>
#include <moe/experts/packed_expert.hpp>
#include <moe/gating/dense_gate.hpp>
#include <moe/gating/expert_choice_gate.hpp>
#include <moe/gating/top_k_gate.hpp>
#include <moe/loss/importance_load.hpp>
#include <moe/loss/load_balancing.hpp>
#include <moe/loss/router_z_loss.hpp>
#include <moe/loss/sequence_balance.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using CRef = moe::ConstMatrixRef<double>;
using MRef = moe::MatrixRef<double>;

// ---------------------------------------------------------------------------------------------
// The library's types

template <class S>
constexpr bool library_types_satisfy_their_concepts() {
  static_assert(moe::TrainableExpert<moe::LinearExpert<S>>);
  static_assert(moe::TrainableExpert<moe::ReluExpert<S>> && moe::PackedExpert<moe::ReluExpert<S>>);
  static_assert(moe::TrainableExpert<moe::GeluExpert<S>> && moe::PackedExpert<moe::GeluExpert<S>>);
  static_assert(moe::TrainableExpert<moe::GeluTanhExpert<S>> && moe::PackedExpert<moe::GeluTanhExpert<S>>);
  static_assert(moe::TrainableExpert<moe::SiluExpert<S>> && moe::PackedExpert<moe::SiluExpert<S>>);
  static_assert(moe::TrainableExpert<moe::SwiGluExpert<S>> && moe::PackedExpert<moe::SwiGluExpert<S>>);
  static_assert(moe::TrainableExpert<moe::GeGluExpert<S>> && moe::PackedExpert<moe::GeGluExpert<S>>);
  static_assert(moe::TrainableGate<moe::TopKGate<S>>);
  static_assert(moe::TrainableGate<moe::DenseGate<S>>);
  static_assert(moe::TrainableGate<moe::ExpertChoiceGate<S>>);
  static_assert(moe::AuxLoss<moe::LoadBalancingLoss<S>>);
  static_assert(moe::AuxLoss<moe::ImportanceLoadLoss<S>>);
  static_assert(moe::AuxLoss<moe::RouterZLoss<S>>);
  static_assert(moe::AuxLoss<moe::SequenceBalanceLoss<S>>);
  return true;
}
static_assert(library_types_satisfy_their_concepts<float>());
static_assert(library_types_satisfy_their_concepts<double>());

// ---------------------------------------------------------------------------------------------
// Stubs: Stub<m> has every member its concepts ask for but the one m names. Member types come
// from a base (Nothing<i> when absent); member functions are removed by their constraints.

template <int>
struct Nothing {};
struct ScalarDouble {
  using Scalar = double;
};

struct ListedGradients {
  void collect_parameters(const std::string&, moe::ParameterList<double>&) {}
};
struct UnlistedGradients {};
template <class G>
struct GradientsAre {
  using Gradients = G;
};

// A format whose Scalar is the expert's, and one whose Scalar is not (its Input still fits).
struct DoubleFormat {
  using Scalar = double;
  using Input = double;
};
struct FloatFormat {
  using Scalar = float;
  using Input = double;
};
template <class F>
struct FormatIs {
  using Format = F;
};

enum class ExpertLacks {
  nothing,
  // Expert
  scalar, num_experts, d_model, scratch_size, forward,
  forward_signature,   // y taken as RowMatrix<double>&: an output Ref does not bind to it
  forward_not_const,   // forward may run on several threads at once: it must be const
  // TrainableExpert
  gradients, gradients_list, backward_scratch_size, backward, make_gradients,
  make_gradients_type,  // returns something other than Gradients
  collect_parameters,
  // PackedExpert
  format, format_scalar, up_panels, down_panels, work_size, packed_input_size, packed_hidden_size, prepack,
  weights_changed, pack_input, forward_up, pack_hidden, forward_down,
};

template <ExpertLacks m>
struct StubExpert
    : std::conditional_t<m == ExpertLacks::scalar, Nothing<0>, ScalarDouble>,
      std::conditional_t<m == ExpertLacks::gradients, Nothing<1>,
                         GradientsAre<std::conditional_t<m == ExpertLacks::gradients_list, UnlistedGradients,
                                                         ListedGradients>>>,
      std::conditional_t<m == ExpertLacks::format, Nothing<2>,
                         FormatIs<std::conditional_t<m == ExpertLacks::format_scalar, FloatFormat, DoubleFormat>>> {
  using L = ExpertLacks;
  using G = std::conditional_t<m == L::gradients_list, UnlistedGradients, ListedGradients>;

  Index num_experts() const requires(m != L::num_experts) { return 1; }
  Index d_model() const requires(m != L::d_model) { return 1; }
  Index scratch_size(Index) const requires(m != L::scratch_size) { return 0; }
  void forward(Index, CRef, MRef, std::span<double>) const
    requires(m != L::forward && m != L::forward_signature && m != L::forward_not_const) {}
  void forward(Index, CRef, moe::RowMatrix<double>&, std::span<double>) const requires(m == L::forward_signature) {}
  void forward(Index, CRef, MRef, std::span<double>) requires(m == L::forward_not_const) {}

  Index backward_scratch_size(Index) const requires(m != L::backward_scratch_size) { return 0; }
  void backward(Index, CRef, std::span<double>, CRef, MRef, G&, std::span<double>) const
    requires(m != L::backward) {}
  G make_gradients() const requires(m != L::make_gradients && m != L::make_gradients_type) { return {}; }
  double make_gradients() const requires(m == L::make_gradients_type) { return 0; }
  void collect_parameters(const std::string&, moe::ParameterList<double>&) requires(m != L::collect_parameters) {}

  Index up_panels() const requires(m != L::up_panels) { return 1; }
  Index down_panels() const requires(m != L::down_panels) { return 1; }
  Index work_size(Index) const requires(m != L::work_size) { return 0; }
  Index packed_input_size(Index) const requires(m != L::packed_input_size) { return 0; }
  Index packed_hidden_size(Index) const requires(m != L::packed_hidden_size) { return 0; }
  void prepack(Index) requires(m != L::prepack) {}
  void weights_changed() requires(m != L::weights_changed) {}
  void pack_input(CRef, double*) const requires(m != L::pack_input) {}
  void forward_up(Index, Index, const double*, Index, Index, double*, std::span<double>, bool) const
    requires(m != L::forward_up) {}
  void pack_hidden(Index, std::span<const double>, double*) const requires(m != L::pack_hidden) {}
  void forward_down(Index, Index, const double*, Index, Index, double*, const double*, MRef) const
    requires(m != L::forward_down) {}
};

// An Expert member missing: not an Expert, so neither trainable nor packed.
template <ExpertLacks m>
constexpr bool not_an_expert = !moe::Expert<StubExpert<m>> && !moe::TrainableExpert<StubExpert<m>> &&
                               !moe::PackedExpert<StubExpert<m>>;
// A TrainableExpert member missing: still an Expert with a fast path, but not trainable.
template <ExpertLacks m>
constexpr bool not_trainable = moe::Expert<StubExpert<m>> && !moe::TrainableExpert<StubExpert<m>> &&
                               moe::PackedExpert<StubExpert<m>>;
// A PackedExpert member missing: still a TrainableExpert, without a fast path.
template <ExpertLacks m>
constexpr bool not_packed = moe::TrainableExpert<StubExpert<m>> && !moe::PackedExpert<StubExpert<m>>;

static_assert(moe::TrainableExpert<StubExpert<ExpertLacks::nothing>> &&
              moe::PackedExpert<StubExpert<ExpertLacks::nothing>>);
static_assert(not_an_expert<ExpertLacks::scalar>);
static_assert(not_an_expert<ExpertLacks::num_experts>);
static_assert(not_an_expert<ExpertLacks::d_model>);
static_assert(not_an_expert<ExpertLacks::scratch_size>);
static_assert(not_an_expert<ExpertLacks::forward>);
static_assert(not_an_expert<ExpertLacks::forward_signature>);
static_assert(not_an_expert<ExpertLacks::forward_not_const>);
static_assert(not_trainable<ExpertLacks::gradients>);
static_assert(not_trainable<ExpertLacks::gradients_list>);
static_assert(not_trainable<ExpertLacks::backward_scratch_size>);
static_assert(not_trainable<ExpertLacks::backward>);
static_assert(not_trainable<ExpertLacks::make_gradients>);
static_assert(not_trainable<ExpertLacks::make_gradients_type>);
static_assert(not_trainable<ExpertLacks::collect_parameters>);
static_assert(not_packed<ExpertLacks::format>);
static_assert(not_packed<ExpertLacks::format_scalar>);
static_assert(not_packed<ExpertLacks::up_panels>);
static_assert(not_packed<ExpertLacks::down_panels>);
static_assert(not_packed<ExpertLacks::work_size>);
static_assert(not_packed<ExpertLacks::packed_input_size>);
static_assert(not_packed<ExpertLacks::packed_hidden_size>);
static_assert(not_packed<ExpertLacks::prepack>);
static_assert(not_packed<ExpertLacks::weights_changed>);
static_assert(not_packed<ExpertLacks::pack_input>);
static_assert(not_packed<ExpertLacks::forward_up>);
static_assert(not_packed<ExpertLacks::pack_hidden>);
static_assert(not_packed<ExpertLacks::forward_down>);

enum class GateLacks {
  nothing,
  // Gate
  scalar, d_model, num_experts, slots_per_token, route,
  route_signature,  // route(x, plan) without the mode
  // TrainableGate
  gradients, gradients_list, backward, make_gradients, collect_parameters,
};

template <GateLacks m>
struct StubGate : std::conditional_t<m == GateLacks::scalar, Nothing<0>, ScalarDouble>,
                  std::conditional_t<m == GateLacks::gradients, Nothing<1>,
                                     GradientsAre<std::conditional_t<m == GateLacks::gradients_list,
                                                                     UnlistedGradients, ListedGradients>>> {
  using L = GateLacks;
  using G = std::conditional_t<m == L::gradients_list, UnlistedGradients, ListedGradients>;

  Index d_model() const requires(m != L::d_model) { return 1; }
  Index num_experts() const requires(m != L::num_experts) { return 1; }
  Index slots_per_token() const requires(m != L::slots_per_token) { return 1; }
  void route(CRef, moe::RoutingPlan<double>&, moe::Mode) requires(m != L::route && m != L::route_signature) {}
  void route(CRef, moe::RoutingPlan<double>&) requires(m == L::route_signature) {}

  void backward(CRef, const moe::RoutingPlan<double>&, const moe::RouterGradients<double>&, MRef, G&)
    requires(m != L::backward) {}
  G make_gradients() const requires(m != L::make_gradients) { return {}; }
  void collect_parameters(const std::string&, moe::ParameterList<double>&) requires(m != L::collect_parameters) {}
};

template <GateLacks m>
constexpr bool not_a_gate = !moe::Gate<StubGate<m>> && !moe::TrainableGate<StubGate<m>>;
template <GateLacks m>
constexpr bool not_trainable_gate = moe::Gate<StubGate<m>> && !moe::TrainableGate<StubGate<m>>;

static_assert(moe::TrainableGate<StubGate<GateLacks::nothing>>);
static_assert(not_a_gate<GateLacks::scalar>);
static_assert(not_a_gate<GateLacks::d_model>);
static_assert(not_a_gate<GateLacks::num_experts>);
static_assert(not_a_gate<GateLacks::slots_per_token>);
static_assert(not_a_gate<GateLacks::route>);
static_assert(not_a_gate<GateLacks::route_signature>);
static_assert(not_trainable_gate<GateLacks::gradients>);
static_assert(not_trainable_gate<GateLacks::gradients_list>);
static_assert(not_trainable_gate<GateLacks::backward>);
static_assert(not_trainable_gate<GateLacks::make_gradients>);
static_assert(not_trainable_gate<GateLacks::collect_parameters>);

enum class LossLacks {
  nothing,
  scalar, evaluate,
  evaluate_without_mask,  // evaluate(plan, grads)
  evaluate_returns_void,  // the value must convert to double
  evaluate_not_const,     // the layer evaluates through a const loss
};

template <LossLacks m>
struct StubLoss : std::conditional_t<m == LossLacks::scalar, Nothing<0>, ScalarDouble> {
  using L = LossLacks;
  using Plan = moe::RoutingPlan<double>;
  using Mask = std::span<const std::uint8_t>;

  double evaluate(const Plan&, Mask, moe::RouterGradients<double>*) const
    requires(m == L::nothing || m == L::scalar) { return 0; }
  double evaluate(const Plan&, moe::RouterGradients<double>*) const requires(m == L::evaluate_without_mask) {
    return 0;
  }
  void evaluate(const Plan&, Mask, moe::RouterGradients<double>*) const requires(m == L::evaluate_returns_void) {}
  double evaluate(const Plan&, Mask, moe::RouterGradients<double>*) requires(m == L::evaluate_not_const) { return 0; }
};

static_assert(moe::AuxLoss<StubLoss<LossLacks::nothing>>);
static_assert(!moe::AuxLoss<StubLoss<LossLacks::scalar>>);
static_assert(!moe::AuxLoss<StubLoss<LossLacks::evaluate>>);
static_assert(!moe::AuxLoss<StubLoss<LossLacks::evaluate_without_mask>>);
static_assert(!moe::AuxLoss<StubLoss<LossLacks::evaluate_returns_void>>);
static_assert(!moe::AuxLoss<StubLoss<LossLacks::evaluate_not_const>>);

TEST(ConceptsTest, TheStaticAssertionsAboveCompiled) { SUCCEED() << "every concept check is a static_assert"; }

}  // namespace
