/* The simulator's durable journal: DIR/sim.db (SQLite, WAL, synchronous=FULL),
 * its own schema. One writer thread takes every queued entry, inserts the
 * batch in one transaction and only then calls each entry's completion, so
 * an answer is never sent before its row is on disk (group commit). */
#include "jpack.h"
#include "log.h"
#include "sim/sim.h"
#include "store/sqlite/walbuf.h"
#include "util.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH_MAX 4096 /* entries per transaction */
/* The queue has no bound of its own: it is called under the ledger lock (so
 * it must never wait), and each entry belongs to a request in flight, which
 * the HTTP connection limit and the ISO read loop already bound. */

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS sim_journal("
    " seq INTEGER PRIMARY KEY,"
    " processor TEXT NOT NULL, protocol TEXT NOT NULL, operation TEXT NOT NULL,"
    " reference TEXT NOT NULL, terminal TEXT NOT NULL DEFAULT '', payment TEXT NOT NULL DEFAULT '',"
    " target TEXT NOT NULL DEFAULT '', txn_id TEXT NOT NULL DEFAULT '',"
    " amount INTEGER NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL, decline_code TEXT,"
    " response TEXT NOT NULL, created_ms INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS sim_journal_ref ON sim_journal(processor, reference);"
    "CREATE INDEX IF NOT EXISTS sim_journal_payment ON sim_journal(payment);"
    "CREATE INDEX IF NOT EXISTS sim_journal_target ON sim_journal(processor, target);";

static const char insert_sql[] =
    "INSERT INTO sim_journal(processor, protocol, operation, reference, terminal, payment, target, txn_id,"
    " amount, currency, status, decline_code, response, created_ms)"
    " VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)";

static sqlite3 *wdb;  /* the writer's connection */
static sqlite3 *rdb;  /* one reader for /_sim/journal, serialized by rdb_mu */
static pthread_mutex_t rdb_mu = PTHREAD_MUTEX_INITIALIZER;
static char db_path[1200];

static pthread_t writer;
static bool writer_running;
static pthread_mutex_t q_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cv = PTHREAD_COND_INITIALIZER;
static struct tp_sim_entry *q_head, *q_tail;
static size_t q_len;
static bool q_stop;

static sqlite3 *open_db(const char *path, bool readonly)
{
  sqlite3 *db = NULL;
  int flags = readonly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  /* The journal commits with synchronous=FULL: its WAL appends can be
   * coalesced into one write per commit (store/sqlite/walbuf.h). */
  const char *vfs = readonly ? NULL : tp_walbuf_vfs();
  if (sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, vfs) != SQLITE_OK) {
    tp_log(TP_LOG_ERROR, "sim_db_open", "{s:s, s:s}", "path", path, "error", db ? sqlite3_errmsg(db) : "oom");
    sqlite3_close(db);
    return NULL;
  }
  sqlite3_busy_timeout(db, 5000);
  return db;
}

int tp_sim_journal_open(const char *dir)
{
  snprintf(db_path, sizeof db_path, "%s/sim.db", dir);
  wdb = open_db(db_path, false);
  if (!wdb)
    return -1;
  char *err = NULL;
  /* A checkpoint every 1000 pages (SQLite's default) ran on this, the
   * journaling thread, several times a second under load: let the WAL grow
   * to 16,000 pages (64 MB) between checkpoints, as the gateway does. */
  if (sqlite3_exec(wdb, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=16000;", NULL,
                   NULL, &err) != SQLITE_OK ||
      sqlite3_exec(wdb, schema, NULL, NULL, &err) != SQLITE_OK) {
    tp_log(TP_LOG_ERROR, "sim_db_schema", "{s:s}", "error", err ? err : "?");
    sqlite3_free(err);
    return -1;
  }
  rdb = open_db(db_path, true);
  return rdb ? 0 : -1;
}

void tp_sim_journal_close(void)
{
  sqlite3_close(rdb);
  sqlite3_close(wdb);
  rdb = wdb = NULL;
}

