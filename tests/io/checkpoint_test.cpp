#include <moe/io/checkpoint.hpp>
#include <moe/io/safetensors_writer.hpp>

#include "io/io_files.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::io::CheckpointFormat;
using moe::io::CheckpointOptions;
using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;

constexpr Index kE = 4, kD = 8, kF = 6, kSharedF = 10;

// Writes the tensors of one HF-named layer under prefix; `seed` makes every tensor distinct.
struct HfLayer {
  CheckpointFormat format;
  std::string prefix;
  Index num_experts = kE, d_ff = kF;
  std::map<std::string, RowMatrix<float>> replaced{};  // name -> written instead of the generated tensor
  moe::io::Dtype expert_dtype = moe::io::Dtype::F32;   // of the experts' tensors

  RowMatrix<float> tensor(Index rows, Index cols, std::uint64_t seed) const {
    return moe::test::random_matrix<float>(rows, cols, seed);
  }
  void add(SafetensorsWriter& w, const std::string& name, const RowMatrix<float>& generated,
           moe::io::Dtype dtype = moe::io::Dtype::F32) const {
    const auto it = replaced.find(name);
    w.add(name, it == replaced.end() ? generated : it->second, dtype);
  }
  void write_ffn(SafetensorsWriter& w, const std::string& head, Index f, std::uint64_t seed) const {
    const bool mixtral = format == CheckpointFormat::mixtral;
    add(w, prefix + head + (mixtral ? "w1" : "gate_proj") + ".weight", tensor(f, kD, seed), expert_dtype);
    add(w, prefix + head + (mixtral ? "w3" : "up_proj") + ".weight", tensor(f, kD, seed + 1), expert_dtype);
    add(w, prefix + head + (mixtral ? "w2" : "down_proj") + ".weight", tensor(kD, f, seed + 2), expert_dtype);
  }
  SafetensorsWriter writer() const {
    SafetensorsWriter w;
    add(w, prefix + "gate.weight", tensor(num_experts, kD, 1));
    for (Index e = 0; e < num_experts; ++e)
      write_ffn(w, "experts." + std::to_string(e) + ".", d_ff, 100 + 10 * e);
    if (format == CheckpointFormat::qwen2_moe) {
      write_ffn(w, "shared_expert.", kSharedF, 7);
      w.add(prefix + "shared_expert_gate.weight", tensor(1, kD, 3));
    }
    if (format == CheckpointFormat::deepseek_v2 || format == CheckpointFormat::deepseek_v3)
      write_ffn(w, "shared_experts.", kSharedF, 7);
    if (format == CheckpointFormat::deepseek_v3)
      w.add(prefix + "gate.e_score_correction_bias", tensor(1, num_experts, 5), {num_experts});
    return w;
  }
  SafetensorsFile file() const { return SafetensorsFile::from_bytes(writer().bytes(), "layer.safetensors"); }
};

