// What moe::mpi needs of MPI: errors as exceptions, agreement between ranks, and the row type that
// carries one token's activations (counts in rows, not scalars, so a batch of any size fits MPI's
// int counts).
#pragma once

#include "moe/errors.hpp"
#include "moe/types.hpp"

#include <mpi.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace moe::mpi {

// An MPI call that failed, or ranks that disagree.
struct mpi_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {

inline void check(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  MOE_THROW(mpi_error(moe::detail::concat(call, " failed: ", std::string(text, static_cast<std::size_t>(length)))));
}

inline int rank_of(MPI_Comm comm) {
  int rank = 0;
  check(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  return rank;
}
inline int size_of(MPI_Comm comm) {
  int size = 0;
  check(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  return size;
}

// Throws config_error on every rank, naming `what` and the values seen, unless every rank of comm
// passed the same value (a collective: every rank must call it).
inline void check_agree(MPI_Comm comm, const char* who, const char* what, long long value) {
  long long range[2] = {-value, value};
  check(MPI_Allreduce(MPI_IN_PLACE, range, 2, MPI_LONG_LONG, MPI_MAX, comm), "MPI_Allreduce");
  if (-range[0] != range[1])
    MOE_THROW(config_error(moe::detail::concat(who, ": the ranks disagree on ", what, ": from ", -range[0], " to ",
                                               range[1], " (this rank: ", value, ")")));
}

// check_agree for the number of `values` (`count_what`), then for each (`what` i): the error names
// the first that differs.
inline void check_agree_each(MPI_Comm comm, const char* who, const char* count_what, const char* what,
                             const std::vector<long long>& values) {
  check_agree(comm, who, count_what, static_cast<long long>(values.size()));
  std::vector<long long> range(2 * values.size());
  for (std::size_t i = 0; i < values.size(); ++i) range[i] = -values[i], range[values.size() + i] = values[i];
  check(MPI_Allreduce(MPI_IN_PLACE, range.data(), static_cast<int>(range.size()), MPI_LONG_LONG, MPI_MAX, comm),
        "MPI_Allreduce");
  for (std::size_t i = 0; i < values.size(); ++i)
    if (-range[i] != range[values.size() + i])
      MOE_THROW(config_error(moe::detail::concat(who, ": the ranks disagree on ", what, " ", i, ": from ", -range[i],
                                                 " to ", range[values.size() + i], " (this rank: ", values[i], ")")));
}

template <class S>
MPI_Datatype scalar_type() {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double> || std::is_same_v<S, long long>);
  if constexpr (std::is_same_v<S, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<S, double>) return MPI_DOUBLE;
  else return MPI_LONG_LONG;
}

// values[0, count) = their sum over the ranks of comm, added in rank order, so that every rank
// gets the same bits whatever order MPI's own reductions take (a collective: every rank passes the
// same count). Gathered a million values at a time.
template <class T>
void sum_in_rank_order(MPI_Comm comm, T* values, Index count) {
  const int ranks = size_of(comm);
  if (ranks == 1) return;
  constexpr Index kChunk = Index(1) << 20;
  std::vector<T> all;
  for (Index at = 0; at < count; at += kChunk) {
    const Index m = std::min(kChunk, count - at);
    all.resize(static_cast<std::size_t>(m * ranks));
    check(MPI_Allgather(values + at, static_cast<int>(m), scalar_type<T>(), all.data(), static_cast<int>(m),
                        scalar_type<T>(), comm),
          "MPI_Allgather");
    for (Index i = 0; i < m; ++i) {
      T sum = all[static_cast<std::size_t>(i)];
      for (int r = 1; r < ranks; ++r) sum += all[static_cast<std::size_t>(r * m + i)];
      values[at + i] = sum;
    }
  }
}

// MPI's type of `cols` contiguous scalars: one row. Freed with the object.
template <class S>
class RowType {
 public:
  explicit RowType(Index cols) {
    check(MPI_Type_contiguous(static_cast<int>(cols), scalar_type<S>(), &type_), "MPI_Type_contiguous");
    check(MPI_Type_commit(&type_), "MPI_Type_commit");
  }
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;
  ~RowType() { MPI_Type_free(&type_); }
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

}  // namespace detail
}  // namespace moe::mpi