static void copy_col(sqlite3_stmt *st, int i, char *dst, size_t cap)
{
  const unsigned char *t = sqlite3_column_text(st, i);
  snprintf(dst, cap, "%s", t ? (const char *)t : "");
}

int tp_sim_journal_replay(void (*fn)(const struct tp_sim_entry *e, void *arg), void *arg)
{
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(wdb,
                         "SELECT processor, protocol, operation, reference, terminal, payment, target, txn_id,"
                         " amount, currency, status, decline_code, response, created_ms FROM sim_journal ORDER BY seq",
                         -1, &st, NULL) != SQLITE_OK)
    return -1;
  struct tp_sim_entry e;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    memset(&e, 0, sizeof e);
    copy_col(st, 0, e.processor, sizeof e.processor);
    copy_col(st, 1, e.protocol, sizeof e.protocol);
    copy_col(st, 2, e.operation, sizeof e.operation);
    copy_col(st, 3, e.reference, sizeof e.reference);
    copy_col(st, 4, e.terminal, sizeof e.terminal);
    copy_col(st, 5, e.payment, sizeof e.payment);
    copy_col(st, 6, e.target, sizeof e.target);
    copy_col(st, 7, e.txn_id, sizeof e.txn_id);
    e.amount = sqlite3_column_int64(st, 8);
    copy_col(st, 9, e.currency, sizeof e.currency);
    copy_col(st, 10, e.status, sizeof e.status);
    copy_col(st, 11, e.decline_code, sizeof e.decline_code);
    const unsigned char *resp = sqlite3_column_text(st, 12);
    e.response = strdup(resp ? (const char *)resp : "{}");
    if (!e.response)
      abort();
    e.created_ms = sqlite3_column_int64(st, 13);
    fn(&e, arg);
    free(e.response);
  }
  sqlite3_finalize(st);
  return rc == SQLITE_DONE ? 0 : -1;
}

static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
  return sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

