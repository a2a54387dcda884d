// A step of a layer whose experts are split over MPI ranks, made safe against errors on one rank:
// first every rank's argument checks, agreed on by all, then the step's collectives. A bad argument
// on one rank is then an exception on every rank instead of a collective the others wait in
// forever; an exception inside the step, where the other ranks may already wait, ends the job with
// its message (the way MPI programs end on an error they cannot recover from).
#pragma once

#include "moe/mpi/communicator.hpp"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

namespace moe::mpi::detail {

// Every rank learns the first rank whose checks failed (if any) and its message: the ranks that
// failed rethrow their own exception, the others throw mpi_error "rank r of n: <message>".
inline void agree(MPI_Comm comm, const std::exception_ptr& error, std::string message) {
  const int rank = rank_of(comm), ranks = size_of(comm);
  int failed = error ? rank : ranks;
  check(MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
  if (failed == ranks) return;
  long long length = static_cast<long long>(message.size());
  check(MPI_Bcast(&length, 1, MPI_LONG_LONG, failed, comm), "MPI_Bcast");
  message.resize(static_cast<std::size_t>(length));
  check(MPI_Bcast(message.data(), static_cast<int>(length), MPI_CHAR, failed, comm), "MPI_Bcast");
  if (error) std::rethrow_exception(error);
  MOE_THROW(mpi_error(moe::detail::concat("rank ", failed, " of ", ranks, ": ", message)));
}

// Prints "moe: rank r of n: <what>; ending the job" and ends every rank's process (MPI_Abort).
[[noreturn]] inline void abort_job(MPI_Comm comm, const char* what) {
  std::fprintf(stderr, "moe: rank %d of %d: %s; ending the job\n", rank_of(comm), size_of(comm), what);
  std::fflush(stderr);
  MPI_Abort(comm, 1);
  std::abort();  // MPI_Abort does not return
}

// checks() on every rank of comm, agreed on (agree), then body(); an exception out of body() ends
// the job (abort_job). Returns body()'s result.
template <class Checks, class Body>
decltype(auto) collective(MPI_Comm comm, Checks&& checks, Body&& body) {
  std::exception_ptr error;
  std::string message;
  try {
    checks();
  } catch (const std::exception& e) {
    error = std::current_exception(), message = e.what();
  } catch (...) {
    error = std::current_exception(), message = "an exception not derived from std::exception";
  }
  agree(comm, error, message);
  try {
    return body();
  } catch (const std::exception& e) {
    abort_job(comm, e.what());
  } catch (...) {
    abort_job(comm, "an exception not derived from std::exception");
  }
}

}  // namespace moe::mpi::detail
