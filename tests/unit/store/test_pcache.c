/* The page cache wrapper (src/store/sqlite/pcache.c): its methods directly
 * (a page swap through the locking page's number, truncations spared and
 * passed, what stays and what goes), then SQLite on a real file through it:
 * random-key inserts, deletes and rolled-back savepoints over several
 * indexes make the b-trees split and swap pages; every commit keeps the
 * database intact and the scans it spares are counted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "store/sqlite/pcache.h"

#define PAGE 4096
#define LOCK_PG (0x40000000u / PAGE + 1) /* 262145 */

static const sqlite3_pcache_methods2 *m;

static sqlite3_pcache_page *get(sqlite3_pcache *c, unsigned key, int create)
{
  return m->xFetch(c, key, create);
}

static void fill(sqlite3_pcache *c, unsigned from, unsigned to)
{
  for (unsigned k = from; k <= to; k++) {
    sqlite3_pcache_page *pg = get(c, k, 2);
    assert_non_null(pg);
    memset(pg->pBuf, (int)(k & 0xff), PAGE);
    m->xUnpin(c, pg, 0);
  }
}

/* Pages from..to are cached (or not), each with the content it was given. */
static void expect(sqlite3_pcache *c, unsigned from, unsigned to, bool present)
{
  for (unsigned k = from; k <= to; k++) {
    sqlite3_pcache_page *pg = get(c, k, 0);
    if (!present) {
      assert_null(pg);
      continue;
    }
    assert_non_null(pg);
    m->xUnpin(c, pg, 0);
  }
}

static struct tp_pcache_counts counts(void)
{
  struct tp_pcache_counts n;
  tp_pcache_counts(&n);
  return n;
}

static void test_swap_then_truncations(void **state)
{
  (void)state;
  sqlite3_pcache *c = m->xCreate(PAGE, 64, 1);
  assert_non_null(c);
  m->xCachesize(c, 1000);
  fill(c, 1, 50);
  /* balance_nonroot's swap of pages 10 and 20 through the locking page */
  sqlite3_pcache_page *a = get(c, 10, 0), *b = get(c, 20, 0);
  assert_non_null(a);
  assert_non_null(b);
  m->xRekey(c, a, 10, LOCK_PG);
  m->xRekey(c, b, 20, 10);
  m->xRekey(c, a, LOCK_PG, 20);
  assert_int_equal(((unsigned char *)a->pBuf)[0], 10); /* the old 10 is now 20 */
  m->xUnpin(c, a, 0);
  m->xUnpin(c, b, 0);
  /* the commit's truncation to the database's size: nothing above it */
  struct tp_pcache_counts n0 = counts();
  m->xTruncate(c, 51);
  struct tp_pcache_counts n1 = counts();
  assert_int_equal(n1.scans_saved, n0.scans_saved + 1);
  assert_int_equal(n1.passed, n0.passed);
  expect(c, 1, 50, true);
  sqlite3_pcache_page *p20 = get(c, 20, 0);
  assert_int_equal(((unsigned char *)p20->pBuf)[0], 10);
  m->xUnpin(c, p20, 0);
  assert_null(get(c, LOCK_PG, 0));
  /* a real truncation passes and takes what is at or above its limit */
  m->xTruncate(c, 30);
  assert_int_equal(counts().passed, n1.passed + 1);
  expect(c, 1, 29, true);
  expect(c, 30, 50, false);
  /* a spared truncation after that is a plain one */
  n1 = counts();
  m->xTruncate(c, 30);
  assert_int_equal(counts().spared, n1.spared + 1);
  /* while a page is lent the locking page's number, a truncation below it passes and takes it */
  sqlite3_pcache_page *p5 = get(c, 5, 0);
  m->xRekey(c, p5, 5, LOCK_PG);
  m->xUnpin(c, p5, 0);
  n1 = counts();
  m->xTruncate(c, 40);
  assert_int_equal(counts().passed, n1.passed + 1);
  assert_null(get(c, LOCK_PG, 0));
  expect(c, 1, 4, true);
  expect(c, 6, 29, true);
  /* a page fetched under the locking page's number: every truncation below it passes */
  sqlite3_pcache_page *odd = get(c, LOCK_PG, 2);
  assert_non_null(odd);
  m->xUnpin(c, odd, 0);
  n1 = counts();
  m->xTruncate(c, 100);
  assert_int_equal(counts().passed, n1.passed + 1);
  assert_null(get(c, LOCK_PG, 0));
  /* and clearing empties it */
  m->xTruncate(c, 1);
  expect(c, 1, 29, false);
  assert_int_equal(m->xPagecount(c), 0);
  m->xDestroy(c);
}

