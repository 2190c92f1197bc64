/* The SQLite store and the group-commit writer, against a real database in a
 * fresh directory per test: schema, tenant isolation, list paging, atomic
 * change sets, ledger balance checks, idempotency, attempts, API keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <pthread.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "store/store.h"
#include "store/zjson.h"
#include "util.h"

/* Every numbered migration in src/store/sql (generated migrations.c). */
extern const char *const tp_migrations[];
extern const size_t tp_migrations_count;

#define M1 "acct_one"
#define M2 "acct_two"

struct fx {
  char dir[64];
  struct tp_store st;
  bool open;
};

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
  (void)sb;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state)
{
  struct fx *f = calloc(1, sizeof *f);
  if (!f)
    return -1;
  snprintf(f->dir, sizeof f->dir, "/tmp/tp_store_XXXXXX");
  if (!mkdtemp(f->dir) || tp_store_open_sqlite(&f->st, f->dir) != 0) {
    free(f);
    return -1;
  }
  f->open = true;
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  struct fx *f = *state;
  if (f->open)
    f->st.ops->close(f->st.cls);
  int rc = nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
  free(f);
  return rc;
}

static void reopen(struct fx *f)
{
  f->st.ops->close(f->st.cls);
  f->open = false;
  assert_int_equal(tp_store_open_sqlite(&f->st, f->dir), 0);
  f->open = true;
}

/* Apply one change set on its own, as a batch of one; returns its rc. */
static int apply1(struct fx *f, struct tp_cs *cs)
{
  int rc = 12345;
  assert_int_equal(f->st.ops->apply_batch(f->st.cls, &cs, 1, &rc), 0);
  tp_cs_free(cs);
  return rc;
}

static json_t *pi(const char *id, int64_t created, const char *customer, const char *status)
{
  json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:I}", "id", id, "object", "payment_intent", "amount",
                        (json_int_t)1000, "currency", "usd", "created", (json_int_t)created);
  json_object_set_new(o, "customer", customer ? json_string(customer) : json_null());
  json_object_set_new(o, "status", json_string(status ? status : "requires_payment_method"));
  return o;
}

static void put_pi(struct fx *f, const char *merchant, const char *id, int64_t created, const char *customer,
                   const char *status)
{
  struct tp_cs *cs = tp_cs_new();
  json_t *o = pi(id, created, customer, status);
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, merchant, o);
  json_decref(o);
  assert_int_equal(apply1(f, cs), 0);
}

/* A scalar from the database file, read through its own connection. */
static char *sql_text(struct fx *f, const char *sql)
{
  char path[128];
  snprintf(path, sizeof path, "%s/turnpike.db", f->dir);
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  char *out = NULL;
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
    out = strdup((const char *)sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

static long sql_long(struct fx *f, const char *sql)
{
  char *s = sql_text(f, sql);
  assert_non_null(s);
  long v = atol(s);
  free(s);
  return v;
}

/* ---- schema ----------------------------------------------------------------- */
static void test_open_creates_db_and_migrates_to_version_1(void **state)
{
  struct fx *f = *state;
  char path[128];
  snprintf(path, sizeof path, "%s/turnpike.db", f->dir);
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  char *v = sql_text(f, "SELECT value FROM meta WHERE key='schema_version'");
  assert_non_null(v);
  assert_int_equal(strtol(v, NULL, 10), (long)tp_migrations_count);
  free(v);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN "
                               "('merchants','api_keys','payment_intents','ledger_entries','attempts',"
                               "'idempotency','vault')"),
                   7);
  char *mode = sql_text(f, "PRAGMA journal_mode");
  assert_string_equal(mode, "wal");
  free(mode);
}

static void test_reopen_is_a_noop(void **state)
{
  struct fx *f = *state;
  put_pi(f, M1, "pi_keep", 100, NULL, NULL);
  long objects = sql_long(f, "SELECT count(*) FROM sqlite_master");
  reopen(f);
  reopen(f);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM sqlite_master"), objects);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM meta"), 1);
  char *v = sql_text(f, "SELECT value FROM meta WHERE key='schema_version'");
  assert_int_equal(strtol(v, NULL, 10), (long)tp_migrations_count);
  free(v);
  char *got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_keep");
  assert_non_null(got);
  free(got);
}

/* A store written at schema 6 (objects keyed by id, the old indexes) keeps
 * every row through migration 7, which re-keys the object tables by
 * (merchant, id): each object is found by its owner only, lists keep their
 * order, vault records and idempotency keys survive. */
static void test_migration_7_keeps_objects(void **state)
{
  struct fx *f = *state;
  f->st.ops->close(f->st.cls);
  f->open = false;
  char path[128];
  snprintf(path, sizeof path, "%s/turnpike.db", f->dir);
  remove(path);
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT "
                                    "NOT NULL)", NULL, NULL, NULL), SQLITE_OK);
  assert_true(tp_migrations_count >= 7);
  for (size_t v = 0; v < 6; v++)
    assert_int_equal(sqlite3_exec(db, tp_migrations[v], NULL, NULL, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db,
      "INSERT INTO meta VALUES('schema_version','6');"
      "INSERT INTO payment_intents VALUES('pi_a1','" M1 "',10,NULL,'succeeded','{\"id\":\"pi_a1\"}');"
      "INSERT INTO payment_intents VALUES('pi_a2','" M1 "',11,'cus_1','processing','{\"id\":\"pi_a2\"}');"
      "INSERT INTO payment_intents VALUES('pi_b1','" M2 "',12,NULL,'succeeded','{\"id\":\"pi_b1\"}');"
      "INSERT INTO events VALUES('evt_1','" M1 "',10,'charge.succeeded','ch_1','{\"id\":\"evt_1\"}');"
      "INSERT INTO charges VALUES('ch_1','" M1 "',10,'pi_a1',NULL,'{\"id\":\"ch_1\"}');"
      "INSERT INTO vault VALUES('tok_1','" M1 "',x'0102',10);"
      "INSERT INTO idempotency VALUES('" M1 "','k1','h',200,'{}',10);",
      NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);

  assert_int_equal(tp_store_open_sqlite(&f->st, f->dir), 0);
  f->open = true;
  assert_int_equal(sql_long(f, "SELECT value FROM meta WHERE key='schema_version'"), (long)tp_migrations_count);
  char *got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_a2");
  assert_non_null(got);
  assert_string_equal(got, "{\"id\":\"pi_a2\"}");
  free(got);
  assert_null(tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M2, "pi_a1"));
  got = tp_store_get(&f->st, TP_K_EVENT, M1, "evt_1");
  assert_non_null(got);
  free(got);
  got = tp_store_get(&f->st, TP_K_CHARGE, M1, "ch_1");
  assert_non_null(got);
  free(got);
  struct tp_list_query q = {
      .kind = TP_K_PAYMENT_INTENT, .merchant = M1, .limit = 10, .created_gte = INT64_MIN, .created_lte = INT64_MAX};
  bool more = true;
  json_t *l = f->st.ops->list(f->st.cls, &q, &more);
  assert_non_null(l);
  assert_int_equal(json_array_size(l), 2);
  assert_string_equal(json_string_value(json_object_get(json_array_get(l, 0), "id")), "pi_a2");
  assert_false(more);
  json_decref(l);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM vault WHERE token='tok_1' AND merchant='" M1 "'"), 1);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM idempotency WHERE key='k1'"), 1);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM sqlite_master WHERE name IN ('payment_intents_m', "
                               "'events_m', 'charges_m', 'idempotency_created')"), 0);
  /* Another merchant's put of the same id never reaches M1's row (the key
   * is (merchant, id); migration 0010 dropped the index on id alone). */
  struct tp_cs *cs = tp_cs_new();
  json_t *o = pi("pi_a1", 13, NULL, "canceled");
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M2, o);
  json_decref(o);
  assert_int_equal(apply1(f, cs), 0);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM payment_intents WHERE id='pi_a1' AND merchant='" M1
                               "' AND status IS NOT 'canceled'"), 1);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM sqlite_master WHERE name='payment_intents_id'"), 0);
}

