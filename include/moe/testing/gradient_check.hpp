// The public gradient checker: compares analytic gradients with central finite differences in
// double, so that a user can check a custom expert in three lines (not included by moe.hpp):
//
//   #include <moe/testing/gradient_check.hpp>
//   const auto result = moe::testing::check_expert(MyExpert<double>(config));
//   EXPECT_TRUE(result.ok) << result.log;
//
// Errors are relative, ‖a − n‖ / ‖a + n‖ per tensor (a analytic, n numeric), as in mlpack.
// A tensor whose true gradient is zero but whose loss still depends on it (θ at an extremum)
// gives numeric noise against an exact zero, a relative error near 1: check such points elsewhere.
#pragma once

#include "moe/concepts.hpp"
#include "moe/errors.hpp"
#include "moe/random.hpp"
#include "moe/parameters.hpp"

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <functional>
#include <iomanip>
#include <limits>
#include <numeric>
#include <span>
#include <sstream>
#include <string>
#include <vector>

namespace moe::testing {

struct GradCheckOptions {
  double step = 1e-6;       // h of the central difference (loss(θ + h) − loss(θ − h)) / 2h
  double tolerance = 1e-6;  // the largest relative error a tensor may have
};

struct GradCheckResult {
  bool ok = true;           // every tensor within tolerance, and (check_expert) every contract check passed
  double worst_error = 0;   // the largest relative error of any comparison (NaN if one was NaN)
  std::string log;          // one line per tensor: name, shape, relative error, ok/FAIL, worst entries
};

// ‖a − n‖ / ‖a + n‖ over all entries, in double: 0 when a = n (both zero included), +inf when
// a = −n ≠ 0, NaN when an entry is NaN.
inline double relative_error(std::span<const double> a, std::span<const double> n) {
  MOE_ASSERT(a.size() == n.size());
  double diff = 0, sum = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - n[i]) * (a[i] - n[i]);
    sum += (a[i] + n[i]) * (a[i] + n[i]);
  }
  if (diff == 0) return 0;
  if (sum == 0) return std::numeric_limits<double>::infinity();
  return std::sqrt(diff) / std::sqrt(sum);
}

