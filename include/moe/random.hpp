// Seeded, portable random numbers. std::uniform_real_distribution and std::normal_distribution
// are implementation-defined, so the same seed would give different weights with another
// standard library; these functions give the same bits everywhere (std::mt19937_64 is exactly
// specified by the standard).
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>
#include <type_traits>

namespace moe {

using Generator = std::mt19937_64;

// Uniform in [0, 1) with 53 random bits.
inline double uniform01(Generator& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// Uniform in [low, high).
inline double uniform(Generator& rng, double low, double high) {
  return low + (high - low) * uniform01(rng);
}

// Standard normal by Box–Muller (one value per call; the second is discarded for simplicity).
inline double standard_normal(Generator& rng) {
  const double u1 = 1.0 - uniform01(rng);  // (0, 1]: log is finite
  const double u2 = uniform01(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

// Fills a parameter the way torch.nn.Linear does by default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
template <class Derived>
void init_linear_uniform(Derived&& values, Eigen::Index fan_in, Generator& rng) {
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  for (Eigen::Index i = 0; i < values.rows(); ++i)
    for (Eigen::Index j = 0; j < values.cols(); ++j)
      values(i, j) = static_cast<typename std::decay_t<Derived>::Scalar>(uniform(rng, -bound, bound));
}

}  // namespace moe