/* ---- objects ---------------------------------------------------------------- */
/* Objects and replies are stored compressed (a BLOB, far smaller than the
 * JSON), come back byte for byte, and a plain-text row written before
 * compression existed reads the same. Damaged frames, frames of an unknown
 * dictionary and frames claiming an absurd size are refused. */
static void test_objects_are_stored_compressed_and_read_back(void **state)
{
  struct fx *f = *state;
  assert_true(tp_zjson_enabled());
  json_t *o = pi("pi_z", 1700000000, "cus_z", "succeeded");
  json_object_set_new(o, "description", json_string("a fairly ordinary payment for a fairly ordinary order"));
  json_object_set_new(o, "metadata", json_pack("{s:s, s:s}", "order", "A-1001", "note", "é"));
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M1, o);
  tp_cs_idem(cs, M1, "key-z", "hash", NULL, 200, "{\"id\":\"pi_z\",\"object\":\"payment_intent\"}");
  assert_int_equal(apply1(f, cs), 0);
  char *want = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  assert_int_equal(sql_long(f, "SELECT typeof(data)='blob' FROM payment_intents WHERE id='pi_z'"), 1);
  assert_true(sql_long(f, "SELECT length(data) FROM payment_intents WHERE id='pi_z'") < (long)strlen(want));
  char *got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_z");
  assert_non_null(got);
  assert_string_equal(got, want);
  free(got);
  struct tp_idem_rec rec = {0};
  assert_int_equal(f->st.ops->idem_get(f->st.cls, M1, "key-z", &rec), 1);
  assert_string_equal(rec.body, "{\"id\":\"pi_z\",\"object\":\"payment_intent\"}");
  free(rec.body);
  json_t *rows = tp_store_query(&f->st, "SELECT tp_json(data) AS d FROM payment_intents WHERE id='pi_z'", NULL);
  assert_string_equal(json_string_value(json_object_get(json_array_get(rows, 0), "d")), want);
  json_decref(rows);

  /* A row of plain JSON text (older store, or [store] compress = off). */
  char path[128];
  snprintf(path, sizeof path, "%s/turnpike.db", f->dir);
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  assert_int_equal(sqlite3_exec(db, "INSERT INTO payment_intents(id, merchant, created, data) VALUES "
                                    "('pi_text', '" M1 "', 1, '{\"id\":\"pi_text\"}')", NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(db);
  got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_text");
  assert_string_equal(got, "{\"id\":\"pi_text\"}");
  free(got);

  size_t zl = 0, n = 0;
  uint8_t *z = tp_zjson_pack(want, strlen(want), &zl);
  assert_non_null(z);
  char *back = tp_zjson_unpack(z, zl, &n);
  assert_int_equal(n, strlen(want));
  assert_string_equal(back, want);
  free(back);
  z[zl - 2] ^= 0x55; /* damaged payload (checksum-free frames still fail to decode or differ) */
  back = tp_zjson_unpack(z, zl, &n);
  if (back)
    assert_true(strcmp(back, want) != 0);
  free(back);
  assert_null(tp_zjson_unpack(z, 3, NULL)); /* truncated header */
  free(z);
  /* A frame made without our dictionary (dictionary id 0): refused. */
  static const uint8_t plain[] = {0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x02, 0x11, 0x00, 0x00, 0x7b, 0x7d};
  assert_null(tp_zjson_unpack(plain, sizeof plain, NULL));
  free(want);
  json_decref(o);
}

/* An event stored around its object's frame (tp_cs_put_event_around) reads
 * back as the whole text; frames in a row decode as one; a damaged or cut
 * second frame, or frames of different dictionaries, are refused. */
static void test_event_around_object_frame_reads_back_whole(void **state)
{
  struct fx *f = *state;
  const char *obj = "{\"id\":\"ch_around\",\"object\":\"charge\",\"amount\":1999,\"currency\":\"usd\","
                    "\"description\":\"a \\\"quoted\\\" text\",\"metadata\":{}}";
  const char *head = "{\"id\":\"evt_around\",\"object\":\"event\",\"created\":1700000000,\"data\":{\"object\":";
  const char *tail = "},\"type\":\"charge.succeeded\"}";
  size_t ol = strlen(obj), hl = strlen(head), tl = strlen(tail);
  char want[512];
  assert_true(hl + ol + tl < sizeof want);
  snprintf(want, sizeof want, "%s%s%s", head, obj, tail);
  char *ev = strdup(want); /* taken over by the change set */
  assert_non_null(ev);
  size_t zl = 0;
  uint8_t *z = tp_zjson_pack(obj, ol, &zl);
  assert_non_null(z);
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put_event_around(cs, M1, "evt_around", 1700000000, "charge.succeeded", "ch_around", ev, hl + ol + tl, hl,
                         ol, z, zl);
  const struct tp_cs_op *op = tp_cs_op_at(cs, 0);
  assert_non_null(op->zdata);
  assert_true(op->zdata_len > zl); /* the object's frame inside, two small ones around it */
  assert_non_null(memmem(op->zdata, op->zdata_len, z, zl));
  size_t n = 0;
  char *back = tp_zjson_unpack(op->zdata, op->zdata_len, &n);
  assert_non_null(back);
  assert_int_equal(n, hl + ol + tl);
  assert_memory_equal(back, want, n);
  free(back);
  /* cut inside the last frame; a flipped byte in the middle frame's header */
  assert_null(tp_zjson_unpack(op->zdata, op->zdata_len - 2, NULL));
  uint8_t *bad = malloc(op->zdata_len);
  assert_non_null(bad);
  memcpy(bad, op->zdata, op->zdata_len);
  size_t mid = (size_t)((uint8_t *)memmem(bad, op->zdata_len, z, zl) - bad);
  bad[mid] ^= 0xff; /* the middle frame's magic */
  assert_null(tp_zjson_unpack(bad, op->zdata_len, NULL));
  free(bad);
  assert_int_equal(apply1(f, cs), 0);
  char *got = tp_store_get(&f->st, TP_K_EVENT, M1, "evt_around");
  assert_non_null(got);
  assert_string_equal(got, want);
  free(got);
  free(z);
}

static void test_put_then_get_returns_same_json_for_owner_only(void **state)
{
  struct fx *f = *state;
  json_t *o = pi("pi_iso", 1700000000, "cus_1", "succeeded");
  json_object_set_new(o, "metadata", json_pack("{s:s}", "order", "é42"));
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M1, o);
  assert_int_equal(apply1(f, cs), 0);

  char *want = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  char *got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_iso");
  assert_non_null(got);
  assert_string_equal(got, want);
  json_t *gj = tp_store_get_json(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_iso");
  assert_true(json_equal(gj, o));
  json_decref(gj);
  free(got);
  free(want);

  /* Another merchant, another kind, an unknown id: nothing. */
  assert_null(tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M2, "pi_iso"));
  assert_null(tp_store_get(&f->st, TP_K_CHARGE, M1, "pi_iso"));
  assert_null(tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_nope"));

  /* A second put of the same id replaces it. */
  json_object_set_new(o, "status", json_string("canceled"));
  cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M1, o);
  assert_int_equal(apply1(f, cs), 0);
  gj = tp_store_get_json(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_iso");
  assert_string_equal(json_string_value(json_object_get(gj, "status")), "canceled");
  json_decref(gj);
  json_decref(o);
}

/* Five PIs for M1 with increasing ids and created 100..500, plus noise for M2. */
static void seed_list(struct fx *f, char ids[5][TP_ID_MAX])
{
  static const char *const cust[5] = {"cus_A", "cus_B", "cus_A", NULL, "cus_A"};
  static const char *const status[5] = {"succeeded", "succeeded", "canceled", "succeeded", "succeeded"};
  for (int i = 0; i < 5; i++) {
    tp_id_new(ids[i], "pi");
    put_pi(f, M1, ids[i], 100 * (i + 1), cust[i], status[i]);
  }
  char other[TP_ID_MAX];
  tp_id_new(other, "pi");
  put_pi(f, M2, other, 300, "cus_A", "succeeded");
}

static struct tp_list_query q_all(void)
{
  struct tp_list_query q = {.kind = TP_K_PAYMENT_INTENT, .merchant = M1, .created_gte = INT64_MIN,
                            .created_lte = INT64_MAX, .limit = 10};
  return q;
}

/* The listed ids, newest first as returned, must equal want[0..n). */
static void expect_ids(json_t *arr, char ids[5][TP_ID_MAX], const int *want, size_t n)
{
  assert_non_null(arr);
  assert_int_equal(json_array_size(arr), n);
  for (size_t i = 0; i < n; i++)
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, i), "id")), ids[want[i]]);
  json_decref(arr);
}

