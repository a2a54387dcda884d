// MpiExchange: the layer's exchange seam (docs/architecture.md §5) over MPI — expert parallelism.
// The experts are split over the ranks of a communicator, in contiguous ranges (rank r runs
// experts [r·E/n, (r+1)·E/n)) or as an explicit placement says (expert e on rank placement[e]:
// hot experts apart, say: mpi/placement.hpp); a rank's bank holds its experts in ascending order
// (experts()). Every rank holds the router and the shared experts and routes its own tokens,
// which stay home. A forward:
//
//   dispatch  this rank's active slots sorted by expert (so by destination rank), every rank's
//             per-expert counts (MPI_Allgather), the rows to the ranks of their experts
//             (MPI_Alltoallv, one row per element) and their routing weights; each expert's rows
//             are then laid out source rank by source rank — in global token order when the batch's
//             tokens are split over the ranks in order, as in one process;
//   combine   the outputs back home (MPI_Alltoallv), summed over a token's slots in slot order;
//
// and backward the same two moves in reverse (d_out to the experts, d_in back home). Every row
// meets the same arithmetic as in one process, so y, d_x and every expert's gradients have the
// bits of the single-process layer on the whole batch (tests/mpi). Every call is a collective:
// every rank of the communicator must make it, in the same order.
#pragma once

#include "moe/dispatch/expert_batch.hpp"
#include "moe/dispatch/local_exchange.hpp"
#include "moe/kernels/combine.hpp"
#include "moe/kernels/dispatch.hpp"
#include "moe/mpi/collective.hpp"
#include "moe/mpi/communicator.hpp"
#include "moe/mpi/placement.hpp"
#include "moe/routing.hpp"

#include <mpi.h>

#include <cstdint>
#include <span>
#include <vector>

namespace moe::mpi {

template <class S>
class MpiExchange {
 public:
  // Where one forward's rows went; kept by the layer's cache for backward.
  struct Record {
    DispatchPlan local;                 // this rank's active slots by expert: slot -> local row
    std::vector<long long> loads;       // [ranks × E] rows each rank sends to each expert
    std::vector<int> send_rows, send_at, recv_rows, recv_at;  // per rank, in rows
    std::vector<Index> batch_row;       // [received rows] the batch row of each received row
    RowMatrix<S> home;                  // the experts' outputs back home, in local order
    // scratch: rows in local order out, in received order in
    mutable RowMatrix<S> sent, received;
    std::vector<S> scales_sent, scales_received;
  };

  // Experts in contiguous ranges. Collective: every rank of comm passes the same num_experts
  // (config_error on every rank if not).
  MpiExchange(MPI_Comm comm, Index num_experts) : MpiExchange(comm, Placement::contiguous(comm, num_experts)) {}
  // Expert e on rank placement[e] (see Placement; collective).
  MpiExchange(MPI_Comm comm, std::vector<int> placement) : MpiExchange(comm, Placement(comm, std::move(placement))) {}
  // A placement made for comm (config_error if it was made for a communicator of another size).
  MpiExchange(MPI_Comm comm, Placement placement)
      : comm_(comm), placement_(std::move(placement)), rank_(detail::rank_of(comm)) {
    moe::detail::check_config(placement_.ranks() == detail::size_of(comm), "MpiExchange", "a placement over ",
                              placement_.ranks(), " ranks for a communicator of ", detail::size_of(comm));
  }

  MPI_Comm communicator() const { return comm_; }
  int rank() const { return rank_; }
  int ranks() const { return placement_.ranks(); }
  Index num_experts() const { return placement_.num_experts(); }
  const Placement& placement() const { return placement_; }
  // The rank that runs expert e.
  int owner(Index e) const { return placement_.owner(e); }
  // The experts this rank runs, in the order of its bank.
  std::vector<Index> experts() const { return placement_.experts(rank_); }

