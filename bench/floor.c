/* bench/floor.c — the floor under bench/run.sh: the least a durable payment
 * costs with Turnpike's own building blocks on this machine, for the same
 * wrk load (bench/pay.lua), with none of Turnpike's work per payment.
 *
 * What it keeps: libmicrohttpd configured as `turnpike serve` configures it
 * (epoll, a thread per core, suspend/resume), a request body read and kept,
 * and two group commits per payment into SQLite in WAL mode with
 * synchronous=FULL (SQLite set up as Turnpike sets it up: no allocation
 * counting, the page cache of src/store/sqlite/pcache.c), from one writer
 * thread: the write-ahead row (an attempt
 * keyed by the request's Idempotency-Key, as a processor call is recorded
 * before it is sent), then the outcome (the reply body, ~1.4 KB of JSON
 * written once, and the attempt marked done) before the reply is sent.
 *
 * What it leaves out (all of what Turnpike does besides): authentication,
 * parameter parsing and validation, the card, vault and PaymentMethod, the
 * PaymentIntent, charge, events, ledger and idempotency records, routing,
 * compression, metrics and logs. So its throughput is a ceiling for any
 * gateway built this way here, not a target for Turnpike to match.
 *
 * FLOOR_EXTRA_ROWS=N (0) adds N rows of FLOOR_EXTRA_BYTES (300) bytes to
 * each outcome's commit, in a table with a second index (as events, ledger
 * entries and the like would be), to see what the number of rows a payment
 * writes costs by itself.
 *
 * Build: cc -O2 -Isrc -o floor bench/floor.c src/store/sqlite/pcache.c \
 *          -lmicrohttpd -lsqlite3 -lpthread
 * Run:   floor DATA_DIR   (listens on 127.0.0.1, an ephemeral port, written
 *        to DATA_DIR/floor.addr; SIGTERM/SIGINT stops it)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/sqlite/pcache.h"

#define BODY_MAX 4096
#define KEY_MAX 256

struct req {
  struct MHD_Connection *conn;
  char body[BODY_MAX];
  size_t body_len;
  char key[KEY_MAX];
  char id[32];
  char *reply;
  size_t reply_len;
  int phase; /* 0 reading, 1 write-ahead queued, 2 outcome queued, 3 reply ready */
  struct req *next;
};

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct req *head, *tail;
  bool stop;
} Q = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, false};

static struct MHD_Daemon *daemon_;
static int extra_rows, extra_bytes;
static atomic_ulong next_id;
static volatile sig_atomic_t stopping;

/* With Q.mu held. */
static void append_locked(struct req *r)
{
  r->next = NULL;
  if (Q.tail)
    Q.tail->next = r;
  else
    Q.head = r;
  Q.tail = r;
  pthread_cond_signal(&Q.cv);
}

static void enqueue(struct req *r)
{
  pthread_mutex_lock(&Q.mu);
  append_locked(r);
  pthread_mutex_unlock(&Q.mu);
}

static void die(sqlite3 *db, const char *what)
{
  fprintf(stderr, "floor: %s: %s\n", what, db ? sqlite3_errmsg(db) : "");
  exit(1);
}

static void exec(sqlite3 *db, const char *sql)
{
  if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
    die(db, sql);
}

/* The "processor": approves, as the sandbox does for pm_card_visa; the
 * reply is a PaymentIntent-sized JSON object. */
static void decide(struct req *r)
{
  long amount = 0;
  const char *a = strstr(r->body, "amount=");
  if (a)
    amount = strtol(a + 7, NULL, 10);
  char buf[2048];
  int n = snprintf(buf, sizeof buf,
                   "{\"id\":\"%s\",\"object\":\"payment_intent\",\"amount\":%ld,\"amount_capturable\":0,"
                   "\"amount_details\":{\"tip\":{}},\"amount_received\":%ld,\"application\":null,"
                   "\"application_fee_amount\":null,\"automatic_payment_methods\":null,\"canceled_at\":null,"
                   "\"cancellation_reason\":null,\"capture_method\":\"automatic\",\"client_secret\":\"%s_secret_"
                   "0000000000000000000000\",\"confirmation_method\":\"automatic\",\"created\":%ld,\"currency\":"
                   "\"usd\",\"customer\":null,\"description\":null,\"last_payment_error\":null,\"latest_charge\":"
                   "\"ch_%s\",\"livemode\":false,\"metadata\":{},\"next_action\":null,\"on_behalf_of\":null,"
                   "\"payment_method\":\"pm_%s\",\"payment_method_options\":{},\"payment_method_types\":[\"card\"],"
                   "\"processing\":null,\"receipt_email\":null,\"review\":null,\"setup_future_usage\":null,"
                   "\"shipping\":null,\"statement_descriptor\":null,\"statement_descriptor_suffix\":null,\"status\":"
                   "\"succeeded\",\"transfer_data\":null,\"transfer_group\":null,\"idempotency_key\":\"%s\"}",
                   r->id, amount, amount, r->id, (long)time(NULL), r->id, r->id, r->key);
  r->reply = strndup(buf, (size_t)n);
  r->reply_len = (size_t)n;
}