static void test_list_is_newest_first_with_limit_and_has_more(void **state)
{
  struct fx *f = *state;
  char ids[5][TP_ID_MAX];
  seed_list(f, ids);
  struct tp_list_query q = q_all();
  bool more = true;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){4, 3, 2, 1, 0}, 5);
  assert_false(more);
  q.limit = 3;
  more = false;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){4, 3, 2}, 3);
  assert_true(more);
  q.limit = 1;
  more = false;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){4}, 1);
  assert_true(more);
  q.merchant = "acct_nobody";
  more = true;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, NULL, 0);
  assert_false(more);
}

/* has_more is an output: it must be written false when exactly `limit` rows
 * exist, whatever the caller left in it. */
static void test_list_has_more_false_when_exactly_limit_rows(void **state)
{
  struct fx *f = *state;
  char ids[5][TP_ID_MAX];
  seed_list(f, ids);
  struct tp_list_query q = q_all();
  q.limit = 5;
  bool more = true;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){4, 3, 2, 1, 0}, 5);
  assert_false(more);
}

static void test_list_pages_with_starting_after_and_ending_before(void **state)
{
  struct fx *f = *state;
  char ids[5][TP_ID_MAX];
  seed_list(f, ids);
  struct tp_list_query q = q_all();
  /* has_more starts false, as the API handlers set it; whether list() writes
   * false itself is the exact-limit test's concern. */
  bool more = false;

  /* Forward, page by page, the way a client follows has_more. */
  q.limit = 2;
  q.starting_after = ids[4];
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){3, 2}, 2);
  assert_true(more);
  q.starting_after = ids[2];
  more = false;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){1, 0}, 2);
  assert_false(more);
  q.starting_after = ids[0];
  more = false;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, NULL, 0);
  assert_false(more);

  /* Backward: the items just newer than the cursor, still newest first. */
  q.starting_after = NULL;
  q.ending_before = ids[0];
  more = false;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){2, 1}, 2);
  assert_true(more);
  q.ending_before = ids[2];
  q.limit = 10;
  more = false;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){4, 3}, 2);
  assert_false(more);
}

/* A filter on the stored JSON (not indexed): within the other filters, and
 * reading at most TP_LIST_FIELD_MAX_SCAN rows per page, after which the page
 * ends early with has_more and the next page goes on from its cursor. */
static void test_list_filters_by_json_field_within_a_bound(void **state)
{
  struct fx *f = *state;
  char ids[5][TP_ID_MAX];
  seed_list(f, ids);
  struct tp_list_query q = q_all();
  bool more = true;
  q.field = "$.status";
  q.field_value = "canceled";
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){2}, 1);
  assert_false(more);
  q.col_name = "customer";
  q.col_value = "cus_B";
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, NULL, 0);
  q.col_name = NULL;
  q.field = "$.nonesuch"; /* absent: the default stands in */
  q.field_value = "dflt";
  q.field_default = "dflt";
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){4, 3, 2, 1, 0}, 5);
  /* TP_LIST_FIELD_MAX_SCAN newer PaymentIntents, none canceled. */
  struct tp_cs *cs = tp_cs_new();
  char last[TP_ID_MAX] = "";
  for (int i = 0; i < TP_LIST_FIELD_MAX_SCAN; i++) {
    char id[TP_ID_MAX];
    tp_id_new(id, "pi");
    json_t *o = pi(id, 1000 + i, NULL, "succeeded");
    tp_cs_put(cs, TP_K_PAYMENT_INTENT, M1, o);
    json_decref(o);
    if (i == 0)
      memcpy(last, id, sizeof last);
  }
  assert_int_equal(apply1(f, cs), 0);
  q = q_all();
  q.field = "$.status";
  q.field_value = "canceled";
  more = true;
  /* A window of TP_LIST_FIELD_MAX_SCAN that finds nothing is passed over:
   * never an empty page with has_more. */
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){2}, 1);
  assert_false(more);
  q.starting_after = last; /* the oldest of the new ones */
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){2}, 1);
  assert_false(more);
  /* A page that found a row ends at the bound with has_more: the first
   * PaymentIntent "succeeded", then TP_LIST_FIELD_MAX_SCAN newer ones not. */
  q = q_all();
  q.field = "$.status";
  q.field_value = "succeeded";
  q.col_name = "customer";
  q.col_value = "cus_A"; /* seed ids 0, 2, 4: succeeded, canceled, succeeded */
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){4, 0}, 2);
  assert_false(more);
  q.col_name = NULL;
  q.field_value = "canceled";
  q.limit = 1;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){2}, 1);
  assert_false(more);
  q.field_value = "nothing";
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, NULL, 0);
  assert_false(more); /* read to the end: nothing matches */
  /* One more canceled, newest: the first window finds it and is full, so
   * the page ends there with has_more; the next goes on from it. */
  char newest[5][TP_ID_MAX];
  tp_id_new(newest[0], "pi");
  put_pi(f, M1, newest[0], 20000, NULL, "canceled");
  q.limit = 10;
  q.field_value = "canceled";
  more = false;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), newest, (const int[]){0}, 1);
  assert_true(more);
  q.starting_after = newest[0];
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){2}, 1);
  assert_false(more);
}

static void test_list_filters_by_indexed_columns(void **state)
{
  struct fx *f = *state;
  char ids[5][TP_ID_MAX];
  seed_list(f, ids);
  struct tp_list_query q = q_all();
  bool more = true;
  q.col_name = "customer";
  q.col_value = "cus_A";
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){4, 2, 0}, 3); /* not M2's cus_A */
  assert_false(more);
  q.col2_name = "status";
  q.col2_value = "succeeded";
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){4, 0}, 2);
  q.col_value = "cus_B";
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){1}, 1);
  q.col_value = "cus_none";
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, NULL, 0);
  /* Only the kind's indexed columns are accepted: never SQL from a request. */
  q.col_name = "amount";
  q.col2_name = NULL;
  assert_null(f->st.ops->list(f->st.cls, &q, &more));
  q.col_name = "customer; DROP TABLE payment_intents";
  assert_null(f->st.ops->list(f->st.cls, &q, &more));
  char *got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, ids[0]);
  assert_non_null(got);
  free(got);
}

static void test_list_filters_by_created_range(void **state)
{
  struct fx *f = *state;
  char ids[5][TP_ID_MAX];
  seed_list(f, ids);
  struct tp_list_query q = q_all();
  bool more = true;
  q.created_gte = 200;
  q.created_lte = 400;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){3, 2, 1}, 3);
  q.created_gte = 401;
  q.created_lte = INT64_MAX;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){4}, 1);
  q.created_gte = INT64_MIN;
  q.created_lte = 99;
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, NULL, 0);
  /* Combined with a cursor and a column filter. */
  q.created_gte = 100;
  q.created_lte = 500;
  q.col_name = "customer";
  q.col_value = "cus_A";
  q.starting_after = ids[4];
  expect_ids(f->st.ops->list(f->st.cls, &q, &more), ids, (const int[]){2, 0}, 2);
}

/* ---- change sets and the ledger ------------------------------------------- */
static int64_t balance_of(struct fx *f, const char *merchant, const char *account, const char *cur, bool *found)
{
  json_t *arr = f->st.ops->balance(f->st.cls, merchant);
  assert_non_null(arr);
  size_t i;
  json_t *e;
  int64_t v = 0;
  *found = false;
  json_array_foreach(arr, i, e)
  {
    if (strcmp(json_string_value(json_object_get(e, "account")), account) == 0 &&
        strcmp(json_string_value(json_object_get(e, "currency")), cur) == 0) {
      v = json_integer_value(json_object_get(e, "amount"));
      *found = true;
    }
  }
  json_decref(arr);
  return v;
}

