#include <moe/io/npy.hpp>

#include "io/io_files.hpp"
#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;
using moe::io::NpyFile;
using moe::test::ScratchDir;

template <class S>
class Npy : public ::testing::Test {};
TYPED_TEST_SUITE(Npy, moe::test::Scalars);

// A .npy file from a header dict as written (padded to 64 like numpy) and raw data.
std::vector<std::byte> npy(const std::string& dict, const std::vector<std::byte>& data, int major = 1) {
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  std::string header = dict;
  header += std::string(63 - (8 + length_bytes + header.size()) % 64, ' ') + "\n";
  std::vector<std::byte> out = moe::test::to_bytes("\x93NUMPY");
  out.push_back(std::byte(major));
  out.push_back(std::byte{0});
  for (std::size_t i = 0; i < length_bytes; ++i)
    out.push_back(std::byte((header.size() >> (8 * i)) & 0xff));
  moe::test::append(out, moe::test::to_bytes(header));
  moe::test::append(out, data);
  return out;
}

TYPED_TEST(Npy, RoundTripIsBitExact) {
  using S = TypeParam;
  ScratchDir dir;
  RowMatrix<S> x = moe::test::random_matrix<S>(7, 8, 5);
  x(0, 0) = std::numeric_limits<S>::infinity();
  x(0, 1) = std::numeric_limits<S>::quiet_NaN();
  x(0, 2) = S(-0.0);
  moe::io::write_npy(dir / "x.npy", x);
  const auto file = NpyFile::open(dir / "x.npy");
  EXPECT_EQ(file.dtype(), sizeof(S) == 4 ? moe::io::Dtype::F32 : moe::io::Dtype::F64);
  EXPECT_EQ(file.shape(), (std::vector<Index>{7, 8}));
  const RowMatrix<S> back = file.read<S>();
  ASSERT_EQ(back.rows(), 7);
  for (Index i = 0; i < x.size(); ++i)
    EXPECT_EQ(std::bit_cast<std::uint64_t>(double(back.data()[i])),
              std::bit_cast<std::uint64_t>(double(x.data()[i])));
  // float -> double is exact, double -> float rounds to nearest.
  const RowMatrix<double> wide = file.read<double>();
  for (Index i = 0; i < x.size(); ++i)
    EXPECT_EQ(std::bit_cast<std::uint64_t>(wide.data()[i]),
              std::bit_cast<std::uint64_t>(double(x.data()[i])));
  RowMatrix<float> as_float = file.read<float>();
  EXPECT_EQ(as_float(3, 3), static_cast<float>(x(3, 3)));
}

// The exact bytes numpy.save writes for np.arange(6, dtype=np.float32).reshape(2, 3) (1.24).
TEST(NpyWrite, BytesMatchNumpySave) {
  RowMatrix<float> x(2, 3);
  x << 0, 1, 2, 3, 4, 5;
  const auto bytes = moe::io::npy_bytes(x, {2, 3});
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  ASSERT_EQ(bytes.size(), 128u + 24u);
  const std::string header(reinterpret_cast<const char*>(bytes.data()), 128);
  EXPECT_EQ(header.substr(0, 10), std::string("\x93NUMPY\x01\x00\x76\x00", 10));
  EXPECT_EQ(header.substr(10, dict.size()), dict);
  EXPECT_EQ(header.substr(10 + dict.size()), std::string(128 - 11 - dict.size(), ' ') + "\n");
  EXPECT_EQ(moe::detail::load_le<float>(bytes.data() + 128 + 4 * 5), 5.0f);
}

TEST(NpyWrite, DataStartsAtAMultipleOf64ForEveryShape) {
  for (const std::vector<Index>& shape : std::vector<std::vector<Index>>{
           {}, {0}, {3}, {1, 1}, {12345678901, 0}, {2, 3, 4, 5, 0, 7}}) {
    Index n = 1;
    for (const Index d : shape) n *= d;
    const auto bytes = moe::io::npy_bytes(RowMatrix<double>::Zero(1, n), shape);
    const std::size_t data = bytes.size() - static_cast<std::size_t>(n) * 8;
    EXPECT_EQ(data % 64, 0u) << moe::detail::npy_shape(shape);
    EXPECT_EQ(static_cast<char>(bytes[data - 1]), '\n');
    const auto file = NpyFile::from_bytes(bytes);
    EXPECT_EQ(file.shape(), shape);
  }
  EXPECT_THROW(moe::io::npy_bytes(RowMatrix<float>::Zero(2, 2), {3}), moe::shape_error);
}

// Shapes as matrices: (n,) is one row, () is [1, 1], (a, b, c) is [a·b, c].
TYPED_TEST(Npy, ShapesFoldLeadingAxesIntoRows) {
  using S = TypeParam;
  const RowMatrix<S> x = moe::test::random_matrix<S>(6, 2, 6);
  const auto one_d = NpyFile::from_bytes(moe::io::npy_bytes(x, {12}));
  EXPECT_EQ(one_d.rows(), 1);
  EXPECT_EQ(one_d.cols(), 12);
  EXPECT_EQ(moe::detail::npy_shape(one_d.shape()), "(12,)");
  const auto three_d = NpyFile::from_bytes(moe::io::npy_bytes(x, {2, 3, 2}));
  EXPECT_EQ(three_d.template read<S>(), x);
  const auto scalar = NpyFile::from_bytes(moe::io::npy_bytes(x.block(0, 0, 1, 1), {}));
  EXPECT_EQ(scalar.template read<S>()(0, 0), x(0, 0));
  RowMatrix<S> wrong(2, 6);
  MOE_EXPECT_IO_ERROR(three_d.read_into(wrong), "<memory>", "(2, 3, 2)", "[6, 2]", "[2, 6]");
}

