// ExpertRunner over a batch, for experts with a fast path (SwiGluExpert; FfnExpert with biases) and
// without (LinearExpert), whole experts and 16-row tiles: the forward against each expert's own
// forward() on its rows, the routing weights folded in on the fast path only, inference and
// training with the same bits, backward against per-block expert.backward calls, and the same bits
// on 1, 2 and 3 threads (checked to be used), also when backward splits products over threads.
#include "dispatch/runner_cases.hpp"

#include "support/compare.hpp"

#include <moe/testing/gradient_check.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::ExpertBatch;
using moe::ExpertRunner;
using moe::Index;
using moe::RowMatrix;
using moe::SavedBlocks;
using moe::test::random_matrix;
using namespace moe::test::runner;

using ExpertTypes = ::testing::Types<moe::SwiGluExpert<float>, moe::SwiGluExpert<double>, moe::GeluExpert<float>,
                                     moe::GeluExpert<double>, moe::LinearExpert<float>, moe::LinearExpert<double>>;

template <class X>
class RunnerTest : public ::testing::Test {};
TYPED_TEST_SUITE(RunnerTest, ExpertTypes);

constexpr Index kTiles[] = {0, 16};  // whole experts; tiles of 16 rows (several per expert)

template <class S>
bool same_bits(const S* a, const S* b, Index size) {
  return std::memcmp(a, b, sizeof(S) * static_cast<std::size_t>(size)) == 0;
}

// The batch's output rows (overwritten), and nothing past them; `scaled` false (even when it was
// left set), in inference and in training, on batches with and without empty experts.
TYPED_TEST(RunnerTest, ForwardIsEachExpertOnItsRows) {
  using X = TypeParam;
  using S = typename X::Scalar;
  X experts = make_experts<X>();
  const Index d = experts.d_model();
  for (const auto& rows : {kRows, kEdges})
    for (const Index tile : kTiles)
      for (const bool training : {false, true}) {
        SCOPED_TRACE(testing::Message() << "tile " << tile << (training ? ", training" : ", inference"));
        ExpertBatch<S> batch = make_batch<S>(rows, d, 1);
        batch.scaled = true;
        ExpertRunner<X> runner(tile);
        SavedBlocks<S> saved;
        if (training)
          runner.forward(experts, batch, saved, 1);
        else
          runner.forward(experts, batch, 1);
        EXPECT_FALSE(batch.scaled);
        const Index n = batch.num_rows();
        MOE_EXPECT_CLOSE(S, RowMatrix<S>(batch.out.topRows(n)), reference_forward(experts, batch));
        EXPECT_TRUE(batch.out.bottomRows(3).array().isNaN().all()) << "rows past the batch";
      }
}

// Inference (weights packed ahead, then reused) and training (each panel packed as it is used)
// give the same bits.
TYPED_TEST(RunnerTest, InferenceAndTrainingGiveTheSameBits) {
  using X = TypeParam;
  using S = typename X::Scalar;
  X experts = make_experts<X>();
  for (const Index tile : kTiles) {
    SCOPED_TRACE(testing::Message() << "tile " << tile);
    ExpertRunner<X> runner(tile);
    ExpertBatch<S> first = make_batch<S>(kRows, experts.d_model(), 2), again = first, training = first;
    SavedBlocks<S> saved;
    runner.forward(experts, first, 1);
    runner.forward(experts, again, 1);
    runner.forward(experts, training, saved, 1);
    const Index size = first.num_rows() * experts.d_model();
    EXPECT_TRUE(same_bits(again.out.data(), first.out.data(), size)) << "the packed copies reused";
    EXPECT_TRUE(same_bits(training.out.data(), first.out.data(), size)) << "training";
  }
}

// With batch.scale, inference on the fast path stores scale[row] · out and sets batch.scaled; any
// other expert leaves the outputs unscaled (combine applies the weights), and so does training.
TYPED_TEST(RunnerTest, ScalesAreFoldedInOnTheFastPathOnly) {
  using X = TypeParam;
  using S = typename X::Scalar;
  X experts = make_experts<X>();
  for (const Index tile : kTiles)
    for (const bool training : {false, true}) {
      SCOPED_TRACE(testing::Message() << "tile " << tile << (training ? ", training" : ", inference"));
      ExpertBatch<S> batch = make_batch<S>(kRows, experts.d_model(), 3);
      const RowMatrix<S> scale = random_matrix<S>(batch.num_rows(), 1, 4);
      batch.scale.assign(scale.data(), scale.data() + scale.size());
      ExpertRunner<X> runner(tile);
      SavedBlocks<S> saved;
      if (training)
        runner.forward(experts, batch, saved, 1);
      else
        runner.forward(experts, batch, 1);
      const bool folded = moe::PackedExpert<X> && !training;
      EXPECT_EQ(batch.scaled, folded);
      RowMatrix<S> expected = reference_forward(experts, batch);
      if (folded) expected.array().colwise() *= scale.col(0).array();
      MOE_EXPECT_CLOSE(S, RowMatrix<S>(batch.out.topRows(batch.num_rows())), expected);
    }
}