// Expects load_checkpoint_layer to throw an io_error whose message holds every one of `parts`.
void expect_io_error(const moe::io::CheckpointFiles& file, CheckpointFormat format, const std::string& prefix,
                     std::initializer_list<std::string> parts) {
  try {
    moe::io::load_checkpoint_layer<float>(file, format, prefix);
    ADD_FAILURE() << "no io_error";
  } catch (const moe::io_error& e) {
    for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, MixtralNamesMapToTheBanks) {
  const HfLayer hf{CheckpointFormat::mixtral, "model.layers.3.block_sparse_moe."};
  const auto file = hf.file();
  auto layer = moe::io::load_checkpoint_layer<float>(file, CheckpointFormat::mixtral, hf.prefix);
  EXPECT_EQ(layer.num_experts(), kE);
  EXPECT_EQ(layer.experts().d_ff(), kF);
  EXPECT_EQ(layer.shared(), nullptr);
  EXPECT_EQ(layer.gate().config().top_k, 2);
  EXPECT_TRUE(layer.gate().config().normalize);
  EXPECT_EQ(layer.gate().router().weight(), hf.tensor(kE, kD, 1));
  for (Index e = 0; e < kE; ++e) {
    EXPECT_EQ(RowMatrix<float>(layer.experts().w1()[e]), hf.tensor(kF, kD, 100 + 10 * e)) << e;
    EXPECT_EQ(RowMatrix<float>(layer.experts().w3()[e]), hf.tensor(kF, kD, 101 + 10 * e)) << e;
    EXPECT_EQ(RowMatrix<float>(layer.experts().w2()[e]), hf.tensor(kD, kF, 102 + 10 * e)) << e;
  }
}

TEST(Checkpoint, Qwen2MoeHasAGatedSharedExpert) {
  const HfLayer hf{CheckpointFormat::qwen2_moe, "model.layers.0.mlp."};
  const auto file = hf.file();
  auto layer = moe::io::load_checkpoint_layer<double>(file, CheckpointFormat::qwen2_moe, hf.prefix,
                                                      {.top_k = 3, .norm_topk_prob = true});
  EXPECT_EQ(layer.gate().config().top_k, 3);
  EXPECT_TRUE(layer.gate().config().normalize);
  ASSERT_NE(layer.shared(), nullptr);
  EXPECT_TRUE(layer.shared()->gated());
  EXPECT_EQ(layer.shared()->num_experts(), 1);
  EXPECT_EQ(layer.shared()->experts().d_ff(), kSharedF);
  EXPECT_EQ(layer.shared()->gate_weight(), hf.tensor(1, kD, 3).cast<double>());
  EXPECT_EQ(RowMatrix<double>(layer.shared()->experts().w2()[0]), hf.tensor(kD, kSharedF, 9).cast<double>());
  // HF defaults when no option is given.
  const auto plain = moe::io::load_checkpoint_layer<float>(file, CheckpointFormat::qwen2_moe, hf.prefix);
  EXPECT_EQ(plain.gate().config().top_k, 4);
  EXPECT_FALSE(plain.gate().config().normalize);
}

TEST(Checkpoint, DeepSeekV3GetsTheSelectionBiasAndGroups) {
  const HfLayer hf{CheckpointFormat::deepseek_v3, ""};
  const auto file = hf.file();
  auto layer = moe::io::load_checkpoint_layer<float>(
      file, CheckpointFormat::deepseek_v3, "", {.top_k = 2, .n_group = 2, .topk_group = 1});
  const auto& c = layer.gate().config();
  EXPECT_EQ(c.scoring, moe::Scoring::sigmoid);
  EXPECT_TRUE(c.selection_bias && c.normalize);
  EXPECT_EQ(c.scale, 2.5);
  EXPECT_EQ(c.n_group, 2);
  EXPECT_EQ(layer.gate().selection_bias().transpose(), hf.tensor(1, kE, 5));
  ASSERT_NE(layer.shared(), nullptr);
  EXPECT_FALSE(layer.shared()->gated());
  EXPECT_EQ(layer.shared()->experts().d_ff(), kSharedF);
  // The layer runs.
  RowMatrix<float> x = moe::test::random_matrix<float>(5, kD, 11), y(5, kD);
  layer.forward(x, y);
  EXPECT_TRUE(y.allFinite());
}

TEST(Checkpoint, DeepSeekV2ScalesOnlyUnnormalisedWeights) {
  const auto file = HfLayer{CheckpointFormat::deepseek_v2, ""}.file();
  const auto plain = moe::io::load_checkpoint_layer<float>(file, CheckpointFormat::deepseek_v2, "",
                                                           {.top_k = 2, .routed_scaling_factor = 16.0});
  EXPECT_EQ(plain.gate().config().scale, 16.0);
  EXPECT_EQ(plain.gate().config().scoring, moe::Scoring::softmax);
  const auto normalised = moe::io::load_checkpoint_layer<float>(
      file, CheckpointFormat::deepseek_v2, "", {.top_k = 2, .norm_topk_prob = true, .routed_scaling_factor = 16.0});
  EXPECT_EQ(normalised.gate().config().scale, 1.0);
}

TEST(Checkpoint, MissingTensorNamesFileAndTensor) {
  HfLayer hf{CheckpointFormat::mixtral, "p."};
  SafetensorsWriter w;
  w.add("p.gate.weight", hf.tensor(kE, kD, 1));
  for (Index e = 0; e < kE; ++e) {
    const std::string head = "p.experts." + std::to_string(e) + ".";
    w.add(head + "w1.weight", hf.tensor(kF, kD, 1));
    if (e != 2) w.add(head + "w3.weight", hf.tensor(kF, kD, 1));
    w.add(head + "w2.weight", hf.tensor(kD, kF, 1));
  }
  const auto file = SafetensorsFile::from_bytes(w.bytes(), "broken.safetensors");
  expect_io_error(file, CheckpointFormat::mixtral, "p.", {"broken.safetensors", "p.experts.2.w3.weight", "missing"});
}

TEST(Checkpoint, WrongShapeNamesBothShapes) {
  HfLayer hf{CheckpointFormat::mixtral, ""};
  SafetensorsWriter broken;
  broken.add("gate.weight", hf.tensor(kE, kD, 1));
  for (Index e = 0; e < kE; ++e) {
    const std::string head = "experts." + std::to_string(e) + ".";
    broken.add(head + "w1.weight", hf.tensor(kF, e == 3 ? kD + 1 : kD, 1));
    broken.add(head + "w3.weight", hf.tensor(kF, kD, 1));
    broken.add(head + "w2.weight", hf.tensor(kD, kF, 1));
  }
  const auto file = SafetensorsFile::from_bytes(broken.bytes(), "f.safetensors");
  expect_io_error(file, CheckpointFormat::mixtral, "", {"f.safetensors", "experts.3.w1.weight", "[6, 9]", "[6, 8]"});
}

// A transposed tensor is reported against what the tensors that define the sizes say: d_model from
// the router, d_ff from the first expert's down projection.
TEST(Checkpoint, TransposedTensorsGetTheRightExpectation) {
  const auto with = [](const std::string& name, RowMatrix<float> tensor) {
    HfLayer hf{CheckpointFormat::mixtral, ""};
    hf.replaced[name] = std::move(tensor);
    return hf.file();
  };
  const HfLayer hf{CheckpointFormat::mixtral, ""};
  expect_io_error(with("experts.0.w1.weight", hf.tensor(kD, kF, 2)), CheckpointFormat::mixtral, "",
                  {"experts.0.w1.weight", "shape [8, 6] but expected [6, 8]", "d_ff from experts.0.w2.weight",
                   "d_model from gate.weight"});
  expect_io_error(with("experts.0.w2.weight", hf.tensor(kF, kD, 2)), CheckpointFormat::mixtral, "",
                  {"experts.0.w2.weight", "shape [6, 8] but expected [8, d_ff]", "d_model from gate.weight"});
  expect_io_error(with("gate.weight", hf.tensor(kD, kE, 2)), CheckpointFormat::mixtral, "",
                  {"gate.weight", "shape [8, 4] but expected [4, d_model]", "4 experts found"});
}

// Weights must be finite: the first NaN or infinity is named with its tensor and element — also
// when bf16 experts are packed straight from a BF16 file's bytes.
TEST(Checkpoint, NonFiniteWeightsNameTheTensorAndElement) {
  for (const auto dtype : {moe::io::Dtype::F32, moe::io::Dtype::BF16})
    for (const bool nan : {true, false}) {
      HfLayer hf{CheckpointFormat::qwen2_moe, "m."};
      hf.expert_dtype = dtype;
      RowMatrix<float> bad = hf.tensor(kF, kD, 111);  // experts.1.up_proj
      bad(2, 5) = nan ? std::numeric_limits<float>::quiet_NaN() : -std::numeric_limits<float>::infinity();
      hf.replaced["m.experts.1.up_proj.weight"] = bad;
      const auto file = SafetensorsFile::from_bytes(hf.writer().bytes(), "nan.safetensors");
      const std::initializer_list<std::string> parts = {"nan.safetensors", "m.experts.1.up_proj.weight",
                                                        "element [2, 5] is", nan ? "NaN" : "infinite"};
      expect_io_error(file, CheckpointFormat::qwen2_moe, "m.", parts);
      try {
        (void)moe::io::load_checkpoint_layer<float, moe::Bf16>(file, CheckpointFormat::qwen2_moe, "m.",
                                                               {.inference_only = true});
        ADD_FAILURE() << "no io_error";
      } catch (const moe::io_error& e) {
        for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
      }
    }
}

TEST(Checkpoint, InconsistentExpertCount) {
  HfLayer hf{CheckpointFormat::mixtral, ""};
  {  // the router has 5 rows for 4 experts
    SafetensorsWriter w;
    w.add("gate.weight", hf.tensor(kE + 1, kD, 1));
    for (Index e = 0; e < kE; ++e) hf.write_ffn(w, "experts." + std::to_string(e) + ".", kF, 1);
    expect_io_error(SafetensorsFile::from_bytes(w.bytes(), "f"), CheckpointFormat::mixtral, "",
                    {"gate.weight", "[5, 8]", "but expected [4, d_model]", "4 experts"});
  }
  {  // experts 0, 1, 3: expert 2 is missing
    SafetensorsWriter w;
    w.add("gate.weight", hf.tensor(kE, kD, 1));
    for (const Index e : {0, 1, 3}) hf.write_ffn(w, "experts." + std::to_string(e) + ".", kF, 1);
    expect_io_error(SafetensorsFile::from_bytes(w.bytes(), "f"), CheckpointFormat::mixtral, "",
                    {"experts.2.", "missing"});
  }
}

TEST(Checkpoint, FormatThatDoesNotMatchTheFile) {
  const auto mixtral = HfLayer{CheckpointFormat::mixtral, "m."}.file();
  expect_io_error(mixtral, CheckpointFormat::qwen2_moe, "m.", {"m.experts.0.gate_proj.weight", "look like a mixtral"});
  const auto qwen = HfLayer{CheckpointFormat::qwen2_moe, ""}.file();
  expect_io_error(qwen, CheckpointFormat::mixtral, "", {"experts.0.w1.weight", "look like a qwen2-moe"});
  expect_io_error(qwen, CheckpointFormat::deepseek_v2, "", {"shared_experts.down_proj.weight", "qwen2-moe"});
  const auto v3 = HfLayer{CheckpointFormat::deepseek_v3, ""}.file();
  expect_io_error(v3, CheckpointFormat::deepseek_v2, "", {"gate.e_score_correction_bias", "not part of a deepseek-v2"});
  const auto v2 = HfLayer{CheckpointFormat::deepseek_v2, ""}.file();
  expect_io_error(v2, CheckpointFormat::deepseek_v3, "", {"gate.e_score_correction_bias", "missing"});
  expect_io_error(v2, CheckpointFormat::mixtral, "nothing.", {"no experts", "nothing."});
}

TEST(Checkpoint, FormatNamesRoundTrip) {
  for (const auto f : {CheckpointFormat::mixtral, CheckpointFormat::qwen2_moe, CheckpointFormat::deepseek_v2,
                       CheckpointFormat::deepseek_v3})
    EXPECT_EQ(moe::io::parse_format(moe::io::format_name(f)), f);
  EXPECT_FALSE(moe::io::parse_format("llama"));
}

}  // namespace

