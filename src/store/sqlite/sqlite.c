/* SQLite backend of the store: WAL, synchronous=FULL, one write connection
 * owned by the writer thread, one read connection per reading thread. */
#include "config.h"
#include "jpack.h"
#include "jparse.h"
#include "log.h"
#include "metrics.h"
#include "store/sqlite/walbuf.h"
#include "store/store.h"
#include "store/zjson.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern const char *const tp_migrations[];
extern const size_t tp_migrations_count;

#define BUSY_TIMEOUT_MS 10000

struct sq {
  char path[4096];
  sqlite3 *w;                 /* write connection (writer thread, or admin before it starts) */
  sqlite3_stmt *put[TP_K__COUNT];
  sqlite3_stmt *ledger, *balance_add, *attempt, *idem, *vault;
  sqlite3_stmt *meta, *meta_gone; /* a put's metadata (tp_kind_meta_indexed): a key, the keys it lost */
  /* Transaction control, prepared once: sqlite3_exec would parse each of
   * these again for every change set of every batch. */
  sqlite3_stmt *tx_begin, *tx_commit, *sp_open, *sp_release, *sp_rollback;
  sqlite3_stmt *sql[64];      /* features' statements (tp_cs_sql), prepared once */
  size_t nsql;
  int64_t idem_ttl;           /* seconds an Idempotency-Key is kept */
  int wal_fd;                 /* pipelined commits: our own descriptor of the WAL, -1 = none */
  bool ahead_saved;           /* meta ids_ran_ahead is committed (tp_ids_ran_ahead) */
  bool ahead_pending;         /* ... written in the open transaction */
  bool full;                  /* this batch failed for lack of disk space (SQLITE_FULL) */
  int ckpt_pages;             /* WAL frames that start a checkpoint */
  pthread_key_t rkey;         /* per-thread read connection */
  bool rkey_ok;
  /* Background checkpoints (see ckpt_main): started at the first full WAL. */
  pthread_mutex_t ck_mu;
  pthread_cond_t ck_cv;
  pthread_t ck_thread;
  bool ck_started, ck_due, ck_stop, ck_running;
  atomic_bool ck_tail;        /* a pass ended: the writer copies the rest */
  struct bal_delta *bal;      /* the batch's balance deltas (writer only; BAL_BATCH_MAX) */
  int wal_frames;             /* frames in the WAL after the last commit (wal_hook) */
  size_t nbal;
};

/* Feature queries (tp_store_query) a reader keeps prepared, by their text:
 * the webhooks thread runs a few statements for every delivery, and
 * preparing one cost as much as running it. */
#define READER_QCACHE 32

struct reader {
  sqlite3 *db;
  sqlite3_stmt *get[TP_K__COUNT], *live[TP_K__COUNT];
  sqlite3_stmt *idem_get, *apikey, *vault_get, *attempt_get;
  struct {
    uint64_t hash;
    char *sql;
    sqlite3_stmt *st;
  } q[READER_QCACHE];
  unsigned qnext; /* the entry replaced next when all are taken */
};

static void reader_free(void *p)
{
  struct reader *r = p;
  if (!r)
    return;
  for (int i = 0; i < TP_K__COUNT; i++) {
    sqlite3_finalize(r->get[i]);
    sqlite3_finalize(r->live[i]);
  }
  sqlite3_finalize(r->idem_get);
  sqlite3_finalize(r->apikey);
  sqlite3_finalize(r->vault_get);
  sqlite3_finalize(r->attempt_get);
  for (int i = 0; i < READER_QCACHE; i++) {
    sqlite3_finalize(r->q[i].st);
    free(r->q[i].sql);
  }
  sqlite3_close(r->db);
  free(r);
}

static int exec(sqlite3 *db, const char *sql)
{
  char *err = NULL;
  int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
  if (rc != SQLITE_OK) {
    tp_log(TP_LOG_ERROR, "sqlite_error", "{s:s, s:s}", "error", err ? err : sqlite3_errstr(rc), "sql", sql);
    sqlite3_free(err);
    return -1;
  }
  return 0;
}

static sqlite3_stmt *prep(sqlite3 *db, const char *sql)
{
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
    tp_log(TP_LOG_ERROR, "sqlite_prepare", "{s:s, s:s}", "error", sqlite3_errmsg(db), "sql", sql);
    return NULL;
  }
  return st;
}

/* vfs: NULL for the default one. */
static sqlite3 *open_conn(const char *path, bool readonly, const char *vfs)
{
  sqlite3 *db = NULL;
  int flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
              SQLITE_OPEN_NOMUTEX;
  if (sqlite3_open_v2(path, &db, flags, vfs) != SQLITE_OK) {
    tp_log(TP_LOG_ERROR, "sqlite_open", "{s:s}", "error", db ? sqlite3_errmsg(db) : "oom");
    sqlite3_close(db);
    return NULL;
  }
  sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
  return db;
}

/* A stored JSON value (column c of the current row) as a malloc'ed string:
 * compressed frames (BLOB) are expanded, text is copied; NULL for SQL NULL
 * or a frame that does not decode (logged: the row is damaged). */
static char *column_json(sqlite3_stmt *st, int c)
{
  int t = sqlite3_column_type(st, c);
  if (t == SQLITE_NULL)
    return NULL;
  if (t == SQLITE_BLOB) {
    char *j = tp_zjson_unpack(sqlite3_column_blob(st, c), (size_t)sqlite3_column_bytes(st, c), NULL);
    if (!j)
      tp_log(TP_LOG_ERROR, "store_value_undecodable", "{s:i}", "bytes", sqlite3_column_bytes(st, c));
    return j;
  }
  return strdup((const char *)sqlite3_column_text(st, c));
}

/* SQL function tp_json(x): the JSON text of a stored value, compressed or
 * not, for statements that read objects directly (tp_store_query users,
 * and anyone inspecting the database with turnpike's connections). */
static void sql_tp_json(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
  (void)argc;
  if (sqlite3_value_type(argv[0]) != SQLITE_BLOB) {
    sqlite3_result_value(ctx, argv[0]);
    return;
  }
  size_t n = 0;
  char *j = tp_zjson_unpack(sqlite3_value_blob(argv[0]), (size_t)sqlite3_value_bytes(argv[0]), &n);
  if (!j) {
    sqlite3_result_error(ctx, "tp_json: undecodable value", -1);
    return;
  }
  sqlite3_result_text(ctx, j, (int)n, free);
}

static void add_functions(sqlite3 *db)
{
  sqlite3_create_function(db, "tp_json", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL, sql_tp_json, NULL, NULL);
}

static struct reader *reader(struct sq *s)
{
  struct reader *r = pthread_getspecific(s->rkey);
  if (r)
    return r;
  r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  r->db = open_conn(s->path, true, NULL);
  if (!r->db) {
    free(r);
    return NULL;
  }
  /* No mmap: a WAL reader that finds the database changed since its last
   * transaction drops its whole mapping (SQLite's pager unfetches it), and
   * with a commit every ~1.5 ms nearly every read transaction did: a munmap
   * and a TLB shootdown to the other core each time, 13% of the HTTP
   * threads' time when a payment reads its customer, PaymentMethod and vault
   * record (docs/architecture.md, Performance, session 10). pread from the
   * page cache is cheaper. */
  exec(r->db, "PRAGMA query_only=1; PRAGMA cache_size=-8000; PRAGMA mmap_size=0");
  add_functions(r->db);
  pthread_setspecific(s->rkey, r);
  return r;
}

static bool bind_text(sqlite3_stmt *st, int i, const char *v)
{
  return sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) == SQLITE_OK;
}

static atomic_bool corrupt_seen, corrupt_watch;

void tp_store_corrupt_watch(void)
{
  atomic_store(&corrupt_watch, true);
}

void tp_sqlite_log(void *arg, int code, const char *msg)
{
  (void)arg;
  /* serve's store alone: restore refusing a file that is no store is not a
   * damaged store to restore */
  if (!atomic_load(&corrupt_watch) || ((code & 0xff) != SQLITE_CORRUPT && (code & 0xff) != SQLITE_NOTADB))
    return;
  if (!atomic_exchange(&corrupt_seen, true))
    tp_log(TP_LOG_ERROR, "store_corrupt", "{s:s, s:s}", "error", msg ? msg : "", "hint",
           "the store's file is damaged: check it (sqlite3 turnpike.db 'PRAGMA integrity_check') and restore the "
           "last backup (turnpike restore)");
}

bool tp_store_corrupt(void)
{
  return atomic_load(&corrupt_seen);
}

