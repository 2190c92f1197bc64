/* The "tp-walbuf" VFS: see walbuf.h. Every file but a WAL is the default
 * VFS's own (its xOpen fills the whole sqlite3_file); a WAL is wrapped. */
#include "store/sqlite/walbuf.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#define WB_CAP (2u << 20) /* bytes buffered at most: ~500 frames of 4 KiB */
/* Bytes per write to the file: the unix VFS writes at most 128 KiB - 1 in
 * one call (it masks the length with 0x1ffff). */
#define WB_CHUNK ((size_t)64 << 10)

struct wb_file {
  sqlite3_file base;   /* pMethods = &wb_methods */
  sqlite3_file *real;  /* the default VFS's file, in the same allocation */
  unsigned char *buf;  /* WB_CAP bytes once the first write is buffered */
  size_t len;          /* bytes in buf */
  sqlite3_int64 off;   /* file offset of buf[0] */
  int on;              /* buffering (else every call goes straight through) */
};

/* The real file follows our struct, aligned for any type. */
#define WB_HEAD ((sizeof(struct wb_file) + 15) & ~(size_t)15)

static sqlite3_vfs wb_vfs;
static sqlite3_vfs *wb_real;
static pthread_once_t wb_once = PTHREAD_ONCE_INIT;
static int wb_ok;
static atomic_uint_fast64_t wb_in, wb_out; /* tp_walbuf_counts */

static int wb_flush(struct wb_file *f)
{
  size_t n = f->len;
  /* Nothing is kept after a failure: SQLite fails the transaction that
   * wrote it, and its next one writes those frames again. */
  f->len = 0;
  for (size_t done = 0; done < n; done += WB_CHUNK) {
    size_t k = n - done < WB_CHUNK ? n - done : WB_CHUNK;
    atomic_fetch_add_explicit(&wb_out, 1, memory_order_relaxed);
    int rc = f->real->pMethods->xWrite(f->real, f->buf + done, (int)k, f->off + (sqlite3_int64)done);
    if (rc != SQLITE_OK)
      return rc;
  }
  return SQLITE_OK;
}

static int wb_close(sqlite3_file *p)
{
  struct wb_file *f = (struct wb_file *)p;
  int rc = wb_flush(f);
  int rc2 = f->real->pMethods->xClose(f->real);
  sqlite3_free(f->buf);
  f->buf = NULL;
  return rc != SQLITE_OK ? rc : rc2;
}

static int wb_read(sqlite3_file *p, void *out, int amt, sqlite3_int64 off)
{
  struct wb_file *f = (struct wb_file *)p;
  int rc = wb_flush(f);
  return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, out, amt, off);
}

static int wb_write(sqlite3_file *p, const void *data, int amt, sqlite3_int64 off)
{
  struct wb_file *f = (struct wb_file *)p;
  atomic_fetch_add_explicit(&wb_in, 1, memory_order_relaxed);
  if (!f->on || amt <= 0) {
    atomic_fetch_add_explicit(&wb_out, 1, memory_order_relaxed);
    return f->real->pMethods->xWrite(f->real, data, amt, off);
  }
  size_t n = (size_t)amt;
  if (f->len > 0 && off == f->off + (sqlite3_int64)f->len && f->len + n <= WB_CAP) {
    memcpy(f->buf + f->len, data, n);
    f->len += n;
    return SQLITE_OK;
  }
  /* Not an append to what is buffered (or no room): what is buffered goes
   * first, so writes reach the file in the order SQLite made them. */
  int rc = wb_flush(f);
  if (rc != SQLITE_OK)
    return rc;
  if (n > WB_CHUNK || (!f->buf && !(f->buf = sqlite3_malloc((int)WB_CAP)))) {
    atomic_fetch_add_explicit(&wb_out, 1, memory_order_relaxed);
    return f->real->pMethods->xWrite(f->real, data, amt, off);
  }
  memcpy(f->buf, data, n);
  f->off = off;
  f->len = n;
  return SQLITE_OK;
}

