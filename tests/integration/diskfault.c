/* diskfault.so: a full disk, for test_disk_full.py only. LD_PRELOADed into
 * `turnpike serve`, it makes the data directory's file system look full
 * without filling a real one (which a test machine may not allow):
 *
 *   TP_DISKFAULT_DATA  the data directory (absolute path)
 *   TP_DISKFAULT_CTL   a directory the test writes to switch faults:
 *     CTL/enospc       while it exists, every write to a file under DATA
 *                      fails with ENOSPC, as on a file system with no free
 *                      block (SQLite then reports SQLITE_FULL);
 *     CTL/free_bytes   while it exists, statvfs() of a path under DATA
 *                      reports the number it holds as the space available;
 *     CTL/only         while it exists, enospc faults only the files whose
 *                      name (the last part of the path) it holds, e.g.
 *                      "vault.key": a first start whose key file cannot be
 *                      written while the store can;
 *     CTL/hold_sync    while it exists, fsync()/fdatasync() of a file
 *                      under DATA wait (a slow disk: commits a pipelined
 *                      writer made stay unsynced for as long as the test
 *                      wants; polled every 10 ms, at most 60 s);
 *     CTL/fsync_eio    while it exists, fsync()/fdatasync() of a file
 *                      under DATA fail with EIO (the write reached the
 *                      page cache; the disk said no).
 *
 * Writes to other files (the log on stderr) are never touched. Not part of
 * the product: built only for the integration tests. */
/* Both names of each call are defined here: without the build's
 * _FILE_OFFSET_BITS=64, which would turn pwrite into pwrite64. */
#undef _FILE_OFFSET_BITS
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static const char *env(const char *name)
{
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

static int ctl_path(char *out, size_t cap, const char *leaf)
{
  const char *ctl = env("TP_DISKFAULT_CTL");
  if (!ctl)
    return -1;
  int n = snprintf(out, cap, "%s/%s", ctl, leaf);
  return n > 0 && (size_t)n < cap ? 0 : -1;
}

static int under_data(const char *path)
{
  const char *data = env("TP_DISKFAULT_DATA");
  if (!data || !path)
    return 0;
  size_t n = strlen(data);
  return strncmp(path, data, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* While CTL/flag exists, is fd a file under DATA? Its path into target. */
static int flagged_fd(int fd, const char *flag_name, char target[PATH_MAX])
{
  char flag[PATH_MAX];
  if (ctl_path(flag, sizeof flag, flag_name) != 0 || access(flag, F_OK) != 0)
    return 0;
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, PATH_MAX - 1);
  if (n <= 0)
    return 0;
  target[n] = '\0';
  return under_data(target);
}

/* Should a write to fd fail with ENOSPC now? */
static int fd_full(int fd)
{
  char target[PATH_MAX];
  if (!flagged_fd(fd, "enospc", target))
    return 0;
  char only_path[PATH_MAX];
  if (ctl_path(only_path, sizeof only_path, "only") != 0)
    return 1;
  int ofd = open(only_path, O_RDONLY | O_CLOEXEC);
  if (ofd < 0)
    return 1; /* no filter: every file */
  char only[256];
  ssize_t k = read(ofd, only, sizeof only - 1);
  close(ofd);
  if (k <= 0)
    return 1;
  while (k > 0 && (only[k - 1] == '\n' || only[k - 1] == ' '))
    k--;
  only[k] = '\0';
  const char *base = strrchr(target, '/');
  return strcmp(base ? base + 1 : target, only) == 0;
}

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef int (*sync_fn)(int);
typedef int (*statvfs_fn)(const char *, struct statvfs *);
typedef int (*statvfs64_fn)(const char *, struct statvfs64 *);

/* The next definition of name (libc's, or a sanitizer's interceptor). */
#define REAL(name, type)                                                                                       \
  static type real_##name;                                                                                     \
  if (!real_##name)                                                                                            \
    real_##name = (type)dlsym(RTLD_NEXT, #name);

/* Every write call: fail with ENOSPC while the disk is full. */
#define FULL_OR(fd, nonempty, call)                                                                            \
  do {                                                                                                         \
    if ((nonempty) && fd_full(fd)) {                                                                           \
      errno = ENOSPC;                                                                                          \
      return -1;                                                                                               \
    }                                                                                                          \
    return call;                                                                                               \
  } while (0)

ssize_t write(int fd, const void *buf, size_t len)
{
  REAL(write, write_fn);
  FULL_OR(fd, len > 0, real_write(fd, buf, len));
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
  REAL(pwrite64, pwrite_fn);
  FULL_OR(fd, len > 0, real_pwrite64(fd, buf, len, off));
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
  return pwrite64(fd, buf, len, off);
}

ssize_t writev(int fd, const struct iovec *iov, int n)
{
  REAL(writev, writev_fn);
  FULL_OR(fd, n > 0, real_writev(fd, iov, n));
}

/* The free space the test set, or -1 for the real figure. */
static long long fake_free(void)
{
  char path[PATH_MAX];
  if (ctl_path(path, sizeof path, "free_bytes") != 0)
    return -1;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  char buf[32];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return -1;
  buf[n] = '\0';
  char *end;
  long long v = strtoll(buf, &end, 10);
  return end != buf && v >= 0 ? v : -1;
}

static void apply_free(struct statvfs *st)
{
  long long v = fake_free();
  if (v < 0)
    return;
  unsigned long unit = st->f_frsize ? st->f_frsize : st->f_bsize;
  if (!unit)
    return;
  st->f_bavail = (fsblkcnt_t)((unsigned long long)v / unit);
  st->f_bfree = st->f_bavail;
}

int statvfs(const char *path, struct statvfs *st)
{
  REAL(statvfs, statvfs_fn);
  int rc = real_statvfs(path, st);
  if (rc == 0 && under_data(path))
    apply_free(st);
  return rc;
}

int statvfs64(const char *path, struct statvfs64 *st)
{
  REAL(statvfs64, statvfs64_fn);
  int rc = real_statvfs64(path, st);
  if (rc == 0 && under_data(path)) {
    struct statvfs v = {.f_bsize = st->f_bsize, .f_frsize = st->f_frsize};
    apply_free(&v);
    if (fake_free() >= 0) {
      st->f_bavail = v.f_bavail;
      st->f_bfree = v.f_bfree;
    }
  }
  return rc;
}

/* Hold a sync of a file under DATA while CTL/hold_sync exists. */
static void hold(int fd)
{
  char flag[PATH_MAX], target[PATH_MAX];
  if (ctl_path(flag, sizeof flag, "hold_sync") != 0 || !flagged_fd(fd, "hold_sync", target))
    return;
  for (int i = 0; i < 6000 && access(flag, F_OK) == 0; i++)
    usleep(10000);
}

/* Should a sync of fd fail with EIO now? */
static int sync_eio(int fd)
{
  char target[PATH_MAX];
  return flagged_fd(fd, "fsync_eio", target);
}

int fsync(int fd)
{
  REAL(fsync, sync_fn);
  hold(fd);
  if (sync_eio(fd)) {
    errno = EIO;
    return -1;
  }
  return real_fsync(fd);
}

int fdatasync(int fd)
{
  REAL(fdatasync, sync_fn);
  hold(fd);
  if (sync_eio(fd)) {
    errno = EIO;
    return -1;
  }
  return real_fdatasync(fd);
}
