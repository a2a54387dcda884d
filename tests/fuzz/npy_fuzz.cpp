// libFuzzer target: NpyFile::from_bytes (the parser open() uses) on arbitrary bytes, then a read.
// A bad file must end in moe::io_error, never in a crash or a read outside the buffer.
#include <moe/io/npy.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto file =
        moe::io::NpyFile::from_bytes(std::span(reinterpret_cast<const std::byte*>(data), size), "fuzz");
    const auto m = file.read<double>();
    const auto again = moe::io::NpyFile::from_bytes(moe::io::npy_bytes(m, file.shape()), "copy");
    if (again.read<double>().size() != m.size()) __builtin_trap();
  } catch (const moe::io_error&) {
  }
  return 0;
}