namespace MOE_TEST_FILE_ID {

// inference_only: the experts are packed one by one as read and hold no master weights; the layer
// computes the bits of a normally loaded one, for every format, fp32 and bf16, from a mapped file
// whose pages the loader gives back as it goes.
template <class F>
void expect_inference_only_load_matches(CheckpointFormat format, moe::io::Dtype dtype = moe::io::Dtype::F32) {
  HfLayer hf{format, "model.layers.1.mlp."};
  hf.expert_dtype = dtype;
  moe::test::ScratchDir dir;
  hf.writer().write(dir / "layer.safetensors");
  const auto file = SafetensorsFile::open(dir / "layer.safetensors");
  ASSERT_TRUE(file.memory_mapped());
  CheckpointOptions options{.top_k = 2, .n_group = 2, .topk_group = 1};
  auto normal = moe::io::load_checkpoint_layer<float, F>(file, format, hf.prefix, options);
  options.inference_only = true;
  const auto packed = moe::io::load_checkpoint_layer<float, F>(file, format, hf.prefix, options);
  const RowMatrix<float> x = moe::test::random_matrix<float>(19, kD, 4);
  RowMatrix<float> expected(19, kD), y(19, kD);
  normal.forward(x, expected);
  typename decltype(normal)::Workspace work;
  packed.forward(x, y, work);
  EXPECT_EQ(y, expected) << moe::io::format_name(format) << " " << F::name << " from " << moe::io::dtype_name(dtype);
  EXPECT_THROW((void)packed.experts().w1(), moe::state_error);
  if (packed.shared()) {
    EXPECT_THROW((void)packed.shared()->experts().w2(), moe::state_error);
  }
  normal.release_master_weights();
  EXPECT_EQ(packed.experts().weight_bytes(), std::as_const(normal).experts().weight_bytes());
}

TEST(Checkpoint, InferenceOnlyLoadPacksAsItReadsWithTheSameBits) {
  for (const auto format : {CheckpointFormat::mixtral, CheckpointFormat::qwen2_moe, CheckpointFormat::deepseek_v2,
                            CheckpointFormat::deepseek_v3}) {
    expect_inference_only_load_matches<moe::F32>(format);
    expect_inference_only_load_matches<moe::Bf16>(format);
    // bf16 experts from BF16 tensors: packed from the file's bytes, no fp32 on the way
    expect_inference_only_load_matches<moe::F32>(format, moe::io::Dtype::BF16);
    expect_inference_only_load_matches<moe::Bf16>(format, moe::io::Dtype::BF16);
  }
}

// A bank without master weights refuses to run an expert it was never given.
TEST(Checkpoint, AnExpertNeverPackedIsAStateError) {
  auto bank = moe::SwiGluExpert<float>::without_masters({.num_experts = 2, .d_model = kD, .d_ff = kF});
  const RowMatrix<float> w1 = RowMatrix<float>::Ones(kF, kD), w2 = RowMatrix<float>::Ones(kD, kF);
  bank.pack_expert_up(0, w1, w1);
  bank.pack_expert_down(0, w2);
  bank.pack_expert_up(1, w1, w1);  // the down projection is missing
  EXPECT_THROW(bank.prepack(1), moe::state_error);
  bank.prepack(0);
  EXPECT_THROW(bank.pack_expert_up(1, w2, w1), moe::shape_error);
  EXPECT_THROW(bank.pack_expert_down(1, w1), moe::shape_error);
  EXPECT_THROW(bank.pack_expert_down(2, w2), moe::config_error);
}

// With d_ff = d_model the shape errors still name the right dimension.
TEST(Checkpoint, PackErrorsNameTheDimensionNotItsValue) {
  auto bank = moe::SwiGluExpert<float, moe::Bf16>::without_masters({.num_experts = 1, .d_model = kD, .d_ff = kD});
  const RowMatrix<float> narrow = RowMatrix<float>::Ones(kD, kD - 1);
  try {
    bank.pack_expert_up(0, narrow, narrow);
    ADD_FAILURE() << "no shape_error";
  } catch (const moe::shape_error& e) {
    EXPECT_NE(std::string(e.what()).find("w1.cols() = 7 but d_model = 8"), std::string::npos) << e.what();
  }
  try {
    bank.pack_expert_down(0, narrow);
    ADD_FAILURE() << "no shape_error";
  } catch (const moe::shape_error& e) {
    EXPECT_NE(std::string(e.what()).find("w2.cols() = 7 but d_ff = 8"), std::string::npos) << e.what();
  }
}

}  // namespace MOE_TEST_FILE_ID

