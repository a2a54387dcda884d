// Placement: which rank of a communicator runs which of a layer's experts — in contiguous ranges
// (rank r runs [r·E/n, (r+1)·E/n)), or as the user says (expert e on rank rank_of_expert[e]: hot
// experts apart, say). The experts' order by rank, ascending inside a rank, numbers their
// positions: rank r runs the positions [first(r), first(r + 1)), and its bank holds its experts
// in that order (experts(r)).
#pragma once

#include "moe/errors.hpp"
#include "moe/mpi/communicator.hpp"
#include "moe/types.hpp"

#include <mpi.h>

#include <algorithm>
#include <vector>

namespace moe::mpi {

class Placement {
 public:
  // Contiguous ranges of num_experts over comm's ranks.
  static Placement contiguous(MPI_Comm comm, Index num_experts) {
    const Index n = detail::size_of(comm);
    std::vector<int> ranks(static_cast<std::size_t>(std::max<Index>(num_experts, 0)));
    for (Index e = 0; e < num_experts; ++e) ranks[static_cast<std::size_t>(e)] = static_cast<int>(e * n / num_experts);
    return Placement(comm, std::move(ranks));
  }

  // Collective: every rank passes the same rank_of_expert, each entry a rank of comm, every rank
  // running at least one expert (config_error on every rank if not).
  Placement(MPI_Comm comm, std::vector<int> rank_of_expert) : owner_(std::move(rank_of_expert)) {
    constexpr const char* who = "MpiExchange";
    detail::check_agree_each(comm, who, "the number of experts", "the rank of expert", {owner_.begin(), owner_.end()});
    const int n = detail::size_of(comm);
    for (Index e = 0; e < num_experts(); ++e)
      moe::detail::check_config(owner(e) >= 0 && owner(e) < n, who, "expert ", e, " is placed on rank ", owner(e),
                                " but the communicator has ranks 0 to ", n - 1);
    first_.assign(static_cast<std::size_t>(n + 1), 0);
    for (Index e = 0; e < num_experts(); ++e) ++first_[static_cast<std::size_t>(owner(e)) + 1];
    for (int r = 0; r < n; ++r) {
      moe::detail::check_config(first_[static_cast<std::size_t>(r) + 1] > 0, who, "rank ", r, " of ", n,
                                " runs no expert (", num_experts(), " experts)");
      first_[static_cast<std::size_t>(r) + 1] += first_[static_cast<std::size_t>(r)];
    }
    std::vector<Index> next(first_.begin(), first_.end() - 1);
    position_.resize(owner_.size());
    for (Index e = 0; e < num_experts(); ++e)
      position_[static_cast<std::size_t>(e)] = next[static_cast<std::size_t>(owner(e))]++;
  }

  Index num_experts() const { return static_cast<Index>(owner_.size()); }
  int ranks() const { return static_cast<int>(first_.size()) - 1; }
  // The rank that runs expert e, and e's position.
  int owner(Index e) const { return owner_[static_cast<std::size_t>(e)]; }
  Index position(Index e) const { return position_[static_cast<std::size_t>(e)]; }
  // Rank r runs the positions [first(r), first(r + 1)).
  Index first(int rank) const { return first_[static_cast<std::size_t>(rank)]; }
  // The experts rank r runs, in the order of its bank.
  std::vector<Index> experts(int rank) const {
    std::vector<Index> ids;
    for (Index e = 0; e < num_experts(); ++e)
      if (owner(e) == rank) ids.push_back(e);
    return ids;
  }

 private:
  std::vector<int> owner_;       // [E] the rank of each expert
  std::vector<Index> first_;     // [ranks + 1]
  std::vector<Index> position_;  // [E]
};

}  // namespace moe::mpi