  // This rank's experts as a range of the exchange's order (by rank, ascending inside a rank):
  // the layer's expert ids only for contiguous ranges — experts() names them.
  ExpertRange owned(Index num_experts) const {
    MOE_ASSERT(num_experts == placement_.num_experts());
    return {first(rank_), first(rank_ + 1) - first(rank_)};
  }
  // Exchanges every rank runs when this one needs `rounds` (chunked inference): the most any needs.
  Index rounds(Index rounds) const {
    const Timed timed{traffic_};
    long long most = rounds;
    detail::check(MPI_Allreduce(MPI_IN_PLACE, &most, 1, MPI_LONG_LONG, MPI_MAX, comm_), "MPI_Allreduce");
    return static_cast<Index>(most);
  }

  // values = their sum over the ranks (routing statistics, losses): counts exactly, reals in
  // rank order (the same bits on every rank).
  void sum(std::span<Index> values) const {
    const Timed timed{traffic_};
    static_assert(sizeof(Index) == sizeof(std::int64_t));
    detail::check(MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_INT64_T, MPI_SUM,
                                comm_),
                  "MPI_Allreduce");
  }
  void sum(std::span<double> values) const {
    const Timed timed{traffic_};
    detail::sum_in_rank_order(comm_, values.data(), static_cast<Index>(values.size()));
  }

  // This rank's time in the exchange's calls (MPI and the copies around it, waiting for other ranks
  // included) and the bytes of rows it sent to other ranks, since reset_traffic(): what
  // bench_expert_parallel reports. Like every call of an MPI exchange, not for concurrent calls.
  struct Traffic {
    double seconds = 0, bytes_sent = 0;
  };
  Traffic traffic() const { return traffic_; }
  void reset_traffic() const { traffic_ = {}; }

  void check_same(const char* who, const char* what, long long value) const {
    detail::check_agree(comm_, who, what, value);
  }

  // One step of the layer: see mpi::detail::collective.
  template <class Checks, class Body>
  decltype(auto) collective(Checks&& checks, Body&& body) const {
    return detail::collective(comm_, checks, body);
  }

  void dispatch(const RoutingPlan<S>& plan, ConstMatrixRef<S> x, ExpertRange owned, bool with_scales, Record& record,
                ExpertBatch<S>& batch) const {
    const Timed timed{traffic_};
    MOE_ASSERT(plan.num_experts == num_experts() && owned.first == first(rank_));
    const Index E = num_experts(), k = plan.slots_per_token(), d = x.cols();
    const int n = ranks();
    kernels::build_dispatch(plan, record.local, [&](Index e) { return placement_.position(e); });
    const auto& offset = record.local.offset;
    std::vector<long long> mine(offset.size() - 1);
    for (Index e = 0; e < E; ++e) mine[static_cast<std::size_t>(e)] = record.local.rows_of(e);
    record.loads.resize(static_cast<std::size_t>(n * E));
    detail::check(MPI_Allgather(mine.data(), static_cast<int>(E), MPI_LONG_LONG, record.loads.data(),
                                static_cast<int>(E), MPI_LONG_LONG, comm_),
                  "MPI_Allgather");
    plan_moves(record, owned);

    record.sent.resize(record.local.num_rows(), d);
    kernels::gather_rows<S>(x, record.local.token, record.sent);
    record.received.resize(total(record.recv_rows), d);
    move_rows(record.sent, record.send_rows, record.send_at, record.received, record.recv_rows, record.recv_at);

    // The batch: owned expert i's rows from rank 0, then rank 1, ...
    batch.gathered();
    batch.first_expert = owned.first;
    batch.offset.assign(1, 0);
    for (Index i = 0; i < owned.count; ++i) {
      long long rows = 0;
      for (int s = 0; s < n; ++s) rows += load(record, s, owned.first + i);
      batch.offset.push_back(batch.offset.back() + static_cast<Index>(rows));
    }
    batch.reserve(d);
    record.batch_row.resize(static_cast<std::size_t>(record.received.rows()));
    std::vector<Index> next(batch.offset.begin(), batch.offset.end() - 1);  // next batch row of each expert
    for (int s = 0; s < n; ++s) {
      Index j = record.recv_at[static_cast<std::size_t>(s)];
      for (Index i = 0; i < owned.count; ++i)
        for (long long c = 0; c < load(record, s, owned.first + i); ++c, ++j) {
          const Index to = next[static_cast<std::size_t>(i)]++;
          record.batch_row[static_cast<std::size_t>(j)] = to;
          batch.rows.row(to) = record.received.row(j);
        }
    }
    batch.scale.clear();
    if (!with_scales) return;
    record.scales_sent.resize(static_cast<std::size_t>(record.local.num_rows()));
    for (Index slot = 0; slot < plan.weight.size(); ++slot)
      if (const auto r = record.local.row[static_cast<std::size_t>(slot)]; r != kEmptySlot)
        record.scales_sent[static_cast<std::size_t>(r)] = plan.weight(slot / k, slot % k);
    record.scales_received.resize(record.batch_row.size());
    detail::check(MPI_Alltoallv(record.scales_sent.data(), record.send_rows.data(), record.send_at.data(),
                                detail::scalar_type<S>(), record.scales_received.data(), record.recv_rows.data(),
                                record.recv_at.data(), detail::scalar_type<S>(), comm_),
                  "MPI_Alltoallv");
    batch.scale.resize(static_cast<std::size_t>(batch.num_rows()));
    for (std::size_t j = 0; j < record.batch_row.size(); ++j)
      batch.scale[static_cast<std::size_t>(record.batch_row[j])] = record.scales_received[j];
  }

