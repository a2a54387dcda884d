// Parameter views: what they point at, the matching check, zeroing, the global norm and clipping.
#include <moe/parameters.hpp>

#include "support/compare.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace MOE_TEST_FILE_ID {

using moe::Index;
using moe::RowMatrix;

template <class S>
class ParametersTest : public ::testing::Test {};
TYPED_TEST_SUITE(ParametersTest, moe::test::Scalars);

// Expects a shape_error whose message contains every one of the given parts.
template <class F>
void expect_shape_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no shape_error";
  } catch (const moe::shape_error& e) {
    for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TYPED_TEST(ParametersTest, ViewsPointAtTheTensorWithItsShape) {
  using S = TypeParam;
  RowMatrix<S> m(3, 5);
  moe::Vector<S> v(4);
  moe::ParamBank<S> bank(4, 3, 2);

  const auto mv = moe::view<S>("m", m);
  EXPECT_EQ(mv.name, "m");
  EXPECT_EQ(mv.data, m.data());
  EXPECT_EQ(mv.rows, 3);
  EXPECT_EQ(mv.cols, 5);
  EXPECT_EQ(mv.size(), 15);
  EXPECT_EQ(mv.values().size(), 15u);

  const auto vv = moe::view<S>("v", v);
  EXPECT_EQ(vv.data, v.data());
  EXPECT_EQ(vv.rows, 1);
  EXPECT_EQ(vv.cols, 4);

  const auto bv = moe::view<S>("bank", bank);  // [E·rows, cols]
  EXPECT_EQ(bv.data, bank.all().data());
  EXPECT_EQ(bv.rows, 12);
  EXPECT_EQ(bv.cols, 2);

  // Writing through the view writes the tensor: row-major, expert e's block is rows [3e, 3e+3).
  bv.matrix()(7, 1) = S(5);
  EXPECT_EQ(bank[2](1, 1), S(5));
  mv.values()[6] = S(-2);
  EXPECT_EQ(m(1, 1), S(-2));
}

TYPED_TEST(ParametersTest, AddParameterPrefixesAndSkipsEmptyTensors) {
  using S = TypeParam;
  RowMatrix<S> weight(2, 3), bias;  // bias absent
  moe::ParameterList<S> list;
  moe::add_parameter(list, "layer.", "weight", weight);
  moe::add_parameter(list, "layer.", "bias", bias);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "layer.weight");
  EXPECT_EQ(list[0].data, weight.data());
}

TYPED_TEST(ParametersTest, CheckMatchingAcceptsTheSameNamesAndShapes) {
  using S = TypeParam;
  RowMatrix<S> a(2, 3), b(1, 4), da(2, 3), db(1, 4);
  const moe::ParameterList<S> params{moe::view<S>("a", a), moe::view<S>("b", b)};
  const moe::ParameterList<S> grads{moe::view<S>("a", da), moe::view<S>("b", db)};
  EXPECT_NO_THROW(moe::check_matching(params, grads, "test"));
}

TYPED_TEST(ParametersTest, CheckMatchingNamesTheMismatch) {
  using S = TypeParam;
  RowMatrix<S> a(2, 3), b(1, 4), da(2, 3), db(1, 4), wrong_rows(3, 3), wrong_cols(1, 5);
  const moe::ParameterList<S> params{moe::view<S>("a", a), moe::view<S>("b", b)};

  expect_shape_error([&] { moe::check_matching(params, {moe::view<S>("a", da)}, "Opt::step"); },
                     {"Opt::step", "grads.size() = 1", "params.size() = 2"});
  expect_shape_error([&] { moe::check_matching(params, {moe::view<S>("b", db), moe::view<S>("a", da)}, "Opt::step"); },
                     {"Opt::step", "grads[0] is 'b'", "params[0] is 'a'"});
  expect_shape_error(
      [&] { moe::check_matching(params, {moe::view<S>("a", wrong_rows), moe::view<S>("b", db)}, "Opt::step"); },
      {"Opt::step", "a rows = 3", "parameter rows = 2"});
  expect_shape_error(
      [&] { moe::check_matching(params, {moe::view<S>("a", da), moe::view<S>("b", wrong_cols)}, "Opt::step"); },
      {"Opt::step", "b cols = 5", "parameter cols = 4"});
}

