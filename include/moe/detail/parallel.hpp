// The layer's own threading (OpenMP, optional). Work items are independent and write disjoint
// memory, so results do not depend on the thread count; Eigen's own GEMM threading is kept off
// (docs/architecture.md §8), because its blocking depends on the number of threads and so would its bits.
#pragma once

#include "moe/types.hpp"

#include <exception>
#include <mutex>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace moe::detail {

#ifdef _OPENMP
// OpenMP's default thread count as it was before the outermost EigenSingleThreaded on this thread
// lowered it to 1 (0 while none is alive).
inline thread_local int outer_default_threads = 0;
#endif

// Threads the layer uses when asked for `requested` (0: OpenMP's default; 1 without OpenMP).
// Inside an EigenSingleThreaded scope, "OpenMP's default" still means the default outside it.
inline int resolve_threads(int requested) {
#ifdef _OPENMP
  if (requested > 0) return requested;
  return outer_default_threads > 0 ? outer_default_threads : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

// While alive, parallel regions started on this thread (Eigen's included) get one thread unless
// they ask for more with num_threads(): the layer's Eigen products run single-threaded.
class EigenSingleThreaded {
 public:
#ifdef _OPENMP
  EigenSingleThreaded() : saved_(omp_get_max_threads()), saved_outer_(outer_default_threads) {
    if (outer_default_threads == 0) outer_default_threads = saved_;
    omp_set_num_threads(1);
  }
  ~EigenSingleThreaded() {
    omp_set_num_threads(saved_);
    outer_default_threads = saved_outer_;
  }
#else
  EigenSingleThreaded() = default;  // the deleted copy constructor suppresses the implicit one
#endif
  EigenSingleThreaded(const EigenSingleThreaded&) = delete;
  EigenSingleThreaded& operator=(const EigenSingleThreaded&) = delete;

 private:
  [[maybe_unused]] int saved_ = 1;
  [[maybe_unused]] int saved_outer_ = 0;
};

// `threads`, or one for less than ~1M multiply-adds of work: starting threads costs more than tiny
// batches take (and spinning threads hurt on a busy machine). Bits are the same either way.
inline int threads_for_work(Index work, int threads) { return work < (Index(1) << 20) ? 1 : threads; }

// Calls body(item, thread) for item in [0, num_items) on `threads` threads (dynamic schedule).
// An exception thrown by a body is rethrown here after every thread has stopped.
template <class Body>
void parallel_for(Index num_items, int threads, Body&& body) {
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
  std::exception_ptr error;
  std::mutex error_mutex;
  const auto run = [&](Index item, int thread) {
    try {
      body(item, thread);
    } catch (...) {
      const std::lock_guard lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
#else
  const auto run = [&](Index item, int thread) { body(item, thread); };
#endif
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#endif
  for (Index item = 0; item < num_items; ++item) {
#ifdef _OPENMP
    run(item, omp_get_thread_num());
#else
    (void)threads;
    run(item, 0);
#endif
  }
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
  if (error) std::rethrow_exception(error);
#endif
}

}  // namespace moe::detail