static void test_unbalanced_change_set_is_refused_and_fully_rolled_back(void **state)
{
  struct fx *f = *state;
  struct tp_cs *bad = tp_cs_new();
  json_t *o = pi("pi_bad", 100, NULL, NULL);
  tp_cs_put(bad, TP_K_PAYMENT_INTENT, M1, o);
  json_decref(o);
  tp_cs_idem(bad, M1, "idem_bad", "h", NULL, 0, NULL);
  tp_cs_ledger(bad, "txn_bad", M1, "cash", "usd", 1000);
  tp_cs_ledger(bad, "txn_bad", M1, "revenue", "usd", -990);

  struct tp_cs *good = tp_cs_new();
  o = pi("pi_good", 100, NULL, NULL);
  tp_cs_put(good, TP_K_PAYMENT_INTENT, M1, o);
  json_decref(o);
  tp_cs_ledger(good, "txn_good", M1, "cash", "usd", 500);
  tp_cs_ledger(good, "txn_good", M1, "revenue", "usd", -500);

  struct tp_cs *sets[2] = {bad, good};
  int rc[2] = {12345, 12345};
  assert_int_equal(f->st.ops->apply_batch(f->st.cls, sets, 2, rc), 0);
  tp_cs_free(bad);
  tp_cs_free(good);
  assert_int_not_equal(rc[0], 0);
  assert_int_equal(rc[1], 0);

  assert_null(tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_bad"));
  struct tp_idem_rec ir = {0};
  assert_int_equal(f->st.ops->idem_get(f->st.cls, M1, "idem_bad", &ir), 0);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM ledger_entries WHERE txn_id='txn_bad'"), 0);

  char *got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_good");
  assert_non_null(got);
  free(got);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM ledger_entries WHERE txn_id='txn_good'"), 2);
  bool found;
  assert_int_equal(balance_of(f, M1, "cash", "usd", &found), 500);
  assert_true(found);
  assert_int_equal(balance_of(f, M1, "revenue", "usd", &found), -500);

  /* Alone in its batch the refused set leaves nothing either. */
  bad = tp_cs_new();
  o = pi("pi_bad2", 100, NULL, NULL);
  tp_cs_put(bad, TP_K_PAYMENT_INTENT, M1, o);
  json_decref(o);
  tp_cs_ledger(bad, "txn_bad2", M1, "cash", "usd", 1);
  assert_int_not_equal(apply1(f, bad), 0);
  assert_null(tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_bad2"));
  assert_int_equal(balance_of(f, M1, "cash", "usd", &found), 500);
}

/* A refused set in the middle of a batch: the sets before and after it are
 * committed exactly once (the batch is first tried without savepoints, then
 * replayed with one per set), the refused one leaves nothing. */
static void test_refused_set_mid_batch_commits_the_others_once(void **state)
{
  struct fx *f = *state;
  struct tp_cs *sets[3];
  const char *ids[3] = {"pi_mid_a", "pi_mid_bad", "pi_mid_c"};
  for (int i = 0; i < 3; i++) {
    sets[i] = tp_cs_new();
    json_t *o = pi(ids[i], 100 + i, NULL, NULL);
    tp_cs_put(sets[i], TP_K_PAYMENT_INTENT, M2, o);
    json_decref(o);
    char txn[32];
    snprintf(txn, sizeof txn, "txn_mid_%d", i);
    tp_cs_ledger(sets[i], txn, M2, "cash", "usd", 300);
    tp_cs_ledger(sets[i], txn, M2, "revenue", "usd", i == 1 ? -299 : -300);
  }
  int rc[3] = {12345, 12345, 12345};
  assert_int_equal(f->st.ops->apply_batch(f->st.cls, sets, 3, rc), 0);
  for (int i = 0; i < 3; i++)
    tp_cs_free(sets[i]);
  assert_int_equal(rc[0], 0);
  assert_int_not_equal(rc[1], 0);
  assert_int_equal(rc[2], 0);
  assert_null(tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M2, "pi_mid_bad"));
  for (int i = 0; i < 3; i += 2) {
    char *got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M2, ids[i]);
    assert_non_null(got);
    free(got);
  }
  assert_int_equal(sql_long(f, "SELECT count(*) FROM ledger_entries WHERE txn_id LIKE 'txn_mid_%'"), 4);
  bool found;
  assert_int_equal(balance_of(f, M2, "cash", "usd", &found), 600);
  assert_int_equal(balance_of(f, M2, "revenue", "usd", &found), -600);
}

/* Balances are written once per batch from the sets that applied: a batch
 * with more accounts than the batch table holds (written early), repeated
 * accounts across sets, and one unbalanced set leaves every running balance
 * equal to the sum of its entries. */
static void test_batched_balances_match_entries(void **state)
{
  struct fx *f = *state;
  enum { NSETS = 400 };
  struct tp_cs *sets[NSETS];
  int rc[NSETS];
  for (int i = 0; i < NSETS; i++) {
    sets[i] = tp_cs_new();
    char txn[32], acct[32];
    snprintf(txn, sizeof txn, "txn_b_%d", i);
    snprintf(acct, sizeof acct, "processor:p%d:receivable", i % 300);
    tp_cs_ledger(sets[i], txn, M1, acct, "usd", 100 + i);
    tp_cs_ledger(sets[i], txn, M1, "merchant:pending", "usd", i == 77 ? -(100 + i) + 1 : -(100 + i));
    rc[i] = 12345;
  }
  assert_int_equal(f->st.ops->apply_batch(f->st.cls, sets, NSETS, rc), 0);
  for (int i = 0; i < NSETS; i++) {
    assert_int_equal(rc[i] != 0, i == 77);
    tp_cs_free(sets[i]);
  }
  assert_int_equal(sql_long(f, "SELECT count(*) FROM ledger_entries WHERE txn_id LIKE 'txn_b_%'"), 2 * (NSETS - 1));
  assert_int_equal(sql_long(f, "SELECT count(*) FROM ledger_balances b WHERE amount != (SELECT sum(amount) FROM "
                               "ledger_entries e WHERE e.merchant=b.merchant AND e.account=b.account AND "
                               "e.currency=b.currency)"), 0);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM ledger_balances WHERE merchant='" M1 "'"), 301);
  bool found;
  int64_t want = 0;
  for (int i = 0; i < NSETS; i++)
    if (i != 77)
      want -= 100 + i;
  assert_int_equal(balance_of(f, M1, "merchant:pending", "usd", &found), want);
  assert_int_equal(sql_long(f, "SELECT seq FROM ledger_entries WHERE txn_id='txn_b_5' AND account='merchant:pending'"),
                   1);
}

/* A second put of an object rewrites it (indexed columns follow); a put of
 * the same id under another merchant is that merchant's own row and changes
 * nothing of the first merchant's. */
static void test_put_again_updates_and_foreign_id_is_refused(void **state)
{
  struct fx *f = *state;
  json_t *o = pi("pi_twice", 100, NULL, "processing");
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M1, o);
  assert_int_equal(apply1(f, cs), 0);
  json_object_set_new(o, "status", json_string("succeeded"));
  json_object_set_new(o, "customer", json_string("cus_x"));
  cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M1, o);
  assert_int_equal(apply1(f, cs), 0);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM payment_intents WHERE id='pi_twice' AND status='succeeded' "
                               "AND customer='cus_x' AND merchant='" M1 "'"), 1);
  char *got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_twice");
  assert_non_null(got);
  assert_non_null(strstr(got, "\"succeeded\""));
  free(got);

  json_object_set_new(o, "status", json_string("canceled"));
  cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M2, o);
  assert_int_equal(apply1(f, cs), 0);
  json_decref(o);
  got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, "pi_twice");
  assert_non_null(got);
  assert_non_null(strstr(got, "\"succeeded\""));
  free(got);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM payment_intents WHERE id='pi_twice' AND status='succeeded' "
                               "AND merchant='" M1 "'"), 1);
}