namespace detail {

inline std::string shape_text(Index rows, Index cols) { return moe::detail::concat("[", rows, " x ", cols, "]"); }

// Adds error to result (worst_error, ok) and writes "indent name [r x c]  relative error e  ok|FAIL".
inline void record(GradCheckResult& result, std::ostream& log, const std::string& indent, const std::string& label,
                   std::size_t width, double error, double tolerance) {
  const bool ok = error <= tolerance;  // false for NaN
  result.ok = result.ok && ok;
  if (std::isnan(error) || error > result.worst_error) result.worst_error = error;  // NaN stays
  log << indent << std::left << std::setw(static_cast<int>(width)) << label << "  relative error "
      << std::scientific << std::setprecision(2) << error << std::defaultfloat << "  " << (ok ? "ok" : "FAIL")
      << "\n";
}

// Writes the (up to 5) entries with the largest |analytic − numeric|.
inline void log_worst_entries(std::ostream& log, const std::string& indent, const ParameterView<double>& analytic,
                              const std::vector<double>& numeric) {
  const auto a = analytic.values();
  std::vector<std::size_t> order(a.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  const auto gap = [&](std::size_t i) {
    const double g = std::abs(a[i] - numeric[i]);
    return std::isnan(g) ? std::numeric_limits<double>::infinity() : g;
  };
  const std::size_t shown = std::min<std::size_t>(5, order.size());
  std::partial_sort(order.begin(), order.begin() + shown, order.end(),
                    [&](std::size_t i, std::size_t j) { return gap(i) > gap(j) || (gap(i) == gap(j) && i < j); });
  for (std::size_t k = 0; k < shown; ++k) {
    const std::size_t i = order[k];
    const Index cols = std::max<Index>(analytic.cols, 1);
    log << indent << "  (" << static_cast<Index>(i) / cols << ", " << static_cast<Index>(i) % cols
        << "): analytic " << std::setprecision(10) << a[i] << "  numeric " << numeric[i] << std::defaultfloat
        << "\n";
  }
}

inline std::size_t label_width(const ParameterList<double>& tensors) {
  std::size_t width = 0;
  for (const auto& t : tensors) width = std::max(width, t.name.size() + 1 + shape_text(t.rows, t.cols).size());
  return width;
}

// check_gradients, with every log line prefixed by indent and labels padded to at least min_width.
inline GradCheckResult check_gradients(const std::function<double()>& loss, const ParameterList<double>& params,
                                       const ParameterList<double>& analytic, const GradCheckOptions& options,
                                       const std::string& indent, std::size_t min_width) {
  check_matching(params, analytic, "check_gradients");
  moe::detail::check_config(std::isfinite(options.step) && options.step > 0, "check_gradients",
                            "step = ", options.step, " but must be > 0");
  moe::detail::check_config(options.tolerance >= 0, "check_gradients", "tolerance = ", options.tolerance,
                            " but must be >= 0");
  GradCheckResult result;
  std::ostringstream log;
  const std::size_t width = std::max(label_width(params), min_width);
  for (std::size_t t = 0; t < params.size(); ++t) {
    const auto theta = params[t].values();
    std::vector<double> numeric(theta.size());
    for (std::size_t i = 0; i < theta.size(); ++i) {
      const double original = theta[i];
      double plus = 0, minus = 0;
      try {
        theta[i] = original + options.step;
        plus = loss();
        theta[i] = original - options.step;
        minus = loss();
      } catch (...) {
        theta[i] = original;
        throw;
      }
      theta[i] = original;
      numeric[i] = (plus - minus) / (2 * options.step);
    }
    const double error = relative_error(analytic[t].values(), numeric);
    record(result, log, indent, params[t].name + " " + shape_text(params[t].rows, params[t].cols), width, error,
           options.tolerance);
    if (!(error <= options.tolerance)) log_worst_entries(log, indent, analytic[t], numeric);
  }
  result.log = log.str();
  return result;
}

inline void merge(GradCheckResult& into, const GradCheckResult& part) {
  into.ok = into.ok && part.ok;
  if (std::isnan(part.worst_error) || part.worst_error > into.worst_error) into.worst_error = part.worst_error;
  into.log += part.log;
}

// Rows [begin, end) of a [rows, cols] tensor, under the same name + suffix.
inline ParameterView<double> row_block(const ParameterView<double>& t, Index begin, Index end, const std::string& suffix) {
  return {t.name + suffix, t.data + begin * t.cols, end - begin, t.cols};
}

}  // namespace detail

// check_gradients(loss, params, analytic, options)
//   requires: loss() reads the parameters through the memory params views (and nothing it
//             changes between calls); analytic lists the same names and shapes as params.
//   ensures:  for every entry θ_i of every tensor, numeric_i = (loss(θ_i + h) − loss(θ_i − h)) / 2h
//             with θ_i restored exactly afterwards (also when loss throws); one log line per
//             tensor, and for a failing tensor its worst entries (index, analytic, numeric).
//   throws:   shape_error if analytic does not match params; config_error for step <= 0 or
//             tolerance < 0; whatever loss throws.
inline GradCheckResult check_gradients(const std::function<double()>& loss, const ParameterList<double>& params,
                                       const ParameterList<double>& analytic, GradCheckOptions options = {}) {
  return detail::check_gradients(loss, params, analytic, options, "", 0);
}

// check_expert(expert, rows, seed, options): checks the TrainableExpert contract of every expert e.
//   requires: every tensor the expert lists is a bank of num_experts() equal row blocks, expert e's
//             block the e-th (as view(name, ParamBank) gives); X is copyable (a copy is perturbed).
//   checks, for each e, with seeded x, d_y: [rows, d_model()] and the loss ⟨expert_e(x), d_y⟩:
//     - make_gradients() lists the expert's names and shapes, all zero;
//     - backward's d_x (tensor "x") and expert e's block of every gradient ("name[e]") against
//       central differences (x and a copy of the expert perturbed through collect_parameters());
//     - the other experts' blocks of every gradient are exactly zero;
//     - a second forward + backward into the same gradients gives the same d_x (overwritten) and
//       twice the gradients (accumulated).
//   d_x and both scratch buffers are filled with NaN before each call, so reading them before
//   writing shows up as a failure. The log starts with the settings (to reproduce a run), then per
//   expert one line per tensor and one per contract check.
//   throws:   config_error for rows < 1 or bad options; whatever the expert throws.
template <TrainableExpert X>
  requires std::same_as<typename X::Scalar, double> && std::copy_constructible<X>
GradCheckResult check_expert(const X& expert, Index rows = 5, std::uint64_t seed = 0, GradCheckOptions options = {}) {
  moe::detail::check_config(rows >= 1, "check_expert", "rows = ", rows, " but must be >= 1");
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  const Index num_experts = expert.num_experts(), d = expert.d_model();
  GradCheckResult result;

  result.log += moe::detail::concat("check_expert: num_experts = ", num_experts, ", d_model = ", d, ", rows = ", rows,
                                    ", seed = ", seed, ", step = ", options.step, ", tolerance = ", options.tolerance,
                                    "\n");
  X copy = expert;  // perturbed through its views; never moved after collect_parameters
  ParameterList<double> params;
  copy.collect_parameters("", params);
  for (const auto& p : params)
    if (num_experts > 0 && p.rows % num_experts != 0) {
      result.ok = false;
      result.log += moe::detail::concat(p.name, " ", detail::shape_text(p.rows, p.cols), "  FAIL: rows = ", p.rows,
                                        " is not a multiple of num_experts() = ", num_experts,
                                        " (check_expert needs every tensor to be a bank of per-expert row blocks)\n");
    }
  if (!result.ok) return result;

  Generator rng(seed);
  const auto random = [&](Index r, Index c) {
    RowMatrix<double> m(r, c);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = uniform(rng, -1.0, 1.0);
    return m;
  };
  for (Index e = 0; e < num_experts; ++e) {
    result.log += moe::detail::concat("expert ", e, ":\n");
    const RowMatrix<double> x = random(rows, d), d_y = random(rows, d);
    std::vector<double> saved(static_cast<std::size_t>(expert.scratch_size(rows)), nan);
    std::vector<double> scratch(static_cast<std::size_t>(expert.backward_scratch_size(rows)), nan);
    RowMatrix<double> y(rows, d), d_x = RowMatrix<double>::Constant(rows, d, nan);

    auto grads = expert.make_gradients();
    ParameterList<double> grad_list;
    grads.collect_parameters("", grad_list);
    try {
      check_matching(params, grad_list, "make_gradients()");
    } catch (const shape_error& error) {
      result.ok = false;
      result.log += moe::detail::concat("  FAIL: ", error.what(), "\n");
      continue;
    }
    for (const auto& g : grad_list)
      if (!g.matrix().isZero(0)) {
        result.ok = false;
        result.log += moe::detail::concat("  FAIL: make_gradients() gave a non-zero ", g.name, "\n");
      }

    expert.forward(e, x, y, saved);
    expert.backward(e, x, saved, d_y, d_x, grads, scratch);

    // Finite differences on x and on expert e's block of every parameter.
    RowMatrix<double> x_perturbed = x, y_perturbed(rows, d);
    std::vector<double> saved_perturbed(saved.size());
    ParameterList<double> checked{view("x", x_perturbed)}, analytic{view("x", d_x)};
    const std::string suffix = moe::detail::concat("[", e, "]");
    for (std::size_t i = 0; i < params.size(); ++i) {
      const Index block = params[i].rows / num_experts;
      checked.push_back(detail::row_block(params[i], e * block, (e + 1) * block, suffix));
      analytic.push_back(detail::row_block(grad_list[i], e * block, (e + 1) * block, suffix));
    }
    const auto loss = [&] {
      copy.forward(e, x_perturbed, y_perturbed, saved_perturbed);
      return (y_perturbed.array() * d_y.array()).sum();
    };
    const std::string again_d_x = "d_x again: overwritten, the same";
    const std::string again_grads = moe::detail::concat("grads[", e, "] again: accumulated, twice");
    const std::string others_label = "other experts' grads: all zero";
    const std::size_t width =
        std::max({detail::label_width(checked), again_d_x.size(), again_grads.size(), others_label.size()});
    detail::merge(result, detail::check_gradients(loss, checked, analytic, options, "  ", width));

    // Accumulation: a second forward + backward into the same gradients.
    std::vector<double> twice_first;
    for (std::size_t i = 1; i < analytic.size(); ++i)
      for (const double v : analytic[i].values()) twice_first.push_back(2 * v);
    const RowMatrix<double> first_d_x = d_x;
    std::fill(saved.begin(), saved.end(), nan);
    std::fill(scratch.begin(), scratch.end(), nan);
    d_x.setConstant(nan);
    expert.forward(e, x, y, saved);
    expert.backward(e, x, saved, d_y, d_x, grads, scratch);
    std::vector<double> second;
    for (std::size_t i = 1; i < analytic.size(); ++i)
      for (const double v : analytic[i].values()) second.push_back(v);
    std::ostringstream log;
    detail::record(result, log, "  ", again_d_x, width,
                   relative_error({d_x.data(), static_cast<std::size_t>(d_x.size())},
                                  {first_d_x.data(), static_cast<std::size_t>(first_d_x.size())}),
                   options.tolerance);
    detail::record(result, log, "  ", again_grads, width,
                   relative_error(second, twice_first), options.tolerance);

    // The other experts' blocks, after both calls: the first non-zero entry of each tensor.
    bool others_zero = true;
    for (const auto& g : grad_list) {
      const Index block = g.rows / num_experts;
      const auto values = g.values();
      for (std::size_t i = 0; i < values.size(); ++i) {
        const Index r = static_cast<Index>(i) / g.cols, c = static_cast<Index>(i) % g.cols;
        if ((r >= e * block && r < (e + 1) * block) || values[i] == 0) continue;
        others_zero = false;
        log << "  FAIL: " << g.name << " (" << r << ", " << c << ") = " << values[i] << " is outside expert " << e
            << "'s rows [" << e * block << ", " << (e + 1) * block << ") but not zero\n";
        break;
      }
    }
    if (others_zero) log << "  " << std::left << std::setw(static_cast<int>(width)) << others_label << "  ok\n";
    result.ok = result.ok && others_zero;
    result.log += log.str();
  }
  if (num_experts == 0) result.log += "no experts to check\n";
  return result;
}

}  // namespace moe::testing
