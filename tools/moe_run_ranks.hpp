// How moe-run splits its work: one process (a build without MPI, or -np 1), or the ranks of
// MPI_COMM_WORLD under mpirun (a build with MOE_WITH_MPI): each rank loads only its experts
// (moe::mpi::load_checkpoint_layer) and runs its share of the tokens, in order; rank 0 gathers
// y, d_x and the gradients, prints, checks and writes. The same flags either way, and the same
// bytes of y and d_x (expert parallelism is bit-equal to one process).
#pragma once

#include <moe/io/checkpoint_gradients.hpp>
#include <moe/moe.hpp>

#include <algorithm>
#include <cstddef>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#ifdef MOE_RUN_WITH_MPI
#include <moe/mpi/checkpoint.hpp>
#include <moe/mpi/replicated.hpp>

#include <mpi.h>
#endif

class Ranks {
 public:
#ifdef MOE_RUN_WITH_MPI
  Ranks(int& argc, char**& argv) {
    MPI_Init(&argc, &argv);
    rank_ = moe::mpi::detail::rank_of(MPI_COMM_WORLD);
    count_ = moe::mpi::detail::size_of(MPI_COMM_WORLD);
  }
  ~Ranks() { MPI_Finalize(); }
#else
  Ranks(int&, char**&) {}
#endif
  Ranks(const Ranks&) = delete;
  Ranks& operator=(const Ranks&) = delete;

  // Whether this process prints and writes (rank 0).
  bool leads() const { return rank_ == 0; }
  int count() const { return count_; }

  // This process's tokens of T: [first, first + count).
  std::pair<moe::Index, moe::Index> share(moe::Index T) const {
    const moe::Index first = T * rank_ / count_;
    return {first, T * (rank_ + 1) / count_ - first};
  }

  // The layer, with this process's experts.
  template <class F>
  auto load(const moe::io::CheckpointFiles& file, moe::io::CheckpointFormat format, const std::string& prefix,
            const moe::io::CheckpointOptions& options) {
#ifdef MOE_RUN_WITH_MPI
    exchange_.emplace(MPI_COMM_WORLD, moe::io::checkpoint_num_experts(file, format, prefix));
    return moe::mpi::load_checkpoint_layer<float, F>(file, format, *exchange_, prefix, options);
#else
    return moe::io::load_checkpoint_layer<float, F>(file, format, prefix, options);
#endif
  }

  // Every process's rows, in rank order, on rank 0 (elsewhere: empty).
  moe::RowMatrix<float> gather(const moe::RowMatrix<float>& mine, moe::Index T) const {
#ifdef MOE_RUN_WITH_MPI
    if (count_ > 1) {
      std::vector<int> rows(static_cast<std::size_t>(count_)), at(static_cast<std::size_t>(count_));
      for (int r = 0; r < count_; ++r) {
        rows[std::size_t(r)] = int(T * (r + 1) / count_ - T * r / count_);
        at[std::size_t(r)] = int(T * r / count_);
      }
      moe::RowMatrix<float> all(leads() ? T : 0, mine.cols());
      const moe::mpi::detail::RowType<float> row(mine.cols());
      moe::mpi::detail::check(MPI_Gatherv(mine.data(), int(mine.rows()), row.get(), all.data(), rows.data(), at.data(),
                                          row.get(), 0, MPI_COMM_WORLD),
                              "MPI_Gatherv");
      return all;
    }
#endif
    (void)T;
    return mine;
  }

  // The gradients under the checkpoint's names: the replicated parts summed over the ranks, each
  // expert's from its rank (on rank 0; elsewhere: empty).
  template <class Gradients>
  moe::io::SafetensorsWriter gradients(Gradients& grads, moe::io::CheckpointFormat format,
                                       const std::string& prefix) const {
#ifdef MOE_RUN_WITH_MPI
    if (count_ > 1) {
      moe::mpi::sum_replicated_gradients(MPI_COMM_WORLD, grads);
      const auto mine = moe::io::checkpoint_gradients(grads, format, prefix, exchange_->experts());
      if (!leads()) {
        send(mine.bytes());
        return {};
      }
      moe::io::SafetensorsWriter all;
      std::set<std::string> added;  // every rank has the replicated tensors: take rank 0's
      for (int r = 0; r < count_; ++r) {
        const auto file = moe::io::SafetensorsFile::from_bytes(r == 0 ? mine.bytes() : receive(r));
        for (const auto& name : file.names())
          if (added.insert(name).second) all.add(name, file.template read<float>(name));
      }
      return all;
    }
#endif
    return moe::io::checkpoint_gradients(grads, format, prefix);
  }

 private:
#ifdef MOE_RUN_WITH_MPI
  static constexpr std::size_t kPiece = std::size_t(1) << 30;  // bytes per message: within MPI's int counts

  static void send(const std::vector<std::byte>& bytes) {
    long long size = static_cast<long long>(bytes.size());
    moe::mpi::detail::check(MPI_Send(&size, 1, MPI_LONG_LONG, 0, 0, MPI_COMM_WORLD), "MPI_Send");
    for (std::size_t at = 0; at < bytes.size(); at += kPiece)
      moe::mpi::detail::check(MPI_Send(bytes.data() + at, int(std::min(kPiece, bytes.size() - at)), MPI_BYTE, 0, 0,
                                       MPI_COMM_WORLD),
                              "MPI_Send");
  }
  static std::vector<std::byte> receive(int from) {
    long long size = 0;
    moe::mpi::detail::check(MPI_Recv(&size, 1, MPI_LONG_LONG, from, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Recv");
    std::vector<std::byte> bytes(static_cast<std::size_t>(size));
    for (std::size_t at = 0; at < bytes.size(); at += kPiece)
      moe::mpi::detail::check(MPI_Recv(bytes.data() + at, int(std::min(kPiece, bytes.size() - at)), MPI_BYTE, from, 0,
                                       MPI_COMM_WORLD, MPI_STATUS_IGNORE),
                              "MPI_Recv");
    return bytes;
  }

  std::optional<moe::mpi::MpiExchange<float>> exchange_;
#endif
  int rank_ = 0, count_ = 1;
};
