// LayerTensors: the tensors of one layer of a checkpoint, under a prefix, as the layer loaders
// read them — each checked for its shape (naming what was expected and why) and for finite values
// (naming the first element that is not), remembered as used so that a tensor the format does not
// know is an error, handed over as matrices or (BF16) as the file's own bytes, and prefetched from
// or released to the file as a loader streams through it.
#pragma once

#include "moe/detail/all_finite.hpp"
#include "moe/errors.hpp"
#include "moe/io/checkpoint_files.hpp"
#include "moe/io/checkpoint_format.hpp"
#include "moe/kernels/bf16_format.hpp"

#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace moe::detail {

// Reads the tensors of one layer under a prefix, remembering which it used.
class LayerTensors {
 public:
  LayerTensors(const io::CheckpointFiles& file, std::string prefix, io::CheckpointFormat format)
      : file_(file), prefix_(std::move(prefix)), format_(format) {}

  // io_error "<the file holding it>: tensor '<prefix><relative>': <what>".
  template <class... Parts>
  [[noreturn]] void fail(std::string_view relative, const Parts&... what) const {
    const std::string name = prefix_ + std::string(relative);
    moe::detail::raise(io_error(concat(file_.origin(name), ": tensor '", name, "': ", what...)));
  }

  bool has(std::string_view relative) const { return file_.contains(prefix_ + std::string(relative)); }

  // The tensor's shape, which must have `dims` axes.
  const std::vector<Index>& shape(std::string_view relative, std::size_t dims) const {
    const std::string name = prefix_ + std::string(relative);
    if (!file_.contains(name))
      fail(relative, "missing: a ", io::format_name(format_), " layer has it", hint());
    const auto& s = file_.info(name).shape;
    if (s.size() != dims) fail(relative, "shape ", io::shape_text(s), " but expected ", dims, " axes");
    return s;
  }

  // out = the tensor, which must have the shape `expected` (why: where that comes from) and hold
  // only finite values (io_error naming the first element that is not).
  template <class Dst>
  void read(std::string_view relative, const std::vector<Index>& expected, Dst&& out, std::string_view why) {
    file_.read_into(use(relative, expected, why), out);
    for (Index r = 0; r < out.rows(); ++r) {  // row by row: out is row-major
      if (all_finite(out.row(r).data(), out.cols())) continue;
      for (Index c = 0; c < out.cols(); ++c)
        if (!std::isfinite(out(r, c))) not_finite(relative, r, c, std::isnan(out(r, c)));
    }
  }
  // The tensor's shape checked as read() checks it, and the tensor counted as used, unread (the
  // experts another process loads).
  void skip(std::string_view relative, const std::vector<Index>& expected, std::string_view why) {
    use(relative, expected, why);
  }
  // The same for a BF16 tensor, as the file holds it (no copy: valid while the file is open).
  kernels::Bf16Rows bf16_rows(std::string_view relative, const std::vector<Index>& expected, std::string_view why) {
    const std::string name = use(relative, expected, why);
    const Index rows = file_.info(name).rows(), cols = file_.info(name).cols();
    const kernels::Bf16Rows w{file_.bytes(name).data(), rows, cols, cols};
    for (Index r = 0; r < rows; ++r) {
      const auto row = w.middleRows(r, 1);
      std::uint16_t bad = 0;  // an all-ones exponent: infinite or NaN
      for (Index c = 0; c < cols; ++c) bad |= std::uint16_t((row(0, c) & 0x7f80u) == 0x7f80u);
      if (bad == 0) continue;
      for (Index c = 0; c < cols; ++c)
        if ((row(0, c) & 0x7f80u) == 0x7f80u) not_finite(relative, r, c, (row(0, c) & 0x7fu) != 0);
    }
    return w;
  }
  bool is_bf16(std::string_view relative) const {
    return has(relative) && file_.info(prefix_ + std::string(relative)).dtype == io::Dtype::BF16;
  }
  void release(std::string_view relative) const { file_.release(prefix_ + std::string(relative)); }
  void prefetch(std::string_view relative) const {
    if (has(relative)) file_.prefetch(prefix_ + std::string(relative));
  }

  // Expert ids i of the names "<prefix>experts.<i>.*": must be 0 .. E−1.
  Index count_experts() const {
    std::set<Index> ids;
    const std::string head = prefix_ + "experts.";
    for (const auto& name : file_.names()) {
      if (!name.starts_with(head)) continue;
      const std::size_t dot = name.find('.', head.size());
      const std::string id = name.substr(head.size(), dot == std::string::npos ? std::string::npos : dot - head.size());
      if (id.empty() || id.size() > 9 || id.find_first_not_of("0123456789") != std::string::npos)
        MOE_THROW(io_error(concat(file_.origin(name), ": tensor '", name, "': expected '", head,
                                               "<expert id>.…'")));
      ids.insert(std::stoll(id));
    }
    if (ids.empty()) fail("experts.0.*", "missing: no experts under the prefix", hint());
    const Index n = static_cast<Index>(ids.size());
    if (*ids.rbegin() != n - 1) {
      Index gap = 0;
      while (ids.contains(gap)) ++gap;
      fail(concat("experts.", gap, ".*"), "missing: experts are numbered up to ", *ids.rbegin(),
           " but expert ", gap, " has no tensors (", n, " experts found)");
    }
    return n;
  }

  // Every tensor under the prefix must have been read: another format's tensors are an error.
  void check_all_used() const {
    for (const auto& name : file_.names())
      if (name.starts_with(prefix_) && !used_.contains(name))
        MOE_THROW(io_error(concat(file_.origin(name), ": tensor '", name, "': not part of a ",
                                               io::format_name(format_), " layer", hint())));
  }

 private:
  // What the tensors under the prefix look like, when that is not the requested format.
  std::string hint() const {
    std::string guess;
    if (has("experts.0.w1.weight")) guess = "mixtral";
    else if (has("shared_expert_gate.weight")) guess = "qwen2-moe";
    else if (has("gate.e_score_correction_bias")) guess = "deepseek-v3";
    else if (has("shared_experts.gate_proj.weight")) guess = "deepseek-v2";
    if (!guess.empty() && guess != io::format_name(format_))
      return concat(" (the tensors under prefix '", prefix_, "' look like a ", guess, " layer)");
    return concat(" (prefix '", prefix_, "')");
  }

  // The tensor's name, once its shape is checked against `expected`; marked as used.
  std::string use(std::string_view relative, const std::vector<Index>& expected, std::string_view why) {
    if (const auto& s = shape(relative, expected.size()); s != expected)
      fail(relative, "shape ", io::shape_text(s), " but expected ", io::shape_text(expected), " (", why, ")");
    std::string name = prefix_ + std::string(relative);
    used_.insert(name);
    return name;
  }
  [[noreturn]] void not_finite(std::string_view relative, Index r, Index c, bool nan) const {
    fail(relative, "element [", r, ", ", c, "] is ", nan ? "NaN" : "infinite", ": the weights must be finite");
  }

  const io::CheckpointFiles& file_;
  std::string prefix_;
  io::CheckpointFormat format_;
  std::set<std::string> used_;
};

}  // namespace moe::detail