static void test_metadata_pairs_are_indexed_once_per_object(void **state)
{
  struct fx *f = *state;
  json_t *o = pi("pi_meta", 100, NULL, "processing");
  json_object_set_new(o, "metadata", json_pack("{s:s, s:s, s:s}", "order", "A-1", "note", "", "x", "y"));
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M1, o);
  assert_int_equal(apply1(f, cs), 0);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM metadata_index WHERE merchant='" M1 "' AND kind='pi' AND "
                               "id='pi_meta'"), 3);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM metadata_index WHERE merchant='" M1 "' AND kind='pi' AND "
                               "k='order' AND v='A-1' AND id='pi_meta'"), 1);
  /* put again unchanged: the same rows; a changed value replaces its row, a lost key goes */
  json_object_set_new(o, "status", json_string("succeeded"));
  cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M1, o);
  assert_int_equal(apply1(f, cs), 0);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM metadata_index WHERE id='pi_meta'"), 3);
  json_object_set_new(json_object_get(o, "metadata"), "order", json_string("A-2"));
  json_object_del(json_object_get(o, "metadata"), "x");
  cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M1, o);
  assert_int_equal(apply1(f, cs), 0);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM metadata_index WHERE id='pi_meta'"), 2);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM metadata_index WHERE id='pi_meta' AND k='order' AND v='A-2'"), 1);
  /* another merchant's object of the same id is its own */
  cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M2, o);
  assert_int_equal(apply1(f, cs), 0);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM metadata_index WHERE id='pi_meta'"), 4);
  json_decref(o);
  /* only the kinds search takes metadata for; none without metadata */
  json_t *pm = json_pack("{s:s, s:s, s:i, s:{s:s}}", "id", "pm_meta", "object", "payment_method", "created", 1,
                         "metadata", "k", "v");
  cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_METHOD, M1, pm);
  assert_int_equal(apply1(f, cs), 0);
  json_decref(pm);
  json_t *bare = pi("pi_bare", 100, NULL, "processing");
  cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, M1, bare);
  assert_int_equal(apply1(f, cs), 0);
  json_decref(bare);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM metadata_index WHERE id IN ('pm_meta', 'pi_bare')"), 0);
  assert_true(tp_kind_meta_indexed(TP_K_CUSTOMER) && tp_kind_meta_indexed(TP_K_CHARGE) &&
              !tp_kind_meta_indexed(TP_K_EVENT));
}

static void test_ledger_must_balance_per_currency(void **state)
{
  struct fx *f = *state;
  struct tp_cs *cs = tp_cs_new();
  tp_cs_ledger(cs, "txn_fx", M1, "cash", "usd", 100);
  tp_cs_ledger(cs, "txn_fx", M1, "cash", "eur", -100); /* sums to 0 only across currencies */
  assert_int_not_equal(apply1(f, cs), 0);
  bool found;
  balance_of(f, M1, "cash", "usd", &found);
  assert_false(found);

  /* Each txn of a set must balance on its own. */
  cs = tp_cs_new();
  tp_cs_ledger(cs, "txn_a", M1, "cash", "usd", 100);
  tp_cs_ledger(cs, "txn_b", M1, "revenue", "usd", -100);
  assert_int_not_equal(apply1(f, cs), 0);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM ledger_entries"), 0);
}

static void test_balanced_entries_update_balances(void **state)
{
  struct fx *f = *state;
  struct tp_cs *cs = tp_cs_new();
  tp_cs_ledger(cs, "txn_1", M1, "cash", "usd", 1000);
  tp_cs_ledger(cs, "txn_1", M1, "revenue", "usd", -970);
  tp_cs_ledger(cs, "txn_1", M1, "fees", "usd", -30);
  tp_cs_ledger(cs, "txn_2", M1, "cash", "eur", 250);
  tp_cs_ledger(cs, "txn_2", M1, "revenue", "eur", -250);
  assert_int_equal(apply1(f, cs), 0);
  cs = tp_cs_new();
  tp_cs_ledger(cs, "txn_3", M1, "revenue", "usd", 400); /* a refund */
  tp_cs_ledger(cs, "txn_3", M1, "cash", "usd", -400);
  tp_cs_ledger(cs, "txn_4", M2, "cash", "usd", 7);
  tp_cs_ledger(cs, "txn_4", M2, "revenue", "usd", -7);
  assert_int_equal(apply1(f, cs), 0);

  bool found;
  assert_int_equal(balance_of(f, M1, "cash", "usd", &found), 600);
  assert_int_equal(balance_of(f, M1, "revenue", "usd", &found), -570);
  assert_int_equal(balance_of(f, M1, "fees", "usd", &found), -30);
  assert_int_equal(balance_of(f, M1, "cash", "eur", &found), 250);
  assert_int_equal(balance_of(f, M1, "revenue", "eur", &found), -250);
  assert_int_equal(balance_of(f, M2, "cash", "usd", &found), 7);
  json_t *arr = f->st.ops->balance(f->st.cls, M1);
  assert_int_equal(json_array_size(arr), 5);
  json_decref(arr);
  assert_int_equal(sql_long(f, "SELECT sum(amount) FROM ledger_entries"), 0);
  assert_int_equal(sql_long(f, "SELECT count(*) FROM ledger_entries WHERE txn_id='txn_1'"), 3);
  assert_int_equal(sql_long(f, "SELECT max(seq) FROM ledger_entries WHERE txn_id='txn_1'"), 2);
}

/* ---- idempotency, attempts, vault ---------------------------------------- */
static void test_idempotency_record_round_trip(void **state)
{
  struct fx *f = *state;
  struct tp_cs *cs = tp_cs_new();
  tp_cs_idem(cs, M1, "key-1", "hash-a", "req_first", 0, NULL);
  assert_int_equal(apply1(f, cs), 0);
  struct tp_idem_rec r = {0};
  assert_int_equal(f->st.ops->idem_get(f->st.cls, M1, "key-1", &r), 1);
  assert_string_equal(r.req_hash, "hash-a");
  assert_int_equal(r.status, 0);
  assert_null(r.body);
  assert_string_equal(r.request_id, "req_first");

  /* The final reply without a request of its own (recovery) keeps the
   * pending mark's request; one with its own request takes that. */
  cs = tp_cs_new();
  tp_cs_idem(cs, M1, "key-1", "hash-a", NULL, 200, "{\"id\":\"pi_1\"}");
  assert_int_equal(apply1(f, cs), 0);
  memset(&r, 0, sizeof r);
  assert_int_equal(f->st.ops->idem_get(f->st.cls, M1, "key-1", &r), 1);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"id\":\"pi_1\"}");
  assert_string_equal(r.request_id, "req_first");
  free(r.body);
  cs = tp_cs_new();
  tp_cs_idem(cs, M1, "key-1", "hash-a", "req_second", 200, "{\"id\":\"pi_1\"}");
  assert_int_equal(apply1(f, cs), 0);
  memset(&r, 0, sizeof r);
  assert_int_equal(f->st.ops->idem_get(f->st.cls, M1, "key-1", &r), 1);
  assert_string_equal(r.request_id, "req_second");
  free(r.body);

  memset(&r, 0, sizeof r);
  assert_int_equal(f->st.ops->idem_get(f->st.cls, M2, "key-1", &r), 0); /* keys are per merchant */
  assert_int_equal(f->st.ops->idem_get(f->st.cls, M1, "key-2", &r), 0);
}

/* A reply equal to an object the same set writes reuses the object's
 * compressed frame; a different reply gets its own; both read back. */
static void test_idempotent_reply_reuses_the_frame_of_an_equal_object(void **state)
{
  struct fx *f = *state;
  const char *pi = "{\"id\":\"pi_frame\",\"object\":\"payment_intent\",\"amount\":4200,\"currency\":\"usd\","
                   "\"status\":\"succeeded\",\"metadata\":{}}";
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put_row(cs, TP_K_PAYMENT_INTENT, M1, "pi_frame", 1700000000, "cus_x", "succeeded", strdup(pi), strlen(pi));
  tp_cs_idem(cs, M1, "key-same", "hash", NULL, 200, pi);
  tp_cs_idem(cs, M1, "key-other", "hash", NULL, 200, "{\"id\":\"pi_other\"}");
  const struct tp_cs_op *put = tp_cs_op_at(cs, 0), *same = tp_cs_op_at(cs, 1), *other = tp_cs_op_at(cs, 2);
  assert_non_null(put->zdata);
  assert_non_null(same->zdata);
  assert_int_equal(same->zdata_len, put->zdata_len);
  assert_memory_equal(same->zdata, put->zdata, put->zdata_len);
  assert_ptr_not_equal(same->zdata, put->zdata); /* its own copy: each op frees its own */
  assert_non_null(other->zdata);
  assert_true(other->zdata_len != put->zdata_len || memcmp(other->zdata, put->zdata, put->zdata_len) != 0);
  assert_int_equal(apply1(f, cs), 0);
  struct tp_idem_rec r = {0};
  assert_int_equal(f->st.ops->idem_get(f->st.cls, M1, "key-same", &r), 1);
  assert_string_equal(r.body, pi);
  free(r.body);
  memset(&r, 0, sizeof r);
  assert_int_equal(f->st.ops->idem_get(f->st.cls, M1, "key-other", &r), 1);
  assert_string_equal(r.body, "{\"id\":\"pi_other\"}");
  free(r.body);
}

