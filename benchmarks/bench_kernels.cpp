// bench_kernels: the kernels of include/moe/kernels/ on their own, per weight format
// (kernels/format.hpp), on one thread, each next to this machine's limits measured in the same run
// (machine.hpp): what the layer's figures in bench_layer are made of, without routing, threads or
// the experts' stores around them.
//
// Run:
//   bench_kernels --benchmark_min_time=0.05
//   bench_kernels --benchmark_filter='Micro|Machine'       # the micro-kernel against the FMA peak
// Read (Google Benchmark appends /real_time to every name; Time is wall-clock):
//   BM_Kernel_Micro/<format>/<isa>/mr:<mr>   one call of the format's micro-kernel (micro[mr − 1])
//                 of the ISA path <isa> (moe::Isa: each rung of this machine with kernels of its own)
//                 on an A micro-panel of mr rows and a block of a B panel, both packed and both in
//                 L1 (depth kKC / 2: 16 KB of B for f32), tile [mr][kNR] overwritten; Time in ns.
//                 Every accumulator waits for its previous FMA, so few rows cannot fill the FMA
//                 units: mr = kMR is the kernel that the products run on, fewer rows are edge tiles.
//   BM_Kernel_PackedProduct/<format>/<isa>/<shape>/T:<T>   multiply_packed (kernels/packed_product.hpp)
//                 on the up projection of one expert (w1 and w3 stacked, [2·d_ff, d_model], as
//                 GatedExpert multiplies them in one product), packed once into the format's panels:
//                 x [T, d_model], packed outside the clock, times the panels, each tile stored into
//                 y [T, 2·d_ff] by store_output_tile. T ≤ the ISA's stream_rows (3 on avx512) runs decode's
//                 kernel. Decode (T ≤ 16) of a shape whose layer exceeds the L3 evicts the caches
//                 between iterations, outside the clock, as bench_layer does. mixtral-8x7b: T ≤ 16.
//   BM_Kernel_Gemm/<scalar>/<isa>/<shape>/T:<T>/<product>   kernels::gemm (kernels/gemm.hpp), the
//                 backward's GEMM, always in the layer's scalar, on two products of one expert's
//                 backward with T rows:
//                   d_w1   d_w1 += d_h1ᵀ·x   [d_ff, d_model] += [d_ff, T]·[T, d_model]: a weight
//                          gradient, as deep as the expert's rows;
//                   d_x    d_x = d_h1·w1     [T, d_model] = [T, d_ff]·[d_ff, d_model]: the weight
//                          read by columns, d_ff deep.
//                 When the layer's weights exceed the L3 the caches are evicted between iterations
//                 (the backward goes through every expert's weights and gradients). Not mixtral-8x7b.
//   BM_Machine_FmaPeak/threads:1, BM_Machine_DramRead/threads:1   the limits (machine.hpp).
// Counters:
//   GFLOPS        2·m·n·depth of the product (a multiply-add is 2 FLOPs) per second.
//   GBps          PackedProduct: bytes of the packed weights, each read once per call whatever T;
//                 Gemm: bytes of the weight-sized matrix (d_w1 read and written, w1 read).
//   peak_fraction GFLOPS over the FMA peak's loop timed on this thread right after the benchmark's
//                 own loop (machine.hpp's fma_peak_gflops: its fastest of 16 passes), so that a slow
//                 minute of the shared machine slows both. Micro always; the products above T = 16
//                 only, where they are compute-bound.
// Decode (T ≤ 16) is memory-bound: read GBps against BM_Machine_DramRead (or, for shapes that stay
// in cache, against the other shapes). Prefill is compute-bound: read peak_fraction.
#include "machine.hpp"
#include "registration.hpp"
#include "shapes.hpp"

#include <moe/detail/aligned_allocator.hpp>
#include <moe/isa.hpp>
#include <moe/kernels/bf16_format.hpp>
#include <moe/kernels/format.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/packed_product.hpp>
#include <moe/types.hpp>

#include <benchmark/benchmark.h>

#include <array>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace {

using moe::Index;
using moe::detail::AlignedVector;
using namespace moe::bench;

// GFLOPS for `flops` per iteration and, where the benchmark is compute-bound, peak_fraction: its
// rate over `seconds` (time_iterations') against the FMA peak timed now.
void add_flops(benchmark::State& state, double flops, double seconds, bool compute_bound) {
  const double gflop = flops * 1e-9 * static_cast<double>(state.iterations());
  add_rate(state, "GFLOPS", gflop);
  if (compute_bound) state.counters["peak_fraction"] = gflop / seconds / fma_peak_gflops();
}

