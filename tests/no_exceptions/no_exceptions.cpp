// Built with -fno-exceptions: the library compiles without exceptions, and an error then prints its
// message and aborts (MOE_THROW's fallback in errors.hpp). The abort is caught here so that the test
// can check the message: the program exits 0 only from the SIGABRT handler, after the message.
#include <moe/experts/gated.hpp>
#include <moe/gating/top_k_gate.hpp>
#include <moe/layer/sparse_moe.hpp>

#include <csignal>
#include <cstdio>
#include <unistd.h>

namespace {

extern "C" void on_abort(int) {
  static const char kMarker[] = "no_exceptions: aborted after the message\n";
  (void)!write(STDERR_FILENO, kMarker, sizeof(kMarker) - 1);
  _exit(0);
}

}  // namespace

int main() {
  std::signal(SIGABRT, on_abort);
  moe::SparseMoE<moe::SwiGluExpert<float>, moe::TopKGate<float>> layer(
      moe::TopKGate<float>({.d_model = 8, .num_experts = 4, .top_k = 2}),
      moe::SwiGluExpert<float>({.num_experts = 4, .d_model = 8, .d_ff = 16}));
  const moe::RowMatrix<float> x = moe::RowMatrix<float>::Ones(3, 7);
  moe::RowMatrix<float> y(3, 8);
  layer.forward(x, y);  // x.cols() = 7 but d_model = 8
  std::puts("no_exceptions: the wrong shape went unnoticed");
  return 1;
}