static void test_sqlite_through_it(void **state)
{
  (void)state;
  char dir[64], path[128];
  snprintf(dir, sizeof dir, "/tmp/tp_pcache_XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/t.db", dir);
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db,
                                "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; PRAGMA cache_size=-32000; "
                                "CREATE TABLE t(k TEXT PRIMARY KEY, a TEXT, b BLOB) WITHOUT ROWID; "
                                "CREATE INDEX t_a ON t(a); CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT); "
                                "CREATE INDEX u_v ON u(v)",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_stmt *ins = NULL, *insu = NULL, *del = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO t VALUES(hex(randomblob(12)), hex(randomblob(6)), "
                                          "randomblob(?1))", -1, &ins, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO u(v) VALUES(hex(randomblob(20)))", -1, &insu, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_prepare_v2(db, "DELETE FROM t WHERE k IN (SELECT k FROM t ORDER BY a LIMIT 3)", -1,
                                      &del, NULL), SQLITE_OK);
  struct tp_pcache_counts n0 = counts();
  int64_t want_u = 0;
  srand(7);
  for (int tx = 0; tx < 400; tx++) {
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    /* now and then a change set that fails, rolled back to its savepoint:
     * its pages above the database's size go at the commit's truncation */
    if (tx % 10 == 0) {
      assert_int_equal(sqlite3_exec(db, "SAVEPOINT cs", NULL, NULL, NULL), SQLITE_OK);
      for (int i = 0; i < 20; i++) {
        sqlite3_bind_int(ins, 1, 2000);
        assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
        sqlite3_reset(ins);
      }
      assert_int_equal(sqlite3_exec(db, "ROLLBACK TO cs; RELEASE cs", NULL, NULL, NULL), SQLITE_OK);
    }
    for (int i = 0; i < 30; i++) {
      sqlite3_bind_int(ins, 1, 100 + rand() % 900);
      assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
      sqlite3_reset(ins);
      assert_int_equal(sqlite3_step(insu), SQLITE_DONE);
      sqlite3_reset(insu);
      want_u++;
    }
    assert_int_equal(sqlite3_step(del), SQLITE_DONE);
    sqlite3_reset(del);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
  }
  sqlite3_finalize(ins);
  sqlite3_finalize(insu);
  sqlite3_finalize(del);
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
  sqlite3_finalize(st);
  assert_int_equal(sqlite3_prepare_v2(db, "SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM u)", -1, &st,
                                      NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_int_equal(sqlite3_column_int64(st, 0), 400 * (30 - 3));
  assert_int_equal(sqlite3_column_int64(st, 1), want_u);
  sqlite3_finalize(st);
  struct tp_pcache_counts n1 = counts();
  /* SQLite did lend the locking page's number, and pcache1 was spared its scans */
  assert_true(n1.scans_saved > n0.scans_saved);
  assert_true(n1.passed > n0.passed); /* after a rollback the commit truncates for real */
  sqlite3_close(db);
  char p[160];
  const char *sfx[] = {"", "-wal", "-shm"};
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s%s", path, sfx[i]);
    unlink(p);
  }
  rmdir(dir);
}

int main(void)
{
  /* Installed by sec/audit.c's constructor when it is linked in; else here,
   * before SQLite initialises. */
  tp_pcache_install();
  if (sqlite3_initialize() != SQLITE_OK) /* pcache1's own set-up, through ours */
    return 1;
  m = tp_pcache_methods();
  if (!m) {
    fprintf(stderr, "page cache wrapper not installed\n");
    return 1;
  }
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_swap_then_truncations),
    cmocka_unit_test(test_sqlite_through_it),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
