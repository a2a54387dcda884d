// NumPy .npy files (format versions 1.0, 2.0 and 3.0), little-endian floats, C order:
//
//   auto x = moe::io::NpyFile::open("x.npy").read<float>();   // '<f2', '<f4', '<f8' -> float
//   moe::io::write_npy("y.npy", y);                            // '<f4' for float, '<f8' for double
//
// Arrays as matrices, as for safetensors: the last axis is the columns and leading axes fold into
// rows, so (T, d) reads as [T, d], (n,) as one row [1, n], () as [1, 1], (a, b, c) as [a·b, c].
// Fortran-order arrays, other descrs (big-endian, integers, complex, objects) and any malformed or
// truncated file are a moe::io_error naming the file and what was expected. write_npy's bytes are
// those of numpy.save for the same array (header padded so the data starts at a multiple of 64).
#pragma once

#include "moe/io/detail/atomic_write.hpp"
#include "moe/io/detail/file_bytes.hpp"
#include "moe/io/detail/npy_header.hpp"
#include "moe/errors.hpp"
#include "moe/io/dtype.hpp"
#include "moe/types.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace moe::io {

class NpyFile {
 public:
  static NpyFile open(const std::filesystem::path& path) {
    return NpyFile(moe::detail::ByteSource::map_file(path, "NpyFile::open"), path.string());
  }
  // Parses a copy of `bytes`; origin names them in errors. open() runs the same parser.
  static NpyFile from_bytes(std::span<const std::byte> bytes, std::string origin = "<memory>") {
    return NpyFile(moe::detail::ByteSource::copy_of(bytes), std::move(origin));
  }

  const std::string& origin() const { return origin_; }
  Dtype dtype() const { return header_.dtype; }
  const std::vector<Index>& shape() const { return header_.shape; }
  Index rows() const { return header_.rows; }
  Index cols() const { return header_.cols; }

  // out = the array as [rows, cols], converted to S; out must be pre-sized to [rows(), cols()].
  void read_into(MatrixRef<float> out) const { read_rows<float>(out); }
  void read_into(MatrixRef<double> out) const { read_rows<double>(out); }

  template <class S>
  RowMatrix<S> read() const {
    RowMatrix<S> out(rows(), cols());
    read_rows<S>(out);
    return out;
  }

 private:
  NpyFile(std::shared_ptr<const moe::detail::ByteSource> source, std::string origin)
      : source_(std::move(source)), origin_(std::move(origin)),
        header_(moe::detail::parse_npy(source_->bytes(), origin_)) {}

  template <class S>
  void read_rows(MatrixRef<S> out) const {
    if (out.rows() != rows() || out.cols() != cols()) {
      moe::detail::raise(io_error(moe::detail::concat(origin_, ": shape ", moe::detail::npy_shape(shape()),
                                        " reads as [", rows(), ", ", cols(),
                                        "] but the destination is [", out.rows(), ", ",
                                        out.cols(), "]")));
    }
    if (cols() == 0) return;
    const std::size_t row_bytes = static_cast<std::size_t>(cols()) * dtype_size(dtype());
    const std::byte* data = source_->bytes().data() + header_.data_offset;
    for (Index r = 0; r < out.rows(); ++r)
      moe::detail::convert_from(dtype(), data + static_cast<std::size_t>(r) * row_bytes,
                           static_cast<std::size_t>(cols()), &out(r, 0));
  }

  std::shared_ptr<const moe::detail::ByteSource> source_;
  std::string origin_;
  moe::detail::NpyHeader header_;
};

// The .npy bytes of m's elements in row-major order with the given shape (product = m.size()),
// descr '<f4' for float and '<f8' for double.
template <class Derived>
std::vector<std::byte> npy_bytes(const Eigen::DenseBase<Derived>& m, const std::vector<Index>& shape) {
  using S = typename Derived::Scalar;
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                "npy_bytes: the matrix must hold float or double");
  Index elements = 1;
  for (const Index d : shape) {
    moe::detail::check_config(d >= 0, "write_npy", "shape ", moe::detail::npy_shape(shape),
                         " has a negative dimension");
    elements *= d;
  }
  if (elements != m.size())
    MOE_THROW(shape_error(moe::detail::concat("write_npy: shape ", moe::detail::npy_shape(shape), " has ",
                                         elements, " elements but the matrix has ", m.size())));
  const Dtype dtype = std::is_same_v<S, float> ? Dtype::F32 : Dtype::F64;
  const std::string header = moe::detail::npy_header_bytes(dtype, shape);
  std::vector<std::byte> out(header.size() + static_cast<std::size_t>(elements) * sizeof(S));
  std::memcpy(out.data(), header.data(), header.size());
  RowMatrix<S> rows(m.rows(), m.cols());  // row-major whatever m's storage order
  rows.array() = m.derived().array();      // (m may be a matrix or an array expression)
  moe::detail::convert_to(dtype, rows.data(), static_cast<std::size_t>(elements),
                     out.data() + header.size());
  return out;
}

// Writes m's elements as an array of the given shape to path, whole or not at all, only over a
// regular file or a new path (detail/atomic_write.hpp); io_error otherwise.
template <class Derived>
void write_npy(const std::filesystem::path& path, const Eigen::DenseBase<Derived>& m,
               const std::vector<Index>& shape, WriteOptions options = {}) {
  const std::vector<std::byte> bytes = npy_bytes(m, shape);
  const std::span<const std::byte> chunk(bytes);
  moe::detail::write_file_atomically(path, std::span(&chunk, 1), "write_npy", options);
}

// Writes m as a 2-D array (rows, cols).
template <class Derived>
void write_npy(const std::filesystem::path& path, const Eigen::DenseBase<Derived>& m, WriteOptions options = {}) {
  write_npy(path, m, {m.rows(), m.cols()}, options);
}

}  // namespace moe::io
