#include <moe/param_bank.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/io/safetensors_writer.hpp>

#include "io/io_files.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::io::Dtype;
using moe::io::SafetensorsFile;
using moe::io::SafetensorsWriter;
using moe::test::ScratchDir;

template <class S>
class Safetensors : public ::testing::Test {};
TYPED_TEST_SUITE(Safetensors, moe::test::Scalars);

// Bit-exact comparison that also holds for NaN and -0.
template <class A, class B>
void expect_same_bits(const A& a, const B& b) {
  ASSERT_EQ(a.rows(), b.rows());
  ASSERT_EQ(a.cols(), b.cols());
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j)
      EXPECT_EQ(std::bit_cast<std::uint64_t>(static_cast<double>(a(i, j))),
                std::bit_cast<std::uint64_t>(static_cast<double>(b(i, j))))
          << "(" << i << ", " << j << "): " << a(i, j) << " vs " << b(i, j);
}

TYPED_TEST(Safetensors, F32RoundTripIsBitExact) {
  using S = TypeParam;
  ScratchDir dir;
  const RowMatrix<S> w = moe::test::random_matrix<S>(7, 5, 1);
  SafetensorsWriter().add("w", w).write(dir / "m.safetensors");
  const auto file = SafetensorsFile::open(dir / "m.safetensors");
  EXPECT_EQ(file.info("w").dtype, Dtype::F32);
  EXPECT_EQ(file.info("w").shape, (std::vector<Index>{7, 5}));
  // float -> F32 -> float is exact; double rounds once to float, then widens exactly.
  const RowMatrix<float> as_float = w.template cast<float>();
  expect_same_bits(file.read<S>("w"), as_float.template cast<S>());
  expect_same_bits(file.read<float>("w"), as_float);
  expect_same_bits(file.read<double>("w"), as_float.template cast<double>());
}

TYPED_TEST(Safetensors, F64RoundTripIsBitExact) {
  using S = TypeParam;
  ScratchDir dir;
  const RowMatrix<S> w = moe::test::random_matrix<S>(3, 4, 2);
  SafetensorsWriter().add("w", w, Dtype::F64).write(dir / "m.safetensors");
  expect_same_bits(SafetensorsFile::open(dir / "m.safetensors").read<S>("w"), w);
}

// The known values of the issue through every dtype: 1, -2.5, 65504, the smallest F16 subnormal,
// inf, NaN (and -0).
TYPED_TEST(Safetensors, KnownValuesThroughHalfAndBFloat16) {
  using S = TypeParam;
  const S inf = std::numeric_limits<S>::infinity(), nan = std::numeric_limits<S>::quiet_NaN();
  const S tiny = std::ldexp(S(1), -24);
  RowMatrix<S> v(1, 7);
  v << S(1), S(-2.5), S(65504), tiny, inf, nan, S(-0.0);
  ScratchDir dir;
  SafetensorsWriter()
      .add("f16", v, Dtype::F16)
      .add("bf16", v, Dtype::BF16)
      .add("f32", v, Dtype::F32)
      .write(dir / "m.safetensors");
  const auto file = SafetensorsFile::open(dir / "m.safetensors");
  expect_same_bits(file.read<S>("f16"), v);
  expect_same_bits(file.read<S>("f32"), v);
  RowMatrix<S> bf16 = v;
  bf16(0, 2) = S(65536);  // 65504 is not a bfloat16; 2^-24 and the rest are
  expect_same_bits(file.read<S>("bf16"), bf16);
  // The stored bits themselves.
  const auto raw16 = file.bytes("f16");
  ASSERT_EQ(raw16.size(), 14u);
  const auto half = [&](int i) { return moe::detail::load_le<std::uint16_t>(raw16.data() + 2 * i); };
  EXPECT_EQ(half(0), 0x3c00);
  EXPECT_EQ(half(1), 0xc100);
  EXPECT_EQ(half(2), 0x7bff);
  EXPECT_EQ(half(3), 0x0001);
  EXPECT_EQ(half(4), 0x7c00);
  EXPECT_EQ(half(6), 0x8000);
}

