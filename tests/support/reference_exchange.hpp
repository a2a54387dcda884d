// Plain references for moving tokens to their experts and back (kernels/dispatch.hpp,
// kernels/combine.hpp, dispatch/local_exchange.hpp), written from the definitions: a bucket-by-bucket
// sort, and per-token sums straight from the plan with stand-in experts.
#pragma once

#include <moe/routing.hpp>
#include <moe/types.hpp>

#include <cstdint>

namespace moe::test {

// Bucket by bucket: for each expert, scan the slots in (token, slot) order.
template <class S>
DispatchPlan reference_dispatch(const RoutingPlan<S>& plan) {
  const Index T = plan.expert.rows(), k = plan.expert.cols();
  DispatchPlan d;
  d.row.assign(static_cast<std::size_t>(T * k), kEmptySlot);
  d.offset.push_back(0);
  for (Index e = 0; e < plan.num_experts; ++e) {
    for (Index t = 0; t < T; ++t)
      for (Index j = 0; j < k; ++j)
        if (plan.expert(t, j) == e && plan.dropped(t, j) == 0) {
          d.row[static_cast<std::size_t>(t * k + j)] = static_cast<std::int32_t>(d.token.size());
          d.token.push_back(static_cast<std::int32_t>(t));
        }
    d.offset.push_back(static_cast<Index>(d.token.size()));
  }
  return d;
}

// A stand-in expert e: f_e(v) = (e + 1)·v + (e + 1)/10, elementwise, so every expert differs.
inline double stand_in(Index e, double v) { return static_cast<double>(e + 1) * v + 0.1 * static_cast<double>(e + 1); }

// Per token, straight from the plan: y[t] = Σ_{j active} w[t, j] · f_{expert(t, j)}(x[t]), each
// f rounded to S as an expert's output would be; weighted = false: every w is 1.
//   plan: [T, k];  x: [T, d];  returns [T, d] in double
template <class S>
RowMatrix<double> reference_combine(const RoutingPlan<S>& plan, const RowMatrix<S>& x, bool weighted = true) {
  RowMatrix<double> y = RowMatrix<double>::Zero(x.rows(), x.cols());
  for (Index t = 0; t < x.rows(); ++t)
    for (Index j = 0; j < plan.expert.cols(); ++j) {
      const std::int32_t e = plan.expert(t, j);
      if (e == kEmptySlot || plan.dropped(t, j) != 0) continue;
      const double w = weighted ? static_cast<double>(plan.weight(t, j)) : 1.0;
      for (Index c = 0; c < x.cols(); ++c)
        y(t, c) += w * static_cast<double>(static_cast<S>(stand_in(e, static_cast<double>(x(t, c)))));
    }
  return y;
}

}  // namespace moe::test
