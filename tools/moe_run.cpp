// moe-run — run one MoE layer of a Hugging Face checkpoint on a batch of tokens from a .npy file.
//
//   moe-run --weights model.safetensors --format mixtral
//           --prefix model.layers.3.block_sparse_moe. --input x.npy --output y.npy [--stats]
//
// The layer is read with moe::io::load_checkpoint_layer (shapes from the file; routing options
// from the flags, defaulting to the format's HF config defaults). x is [T, d_model] (float16,
// float32 or float64); y is written as float32 [T, d_model]. --check REF.npy compares y with a
// reference and fails when max |y − ref| > tolerance · max |ref| (what the ctest tests use); then
// nothing is written. --backward DY.npy adds the backward of L = Σ y ⊙ DY: d_x and every parameter's
// gradient under the checkpoint's names, to compare with PyTorch autograd (--check-dx, --check-grads). The output replaces only a regular file or makes a new one, never one of
// the inputs (moe::io's writers refuse devices, FIFOs, sockets and, without --follow-symlinks,
// symbolic links). Exit status: 0 on success (and --help), 2 on bad arguments (with the usage),
// 1 on any other error or a failed --check. Built with MOE_WITH_MPI, it runs under mpirun -np N
// with the same flags: the experts and the tokens split over the ranks, y and d_x the same bytes
// (moe_run_ranks.hpp).
#include "moe_run_ranks.hpp"

#include <moe/io/checkpoint_gradients.hpp>
#include <moe/moe.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace {

constexpr const char* kUsage = R"(usage: moe-run --weights FILE|INDEX|DIR --format mixtral|qwen2-moe|deepseek-v2|deepseek-v3
               --input X.npy --output Y.npy [--prefix P]
               [--top-k K] [--norm-topk-prob 0|1] [--n-group G] [--topk-group G] [--routed-scale S]
               [--dtype f32|bf16] [--stats] [--check REF.npy [--tolerance R]] [--follow-symlinks]
               [--backward DY.npy [--dx-output DX.npy] [--grad-output G.safetensors]
                [--check-dx REF.npy] [--check-grads REF.safetensors]]
  --weights     the checkpoint: a safetensors file, a sharded model's model.safetensors.index.json,
                or a directory holding either
  --format      the checkpoint's naming and routing
  --prefix      the layer's tensor prefix, e.g. model.layers.3.block_sparse_moe. (default: none)
  --input       tokens [T, d_model] (.npy, float16/32/64);  --output: y [T, d_model] (.npy, float32)
  --top-k ...   routing values the file does not hold (default: the format's HF defaults)
  --dtype       the experts' weights in memory: f32, or bf16 (rounded to nearest even; a BF16
                file's values exactly). Default: bf16 if the file's experts are BF16, else f32
  --stats       print the routing statistics (tokens per expert, imbalance, entropy)
  --check       compare y with REF.npy; fail, writing nothing, if max|y - ref| > R * max|ref|
                (R >= 0, default 1e-5)
  --backward    DY.npy: also run the training forward (y from it) and the backward of
                L = sum(y * DY); then --dx-output DX.npy writes dL/dx, --grad-output G.safetensors
                every parameter's gradient under the checkpoint's names (float32), and
                --check-dx REF.npy / --check-grads REF.safetensors compare them as --check does
                (reference gradients named as the checkpoint's tensors, or "grad." + that name)
  --follow-symlinks   an --output that is a symbolic link writes its target (default: refused)
)";

struct UsageError {
  std::string message;
};
struct HelpRequested {};

template <class T>
T number(std::string_view flag, const std::string& text) {
  T value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size())
    throw UsageError{std::string(flag) + ": '" + text + "' is not a valid number"};
  return value;
}

struct Arguments {
  std::map<std::string, std::string, std::less<>> values;
  bool stats = false, follow_symlinks = false;