/* ---- schema ------------------------------------------------------------ */
static int migrate(sqlite3 *db)
{
  if (exec(db, "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)"))
    return -1;
  int version = 0;
  sqlite3_stmt *st = prep(db, "SELECT value FROM meta WHERE key='schema_version'");
  if (!st)
    return -1;
  /* A read that fails (a damaged page) is not version 0: migration 1 would
   * run again over the whole store. */
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    version = atoi((const char *)sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    tp_log(TP_LOG_ERROR, "store_unreadable", "{s:s}", "error", sqlite3_errstr(rc));
    return -1;
  }
  for (size_t v = (size_t)version; v < tp_migrations_count; v++) {
    char set[96];
    snprintf(set, sizeof set, "INSERT OR REPLACE INTO meta VALUES('schema_version','%zu')", v + 1);
    if (exec(db, "BEGIN IMMEDIATE") || exec(db, tp_migrations[v]) || exec(db, set) || exec(db, "COMMIT")) {
      exec(db, "ROLLBACK");
      return -1;
    }
    tp_log(TP_LOG_INFO, "store_migrated", "{s:I}", "schema_version", (json_int_t)(v + 1));
  }
  if ((size_t)version > tp_migrations_count) {
    tp_log(TP_LOG_ERROR, "store_too_new", "{s:i}", "schema_version", version);
    return -1;
  }
  return 0;
}

/* ---- writer side ---------------------------------------------------------- */
static int step_done(sqlite3 *db, sqlite3_stmt *st)
{
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (rc != SQLITE_DONE) {
    tp_log(TP_LOG_ERROR, "sqlite_step", "{s:s}", "error", sqlite3_errmsg(db));
    return -1;
  }
  return 0;
}

struct ledger_sum {
  char txn[64];
  char cur[4];
  int64_t sum;
};

/* Running balances (ledger_balances) change once per batch, not once per
 * entry: every capture moves the same two rows of a merchant, so a batch of
 * n payments did 2n upserts of two rows. Each change set sums its deltas per
 * (merchant, account, currency); a set that applied adds them to the
 * batch's, and the batch writes them just before COMMIT (same transaction,
 * so a balance still never differs from its entries once committed). */
#define BAL_SET_MAX 32
#define BAL_BATCH_MAX 256
struct bal_delta {
  char merchant[64];
  char account[128];
  char cur[4];
  int64_t delta;
};
struct bal_set {
  struct bal_delta d[BAL_SET_MAX];
  size_t n;
};

/* Add delta to (merchant, account, cur) in d[0..*n); -1 when there is no room,
 * a key does not fit or the sum overflows. */
static int bal_add(struct bal_delta *d, size_t *n, size_t max, const char *merchant, const char *account,
                   const char *cur, int64_t delta)
{
  for (size_t k = 0; k < *n; k++)
    if (strcmp(d[k].account, account) == 0 && strcmp(d[k].merchant, merchant) == 0 && strcmp(d[k].cur, cur) == 0)
      return __builtin_add_overflow(d[k].delta, delta, &d[k].delta) ? -1 : 0;
  if (*n == max || strlen(merchant) >= sizeof d->merchant || strlen(account) >= sizeof d->account ||
      strlen(cur) >= sizeof d->cur)
    return -1;
  struct bal_delta *e = &d[(*n)++];
  tp_scopy(e->merchant, sizeof e->merchant, merchant);
  tp_scopy(e->account, sizeof e->account, account);
  tp_scopy(e->cur, sizeof e->cur, cur);
  e->delta = delta;
  return 0;
}

/* Bind a JSON array to ?1..?N (see tp_cs_sql). */
static int bind_json_args(sqlite3_stmt *st, const json_t *args)
{
  size_t i;
  const json_t *v;
  if (!args)
    return 0;
  if (!json_is_array(args))
    return -1;
  json_array_foreach(args, i, v) {
    int k = (int)i + 1, rc;
    if (json_is_string(v))
      rc = sqlite3_bind_text(st, k, json_string_value(v), (int)json_string_length(v), SQLITE_TRANSIENT);
    else if (json_is_integer(v))
      rc = sqlite3_bind_int64(st, k, json_integer_value(v));
    else if (json_is_boolean(v))
      rc = sqlite3_bind_int(st, k, json_is_true(v));
    else if (json_is_null(v))
      rc = sqlite3_bind_null(st, k);
    else
      return -1;
    if (rc != SQLITE_OK)
      return -1;
  }
  return 0;
}

/* A feature's statement inside the writer transaction. Statements are
 * prepared once and kept: features use a handful of fixed SQL strings. */
