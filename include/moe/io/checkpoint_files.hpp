// CheckpointFiles: the tensors of a checkpoint, in one safetensors file or sharded over several as
// Hugging Face saves large models (model-00001-of-00019.safetensors …, and
// model.safetensors.index.json mapping every tensor to its shard: Mixtral-8x7B's layer 10 spans two).
//
//   auto files = moe::io::CheckpointFiles::open("Mixtral-8x7B-v0.1");   // a directory, index or file
//   auto layer = moe::io::load_checkpoint_layer<float>(files, moe::io::CheckpointFormat::mixtral,
//                                                      "model.layers.10.block_sparse_moe.");
//
// open(path): a directory holds model.safetensors.index.json (then sharded) or model.safetensors; a
// path ending in ".json" is an index; anything else is one safetensors file. Every shard the index
// names is mapped read-only (nothing is read until a tensor is). Errors are io_errors naming the
// index, the shard and the tensor: a shard that is missing or not a safetensors file, a tensor the
// index puts in a shard that lacks it, an index that is not JSON, has no "weight_map" object, names
// a shard that is not a plain file name, or lists a tensor twice.
#pragma once

#include "moe/errors.hpp"
#include "moe/io/detail/file_bytes.hpp"
#include "moe/io/detail/json.hpp"
#include "moe/io/safetensors.hpp"
#include "moe/types.hpp"

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::io {

class CheckpointFiles {
 public:
  // One safetensors file (converts implicitly: every loader that takes CheckpointFiles takes a file).
  CheckpointFiles(SafetensorsFile file) : origin_(file.origin()) {  // NOLINT(google-explicit-constructor)
    for (const auto& name : file.names()) shard_of_.emplace(name, 0);
    files_.push_back(std::move(file));
  }

  static CheckpointFiles open(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    if (fs::is_directory(path)) {
      const fs::path index = path / "model.safetensors.index.json";
      return fs::exists(index) ? open_index(index) : CheckpointFiles(SafetensorsFile::open(path / "model.safetensors"));
    }
    if (path.extension() == ".json") return open_index(path);
    return CheckpointFiles(SafetensorsFile::open(path));
  }

  const std::string& origin() const { return origin_; }
  // The files it reads: the index, if any, and every shard (a tool must not write over them).
  std::vector<std::filesystem::path> paths() const {
    std::vector<std::filesystem::path> out;
    if (files_.size() != 1 || origin_ != files_[0].origin()) out.emplace_back(origin_);
    for (const auto& file : files_) out.emplace_back(file.origin());
    return out;
  }
  // The file that holds the tensor (the checkpoint's origin for a name it does not hold).
  const std::string& origin(std::string_view name) const {
    const auto it = shard_of_.find(name);
    return it == shard_of_.end() ? origin_ : files_[it->second].origin();
  }
  bool contains(std::string_view name) const { return shard_of_.find(name) != shard_of_.end(); }
  std::vector<std::string> names() const {  // sorted
    std::vector<std::string> out;
    for (const auto& [name, shard] : shard_of_) out.push_back(name);
    return out;
  }
  const TensorInfo& info(std::string_view name) const { return file_of(name).info(name); }
  void read_into(std::string_view name, MatrixRef<float> out) const { file_of(name).read_into(name, out); }
  void read_into(std::string_view name, MatrixRef<double> out) const { file_of(name).read_into(name, out); }
  std::span<const std::byte> bytes(std::string_view name) const { return file_of(name).bytes(name); }
  void release(std::string_view name) const { file_of(name).release(name); }
  void prefetch(std::string_view name) const { file_of(name).prefetch(name); }

  const SafetensorsFile& file_of(std::string_view name) const {
    const auto it = shard_of_.find(name);
    if (it == shard_of_.end())
      MOE_THROW(io_error(moe::detail::concat(origin_, ": no tensor '", name, "' in the checkpoint (",
                                             shard_of_.size(), " tensors in ", files_.size(), " files)")));
    return files_[it->second];
  }

 private:
  CheckpointFiles() = default;

  static CheckpointFiles open_index(const std::filesystem::path& index) {
    CheckpointFiles out;
    out.origin_ = index.string();
    const auto fail = [&](const auto&... what) {
      MOE_THROW(io_error(moe::detail::concat(out.origin_, ": ", what...)));
    };
    const auto source = moe::detail::ByteSource::map_file(index, "CheckpointFiles::open");
    const auto bytes = source->bytes();
    const json::Value doc =
        json::parse(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), out.origin_);
    const json::Value* map = doc.find("weight_map");
    if (map == nullptr || !map->is_object()) fail("expected a \"weight_map\" object (tensor name -> shard file)");
    std::map<std::string, std::size_t, std::less<>> shard_ids;
    for (const auto& member : map->members) {
      const std::string& tensor = member.key;
      const json::Value& shard = member.value;
      if (!shard.is_string() || shard.text.empty() || shard.text.find('/') != std::string::npos || shard.text == "." ||
          shard.text == "..")
        fail("tensor '", tensor, "': its shard must be a file name beside the index");
      auto [it, added] = shard_ids.emplace(shard.text, out.files_.size());
      if (added) {
        const std::filesystem::path path = index.parent_path() / shard.text;
        if (!std::filesystem::is_regular_file(path))
          fail("shard '", shard.text, "' of tensor '", tensor, "' is not a file beside the index");
        out.files_.push_back(SafetensorsFile::open(path));
      }
      if (!out.files_[it->second].contains(tensor))
        fail("tensor '", tensor, "' is listed in shard '", shard.text, "', which has no such tensor");
      out.shard_of_.emplace(tensor, it->second);
    }
    return out;
  }

  std::string origin_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t, std::less<>> shard_of_;  // tensor -> index in files_
};

}  // namespace moe::io