  static Arguments parse(int argc, char** argv) {
    static const std::string_view with_value[] = {"--weights", "--format", "--prefix", "--input", "--output",
                                                  "--top-k", "--norm-topk-prob", "--n-group", "--topk-group",
                                                  "--routed-scale", "--check", "--tolerance", "--dtype", "--backward",
                                                  "--dx-output", "--grad-output", "--check-dx", "--check-grads"};
    Arguments args;
    for (int i = 1; i < argc; ++i) {
      const std::string_view flag = argv[i];
      if (flag == "--stats" || flag == "--follow-symlinks") {
        (flag == "--stats" ? args.stats : args.follow_symlinks) = true;
        continue;
      }
      if (flag == "--help" || flag == "-h") throw HelpRequested{};
      if (std::find(std::begin(with_value), std::end(with_value), flag) == std::end(with_value))
        throw UsageError{"unknown argument '" + std::string(flag) + "'"};
      if (i + 1 >= argc) throw UsageError{std::string(flag) + " needs a value"};
      if (!args.values.emplace(std::string(flag), argv[++i]).second)
        throw UsageError{std::string(flag) + " given twice"};
    }
    for (const char* required : {"--weights", "--format", "--input", "--output"})
      if (!args.values.contains(required)) throw UsageError{std::string("missing ") + required};
    if (!args.get("--backward"))
      for (const char* needs : {"--dx-output", "--grad-output", "--check-dx", "--check-grads"})
        if (args.get(needs)) throw UsageError{std::string(needs) + " needs --backward"};
    std::error_code ignored;  // a path that does not exist is no input
    for (const char* output : {"--output", "--dx-output", "--grad-output"})
      for (const char* other : {"--weights", "--input", "--check", "--backward", "--check-dx", "--check-grads",
                                "--output", "--dx-output", "--grad-output"}) {
        const std::string *out = args.get(output), *path = args.get(other);
        if (out && path && std::string_view(other) != output && std::filesystem::equivalent(*path, *out, ignored))
          throw UsageError{std::string(output) + " is the same file as " + other};
      }
    return args;
  }
  const std::string* get(std::string_view flag) const {
    const auto it = values.find(flag);
    return it == values.end() ? nullptr : &it->second;
  }
};

moe::io::CheckpointOptions routing_options(const Arguments& args) {
  moe::io::CheckpointOptions o;
  if (auto* v = args.get("--top-k")) o.top_k = number<moe::Index>("--top-k", *v);
  if (o.top_k && *o.top_k < 1) throw UsageError{"--top-k: '" + *args.get("--top-k") + "' but expected at least 1"};
  if (auto* v = args.get("--n-group")) o.n_group = number<moe::Index>("--n-group", *v);
  if (auto* v = args.get("--topk-group")) o.topk_group = number<moe::Index>("--topk-group", *v);
  if (auto* v = args.get("--routed-scale")) o.routed_scaling_factor = number<double>("--routed-scale", *v);
  if (auto* v = args.get("--norm-topk-prob")) {
    if (*v != "0" && *v != "1") throw UsageError{"--norm-topk-prob: '" + *v + "' but expected 0 or 1"};
    o.norm_topk_prob = *v == "1";
  }
  return o;
}

void print_stats(const moe::RoutingStats& s) {
  std::printf("tokens %lld, assignments %lld, dropped %lld, unused experts %lld\n", (long long)s.num_tokens,
              (long long)s.assignments, (long long)s.dropped, (long long)s.unused_experts);
  std::printf("imbalance (max/mean load) %.3f, router entropy %.4f nats\n", s.imbalance(), s.router_entropy);
  for (std::size_t e = 0; e < s.tokens_per_expert.size(); ++e)
    std::printf("  expert %3zu: %6lld tokens (%5.1f%%)\n", e, (long long)s.tokens_per_expert[e],
                100.0 * s.load_fraction[e]);
}

// max |a - ref| / max |ref| (1 for a shape mismatch, which fails any tolerance below 1).
double relative_error(const moe::RowMatrix<float>& a, const moe::RowMatrix<float>& ref) {
  if (a.rows() != ref.rows() || a.cols() != ref.cols()) return 1;
  const double scale = ref.size() > 0 ? ref.cwiseAbs().maxCoeff() : 0.0;
  return a.size() > 0 ? (a - ref).cwiseAbs().maxCoeff() / (scale > 0 ? scale : 1.0) : 0.0;
}