TYPED_TEST(Safetensors, ShapesFoldLeadingAxesIntoRows) {
  using S = TypeParam;
  const RowMatrix<S> bank = moe::test::random_matrix<S>(4 * 3, 2, 3);  // [E=4, r=3, c=2]
  ScratchDir dir;
  SafetensorsWriter()
      .add("bank", bank, {4, 3, 2})
      .add("bias", bank.row(0), {2})
      .add("scalar", bank.block(0, 0, 1, 1), std::vector<Index>{})
      .add("empty", RowMatrix<S>(0, 5))
      .write(dir / "m.safetensors");
  const auto file = SafetensorsFile::open(dir / "m.safetensors");
  EXPECT_EQ(file.info("bank").rows(), 12);
  EXPECT_EQ(file.read<S>("bank"), bank.template cast<float>().template cast<S>());
  EXPECT_EQ(file.read<S>("bias").rows(), 1);  // [n] reads as one row
  EXPECT_EQ(file.read<S>("bias").cols(), 2);
  EXPECT_EQ(file.read<S>("scalar").size(), 1);
  EXPECT_EQ(file.read<S>("empty").rows(), 0);
  EXPECT_EQ(file.read<S>("empty").cols(), 5);
  // Straight into a ParamBank, no temporary.
  moe::ParamBank<S> into(4, 3, 2);
  file.read_into("bank", into.all());
  EXPECT_EQ(into[2], file.read<S>("bank").middleRows(6, 3));
  EXPECT_NO_THROW(file.expect_shape("bank", {4, 3, 2}));
  MOE_EXPECT_IO_ERROR(file.expect_shape("bank", {12, 2}), "m.safetensors", "'bank'", "[4, 3, 2]",
                      "expected [12, 2]");
}

TYPED_TEST(Safetensors, WrongDestinationShapeNamesFileTensorAndShapes) {
  using S = TypeParam;
  ScratchDir dir;
  SafetensorsWriter().add("w1", RowMatrix<S>::Zero(8, 4), {2, 4, 4}).write(dir / "m.safetensors");
  const auto file = SafetensorsFile::open(dir / "m.safetensors");
  RowMatrix<S> out(4, 4);
  MOE_EXPECT_IO_ERROR(file.read_into("w1", out), "m.safetensors", "tensor 'w1'", "[2, 4, 4]",
                      "reads as [8, 4]", "destination is [4, 4]");
  MOE_EXPECT_IO_ERROR(file.read<S>("w2"), "m.safetensors", "tensor 'w2'", "no such tensor");
}

TEST(SafetensorsView, F32IsZeroCopyAndKeepsTheMappingAlive) {
  ScratchDir dir;
  const RowMatrix<float> w = moe::test::random_matrix<float>(6, 3, 4);
  SafetensorsWriter().add("a", RowMatrix<float>::Ones(1, 3), Dtype::F16).add("w", w).write(dir / "m.st");
  moe::io::FloatTensor view;
  {
    const auto file = SafetensorsFile::open(dir / "m.st");
    view = file.view_f32("w");
    EXPECT_TRUE(view.zero_copy());
    EXPECT_EQ(static_cast<const void*>(view.data()), static_cast<const void*>(file.bytes("w").data()));
    const auto converted = file.view_f32("a");  // F16: a converted copy
    EXPECT_FALSE(converted.zero_copy());
    EXPECT_EQ(converted.matrix(), RowMatrix<float>::Ones(1, 3));
  }
  EXPECT_EQ(view.matrix(), w);  // the file object is gone; the view still holds the mapping
  EXPECT_EQ(view.shape(), (std::vector<Index>{6, 3}));
  const moe::io::FloatTensor copy = view;
  EXPECT_EQ(copy.data(), view.data());
}