static int wb_truncate(sqlite3_file *p, sqlite3_int64 size)
{
  struct wb_file *f = (struct wb_file *)p;
  int rc = wb_flush(f);
  return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int wb_sync(sqlite3_file *p, int flags)
{
  struct wb_file *f = (struct wb_file *)p;
  int rc = wb_flush(f);
  return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int wb_file_size(sqlite3_file *p, sqlite3_int64 *size)
{
  struct wb_file *f = (struct wb_file *)p;
  int rc = wb_flush(f);
  return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int wb_lock(sqlite3_file *p, int level)
{
  struct wb_file *f = (struct wb_file *)p;
  return f->real->pMethods->xLock(f->real, level);
}

static int wb_unlock(sqlite3_file *p, int level)
{
  struct wb_file *f = (struct wb_file *)p;
  return f->real->pMethods->xUnlock(f->real, level);
}

static int wb_check_reserved(sqlite3_file *p, int *out)
{
  struct wb_file *f = (struct wb_file *)p;
  return f->real->pMethods->xCheckReservedLock(f->real, out);
}

static int wb_file_control(sqlite3_file *p, int op, void *arg)
{
  struct wb_file *f = (struct wb_file *)p;
  return f->real->pMethods->xFileControl(f->real, op, arg);
}

static int wb_sector_size(sqlite3_file *p)
{
  struct wb_file *f = (struct wb_file *)p;
  return f->real->pMethods->xSectorSize(f->real);
}

static int wb_device_characteristics(sqlite3_file *p)
{
  struct wb_file *f = (struct wb_file *)p;
  return f->real->pMethods->xDeviceCharacteristics(f->real);
}

/* SQLite maps and shares memory only for the database file, never for a
 * WAL; these are here so the table is complete. */
static int wb_shm_map(sqlite3_file *p, int pg, int pgsz, int extend, void volatile **out)
{
  struct wb_file *f = (struct wb_file *)p;
  if (f->real->pMethods->iVersion < 2 || !f->real->pMethods->xShmMap)
    return SQLITE_IOERR_SHMMAP;
  return f->real->pMethods->xShmMap(f->real, pg, pgsz, extend, out);
}

static int wb_shm_lock(sqlite3_file *p, int offset, int n, int flags)
{
  struct wb_file *f = (struct wb_file *)p;
  if (f->real->pMethods->iVersion < 2 || !f->real->pMethods->xShmLock)
    return SQLITE_IOERR_SHMLOCK;
  return f->real->pMethods->xShmLock(f->real, offset, n, flags);
}

static void wb_shm_barrier(sqlite3_file *p)
{
  struct wb_file *f = (struct wb_file *)p;
  if (f->real->pMethods->iVersion >= 2 && f->real->pMethods->xShmBarrier)
    f->real->pMethods->xShmBarrier(f->real);
}

static int wb_shm_unmap(sqlite3_file *p, int del)
{
  struct wb_file *f = (struct wb_file *)p;
  if (f->real->pMethods->iVersion < 2 || !f->real->pMethods->xShmUnmap)
    return SQLITE_OK;
  return f->real->pMethods->xShmUnmap(f->real, del);
}

static int wb_fetch(sqlite3_file *p, sqlite3_int64 off, int amt, void **out)
{
  struct wb_file *f = (struct wb_file *)p;
  *out = NULL;
  int rc = wb_flush(f);
  if (rc != SQLITE_OK || f->real->pMethods->iVersion < 3 || !f->real->pMethods->xFetch)
    return rc;
  return f->real->pMethods->xFetch(f->real, off, amt, out);
}

static int wb_unfetch(sqlite3_file *p, sqlite3_int64 off, void *page)
{
  struct wb_file *f = (struct wb_file *)p;
  if (f->real->pMethods->iVersion < 3 || !f->real->pMethods->xUnfetch)
    return SQLITE_OK;
  return f->real->pMethods->xUnfetch(f->real, off, page);
}

static const sqlite3_io_methods wb_methods = {
  .iVersion = 3,
  .xClose = wb_close,
  .xRead = wb_read,
  .xWrite = wb_write,
  .xTruncate = wb_truncate,
  .xSync = wb_sync,
  .xFileSize = wb_file_size,
  .xLock = wb_lock,
  .xUnlock = wb_unlock,
  .xCheckReservedLock = wb_check_reserved,
  .xFileControl = wb_file_control,
  .xSectorSize = wb_sector_size,
  .xDeviceCharacteristics = wb_device_characteristics,
  .xShmMap = wb_shm_map,
  .xShmLock = wb_shm_lock,
  .xShmBarrier = wb_shm_barrier,
  .xShmUnmap = wb_shm_unmap,
  .xFetch = wb_fetch,
  .xUnfetch = wb_unfetch,
};

static int wb_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *p, int flags, int *out_flags)
{
  (void)vfs;
  if (!(flags & SQLITE_OPEN_WAL))
    return wb_real->xOpen(wb_real, name, p, flags, out_flags);
  struct wb_file *f = (struct wb_file *)p;
  memset(f, 0, sizeof *f);
  f->real = (sqlite3_file *)((unsigned char *)p + WB_HEAD);
  f->real->pMethods = NULL;
  int rc = wb_real->xOpen(wb_real, name, f->real, flags, out_flags);
  if (rc != SQLITE_OK) {
    if (f->real->pMethods)
      f->real->pMethods->xClose(f->real);
    return rc;
  }
  f->on = 1;
  f->base.pMethods = &wb_methods;
  return SQLITE_OK;
}

static void wb_register(void)
{
  wb_real = sqlite3_vfs_find(NULL);
  if (!wb_real)
    return;
  wb_vfs = *wb_real;
  wb_vfs.pNext = NULL;
  wb_vfs.zName = "tp-walbuf";
  wb_vfs.szOsFile = (int)WB_HEAD + wb_real->szOsFile;
  wb_vfs.xOpen = wb_open;
  wb_ok = sqlite3_vfs_register(&wb_vfs, 0) == SQLITE_OK;
}

const char *tp_walbuf_vfs(void)
{
  pthread_once(&wb_once, wb_register);
  return wb_ok ? wb_vfs.zName : NULL;
}

int tp_walbuf_set(sqlite3 *db, bool on)
{
  sqlite3_file *j = NULL;
  if (sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &j) != SQLITE_OK || !j ||
      j->pMethods != &wb_methods)
    return -1;
  struct wb_file *f = (struct wb_file *)j;
  int rc = wb_flush(f);
  f->on = on;
  return rc == SQLITE_OK ? 0 : -1;
}

void tp_walbuf_counts(uint64_t *in, uint64_t *out)
{
  *in = atomic_load_explicit(&wb_in, memory_order_relaxed);
  *out = atomic_load_explicit(&wb_out, memory_order_relaxed);
}
