// Files written whole or not at all, and only over what may be replaced (docs/architecture.md §9).
// The bytes go to a new temporary file beside the destination (mkstemp: a unique name, so two
// writers of one path do not share it), are flushed to disk, and the temporary is renamed over
// the destination. Only a regular file or a new path is replaced: a directory, device, FIFO or
// socket is refused, and so is a symbolic link unless follow_symlinks (then its target is
// written, under the same rule). (Another process could still swap the destination between the
// check and the rename; the check is for the user's mistakes, not for an attacker.)
#pragma once

#include "moe/errors.hpp"
#include "moe/io/detail/file_bytes.hpp"
#include "moe/io/write_options.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace moe::detail {

inline const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file";
}

// The file to write for `path`: path itself, or (following a symbolic link) its target; checked
// to be a regular file or absent. *mode: the permissions to give the new file.
inline std::filesystem::path checked_destination(const std::filesystem::path& path, io::WriteOptions options,
                                                 std::string_view who, mode_t* mode) {
  std::filesystem::path target = path;
  struct stat st {};
  for (int hops = 0;; ++hops) {
    if (::lstat(target.c_str(), &st) != 0) {
      if (errno != ENOENT)
        MOE_THROW(io_error(concat(who, ": ", path.string(), ": cannot inspect it: ", errno_text(errno))));
      *mode = 0644;
      return target;  // a new file
    }
    if (!S_ISLNK(st.st_mode)) break;
    if (!options.follow_symlinks)
      MOE_THROW(io_error(concat(who, ": ", path.string(), ": is a symbolic link; refusing to replace it ",
                                "(follow_symlinks writes its target)")));
    if (hops == 40) MOE_THROW(io_error(concat(who, ": ", path.string(), ": too many levels of symbolic links")));
    std::error_code error;
    const std::filesystem::path link = std::filesystem::read_symlink(target, error);
    if (error) MOE_THROW(io_error(concat(who, ": ", path.string(), ": cannot read the link: ", error.message())));
    target = link.is_absolute() ? link : target.parent_path() / link;
  }
  if (!S_ISREG(st.st_mode))
    MOE_THROW(io_error(concat(who, ": ", path.string(), ": is ", file_kind(st.st_mode),
                              ", not a regular file; refusing to replace it")));
  *mode = st.st_mode & 07777;  // keep the replaced file's permissions
  return target;
}

// Writes the concatenation of `chunks` to `path` as described at the top. On any failure the
// temporary is removed, the destination is untouched and io_error names `who`, the path and the
// reason.
inline void write_file_atomically(const std::filesystem::path& path,
                                  std::span<const std::span<const std::byte>> chunks, std::string_view who,
                                  io::WriteOptions options = {}) {
  mode_t mode = 0;
  const std::filesystem::path destination = checked_destination(path, options, who, &mode);
  const std::filesystem::path directory = destination.has_parent_path() ? destination.parent_path() : ".";
  std::string name = (directory / ("." + destination.filename().string() + ".XXXXXX")).string();
  std::vector<char> temporary(name.begin(), name.end());
  temporary.push_back('\0');
  FileDescriptor fd(::mkostemp(temporary.data(), O_CLOEXEC));
  if (fd.get() < 0)
    MOE_THROW(io_error(concat(who, ": ", path.string(), ": cannot create a temporary file in ", directory.string(),
                              ": ", errno_text(errno))));
  const auto fail = [&](std::string_view what, int error) {
    ::unlink(temporary.data());
    MOE_THROW(io_error(concat(who, ": ", path.string(), ": ", what, ": ", errno_text(error))));
  };
  if (::fchmod(fd.get(), mode) != 0) fail("cannot set the permissions", errno);
  for (const auto chunk : chunks) {
    std::size_t done = 0;
    while (done < chunk.size()) {
      const ssize_t n = ::write(fd.get(), chunk.data() + done, chunk.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail("cannot write", errno);
      done += static_cast<std::size_t>(n);
    }
  }
  if (::fsync(fd.get()) != 0) fail("cannot flush", errno);
  if (const int error = fd.close(); error != 0) fail("cannot close", error);
  if (::rename(temporary.data(), destination.c_str()) != 0) fail("cannot rename the temporary file", errno);
  // The rename itself reaches the disk with the directory (best effort: the file is in place).
  if (FileDescriptor dir(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)); dir.get() >= 0)
    ::fsync(dir.get());
}

}  // namespace moe::detail
