// Determinism (docs/architecture.md §8): the same inputs give the same bits on every run and for any thread
// count, and top-k ties go to the lower expert index. Also the threading the claim rests on:
// detail::parallel_for, and the layer really running its work on the threads it was given.
#include "layer/layer_cases.hpp"
#include "support/compare.hpp"
#include "support/reference_layer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace moe {
namespace MOE_TEST_FILE_ID {

using test::random_matrix;
using namespace test::cases;

// Big enough that both threads get work: 8 experts with ~64 rows each, 3 row tiles of shared experts.
constexpr Index kT = 257, kD = 64, kFf = 96, kE = 8, kK = 2;

template <class S>
MixtralLayer<S> big_layer(bool noisy = false) {
  TopKGate<S> gate({.d_model = kD, .num_experts = kE, .top_k = kK, .noisy = noisy, .seed = 41});
  if (noisy) gate.noise_weight().setConstant(S(0.05));
  return MixtralLayer<S>(std::move(gate), SwiGluExpert<S>({.num_experts = kE, .d_model = kD, .d_ff = kFf, .seed = 42}),
                         SharedExperts<SwiGluExpert<S>>(
                             SwiGluExpert<S>({.num_experts = 2, .d_model = kD, .d_ff = kFf, .seed = 43}), true, 44));
}

template <class S>
bool same_memory(const RowMatrix<S>& a, const RowMatrix<S>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(S) * static_cast<std::size_t>(a.size())) == 0;
}

template <class S>
class Determinism : public ::testing::Test {};
TYPED_TEST_SUITE(Determinism, test::Scalars);

TYPED_TEST(Determinism, RepeatedRunsGiveIdenticalBits) {
  using S = TypeParam;
  auto layer = big_layer<S>(), twin = big_layer<S>();
  const RowMatrix<S> x = random_matrix<S>(kT, kD, 3001);
  RowMatrix<S> first(kT, kD), second(kT, kD), other(kT, kD);
  layer.forward(x, first);
  layer.forward(x, second);
  twin.forward(x, other);
  EXPECT_TRUE(same_memory(first, second));
  EXPECT_TRUE(same_memory(first, other));
  MOE_EXPECT_CLOSE(S, first, test::reference_layer_forward(layer, x));
}

TYPED_TEST(Determinism, ThreadCountDoesNotChangeBits) {
  using S = TypeParam;
  auto layer = big_layer<S>();
  const RowMatrix<S> x = random_matrix<S>(kT, kD, 3002);
  layer.set_num_threads(1);
  RowMatrix<S> y_one(kT, kD);
  layer.forward(x, y_one);
  const RoutingPlan<S> plan_one = layer.last_plan();
  const RoutingStats stats_one = layer.last_stats();
  for (const int threads : {2, 3, 0}) {  // 0: OpenMP's default (OMP_NUM_THREADS)
    layer.set_num_threads(threads);
    RowMatrix<S> y(kT, kD);
    layer.forward(x, y);
    EXPECT_TRUE(same_memory(y, y_one)) << threads << " threads";
    expect_same_plan(layer.last_plan(), plan_one);
    expect_same_stats(layer.last_stats(), stats_one);
  }
}

TYPED_TEST(Determinism, TrainingNoiseIsSeededAndThreadIndependent) {
  using S = TypeParam;
  auto layer = big_layer<S>(/*noisy=*/true);
  layer.set_mode(Mode::training);
  const RowMatrix<S> x = random_matrix<S>(kT, kD, 3003);
  RowMatrix<S> y_one(kT, kD), y_two(kT, kD), y_next(kT, kD);
  layer.gate().reseed(7);
  layer.set_num_threads(1);
  layer.forward(x, y_one);
  layer.gate().reseed(7);
  layer.set_num_threads(2);
  layer.forward(x, y_two);
  EXPECT_TRUE(same_memory(y_one, y_two));
  layer.forward(x, y_next);  // the generator moved on: new noise
  EXPECT_FALSE(same_memory(y_next, y_two));
}