static int apply_sql(struct sq *s, const struct tp_cs_op *op)
{
  sqlite3_stmt *st = NULL;
  for (size_t i = 0; i < s->nsql; i++)
    if (strcmp(sqlite3_sql(s->sql[i]), op->s1) == 0) {
      st = s->sql[i];
      break;
    }
  if (!st) {
    if (sqlite3_prepare_v3(s->w, op->s1, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
      tp_log(TP_LOG_ERROR, "sqlite_prepare", "{s:s, s:s}", "sql", op->s1, "error", sqlite3_errmsg(s->w));
      return -1;
    }
    if (s->nsql < sizeof s->sql / sizeof s->sql[0])
      s->sql[s->nsql++] = st;
  }
  json_t *args = op->data ? json_loadb(op->data, op->data_len, 0, NULL) : NULL;
  int rc = bind_json_args(st, args);
  json_decref(args);
  if (rc == 0)
    rc = step_done(s->w, st);
  else {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
  if (rc == 0 && op->n1 > 0 && sqlite3_changes(s->w) < op->n1)
    rc = TP_STORE_ERR_CONFLICT;
  bool cached = false;
  for (size_t i = 0; i < s->nsql; i++)
    cached |= s->sql[i] == st;
  if (!cached)
    sqlite3_finalize(st);
  return rc;
}

/* An object's JSON or an idempotent reply: the compressed frame when the
 * change set has one (a BLOB), else the text; NULL when there is neither. */
static void bind_data(sqlite3_stmt *st, int i, const struct tp_cs_op *op)
{
  if (op->zdata)
    sqlite3_bind_blob(st, i, op->zdata, (int)op->zdata_len, SQLITE_STATIC);
  else if (op->data)
    sqlite3_bind_text(st, i, op->data, (int)op->data_len, SQLITE_STATIC);
  else
    sqlite3_bind_null(st, i);
}

/* The metadata of a put (store.h, tp_cs_op) into the index: each key
 * upserted with its value (a key whose value is unchanged, the object put
 * again, is a lookup that writes nothing), then the object's keys that
 * are not among them deleted. */
static int put_meta(struct sq *s, const struct tp_cs_op *op)
{
  const char *p = op->s3, *end = op->s3 + op->n2;
  while (p < end) {
    const char *k = p;
    const char *v = k + strlen(k) + 1;
    if (v >= end)
      return -1;
    size_t vl = strlen(v);
    p = v + vl + 1;
    sqlite3_stmt *st = s->meta;
    bind_text(st, 1, op->merchant);
    bind_text(st, 2, tp_kinds[op->kind].prefix);
    bind_text(st, 3, op->id);
    bind_text(st, 4, k);
    sqlite3_bind_text(st, 5, v, (int)vl, SQLITE_STATIC);
    if (step_done(s->w, st))
      return -1;
  }
  sqlite3_stmt *st = s->meta_gone;
  bind_text(st, 1, op->merchant);
  bind_text(st, 2, tp_kinds[op->kind].prefix);
  bind_text(st, 3, op->id);
  bind_text(st, 4, op->s4);
  return op->s4 ? step_done(s->w, st) : -1;
}

static int apply_one(struct sq *s, struct tp_cs *cs, struct bal_set *bal)
{
  size_t n = tp_cs_count(cs);
  struct ledger_sum sums[16];
  size_t nsums = 0;
  bal->n = 0;
  int64_t now = tp_now();
  for (size_t i = 0; i < n; i++) {
    const struct tp_cs_op *op = tp_cs_op_at(cs, i);
    sqlite3_stmt *st;
    switch (op->type) {
    case TP_OP_PUT:
      st = s->put[op->kind];
      bind_text(st, 1, op->id);
      bind_text(st, 2, op->merchant);
      sqlite3_bind_int64(st, 3, op->n1);
      bind_text(st, 4, op->s1);
      bind_text(st, 5, op->s2);
      bind_data(st, 6, op);
      if (step_done(s->w, st) || sqlite3_changes(s->w) != 1)
        return -1;
      if (op->s3 && op->n2 > 0 && put_meta(s, op))
        return -1;
      break;
    case TP_OP_LEDGER: {
      if (op->n1 == INT64_MIN)
        return -1;
      size_t k;
      for (k = 0; k < nsums; k++)
        if (strcmp(sums[k].txn, op->id) == 0 && strcmp(sums[k].cur, op->s2) == 0)
          break;
      if (k == nsums) {
        if (nsums == 16 || strlen(op->id) >= 64 || strlen(op->s2) != 3)
          return -1;
        tp_scopy(sums[k].txn, sizeof sums[k].txn, op->id);
        memcpy(sums[k].cur, op->s2, 4);
        sums[k].sum = 0;
        nsums++;
      }
      if (__builtin_add_overflow(sums[k].sum, op->n1, &sums[k].sum))
        return -1;
      /* A ledger transaction is written by one change set: its entries are
       * numbered here (a txn id reused by a later set collides on the key). */
      int64_t seq = 0;
      for (size_t j = 0; j < i; j++) {
        const struct tp_cs_op *prev = tp_cs_op_at(cs, j);
        seq += prev->type == TP_OP_LEDGER && strcmp(prev->id, op->id) == 0;
      }
      st = s->ledger;
      bind_text(st, 1, op->id);
      bind_text(st, 2, op->merchant);
      bind_text(st, 3, op->s1);
      bind_text(st, 4, op->s2);
      sqlite3_bind_int64(st, 5, op->n1);
      sqlite3_bind_int64(st, 6, now);
      sqlite3_bind_int64(st, 7, seq);
      if (step_done(s->w, st))
        return -1;
      if (!op->merchant || !op->s1 || !op->s2 ||
          bal_add(bal->d, &bal->n, BAL_SET_MAX, op->merchant, op->s1, op->s2, op->n1) != 0)
        return -1;
      break;
    }
    case TP_OP_ATTEMPT: {
      const struct tp_attempt *a = op->attempt;
      st = s->attempt;
      bind_text(st, 1, a->id);
      bind_text(st, 2, a->merchant);
      bind_text(st, 3, a->payment_intent[0] ? a->payment_intent : NULL);
      bind_text(st, 4, a->processor);
      bind_text(st, 5, a->idem_ref);
      bind_text(st, 6, a->kind);
      bind_text(st, 7, a->state);
      bind_text(st, 8, a->currency);
      sqlite3_bind_int64(st, 9, a->amount);
      bind_text(st, 10, a->vault_token[0] ? a->vault_token : NULL);
      bind_text(st, 11, a->refund[0] ? a->refund : NULL);
      bind_text(st, 12, a->result_code[0] ? a->result_code : NULL);
      bind_text(st, 13, a->auth_code[0] ? a->auth_code : NULL);
      bind_text(st, 14, a->processor_ref[0] ? a->processor_ref : NULL);
      bind_text(st, 15, a->route[0] ? a->route : NULL);
      bind_text(st, 16, a->client_idem_key[0] ? a->client_idem_key : NULL);
      bind_text(st, 17, a->client_req_hash[0] ? a->client_req_hash : NULL);
      sqlite3_bind_int(st, 18, a->capture);
      sqlite3_bind_int64(st, 19, a->created ? a->created : now);
      sqlite3_bind_int64(st, 20, now);
      sqlite3_bind_int(st, 21, a->reply_charge);
      bind_text(st, 22, a->reason);
      bind_text(st, 23, a->orig_data);
      bind_text(st, 24, a->reply_opts);
      if (step_done(s->w, st) || sqlite3_changes(s->w) != 1)
        return -1;
      break;
    }
    case TP_OP_IDEM:
      st = s->idem;
      bind_text(st, 1, op->merchant);
      bind_text(st, 2, op->id);
      bind_text(st, 3, op->s1);
      sqlite3_bind_int64(st, 4, op->n1);
      bind_data(st, 5, op);
      sqlite3_bind_int64(st, 6, now);
      bind_text(st, 7, op->s2);
      if (step_done(s->w, st))
        return -1;
      break;
    case TP_OP_SQL: {
      int src = apply_sql(s, op);
      if (src)
        return src == TP_STORE_ERR_CONFLICT ? src : -1;
      break;
    }
    case TP_OP_VAULT:
      st = s->vault;
      bind_text(st, 1, op->id);
      bind_text(st, 2, op->merchant);
      sqlite3_bind_blob(st, 3, op->data, (int)op->data_len, SQLITE_STATIC);
      sqlite3_bind_int64(st, 4, now);
      if (step_done(s->w, st))
        return -1;
      break;
    }
  }
  for (size_t k = 0; k < nsums; k++)
    if (sums[k].sum != 0) {
      tp_log(TP_LOG_ERROR, "ledger_unbalanced", "{s:s, s:s, s:I}", "txn", sums[k].txn, "currency",
             sums[k].cur, "sum", (json_int_t)sums[k].sum);
      return -1;
    }
  return 0;
}

/* Run a prepared transaction-control statement; -1 (logged) on failure. */
static int tx_step(struct sq *s, sqlite3_stmt *st)
{
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    if ((rc & 0xff) == SQLITE_FULL)
      s->full = true;
    tp_log(TP_LOG_ERROR, "sqlite_error", "{s:s, s:s}", "error", sqlite3_errmsg(s->w), "sql", sqlite3_sql(st));
    if (st == s->tx_commit && (sqlite3_extended_errcode(s->w) == SQLITE_IOERR_FSYNC ||
                               sqlite3_extended_errcode(s->w) == SQLITE_IOERR_DIR_FSYNC)) {
      /* The COMMIT's frames are written, the sync of them failed: SQLite
       * leaves them in the WAL, whole and valid, and the next start's
       * recovery may replay them. Its outcome is not known, and answering
       * "not committed" (503, nothing sent) turned into a payment after a
       * crash (review, session 39). Stopped, as a failed pipelined sync
       * is: the next start recovers from what the disk holds, and a retry
       * with its Idempotency-Key gets that. */
      tp_log(TP_LOG_ERROR, "store_commit_sync_failed_exiting", "{s:s}", "error", sqlite3_errmsg(s->w));
      tp_log_flush();
      _exit(75);
    }
    return -1;
  }
  return 0;
}

static void ckpt_tail(struct sq *s);

/* Write the batch's balance deltas (upserts); -1 if one fails. */
static int bal_flush(struct sq *s)
{
  for (size_t k = 0; k < s->nbal; k++) {
    const struct bal_delta *d = &s->bal[k];
    if (d->delta == 0)
      continue;
    sqlite3_stmt *st = s->balance_add;
    bind_text(st, 1, d->merchant);
    bind_text(st, 2, d->account);
    bind_text(st, 3, d->cur);
    sqlite3_bind_int64(st, 4, d->delta);
    if (step_done(s->w, st))
      return -1;
  }
  s->nbal = 0;
  return 0;
}

/* A change set applied: fold its balance deltas into the batch's (writing
 * the batch's out first if they would not fit). All or nothing: a set whose
 * fold fails is rolled back, so none of its deltas may stay behind. */
static int bal_merge(struct sq *s, const struct bal_set *set)
{
  size_t fresh = 0;
  for (size_t k = 0; k < set->n; k++) {
    const struct bal_delta *d = &set->d[k];
    size_t m;
    for (m = 0; m < s->nbal; m++)
      if (strcmp(s->bal[m].account, d->account) == 0 && strcmp(s->bal[m].merchant, d->merchant) == 0 &&
          strcmp(s->bal[m].cur, d->cur) == 0)
        break;
    int64_t sum;
    if (m == s->nbal)
      fresh++;
    else if (__builtin_add_overflow(s->bal[m].delta, d->delta, &sum))
      return -1;
  }
  if (s->nbal + fresh > BAL_BATCH_MAX && bal_flush(s) != 0)
    return -1;
  for (size_t k = 0; k < set->n; k++) {
    const struct bal_delta *d = &set->d[k];
    if (bal_add(s->bal, &s->nbal, BAL_BATCH_MAX, d->merchant, d->account, d->cur, d->delta) != 0)
      return -1; /* cannot happen after the checks above */
  }
  return 0;
}

/* Roll back the open transaction, if SQLite has not already (a COMMIT that
 * fails with SQLITE_FULL or an I/O error rolls back by itself). */
static void rollback(struct sq *s)
{
  if (!sqlite3_get_autocommit(s->w))
    exec(s->w, "ROLLBACK");
}

/* After a failed step: was it for lack of disk space? The connection keeps
 * the last error until its next call. */
static int failed(struct sq *s)
{
  if ((sqlite3_errcode(s->w) & 0xff) == SQLITE_FULL)
    s->full = true;
  return s->full ? TP_STORE_ERR_FULL : -1;
}

static int apply_batch(struct sq *s, struct tp_cs **sets, size_t n, int *rc);

/* A batch that failed for lack of space says so (TP_STORE_ERR_FULL), in its
 * return and in each set's rc, so clients hear store_full. */
static int sq_apply_batch(void *cls, struct tp_cs **sets, size_t n, int *rc)
{
  struct sq *s = cls;
  s->full = false;
  int brc = apply_batch(s, sets, n, rc);
  if (s->full) {
    for (size_t i = 0; i < n; i++)
      if (rc[i] != 0)
        rc[i] = TP_STORE_ERR_FULL;
    if (brc != 0)
      brc = TP_STORE_ERR_FULL;
  }
  return brc;
}

/* Once ids have run ahead of the clock (tp_ids_ran_ahead), the mark goes
 * into meta in the open transaction: a batch holding such an id commits
 * the mark with it (the mark is set before the id is handed out, and read
 * here after the batch is taken), so a store never holds one without it. */
static int save_ahead(struct sq *s)
{
  s->ahead_pending = false;
  if (s->ahead_saved || !tp_ids_ran_ahead())
    return 0;
  if (exec(s->w, "INSERT OR REPLACE INTO meta(key, value) VALUES('ids_ran_ahead', '1')"))
    return -1; /* the batch fails with it rather than commit without it */
  s->ahead_pending = true;
  return 0;
}

static int apply_batch_tx(struct sq *s, struct tp_cs **sets, size_t n, int *rc);

static int apply_batch(struct sq *s, struct tp_cs **sets, size_t n, int *rc)
{
  int brc = apply_batch_tx(s, sets, n, rc);
  if (brc == 0 && s->ahead_pending)
    s->ahead_saved = true;
  s->ahead_pending = false;
  return brc;
}

static int apply_batch_tx(struct sq *s, struct tp_cs **sets, size_t n, int *rc)
{
  struct bal_set set_bal;
  ckpt_tail(s);
  s->nbal = 0;
  if (tx_step(s, s->tx_begin))
    return -1;
  if (save_ahead(s)) {
    rollback(s);
    return -1;
  }
  /* Optimistic pass without savepoints: a savepoint per change set makes
   * SQLite copy every page a set touches that an earlier set of the batch
   * already dirtied (the shared tail pages of every table and index) into
   * the statement journal. Change sets almost never fail; if one does, the
   * whole batch is rolled back and applied again with a savepoint each, so
   * only the failing set is dropped. */
  size_t ok = 0;
  while (ok < n && (rc[ok] = apply_one(s, sets[ok], &set_bal)) == 0 && (rc[ok] = bal_merge(s, &set_bal)) == 0)
    ok++;
  if (ok < n)
    failed(s);
  if (ok == n) {
    if (bal_flush(s) || tx_step(s, s->tx_commit)) {
      rollback(s);
      return -1;
    }
    return 0;
  }
  rollback(s);
  s->nbal = 0;
  s->ahead_pending = false;
  if (n == 1)
    return 0;
  if (tx_step(s, s->tx_begin))
    return -1;
  if (save_ahead(s)) {
    rollback(s);
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    tx_step(s, s->sp_open);
    rc[i] = apply_one(s, sets[i], &set_bal);
    /* A merge that has to write early does it inside this set's savepoint. */
    if (rc[i] == 0)
      rc[i] = bal_merge(s, &set_bal);
    if (rc[i]) {
      int why = rc[i];
      rc[i] = failed(s);
      if (rc[i] == -1 && why == TP_STORE_ERR_CONFLICT)
        rc[i] = why; /* a compare-and-set that found another value: the caller's to tell */
      tx_step(s, s->sp_rollback);
    }
    tx_step(s, s->sp_release);
  }
  if (bal_flush(s) || tx_step(s, s->tx_commit)) {
    rollback(s);
    return -1;
  }
  return 0;
}

/* ---- checkpoints ------------------------------------------------------------
 * SQLite's automatic checkpoint runs on the committing connection, so it
 * would stall the group-commit writer while it copies thousands of pages.
 * Here the writer's WAL hook only wakes a thread with its own connection,
 * which runs one PASSIVE checkpoint (synchronous=FULL: the WAL is synced
 * before pages are copied, the database after) concurrently with new
 * commits; the writer then copies the few frames committed meanwhile
 * (ckpt_tail), so its next transaction restarts the WAL from its beginning.
 * If that thread falls far behind, the writer checkpoints itself, as SQLite
 * would. A larger WAL between checkpoints copies each hot page (the tail
 * pages every batch rewrites) once for many of its versions: 16,000 frames
 * (~64 MB) cost ~12% less CPU per payment than 4,000 under the bench. */
#define CKPT_PAGES 16000 /* wake the checkpointer at this WAL size ([store] checkpoint_pages) */
#define CKPT_INLINE 4    /* the writer checkpoints itself past this many times that */

static void *ckpt_main(void *arg)
{
  struct sq *s = arg;
  sqlite3 *db = open_conn(s->path, false, NULL);
  if (db && exec(db, "PRAGMA synchronous=FULL")) {
    sqlite3_close(db);
    db = NULL;
  }
  pthread_mutex_lock(&s->ck_mu);
  for (;;) {
    while (!s->ck_due && !s->ck_stop)
      pthread_cond_wait(&s->ck_cv, &s->ck_mu);
    if (s->ck_stop)
      break;
    s->ck_due = false;
    pthread_mutex_unlock(&s->ck_mu);
    if (db)
      sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    pthread_mutex_lock(&s->ck_mu);
    s->ck_running = false;
    atomic_store(&s->ck_tail, true);
  }
  pthread_mutex_unlock(&s->ck_mu);
  sqlite3_close(db);
  return NULL;
}

/* After each commit of the write connection: n frames are in the WAL. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int n)
{
  struct sq *s = arg;
  /* Frames this commit appended (the WAL restarts from 0 after a
   * checkpoint): pages written per commit, the write amplification. */
  tp_metric_inc("turnpike_store_wal_frames_total", NULL, (uint64_t)(n >= s->wal_frames ? n - s->wal_frames : n));
  s->wal_frames = n;
  if (n >= CKPT_INLINE * s->ckpt_pages) {
    sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return SQLITE_OK;
  }
  if (n < s->ckpt_pages)
    return SQLITE_OK;
  pthread_mutex_lock(&s->ck_mu);
  if (!s->ck_started && !s->ck_stop) {
    s->ck_started = pthread_create(&s->ck_thread, NULL, ckpt_main, s) == 0;
    if (s->ck_started)
      pthread_setname_np(s->ck_thread, "tp-checkpoint");
    if (!s->ck_started) {
      pthread_mutex_unlock(&s->ck_mu);
      sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
      return SQLITE_OK;
    }
  }
  /* One pass at a time; the writer copies its tail (ckpt_tail). */
  if (!s->ck_running && !atomic_load(&s->ck_tail)) {
    s->ck_running = true;
    s->ck_due = true;
    pthread_cond_signal(&s->ck_cv);
  }
  pthread_mutex_unlock(&s->ck_mu);
  return SQLITE_OK;
}