namespace MOE_TEST_FILE_ID {

// A layer split over two shards and an index, as Hugging Face saves large models: the gate and
// experts 0–1 in the first shard, the rest in the second (expert 1's w2 too, so one expert spans
// both). Returns the index's path.
std::filesystem::path write_sharded(const moe::test::ScratchDir& dir, const HfLayer& hf, const std::string& index_json = "") {
  const auto whole = hf.file();
  SafetensorsWriter first, second;
  std::string map;
  for (const auto& name : whole.names()) {
    const bool in_first = name.find("gate.") != std::string::npos || name.find("experts.0.") != std::string::npos ||
                          (name.find("experts.1.") != std::string::npos && name.find("w2") == std::string::npos);
    (in_first ? first : second).add(name, whole.read<float>(name), whole.info(name).shape);
    map += std::string(map.empty() ? "" : ",") + "\"" + name + "\":\"" +
           (in_first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors") + "\"";
  }
  first.write(dir / "model-00001-of-00002.safetensors");
  second.write(dir / "model-00002-of-00002.safetensors");
  const std::string json = index_json.empty() ? "{\"metadata\":{\"total_size\":0},\"weight_map\":{" + map + "}}" : index_json;
  moe::test::write_bytes(dir / "model.safetensors.index.json", moe::test::to_bytes(json));
  return dir / "model.safetensors.index.json";
}

TEST(CheckpointFiles, AShardedLayerLoadsAsTheSingleFileDoes) {
  const HfLayer hf{CheckpointFormat::mixtral, "model.layers.10.block_sparse_moe."};
  moe::test::ScratchDir dir;
  const auto index = write_sharded(dir, hf);
  const auto single = moe::io::load_checkpoint_layer<float>(hf.file(), CheckpointFormat::mixtral, hf.prefix);
  for (const auto& path : {index, dir.path()}) {
    const auto files = moe::io::CheckpointFiles::open(path);
    EXPECT_EQ(files.origin(), index.string());
    EXPECT_EQ(files.origin(hf.prefix + "experts.3.w1.weight"), (dir / "model-00002-of-00002.safetensors").string());
    EXPECT_EQ(files.paths(), (std::vector<std::filesystem::path>{index, dir / "model-00001-of-00002.safetensors",
                                                                 dir / "model-00002-of-00002.safetensors"}));
    const auto sharded = moe::io::load_checkpoint_layer<float>(files, CheckpointFormat::mixtral, hf.prefix);
    EXPECT_EQ(sharded.gate().router().weight(), single.gate().router().weight());
    for (Index e = 0; e < kE; ++e) {
      EXPECT_EQ(RowMatrix<float>(sharded.experts().w1()[e]), RowMatrix<float>(single.experts().w1()[e])) << e;
      EXPECT_EQ(RowMatrix<float>(sharded.experts().w2()[e]), RowMatrix<float>(single.experts().w2()[e])) << e;
    }
  }
  // A directory with model.safetensors and no index: that one file.
  moe::test::ScratchDir plain;
  hf.writer().write(plain / "model.safetensors");
  EXPECT_EQ(moe::io::CheckpointFiles::open(plain.path()).origin(), (plain / "model.safetensors").string());
  EXPECT_EQ(moe::io::CheckpointFiles::open(plain.path()).paths(),
            std::vector<std::filesystem::path>{plain / "model.safetensors"});
}

TEST(CheckpointFiles, ErrorsNameTheShardAndTheTensor) {
  HfLayer hf{CheckpointFormat::mixtral, ""};
  hf.replaced["experts.3.w3.weight"] = hf.tensor(kF, kD + 1, 1);
  moe::test::ScratchDir dir;
  const auto files = moe::io::CheckpointFiles::open(write_sharded(dir, hf));
  expect_io_error(files, CheckpointFormat::mixtral, "", {"model-00002-of-00002.safetensors", "experts.3.w3.weight", "[6, 9]"});
}

TEST(CheckpointFiles, ACorruptIndexIsAnIoErrorNamingIt) {
  const HfLayer hf{CheckpointFormat::mixtral, ""};
  const std::string one = R"("experts.0.w1.weight":"model-00001-of-00002.safetensors")";
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {R"({"weight_map":{"gate.weight":"model-00009-of-00009.safetensors"}})",
       {"shard 'model-00009-of-00009.safetensors' of tensor 'gate.weight' is not a file"}},
      {R"({"weight_map":{)" + one + "," + one + "}}", {"appears twice"}},
      {R"({"weight_map":{"experts.0.w1.weight":"model-00002-of-00002.safetensors"}})",
       {"tensor 'experts.0.w1.weight' is listed in shard 'model-00002-of-00002.safetensors', which has no such tensor"}},
      {R"({"metadata":{}})", {"\"weight_map\""}},
      {R"({"weight_map":{"gate.weight":"../model-00001-of-00002.safetensors"}})", {"a file name beside the index"}},
      {R"({"weight_map":{"gate.weight":3}})", {"a file name beside the index"}},
      {"not json", {"JSON"}},
  };
  for (const auto& [json, parts] : cases) {
    SCOPED_TRACE(json);
    moe::test::ScratchDir dir;
    const auto index = write_sharded(dir, hf, json);
    const std::string message = moe::test::io_error_of([&] { moe::io::CheckpointFiles::open(index); });
    EXPECT_NE(message.find(index.string()), std::string::npos) << message;
    for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message << "\n  lacks: " << part;
  }
}

}  // namespace MOE_TEST_FILE_ID