TEST(NpyRead, VersionsDescrsAndDictSpellings) {
  const auto f16 = npy("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
                       {std::byte{0x00}, std::byte{0x3c}, std::byte{0x00}, std::byte{0xc1}}, 3);
  EXPECT_EQ(NpyFile::from_bytes(f16).read<float>(), (RowMatrix<float>(1, 2) << 1.0f, -2.5f).finished());
  // Key order, double quotes, no trailing comma, spaces inside the tuple: what Python accepts.
  const auto spelled = npy("{\"shape\": ( 1 , 2 ), \"fortran_order\": False, \"descr\": \"<f4\"}",
                           moe::test::floats({0.5f, 4.0f}), 2);
  EXPECT_EQ(NpyFile::from_bytes(spelled).read<double>()(0, 1), 4.0);
}

TEST(NpyRead, BrokenFilesAreIoErrorsNamingWhatWasExpected) {
  const auto two = moe::test::floats({1, 2});
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const auto good = npy(ok_dict, two);
  auto bad_magic = good;
  bad_magic[1] = std::byte{'n'};
  auto bad_version = good;
  bad_version[6] = std::byte{4};
  auto bad_length = good;
  bad_length[9] = std::byte{0x7f};
  auto trailing = good;
  trailing.push_back(std::byte{0});
  const std::vector<std::byte> truncated(good.begin(), good.end() - 1);
  const auto dict = [&](const std::string& d) { return npy(d, two); };
  const std::vector<std::pair<std::vector<std::byte>, std::vector<std::string>>> cases = {
      {{}, {"magic"}},
      {bad_magic, {"magic"}},
      {bad_version, {"version 4.0", "expected 1.0, 2.0 or 3.0"}},
      {bad_length, {"header length", "bytes follow"}},
      {truncated, {"(2,)", "needs 2 × 4", "has 7", "truncated"}},
      {trailing, {"has 9", "trailing bytes"}},
      {dict("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }"),
       {"unsupported descr '>f4'", "'<f4'"}},
      {dict("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }"), {"unsupported descr '<i8'"}},
      {dict("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }"),
       {"fortran_order True", "C order"}},
      {dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2), }"), {"(n,)"}},
      {dict("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }"), {"dimension"}},
      {dict("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }"), {"2^63"}},
      // 2^64 + 1: must not wrap around to a dimension of 1.
      {npy("{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551617,), }",
           moe::test::floats({1})),
       {"2^63"}},
      {dict("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }"),
       {"too many elements"}},
      {dict("{'descr': '<f4', 'fortran_order': False, }"), {"'shape'"}},
      {dict("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"),
       {"unexpected key 'descr'"}},
      {dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}"), {"unexpected key 'x'"}},
      {dict("{'descr': '<f4' 'fortran_order': False, 'shape': (2,), }"), {"',' or '}'"}},
      {dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } x"), {"after the header dict"}},
      {dict("{'descr': '<f\\4', 'fortran_order': False, 'shape': (2,), }"), {"without escapes"}},
      {dict("{'descr': '<f4"), {"closing quote"}},
      {dict("['descr']"), {"'{'"}},
  };
  for (const auto& one_case : cases) {  // no structured binding: clang 14 cannot capture one
    const auto& bytes = one_case.first;
    const auto& parts = one_case.second;
    const std::string message =
        moe::test::io_error_of([&] { NpyFile::from_bytes(bytes, "bad.npy").read<float>(); });
    ASSERT_NE(message, "") << "accepted: " << parts.front();
    EXPECT_EQ(message.rfind("bad.npy: ", 0), 0u) << message;
    for (const auto& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << message << "\n  lacks: " << part;
  }
  for (std::size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW(NpyFile::from_bytes(std::span(good).first(n)), moe::io_error) << n;
}

TEST(NpyFile, OpenNamesThePathAndWriteIsAtomic) {
  ScratchDir dir;
  MOE_EXPECT_IO_ERROR(NpyFile::open(dir / "absent.npy"), "NpyFile::open", "absent.npy");
  moe::test::write_bytes(dir / "bad.npy", moe::test::to_bytes("not numpy"));
  const std::string prefix = (dir / "bad.npy").string() + ": ";
  MOE_EXPECT_IO_ERROR(NpyFile::open(dir / "bad.npy"), prefix, "magic");
  moe::io::write_npy(dir / "x.npy", RowMatrix<double>::Ones(2, 2));
  std::filesystem::create_directory(dir / "d.npy");
  MOE_EXPECT_IO_ERROR(moe::io::write_npy(dir / "d.npy", RowMatrix<double>::Ones(2, 2)), "write_npy",
                      "d.npy", "not a regular file");
  std::filesystem::create_symlink("x.npy", dir / "link.npy");
  MOE_EXPECT_IO_ERROR(moe::io::write_npy(dir / "link.npy", RowMatrix<double>::Ones(2, 2)), "symbolic link");
  moe::io::write_npy(dir / "link.npy", RowMatrix<double>::Zero(1, 3), moe::io::WriteOptions{.follow_symlinks = true});
  EXPECT_EQ(NpyFile::open(dir / "x.npy").read<double>(), RowMatrix<double>::Zero(1, 3));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 4);  // no temporary left
}

}  // namespace
