/* The WAL-coalescing VFS (src/store/sqlite/walbuf.c) against real files: a
 * second connection on the default VFS sees every commit in full, writes are
 * coalesced, transactions larger than the buffer, rolled-back spills,
 * checkpoints and write-through mode keep the database intact. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "store/sqlite/walbuf.h"

struct fx {
  char dir[64];
  char path[128];
  sqlite3 *w; /* through tp-walbuf */
  sqlite3 *r; /* default VFS, read-only */
};

static void exec_ok(sqlite3 *db, const char *sql)
{
  char *err = NULL;
  int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
  if (rc != SQLITE_OK)
    fail_msg("%s: %s", sql, err ? err : "?");
}

static int64_t one_int(sqlite3 *db, const char *sql)
{
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  int64_t v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static int setup(void **state)
{
  struct fx *f = calloc(1, sizeof *f);
  if (!f)
    return -1;
  snprintf(f->dir, sizeof f->dir, "/tmp/tp_walbuf_XXXXXX");
  if (!mkdtemp(f->dir))
    return -1;
  snprintf(f->path, sizeof f->path, "%s/t.db", f->dir);
  const char *vfs = tp_walbuf_vfs();
  if (!vfs || sqlite3_open_v2(f->path, &f->w, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs) != SQLITE_OK)
    return -1;
  exec_ok(f->w, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; "
                "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL)");
  if (sqlite3_open_v2(f->path, &f->r, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
    return -1;
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  struct fx *f = *state;
  sqlite3_close(f->r);
  sqlite3_close(f->w);
  char p[160];
  const char *sfx[] = {"", "-wal", "-shm"};
  for (size_t i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s%s", f->path, sfx[i]);
    unlink(p);
  }
  rmdir(f->dir);
  free(f);
  return 0;
}

/* Insert rows [from, from+n) with `bytes`-byte values in one transaction. */
static void insert_rows(sqlite3 *db, int from, int n, int bytes)
{
  exec_ok(db, "BEGIN");
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO t(k, v) VALUES(?1, randomblob(?2))", -1, &st, NULL),
                   SQLITE_OK);
  for (int i = from; i < from + n; i++) {
    sqlite3_bind_int(st, 1, i);
    sqlite3_bind_int(st, 2, bytes);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  exec_ok(db, "COMMIT");
}

/* What the other connection reads: count and a checksum of the values. */
static void assert_reader_sees(struct fx *f, int64_t rows)
{
  assert_int_equal(one_int(f->r, "SELECT count(*) FROM t"), rows);
  assert_int_equal(one_int(f->r, "SELECT count(*) FROM t WHERE length(v) = 0"), 0);
  assert_int_equal(one_int(f->w, "SELECT count(*) FROM t"), rows);
}

static void commits_are_whole_and_coalesced(void **state)
{
  struct fx *f = *state;
  uint64_t in0, out0, in1, out1;
  tp_walbuf_counts(&in0, &out0);
  for (int i = 0; i < 40; i++) {
    insert_rows(f->w, i * 100, 100, 300); /* ~8 pages per commit */
    assert_reader_sees(f, (i + 1) * 100);
  }
  tp_walbuf_counts(&in1, &out1);
  /* Two writes per frame from SQLite; about one per commit to the file. */
  assert_true(in1 - in0 >= 40 * 2 * 8);
  assert_true(out1 - out0 <= 40 * 2);
  assert_int_equal(one_int(f->r, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check <> 'ok'"), 0);
}

static void larger_than_the_buffer(void **state)
{
  struct fx *f = *state;
  /* ~12 MB in one transaction: the buffer (2 MiB) fills and flushes many
   * times, and a small cache spills pages to the WAL before COMMIT. */
  exec_ok(f->w, "PRAGMA cache_size=50");
  insert_rows(f->w, 0, 3000, 4000);
  assert_reader_sees(f, 3000);
  exec_ok(f->w, "PRAGMA cache_size=-2000");
  insert_rows(f->w, 3000, 10, 100);
  assert_reader_sees(f, 3010);
}

static void rolled_back_spill_then_commit(void **state)
{
  struct fx *f = *state;
  insert_rows(f->w, 0, 10, 100);
  exec_ok(f->w, "PRAGMA cache_size=20");
  exec_ok(f->w, "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) "
                "INSERT INTO t(k, v) SELECT 1000 + i, randomblob(3000) FROM n");
  exec_ok(f->w, "ROLLBACK");
  assert_reader_sees(f, 10);
  /* The next transaction writes over the frames the rolled-back one left. */
  insert_rows(f->w, 10, 300, 2000);
  assert_reader_sees(f, 310);
  assert_int_equal(one_int(f->w, "SELECT count(*) FROM t WHERE k >= 1000"), 0);
}

static void checkpoints_and_reopen(void **state)
{
  struct fx *f = *state;
  for (int round = 0; round < 3; round++) {
    insert_rows(f->w, round * 1000, 500, 1000);
    /* The writer's own connection reads its WAL to checkpoint it. */
    exec_ok(f->w, round == 1 ? "PRAGMA wal_checkpoint(TRUNCATE)" : "PRAGMA wal_checkpoint(RESTART)");
    insert_rows(f->w, round * 1000 + 500, 100, 1000);
    assert_reader_sees(f, (round + 1) * 600);
  }
  sqlite3_close(f->w);
  f->w = NULL;
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
  assert_int_equal(one_int(db, "SELECT count(*) FROM t"), 1800);
  assert_int_equal(one_int(db, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check <> 'ok'"), 0);
  f->w = db;
}

static void write_through_when_off(void **state)
{
  struct fx *f = *state;
  assert_int_equal(tp_walbuf_set(f->w, false), 0);
  exec_ok(f->w, "PRAGMA synchronous=NORMAL");
  uint64_t in0, out0, in1, out1;
  tp_walbuf_counts(&in0, &out0);
  for (int i = 0; i < 10; i++) {
    insert_rows(f->w, i * 50, 50, 500);
    assert_reader_sees(f, (i + 1) * 50);
  }
  tp_walbuf_counts(&in1, &out1);
  assert_true(in1 > in0);
  assert_int_equal(in1 - in0, out1 - out0);
  /* Back on, with FULL again. */
  exec_ok(f->w, "PRAGMA synchronous=FULL");
  assert_int_equal(tp_walbuf_set(f->w, true), 0);
  insert_rows(f->w, 1000, 50, 500);
  assert_reader_sees(f, 550);
  /* A connection on the default VFS has no buffer to switch. */
  assert_int_equal(tp_walbuf_set(f->r, false), -1);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(commits_are_whole_and_coalesced, setup, teardown),
    cmocka_unit_test_setup_teardown(larger_than_the_buffer, setup, teardown),
    cmocka_unit_test_setup_teardown(rolled_back_spill_then_commit, setup, teardown),
    cmocka_unit_test_setup_teardown(checkpoints_and_reopen, setup, teardown),
    cmocka_unit_test_setup_teardown(write_through_when_off, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