  // y[t] = Σ_j w[t, j] · out[row(t, j)], j ascending, with the outputs brought home (kept in the
  // record for backward).
  void combine(const RoutingPlan<S>& plan, Record& record, const ExpertBatch<S>& batch, MatrixRef<S> y) const {
    const Timed timed{traffic_};
    for (std::size_t j = 0; j < record.batch_row.size(); ++j)
      record.received.row(static_cast<Index>(j)) = batch.out.row(record.batch_row[j]);
    record.home.resize(record.local.num_rows(), y.cols());
    move_rows(record.received, record.recv_rows, record.recv_at, record.home, record.send_rows, record.send_at);
    // Whether the experts applied the weights: a rank without rows cannot tell, so ask them all.
    int scaled = batch.scaled ? 1 : 0;
    detail::check(MPI_Allreduce(MPI_IN_PLACE, &scaled, 1, MPI_INT, MPI_MAX, comm_), "MPI_Allreduce");
    if (scaled)
      kernels::sum_slots<S>(record.local, plan.slots_per_token(), record.home, y);
    else
      kernels::combine<S>(plan.weight, record.local, record.home, y);
  }

  // d_out (batch order, on the experts' ranks) from d_out[row(t, j)] = w[t, j] · d_y[t] made
  // home; d_weight[t, j] = ⟨d_y[t], out[row(t, j)]⟩ there.
  void combine_backward(const RoutingPlan<S>& plan, const Record& record, const ExpertBatch<S>& batch,
                        ConstMatrixRef<S> d_y, MatrixRef<S> d_out, MatrixRef<S> d_weight) const {
    const Timed timed{traffic_};
    MOE_ASSERT(!batch.scaled);
    const Index T = plan.num_tokens(), k = plan.slots_per_token();
    d_weight.setZero();
    record.sent.resize(record.local.num_rows(), d_y.cols());
    for (Index t = 0; t < T; ++t)
      for (Index j = 0; j < k; ++j)
        if (const auto r = record.local.row[static_cast<std::size_t>(t * k + j)]; r != kEmptySlot) {
          d_weight(t, j) = d_y.row(t).dot(record.home.row(r));
          record.sent.row(r) = plan.weight(t, j) * d_y.row(t);
        }
    move_rows(record.sent, record.send_rows, record.send_at, record.received, record.recv_rows, record.recv_at);
    for (std::size_t j = 0; j < record.batch_row.size(); ++j)
      d_out.row(record.batch_row[j]) = record.received.row(static_cast<Index>(j));
  }

