/* powercut.so: what a power cut leaves on disk, for test_powercut.py only.
 *
 * A kill -9 loses nothing the process wrote: the kernel's page cache still
 * holds it. A power cut loses every write not yet made durable by fsync or
 * fdatasync. LD_PRELOADed into `turnpike serve`, this keeps an image of the
 * data directory as a disk would have it after a cut:
 *
 *   TP_POWERCUT_DATA   the data directory (absolute path, as given to serve)
 *   TP_POWERCUT_IMAGE  a copy of it taken before serve started; from then on
 *                      a write to a file under DATA is held back, per file,
 *                      and applied to IMAGE/<same name> only when that file
 *                      is fsynced or fdatasynced (through any descriptor);
 *   TP_POWERCUT_CTL    once CTL/cut exists no sync is applied any more: the
 *                      power is off, whatever the process goes on doing.
 *                      CTL/cut_at_rename holding a name under DATA cuts the
 *                      power just before a rename onto that name: the cut
 *                      between two steps of a command.
 *
 * A file's name is durable only once its directory is synced: a file created
 * (or renamed into place) under DATA is listed in CTL/undurable until DATA
 * itself is fsynced; the test deletes the files still listed there from the
 * image, as the cut would have lost their directory entries.
 *
 * The test then kills the process, puts IMAGE in place of DATA and starts
 * the server on it. Writes synced before the cut are all there; none after.
 *
 *   TP_POWERCUT_TORN   (a number, the seed) a real disk may also have kept
 *                      any of the writes not yet synced when the power went,
 *                      in any order and torn: when the process first meets
 *                      the cut (its next sync), each 512-byte sector of each
 *                      such write (and each such truncate) reaches the image
 *                      or not, at random, later writes over earlier ones.
 *                      SQLite's WAL checksums and its order of syncs are
 *                      what must cope with that.
 *
 * The
 * shared-memory index (-shm) is not data: it is never imaged. Renames and
 * unlinks are applied to the image at once. Not part of the product: built
 * only for the integration tests. */
#undef _FILE_OFFSET_BITS /* both names of each call are defined here */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FD 4096
#define MAX_FILES 64

struct op {
  struct op *next;
  off_t off;      /* write: where; truncate: the new length */
  size_t len;     /* write: bytes in data */
  bool truncate;
  unsigned char data[];
};

