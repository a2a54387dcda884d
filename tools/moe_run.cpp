// moe-run — run one MoE layer of a Hugging Face checkpoint on a batch of tokens from a .npy file.
//
//   moe-run --weights model.safetensors --format mixtral
//           --prefix model.layers.3.block_sparse_moe. --input x.npy --output y.npy [--stats]
//
// The layer is read with moe::io::load_checkpoint_layer (shapes from the file; routing options
// from the flags, defaulting to the format's HF config defaults). x is [T, d_model] (float16,
// float32 or float64); y is written as float32 [T, d_model]. --check REF.npy compares y with a
// reference and fails when max |y − ref| > tolerance · max |ref| (what the ctest tests use); then
// nothing is written. The output replaces only a regular file or makes a new one, never one of
// the inputs (moe::io's writers refuse devices, FIFOs, sockets and, without --follow-symlinks,
// symbolic links). Exit status: 0 on success (and --help), 2 on bad arguments (with the usage),
// 1 on any other error or a failed --check.
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

constexpr const char* kUsage = R"(usage: moe-run --weights FILE --format mixtral|qwen2-moe|deepseek-v2|deepseek-v3
               --input X.npy --output Y.npy [--prefix P]
               [--top-k K] [--norm-topk-prob 0|1] [--n-group G] [--topk-group G] [--routed-scale S]
               [--dtype f32|bf16] [--stats] [--check REF.npy [--tolerance R]] [--follow-symlinks]
  --weights     a safetensors file holding the layer
  --format      the checkpoint's naming and routing
  --prefix      the layer's tensor prefix, e.g. model.layers.3.block_sparse_moe. (default: none)
  --input       tokens [T, d_model] (.npy, float16/32/64);  --output: y [T, d_model] (.npy, float32)
  --top-k ...   routing values the file does not hold (default: the format's HF defaults)
  --dtype       the experts' weights in memory: f32, or bf16 (rounded to nearest even; a BF16
                file's values exactly). Default: bf16 if the file's experts are BF16, else f32
  --stats       print the routing statistics (tokens per expert, imbalance, entropy)
  --check       compare y with REF.npy; fail, writing nothing, if max|y - ref| > R * max|ref|
                (R >= 0, default 1e-5)
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
                                                  "--routed-scale", "--check", "--tolerance", "--dtype"};
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
    std::error_code ignored;  // a path that does not exist is no input
    for (const char* input : {"--weights", "--input", "--check"})
      if (const std::string* path = args.get(input); path && std::filesystem::equivalent(*path, *args.get("--output"), ignored))
        throw UsageError{std::string("--output is the same file as ") + input};
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

// The layer's forward on x, its report and --check, for expert weights in format F.
template <class F>
int run_layer(const Arguments& args, const moe::io::SafetensorsFile& file, moe::io::CheckpointFormat format) {
  auto options = routing_options(args);
  options.inference_only = true;  // keep just the packed (e.g. bf16) expert weights
  const std::string prefix = args.get("--prefix") ? *args.get("--prefix") : "";
  const double tolerance = args.get("--tolerance") ? number<double>("--tolerance", *args.get("--tolerance")) : 1e-5;
  if (!(tolerance >= 0) || !std::isfinite(tolerance))
    throw UsageError{"--tolerance: '" + *args.get("--tolerance") + "' but expected a finite number >= 0"};
  auto layer = moe::io::load_checkpoint_layer<float, F>(file, format, prefix, options);
  const auto x = moe::io::NpyFile::open(*args.get("--input")).read<float>();
  if (x.cols() != layer.d_model())
    throw moe::shape_error(*args.get("--input") + ": " + std::to_string(x.cols()) + " columns but the layer's d_model = " +
                           std::to_string(layer.d_model()));
  moe::RowMatrix<float> y(x.rows(), x.cols());
  layer.forward(x, y);
  std::printf("%s layer '%s' (%s weights): %lld experts, top-%lld, d_model %lld, d_ff %lld%s; %lld tokens\n",
              moe::io::format_name(format).data(), prefix.c_str(), F::name, (long long)layer.num_experts(),
              (long long)layer.gate().config().top_k, (long long)layer.d_model(), (long long)layer.experts().d_ff(),
              layer.shared() ? " + shared experts" : "", (long long)x.rows());
  if (args.stats) {
    std::printf("kernels: %s (this CPU: %s); routed expert weights in memory: %.1f MB\n", layer.kernels().c_str(),
                moe::isa_name(moe::detected_isa()).data(), double(std::as_const(layer).experts().weight_bytes()) * 1e-6);
    print_stats(layer.last_stats());
  }

  if (const auto* reference_path = args.get("--check")) {
    const auto reference = moe::io::NpyFile::open(*reference_path).read<float>();
    if (reference.rows() != y.rows() || reference.cols() != y.cols())
      throw moe::shape_error(*reference_path + ": shape differs from the output");
    const double scale = reference.cwiseAbs().maxCoeff();
    const double error = (y - reference).cwiseAbs().maxCoeff() / (scale > 0 ? scale : 1.0);
    std::printf("check against %s: max |y - ref| / max |ref| = %.3g (tolerance %.3g)\n", reference_path->c_str(),
                error, tolerance);
    if (!(error <= tolerance)) {
      std::fprintf(stderr, "moe-run: check failed: max |y - ref| / max |ref| = %.3g exceeds the tolerance %.3g; %s not written\n",
                   error, tolerance, args.get("--output")->c_str());
      return 1;
    }
  }
  moe::io::write_npy(*args.get("--output"), y, moe::io::WriteOptions{.follow_symlinks = args.follow_symlinks});
  std::printf("wrote %s\n", args.get("--output")->c_str());
  return 0;
}

int run(const Arguments& args) {
  const auto format = moe::io::parse_format(*args.get("--format"));
  if (!format) throw UsageError{"--format: '" + *args.get("--format") + "' is not a known format"};
  const auto file = moe::io::SafetensorsFile::open(*args.get("--weights"));
  std::string dtype = args.get("--dtype") ? *args.get("--dtype") : "";
  if (dtype.empty()) {  // the file's
    const std::string prefix = args.get("--prefix") ? *args.get("--prefix") : "";
    dtype = moe::io::expert_dtype(file, *format, prefix) == moe::io::Dtype::BF16 ? "bf16" : "f32";
  }
  if (dtype == "f32") return run_layer<moe::F32>(args, file, *format);
  if (dtype == "bf16") return run_layer<moe::Bf16>(args, file, *format);
  throw UsageError{"--dtype: '" + dtype + "' is not f32 or bf16"};
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(Arguments::parse(argc, argv));
  } catch (const HelpRequested&) {
    std::fputs(kUsage, stdout);
    return 0;
  } catch (const UsageError& e) {
    if (!e.message.empty()) std::fprintf(stderr, "moe-run: %s\n", e.message.c_str());
    std::fputs(kUsage, stderr);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-run: %s\n", e.what());
    return 1;
  }
}
