// 01 — quick start: build a Mixtral-shaped sparse MoE layer, run a batch, read its routing.
//
//   moe_01_quickstart            a Mixtral 8x7B layer at 1/4 width (d_model 1024, d_ff 3584, 8 experts, top-2)
//   moe_01_quickstart --smoke    the same code on a tiny shape (what CI runs)
//
// A sparse MoE layer sends each token to k of E experts chosen by a learned router and adds their
// outputs with the router's weights: E times the parameters of one FFN, k times its compute.
#include <moe/moe.hpp>

#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <string>

int main(int argc, char** argv) {
  const bool smoke = argc > 1 && std::strcmp(argv[1], "--smoke") == 0;
  const moe::Index d_model = smoke ? 32 : 1024, d_ff = smoke ? 64 : 3584, num_experts = 8, top_k = 2;
  const moe::Index num_tokens = smoke ? 16 : 512;

  // 1. The parts. Experts are SwiGLU FFNs, y = w2·(silu(w1·x) ⊙ w3·x), all 8 in one weight bank.
  //    The router is Mixtral's: softmax over the 8 logits, keep the top 2, renormalise to sum 1.
  using Layer = moe::SparseMoE<moe::SwiGluExpert<float>, moe::TopKGate<float>>;
  Layer layer(moe::TopKGate<float>({.d_model = d_model, .num_experts = num_experts, .top_k = top_k, .seed = 1}),
              moe::SwiGluExpert<float>({.num_experts = num_experts, .d_model = d_model, .d_ff = d_ff, .seed = 2}));

  // 2. A batch of tokens: one token per row, row-major [T, d_model].
  moe::Generator rng(3);
  moe::RowMatrix<float> x(num_tokens, d_model), y(num_tokens, d_model);
  for (moe::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(moe::standard_normal(rng));

  // 3. Forward. The first call sizes the layer's buffers; later calls of this size reuse them.
  layer.forward(x, y);
  const int repeats = smoke ? 2 : 5;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) layer.forward(x, y);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / repeats;

  // 4. What the router did with this batch.
  const moe::RoutingStats& stats = layer.last_stats();
  std::printf("moe %s — SparseMoE<SwiGLU, top-%lld of %lld>, d_model %lld, d_ff %lld, %lld tokens\n\n",
              MOE_VERSION_STRING, static_cast<long long>(top_k), static_cast<long long>(num_experts),
              static_cast<long long>(d_model), static_cast<long long>(d_ff), static_cast<long long>(num_tokens));
  std::printf("expert  tokens  load\n");
  for (moe::Index e = 0; e < num_experts; ++e)
    std::printf("%6lld  %6lld  %5.1f%%  %s\n", static_cast<long long>(e),
                static_cast<long long>(stats.tokens_per_expert[e]), 100 * stats.load_fraction[e],
                std::string(static_cast<std::size_t>(60 * stats.load_fraction[e]), '#').c_str());
  std::printf("\nassignments %lld, dropped %lld, unused experts %lld\n", static_cast<long long>(stats.assignments),
              static_cast<long long>(stats.dropped), static_cast<long long>(stats.unused_experts));
  std::printf("max/mean load %.2f (1 = perfectly balanced), router entropy %.3f nats (ln %lld = %.3f)\n",
              stats.imbalance(), stats.router_entropy, static_cast<long long>(num_experts),
              std::log(static_cast<double>(num_experts)));

  // Expert FLOPs only: three [d_model x d_ff] projections, 2 FLOPs per multiply-add, per assignment.
  const double flops = 2.0 * 3.0 * double(d_model) * double(d_ff) * double(stats.assignments);
  // The kernels are picked at run time for this CPU (MOE_ISA=generic|avx2|avx512|... caps them).
  std::printf("kernels: %s (this CPU: %s)\n", layer.kernels().c_str(), moe::isa_name(moe::detected_isa()).data());
  std::printf("forward %.2f ms: %.0f tokens/s, %.1f GFLOP/s\n", 1e3 * seconds, double(num_tokens) / seconds,
              flops / seconds * 1e-9);
  std::printf("|y| = %.4f\n", y.norm());
  return 0;
}