// A few megabytes: mapped, not copied; the view's rows are the file's rows.
TEST(SafetensorsView, LargeFileIsMappedAndViewedInPlace) {
  ScratchDir dir;
  const RowMatrix<float> w = moe::test::random_matrix<float>(1024, 1000, 9);
  SafetensorsWriter().add("w", w).add("b", w.row(3), Dtype::BF16).write(dir / "big.st");
  const auto file = SafetensorsFile::open(dir / "big.st");
  EXPECT_TRUE(file.memory_mapped());
  EXPECT_FALSE(SafetensorsFile::from_bytes(moe::test::read_bytes(dir / "big.st")).memory_mapped());
  const auto view = file.view_f32("w");
  EXPECT_TRUE(view.zero_copy());
  EXPECT_EQ(view.matrix(), w);
  EXPECT_EQ(view.matrix().row(1000), w.row(1000));
}

// An unpadded header puts F32 data at an odd address: the view copies rather than misalign.
TEST(SafetensorsView, MisalignedF32FallsBackToACopy) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_NE((8 + header.size()) % 4, 0u);
  const auto file = SafetensorsFile::from_bytes(
      moe::test::safetensors_bytes(header, moe::test::floats({1.5f, -2.0f})), "odd.st");
  const auto view = file.view_f32("w");
  EXPECT_FALSE(view.zero_copy());
  EXPECT_EQ(view.data()[0], 1.5f);
  EXPECT_EQ(view.data()[1], -2.0f);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(view.data()) % alignof(float), 0u);
}

// The writer's bytes, as the reference implementation lays them out: metadata first, tensors by
// dtype (wider first) then name, offsets from the end of the header, header padded with spaces.
TEST(SafetensorsWriter, LayoutMatchesTheReference) {
  SafetensorsWriter w;
  w.add("b", RowMatrix<float>::Constant(1, 1, 2.0f), Dtype::BF16);
  w.add("z", RowMatrix<float>::Constant(1, 2, 1.0f));
  w.add("a", RowMatrix<float>::Constant(1, 1, 3.0f));
  w.metadata("format", "pt");
  const auto bytes = w.bytes();
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]},)"
      R"("z":{"dtype":"F32","shape":[1,2],"data_offsets":[4,12]},)"
      R"("b":{"dtype":"BF16","shape":[1,1],"data_offsets":[12,14]}})";
  const std::size_t padded = (json.size() + 7) / 8 * 8;
  ASSERT_EQ(bytes.size(), 8 + padded + 14);
  EXPECT_EQ(moe::detail::load_le<std::uint64_t>(bytes.data()), padded);
  const std::string header(reinterpret_cast<const char*>(bytes.data()) + 8, padded);
  EXPECT_EQ(header, json + std::string(padded - json.size(), ' '));
  const auto file = SafetensorsFile::from_bytes(bytes);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a", "b", "z"}));
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.read<float>("b")(0, 0), 2.0f);
}

TEST(SafetensorsWriter, NamesAndMetadataAreEscaped) {
  SafetensorsWriter w;
  const std::string name = "layers.0.\"q\"\\\n\xc3\xa9";
  w.add(name, RowMatrix<float>::Ones(1, 1)).metadata("k\"", "v\x01");
  const auto file = SafetensorsFile::from_bytes(w.bytes());
  EXPECT_TRUE(file.contains(name));
  EXPECT_EQ(file.metadata().at("k\""), "v\x01");
}

