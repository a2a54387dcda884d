// libFuzzer target: SafetensorsFile::from_bytes (the parser open() uses) on arbitrary bytes, then
// every read path on whatever parsed. A bad file must end in moe::io_error, never in a crash,
// a sanitizer report or a read outside the buffer. Build and run with tests/fuzz/run.sh.
#include <moe/io/safetensors.hpp>
#include <moe/io/safetensors_writer.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto file = moe::io::SafetensorsFile::from_bytes(
        std::span(reinterpret_cast<const std::byte*>(data), size), "fuzz");
    moe::io::SafetensorsWriter copy;
    for (const auto& name : file.names()) {
      const auto& info = file.info(name);
      (void)file.bytes(name);
      try {
        const auto f = file.read<float>(name);
        const auto d = file.read<double>(name);
        const auto v = file.view_f32(name);
        if (f.size() != d.size() || v.matrix().size() != f.size()) __builtin_trap();
        copy.add(name, d, info.shape, info.dtype == moe::io::Dtype::F64 ? info.dtype
                                                                       : moe::io::Dtype::F32);
      } catch (const moe::io_error&) {  // an integer dtype: listed but not readable
      }
    }
    for (const auto& [key, value] : file.metadata()) copy.metadata(key, value);
    // What parsed must write and parse again.
    const auto again = moe::io::SafetensorsFile::from_bytes(copy.bytes(), "fuzz copy");
    if (again.size() != copy.size()) __builtin_trap();
  } catch (const moe::io_error&) {
  }
  return 0;
}
