// Which of the CPU's vector units the kernels use, decided at run time: a build with default
// flags runs the best kernels the CPU has (kernels/micro_kernel.hpp compiles each ISA's kernels
// with `target` attributes). The order is a ladder; each rung assumes the ones below it:
//   generic      Eigen's packets for whatever the compiler targets (the only one off x86-64)
//   avx2         AVX2 + FMA
//   avx512       AVX-512 F/BW/VL/DQ
//   avx512bf16   + AVX512-BF16 (vdpbf16ps) and AVX512-VNNI
//   amx          + AMX-TILE/BF16/INT8, with Linux's permission to use the tile registers
// The kernels run active_isa(): the detected rung, capped by set_isa_cap() or, until that is
// called, by the environment variable MOE_ISA (one of the names above) — for tests that run every
// path, and for users who want another one. Set the cap before layers run, not while they do.
#pragma once

#include "moe/errors.hpp"

#include <array>
#include <atomic>
#include <cstdlib>
#include <string>
#include <string_view>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define MOE_X86_KERNELS 1
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#else
#define MOE_X86_KERNELS 0
#endif

namespace moe {

enum class Isa : int { generic, avx2, avx512, avx512bf16, amx };

inline constexpr std::array<std::string_view, 5> kIsaNames = {"generic", "avx2", "avx512", "avx512bf16", "amx"};

inline std::string_view isa_name(Isa isa) { return kIsaNames[static_cast<std::size_t>(isa)]; }

// The rung named `name`; a config_error listing the names otherwise.
inline Isa parse_isa(std::string_view name) {
  for (std::size_t i = 0; i < kIsaNames.size(); ++i)
    if (kIsaNames[i] == name) return static_cast<Isa>(i);
  MOE_THROW(config_error("moe: unknown ISA '" + std::string(name) +
                         "' (expected generic, avx2, avx512, avx512bf16 or amx)"));
}

namespace detail {

#if MOE_X86_KERNELS
// The highest rung this CPU and OS support (cpuid leaves 1 and 7, XCR0 for the register state the
// OS saves, and for AMX Linux's per-process permission, asked for here).
inline Isa detect_isa() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::generic;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!(fma && osxsave && avx)) return Isa::generic;
  unsigned xcr0_low = 0, xcr0_high = 0;
  __asm__("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
  if ((xcr0_low & 0x6u) != 0x6u) return Isa::generic;  // SSE and AVX state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Isa::generic;
  const unsigned b7 = b, c7 = c, d7 = d;
  if (!(b7 & (1u << 5))) return Isa::generic;  // AVX2
  const unsigned avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);  // F, DQ, BW, VL
  if ((b7 & avx512) != avx512 || (xcr0_low & 0xE0u) != 0xE0u) return Isa::avx2;
  __get_cpuid_count(7, 1, &a, &b, &c, &d);
  const bool bf16 = a & (1u << 5), vnni = c7 & (1u << 11);
  if (!(bf16 && vnni)) return Isa::avx512;
  const unsigned amx = (1u << 22) | (1u << 24) | (1u << 25);  // BF16, TILE, INT8
  if ((d7 & amx) != amx) return Isa::avx512bf16;
#if defined(__linux__)
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) != 0) return Isa::avx512bf16;
  return Isa::amx;
#else
  return Isa::avx512bf16;
#endif
}
#else
inline Isa detect_isa() { return Isa::generic; }
#endif

// The cap: -1 until set_isa_cap() or the first active_isa(), which reads MOE_ISA.
inline std::atomic<int>& isa_cap_slot() {
  static std::atomic<int> cap{-1};
  return cap;
}

}  // namespace detail

// The highest rung this machine runs (detected once).
inline Isa detected_isa() {
  static const Isa isa = detail::detect_isa();
  return isa;
}

// Caps the kernels at `cap` (a cap above the detected rung changes nothing).
inline void set_isa_cap(Isa cap) { detail::isa_cap_slot().store(static_cast<int>(cap)); }

// The cap in force: set_isa_cap()'s, else MOE_ISA's (a config_error if it names no rung), else amx.
inline Isa isa_cap() {
  int cap = detail::isa_cap_slot().load(std::memory_order_relaxed);
  if (cap < 0) {
    const char* from_environment = std::getenv("MOE_ISA");
    cap = static_cast<int>(from_environment && *from_environment ? parse_isa(from_environment) : Isa::amx);
    int unset = -1;
    detail::isa_cap_slot().compare_exchange_strong(unset, cap);
    cap = detail::isa_cap_slot().load();
  }
  return static_cast<Isa>(cap);
}

// The rung the kernels use now: min(detected_isa(), isa_cap()).
inline Isa active_isa() {
  const Isa cap = isa_cap(), detected = detected_isa();
  return cap < detected ? cap : detected;
}

// Caps the kernels at `cap` for a scope, then puts the cap back as it was.
class ScopedIsaCap {
 public:
  explicit ScopedIsaCap(Isa cap) : previous_(isa_cap()) { set_isa_cap(cap); }
  ~ScopedIsaCap() { set_isa_cap(previous_); }
  ScopedIsaCap(const ScopedIsaCap&) = delete;
  ScopedIsaCap& operator=(const ScopedIsaCap&) = delete;

 private:
  Isa previous_;
};

}  // namespace moe
