// WriteOptions: how moe::io's writers (write_npy, SafetensorsWriter::write, save_layer) treat the
// destination. Every writer writes a whole file or nothing, and replaces only a regular file or
// makes a new one (io/detail/atomic_write.hpp).
#pragma once

namespace moe::io {

struct WriteOptions {
  bool follow_symlinks = false;  // a symbolic link: write its target (by the same rule) instead of refusing
};

}  // namespace moe::io