static void ckpt_stop(struct sq *s)
{
  pthread_mutex_lock(&s->ck_mu);
  s->ck_stop = true;
  bool started = s->ck_started;
  pthread_cond_signal(&s->ck_cv);
  pthread_mutex_unlock(&s->ck_mu);
  if (started)
    pthread_join(s->ck_thread, NULL);
}

/* Before a batch: a background pass has copied the WAL up to where it
 * started; copy the few frames committed meanwhile here, between two
 * transactions, so the next write transaction restarts the WAL from its
 * beginning (it only does when every frame is in the database). */
static void ckpt_tail(struct sq *s)
{
  if (!atomic_load(&s->ck_tail))
    return;
  atomic_store(&s->ck_tail, false);
  sqlite3_wal_checkpoint_v2(s->w, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

/* ---- reader side ---------------------------------------------------------- */
static void read_failed(sqlite3 *db, const char *what, int rc)
{
  tp_store_read_failed = true;
  tp_log(TP_LOG_ERROR, "store_read_failed", "{s:s, s:i, s:s}", "op", what, "rc", rc, "error", sqlite3_errmsg(db));
}

static char *sq_get(void *cls, enum tp_kind kind, const char *merchant, const char *id)
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return NULL;
  if (!r->get[kind]) {
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT data FROM %s WHERE merchant=?2 AND id=?1", tp_kinds[kind].table);
    r->get[kind] = prep(r->db, sql);
    if (!r->get[kind])
      return NULL;
  }
  sqlite3_stmt *st = r->get[kind];
  bind_text(st, 1, id);
  bind_text(st, 2, merchant);
  char *out = NULL;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    out = column_json(st, 0);
  else if (rc != SQLITE_DONE)
    read_failed(r->db, "get", rc);
  sqlite3_reset(st);
  return out;
}

static int sq_live(void *cls, enum tp_kind kind, const char *merchant, const char *id)
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return -1;
  if (!r->live[kind]) {
    char sql[256];
    /* a deleted customer keeps its stub row, with the deleted column set */
    snprintf(sql, sizeof sql, "SELECT 1 FROM %s WHERE merchant=?2 AND id=?1%s", tp_kinds[kind].table,
             kind == TP_K_CUSTOMER ? " AND deleted IS NULL" : "");
    r->live[kind] = prep(r->db, sql);
    if (!r->live[kind])
      return -1;
  }
  sqlite3_stmt *st = r->live[kind];
  bind_text(st, 1, id);
  bind_text(st, 2, merchant);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

/* A list with a lower created bound also bounds the ids: an id begins with
 * the time it was made (tp_id_new), which is never earlier than its
 * object's created, read in the same function, less this margin. So
 * "created since T" walks the rows from T on, not the whole table. The
 * ids of PaymentMethods begin pm_ or card_ (a customer's card), so no one
 * id orders them all by time; their lists walk on. */
#define LIST_ID_FLOOR_MARGIN_S 5

/* An upper created bound bounds the ids too while they have never run
 * ahead of the clock (tp_ids_ran_ahead, kept in meta): an id is then at
 * most TP_ID_AHEAD_MS after the moment its object's created was read, so
 * "created up to T" starts its walk at T's ids instead of the newest. */
static bool list_id_ceil(const struct tp_list_query *q, char out[TP_ID_MAX])
{
  if (q->created_lte == INT64_MAX || q->created_lte < 0 || q->kind == TP_K_PAYMENT_METHOD ||
      q->created_lte > TP_ID_TIME_LIMIT_S - 4 * LIST_ID_FLOOR_MARGIN_S) /* an id bound past it wraps */
    return false;
  tp_id_floor(out, tp_kinds[q->kind].prefix,
              (q->created_lte + 1 + LIST_ID_FLOOR_MARGIN_S) * 1000 + TP_ID_AHEAD_MS);
  return true;
}

static bool list_id_floor(const struct tp_list_query *q, char out[TP_ID_MAX])
{
  if (q->created_gte <= 0 || q->created_gte == INT64_MIN || q->kind == TP_K_PAYMENT_METHOD ||
      q->created_gte > TP_ID_TIME_LIMIT_S - 4 * LIST_ID_FLOOR_MARGIN_S)
    return false;
  int64_t s = q->created_gte - LIST_ID_FLOOR_MARGIN_S;
  if (s <= 0)
    return false;
  tp_id_floor(out, tp_kinds[q->kind].prefix, s * 1000);
  return true;
}

/* Bind a list query's values: ?1 merchant, ?2/?3 the columns, ?4/?5 the
 * created range, ?6 the cursor, ?7 the page (limit + 1), ?8-?10 the JSON
 * field filter, ?11 its scan bound, ?13 the id floor of the created
 * range; a statement binds what it names. */
static void list_bind(sqlite3_stmt *st, const struct tp_list_query *q)
{
  char floor[TP_ID_MAX];
  if (list_id_floor(q, floor)) /* copied: floor is gone before the statement runs */
    sqlite3_bind_text(st, 13, floor, -1, SQLITE_TRANSIENT);
  /* bound whenever the statement names it: the mark may be set meanwhile */
  if (sqlite3_bind_parameter_index(st, "?14") > 0 && list_id_ceil(q, floor))
    sqlite3_bind_text(st, 14, floor, -1, SQLITE_TRANSIENT);
  bind_text(st, 1, q->merchant);
  if (q->col_name)
    bind_text(st, 2, q->col_value);
  if (q->col2_name)
    bind_text(st, 3, q->col2_value);
  sqlite3_bind_int64(st, 4, q->created_gte);
  sqlite3_bind_int64(st, 5, q->created_lte);
  if (q->starting_after || q->ending_before)
    bind_text(st, 6, q->starting_after ? q->starting_after : q->ending_before);
  sqlite3_bind_int(st, 7, q->limit + 1);
  if (q->id_min)
    bind_text(st, 15, q->id_min);
  if (q->id_max)
    bind_text(st, 16, q->id_max);
  if (q->field) {
    bind_text(st, 8, q->field);
    bind_text(st, 9, q->field_value);
    if (q->field_default)
      bind_text(st, 10, q->field_default);
    sqlite3_bind_int(st, 11, TP_LIST_FIELD_MAX_SCAN);
  }
}

/* "FROM table WHERE ..." of a list query: its window's rows. False when a
 * column is not one of the kind's (column names come from the kinds
 * table, never from a request). */
static bool list_where(const struct tp_kind_info *ki, const struct tp_list_query *q, char *where, size_t cap)
{
  const char *cols[2] = {q->col_name, q->col2_name};
  /* A filtered column's index, named: without statistics SQLite takes the
   * primary key (merchant, id) for the ORDER BY and tests the column row by
   * row, reading every row of the merchant newer than the matches (a
   * customer's few payments among millions, an event type never sent). */
  int ic = tp_kind_index(q->kind, q->col_name, q->col_value);
  if (ic < 0)
    ic = tp_kind_index(q->kind, q->col2_name, q->col2_value);
  const char *index = ic >= 0 ? ki->index[ic] : NULL;
  int len = index ? snprintf(where, cap, "FROM %s INDEXED BY %s WHERE merchant=?1", ki->table, index)
                  : snprintf(where, cap, "FROM %s WHERE merchant=?1", ki->table);
  /* the partial index's condition, for SQLite to see that it applies */
  if (index && ki->except[ic])
    len += snprintf(where + len, cap - (size_t)len, " AND %s!='%s'", ki->col[ic], ki->except[ic]);
  for (int c = 0; c < 2; c++) {
    if (!cols[c])
      continue;
    if (strcmp(cols[c], ki->col[0]) != 0 && strcmp(cols[c], ki->col[1]) != 0)
      return false;
    len += snprintf(where + len, cap - (size_t)len,
                    strcmp(cols[c], "deleted") == 0 ? " AND %s IS ?%d" : " AND %s=?%d", cols[c], 2 + c);
  }
  len += snprintf(where + len, cap - (size_t)len, " AND created>=?4 AND created<=?5");
  char floor[TP_ID_MAX];
  if (list_id_floor(q, floor))
    len += snprintf(where + len, cap - (size_t)len, " AND id>=?13");
  if (!tp_ids_ran_ahead() && list_id_ceil(q, floor))
    len += snprintf(where + len, cap - (size_t)len, " AND id<?14");
  if (q->id_min)
    len += snprintf(where + len, cap - (size_t)len, " AND id>=?15");
  if (q->id_max)
    len += snprintf(where + len, cap - (size_t)len, " AND id<=?16");
  if (q->starting_after)
    snprintf(where + len, cap - (size_t)len, " AND id<?6");
  else if (q->ending_before)
    snprintf(where + len, cap - (size_t)len, " AND id>?6");
  return true;
}

static json_t *sq_list(void *cls, const struct tp_list_query *q, bool *has_more)
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return NULL;
  const struct tp_kind_info *ki = &tp_kinds[q->kind];
  bool reverse = q->ending_before && !q->starting_after;
  const char *dir = reverse ? "ASC" : "DESC";
  /* A filter on the stored JSON has no index: a page reads at most
   * TP_LIST_FIELD_MAX_SCAN rows (each expanded) once it has found one, and
   * ends there with has_more. A window that finds none is passed over (its
   * last row becomes the cursor) rather than answered as an empty page with
   * has_more, from which no client could go on (stripe-node's auto-paging
   * throws on one): a filter that matches nothing reads the whole list. */
  struct tp_list_query w = *q;
  char cursor[TP_ID_MAX + 1];
  json_t *arr = json_array();
  *has_more = false;
  for (;;) {
    char where[512], sql[900];
    if (!list_where(ki, &w, where, sizeof where)) {
      json_decref(arr);
      return NULL;
    }
    if (w.field)
      snprintf(sql, sizeof sql,
               "SELECT data FROM (SELECT id, data %s ORDER BY id %s LIMIT ?11) "
               "WHERE IFNULL(json_extract(tp_json(data), ?8), ?10) IS ?9 ORDER BY id %s LIMIT ?7",
               where, dir, dir);
    else
      snprintf(sql, sizeof sql, "SELECT data %s ORDER BY id %s LIMIT ?7", where, dir);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK) {
      json_decref(arr);
      return NULL;
    }
    list_bind(st, &w);
    int count = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      if (count == w.limit) {
        *has_more = true;
        break;
      }
      char *text = column_json(st, 0);
      json_t *o = text ? tp_json_loads(text) : NULL;
      free(text);
      if (o) {
        if (reverse)
          json_array_insert_new(arr, 0, o);
        else
          json_array_append_new(arr, o);
      }
      count++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      /* Not the end of the rows: a page that stops here would be short
       * with no sign of it. */
      read_failed(r->db, "list", rc);
      json_decref(arr);
      return NULL;
    }
    if (!w.field || *has_more)
      break;
    /* The window's last row, when it was full: more lie past it. */
    snprintf(sql, sizeof sql, "SELECT id %s ORDER BY id %s LIMIT 1 OFFSET ?12", where, dir);
    bool full = false;
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) == SQLITE_OK) {
      list_bind(st, &w);
      sqlite3_bind_int(st, 12, TP_LIST_FIELD_MAX_SCAN - 1);
      if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0)) {
        full = true;
        snprintf(cursor, sizeof cursor, "%s", (const char *)sqlite3_column_text(st, 0));
      }
      sqlite3_finalize(st);
    }
    if (!full)
      break;
    if (count > 0) {
      *has_more = true; /* the page ends early, on a row the client can go on from */
      break;
    }
    if (reverse)
      w.ending_before = cursor;
    else
      w.starting_after = cursor;
  }
  return arr;
}