  // d_x[t] = Σ_j d_in[row(t, j)], j ascending, with d_in (batch order) brought home.
  void dispatch_backward(const RoutingPlan<S>& plan, const Record& record, const ExpertBatch<S>&,
                         ConstMatrixRef<S> d_in, MatrixRef<S> d_x) const {
    const Timed timed{traffic_};
    for (std::size_t j = 0; j < record.batch_row.size(); ++j)
      record.received.row(static_cast<Index>(j)) = d_in.row(record.batch_row[j]);
    record.sent.resize(record.local.num_rows(), d_x.cols());
    move_rows(record.received, record.recv_rows, record.recv_at, record.sent, record.send_rows, record.send_at);
    kernels::sum_slots<S>(record.local, plan.slots_per_token(), record.sent, d_x);
  }

 private:
  long long load(const Record& record, int rank, Index expert) const {
    return record.loads[static_cast<std::size_t>(rank * num_experts() + expert)];
  }
  static Index total(const std::vector<int>& rows) {
    Index sum = 0;
    for (const int r : rows) sum += r;
    return sum;
  }

  // The rows this rank sends to each rank (its slots for that rank's experts) and receives from
  // each (that rank's slots for this rank's experts), with their starting rows.
  void plan_moves(Record& record, ExpertRange owned) const {
    const int n = ranks();
    record.send_rows.assign(static_cast<std::size_t>(n), 0);
    record.recv_rows.assign(static_cast<std::size_t>(n), 0);
    record.send_at.assign(static_cast<std::size_t>(n), 0);
    record.recv_at.assign(static_cast<std::size_t>(n), 0);
    const auto& offset = record.local.offset;
    for (int r = 0; r < n; ++r) {
      const auto begin = static_cast<std::size_t>(first(r)), end = static_cast<std::size_t>(first(r + 1));
      record.send_at[static_cast<std::size_t>(r)] = checked(offset[begin]);
      record.send_rows[static_cast<std::size_t>(r)] = checked(offset[end] - offset[begin]);
      long long rows = 0;
      for (Index i = 0; i < owned.count; ++i) rows += load(record, r, owned.first + i);
      record.recv_rows[static_cast<std::size_t>(r)] = checked(rows);
      if (r > 0)
        record.recv_at[static_cast<std::size_t>(r)] =
            record.recv_at[static_cast<std::size_t>(r) - 1] + record.recv_rows[static_cast<std::size_t>(r) - 1];
    }
  }
  static int checked(long long rows) {
    if (rows > 0x7fffffffLL)
      MOE_THROW(mpi_error(moe::detail::concat("MpiExchange: ", rows, " rows in one message, more than MPI counts")));
    return static_cast<int>(rows);
  }

  // to (rows received from each rank, at to_at) = from (rows sent to each rank, at from_at).
  void move_rows(const RowMatrix<S>& from, const std::vector<int>& from_rows, const std::vector<int>& from_at,
                 RowMatrix<S>& to, const std::vector<int>& to_rows, const std::vector<int>& to_at) const {
    const detail::RowType<S> row(from.cols());
    for (int r = 0; r < ranks(); ++r)
      if (r != rank_) traffic_.bytes_sent += double(from_rows[std::size_t(r)]) * double(from.cols() * Index(sizeof(S)));
    detail::check(MPI_Alltoallv(from.data(), from_rows.data(), from_at.data(), row.get(), to.data(), to_rows.data(),
                                to_at.data(), row.get(), comm_),
                  "MPI_Alltoallv");
  }

  Index first(int rank) const { return placement_.first(rank); }

  struct Timed {
    Traffic& traffic;
    double start = MPI_Wtime();
    ~Timed() { traffic.seconds += MPI_Wtime() - start; }
  };

  MPI_Comm comm_;
  Placement placement_;
  int rank_ = 0;
  mutable Traffic traffic_;
};

}  // namespace moe::mpi