// Prints the comparison; false (after saying so on stderr) when it fails.
bool report(const std::string& what, const std::string& reference, double error, double tolerance) {
  std::printf("check %s against %s: max |ours - ref| / max |ref| = %.3g (tolerance %.3g)\n", what.c_str(),
              reference.c_str(), error, tolerance);
  if (error <= tolerance) return true;
  std::fprintf(stderr, "moe-run: check of %s failed: %.3g exceeds the tolerance %.3g; nothing written\n", what.c_str(),
               error, tolerance);
  return false;
}

// Our gradients against a file of reference gradients named as the checkpoint's tensors (or
// "grad." + that name, as tests/parity's fixtures): every tensor on either side must match.
bool check_gradients(const moe::io::SafetensorsWriter& gradients, const std::string& reference_path, double tolerance) {
  const auto ours = moe::io::SafetensorsFile::from_bytes(gradients.bytes());
  const auto reference = moe::io::SafetensorsFile::open(reference_path);
  double worst = 0;
  for (const auto& name : reference.names()) {
    const std::string mine = name.starts_with("grad.") ? name.substr(5) : name;
    if (!ours.contains(mine)) {
      std::fprintf(stderr, "moe-run: check of the gradients failed: %s has '%s', which the layer has no gradient for\n",
                   reference_path.c_str(), name.c_str());
      return false;
    }
    worst = std::max(worst, relative_error(ours.read<float>(mine), reference.read<float>(name)));
  }
  if (reference.size() != ours.size()) {
    std::fprintf(stderr, "moe-run: check of the gradients failed: %zu tensors in %s, %zu in the layer\n",
                 reference.size(), reference_path.c_str(), ours.size());
    return false;
  }
  return report(std::to_string(ours.size()) + " gradients", reference_path, worst, tolerance);
}

// The layer's forward on x (and with --backward its backward), the report and the checks, then
// the outputs, for expert weights in format F.
template <class F>
int run_layer(const Arguments& args, const moe::io::CheckpointFiles& file, moe::io::CheckpointFormat format,
              Ranks& ranks) {
  const std::string* d_y_path = args.get("--backward");
  auto options = routing_options(args);
  options.inference_only = d_y_path == nullptr;  // then keep just the packed (e.g. bf16) expert weights
  const std::string prefix = args.get("--prefix") ? *args.get("--prefix") : "";
  const double tolerance = args.get("--tolerance") ? number<double>("--tolerance", *args.get("--tolerance")) : 1e-5;
  if (!(tolerance >= 0) || !std::isfinite(tolerance))
    throw UsageError{"--tolerance: '" + *args.get("--tolerance") + "' but expected a finite number >= 0"};
  auto layer = ranks.load<F>(file, format, prefix, options);
  const auto read_tokens = [&](const std::string& path) {
    auto m = moe::io::NpyFile::open(path).read<float>();
    if (m.cols() != layer.d_model())
      throw moe::shape_error(path + ": " + std::to_string(m.cols()) + " columns but the layer's d_model = " +
                             std::to_string(layer.d_model()));
    return m;
  };
  const auto all_x = read_tokens(*args.get("--input"));
  const auto [first, count] = ranks.share(all_x.rows());
  const moe::RowMatrix<float> x = all_x.middleRows(first, count);
  moe::RowMatrix<float> y(x.rows(), x.cols()), d_x;
  std::optional<moe::io::SafetensorsWriter> gradients;
  if (d_y_path) {  // the training forward (y from it) and the backward of L = sum(y * d_y)
    const auto d_y = read_tokens(*d_y_path);
    if (d_y.rows() != all_x.rows())
      throw moe::shape_error(*d_y_path + ": " + std::to_string(d_y.rows()) + " rows but x has " +
                             std::to_string(all_x.rows()));
    typename decltype(layer)::Cache cache;
    auto grads = layer.make_gradients();
    d_x.resize(x.rows(), x.cols());
    layer.forward(x, y, cache);
    layer.backward(cache, d_y.middleRows(first, count), d_x, grads);
    gradients = ranks.gradients(grads, format, prefix);
    d_x = ranks.gather(d_x, all_x.rows());
  } else {
    layer.forward(x, y);
  }
  y = ranks.gather(y, all_x.rows());
  if (!ranks.leads()) return 0;
  std::printf("%s layer '%s' (%s weights): %lld experts, top-%lld, d_model %lld, d_ff %lld%s; %lld tokens\n",
              moe::io::format_name(format).data(), prefix.c_str(), F::name, (long long)layer.num_experts(),
              (long long)layer.gate().config().top_k, (long long)layer.d_model(), (long long)layer.experts().d_ff(),
              layer.shared() ? " + shared experts" : "", (long long)all_x.rows());
  if (args.stats) {
    std::printf("kernels: %s (this CPU: %s); routed expert weights in memory: %.1f MB%s\n", layer.kernels().c_str(),
                moe::isa_name(moe::detected_isa()).data(), double(std::as_const(layer).experts().weight_bytes()) * 1e-6,
                ranks.count() > 1 ? (" on rank 0 of " + std::to_string(ranks.count())).c_str() : "");
    print_stats(layer.last_stats());
  }

  // Every check before any output: a failed one leaves nothing behind.
  if (const auto* path = args.get("--check"))
    if (!report("y", *path, relative_error(y, moe::io::NpyFile::open(*path).read<float>()), tolerance)) return 1;
  if (const auto* path = args.get("--check-dx"))
    if (!report("d_x", *path, relative_error(d_x, moe::io::NpyFile::open(*path).read<float>()), tolerance)) return 1;
  if (const auto* path = args.get("--check-grads"))
    if (!check_gradients(*gradients, *path, tolerance)) return 1;
  const moe::io::WriteOptions write{.follow_symlinks = args.follow_symlinks};
  moe::io::write_npy(*args.get("--output"), y, write);
  std::printf("wrote %s\n", args.get("--output")->c_str());
  if (const auto* path = args.get("--dx-output")) {
    moe::io::write_npy(*path, d_x, write);
    std::printf("wrote %s\n", path->c_str());
  }
  if (const auto* path = args.get("--grad-output")) {
    gradients->write(*path, write);
    std::printf("wrote %s (%zu gradients)\n", path->c_str(), gradients->size());
  }
  return 0;
}