static int sq_idem_get(void *cls, const char *merchant, const char *key, struct tp_idem_rec *out)
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return -1;
  if (!r->idem_get && !(r->idem_get = prep(r->db, "SELECT req_hash, status, body, request_id FROM idempotency "
                                                  "WHERE merchant=?1 AND key=?2 AND (created > ?3 OR status = 0)")))
    return -1;
  sqlite3_stmt *st = r->idem_get;
  bind_text(st, 1, merchant);
  bind_text(st, 2, key);
  /* An expired key is as good as unused (a pending mark never expires: it
   * is resolved by recovery). */
  sqlite3_bind_int64(st, 3, tp_now() - s->idem_ttl);
  /* Only a read that ran to its end says "no such key": a busy or failed
   * read is an error, or a retry of a finished payment would run again. */
  int found = -1;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    tp_scopy(out->req_hash, sizeof out->req_hash, (const char *)sqlite3_column_text(st, 0));
    out->status = sqlite3_column_int(st, 1);
    out->body = column_json(st, 2);
    const unsigned char *rid = sqlite3_column_text(st, 3);
    tp_scopy(out->request_id, sizeof out->request_id, rid ? (const char *)rid : "");
    found = 1;
  } else if (rc == SQLITE_DONE) {
    found = 0;
  }
  sqlite3_reset(st);
  return found;
}