// A random [rows, cols] matrix of S, packed by F as activations (pack_input: micro-panels of kMR
// rows).
template <class F>
AlignedVector<typename F::Input> packed_input(Index rows, Index cols) {
  using S = typename F::Scalar;
  const moe::RowMatrix<S> x = moe::RowMatrix<S>::Random(rows, cols);
  AlignedVector<typename F::Input> packed(static_cast<std::size_t>(F::input_size(rows, cols)));
  F::pack_input(moe::kernels::strided<S>(x), rows, cols, packed.data());
  return packed;
}

template <class F>
void BM_Kernel_Micro(benchmark::State& state, moe::Isa isa, int mr) {
  using S = typename F::Scalar;
  const Index depth = F::kKC / 2;
  const auto a = packed_input<F>(mr, depth);
  AlignedVector<typename F::Weight> b(static_cast<std::size_t>(depth * F::kNR));
  F::pack_weight_rows(moe::RowMatrix<S>::Random(F::kNR, depth), b.data(), 0);
  AlignedVector<S> tile(static_cast<std::size_t>(mr * F::kNR));
  const moe::kernels::detail::Lines nothing_ahead;
  const auto kernel = F::kernels(isa).micro[static_cast<std::size_t>(mr - 1)];
  const double seconds = time_iterations(state, false, [&] {
    kernel(depth, a.data(), b.data(), tile.data(), F::kNR, false, nothing_ahead);
    benchmark::DoNotOptimize(tile.data());
  });
  add_flops(state, 2.0 * mr * F::kNR * static_cast<double>(depth), seconds, true);
}

// Packed weights kept between the benchmarks that use them: one format and shape at a time
// (mixtral-8x7b's up projection is 470 MB), whatever the format.
struct PackedWeights {
  std::string key;  // <format>/<shape>
  std::shared_ptr<const void> panels;
};

PackedWeights& packed_weights() {
  static PackedWeights kept;
  return kept;
}

// The up projection of one expert of shape s (w1 and w3 stacked, [2·d_ff, d_model]) packed into
// F's panels, as pack_weight_panel packs a torch.nn.Linear weight. Benchmarks run in registration
// order, grouped by format and shape, so each is packed once per run.
template <class F>
std::span<const typename F::Weight> packed_up_projection(const Shape& s) {
  using Panels = AlignedVector<typename F::Weight>;
  PackedWeights& kept = packed_weights();
  const std::string key = std::string(F::name) + "/" + std::string(s.name);
  if (kept.key != key) {
    kept = {};  // free the previous weights before allocating these
    const Index n = 2 * s.d_ff, depth = s.d_model, count = (n + F::kNR - 1) / F::kNR;
    const moe::RowMatrix<typename F::Scalar> w = moe::RowMatrix<typename F::Scalar>::Random(n, depth);
    const Index panel_size = F::packed_depth(depth) * F::kNR;
    auto panels = std::make_shared<Panels>(static_cast<std::size_t>(count * panel_size));
    for (Index p = 0; p < count; ++p) moe::kernels::pack_weight_panel<F>(w, p, panels->data() + p * panel_size);
    kept = {key, std::move(panels)};
  }
  return *static_cast<const Panels*>(kept.panels.get());
}

template <class F>
void BM_Kernel_PackedProduct(benchmark::State& state, moe::Isa isa, const Shape& s, Index num_tokens) {
  using S = typename F::Scalar;
  const moe::ScopedIsaCap cap(isa);
  const Index n = 2 * s.d_ff, depth = s.d_model;
  const std::span<const typename F::Weight> b = packed_up_projection<F>(s);
  const Index panels = static_cast<Index>(b.size()) / (F::packed_depth(depth) * F::kNR);
  const auto a = packed_input<F>(num_tokens, depth);
  AlignedVector<S> tiles(static_cast<std::size_t>(num_tokens * F::kNR));
  moe::RowMatrix<S> y(num_tokens, n);
  moe::MatrixRef<S> out(y);
  const auto store = [&](Index i0, Index mr, Index p, const S* tile) {
    moe::kernels::store_output_tile<F>(out, i0, mr, p, tile, nullptr, nullptr);
  };
  const double seconds = time_iterations(state, evicts_caches(s, num_tokens), [&] {
    moe::kernels::detail::multiply_packed<F>(num_tokens, depth, a.data(), b.data(), 0, panels, tiles.data(), store);
    benchmark::DoNotOptimize(y.data());
  });
  add_flops(state, 2.0 * static_cast<double>(num_tokens * n * depth), seconds, num_tokens > kDecodeTokens);
  add_rate(state, "GBps", static_cast<double>(b.size_bytes()) * 1e-9 * static_cast<double>(state.iterations()));
}