int run(const Arguments& args, Ranks& ranks) {
  const auto format = moe::io::parse_format(*args.get("--format"));
  if (!format) throw UsageError{"--format: '" + *args.get("--format") + "' is not a known format"};
  const auto file = moe::io::CheckpointFiles::open(*args.get("--weights"));
  std::error_code ignored;
  for (const char* output : {"--output", "--dx-output", "--grad-output"})
    for (const auto& input : file.paths())
      if (const std::string* out = args.get(output); out && std::filesystem::equivalent(input, *out, ignored))
        throw UsageError{std::string(output) + " is the same file as " + input.string() + ", read for --weights"};
  std::string dtype = args.get("--dtype") ? *args.get("--dtype") : "";
  if (dtype.empty()) {  // the file's
    const std::string prefix = args.get("--prefix") ? *args.get("--prefix") : "";
    dtype = moe::io::expert_dtype(file, *format, prefix) == moe::io::Dtype::BF16 ? "bf16" : "f32";
  }
  if (dtype == "f32") return run_layer<moe::F32>(args, file, *format, ranks);
  if (dtype == "bf16") return run_layer<moe::Bf16>(args, file, *format, ranks);
  throw UsageError{"--dtype: '" + dtype + "' is not f32 or bf16"};
}

}  // namespace

// Under mpirun every rank meets the same argument errors: rank 0 reports them.
int main(int argc, char** argv) {
  Ranks ranks(argc, argv);
  try {
    return run(Arguments::parse(argc, argv), ranks);
  } catch (const HelpRequested&) {
    if (ranks.leads()) std::fputs(kUsage, stdout);
    return 0;
  } catch (const UsageError& e) {
    if (!ranks.leads()) return 2;
    if (!e.message.empty()) std::fprintf(stderr, "moe-run: %s\n", e.message.c_str());
    std::fputs(kUsage, stderr);
    return 2;
  } catch (const std::exception& e) {
    if (ranks.leads()) std::fprintf(stderr, "moe-run: %s\n", e.what());
    return 1;
  }
}