static bool write_batch(sqlite3_stmt *ins, struct tp_sim_entry *batch)
{
  if (sqlite3_exec(wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
    return false;
  for (struct tp_sim_entry *e = batch; e; e = e->next) {
    sqlite3_reset(ins);
    bind_text(ins, 1, e->processor);
    bind_text(ins, 2, e->protocol);
    bind_text(ins, 3, e->operation);
    bind_text(ins, 4, e->reference);
    bind_text(ins, 5, e->terminal);
    bind_text(ins, 6, e->payment);
    bind_text(ins, 7, e->target);
    bind_text(ins, 8, e->txn_id);
    sqlite3_bind_int64(ins, 9, e->amount);
    bind_text(ins, 10, e->currency);
    bind_text(ins, 11, e->status);
    if (e->decline_code[0])
      bind_text(ins, 12, e->decline_code);
    else
      sqlite3_bind_null(ins, 12);
    bind_text(ins, 13, e->response ? e->response : "");
    sqlite3_bind_int64(ins, 14, e->created_ms);
    if (sqlite3_step(ins) != SQLITE_DONE) {
      tp_log(TP_LOG_ERROR, "sim_journal_insert", "{s:s}", "error", sqlite3_errmsg(wdb));
      sqlite3_exec(wdb, "ROLLBACK", NULL, NULL, NULL);
      return false;
    }
  }
  if (sqlite3_exec(wdb, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    tp_log(TP_LOG_ERROR, "sim_journal_commit", "{s:s}", "error", sqlite3_errmsg(wdb));
    sqlite3_exec(wdb, "ROLLBACK", NULL, NULL, NULL);
    return false;
  }
  return true;
}

static void *writer_main(void *arg)
{
  (void)arg;
  sqlite3_stmt *ins = NULL;
  if (sqlite3_prepare_v2(wdb, insert_sql, -1, &ins, NULL) != SQLITE_OK) {
    tp_log(TP_LOG_ERROR, "sim_journal_prepare", "{s:s}", "error", sqlite3_errmsg(wdb));
    abort();
  }
  for (;;) {
    pthread_mutex_lock(&q_mu);
    while (!q_head && !q_stop)
      pthread_cond_wait(&q_cv, &q_mu);
    if (!q_head && q_stop) {
      pthread_mutex_unlock(&q_mu);
      break;
    }
    struct tp_sim_entry *batch = q_head, *last = q_head;
    size_t n = 1;
    while (last->next && n < BATCH_MAX) {
      last = last->next;
      n++;
    }
    q_head = last->next;
    if (!q_head)
      q_tail = NULL;
    last->next = NULL;
    q_len -= n;
    pthread_mutex_unlock(&q_mu);

    bool ok = write_batch(ins, batch);
    if (!ok) {
      /* A failed transaction answers nothing as approved: each caller is told
       * the write failed (and answers 500), the rows are not in memory either. */
      tp_log(TP_LOG_ERROR, "sim_journal_batch_failed", "{s:I}", "entries", (json_int_t)n);
    }
    while (batch) {
      struct tp_sim_entry *next = batch->next;
      if (batch->done)
        batch->done(batch->arg, ok);
      free(batch->response);
      free(batch);
      batch = next;
    }
  }
  sqlite3_finalize(ins);
  return NULL;
}

int tp_sim_journal_start(void)
{
  q_stop = false;
  if (pthread_create(&writer, NULL, writer_main, NULL) != 0)
    return -1;
  writer_running = true;
  return 0;
}

void tp_sim_journal_stop(void)
{
  if (!writer_running)
    return;
  pthread_mutex_lock(&q_mu);
  q_stop = true;
  pthread_cond_signal(&q_cv);
  pthread_mutex_unlock(&q_mu);
  pthread_join(writer, NULL);
  writer_running = false;
}

void tp_sim_journal_submit(struct tp_sim_entry *e)
{
  e->next = NULL;
  if (!e->created_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    e->created_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  }
  pthread_mutex_lock(&q_mu);
  if (q_tail)
    q_tail->next = e;
  else
    q_head = e;
  q_tail = e;
  q_len++;
  pthread_cond_signal(&q_cv);
  pthread_mutex_unlock(&q_mu);
}

/* ---- the journal view -------------------------------------------------------- */
/* A "charge" is an approved authorization that no void or reversal undid,
 * counted per payment (the REST "payment" field, else the reference; ISO: the RRN). */
static const char charges_sql[] =
    "SELECT CASE WHEN a.payment <> '' THEN a.payment ELSE a.reference END AS p, COUNT(*) AS n"
    " FROM sim_journal a"
    " WHERE a.operation = 'authorize' AND a.status = 'approved'"
    "  AND (?1 IS NULL OR a.processor = ?1)"
    "  AND (?2 IS NULL OR a.reference = ?2)"
    "  AND (?3 IS NULL OR a.payment = ?3 OR (a.payment = '' AND a.reference = ?3))"
    "  AND NOT EXISTS (SELECT 1 FROM sim_journal v WHERE v.processor = a.processor AND v.target = a.reference"
    "   AND v.terminal = a.terminal AND v.operation IN ('void', 'reversal') AND v.status IN ('voided', 'reversed'))"
    " GROUP BY p ORDER BY n DESC, p";

static const char entries_sql[] =
    "SELECT seq, processor, protocol, operation, reference, terminal, payment, target, txn_id, amount, currency,"
    " status, decline_code, created_ms, response LIKE '%\"captured\":true%' FROM sim_journal"
    " WHERE (?1 IS NULL OR processor = ?1) AND (?2 IS NULL OR reference = ?2 OR target = ?2)"
    "  AND (?3 IS NULL OR payment = ?3 OR (payment = '' AND (reference = ?3 OR target = ?3)))"
    " ORDER BY seq LIMIT ?4"; /* a payment named by its reference, as charges_sql counts it */

static void bind_opt(sqlite3_stmt *st, int i, const char *s)
{
  if (s && *s)
    sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
  else
    sqlite3_bind_null(st, i);
}

static json_t *col_json(sqlite3_stmt *st, int i)
{
  if (sqlite3_column_type(st, i) == SQLITE_NULL)
    return json_null();
  return json_string((const char *)sqlite3_column_text(st, i));
}

static json_t *query_db(sqlite3 *db, const char *processor, const char *reference, const char *payment,
                        int64_t limit)
{
  sqlite3_stmt *st = NULL;
  json_t *entries = json_array(), *by = json_object();
  json_int_t charges = 0, doubles = 0, payments = 0, listed = 0;
  bool ok = false;
  /* Read both in one snapshot. */
  if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
    goto out;
  if (sqlite3_prepare_v2(db, entries_sql, -1, &st, NULL) != SQLITE_OK)
    goto out;
  bind_opt(st, 1, processor);
  bind_opt(st, 2, reference);
  bind_opt(st, 3, payment);
  sqlite3_bind_int64(st, 4, limit);
  while (sqlite3_step(st) == SQLITE_ROW) {
    json_t *o = tp_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:I, s:o, s:o, s:o, s:I}", "seq",
                        (json_int_t)sqlite3_column_int64(st, 0), "processor", col_json(st, 1), "protocol",
                        col_json(st, 2), "operation", col_json(st, 3), "reference", col_json(st, 4), "payment",
                        col_json(st, 6), "amount", (json_int_t)sqlite3_column_int64(st, 9), "currency",
                        col_json(st, 10), "status", col_json(st, 11), "decline_code", col_json(st, 12),
                        "created_ms", (json_int_t)sqlite3_column_int64(st, 13));
    if (!o)
      continue;
    if (sqlite3_column_bytes(st, 5) > 0)
      json_object_set_new(o, "terminal", col_json(st, 5));
    if (sqlite3_column_bytes(st, 7) > 0)
      json_object_set_new(o, "authorization", col_json(st, 7));
    if (sqlite3_column_bytes(st, 8) > 0)
      json_object_set_new(o, "id", col_json(st, 8));
    /* An authorization made with capture (a sale) captured its amount at
     * once: no capture row follows. */
    const char *op = (const char *)sqlite3_column_text(st, 3);
    if (op && strcmp(op, "authorize") == 0)
      json_object_set_new(o, "captured", json_boolean(sqlite3_column_int(st, 14) != 0));
    json_array_append_new(entries, o);
  }
  sqlite3_finalize(st);
  st = NULL;
  if (sqlite3_prepare_v2(db, charges_sql, -1, &st, NULL) != SQLITE_OK)
    goto out;
  bind_opt(st, 1, processor);
  bind_opt(st, 2, reference);
  bind_opt(st, 3, payment);
  while (sqlite3_step(st) == SQLITE_ROW) {
    json_int_t n = sqlite3_column_int64(st, 1);
    charges += n;
    payments++;
    if (n > 1)
      doubles++;
    if (listed < limit) {
      json_object_set_new(by, (const char *)sqlite3_column_text(st, 0), json_integer(n));
      listed++;
    }
  }
  ok = true;
out:
  if (!ok)
    tp_log(TP_LOG_ERROR, "sim_journal_query", "{s:s}", "error", sqlite3_errmsg(db));
  sqlite3_finalize(st);
  sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  if (!ok) {
    json_decref(entries);
    json_decref(by);
    return NULL;
  }
  return tp_pack("{s:o, s:{s:o, s:I, s:I, s:I}}", "entries", entries, "summary", "charges_by_payment", by,
                 "double_charges", doubles, "charges", charges, "payments_charged", payments);
}

json_t *tp_sim_journal_query(const char *processor, const char *reference, const char *payment, int64_t limit)
{
  pthread_mutex_lock(&rdb_mu);
  json_t *o = query_db(rdb, processor, reference, payment, limit);
  pthread_mutex_unlock(&rdb_mu);
  return o;
}

json_t *tp_sim_journal_query_dir(const char *dir, const char *processor, const char *reference,
                                 const char *payment, int64_t limit, char *err, size_t errlen)
{
  char path[1200];
  snprintf(path, sizeof path, "%s/sim.db", dir);
  sqlite3 *db = open_db(path, true);
  if (!db) {
    snprintf(err, errlen, "cannot open %s", path);
    return NULL;
  }
  json_t *o = query_db(db, processor, reference, payment, limit);
  if (!o)
    snprintf(err, errlen, "cannot read the journal in %s", path);
  sqlite3_close(db);
  return o;
}