TYPED_TEST(ParametersTest, ZeroClearsEveryTensor) {
  using S = TypeParam;
  RowMatrix<S> a = moe::test::random_matrix<S>(2, 3, 1), b = moe::test::random_matrix<S>(4, 1, 2);
  moe::zero(moe::ParameterList<S>{moe::view<S>("a", a), moe::view<S>("b", b)});
  EXPECT_TRUE(a.isZero(0));
  EXPECT_TRUE(b.isZero(0));
}

TYPED_TEST(ParametersTest, GlobalNormIsTheNormOverAllTensors) {
  using S = TypeParam;
  RowMatrix<S> a(1, 2), b(2, 1);
  a << S(1), S(2);
  b << S(2), S(4);  // 1 + 4 + 4 + 16 = 25
  EXPECT_DOUBLE_EQ(moe::global_norm(moe::ParameterList<S>{moe::view<S>("a", a), moe::view<S>("b", b)}), 5.0);
  EXPECT_EQ(moe::global_norm(moe::ParameterList<S>{}), 0.0);

  const RowMatrix<S> r = moe::test::random_matrix<S>(7, 8, 3);
  RowMatrix<S> copy = r;
  EXPECT_NEAR(moe::global_norm(moe::ParameterList<S>{moe::view<S>("r", copy)}), r.template cast<double>().norm(),
              1e-12);
}

TYPED_TEST(ParametersTest, ClipGradNormScalesToMaxNormAndReturnsTheNormBefore) {
  using S = TypeParam;
  RowMatrix<S> a = moe::test::random_matrix<S>(3, 4, 4), b = moe::test::random_matrix<S>(1, 5, 5);
  const RowMatrix<S> a0 = a, b0 = b;
  const moe::ParameterList<S> grads{moe::view<S>("a", a), moe::view<S>("b", b)};
  const double before = std::sqrt(a0.template cast<double>().squaredNorm() + b0.template cast<double>().squaredNorm());
  ASSERT_GT(before, 1.0);

  const double max_norm = 0.5;
  EXPECT_NEAR(moe::clip_grad_norm(grads, max_norm), before, 1e-6);
  // torch: factor max_norm / (norm + 1e-6), the same factor for every tensor.
  const double factor = max_norm / (before + 1e-6);
  EXPECT_NEAR(moe::global_norm(grads), max_norm, 1e-5);
  MOE_EXPECT_CLOSE(S, a, (a0.template cast<double>() * factor).eval());
  MOE_EXPECT_CLOSE(S, b, (b0.template cast<double>() * factor).eval());
}

TYPED_TEST(ParametersTest, ClipGradNormLeavesSmallGradientsUntouched) {
  using S = TypeParam;
  RowMatrix<S> a = moe::test::random_matrix<S>(3, 4, 6);
  const RowMatrix<S> a0 = a;
  const moe::ParameterList<S> grads{moe::view<S>("a", a)};
  const double norm = moe::global_norm(grads);
  EXPECT_DOUBLE_EQ(moe::clip_grad_norm(grads, norm * 2), norm);
  EXPECT_EQ(a, a0);  // bit for bit
}

TYPED_TEST(ParametersTest, ClipGradNormRejectsANonPositiveMaxNorm) {
  using S = TypeParam;
  RowMatrix<S> a(1, 1);
  const moe::ParameterList<S> grads{moe::view<S>("a", a)};
  for (double bad : {0.0, -1.0}) {
    try {
      moe::clip_grad_norm(grads, bad);
      ADD_FAILURE() << "no config_error for max_norm = " << bad;
    } catch (const moe::config_error& e) {
      EXPECT_NE(std::string(e.what()).find("clip_grad_norm: max_norm"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