TYPED_TEST(Determinism, TiesGoToTheLowerExpertIndex) {
  using S = TypeParam;
  for (const Index k : {Index{1}, Index{2}}) {
    TopKGate<S> gate({.d_model = kD, .num_experts = kE, .top_k = k, .router_bias = true, .seed = 45});
    gate.router().weight().setZero();
    gate.router().bias() << S(0), S(1), S(0), S(1), S(0), S(1), S(0), S(1);  // 1, 3, 5, 7 tie
    MixtralLayer<S> layer(std::move(gate), SwiGluExpert<S>({.num_experts = kE, .d_model = kD, .d_ff = kFf}));
    RowMatrix<S> y(kT, kD);
    layer.forward(random_matrix<S>(kT, kD, 3004), y);
    const auto& plan = layer.last_plan();
    for (Index t = 0; t < kT; ++t) {
      EXPECT_EQ(plan.expert(t, 0), 1) << "token " << t;
      if (k == 2) {
        EXPECT_EQ(plan.expert(t, 1), 3) << "token " << t;
      }
    }
  }
}

// ---- the threads behind the claim ------------------------------------------------------------

// A user expert that records the size of the thread team it is called from.
class ThreadProbeExpert {
 public:
  using Scalar = float;

  ThreadProbeExpert(const ExpertConfig& config, std::atomic<int>* team) : inner_(config), team_(team) {}

  Index num_experts() const { return inner_.num_experts(); }
  Index d_model() const { return inner_.d_model(); }
  Index scratch_size(Index n) const { return inner_.scratch_size(n); }
  void forward(Index e, ConstMatrixRef<float> x, MatrixRef<float> y, std::span<float> scratch) const {
#ifdef _OPENMP
    const int size = omp_get_num_threads();
    int seen = team_->load();
    while (size > seen && !team_->compare_exchange_weak(seen, size)) {
    }
#endif
    inner_.forward(e, x, y, scratch);
  }

 private:
  LinearExpert<float> inner_;
  std::atomic<int>* team_;
};
static_assert(Expert<ThreadProbeExpert>);

struct ProbedLayer {
  std::atomic<int> routed_team{0}, shared_team{0};
  SparseMoE<ThreadProbeExpert, TopKGate<float>> layer{
      TopKGate<float>({.d_model = kD, .num_experts = kE, .top_k = kK, .seed = 46}),
      ThreadProbeExpert({.num_experts = kE, .d_model = kD, .seed = 47}, &routed_team),
      SharedExperts<ThreadProbeExpert>(ThreadProbeExpert({.num_experts = 1, .d_model = kD, .seed = 48}, &shared_team))};

  void forward(int threads) {
    routed_team = shared_team = 0;
    layer.set_num_threads(threads);
    RowMatrix<float> y(kT, kD);
    layer.forward(random_matrix<float>(kT, kD, 3005), y);
  }
};

#ifdef _OPENMP

TEST(LayerThreads, TwoThreadsAreUsedWhenAskedFor) {
  ProbedLayer probe;
  probe.forward(1);
  EXPECT_EQ(probe.routed_team, 1);
  EXPECT_EQ(probe.shared_team, 1);
  probe.forward(2);
  EXPECT_EQ(probe.routed_team, 2) << "the 2-thread determinism runs would not test anything";
  EXPECT_EQ(probe.shared_team, 2);
}

TEST(LayerThreads, DefaultIsOpenMPsThreadCount) {
  const int expected = std::min(omp_get_max_threads(), int{kE});
  ProbedLayer probe;
  probe.forward(0);
  EXPECT_EQ(probe.routed_team, expected) << "omp_get_max_threads() = " << omp_get_max_threads();
  EXPECT_EQ(probe.shared_team, std::min(expected, 3));  // 3 row tiles
}

TEST(LayerThreads, ForwardRestoresOpenMPsThreadCount) {
  const int before = omp_get_max_threads();
  ProbedLayer probe;
  probe.forward(2);
  EXPECT_EQ(omp_get_max_threads(), before);
}

