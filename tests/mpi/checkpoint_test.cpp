// mpi::load_checkpoint_layer on the parity fixtures: each rank reads only its experts (the bank
// holds exactly those, the same values as the single-process layer's), and the layer over the
// ranks gives the single-process layer's bits on the fixture's batch split over the ranks; a file
// that fails on one rank is an exception on every rank.
#include "support/compare.hpp"
#include "support/throws.hpp"

#include <moe/moe.hpp>
#include <moe/mpi/checkpoint.hpp>

#include <gtest/gtest.h>
#include <mpi.h>

#include <filesystem>
#include <string>

namespace moe {
namespace MOE_TEST_FILE_ID {

int rank() { return mpi::detail::rank_of(MPI_COMM_WORLD); }
int ranks() { return mpi::detail::size_of(MPI_COMM_WORLD); }

std::filesystem::path fixture(const std::string& name) { return std::filesystem::path(MOE_PARITY_FIXTURES) / name; }

template <class F>
void expect_loads_its_experts(const std::string& stem, io::CheckpointFormat format, const std::string& prefix,
                              const io::CheckpointOptions& options = {}) {
  SCOPED_TRACE(testing::Message() << stem << ", " << F::name << ", rank " << rank() << " of " << ranks());
  const auto files = io::CheckpointFiles::open(fixture(stem + ".safetensors"));
  auto whole = io::load_checkpoint_layer<float, F>(files, format, prefix, options);
  const mpi::MpiExchange<float> exchange(MPI_COMM_WORLD, io::checkpoint_num_experts(files, format, prefix));
  auto part = mpi::load_checkpoint_layer<float, F>(files, format, exchange, prefix, options);
  const std::vector<Index> mine = exchange.experts();
  ASSERT_EQ(part.experts().num_experts(), Index(mine.size()));
  for (std::size_t i = 0; i < mine.size(); ++i)
    EXPECT_TRUE(test::same_bits_as_rows(part.experts().w2()[Index(i)], whole.experts().w2()[mine[i]]))
        << "expert " << mine[i];

  const RowMatrix<float> x = io::NpyFile::open(fixture(stem + "_x.npy")).read<float>();
  const Index T = x.rows(), first = T * rank() / ranks(), count = T * (rank() + 1) / ranks() - first;
  RowMatrix<float> y(T, x.cols()), my_y(count, x.cols());
  whole.forward(x, y);
  part.forward(x.middleRows(first, count), my_y);
  EXPECT_TRUE(test::same_bits_as_rows(my_y, y, first));
}

TEST(ExpertParallelCheckpoint, EachRankLoadsItsExpertsAndGivesTheSingleProcessBits) {
  expect_loads_its_experts<kernels::NativeFormat<float>>("mixtral", io::CheckpointFormat::mixtral,
                                                         "model.layers.0.block_sparse_moe.");
  expect_loads_its_experts<Bf16>("mixtral", io::CheckpointFormat::mixtral, "model.layers.0.block_sparse_moe.");
  expect_loads_its_experts<kernels::NativeFormat<float>>("qwen2_moe", io::CheckpointFormat::qwen2_moe,
                                                         "model.layers.0.mlp.");
  expect_loads_its_experts<kernels::NativeFormat<float>>("deepseek_v3", io::CheckpointFormat::deepseek_v3,
                                                         "model.layers.0.mlp.", {.top_k = 3, .n_group = 4, .topk_group = 2});
}

// Rank 0 asks for a prefix the file does not have: rank 0 gets the io_error, the others an
// mpi_error naming rank 0 — no rank waits forever.
TEST(ExpertParallelCheckpoint, AFileThatFailsOnOneRankFailsOnEvery) {
  const auto files = io::CheckpointFiles::open(fixture("mixtral.safetensors"));
  const std::string good = "model.layers.0.block_sparse_moe.";
  const mpi::MpiExchange<float> exchange(MPI_COMM_WORLD,
                                         io::checkpoint_num_experts(files, io::CheckpointFormat::mixtral, good));
  const auto load = [&] {
    mpi::load_checkpoint_layer<float>(files, io::CheckpointFormat::mixtral, exchange,
                                      rank() == 0 ? "model.layers.7.block_sparse_moe." : good);
  };
  if (rank() == 0)
    test::expect_throw_naming<io_error>(load, "model.layers.7.block_sparse_moe.");
  else
    test::expect_throw_naming<mpi::mpi_error>(load, "rank 0 of ");
}

}  // namespace MOE_TEST_FILE_ID
}  // namespace moe