static void *writer_main(void *arg)
{
  sqlite3 *db = arg;
  sqlite3_stmt *ins_att, *ins_pay, *upd_att, *ins_extra;
  char *filler = malloc((size_t)extra_bytes + 1);
  if (!filler)
    return NULL;
  for (int i = 0; i < extra_bytes; i++)
    filler[i] = (char)('a' + i % 26);
  filler[extra_bytes] = '\0';
  if (sqlite3_prepare_v2(db, "INSERT INTO attempts(id, idem_key, state) VALUES(?1, ?2, 'sent')", -1, &ins_att,
                         NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "INSERT INTO payments(id, idem_key, body) VALUES(?1, ?2, ?3)", -1, &ins_pay, NULL) !=
          SQLITE_OK ||
      sqlite3_prepare_v2(db, "UPDATE attempts SET state='done' WHERE id=?1", -1, &upd_att, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "INSERT INTO extra(id, owner, body) VALUES(?1, ?2, ?3)", -1, &ins_extra, NULL) !=
          SQLITE_OK)
    die(db, "prepare");
  for (;;) {
    pthread_mutex_lock(&Q.mu);
    while (!Q.head && !Q.stop)
      pthread_cond_wait(&Q.cv, &Q.mu);
    struct req *batch = Q.head;
    Q.head = Q.tail = NULL;
    bool stop = Q.stop;
    pthread_mutex_unlock(&Q.mu);
    if (!batch && stop)
      break;
    exec(db, "BEGIN");
    for (struct req *r = batch; r; r = r->next) {
      if (r->phase == 1) {
        sqlite3_bind_text(ins_att, 1, r->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_att, 2, r->key, -1, SQLITE_STATIC);
        if (sqlite3_step(ins_att) != SQLITE_DONE)
          die(db, "insert attempt");
        sqlite3_reset(ins_att);
      } else {
        sqlite3_bind_text(ins_pay, 1, r->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_pay, 2, r->key, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_pay, 3, r->reply, (int)r->reply_len, SQLITE_STATIC);
        if (sqlite3_step(ins_pay) != SQLITE_DONE)
          die(db, "insert payment");
        sqlite3_reset(ins_pay);
        sqlite3_bind_text(upd_att, 1, r->id, -1, SQLITE_STATIC);
        if (sqlite3_step(upd_att) != SQLITE_DONE)
          die(db, "update attempt");
        sqlite3_reset(upd_att);
        for (int i = 0; i < extra_rows; i++) {
          char xid[48];
          snprintf(xid, sizeof xid, "%s_%d", r->id, i);
          sqlite3_bind_text(ins_extra, 1, xid, -1, SQLITE_TRANSIENT);
          sqlite3_bind_text(ins_extra, 2, r->id, -1, SQLITE_STATIC);
          sqlite3_bind_text(ins_extra, 3, filler, extra_bytes, SQLITE_STATIC);
          if (sqlite3_step(ins_extra) != SQLITE_DONE)
            die(db, "insert extra");
          sqlite3_reset(ins_extra);
        }
      }
    }
    exec(db, "COMMIT"); /* synchronous=FULL: the WAL is fsynced here */
    for (struct req *r = batch, *next; r; r = next) {
      next = r->next;
      if (r->phase == 1) {
        /* Recorded: "send" it, and the outcome goes to the next commit. */
        decide(r);
        r->phase = 2;
        enqueue(r);
      } else {
        r->phase = 3;
        MHD_resume_connection(r->conn);
      }
    }
  }
  sqlite3_finalize(ins_att);
  sqlite3_finalize(ins_pay);
  sqlite3_finalize(upd_att);
  sqlite3_finalize(ins_extra);
  free(filler);
  return NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **ctx)
{
  (void)cls, (void)url, (void)version;
  struct req *r = *ctx;
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r)
      return MHD_NO;
    r->conn = conn;
    *ctx = r;
    return MHD_YES;
  }
  if (r->phase == 0 && *upload_size) {
    size_t n = *upload_size;
    if (r->body_len + n >= BODY_MAX)
      return MHD_NO;
    memcpy(r->body + r->body_len, upload, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    *upload_size = 0;
    return MHD_YES;
  }
  if (r->phase == 0) {
    if (strcmp(method, "POST") != 0)
      return MHD_NO;
    const char *k = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Idempotency-Key");
    snprintf(r->key, sizeof r->key, "%s", k ? k : "");
    snprintf(r->id, sizeof r->id, "pi_%016lx", atomic_fetch_add(&next_id, 1) + 1);
    r->phase = 1;
    /* Under the queue's lock: once the writer is told to stop, nothing is
     * suspended that it would never resume (MHD aborts on that). */
    pthread_mutex_lock(&Q.mu);
    if (Q.stop) {
      pthread_mutex_unlock(&Q.mu);
      return MHD_NO;
    }
    MHD_suspend_connection(conn);
    append_locked(r);
    pthread_mutex_unlock(&Q.mu);
    return MHD_YES;
  }
  if (r->phase == 3) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(r->reply_len, r->reply, MHD_RESPMEM_MUST_FREE);
    r->reply = NULL;
    MHD_add_response_header(resp, "Content-Type", "application/json");
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return rc;
  }
  return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **ctx, enum MHD_RequestTerminationCode toe)
{
  (void)cls, (void)conn, (void)toe;
  struct req *r = *ctx;
  if (r) {
    free(r->reply);
    free(r);
  }
  *ctx = NULL;
}