// A broadcast batch (shared experts): every expert on all of x, read in place from a block of a
// wider matrix, expert i's outputs at rows [i·T, i·T + T).
TYPED_TEST(RunnerTest, BroadcastRunsEveryExpertOnAllOfX) {
  using X = TypeParam;
  using S = typename X::Scalar;
  X experts = make_experts<X>();
  const Index d = experts.d_model(), T = 37;
  const RowMatrix<S> wide = random_matrix<S>(T, d + 3, 5);
  for (const Index tile : kTiles)
    for (const bool training : {false, true}) {
      SCOPED_TRACE(testing::Message() << "tile " << tile << (training ? ", training" : ", inference"));
      ExpertBatch<S> batch;
      batch.broadcast(wide.leftCols(d), kExperts);
      batch.reserve(d);
      ExpertRunner<X> runner(tile);
      SavedBlocks<S> saved;
      if (training)
        runner.forward(experts, batch, saved, 1);
      else
        runner.forward(experts, batch, 1);
      const RowMatrix<S> x = wide.leftCols(d);
      for (Index i = 0; i < kExperts; ++i) {
        RowMatrix<S> expected(T, d);
        std::vector<S> scratch(static_cast<std::size_t>(experts.scratch_size(T)));
        experts.forward(i, x, expected, scratch);
        MOE_EXPECT_CLOSE(S, RowMatrix<S>(batch.out.middleRows(i * T, T)), expected);
      }
    }
}

// Backward: d_in (overwritten: NaN beforehand) and every gradient against expert.backward called
// block by block, each block's working memory from the expert's own forward(), gradients summed
// over an expert's blocks; the runner's saved memory is that working memory, block by block. A
// second backward gives the same d_in and adds the same gradients again (accumulated: twice the
// first, up to the rounding of adding into the sums).
TYPED_TEST(RunnerTest, BackwardIsPerBlockExpertBackward) {
  using X = TypeParam;
  using S = typename X::Scalar;
  X experts = make_experts<X>();
  const Index d = experts.d_model();
  for (const auto& rows : {kRows, kEdges, kOneExpert})
    for (const Index tile : kTiles) {
      SCOPED_TRACE(testing::Message() << "tile " << tile);
      ExpertBatch<S> batch = make_batch<S>(rows, d, 6);
      const Index n = batch.num_rows();
      ExpertRunner<X> runner(tile);
      SavedBlocks<S> saved;
      runner.forward(experts, batch, saved, 1);
      const RowMatrix<S> d_out = random_matrix<S>(n, d, 7);
      RowMatrix<S> d_in = RowMatrix<S>::Constant(n, d, std::numeric_limits<S>::quiet_NaN());
      auto grads = experts.make_gradients();
      runner.backward(experts, batch, saved, d_out, d_in, grads, 1);

      RowMatrix<S> d_in_expected(n, d);
      auto grads_expected = experts.make_gradients();
      const std::vector<Block> blocks = blocks_of(batch, tile);
      ASSERT_EQ(saved.offset.size(), blocks.size() + 1);
      for (std::size_t b = 0; b < blocks.size(); ++b) {
        const Block& block = blocks[b];
        const auto x = block_input(batch, block);
        std::vector<S> memory(static_cast<std::size_t>(experts.scratch_size(block.rows)));
        std::vector<S> scratch(static_cast<std::size_t>(experts.backward_scratch_size(block.rows)));
        RowMatrix<S> y(block.rows, d);
        experts.forward(block.expert, x, y, memory);
        experts.backward(block.expert, x, memory, d_out.middleRows(block.begin, block.rows),
                         d_in_expected.middleRows(block.begin, block.rows), grads_expected, scratch);
        const Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>> kept(saved.memory.data() + saved.offset[b],
                                                                        saved.offset[b + 1] - saved.offset[b]),
            kept_expected(memory.data(), Index(memory.size()));
        MOE_EXPECT_CLOSE(S, kept, kept_expected);
      }
      ASSERT_TRUE(d_in.allFinite());
      const auto as_doubles = [](const RowMatrix<S>& m) { return std::vector<double>(m.data(), m.data() + m.size()); };
      EXPECT_LE(moe::testing::relative_error(as_doubles(d_in), as_doubles(d_in_expected)), gradient_tolerance<S>());
      const auto once = tensors(grads), expected = tensors(grads_expected);
      ASSERT_EQ(once.size(), expected.size());
      for (std::size_t t = 0; t < once.size(); ++t)
        EXPECT_LE(moe::testing::relative_error(once[t].second, expected[t].second), gradient_tolerance<S>()) << once[t].first;

      RowMatrix<S> d_in_again(n, d);
      runner.backward(experts, batch, saved, d_out, d_in_again, grads, 1);
      EXPECT_TRUE(same_bits(d_in_again.data(), d_in.data(), n * d));
      const auto twice = tensors(grads);
      for (std::size_t t = 0; t < once.size(); ++t) {
        std::vector<double> doubled = once[t].second;
        for (double& v : doubled) v *= 2;
        EXPECT_LE(moe::testing::relative_error(twice[t].second, doubled), gradient_tolerance<S>()) << once[t].first;
      }
    }
}

