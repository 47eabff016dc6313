// The directory and file handling of the local directory's stores (file_store.h, the block
// layout; dir_transport.h, the object transport), beside base/safe_file.h, which opens what is
// below a directory without trusting it: syncing, walking directories, removing what a writer
// that died left, and the locks that keep a reader in one process from seeing a file half
// rewritten in place by a writer in another.
#ifndef S3BLOCK_FILE_DIR_IO_H_
#define S3BLOCK_FILE_DIR_IO_H_

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "s3block/status.h"

namespace s3block {

// Fsyncs the open file or directory fd; `path` names it in the error.
Status FsyncFd(int fd, const std::string& path);

// Fsyncs a directory.
Status FsyncDir(const std::string& path);

// Writes `data` to `path` atomically and durably: a temporary file beside it (random name,
// O_EXCL|O_NOFOLLOW), fsync, rename, fsync of the directory. `path` must be a regular file or
// missing (else EIO). Used for small control files.
Status WriteFileAtomically(const std::string& path, std::string_view data);

// Calls fn for each entry of directory dirfd (read through a new open of it, so that the fd
// shared by other threads keeps its own position). ENOENT-free: the directory is open.
Status ForEachEntry(int dirfd, const std::string& path,
                    const std::function<void(int dfd, const char* name)>& fn);

// The names of the directories in dirfd, a symlink to one not counted (nor "." and "..").
Status ListSubdirectories(int dirfd, const std::string& path, std::vector<std::string>* names);

// Removes the temporary files (".tmp.*") a writer that died left in dirfd: never data (never
// renamed into place). Unlinking never follows a link, and dirfd was opened without following one.
void RemoveTempFiles(int dirfd, const std::string& path);

// Whole-file POSIX open-file-description locks: they belong to the open file, so they keep out
// readers and writers of other processes (and of other opens in this one), and go with the
// last close of the file. TryOfdLock takes one of `type` (F_RDLCK, F_WRLCK) without waiting;
// false with *err = errno if it cannot.
bool TryOfdLock(int fd, short type, int* err);
void OfdUnlock(int fd);

// Takes a read lock on a file, so that no writer in another process changes it while it is
// read, waiting at most 10 seconds for a writer (EIO naming `path` after). A file system without
// such locks is read without.
Status ReadLock(int fd, const std::string& path);

}  // namespace s3block

#endif  // S3BLOCK_FILE_DIR_IO_H_