// The two kinds of product of an expert's backward (see the header comment).
enum class Product { d_w1, d_x };

template <class S>
void BM_Kernel_Gemm(benchmark::State& state, moe::Isa isa, const Shape& s, Index num_tokens, Product product) {
  using moe::kernels::strided;
  const moe::ScopedIsaCap cap(isa);
  using Matrix = moe::RowMatrix<S>;
  const Index d = s.d_model, f = s.d_ff;
  const Matrix d_h1 = Matrix::Random(num_tokens, f);
  const bool weight_gradient = product == Product::d_w1;
  // d_w1: B = x [T, d_model], C = d_w1 [d_ff, d_model]; d_x: B = w1 [d_ff, d_model], C = d_x [T, d_model].
  const Matrix b = Matrix::Random(weight_gradient ? num_tokens : f, d);
  Matrix c = Matrix::Zero(weight_gradient ? f : num_tokens, d);
  const moe::kernels::Strided<S> a = weight_gradient ? strided<S>(d_h1).transposed() : strided<S>(d_h1);
  const Index depth = weight_gradient ? num_tokens : f;
  std::vector<S> workspace(static_cast<std::size_t>(moe::kernels::gemm_workspace_size<S>(c.rows(), d, depth)));
  const double seconds = time_iterations(state, weights_exceed_cache(s), [&] {
    moe::kernels::gemm<S>(a, strided<S>(b), depth, c, /*accumulate=*/weight_gradient, workspace);
    benchmark::DoNotOptimize(c.data());
  });
  add_flops(state, 2.0 * static_cast<double>(num_tokens * f * d), seconds, num_tokens > kDecodeTokens);
  const double weight_bytes = static_cast<double>(f * d) * sizeof(S) * (weight_gradient ? 2 : 1);
  add_rate(state, "GBps", weight_bytes * 1e-9 * static_cast<double>(state.iterations()));
}

// The benchmarks of weight format F on each ISA path of this machine that has kernels of its own
// for F: the micro-kernel at every row count, then the packed product on every shape.
template <class F>
void register_format() {
  for (const moe::Isa isa : moe::kernels::isa_paths<F>()) {
    const std::string prefix = std::string(F::name) + "/" + std::string(moe::isa_name(isa)) + "/";
    for (int mr = 1; mr <= F::kMR; ++mr)
      add("BM_Kernel_Micro/" + prefix + "mr:" + std::to_string(mr), BM_Kernel_Micro<F>, isa, mr)
          ->Unit(benchmark::kNanosecond);
    for (const Shape& s : kShapes)
      for (const Index num_tokens : token_counts(s))
        add("BM_Kernel_PackedProduct/" + prefix + std::string(s.name) + "/T:" + std::to_string(num_tokens),
            BM_Kernel_PackedProduct<F>, isa, s, num_tokens);
  }
}

// kernels::gemm in scalar S (named as NativeFormat<S> is) on every shape but mixtral-8x7b.
template <class S>
void register_gemm() {
  for (const moe::Isa isa : moe::kernels::isa_paths<moe::kernels::NativeFormat<S>>()) {
    const std::string prefix =
        std::string(moe::kernels::NativeFormat<S>::name) + "/" + std::string(moe::isa_name(isa)) + "/";
    for (const Shape& s : kShapes) {
      if (decode_only(s)) continue;
      for (const Index num_tokens : token_counts(s))
        for (const auto& [product, label] : {std::pair{Product::d_w1, "d_w1"}, std::pair{Product::d_x, "d_x"}})
          add("BM_Kernel_Gemm/" + prefix + std::string(s.name) + "/T:" + std::to_string(num_tokens) + "/" + label,
              BM_Kernel_Gemm<S>, isa, s, num_tokens, product);
    }
  }
}

void register_benchmarks() {
  constexpr std::array<int, 1> kOneThread{1};  // the kernels run on the calling thread
  register_machine_benchmarks(kOneThread);
  register_format<moe::kernels::NativeFormat<float>>();
  register_format<moe::kernels::Bf16Format>();
  register_gemm<float>();
}

}  // namespace

int main(int argc, char** argv) { return moe::bench::run_benchmarks(argc, argv, register_benchmarks); }
