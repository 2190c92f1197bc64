/* A SQLite VFS that coalesces a connection's WAL writes.
 *
 * SQLite appends a commit to the WAL as two pwrite(2) calls per page (the
 * 24-byte frame header, then the page), so a group commit of 67 pages is
 * 134 system calls before the fdatasync. Through this VFS the WAL's writes
 * collect in a buffer while they are contiguous and reach the file in one
 * pwrite, at the latest before the WAL is synced, read, sized, truncated or
 * closed. A connection with synchronous=FULL syncs the WAL before it
 * publishes a commit in the wal-index, so other connections (their own
 * descriptors) never read a frame that is still in the buffer, and the
 * order of writes before each sync is unchanged.
 *
 * A connection that commits without syncing (synchronous=NORMAL) must turn
 * buffering off first: tp_walbuf_set(db, false). */
#ifndef TP_STORE_WALBUF_H
#define TP_STORE_WALBUF_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

/* Name of the VFS (registered, not as the default, on first use), or NULL
 * when it cannot be registered; pass it to sqlite3_open_v2. */
const char *tp_walbuf_vfs(void);

/* Buffer (on) or write through (off) the WAL of db's main database, which
 * must be open through tp_walbuf_vfs() with its WAL open (any read after
 * journal_mode=WAL). Anything buffered is written first. 0, or -1 when the
 * WAL is not ours or a write fails. */
int tp_walbuf_set(sqlite3 *db, bool on);

/* Since the start of the process, over every WAL opened through the VFS:
 * write calls SQLite made (in) and write calls that reached the files
 * (out). */
void tp_walbuf_counts(uint64_t *in, uint64_t *out);

#endif