struct file {
  char rel[256]; /* name under DATA */
  struct op *head, *tail;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct file files[MAX_FILES];
static int fd_file[MAX_FD]; /* index + 1 into files, 0: not tracked */
static bool fd_dir[MAX_FD]; /* a descriptor of DATA itself */
static char undurable[MAX_FILES][256]; /* names created since DATA was last synced */
static bool cut;

typedef int (*open_fn)(const char *, int, ...);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef int (*trunc_fn)(int, off_t);
typedef int (*sync_fn)(int);
typedef int (*close_fn)(int);
typedef int (*rename_fn)(const char *, const char *);
typedef int (*unlink_fn)(const char *);

#define REAL(name, type)                                                                                       \
  static type real_##name;                                                                                     \
  if (!real_##name)                                                                                            \
    real_##name = (type)dlsym(RTLD_NEXT, #name);

static const char *env(const char *name)
{
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* The name under DATA of path, or NULL if it is not a data file. */
static const char *data_rel(const char *path)
{
  const char *data = env("TP_POWERCUT_DATA");
  if (!data || !path)
    return NULL;
  size_t n = strlen(data);
  if (strncmp(path, data, n) != 0 || path[n] != '/' || !path[n + 1])
    return NULL;
  const char *rel = path + n + 1;
  size_t rl = strlen(rel);
  if (strchr(rel, '/') || rl >= sizeof files[0].rel || (rl > 4 && strcmp(rel + rl - 4, "-shm") == 0))
    return NULL;
  return rel;
}

static bool is_data_dir(const char *path)
{
  const char *data = env("TP_POWERCUT_DATA");
  if (!data || !path)
    return false;
  size_t n = strlen(data);
  return strncmp(path, data, n) == 0 && (path[n] == '\0' || (path[n] == '/' && path[n + 1] == '\0'));
}

/* Write CTL/undurable: the names whose directory entry is not yet durable. */
static void save_undurable(void) /* under mu */
{
  const char *ctl = env("TP_POWERCUT_CTL");
  if (!ctl || cut)
    return;
  char tmp[PATH_MAX], path[PATH_MAX], buf[MAX_FILES * 257];
  size_t len = 0;
  for (int i = 0; i < MAX_FILES; i++)
    if (undurable[i][0])
      len += (size_t)snprintf(buf + len, sizeof buf - len, "%s\n", undurable[i]);
  snprintf(tmp, sizeof tmp, "%s/undurable.tmp", ctl);
  snprintf(path, sizeof path, "%s/undurable", ctl);
  static open_fn o;
  static write_fn w;
  static close_fn c;
  static rename_fn r;
  if (!o) {
    o = (open_fn)dlsym(RTLD_NEXT, "open64");
    w = (write_fn)dlsym(RTLD_NEXT, "write");
    c = (close_fn)dlsym(RTLD_NEXT, "close");
    r = (rename_fn)dlsym(RTLD_NEXT, "rename");
  }
  int fd = o(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || w(fd, buf, len) != (ssize_t)len)
    abort();
  c(fd);
  r(tmp, path);
}

static void set_undurable(const char *rel, bool on) /* under mu */
{
  int free_slot = -1;
  for (int i = 0; i < MAX_FILES; i++) {
    if (undurable[i][0] && strcmp(undurable[i], rel) == 0) {
      if (!on) {
        undurable[i][0] = '\0';
        save_undurable();
      }
      return;
    }
    if (!undurable[i][0] && free_slot < 0)
      free_slot = i;
  }
  if (on && free_slot >= 0) {
    snprintf(undurable[free_slot], sizeof undurable[free_slot], "%s", rel);
    save_undurable();
  }
}

static int file_index(const char *rel) /* under mu */
{
  for (int i = 0; i < MAX_FILES; i++)
    if (files[i].rel[0] && strcmp(files[i].rel, rel) == 0)
      return i;
  for (int i = 0; i < MAX_FILES; i++)
    if (!files[i].rel[0]) {
      snprintf(files[i].rel, sizeof files[i].rel, "%s", rel);
      return i;
    }
  return -1;
}

static void drop_ops(struct file *f)
{
  for (struct op *o = f->head, *n; o; o = n) {
    n = o->next;
    free(o);
  }
  f->head = f->tail = NULL;
}

static void track(int fd, const char *path)
{
  const char *rel = data_rel(path);
  if (fd < 0 || fd >= MAX_FD || !rel)
    return;
  pthread_mutex_lock(&mu);
  fd_file[fd] = file_index(rel) + 1;
  pthread_mutex_unlock(&mu);
}

static void record(int fd, const void *buf, size_t len, off_t off, bool truncate)
{
  if (fd < 0 || fd >= MAX_FD)
    return;
  pthread_mutex_lock(&mu);
  int i = fd_file[fd] - 1;
  if (i >= 0 && !cut) {
    struct op *o = malloc(sizeof *o + (truncate ? 0 : len));
    if (!o)
      abort();
    o->next = NULL;
    o->off = off;
    o->len = truncate ? 0 : len;
    o->truncate = truncate;
    if (!truncate)
      memcpy(o->data, buf, len);
    struct file *f = &files[i];
    if (f->tail)
      f->tail->next = o;
    else
      f->head = o;
    f->tail = o;
  }
  pthread_mutex_unlock(&mu);
}

/* f's unsynced writes and truncates reach the image and are forgotten: all
 * of them (a sync; rs NULL), or, the power gone with TP_POWERCUT_TORN set,
 * each truncate and each 512-byte sector of each write at random (rand_r
 * on rs), counted in kept and lost. Under mu. */
static void to_image(struct file *f, unsigned int *rs, unsigned long *kept, unsigned long *lost)
{
  REAL(open64, open_fn);
  REAL(pwrite64, pwrite_fn);
  REAL(ftruncate64, trunc_fn);
  REAL(close, close_fn);
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/%s", env("TP_POWERCUT_IMAGE"), f->rel) >= (int)sizeof path)
    abort();
  int ifd = real_open64(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (ifd < 0)
    abort();
  for (struct op *o = f->head; o; o = o->next) {
    /* A truncate whole; a write sector by sector, as a disk writes it. */
    off_t at = o->off, stop = o->truncate ? o->off + 1 : o->off + (off_t)o->len;
    while (at < stop) {
      off_t end = o->truncate || !rs ? stop : (at / 512 + 1) * 512;
      if (end > stop)
        end = stop;
      if (!rs || (rand_r(rs) & 1)) {
        if (o->truncate ? real_ftruncate64(ifd, o->off) != 0
                        : real_pwrite64(ifd, o->data + (at - o->off), (size_t)(end - at), at) != (ssize_t)(end - at))
          abort();
        if (kept)
          (*kept)++;
      } else if (lost)
        (*lost)++;
      at = end;
    }
  }
  real_close(ifd);
  drop_ops(f);
}

/* The power went with TP_POWERCUT_TORN set: some of every file's unsynced
 * writes reach the image, sector by sector, at random (under mu). */
static void tear(void)
{
  const char *seed = env("TP_POWERCUT_TORN");
  if (!seed)
    return;
  unsigned int rs = (unsigned int)strtoul(seed, NULL, 10);
  unsigned long kept = 0, lost = 0;
  for (int i = 0; i < MAX_FILES; i++)
    if (files[i].rel[0] && files[i].head)
      to_image(&files[i], &rs, &kept, &lost);
  /* For the test's log: how much of the unsynced data the disk kept. */
  const char *ctl = env("TP_POWERCUT_CTL");
  char note[PATH_MAX];
  if (ctl && snprintf(note, sizeof note, "%s/torn", ctl) < (int)sizeof note) {
    FILE *nf = fopen(note, "w");
    if (nf) {
      fprintf(nf, "%lu %lu\n", kept, lost);
      fclose(nf);
    }
  }
}

static bool power_off(void) /* under mu */
{
  if (cut)
    return true;
  char flag[PATH_MAX];
  const char *ctl = env("TP_POWERCUT_CTL");
  if (ctl && snprintf(flag, sizeof flag, "%s/cut", ctl) < (int)sizeof flag && access(flag, F_OK) == 0) {
    cut = true;
    tear();
  }
  return cut;
}

/* fd was synced: what was written to its file before is on the disk. */
static void apply(int fd)
{
  if (fd < 0 || fd >= MAX_FD)
    return;
  pthread_mutex_lock(&mu);
  if (fd_dir[fd] && !power_off()) {
    /* DATA synced: every name in it is durable now. */
    for (int k = 0; k < MAX_FILES; k++)
      undurable[k][0] = '\0';
    save_undurable();
  }
  int i = fd_file[fd] - 1;
  if (i < 0 || power_off() || !files[i].head) {
    pthread_mutex_unlock(&mu);
    return;
  }
  to_image(&files[i], NULL, NULL, NULL);
  pthread_mutex_unlock(&mu);
}

static int open_common(open_fn real, const char *path, int flags, va_list ap)
{
  mode_t mode = 0;
  if (flags & (O_CREAT | O_TMPFILE))
    mode = (mode_t)va_arg(ap, int);
  const char *rel = data_rel(path);
  bool creates = rel && (flags & O_CREAT) && access(path, F_OK) != 0;
  int fd = real(path, flags, mode);
  track(fd, path);
  if (fd >= 0 && fd < MAX_FD && (creates || is_data_dir(path))) {
    pthread_mutex_lock(&mu);
    if (creates && !cut)
      set_undurable(rel, true);
    fd_dir[fd] = is_data_dir(path);
    pthread_mutex_unlock(&mu);
  }
  return fd;
}

int open(const char *path, int flags, ...)
{
  REAL(open, open_fn);
  va_list ap;
  va_start(ap, flags);
  int fd = open_common(real_open, path, flags, ap);
  va_end(ap);
  return fd;
}

int open64(const char *path, int flags, ...)
{
  REAL(open64, open_fn);
  va_list ap;
  va_start(ap, flags);
  int fd = open_common(real_open64, path, flags, ap);
  va_end(ap);
  return fd;
}

int close(int fd)
{
  REAL(close, close_fn);
  if (fd >= 0 && fd < MAX_FD) {
    pthread_mutex_lock(&mu);
    fd_file[fd] = 0; /* unsynced writes stay with the file, not the descriptor */
    fd_dir[fd] = false;
    pthread_mutex_unlock(&mu);
  }
  return real_close(fd);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
  REAL(pwrite64, pwrite_fn);
  ssize_t n = real_pwrite64(fd, buf, len, off);
  if (n > 0)
    record(fd, buf, (size_t)n, off, false);
  return n;
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
  return pwrite64(fd, buf, len, off);
}

ssize_t write(int fd, const void *buf, size_t len)
{
  REAL(write, write_fn);
  bool tracked = fd >= 0 && fd < MAX_FD && fd_file[fd];
  off_t off = tracked ? lseek(fd, 0, SEEK_CUR) : 0;
  ssize_t n = real_write(fd, buf, len);
  if (tracked && n > 0 && off >= 0)
    record(fd, buf, (size_t)n, off, false);
  return n;
}

int ftruncate64(int fd, off_t len)
{
  REAL(ftruncate64, trunc_fn);
  int rc = real_ftruncate64(fd, len);
  if (rc == 0)
    record(fd, NULL, 0, len, true);
  return rc;
}

int ftruncate(int fd, off_t len)
{
  return ftruncate64(fd, len);
}

int fsync(int fd)
{
  REAL(fsync, sync_fn);
  int rc = real_fsync(fd);
  if (rc == 0)
    apply(fd);
  return rc;
}

int fdatasync(int fd)
{
  REAL(fdatasync, sync_fn);
  int rc = real_fdatasync(fd);
  if (rc == 0)
    apply(fd);
  return rc;
}

static void image_path(char *out, size_t cap, const char *rel)
{
  snprintf(out, cap, "%s/%s", env("TP_POWERCUT_IMAGE"), rel);
}

/* CTL/cut_at_rename names rel: the power goes now. */
static void cut_at_rename(const char *rel)
{
  const char *ctl = env("TP_POWERCUT_CTL");
  char path[PATH_MAX], want[256] = "";
  if (!ctl || !rel || snprintf(path, sizeof path, "%s/cut_at_rename", ctl) >= (int)sizeof path)
    return;
  FILE *f = fopen(path, "r");
  if (!f)
    return;
  if (fgets(want, sizeof want, f))
    want[strcspn(want, "\n")] = '\0';
  fclose(f);
  if (strcmp(want, rel) == 0) {
    pthread_mutex_lock(&mu);
    cut = true;
    pthread_mutex_unlock(&mu);
  }
}

int rename(const char *from, const char *to)
{
  REAL(rename, rename_fn);
  const char *rf = data_rel(from), *rt = data_rel(to);
  cut_at_rename(rt);
  int rc = real_rename(from, to);
  if (rc == 0 && rf && rt) {
    pthread_mutex_lock(&mu);
    if (!cut) {
      char a[PATH_MAX], b[PATH_MAX];
      image_path(a, sizeof a, rf);
      image_path(b, sizeof b, rt);
      real_rename(a, b);
      set_undurable(rf, false);
      set_undurable(rt, true); /* a new entry, durable once DATA is synced */
      int i = file_index(rf), j = file_index(rt);
      if (i >= 0 && j >= 0) {
        drop_ops(&files[j]);
        files[j].head = files[i].head;
        files[j].tail = files[i].tail;
        files[i].head = files[i].tail = NULL;
      }
    }
    pthread_mutex_unlock(&mu);
  }
  return rc;
}

int unlink(const char *path)
{
  REAL(unlink, unlink_fn);
  int rc = real_unlink(path);
  const char *rel = data_rel(path);
  if (rc == 0 && rel) {
    pthread_mutex_lock(&mu);
    if (!cut) {
      char a[PATH_MAX];
      image_path(a, sizeof a, rel);
      real_unlink(a);
      set_undurable(rel, false);
      int i = file_index(rel);
      if (i >= 0)
        drop_ops(&files[i]);
    }
    pthread_mutex_unlock(&mu);
  }
  return rc;
}
