// Whole files as read-only bytes (POSIX mmap, unmapped when the last owner goes).
#pragma once

#include "moe/errors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace moe::detail {

inline std::string errno_text(int error) { return std::system_category().message(error); }

// Closes a POSIX file descriptor on scope exit.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now and reports close()'s errno (0 on success): a failed close can mean lost data.
  int close() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

// The read-only bytes of a whole file (memory-mapped) or a copied buffer. Shared by everything
// that points into it (a file object, its zero-copy views), so the mapping outlives them all.
// A mapped file must not be truncated by another process while mapped (the kernel would raise
// SIGBUS on access); replace files by renaming, as write_file_atomically does (atomic_write.hpp).
class ByteSource {
 public:
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;
  ~ByteSource() {
    if (mapped_) ::munmap(const_cast<std::byte*>(data_), size_);
  }

  // who: the caller's name for error messages ("SafetensorsFile::open").
  static std::shared_ptr<const ByteSource> map_file(const std::filesystem::path& path,
                                                    std::string_view who) {
    const auto fail = [&](std::string_view what, int error) {
      MOE_THROW(io_error(concat(who, ": ", path.string(), ": ", what, ": ", errno_text(error))));
    };
    // O_NONBLOCK: a FIFO must not hang open(); it is rejected below as not a regular file.
    FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (fd.get() < 0) fail("cannot open", errno);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) fail("cannot stat", errno);
    if (!S_ISREG(st.st_mode))
      MOE_THROW(io_error(concat(who, ": ", path.string(), ": not a regular file")));
    std::shared_ptr<ByteSource> source(new ByteSource());
    source->size_ = static_cast<std::size_t>(st.st_size);
    if (source->size_ == 0) return source;
    void* address = ::mmap(nullptr, source->size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (address != MAP_FAILED) {
      source->data_ = static_cast<const std::byte*>(address);
      source->mapped_ = true;
      return source;
    }
    // Some file systems cannot map: read the file instead.
    source->owned_.resize(source->size_);
    std::size_t done = 0;
    while (done < source->size_) {
      const ssize_t n = ::read(fd.get(), source->owned_.data() + done, source->size_ - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail("cannot read", errno);
      if (n == 0) break;  // shrank while we read: parse what is there (it will not validate)
      done += static_cast<std::size_t>(n);
    }
    source->owned_.resize(done);
    source->data_ = source->owned_.data();
    source->size_ = done;
    return source;
  }

  static std::shared_ptr<const ByteSource> copy_of(std::span<const std::byte> bytes) {
    std::shared_ptr<ByteSource> source(new ByteSource());
    source->owned_.assign(bytes.begin(), bytes.end());
    source->data_ = source->owned_.data();
    source->size_ = source->owned_.size();
    return source;
  }

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  bool mapped() const { return mapped_; }

  // Gives the whole pages inside `range` (of bytes()) back to the system: a mapping reads them
  // from the file again if they are touched. No effect on a copy.
  void release(std::span<const std::byte> range) const { advise(range, /*inside=*/true, MADV_DONTNEED); }
  // Starts reading the pages of `range` from the file in the background (a loader asks for the
  // next tensor while it converts this one). No effect on a copy.
  void prefetch(std::span<const std::byte> range) const { advise(range, /*inside=*/false, MADV_WILLNEED); }

 private:
  ByteSource() = default;

  // madvise over the pages inside `range` (inside) or touching it.
  void advise(std::span<const std::byte> range, bool inside, int advice) const {
    if (!mapped_ || range.empty()) return;
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto begin = reinterpret_cast<std::uintptr_t>(range.data()), end = begin + range.size();
    const auto first = (inside ? begin + page - 1 : begin) / page * page;
    const auto last = (inside ? end : end + page - 1) / page * page;
    if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, advice);
  }

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
  std::vector<std::byte> owned_;
};

}  // namespace moe::detail
