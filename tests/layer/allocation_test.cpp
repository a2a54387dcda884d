// The workspace (docs/architecture.md §4): after the first call at a given shape, neither the inference forward
// nor a training step allocates. Counted by interposing glibc's allocation functions in this test
// executable (Eigen allocates with malloc, and operator new ends there too); they count, then call
// glibc's own. Not under AddressSanitizer, which interposes them itself.
#include "layer/layer_cases.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <vector>

namespace {  // the counter the replaced allocation functions below add to
std::atomic<long> allocations{0};
}  // namespace

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kCounting = false;
#else
constexpr bool kCounting = true;
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);

void* malloc(std::size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(size);
}
void* calloc(std::size_t count, std::size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(count, size);
}
void* realloc(void* p, std::size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(p, size);
}
void* aligned_alloc(std::size_t alignment, std::size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  *out = __libc_memalign(alignment, size);
  return *out ? 0 : ENOMEM;
}
}
#endif

namespace moe {
namespace MOE_TEST_FILE_ID {

using test::random_matrix;
using namespace test::cases;

// Allocations made by call().
template <class Call>
long allocations_of(Call&& call) {
  const long before = allocations.load();
  call();
  return allocations.load() - before;
}

TEST(Workspace, SecondInferenceForwardAtTheSameShapeDoesNotAllocate) {
  if (!kCounting) GTEST_SKIP() << "AddressSanitizer owns malloc";
  auto layer = mixtral_layer<float>();
  for (const int threads : {1, 2}) {
    layer.set_num_threads(threads);
    const RowMatrix<float> x1 = random_matrix<float>(kTokens, kDModel, 901), x2 = random_matrix<float>(kTokens, kDModel, 902);
    RowMatrix<float> y(kTokens, kDModel);
    layer.forward(x1, y);
    EXPECT_EQ(allocations_of([&] { layer.forward(x2, y); }), 0) << threads << " threads";
    EXPECT_GT(allocations_of([&] { RowMatrix<float> probe(3, 3); }), 0) << "the counter counts Eigen's";
    EXPECT_GT(allocations_of([&] { std::vector<int> probe(3); }), 0) << "and operator new's";
  }
}

// Backward's scratch is sized by the busiest expert, so this step repeats the same routing.
TEST(Workspace, SecondTrainingStepWithTheSameRoutingDoesNotAllocate) {
  if (!kCounting) GTEST_SKIP() << "AddressSanitizer owns malloc";
  auto layer = mixtral_layer<float>();
  auto grads = layer.make_gradients();
  typename MixtralLayer<float>::Cache cache;
  const RowMatrix<float> x1 = random_matrix<float>(kTokens, kDModel, 903), x2 = x1 * 0.5f;
  const RowMatrix<float> d_y = random_matrix<float>(kTokens, kDModel, 905);
  RowMatrix<float> y(kTokens, kDModel), d_x(kTokens, kDModel);
  layer.forward(x1, y, cache);
  layer.backward(cache, d_y, d_x, grads);
  const auto first_routing = layer.last_plan().expert;
  layer.forward(x2, y, cache);
  ASSERT_TRUE(same_bits(layer.last_plan().expert, first_routing)) << "x/2 routes as x (no router bias)";
  EXPECT_EQ(allocations_of([&] {
    layer.forward(x2, y, cache);
    layer.backward(cache, d_y, d_x, grads);
  }), 0);
}

}  // namespace
}  // namespace moe