static struct tp_attempt attempt(const char *id, const char *state)
{
  struct tp_attempt a;
  memset(&a, 0, sizeof a);
  snprintf(a.id, sizeof a.id, "%s", id);
  snprintf(a.merchant, sizeof a.merchant, "%s", M1);
  snprintf(a.payment_intent, sizeof a.payment_intent, "pi_%s", id);
  snprintf(a.processor, sizeof a.processor, "sandbox");
  snprintf(a.idem_ref, sizeof a.idem_ref, "ref_%s", id);
  snprintf(a.kind, sizeof a.kind, "authorize");
  snprintf(a.state, sizeof a.state, "%s", state);
  snprintf(a.currency, sizeof a.currency, "usd");
  a.amount = 4200;
  snprintf(a.vault_token, sizeof a.vault_token, "tok_%s", id);
  a.capture = 1;
  a.created = 1700000000;
  return a;
}

static bool has_attempt(struct fx *f, const char *state, const char *id, size_t *count)
{
  struct tp_attempt *arr = NULL;
  size_t n = 0;
  assert_int_equal(f->st.ops->attempts_in_state(f->st.cls, state, &arr, &n), 0);
  bool found = false;
  for (size_t i = 0; i < n; i++)
    if (strcmp(arr[i].id, id) == 0)
      found = true;
  free(arr);
  *count = n;
  return found;
}

static void test_attempts_in_state_tracks_sent_until_updated(void **state)
{
  struct fx *f = *state;
  struct tp_cs *cs = tp_cs_new();
  struct tp_attempt a1 = attempt("att_1", "sent"), a2 = attempt("att_2", "sent"),
                    a3 = attempt("att_3", "declined");
  tp_cs_attempt(cs, &a1);
  tp_cs_attempt(cs, &a2);
  tp_cs_attempt(cs, &a3);
  assert_int_equal(apply1(f, cs), 0);
  size_t n;
  assert_true(has_attempt(f, "sent", "att_1", &n));
  assert_true(has_attempt(f, "sent", "att_2", &n));
  assert_false(has_attempt(f, "sent", "att_3", &n));
  assert_int_equal(n, 2);

  snprintf(a1.state, sizeof a1.state, "succeeded");
  snprintf(a1.auth_code, sizeof a1.auth_code, "A1B2C3");
  cs = tp_cs_new();
  tp_cs_attempt(cs, &a1);
  assert_int_equal(apply1(f, cs), 0);
  assert_false(has_attempt(f, "sent", "att_1", &n));
  assert_int_equal(n, 1);
  assert_true(has_attempt(f, "succeeded", "att_1", &n));
  assert_int_equal(n, 1);

  struct tp_attempt got;
  assert_int_equal(f->st.ops->attempt_get(f->st.cls, "att_1", &got), 1);
  assert_string_equal(got.state, "succeeded");
  assert_string_equal(got.auth_code, "A1B2C3");
  assert_string_equal(got.idem_ref, "ref_att_1");
  assert_string_equal(got.vault_token, "tok_att_1");
  assert_string_equal(got.payment_intent, "pi_att_1");
  assert_int_equal(got.amount, 4200);
  assert_int_equal(got.created, 1700000000);
  assert_int_equal(f->st.ops->attempt_get(f->st.cls, "att_none", &got), 0);
}

static void test_vault_blob_round_trip_per_merchant(void **state)
{
  struct fx *f = *state;
  uint8_t blob[100];
  for (size_t i = 0; i < sizeof blob; i++)
    blob[i] = (uint8_t)i; /* includes NUL bytes: stored as a blob, not text */
  struct tp_cs *cs = tp_cs_new();
  tp_cs_vault(cs, "tok_v", M1, blob, sizeof blob);
  assert_int_equal(apply1(f, cs), 0);
  void *out = NULL;
  size_t len = 0;
  assert_int_equal(f->st.ops->vault_get(f->st.cls, M1, "tok_v", &out, &len), 1);
  assert_int_equal(len, sizeof blob);
  assert_memory_equal(out, blob, sizeof blob);
  free(out);
  out = NULL;
  assert_int_equal(f->st.ops->vault_get(f->st.cls, M2, "tok_v", &out, &len), 0);
  assert_null(out);
}

/* ---- merchants and keys ---------------------------------------------------- */
static bool file_contains(const char *path, const char *needle)
{
  FILE *fp = fopen(path, "rb");
  if (!fp)
    return false;
  size_t cap = 1 << 20, n = 0;
  char *buf = malloc(cap);
  assert_non_null(buf);
  size_t r;
  while ((r = fread(buf + n, 1, cap - n, fp)) > 0) {
    n += r;
    if (n == cap) {
      cap *= 2;
      buf = realloc(buf, cap);
      assert_non_null(buf);
    }
  }
  fclose(fp);
  bool hit = memmem(buf, n, needle, strlen(needle)) != NULL;
  free(buf);
  return hit;
}

static void expect_not_on_disk(struct fx *f, const char *secret)
{
  static const char *const files[] = {"turnpike.db", "turnpike.db-wal", "turnpike.db-shm"};
  for (size_t i = 0; i < 3; i++) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", f->dir, files[i]);
    if (file_contains(path, secret))
      fail_msg("a plaintext API key is in %s", files[i]);
  }
}

static void test_merchant_keys_are_found_by_hash_and_never_stored(void **state)
{
  struct fx *f = *state;
  char id[TP_ID_MAX], sk[128], pk[128];
  assert_int_equal(f->st.ops->merchant_count(f->st.cls), 0);
  assert_int_equal(f->st.ops->merchant_create(f->st.cls, "Shop", id, sk, pk), 0);
  assert_int_equal(f->st.ops->merchant_count(f->st.cls), 1);
  assert_int_equal(strncmp(id, "acct_", 5), 0);
  assert_int_equal(strncmp(sk, "sk_test_", 8), 0);
  assert_int_equal(strncmp(pk, "pk_test_", 8), 0);
  assert_true(strlen(sk) > 40);

  uint8_t h[32];
  struct tp_merchant m;
  char kind[16];
  memset(&m, 0, sizeof m);
  tp_sha256(sk, strlen(sk), h);
  assert_int_equal(f->st.ops->apikey_lookup(f->st.cls, h, &m, kind), 1);
  assert_string_equal(m.id, id);
  assert_string_equal(m.name, "Shop");
  assert_string_equal(kind, "secret");
  uint8_t zero[32] = {0};
  assert_memory_not_equal(m.fp_key, zero, 32);

  tp_sha256(pk, strlen(pk), h);
  assert_int_equal(f->st.ops->apikey_lookup(f->st.cls, h, &m, kind), 1);
  assert_string_equal(kind, "publishable");

  char wrong[128];
  snprintf(wrong, sizeof wrong, "%s", sk);
  wrong[strlen(wrong) - 1] ^= 1;
  tp_sha256(wrong, strlen(wrong), h);
  assert_int_equal(f->st.ops->apikey_lookup(f->st.cls, h, &m, kind), 0);

  /* Neither the key nor its random part reaches the files, live or after the
   * WAL is checkpointed on close. */
  expect_not_on_disk(f, sk);
  expect_not_on_disk(f, pk);
  expect_not_on_disk(f, sk + 8);
  expect_not_on_disk(f, pk + 8);
  reopen(f);
  expect_not_on_disk(f, sk);
  expect_not_on_disk(f, sk + 8);
  expect_not_on_disk(f, pk + 8);
  tp_sha256(sk, strlen(sk), h);
  assert_int_equal(f->st.ops->apikey_lookup(f->st.cls, h, &m, kind), 1);
}

