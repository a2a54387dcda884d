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

namespace {  // the counters the replaced allocation functions below add to
std::atomic<long> allocations{0}, allocated_bytes{0};
void count(std::size_t bytes) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  allocated_bytes.fetch_add(long(bytes), std::memory_order_relaxed);
}
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
  count(size);
  return __libc_malloc(size);
}
void* calloc(std::size_t items, std::size_t size) {
  count(items * size);
  return __libc_calloc(items, size);
}
void* realloc(void* p, std::size_t size) {
  count(size);
  return __libc_realloc(p, size);
}
void* aligned_alloc(std::size_t alignment, std::size_t size) {
  count(size);
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t size) {
  count(size);
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

// Bytes allocated by call().
template <class Call>
long bytes_of(Call&& call) {
  const long before = allocated_bytes.load();
  call();
  return allocated_bytes.load() - before;
}

template <class S>
long plan_bytes(const RoutingPlan<S>& plan) {
  return long(sizeof(S)) * long(plan.weight.size() + plan.logits.size() + plan.scores.size()) +
         long(sizeof(std::int32_t) + 1) * long(plan.expert.size());
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

// A chunked forward allocates the routing of the batch and the buffers of one chunk.
TEST(Workspace, ChunkedForwardAllocatesForAChunkNotTheBatch) {
  if (!kCounting) GTEST_SKIP() << "AddressSanitizer owns malloc";
  constexpr Index kBig = 8192, kChunk = 64;
  const RowMatrix<float> small = random_matrix<float>(kChunk, kDModel, 906);
  const RowMatrix<float> big = random_matrix<float>(kBig, kDModel, 907);
  RowMatrix<float> y(kBig, kDModel);
  auto whole = deepseek_layer<float>(), chunked = whole;
  whole.set_chunk_tokens(0);
  chunked.set_chunk_tokens(kChunk);
  whole.forward(small, y.topRows(kChunk));
  chunked.forward(small, y.topRows(kChunk));
  const long for_whole = bytes_of([&] { whole.forward(big, y); });
  const long for_chunks = bytes_of([&] { chunked.forward(big, y); });
  const long routing = 2 * plan_bytes(chunked.last_plan());  // the workspace's plan, and last_plan()
  EXPECT_LT(for_chunks, routing + for_whole / 20) << "whole batch: " << for_whole << " bytes";
}

// Copying a layer copies its parameters and last plan, not the buffers of its forwards and backward.
TEST(Workspace, CopyingALayerCopiesNoBuffers) {
  if (!kCounting) GTEST_SKIP() << "AddressSanitizer owns malloc";
  auto layer = deepseek_layer<float>();
  layer.prepack();  // packed weights are weights: a copy has them
  const long fresh = bytes_of([&] { const auto copy = layer; });
  constexpr Index kBig = 4096;
  const RowMatrix<float> x = random_matrix<float>(kBig, kDModel, 908), d_y = random_matrix<float>(kBig, kDModel, 909);
  RowMatrix<float> y(kBig, kDModel), d_x(kBig, kDModel);
  typename DeepSeekLayer<float>::Cache cache;
  auto grads = layer.make_gradients();
  layer.forward(x, y);
  layer.forward(x, y, cache);
  layer.backward(cache, d_y, d_x, grads);
  const long used = bytes_of([&] { const auto copy = layer; });
  EXPECT_LE(used - fresh, plan_bytes(layer.last_plan()) + 4096);
  layer.release_workspace();
  EXPECT_GT(allocations_of([&] { layer.forward(x.topRows(1), y.topRows(1)); }), 0) << "released: grows back";
}

}  // namespace
}  // namespace moe