// 1, 2 and 3 threads: the same outputs (inference and training), saved memory, d_in and gradients,
// bit for bit — and the work really was spread over that many threads: blocks or panel ranges in
// forward, experts in backward, or (one expert with rows) each of backward's products.
TYPED_TEST(RunnerTest, ThreadsGiveTheSameBits) {
  using X = TypeParam;
  using S = typename X::Scalar;
  std::atomic<int> widest{0};
  Probed<X> experts(make_experts<X>(), &widest);
  const Index d = experts.d_model();
  for (const auto& rows : {kRows, kOneExpert})
    for (const Index tile : kTiles) {
      struct Run {
        ExpertBatch<S> inference, training;
        SavedBlocks<S> saved;
        RowMatrix<S> d_in;
        std::vector<std::pair<std::string, std::vector<double>>> grads;
        int forward_team = 0, backward_team = 0;
      };
      const auto run = [&](int threads) {
        Run r{make_batch<S>(rows, d, 8), make_batch<S>(rows, d, 8), {}, {}, {}};
        ExpertRunner<Probed<X>> runner(tile);
        widest = 0;
        runner.forward(experts, r.inference, threads);
        runner.forward(experts, r.training, r.saved, threads);
        r.forward_team = widest.exchange(0);
        const Index n = r.training.num_rows();
        r.d_in.resize(n, d);
        auto grads = experts.make_gradients();
        runner.backward(experts, r.training, r.saved, random_matrix<S>(n, d, 9), r.d_in, grads, threads);
        r.backward_team = widest.exchange(0);
        r.grads = tensors(grads);
        return r;
      };
      const Run one = run(1);
      for (const int threads : {2, 3}) {
        SCOPED_TRACE(testing::Message() << (rows == kOneExpert ? "one expert with rows" : "four experts with rows")
                                        << ", tile " << tile << ", " << threads << " threads");
        const Run many = run(threads);
        const Index n = one.training.num_rows();
        EXPECT_TRUE(same_bits(many.inference.out.data(), one.inference.out.data(), n * d)) << "inference";
        EXPECT_TRUE(same_bits(many.training.out.data(), one.training.out.data(), n * d)) << "training";
        EXPECT_TRUE(many.saved.memory == one.saved.memory) << "saved memory";
        EXPECT_TRUE(same_bits(many.d_in.data(), one.d_in.data(), n * d)) << "d_in";
        EXPECT_TRUE(many.grads == one.grads) << "gradients";
#ifdef _OPENMP
        const bool one_block = rows == kOneExpert && (!moe::PackedExpert<X> && tile == 0);
        EXPECT_EQ(many.forward_team, one_block ? 1 : threads);
        EXPECT_EQ(many.backward_team, rows == kOneExpert && !Probed<X>::kSplits ? 1 : threads);
#endif
      }
    }
}

// No rows at all: nothing written, nothing scaled, no gradient.
TYPED_TEST(RunnerTest, NoRowsAtAll) {
  using X = TypeParam;
  using S = typename X::Scalar;
  X experts = make_experts<X>();
  const Index d = experts.d_model();
  for (const Index tile : kTiles) {
    ExpertBatch<S> batch = make_batch<S>(kNone, d, 10);
    ExpertRunner<X> runner(tile);
    SavedBlocks<S> saved;
    runner.forward(experts, batch, 2);
    EXPECT_FALSE(batch.scaled);
    runner.forward(experts, batch, saved, 2);
    EXPECT_TRUE(batch.out.array().isNaN().all());
    RowMatrix<S> d_in(0, d);
    auto grads = experts.make_gradients();
    runner.backward(experts, batch, saved, RowMatrix<S>(0, d), d_in, grads, 2);
    for (const auto& [name, values] : tensors(grads))
      EXPECT_TRUE(std::all_of(values.begin(), values.end(), [](double v) { return v == 0; })) << name;
  }
}

}  // namespace