static void test_merchant_of_finds_owner_of_payment_intent(void **state)
{
  struct fx *f = *state;
  char id[TP_ID_MAX], sk[128], pk[128];
  assert_int_equal(f->st.ops->merchant_create(f->st.cls, "Owner", id, sk, pk), 0);
  char other[TP_ID_MAX];
  assert_int_equal(f->st.ops->merchant_create(f->st.cls, "Other", other, sk, pk), 0);
  put_pi(f, id, "pi_owned", 100, NULL, NULL);
  put_pi(f, other, "pi_other", 100, NULL, NULL);
  struct tp_merchant m;
  /* without the account: every merchant is looked at */
  assert_int_equal(f->st.ops->merchant_of(f->st.cls, "pi_owned", NULL, &m), 1);
  assert_string_equal(m.id, id);
  assert_string_equal(m.name, "Owner");
  assert_int_equal(f->st.ops->merchant_of(f->st.cls, "pi_other", NULL, &m), 1);
  assert_string_equal(m.id, other);
  assert_int_equal(f->st.ops->merchant_of(f->st.cls, "pi_missing", NULL, &m), 0);
  /* with it: only that merchant's PaymentIntents */
  assert_int_equal(f->st.ops->merchant_of(f->st.cls, "pi_owned", id, &m), 1);
  assert_string_equal(m.id, id);
  assert_int_equal(f->st.ops->merchant_of(f->st.cls, "pi_owned", other, &m), 0);
  assert_int_equal(f->st.ops->merchant_of(f->st.cls, "pi_owned", "acct_nobody", &m), 0);
  /* the id index is gone (migration 0010): the primary key serves */
  assert_int_equal(sql_long(f, "SELECT count(*) FROM sqlite_master WHERE name='payment_intents_id'"), 0);
}

/* The raw frame the event head is stored in: reads back alone and in a row
 * with compressed frames, is recognised, and is patched in place. */
static void test_raw_frame_reads_back_and_patches_in_place(void **state)
{
  (void)state;
  const char *head = "{\"id\":\"evt_0000000000000000000000aa\",\"object\":\"event\",\"data\":{\"object\":";
  const char *rest = "{\"id\":\"ch_1\",\"object\":\"charge\",\"amount\":1999}},\"type\":\"charge.succeeded\"}";
  size_t hl = strlen(head), rl = strlen(rest), fl = 0, zl = 0;
  uint8_t *raw = tp_zjson_raw(head, hl, &fl);
  assert_non_null(raw);
  assert_int_equal(fl, TP_ZJSON_RAW_HEAD + hl);
  assert_true(tp_zjson_is_raw(raw, fl));
  assert_memory_equal(raw + TP_ZJSON_RAW_HEAD, head, hl);
  size_t n = 0;
  char *back = tp_zjson_unpack(raw, fl, &n);
  assert_non_null(back);
  assert_int_equal(n, hl);
  assert_string_equal(back, head);
  free(back);
  uint8_t *z = tp_zjson_pack(rest, rl, &zl);
  assert_non_null(z);
  assert_false(tp_zjson_is_raw(z, zl)); /* a compressed frame is not raw */
  uint8_t *both = malloc(fl + zl);
  assert_non_null(both);
  memcpy(both, raw, fl);
  memcpy(both + fl, z, zl);
  memcpy(both + TP_ZJSON_RAW_HEAD + 7, "evt_0000000000000000000000bb", 28); /* in place */
  back = tp_zjson_unpack(both, fl + zl, &n);
  assert_non_null(back);
  assert_int_equal(n, hl + rl);
  assert_memory_equal(back, "{\"id\":\"evt_0000000000000000000000bb\",", 36);
  assert_string_equal(back + hl, rest);
  free(back);
  /* a frame cut short, a size that disagrees with the block's */
  assert_false(tp_zjson_is_raw(raw, fl - 1 - hl));
  assert_null(tp_zjson_unpack(raw, fl - 1, NULL));
  raw[9] ^= 1;
  assert_false(tp_zjson_is_raw(raw, fl));
  free(both);
  free(z);
  free(raw);
  char *big = malloc(TP_ZJSON_RAW_MAX + 1);
  assert_non_null(big);
  memset(big, ' ', TP_ZJSON_RAW_MAX + 1);
  assert_null(tp_zjson_raw(big, TP_ZJSON_RAW_MAX + 1, &fl));
  free(big);
}

/* ---- the group-commit writer ---------------------------------------------- */
struct slot {
  int calls;
  int rc;
  char id[TP_ID_MAX];
};

static void on_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct slot *s = arg;
  __atomic_add_fetch(&s->calls, 1, __ATOMIC_SEQ_CST);
  __atomic_store_n(&s->rc, rc, __ATOMIC_SEQ_CST);
}

static struct tp_cs *pi_set(struct slot *s, const char *merchant)
{
  struct tp_cs *cs = tp_cs_new();
  json_t *o = pi(s->id, 100, NULL, NULL);
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, merchant, o);
  json_decref(o);
  tp_cs_ledger(cs, s->id, merchant, "cash", "usd", 10);
  tp_cs_ledger(cs, s->id, merchant, "revenue", "usd", -10);
  tp_cs_on_done(cs, on_done, s);
  s->rc = 12345;
  return cs;
}

enum { W_THREADS = 4, W_PER_THREAD = 250, W_SETS = W_THREADS * W_PER_THREAD };

static void *submitter(void *arg)
{
  struct slot *slots = arg;
  for (int i = 0; i < W_PER_THREAD; i++) {
    struct tp_cs *cs = pi_set(&slots[i], M1);
    if (tp_writer_submit(cs) != 0) {
      tp_cs_free(cs);
      return (void *)1;
    }
  }
  return NULL;
}

static void test_writer_group_commits_1000_sets_from_4_threads(void **state)
{
  struct fx *f = *state;
  struct slot *slots = calloc(W_SETS, sizeof *slots);
  assert_non_null(slots);
  for (int i = 0; i < W_SETS; i++)
    tp_id_new(slots[i].id, "pi");
  struct tp_writer_stats before, after;
  tp_writer_stats(&before);
  assert_int_equal(tp_writer_start(&f->st), 0);
  pthread_t th[W_THREADS];
  for (int t = 0; t < W_THREADS; t++)
    assert_int_equal(pthread_create(&th[t], NULL, submitter, slots + t * W_PER_THREAD), 0);
  for (int t = 0; t < W_THREADS; t++) {
    void *ret = NULL;
    pthread_join(th[t], &ret);
    assert_null(ret);
  }
  tp_writer_stop();
  tp_writer_stats(&after);

  for (int i = 0; i < W_SETS; i++) {
    if (slots[i].calls != 1 || slots[i].rc != 0)
      fail_msg("set %d: %d completions, rc %d", i, slots[i].calls, slots[i].rc);
    char *got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, slots[i].id);
    if (!got)
      fail_msg("set %d: row %s missing", i, slots[i].id);
    free(got);
  }
  bool found;
  assert_int_equal(balance_of(f, M1, "cash", "usd", &found), 10 * W_SETS);
  uint64_t batches = after.batches - before.batches, sets = after.sets - before.sets;
  assert_int_equal(sets, W_SETS);
  assert_int_equal(after.queued, 0);
  print_message("group commit: %llu sets in %llu batches (largest %llu), %.1f us per commit\n",
                (unsigned long long)sets, (unsigned long long)batches, (unsigned long long)after.max_batch,
                batches ? (double)(after.commit_ns_total - before.commit_ns_total) / (double)batches / 1000.0 : 0.0);
  assert_true(batches < sets);
  free(slots);
}

/* What the writer's subscriber got: event ids and texts in commit order. */
static struct {
  pthread_mutex_t mu;
  char ids[8][TP_ID_MAX];
  char *texts[8];
  int n;
} seen = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_event(const char *merchant, const char *id, const char *type, const char *data, size_t len,
                     void *arg)
{
  (void)merchant;
  (void)type;
  (void)arg;
  pthread_mutex_lock(&seen.mu);
  if (seen.n < 8) {
    tp_scopy(seen.ids[seen.n], TP_ID_MAX, id);
    seen.texts[seen.n] = strndup(data, len);
    seen.n++;
  }
  pthread_mutex_unlock(&seen.mu);
}