static int sq_apikey_lookup(void *cls, const uint8_t hash[32], struct tp_merchant *m, char kind[16])
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return -1;
  if (!r->apikey &&
      !(r->apikey = prep(r->db, "SELECT m.id, m.name, m.fp_key, k.kind FROM api_keys k JOIN merchants m "
                                "ON m.id=k.merchant WHERE k.hash=?1 AND (k.expires IS NULL OR k.expires>?2)")))
    return -1;
  sqlite3_stmt *st = r->apikey;
  sqlite3_bind_blob(st, 1, hash, 32, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, tp_now());
  int found = 0;
  if (sqlite3_step(st) == SQLITE_ROW) {
    tp_scopy(m->id, sizeof m->id, (const char *)sqlite3_column_text(st, 0));
    tp_scopy(m->name, sizeof m->name, (const char *)sqlite3_column_text(st, 1));
    if (sqlite3_column_bytes(st, 2) == 32)
      memcpy(m->fp_key, sqlite3_column_blob(st, 2), 32);
    snprintf(kind, 16, "%s", (const char *)sqlite3_column_text(st, 3));
    found = 1;
  }
  sqlite3_reset(st);
  return found;
}

static int insert_key(sqlite3 *db, const char *merchant, const char *kind, const char *key)
{
  uint8_t h[32];
  tp_sha256(key, strlen(key), h);
  char hint[32];
  size_t kl = strlen(key);
  snprintf(hint, sizeof hint, "%.8s...%s", key, key + (kl > 4 ? kl - 4 : 0));
  sqlite3_stmt *st = prep(db, "INSERT INTO api_keys(hash, merchant, kind, hint, created) VALUES(?1,?2,?3,?4,?5)");
  if (!st)
    return -1;
  sqlite3_bind_blob(st, 1, h, 32, SQLITE_STATIC);
  bind_text(st, 2, merchant);
  bind_text(st, 3, kind);
  bind_text(st, 4, hint);
  sqlite3_bind_int64(st, 5, tp_now());
  int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
  sqlite3_finalize(st);
  return rc;
}

static int sq_merchant_create(void *cls, const char *name, char *id_out, char *sk_out, char *pk_out)
{
  struct sq *s = cls;
  char id[TP_ID_MAX], rnd[100];
  tp_id_new(id, "acct");
  uint8_t fp[32];
  tp_random(fp, sizeof fp);
  tp_random_b62(rnd, 99);
  snprintf(sk_out, 128, "sk_test_%.99s", rnd);
  tp_random_b62(rnd, 99);
  snprintf(pk_out, 128, "pk_test_%.99s", rnd);
  snprintf(id_out, TP_ID_MAX, "%s", id);
  if (exec(s->w, "BEGIN IMMEDIATE"))
    return -1;
  sqlite3_stmt *st =
      prep(s->w, "INSERT INTO merchants(id, name, created, fp_key, fp_key_masked) VALUES(?1,?2,?3,?4,1)");
  int rc = -1;
  if (st) {
    bind_text(st, 1, id);
    bind_text(st, 2, name);
    sqlite3_bind_int64(st, 3, tp_now());
    sqlite3_bind_blob(st, 4, fp, 32, SQLITE_STATIC);
    rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(st);
  }
  if (rc == 0)
    rc = insert_key(s->w, id, "secret", sk_out);
  if (rc == 0)
    rc = insert_key(s->w, id, "publishable", pk_out);
  if (rc == 0 && exec(s->w, "COMMIT") == 0)
    return 0;
  rollback(s);
  return -1;
}

static int sq_merchant_count(void *cls)
{
  struct sq *s = cls;
  sqlite3_stmt *st = prep(s->w, "SELECT count(*) FROM merchants");
  int n = -1;
  if (st && sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  return n;
}

static json_t *sq_balance(void *cls, const char *merchant)
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return NULL;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(r->db, "SELECT account, currency, amount FROM ledger_balances WHERE merchant=?1 "
                                "ORDER BY account, currency", -1, &st, NULL) != SQLITE_OK)
    return NULL;
  bind_text(st, 1, merchant);
  json_t *arr = json_array();
  while (sqlite3_step(st) == SQLITE_ROW)
    json_array_append_new(arr, tp_pack("{s:s, s:s, s:I}", "account", (const char *)sqlite3_column_text(st, 0),
                                       "currency", (const char *)sqlite3_column_text(st, 1), "amount",
                                       (json_int_t)sqlite3_column_int64(st, 2)));
  sqlite3_finalize(st);
  return arr;
}

static int sq_vault_get(void *cls, const char *merchant, const char *token, void **blob, size_t *len)
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return -1;
  if (!r->vault_get && !(r->vault_get = prep(r->db, "SELECT blob FROM vault WHERE token=?1 AND merchant=?2")))
    return -1;
  sqlite3_stmt *st = r->vault_get;
  bind_text(st, 1, token);
  bind_text(st, 2, merchant);
  int found = 0;
  if (sqlite3_step(st) == SQLITE_ROW) {
    *len = (size_t)sqlite3_column_bytes(st, 0);
    *blob = malloc(*len ? *len : 1);
    if (*blob) {
      memcpy(*blob, sqlite3_column_blob(st, 0), *len);
      found = 1;
    }
  }
  sqlite3_reset(st);
  return found;
}

#define ATTEMPT_COLS "id, merchant, payment_intent, processor, idem_ref, kind, state, currency, amount, " \
                     "vault_token, refund, result_code, auth_code, processor_ref, route, client_idem_key, client_req_hash, capture, created, updated, " \
                     "reply_charge, reason, orig_data, reply_opts"

static void row_to_attempt(sqlite3_stmt *st, struct tp_attempt *a)
{
  memset(a, 0, sizeof *a);
#define COL(i, f) snprintf(a->f, sizeof a->f, "%s", sqlite3_column_text(st, i) ? (const char *)sqlite3_column_text(st, i) : "")
  COL(0, id);
  COL(1, merchant);
  COL(2, payment_intent);
  COL(3, processor);
  COL(4, idem_ref);
  COL(5, kind);
  COL(6, state);
  COL(7, currency);
  a->amount = sqlite3_column_int64(st, 8);
  COL(9, vault_token);
  COL(10, refund);
  COL(11, result_code);
  COL(12, auth_code);
  COL(13, processor_ref);
  COL(14, route);
  COL(15, client_idem_key);
  COL(16, client_req_hash);
  COL(21, reason);
  COL(22, orig_data);
  COL(23, reply_opts);
#undef COL
  a->capture = sqlite3_column_int(st, 17);
  a->created = sqlite3_column_int64(st, 18);
  a->updated = sqlite3_column_int64(st, 19);
  a->reply_charge = sqlite3_column_int(st, 20);
}

static int sq_attempts_in_state(void *cls, const char *state, struct tp_attempt **out, size_t *n)
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return -1;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(r->db, "SELECT " ATTEMPT_COLS " FROM attempts WHERE state=?1 ORDER BY id LIMIT 100000",
                         -1, &st, NULL) != SQLITE_OK)
    return -1;
  bind_text(st, 1, state);
  size_t cap = 16, cnt = 0;
  struct tp_attempt *arr = malloc(cap * sizeof *arr);
  while (arr && sqlite3_step(st) == SQLITE_ROW) {
    if (cnt == cap) {
      cap *= 2;
      struct tp_attempt *na = realloc(arr, cap * sizeof *arr);
      if (!na) {
        free(arr);
        arr = NULL;
        break;
      }
      arr = na;
    }
    row_to_attempt(st, &arr[cnt++]);
  }
  sqlite3_finalize(st);
  if (!arr)
    return -1;
  *out = arr;
  *n = cnt;
  return 0;
}

static int sq_attempt_get(void *cls, const char *id, struct tp_attempt *out)
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return -1;
  if (!r->attempt_get && !(r->attempt_get = prep(r->db, "SELECT " ATTEMPT_COLS " FROM attempts WHERE id=?1")))
    return -1;
  sqlite3_stmt *st = r->attempt_get;
  bind_text(st, 1, id);
  int found = 0;
  if (sqlite3_step(st) == SQLITE_ROW) {
    row_to_attempt(st, out);
    found = 1;
  }
  sqlite3_reset(st);
  return found;
}

static int sq_merchant_of(void *cls, const char *pi_id, const char *account, struct tp_merchant *m)
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return -1;
  sqlite3_stmt *st = NULL;
  /* payment_intents is keyed by (merchant, id) and has no index on id
   * (migration 0010): with the account, two primary-key lookups; without
   * it, one per merchant. Two statements, because "?2 IS NULL OR m.id=?2"
   * would make SQLite scan the merchants either way. */
  /* A SetupIntent's page (seti_) looks in its own table the same way. */
  const char *table = strncmp(pi_id, "seti_", 5) == 0 ? "setup_intents" : "payment_intents";
  char sql[300];
  if (account)
    snprintf(sql, sizeof sql,
             "SELECT m.id, m.name, m.fp_key FROM merchants m JOIN %s p ON p.merchant=m.id AND p.id=?1 "
             "WHERE m.id=?2", table);
  else
    snprintf(sql, sizeof sql,
             "SELECT m.id, m.name, m.fp_key FROM merchants m WHERE EXISTS (SELECT 1 FROM %s p WHERE "
             "p.merchant=m.id AND p.id=?1) LIMIT 1", table);
  if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK)
    return -1;
  bind_text(st, 1, pi_id);
  if (account)
    bind_text(st, 2, account);
  int found = 0;
  if (sqlite3_step(st) == SQLITE_ROW) {
    memset(m, 0, sizeof *m);
    tp_scopy(m->id, sizeof m->id, (const char *)sqlite3_column_text(st, 0));
    tp_scopy(m->name, sizeof m->name, (const char *)sqlite3_column_text(st, 1));
    if (sqlite3_column_bytes(st, 2) == 32)
      memcpy(m->fp_key, sqlite3_column_blob(st, 2), 32);
    found = 1;
  }
  sqlite3_finalize(st);
  return found;
}