TEST(SafetensorsWriter, RejectsBadTensors) {
  SafetensorsWriter w;
  w.add("x", RowMatrix<float>::Ones(2, 2));
  EXPECT_THROW(w.add("x", RowMatrix<float>::Ones(1, 1)), moe::config_error);
  EXPECT_THROW(w.add("__metadata__", RowMatrix<float>::Ones(1, 1)), moe::config_error);
  EXPECT_THROW(w.add("bad\xff", RowMatrix<float>::Ones(1, 1)), moe::config_error);
  EXPECT_THROW(w.add("y", RowMatrix<float>::Ones(2, 2), {3}), moe::shape_error);
  EXPECT_THROW(w.add("y", RowMatrix<float>::Ones(2, 2), {-2, -2}), moe::config_error);
  EXPECT_THROW(w.add("y", RowMatrix<float>::Ones(2, 2), Dtype::I32), moe::config_error);
  EXPECT_EQ(w.size(), 1u);
}

TEST(SafetensorsWriter, TakesColumnMajorMatricesArraysAndExpressions) {
  Eigen::MatrixXf col(2, 3);
  col << 1, 2, 3, 4, 5, 6;
  const Eigen::ArrayXXd array = Eigen::ArrayXXd::Constant(2, 2, 0.5);
  SafetensorsWriter w;
  w.add("col", col).add("array", array).add("expr", col.transpose() * 2.0f);
  const auto file = SafetensorsFile::from_bytes(w.bytes());
  EXPECT_EQ(file.read<float>("col"), RowMatrix<float>(col));
  EXPECT_EQ(file.read<double>("array"), RowMatrix<double>::Constant(2, 2, 0.5));
  EXPECT_EQ(file.read<float>("expr"), RowMatrix<float>(col.transpose() * 2.0f));
}

TEST(SafetensorsWriter, WritesAtomically) {
  ScratchDir dir;
  SafetensorsWriter w;
  w.add("x", RowMatrix<float>::Ones(2, 2));
  w.write(dir / "m.st");
  EXPECT_EQ(moe::test::read_bytes(dir / "m.st"), w.bytes());
  // A directory is not replaced (detail/atomic_write_test.cpp has the other kinds of file).
  std::filesystem::create_directory(dir / "d.st");
  MOE_EXPECT_IO_ERROR(w.write(dir / "d.st"), "SafetensorsWriter::write", "d.st", "not a regular file");
  EXPECT_TRUE(std::filesystem::is_directory(dir / "d.st"));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 2);  // no temporary left
  MOE_EXPECT_IO_ERROR(w.write(dir / "no" / "such" / "dir.st"), "SafetensorsWriter::write", "dir.st");
}

TEST(SafetensorsFile, MissingOrNonRegularFile) {
  ScratchDir dir;
  MOE_EXPECT_IO_ERROR(SafetensorsFile::open(dir / "absent.st"), "SafetensorsFile::open",
                      "absent.st", "cannot open");
  MOE_EXPECT_IO_ERROR(SafetensorsFile::open(dir.path()), "not a regular file");
  // A FIFO with no writer must not block open().
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  MOE_EXPECT_IO_ERROR(SafetensorsFile::open(dir / "fifo"), "fifo", "not a regular file");
}

TEST(SafetensorsFile, IntegerTensorsOpenButDoNotRead) {
  std::vector<std::byte> data(16, std::byte{1});
  const auto file = SafetensorsFile::from_bytes(moe::test::safetensors_bytes(
      R"({"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", data), "ids.st");
  EXPECT_EQ(file.info("ids").dtype, Dtype::I64);
  EXPECT_EQ(file.bytes("ids").size(), 16u);
  MOE_EXPECT_IO_ERROR(file.read<float>("ids"), "ids.st", "tensor 'ids'", "dtype I64",
                      "expected F16, BF16, F32 or F64");
  MOE_EXPECT_IO_ERROR(file.view_f32("ids"), "tensor 'ids'", "dtype I64");
}

TEST(SafetensorsFile, EmptyHeaderIsAnEmptyFile) {
  const auto file = SafetensorsFile::from_bytes(moe::test::safetensors_bytes("{}      ", {}));
  EXPECT_EQ(file.size(), 0u);
  EXPECT_TRUE(file.names().empty());
}

}  // namespace