static void on_signal(int sig)
{
  (void)sig;
  stopping = 1;
}

int main(int argc, char **argv)
{
  if (argc != 2) {
    fprintf(stderr, "usage: %s DATA_DIR\n", argv[0]);
    return 2;
  }
  /* SQLite's process-wide settings as Turnpike makes them (sec/audit.c):
   * no allocation counting, pcache1 behind store/sqlite/pcache.c. */
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  tp_pcache_install();
  const char *e = getenv("FLOOR_EXTRA_ROWS");
  extra_rows = e ? atoi(e) : 0;
  e = getenv("FLOOR_EXTRA_BYTES");
  extra_bytes = e ? atoi(e) : 300;
  if (extra_rows < 0 || extra_rows > 100 || extra_bytes < 0 || extra_bytes > 100000) {
    fprintf(stderr, "floor: FLOOR_EXTRA_ROWS 0-100, FLOOR_EXTRA_BYTES 0-100000\n");
    return 2;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/floor.db", argv[1]);
  sqlite3 *db;
  if (sqlite3_open(path, &db) != SQLITE_OK)
    die(db, "open");
  exec(db, "PRAGMA journal_mode=WAL");
  exec(db, "PRAGMA synchronous=FULL");
  exec(db, "PRAGMA cache_size=-32000");
  exec(db, "CREATE TABLE IF NOT EXISTS attempts(id TEXT PRIMARY KEY, idem_key TEXT NOT NULL, state TEXT NOT NULL)");
  exec(db, "CREATE TABLE IF NOT EXISTS payments(id TEXT PRIMARY KEY, idem_key TEXT NOT NULL, body TEXT NOT NULL)");
  exec(db, "CREATE TABLE IF NOT EXISTS extra(id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT NOT NULL)");
  exec(db, "CREATE INDEX IF NOT EXISTS extra_owner ON extra(owner)");
  pthread_t writer;
  if (pthread_create(&writer, NULL, writer_main, db) != 0)
    return 1;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  daemon_ = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC,
                             0, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                             MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(cores > 0 ? cores : 1),
                             MHD_OPTION_CONNECTION_LIMIT, 10000u, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                             (size_t)(16 * 1024), MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
  if (!daemon_) {
    fprintf(stderr, "floor: cannot start the HTTP server\n");
    return 1;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
  snprintf(path, sizeof path, "%s/floor.addr", argv[1]);
  FILE *f = fopen(path, "w");
  if (!f)
    return 1;
  fprintf(f, "127.0.0.1:%u\n", (unsigned)di->port);
  fclose(f);
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  while (!stopping)
    pause();
  /* The writer finishes what is queued (resuming those requests) first. */
  pthread_mutex_lock(&Q.mu);
  Q.stop = true;
  pthread_cond_signal(&Q.cv);
  pthread_mutex_unlock(&Q.mu);
  pthread_join(writer, NULL);
  MHD_stop_daemon(daemon_);
  sqlite3_close(db);
  return 0;
}