/* sql prepared on r, from its cache or now (into the cache); NULL on error. */
static sqlite3_stmt *reader_stmt(struct reader *r, const char *sql)
{
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (const char *p = sql; *p; p++)
    h = (h ^ (uint8_t)*p) * 1099511628211ull;
  for (int i = 0; i < READER_QCACHE; i++)
    if (r->q[i].st && r->q[i].hash == h && strcmp(r->q[i].sql, sql) == 0)
      return r->q[i].st;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v3(r->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
    tp_log(TP_LOG_ERROR, "sqlite_prepare", "{s:s, s:s}", "sql", sql, "error", sqlite3_errmsg(r->db));
    return NULL;
  }
  char *copy = strdup(sql);
  if (!copy) {
    sqlite3_finalize(st);
    return NULL;
  }
  unsigned k = r->qnext++ % READER_QCACHE;
  sqlite3_finalize(r->q[k].st);
  free(r->q[k].sql);
  r->q[k].hash = h;
  r->q[k].sql = copy;
  r->q[k].st = st;
  return st;
}

static json_t *sq_query(void *cls, const char *sql, const json_t *args)
{
  struct sq *s = cls;
  struct reader *r = reader(s);
  if (!r)
    return NULL;
  sqlite3_stmt *st = reader_stmt(r, sql);
  if (!st)
    return NULL;
  if (bind_json_args(st, args) != 0) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return NULL;
  }
  json_t *rows = json_array();
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    json_t *row = json_object();
    int nc = sqlite3_column_count(st);
    for (int c = 0; c < nc; c++) {
      json_t *v;
      switch (sqlite3_column_type(st, c)) {
      case SQLITE_INTEGER: v = json_integer(sqlite3_column_int64(st, c)); break;
      case SQLITE_NULL: v = json_null(); break;
      case SQLITE_FLOAT: v = json_integer((json_int_t)sqlite3_column_double(st, c)); break;
      default: v = json_stringn((const char *)sqlite3_column_text(st, c), (size_t)sqlite3_column_bytes(st, c)); break;
      }
      json_object_set_new(row, sqlite3_column_name(st, c), v ? v : json_null());
    }
    json_array_append_new(rows, row);
  }
  /* reset: ends the statement's read transaction and keeps it for next time */
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (rc != SQLITE_DONE) {
    json_decref(rows);
    return NULL;
  }
  return rows;
}

/* ---- pipelined commits ----------------------------------------------------- */
/* (Re)open our descriptor of DB-wal if there is none or the file was
 * replaced, and fsync the directory so the WAL's name is durable too. */
static int wal_fd_ready(struct sq *s)
{
  char wal[4200];
  snprintf(wal, sizeof wal, "%s-wal", s->path);
  struct stat a, b;
  if (stat(wal, &a) != 0)
    return -1;
  if (s->wal_fd >= 0 && fstat(s->wal_fd, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    return 0;
  if (s->wal_fd >= 0)
    close(s->wal_fd);
  s->wal_fd = open(wal, O_RDONLY | O_CLOEXEC);
  if (s->wal_fd < 0)
    return -1;
  return tp_fsync_dir_of(s->path);
}

/* Commits stop waiting for the disk: synchronous=NORMAL still syncs the WAL
 * before and the database after every checkpoint, and sq_sync does the
 * per-commit fdatasync that FULL would do, on the syncer thread. */
static int sq_pipeline(void *cls)
{
  struct sq *s = cls;
  /* Without a sync in every commit a buffered frame could be published
   * before it is written: buffering off first. */
  if (tp_walbuf_vfs() && tp_walbuf_set(s->w, false) != 0)
    return -1;
  if (exec(s->w, "PRAGMA synchronous=NORMAL"))
    return -1;
  return 0;
}

/* fdatasync of the WAL (another descriptor of the same file: the sync is per
 * file) covers every commit whose frames were written before the call. */
static int sq_sync(void *cls)
{
  struct sq *s = cls;
  /* A failure is final: the syncer stops the process (writer.c). */
  if (wal_fd_ready(s) != 0 || fdatasync(s->wal_fd) != 0) {
    tp_log(TP_LOG_ERROR, "store_sync_failed", "{s:s}", "error", strerror(errno));
    return -1;
  }
  return 0;
}

static void sq_close(void *cls)
{
  struct sq *s = cls;
  ckpt_stop(s);
  if (s->wal_fd >= 0)
    close(s->wal_fd);
  for (size_t i = 0; i < s->nsql; i++)
    sqlite3_finalize(s->sql[i]);
  if (s->rkey_ok) {
    reader_free(pthread_getspecific(s->rkey));
    pthread_setspecific(s->rkey, NULL);
  }
  for (int i = 0; i < TP_K__COUNT; i++)
    sqlite3_finalize(s->put[i]);
  sqlite3_finalize(s->ledger);
  sqlite3_finalize(s->balance_add);
  sqlite3_finalize(s->attempt);
  sqlite3_finalize(s->idem);
  sqlite3_finalize(s->vault);
  sqlite3_finalize(s->meta);
  sqlite3_finalize(s->meta_gone);
  sqlite3_finalize(s->tx_begin);
  sqlite3_finalize(s->tx_commit);
  sqlite3_finalize(s->sp_open);
  sqlite3_finalize(s->sp_release);
  sqlite3_finalize(s->sp_rollback);
  sqlite3_close(s->w);
  pthread_mutex_destroy(&s->ck_mu);
  pthread_cond_destroy(&s->ck_cv);
  free(s->bal);
  free(s);
}

static const struct tp_store_ops sqlite_ops = {
  .name = "sqlite",
  .apply_batch = sq_apply_batch,
  .get = sq_get,
  .list = sq_list,
  .idem_get = sq_idem_get,
  .apikey_lookup = sq_apikey_lookup,
  .merchant_create = sq_merchant_create,
  .merchant_count = sq_merchant_count,
  .balance = sq_balance,
  .vault_get = sq_vault_get,
  .attempts_in_state = sq_attempts_in_state,
  .attempt_get = sq_attempt_get,
  .merchant_of = sq_merchant_of,
  .query = sq_query,
  .live = sq_live,
  .pipeline = sq_pipeline,
  .sync = sq_sync,
  .close = sq_close,
};

/* Create path 0600 if it is missing, and take any read or write from
 * others off it and its -wal and -shm files. */
static int private_files(const char *path)
{
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    tp_log(TP_LOG_ERROR, "store_create", "{s:s, s:s}", "path", path, "error", strerror(errno));
    return -1;
  }
  struct stat sb;
  if (fstat(fd, &sb) == 0 && (sb.st_mode & 077))
    (void)fchmod(fd, sb.st_mode & 0700);
  close(fd);
  for (int i = 0; i < 2; i++) {
    char side[sizeof ((struct sq *)0)->path + 8];
    snprintf(side, sizeof side, "%s%s", path, i ? "-shm" : "-wal");
    if (stat(side, &sb) == 0 && (sb.st_mode & 077))
      (void)chmod(side, sb.st_mode & 0700);
  }
  return 0;
}

/* A store about to be made new (no table at all) in a directory that
 * already holds the keys a store's first start writes: the store was there
 * and is gone (its file deleted or emptied, or its WAL, which holds every
 * commit until a checkpoint). Making a new one would answer with an empty
 * store, a new demo merchant, and charge again every retried payment. */
static bool keys_without_store(sqlite3 *db, const char *dir)
{
  sqlite3_stmt *st = prep(db, "SELECT count(*) FROM sqlite_master");
  if (!st)
    return true;
  int rc = sqlite3_step(st);
  bool fresh = rc == SQLITE_ROW && sqlite3_column_int(st, 0) == 0;
  sqlite3_finalize(st);
  if (rc != SQLITE_ROW) {
    tp_log(TP_LOG_ERROR, "store_unreadable", "{s:s}", "error", sqlite3_errstr(rc));
    return true;
  }
  if (!fresh)
    return false;
  static const char *const keys[] = {"vault.key", "kek-v1.key", "audit-signing.pem", "oauth_signing_key.pem"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, keys[i]);
    if (access(p, F_OK) == 0) {
      tp_log(TP_LOG_ERROR, "store_missing", "{s:s, s:s, s:s}", "data", dir, "found", keys[i], "message",
             "the directory holds a store's keys but no store (turnpike.db or its -wal file is gone or empty): "
             "restore the store (turnpike restore), or move the keys away to start a new one");
      return true;
    }
  }
  return false;
}