// "0: OpenMP's default" must keep meaning the default outside the single-threaded Eigen scope
// that the layer opens before it spreads its work.
TEST(LayerThreads, DefaultIsResolvedOutsideTheEigenSingleThreadedScope) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(3);
  {
    const detail::EigenSingleThreaded outer;
    EXPECT_EQ(omp_get_max_threads(), 1);
    EXPECT_EQ(detail::resolve_threads(0), 3);
    EXPECT_EQ(detail::resolve_threads(2), 2);
    {
      const detail::EigenSingleThreaded nested;
      EXPECT_EQ(detail::resolve_threads(0), 3);
    }
    EXPECT_EQ(detail::resolve_threads(0), 3);
  }
  EXPECT_EQ(omp_get_max_threads(), 3);
  EXPECT_EQ(detail::resolve_threads(0), 3);
  omp_set_num_threads(before);
}

// A packed expert (SwiGLU) that records the largest thread team its up projection runs in, at any
// level of nesting (a tile per thread runs its panels in a nested team of one).
class PanelProbeExpert : public SwiGluExpert<float> {
 public:
  PanelProbeExpert(const ExpertConfig& config, std::atomic<int>* team) : SwiGluExpert<float>(config), team_(team) {}
  void forward_up(Index e, Index n, const float* packed_x, Index p_begin, Index p_end, float* work,
                  std::span<float> memory, bool keep) const {
    int size = 1;
    for (int level = 1; level <= omp_get_level(); ++level) size = std::max(size, omp_get_team_size(level));
    int seen = team_->load();
    while (size > seen && !team_->compare_exchange_weak(seen, size)) {
    }
    SwiGluExpert<float>::forward_up(e, n, packed_x, p_begin, p_end, work, memory, keep);
  }

 private:
  std::atomic<int>* team_;
};
static_assert(PackedExpert<PanelProbeExpert>);

// One row tile of shared experts (T ≤ 128) is split by panels over all the threads, and as many
// tiles as threads go a tile per thread; the same bits either way.
TEST(LayerThreads, SharedExpertsUseEveryThreadFromOneTile) {
  std::atomic<int> team{0};
  SharedExperts<PanelProbeExpert> shared(PanelProbeExpert({.num_experts = 2, .d_model = kD, .d_ff = kFf, .seed = 49}, &team),
                                         true, 50);
  for (const Index T : {Index(1), Index(40), kT}) {
    const RowMatrix<float> x = random_matrix<float>(T, kD, 3006);
    RowMatrix<float> y_one = RowMatrix<float>::Zero(T, kD);
    team = 0;
    shared.forward_add(x, y_one, 1);
    EXPECT_EQ(team, 1);
    for (const int threads : {2, 3}) {
      RowMatrix<float> y = RowMatrix<float>::Zero(T, kD);
      team = 0;
      shared.forward_add(x, y, threads);
      EXPECT_TRUE(same_memory(y, y_one)) << "T = " << T << ", " << threads << " threads";
      if (T > 1) {  // T = 1 is below the work worth starting threads for
        EXPECT_EQ(team, threads) << "T = " << T;
      }
    }
  }
}

#endif  // _OPENMP

TEST(ParallelFor, RunsEveryItemOnceOnAnyThreadCount) {
  for (const int threads : {1, 2, 3}) {
    std::vector<std::atomic<int>> visits(37);
    detail::parallel_for(37, threads, [&](Index item, int thread) {
      EXPECT_GE(thread, 0);
      EXPECT_LT(thread, threads);
      ++visits[static_cast<std::size_t>(item)];
    });
    for (std::size_t i = 0; i < visits.size(); ++i) EXPECT_EQ(visits[i], 1) << "item " << i << ", " << threads << " threads";
  }
  int calls = 0;
  detail::parallel_for(0, 2, [&](Index, int) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ParallelFor, RethrowsAfterEveryItemRan) {
  for (const int threads : {1, 2}) {
    std::atomic<int> ran{0};
    try {
      detail::parallel_for(10, threads, [&](Index item, int) {
        ++ran;
        if (item == 5) throw std::runtime_error("item 5");
      });
      ADD_FAILURE() << "no exception";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "item 5");
    }
    EXPECT_EQ(ran, 10) << threads << " threads";
  }
}

}  // namespace
}  // namespace moe
