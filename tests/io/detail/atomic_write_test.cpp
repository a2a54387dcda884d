// detail/atomic_write.hpp: files are written whole, by rename, and only over a regular file or a
// new path; devices, FIFOs, sockets, directories and symbolic links (unless followed) are refused
// and left as they were, and no temporary file is left behind either way.
#include "io/io_files.hpp"

#include <moe/io/detail/atomic_write.hpp>

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

namespace moe {
namespace MOE_TEST_FILE_ID {

using test::ScratchDir;
namespace fs = std::filesystem;

void write(const fs::path& path, std::string_view text, io::WriteOptions options = {}) {
  const auto bytes = test::to_bytes(text);
  const std::span<const std::byte> chunk(bytes);
  detail::write_file_atomically(path, std::span(&chunk, 1), "write", options);
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) out.push_back(entry.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(AtomicWrite, WritesNewAndReplacesRegularFilesKeepingTheirPermissions) {
  ScratchDir dir;
  write(dir / "a", "first");
  EXPECT_EQ(test::read_bytes(dir / "a"), test::to_bytes("first"));
  fs::permissions(dir / "a", fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  write(dir / "a", "second");
  EXPECT_EQ(test::read_bytes(dir / "a"), test::to_bytes("second"));
  EXPECT_EQ(fs::status(dir / "a").permissions(), fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"a"});  // no temporary left
}

TEST(AtomicWrite, RefusesDirectoriesFifosAndSocketsAndLeavesThem) {
  ScratchDir dir;
  fs::create_directory(dir / "d");
  MOE_EXPECT_IO_ERROR(write(dir / "d", "x"), "write: ", "d: is a directory, not a regular file; refusing");
  ASSERT_EQ(::mkfifo((dir / "f").c_str(), 0600), 0);
  MOE_EXPECT_IO_ERROR(write(dir / "f", "x"), "f: is a FIFO");
  EXPECT_TRUE(fs::is_fifo(dir / "f"));
  const int sock = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string socket_path = (dir / "s").string();
  if (socket_path.size() < sizeof(address.sun_path)) {
    std::copy(socket_path.begin(), socket_path.end(), address.sun_path);
    ASSERT_EQ(::bind(sock, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    MOE_EXPECT_IO_ERROR(write(dir / "s", "x"), "s: is a socket");
    EXPECT_TRUE(fs::is_socket(dir / "s"));
  }
  ::close(sock);
  EXPECT_EQ(entries(dir.path()), (std::vector<std::string>{"d", "f", "s"}));
}

// As root (CI), a device node made in the scratch directory (a copy of /dev/null's numbers): the
// case where a rename would have turned a device into a regular file.
TEST(AtomicWrite, RefusesDeviceNodes) {
  ScratchDir dir;
  if (::mknod((dir / "null").c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) GTEST_SKIP() << "mknod needs root";
  MOE_EXPECT_IO_ERROR(write(dir / "null", "x"), "null: is a character device");
  EXPECT_TRUE(fs::is_character_file(dir / "null"));
}

TEST(AtomicWrite, SymbolicLinksAreRefusedUnlessFollowed) {
  ScratchDir dir;
  write(dir / "target", "old");
  fs::create_symlink("target", dir / "link");
  MOE_EXPECT_IO_ERROR(write(dir / "link", "new"), "link: is a symbolic link; refusing");
  EXPECT_EQ(test::read_bytes(dir / "target"), test::to_bytes("old"));
  write(dir / "link", "new", {.follow_symlinks = true});  // writes the target; the link stays a link
  EXPECT_TRUE(fs::is_symlink(dir / "link"));
  EXPECT_EQ(test::read_bytes(dir / "target"), test::to_bytes("new"));
  fs::create_symlink("missing", dir / "dangling");  // followed to a new file
  write(dir / "dangling", "made", {.follow_symlinks = true});
  EXPECT_EQ(test::read_bytes(dir / "missing"), test::to_bytes("made"));
  ASSERT_EQ(::mkfifo((dir / "f").c_str(), 0600), 0);
  fs::create_symlink("f", dir / "to_fifo");  // following does not let a FIFO through
  MOE_EXPECT_IO_ERROR(write(dir / "to_fifo", "x", {.follow_symlinks = true}), "to_fifo: is a FIFO");
  fs::create_symlink("loop", dir / "loop");
  MOE_EXPECT_IO_ERROR(write(dir / "loop", "x", {.follow_symlinks = true}), "too many levels");
  EXPECT_EQ(entries(dir.path()),
            (std::vector<std::string>{"dangling", "f", "link", "loop", "missing", "target", "to_fifo"}));
}

TEST(AtomicWrite, MissingDirectoryNamesThePath) {
  ScratchDir dir;
  MOE_EXPECT_IO_ERROR(write(dir / "no" / "such" / "file", "x"), "file", "cannot create a temporary file");
}

}  // namespace MOE_TEST_FILE_ID
}  // namespace moe