/* One event in its own change set, built as the API builds it (the head
 * holding the id, the charge's own frame, the tail). */
static struct tp_cs *event_set(const char *evt_id, const char *charge_id, struct slot *s)
{
  char obj[128], head[128], ev[512];
  snprintf(obj, sizeof obj, "{\"id\":\"%s\",\"object\":\"charge\",\"amount\":1999}", charge_id);
  snprintf(head, sizeof head, "{\"id\":\"%s\",\"object\":\"event\",\"data\":{\"object\":", evt_id);
  snprintf(ev, sizeof ev, "%s%s},\"type\":\"charge.succeeded\"}", head, obj);
  size_t zl = 0;
  uint8_t *z = tp_zjson_pack(obj, strlen(obj), &zl);
  assert_non_null(z);
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put_event_around(cs, M1, evt_id, 1700000000, "charge.succeeded", charge_id, strdup(ev), strlen(ev),
                         strlen(head), strlen(obj), z, zl);
  free(z);
  tp_cs_on_done(cs, on_done, s);
  return cs;
}

/* Events built in one order and committed in the other get ids in commit
 * order: in their keys, their stored texts and what subscribers receive.
 * So "every event after the last id I saw" (stream resume, the webhook
 * outbox) misses none. */
static void test_writer_numbers_events_in_commit_order(void **state)
{
  struct fx *f = *state;
  char first[TP_ID_MAX], second[TP_ID_MAX];
  tp_id_new(first, "evt"); /* built first ... */
  tp_id_new(second, "evt");
  assert_true(strcmp(first, second) < 0);
  struct slot sa = {0}, sb = {0};
  struct tp_cs *a = event_set(first, "ch_built_first", &sa);
  struct tp_cs *b = event_set(second, "ch_built_second", &sb);
  static bool subscribed;
  if (!subscribed)
    assert_int_equal(tp_writer_subscribe(on_event, NULL), 0);
  subscribed = true;
  seen.n = 0;
  assert_int_equal(tp_writer_start(&f->st), 0);
  assert_int_equal(tp_writer_submit(b), 0); /* ... committed second: goes first */
  for (int i = 0; i < 5000 && !__atomic_load_n(&sb.calls, __ATOMIC_SEQ_CST); i++)
    usleep(1000);
  assert_int_equal(tp_writer_submit(a), 0);
  tp_writer_stop();
  assert_int_equal(sa.calls, 1);
  assert_int_equal(sb.calls, 1);
  assert_int_equal(sa.rc, 0);
  assert_int_equal(sb.rc, 0);

  assert_int_equal(seen.n, 2);
  /* the set committed first has the smaller id, and neither kept its own */
  assert_true(strcmp(seen.ids[0], seen.ids[1]) < 0);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(strlen(seen.ids[i]), strlen(first));
    assert_memory_equal(seen.ids[i], "evt_", 4);
    assert_string_not_equal(seen.ids[i], first);
    assert_string_not_equal(seen.ids[i], second);
    char want[80];
    snprintf(want, sizeof want, "{\"id\":\"%s\",", seen.ids[i]);
    assert_memory_equal(seen.texts[i], want, strlen(want));
    /* stored under the new id, with the new id inside, whole */
    char *got = tp_store_get(&f->st, TP_K_EVENT, M1, seen.ids[i]);
    assert_non_null(got);
    assert_string_equal(got, seen.texts[i]);
    assert_non_null(strstr(got, i == 0 ? "ch_built_second" : "ch_built_first"));
    free(got);
    free(seen.texts[i]);
  }
  char *old = tp_store_get(&f->st, TP_K_EVENT, M1, first);
  assert_null(old);
  char *order = sql_text(f, "SELECT group_concat(object_id) FROM (SELECT object_id FROM events ORDER BY id)");
  assert_non_null(order);
  assert_string_equal(order, "ch_built_second,ch_built_first");
  free(order);
}

static void test_writer_stop_drains_queue_before_returning(void **state)
{
  struct fx *f = *state;
  enum { N = 300 };
  struct slot *slots = calloc(N, sizeof *slots);
  assert_non_null(slots);
  assert_int_equal(tp_writer_start(&f->st), 0);
  for (int i = 0; i < N; i++) {
    tp_id_new(slots[i].id, "pi");
    assert_int_equal(tp_writer_submit(pi_set(&slots[i], M2)), 0);
  }
  tp_writer_stop(); /* no waiting on our side: stop itself must drain */
  for (int i = 0; i < N; i++) {
    assert_int_equal(slots[i].calls, 1);
    assert_int_equal(slots[i].rc, 0);
  }
  assert_int_equal(sql_long(f, "SELECT count(*) FROM payment_intents WHERE merchant='" M2 "'"), N);
  struct tp_writer_stats s;
  tp_writer_stats(&s);
  assert_int_equal(s.queued, 0);

  /* After stop, submit refuses and the caller keeps the set. */
  struct slot late = {0};
  tp_id_new(late.id, "pi");
  struct tp_cs *cs = pi_set(&late, M2);
  assert_int_not_equal(tp_writer_submit(cs), 0);
  tp_cs_free(cs);
  assert_int_equal(late.calls, 0);
  free(slots);
}

static void test_writer_reports_refused_set_to_its_completion(void **state)
{
  struct fx *f = *state;
  struct slot ok = {0}, bad = {0};
  tp_id_new(ok.id, "pi");
  tp_id_new(bad.id, "pi");
  struct tp_cs *good_cs = pi_set(&ok, M1);
  struct tp_cs *bad_cs = pi_set(&bad, M1);
  tp_cs_ledger(bad_cs, bad.id, M1, "cash", "usd", 1); /* unbalance it */
  assert_int_equal(tp_writer_start(&f->st), 0);
  assert_int_equal(tp_writer_submit(bad_cs), 0);
  assert_int_equal(tp_writer_submit(good_cs), 0);
  tp_writer_stop();
  assert_int_equal(bad.calls, 1);
  assert_true(bad.rc < 0);
  assert_int_equal(ok.calls, 1);
  assert_int_equal(ok.rc, 0);
  assert_null(tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, bad.id));
  char *got = tp_store_get(&f->st, TP_K_PAYMENT_INTENT, M1, ok.id);
  assert_non_null(got);
  free(got);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
  const struct CMUnitTest tests[] = {
    T(test_open_creates_db_and_migrates_to_version_1),
    T(test_reopen_is_a_noop),
    T(test_migration_7_keeps_objects),
    T(test_objects_are_stored_compressed_and_read_back),
    T(test_batched_balances_match_entries),
    T(test_event_around_object_frame_reads_back_whole),
    T(test_raw_frame_reads_back_and_patches_in_place),
    T(test_put_then_get_returns_same_json_for_owner_only),
    T(test_list_is_newest_first_with_limit_and_has_more),
    T(test_list_has_more_false_when_exactly_limit_rows),
    T(test_list_pages_with_starting_after_and_ending_before),
    T(test_list_filters_by_indexed_columns),
    T(test_list_filters_by_json_field_within_a_bound),
    T(test_list_filters_by_created_range),
    T(test_unbalanced_change_set_is_refused_and_fully_rolled_back),
    T(test_refused_set_mid_batch_commits_the_others_once),
    T(test_put_again_updates_and_foreign_id_is_refused),
    T(test_metadata_pairs_are_indexed_once_per_object),
    T(test_ledger_must_balance_per_currency),
    T(test_balanced_entries_update_balances),
    T(test_idempotency_record_round_trip),
    T(test_idempotent_reply_reuses_the_frame_of_an_equal_object),
    T(test_attempts_in_state_tracks_sent_until_updated),
    T(test_vault_blob_round_trip_per_merchant),
    T(test_merchant_keys_are_found_by_hash_and_never_stored),
    T(test_merchant_of_finds_owner_of_payment_intent),
    T(test_writer_group_commits_1000_sets_from_4_threads),
    T(test_writer_numbers_events_in_commit_order),
    T(test_writer_stop_drains_queue_before_returning),
    T(test_writer_reports_refused_set_to_its_completion),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