int tp_store_open_existing(struct tp_store *st, const char *dir, const char *cmd)
{
  char path[1200];
  struct stat sb;
  snprintf(path, sizeof path, "%s/turnpike.db", dir);
  if (stat(path, &sb) != 0 || sb.st_size == 0) {
    fprintf(stderr, "turnpike %s: no store in %s (%s is missing or empty: is --data right?)\n", cmd, dir, path);
    return -1;
  }
  return tp_store_open_sqlite(st, dir);
}

int tp_store_open_sqlite(struct tp_store *st, const char *dir)
{
  if (mkdir(dir, 0700) == 0) {
    /* A new directory's name is durable once its parent is synced. */
    if (tp_fsync_dir_of(dir) != 0)
      tp_log(TP_LOG_WARN, "data_dir_sync", "{s:s, s:s}", "dir", dir, "error", strerror(errno));
  } else if (errno != EEXIST) {
    tp_log(TP_LOG_ERROR, "data_dir", "{s:s, s:s}", "dir", dir, "error", strerror(errno));
    return -1;
  }
  struct sq *s = calloc(1, sizeof *s);
  if (!s)
    return -1;
  s->bal = calloc(BAL_BATCH_MAX, sizeof *s->bal);
  if (!s->bal) {
    free(s);
    return -1;
  }
  snprintf(s->path, sizeof s->path, "%s/turnpike.db", dir);
  s->wal_fd = -1;
  pthread_mutex_init(&s->ck_mu, NULL);
  pthread_cond_init(&s->ck_cv, NULL);
  s->idem_ttl = tp_config_int("idempotency", "ttl_seconds", 86400, 1, 30 * 86400);
  s->ckpt_pages = (int)tp_config_int("store", "checkpoint_pages", CKPT_PAGES, 100, 1000000);
  /* The write connection's WAL appends reach the file in one pwrite per
   * commit (walbuf.h); it commits with synchronous=FULL unless
   * sq_pipeline turns buffering off. */
  const char *vfs = tp_walbuf_vfs();
  if (!vfs)
    tp_log(TP_LOG_WARN, "store_walbuf_unavailable", "{}");
  /* The store is the owner's alone, from its first byte: SQLite makes the
   * -wal and -shm files with the database file's mode, and a file it made
   * itself would have the umask's (0644 in a directory made 0755 by a
   * package). */
  if (private_files(s->path) != 0) {
    free(s->bal);
    free(s);
    return -1;
  }
  s->w = open_conn(s->path, false, vfs);
  if (!s->w) {
    free(s->bal);
    free(s);
    return -1;
  }
  if (keys_without_store(s->w, dir)) {
    sqlite3_close(s->w);
    free(s->bal);
    free(s);
    return -1;
  }
  add_functions(s->w); /* before the migrations: one reads stored objects (0020) */
  /* secure_delete: what a DELETE frees is zeroed (a deleted card's sealed
   * record, with the key files beside the store, opened again from the
   * file's free space). Debian's SQLite has it on by default; said here so
   * a build against another SQLite keeps it. */
  if (exec(s->w, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; "
                 "PRAGMA cache_size=-32000; PRAGMA wal_autocheckpoint=4000; PRAGMA temp_store=MEMORY; "
                 "PRAGMA secure_delete=ON") ||
      migrate(s->w)) {
    sqlite3_close(s->w);
    free(s->bal);
    free(s);
    return -1;
  }
  chmod(s->path, 0600);
  {
    sqlite3_stmt *mark = prep(s->w, "SELECT 1 FROM meta WHERE key='ids_ran_ahead' AND value='1'");
    if (mark && sqlite3_step(mark) == SQLITE_ROW) {
      tp_ids_ran_ahead_set();
      s->ahead_saved = true;
    }
    sqlite3_finalize(mark);
  }
  /* Replaces wal_autocheckpoint (the hook is the same slot). */
  sqlite3_wal_hook(s->w, wal_hook, s);
  for (int k = 0; k < TP_K__COUNT; k++) {
    char sql[512];
    /* An upsert, not INSERT OR REPLACE: a second put of an object (the
     * PaymentIntent's outcome) rewrites its row in place instead of deleting
     * and re-inserting it and every index entry; merchant and id stay, so
     * their indexes are not touched. Objects are keyed by (merchant, id)
     * (migration 0007): one merchant's put never reaches another's row. */
    const char *c0 = k == TP_K_EVENT ? "type" : tp_kinds[k].col[0];
    const char *c1 = k == TP_K_EVENT ? "object_id" : tp_kinds[k].col[1];
    snprintf(sql, sizeof sql, "INSERT INTO %s(id, merchant, created, %s, %s, data) VALUES(?1,?2,?3,?4,?5,?6) "
             "ON CONFLICT(merchant, id) DO UPDATE SET created=excluded.created, %s=excluded.%s, "
             "%s=excluded.%s, data=excluded.data",
             tp_kinds[k].table, c0, c1, c0, c0, c1, c1);
    s->put[k] = prep(s->w, sql);
  }
  s->meta = prep(s->w, "INSERT INTO metadata_index(merchant, kind, id, k, v) VALUES(?1,?2,?3,?4,?5) "
                       "ON CONFLICT(merchant, kind, id, k) DO UPDATE SET v = excluded.v WHERE v <> excluded.v");
  s->meta_gone = prep(s->w, "DELETE FROM metadata_index WHERE merchant = ?1 AND kind = ?2 AND id = ?3 AND "
                            "k NOT IN (SELECT value FROM json_each(?4))");
  s->ledger = prep(s->w, "INSERT INTO ledger_entries(txn_id, seq, merchant, account, currency, amount, created) "
                         "VALUES(?1, ?7, ?2, ?3, ?4, ?5, ?6)");
  s->balance_add = prep(s->w, "INSERT INTO ledger_balances(merchant, account, currency, amount) VALUES(?1,?2,?3,?4) "
                              "ON CONFLICT(merchant, account, currency) DO UPDATE SET amount=amount+excluded.amount");
  /* Upsert for the same reason as puts: an attempt is written when sent and
   * again when settled; its id, idem_ref, merchant and PaymentIntent never
   * change (a mismatch changes nothing and fails the change set). */
  s->attempt = prep(s->w, "INSERT INTO attempts(" ATTEMPT_COLS ") VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,"
                          "?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24) ON CONFLICT(id) DO UPDATE SET "
                          "processor=excluded.processor, kind=excluded.kind, state=excluded.state, "
                          "currency=excluded.currency, amount=excluded.amount, vault_token=excluded.vault_token, "
                          "refund=excluded.refund, result_code=excluded.result_code, auth_code=excluded.auth_code, "
                          "processor_ref=excluded.processor_ref, route=excluded.route, "
                          "client_idem_key=excluded.client_idem_key, client_req_hash=excluded.client_req_hash, "
                          "capture=excluded.capture, created=excluded.created, updated=excluded.updated, "
                          "reply_charge=excluded.reply_charge, reason=excluded.reason, orig_data=excluded.orig_data, "
                          "reply_opts=excluded.reply_opts "
                          "WHERE attempts.merchant=excluded.merchant AND attempts.idem_ref=excluded.idem_ref "
                          "AND attempts.payment_intent IS excluded.payment_intent");
  /* A key's 24 h run from its first use: the final reply keeps the created
   * time of the pending mark; a key reused after it expired starts afresh. */
  char idem_sql[512];
  snprintf(idem_sql, sizeof idem_sql,
           "INSERT INTO idempotency(merchant, key, req_hash, status, body, created, request_id) "
           "VALUES(?1,?2,?3,?4,?5,?6,?7) "
           "ON CONFLICT(merchant, key) DO UPDATE SET req_hash=excluded.req_hash, status=excluded.status, "
           "request_id=COALESCE(excluded.request_id, idempotency.request_id), "
           "body=excluded.body, created=CASE WHEN idempotency.created <= excluded.created - %lld "
           "THEN excluded.created ELSE idempotency.created END",
           (long long)s->idem_ttl);
  s->idem = prep(s->w, idem_sql);
  s->vault = prep(s->w, "INSERT OR REPLACE INTO vault(token, merchant, blob, created) VALUES(?1,?2,?3,?4)");
  s->tx_begin = prep(s->w, "BEGIN IMMEDIATE");
  s->tx_commit = prep(s->w, "COMMIT");
  s->sp_open = prep(s->w, "SAVEPOINT cs");
  s->sp_release = prep(s->w, "RELEASE cs");
  s->sp_rollback = prep(s->w, "ROLLBACK TO cs");
  for (int k = 0; k < TP_K__COUNT; k++)
    if (!s->put[k])
      goto fail;
  if (!s->ledger || !s->balance_add || !s->attempt || !s->idem || !s->vault || !s->meta || !s->meta_gone ||
      !s->tx_begin || !s->tx_commit ||
      !s->sp_open || !s->sp_release || !s->sp_rollback)
    goto fail;
  if (pthread_key_create(&s->rkey, reader_free) != 0)
    goto fail;
  s->rkey_ok = true;
  st->ops = &sqlite_ops;
  st->cls = s;
  return 0;
fail:
  sq_close(s);
  return -1;
}
