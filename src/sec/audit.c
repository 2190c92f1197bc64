/* The tamper-evident audit log (see sec/audit.h).
 *
 * Ordering: an entry is two statements in the change set of the change it
 * records. The INSERT reads the single chain-head row (audit_head) and
 * computes hash = SHA-256(prev_hash || canonical entry) with the SQL function
 * tp_audit_hash; the UPDATE then moves the head to the new entry. The store
 * writer applies change sets one after another on one connection inside its
 * transaction, so head reads and writes are serialized by construction; a
 * change set that fails rolls back its entry and the head together (SAVEPOINT),
 * so the chain never has a gap. tp_audit_hash (and tp_unhex, used by the
 * vault re-wrap) are registered on every SQLite connection this process opens
 * through sqlite3_auto_extension, from a constructor, before any store opens.
 *
 * Canonical entry bytes: the compact JSON array
 * [seq, created, merchant, actor, action, object_id, details] (ASCII-escaped),
 * details being the stored JSON text (keys sorted). */
#include "sec/audit.h"
#include "api/http.h"
#include "cli.h"
#include "config.h"
#include "jpack.h"
#include "log.h"
#include "main/commands.h"
#include "sec/kek.h"
#include "store/sqlite/pcache.h"
#include "store/store.h"
#include "util.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"

static void hex32(const uint8_t *in, char out[65])
{
  static const char d[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = d[in[i] >> 4];
    out[2 * i + 1] = d[in[i] & 15];
  }
  out[64] = '\0';
}

/* The entry hash; NULL-able fields as NULL pointers. 0 or -1. */
static int entry_hash(const char *prev, int64_t seq, int64_t created, const char *merchant, const char *actor,
                      const char *action, const char *object_id, const char *details, char out[65])
{
  json_t *a = tp_pack("[I, I, s?, s, s, s?, s]", (json_int_t)seq, (json_int_t)created, merchant, actor ? actor : "",
                      action ? action : "", object_id, details ? details : "");
  char *canon = a ? json_dumps(a, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
  json_decref(a);
  if (!canon)
    return -1;
  uint8_t md[32];
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  int ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(c, prev, strlen(prev)) == 1 &&
           EVP_DigestUpdate(c, canon, strlen(canon)) == 1 && EVP_DigestFinal_ex(c, md, NULL) == 1;
  EVP_MD_CTX_free(c);
  free(canon);
  if (!ok)
    return -1;
  hex32(md, out);
  return 0;
}

static const char *vtext(sqlite3_value *v)
{
  return sqlite3_value_type(v) == SQLITE_NULL ? NULL : (const char *)sqlite3_value_text(v);
}

/* tp_audit_hash(prev, seq, created, merchant, actor, action, object_id, details) */
static void sql_audit_hash(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
  char out[65];
  if (argc != 8 || !vtext(argv[0]) ||
      entry_hash(vtext(argv[0]), sqlite3_value_int64(argv[1]), sqlite3_value_int64(argv[2]), vtext(argv[3]),
                 vtext(argv[4]), vtext(argv[5]), vtext(argv[6]), vtext(argv[7]), out) != 0) {
    sqlite3_result_error(ctx, "tp_audit_hash failed", -1);
    return;
  }
  sqlite3_result_text(ctx, out, 64, SQLITE_TRANSIENT);
}

/* tp_unhex(text) -> blob (SQLite 3.40 has no unhex()). */
static void sql_unhex(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
  const char *s = argc == 1 ? vtext(argv[0]) : NULL;
  size_t n = s ? strlen(s) : 0;
  if (!s || n % 2 || n > 65536) {
    sqlite3_result_error(ctx, "tp_unhex: bad input", -1);
    return;
  }
  uint8_t *b = sqlite3_malloc64(n / 2 + 1);
  if (!b) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1) {
      sqlite3_free(b);
      sqlite3_result_error(ctx, "tp_unhex: bad input", -1);
      return;
    }
    b[i] = (uint8_t)v;
  }
  sqlite3_result_blob(ctx, b, (int)(n / 2), sqlite3_free);
}

static int register_fns(sqlite3 *db, const char **err, const void *api)
{
  (void)err;
  (void)api;
  int f = SQLITE_UTF8 | SQLITE_DETERMINISTIC;
  if (sqlite3_create_function(db, "tp_audit_hash", 8, f, NULL, sql_audit_hash, NULL, NULL) != SQLITE_OK ||
      sqlite3_create_function(db, "tp_unhex", 1, f, NULL, sql_unhex, NULL, NULL) != SQLITE_OK)
    return SQLITE_ERROR;
  return SQLITE_OK;
}

__attribute__((constructor)) static void audit_register(void)
{
  /* sqlite3_auto_extension initialises SQLite, after which process-wide
   * settings are refused (SQLITE_MISUSE): they go first. SQLite counts every
   * allocation under one process-wide mutex unless told not to
   * (SQLITE_CONFIG_MEMSTATUS); nothing here reads those counts, and the
   * writer, the readers and the checkpointer all allocate. The page cache
   * is pcache1 without its scan of the whole cache at commits that split a
   * page (store/sqlite/pcache.h). */
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  sqlite3_config(SQLITE_CONFIG_LOG, tp_sqlite_log, NULL);
  tp_pcache_install();
  /* void (*)(void) is the documented type of an auto-extension entry. */
  sqlite3_auto_extension((void (*)(void))register_fns);
}

void tp_audit_append(struct tp_cs *cs, const char *merchant, const char *actor, const char *action,
                     const char *object_id, const json_t *details)
{
  char *d = details ? json_dumps(details, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY) : NULL;
  json_t *a = tp_pack("[I, s?, s, s, s?, s]", (json_int_t)tp_now(), merchant, actor ? actor : "system",
                      action ? action : "unknown", object_id, d ? d : "{}");
  free(d);
  if (!a)
    abort();
  /* min_changes 1: without a head row the change set fails rather than
   * committing an unrecorded change. */
  tp_cs_sql(cs,
            "INSERT INTO audit_log(seq, created, merchant, actor, action, object_id, details, prev_hash, hash) "
            "SELECT seq + 1, ?1, ?2, ?3, ?4, ?5, ?6, hash, tp_audit_hash(hash, seq + 1, ?1, ?2, ?3, ?4, ?5, ?6) "
            "FROM audit_head WHERE id = 1",
            a, 1);
  tp_cs_sql(cs,
            "UPDATE audit_head SET seq = seq + 1, hash = (SELECT l.hash FROM audit_log l WHERE l.seq = audit_head.seq + 1) "
            "WHERE id = 1",
            NULL, 1);
  json_decref(a);
}

int tp_audit_cli_commit(struct tp_store *st, struct tp_cs *cs, const char *merchant, const char *action,
                        const char *object_id, json_t *details, const char *cmd)
{
  tp_audit_append(cs, merchant, "cli", action, object_id, details);
  json_decref(details);
  int rc = -1;
  /* A failed COMMIT fails the batch, not the set (its rc stays 0): both
   * are read, or a revoke the disk refused was reported done */
  int brc = st->ops->apply_batch(st->cls, &cs, 1, &rc);
  tp_cs_free(cs);
  st->ops->close(st->cls);
  if (brc != 0 || rc != 0) {
    fprintf(stderr, "turnpike %s: store write failed\n", cmd);
    return 1;
  }
  return 0;
}

/* ---- checkpoints ------------------------------------------------------------ */
static void checkpoint_digest(int64_t seq, const char *hash, uint8_t md[32])
{
  char msg[128];
  int n = snprintf(msg, sizeof msg, "turnpike-audit-checkpoint|%lld|%s", (long long)seq, hash);
  SHA256((const unsigned char *)msg, (size_t)n, md);
}

static int64_t last_ckpt = -1;
static int64_t last_ckpt_ms;

/* ---- the sealed record: DATA/audit-sealed ----------------------------------
 * The last checkpoint this gateway signed ("seq hash\n"), kept outside the
 * store. Someone able to write the store but holding no key could rewrite
 * the chain with recomputed hashes, delete the checkpoints, and let the next
 * stop sign the forged head with the real key; or empty the chain. At start
 * the record must name a checkpoint the store still holds, over the same
 * entry; if not, the chain is tainted: logged (audit_chain_tampered) and
 * never signed over, so `audit verify --sealed` keeps failing. Written
 * (temporary file, fsync, rename) once a checkpoint has committed. */
#define SEALED_FILE "audit-sealed"
static bool tainted;
/* The last checkpoint this process signed, or found sealed at start: each
 * new one is signed only over a chain that still holds it and links on
 * from it (a chain rewritten while the gateway runs was signed by the next
 * checkpoint, then made the record). Written on the completion thread once
 * a checkpoint commits, read by the kek thread. */
static pthread_mutex_t anchor_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t anchor_seq;
static char anchor_hash[65];

static void anchor_set(int64_t seq, const char *hash)
{
  pthread_mutex_lock(&anchor_mu);
  anchor_seq = seq;
  tp_scopy(anchor_hash, sizeof anchor_hash, hash);
  pthread_mutex_unlock(&anchor_mu);
}

/* 1 read, 0 absent, -1 unreadable or malformed. */
static int sealed_read(const char *dir, int64_t *seq, char hash[65])
{
  char path[1200], buf[160];
  snprintf(path, sizeof path, "%s/" SEALED_FILE, dir);
  FILE *f = fopen(path, "r");
  if (!f)
    return errno == ENOENT ? 0 : -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  long long sq;
  char h[65];
  if (sscanf(buf, "%lld %64[0-9a-f]", &sq, h) != 2 || sq < 1 || strlen(h) != 64)
    return -1;
  *seq = sq;
  memcpy(hash, h, 65);
  return 1;
}

int tp_audit_sealed_set(const char *dir, int64_t seq, const char *hash)
{
  char path[1200], tmp[1210], line[100];
  snprintf(path, sizeof path, "%s/" SEALED_FILE, dir);
  if (seq <= 0) /* no checkpoint: no record */
    return unlink(path) == 0 || errno == ENOENT ? tp_fsync_dir_of(path) : -1;
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int n = snprintf(line, sizeof line, "%lld %.64s\n", (long long)seq, hash);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && write(fd, line, (size_t)n) == n && fsync(fd) == 0;
  if (fd >= 0)
    close(fd);
  ok = ok && rename(tmp, path) == 0 && tp_fsync_dir_of(path) == 0;
  if (!ok)
    tp_log(TP_LOG_ERROR, "audit_sealed_write_failed", "{s:s, s:s}", "file", path, "error", strerror(errno));
  return ok ? 0 : -1;
}

struct sealed_pending {
  int64_t seq;
  char hash[65];
};

static void on_checkpoint_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct sealed_pending *sp = arg;
  if (rc == 0) {
    anchor_set(sp->seq, sp->hash);
    tp_audit_sealed_set(tp_app.data_dir, sp->seq, sp->hash);
  }
  free(sp);
}

/* Whether the store still holds the checkpoint at seq over hash. */
static bool store_has_checkpoint(struct tp_store *st, int64_t seq, const char *hash)
{
  json_t *a = tp_pack("[I, s]", (json_int_t)seq, hash);
  json_t *r = st->ops->query(st->cls,
                             "SELECT 1 AS ok FROM audit_checkpoints c JOIN audit_log l ON l.seq = c.seq "
                             "AND l.hash = c.hash WHERE c.seq = ?1 AND c.hash = ?2",
                             a);
  json_decref(a);
  bool ok = r && json_array_size(r) == 1;
  json_decref(r);
  return ok;
}

void tp_audit_start_check(struct tp_store *st, const char *dir)
{
  int64_t seq = 0;
  char hash[65];
  int got = sealed_read(dir, &seq, hash);
  if (got == 0) {
    /* a new store, or one from before the record: made at the next
     * checkpoint; the store's last checkpoint is the anchor till then */
    json_t *r = st->ops->query(st->cls, "SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1", NULL);
    json_t *row = json_array_get(r, 0);
    if (row && json_is_string(json_object_get(row, "hash")))
      anchor_set(json_integer_value(json_object_get(row, "seq")), json_string_value(json_object_get(row, "hash")));
    json_decref(r);
    return;
  }
  if (got > 0 && store_has_checkpoint(st, seq, hash)) {
    anchor_set(seq, hash);
    return;
  }
  tainted = true;
  tp_log(TP_LOG_ERROR, "audit_chain_tampered", "{s:s, s:I, s:s}", "file", SEALED_FILE, "sealed_seq",
         (json_int_t)seq, "message",
         got < 0 ? "the record of the last signed audit checkpoint is unreadable: no checkpoint is signed until an "
                   "operator has checked the chain (turnpike audit verify) and removed the record"
                 : "the store no longer holds the audit checkpoint this gateway last signed (the chain was "
                   "rewritten, emptied or replaced): no checkpoint is signed over it; check the store, then "
                   "restore it or remove the record");
}

/* Whether the chain up to seq still holds the anchor (the entry and its
 * checkpoint) and links on from it, entry by entry, with none missing. */
static bool chain_continues(int64_t seq)
{
  pthread_mutex_lock(&anchor_mu);
  int64_t aseq = anchor_seq;
  char ahash[65];
  tp_scopy(ahash, sizeof ahash, anchor_hash);
  pthread_mutex_unlock(&anchor_mu);
  if (aseq <= 0)
    return true; /* nothing signed yet to hold on to */
  if (seq < aseq || !store_has_checkpoint(&tp_app.store, aseq, ahash))
    return false;
  json_t *a = tp_pack("[I, I]", (json_int_t)aseq, (json_int_t)seq);
  json_t *r = tp_store_query(&tp_app.store,
                             "SELECT count(*) AS n, coalesce(sum(b.prev_hash <> a.hash), 0) AS bad FROM audit_log a "
                             "JOIN audit_log b ON b.seq = a.seq + 1 WHERE a.seq >= ?1 AND a.seq < ?2",
                             a);
  json_decref(a);
  json_t *row = json_array_get(r, 0);
  bool ok = row && json_integer_value(json_object_get(row, "n")) == seq - aseq &&
            json_integer_value(json_object_get(row, "bad")) == 0;
  json_decref(r);
  return ok;
}

static void checkpoint(bool force)
{
  struct tp_kek_provider *p = tp_kek();
  if (!p)
    return;
  if (tainted) {
    static bool said;
    if (!said)
      tp_log(TP_LOG_ERROR, "audit_checkpoint_refused", "{s:s}", "reason", "audit_chain_tampered at start");
    said = true;
    return;
  }
  if (last_ckpt < 0) {
    json_t *r = tp_store_query(&tp_app.store, "SELECT coalesce(max(seq), 0) AS s FROM audit_checkpoints", NULL);
    if (!r)
      return;
    last_ckpt = json_integer_value(json_object_get(json_array_get(r, 0), "s"));
    json_decref(r);
    last_ckpt_ms = tp_mono_ms();
    /* The first tick of a process signs the head (its start's entries):
     * every store that has served has a checkpoint, so a copy with none
     * (a chain rewritten whole) is told apart (restore refuses it). */
    force = true;
  }
  int64_t every_ms = tp_config_int("audit", "checkpoint_seconds", 60, 1, 86400) * 1000;
  int64_t every_n = tp_config_int("audit", "checkpoint_entries", 1000, 1, 10000000);
  json_t *r = tp_store_query(&tp_app.store, "SELECT seq, hash FROM audit_head WHERE id = 1", NULL);
  json_t *row = json_array_get(r, 0);
  int64_t seq = json_integer_value(json_object_get(row, "seq"));
  const char *hash = json_string_value(json_object_get(row, "hash"));
  if (!hash || seq <= last_ckpt ||
      (!force && tp_mono_ms() - last_ckpt_ms < every_ms && seq - last_ckpt < every_n)) {
    json_decref(r);
    return;
  }
  uint8_t md[32], sig[160];
  size_t sl = sizeof sig;
  char pem[1024], sighex[2 * sizeof sig + 1];
  if (strlen(hash) != 64 || p->pubkey_pem(p->cls, pem, sizeof pem) != 0) {
    tp_log(TP_LOG_WARN, "audit_checkpoint_skipped", "{s:s}", "reason", "the signing key's public half is unreadable");
    json_decref(r);
    return;
  }
  if (!chain_continues(seq)) {
    tainted = true;
    tp_log(TP_LOG_ERROR, "audit_chain_tampered", "{s:s, s:I, s:s}", "when", "running", "head_seq", (json_int_t)seq,
           "message", "the audit chain no longer holds the checkpoint this gateway last signed, or does not link on "
                      "from it: it was rewritten while the gateway ran; no checkpoint is signed over it");
    json_decref(r);
    return;
  }
  checkpoint_digest(seq, hash, md);
  if (p->sign(p->cls, md, sig, &sl) != 0) {
    tp_log(TP_LOG_ERROR, "audit_checkpoint_sign_failed", NULL);
    json_decref(r);
    return;
  }
  for (size_t i = 0; i < sl; i++)
    snprintf(sighex + 2 * i, 3, "%02x", sig[i]);
  struct tp_cs *cs = tp_cs_new();
  json_t *a = tp_pack("[I, s, I, s, s]", (json_int_t)seq, hash, (json_int_t)tp_now(), sighex, pem);
  tp_cs_sql(cs,
            "INSERT INTO audit_checkpoints(seq, hash, created, sig, pubkey) SELECT ?1, ?2, ?3, ?4, ?5 "
            "WHERE EXISTS (SELECT 1 FROM audit_log WHERE seq = ?1 AND hash = ?2)",
            a, 0);
  json_decref(a);
  struct sealed_pending *sp = malloc(sizeof *sp);
  if (!sp)
    abort();
  sp->seq = seq;
  tp_scopy(sp->hash, sizeof sp->hash, hash);
  tp_cs_on_done(cs, on_checkpoint_done, sp);
  json_decref(r);
  if (tp_writer_submit(cs) != 0) {
    free(sp);
    tp_cs_free(cs);
    return;
  }
  last_ckpt = seq;
  last_ckpt_ms = tp_mono_ms();
}

void tp_audit_tick(void)
{
  checkpoint(false);
}

void tp_audit_tick_final(void)
{
  checkpoint(true);
}

/* ---- turnpike audit verify ----------------------------------------------------- */
struct vstate {
  int64_t first_bad;
  char reason[200];
};

static void bad(struct vstate *v, int64_t seq, const char *why)
{
  if (v->first_bad == 0 || seq < v->first_bad) {
    v->first_bad = seq;
    tp_scopy(v->reason, sizeof v->reason, why);
  }
}

static const char *ctext(sqlite3_stmt *st, int i)
{
  return sqlite3_column_type(st, i) == SQLITE_NULL ? NULL : (const char *)sqlite3_column_text(st, i);
}

static int verify_sig(const char *pem, int64_t seq, const char *hash, const char *sighex)
{
  BIO *b = BIO_new_mem_buf(pem, -1);
  EVP_PKEY *k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
  BIO_free(b);
  uint8_t sig[160], md[32];
  size_t n = strlen(sighex);
  int ok = k && n % 2 == 0 && n / 2 <= sizeof sig && strlen(hash) == 64;
  for (size_t i = 0; ok && i < n / 2; i++) {
    unsigned x;
    ok = sscanf(sighex + 2 * i, "%2x", &x) == 1;
    sig[i] = (uint8_t)x;
  }
  if (ok) {
    checkpoint_digest(seq, hash, md);
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
    ok = c && EVP_PKEY_verify_init(c) == 1 && EVP_PKEY_verify(c, sig, n / 2, md, 32) == 1;
    EVP_PKEY_CTX_free(c);
  }
  EVP_PKEY_free(k);
  return ok ? 0 : -1;
}

/* The same public key, whatever the PEM text's layout (a trailing newline
 * of an export, line lengths). */
static bool same_pubkey(const char *a_pem, const char *b_pem)
{
  BIO *a = BIO_new_mem_buf(a_pem, -1), *b = BIO_new_mem_buf(b_pem, -1);
  EVP_PKEY *ka = a ? PEM_read_bio_PUBKEY(a, NULL, NULL, NULL) : NULL;
  EVP_PKEY *kb = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
  bool same = ka && kb && EVP_PKEY_eq(ka, kb) == 1;
  EVP_PKEY_free(ka);
  EVP_PKEY_free(kb);
  BIO_free(a);
  BIO_free(b);
  return same;
}

/* Walk the chain, then the head row, then every checkpoint. sealed: the
 * head must be covered by a checkpoint (a stopped gateway signs one as it
 * stops): entries after the last checkpoint can have been rewritten, their
 * hashes recomputed, by anyone able to write the store, without the key. */
#define AUDIT_PINS_MAX 8

/* Whether pem is one of the n pinned keys. */
static bool pinned(const char *const *pins, int n, const char *pem)
{
  for (int i = 0; i < n; i++)
    if (same_pubkey(pins[i], pem))
      return true;
  return false;
}

/* got, sseq, shash: DATA/audit-sealed as sealed_read read it, before the
 * read transaction began (the record is written after its checkpoint
 * commits, so the transaction sees that checkpoint). */
static int verify(sqlite3 *db, int got, int64_t sseq, const char *shash, const char *const *pins, int npins,
                  bool sealed, json_t *summary)
{
  struct vstate v = {0, ""};
  sqlite3_stmt *st = NULL;
  int64_t expect = 1, entries = 0;
  char prev[65] = ZERO_HASH;
  if (sqlite3_prepare_v2(db,
                         "SELECT seq, created, merchant, actor, action, object_id, details, prev_hash, hash "
                         "FROM audit_log ORDER BY seq",
                         -1, &st, NULL) != SQLITE_OK)
    return -1;
  while (sqlite3_step(st) == SQLITE_ROW) {
    int64_t seq = sqlite3_column_int64(st, 0);
    const char *ph = ctext(st, 7), *h = ctext(st, 8);
    char calc[65];
    entries++;
    if (seq != expect) {
      bad(&v, expect, seq > expect ? "entry missing" : "entry out of order");
      break;
    }
    if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || sqlite3_column_type(st, 1) != SQLITE_INTEGER ||
        entry_hash(prev, seq, sqlite3_column_int64(st, 1), ctext(st, 2), ctext(st, 3), ctext(st, 4), ctext(st, 5),
                   ctext(st, 6), calc) != 0) {
      bad(&v, seq, "entry unreadable");
      break;
    }
    if (!ph || strcmp(ph, prev) != 0) {
      bad(&v, seq, "prev_hash does not match the previous entry");
      break;
    }
    if (!h || strcmp(h, calc) != 0) {
      bad(&v, seq, "hash does not match the entry's contents");
      break;
    }
    memcpy(prev, calc, sizeof prev);
    expect++;
  }
  sqlite3_finalize(st);
  int64_t last = expect - 1; /* last entry verified */
  if (!v.first_bad && sqlite3_prepare_v2(db, "SELECT seq, hash FROM audit_head WHERE id = 1", -1, &st, NULL) ==
                          SQLITE_OK) {
    if (sqlite3_step(st) == SQLITE_ROW) {
      int64_t hs = sqlite3_column_int64(st, 0);
      const char *hh = ctext(st, 1);
      if (hs > last)
        bad(&v, last + 1, "entries after this one were removed (chain head is further on)");
      else if (hs != last || !hh || strcmp(hh, prev) != 0)
        bad(&v, hs + 1, "chain head does not match the last entry");
    } else
      bad(&v, 1, "chain head missing");
    sqlite3_finalize(st);
  }
  int64_t ckpts = 0, covered = 0, nkeys = 0;
  char keyfp[65] = "";
  char *last_pem = NULL;
  if (sqlite3_prepare_v2(db, "SELECT seq, hash, sig, pubkey FROM audit_checkpoints ORDER BY seq", -1, &st, NULL) ==
      SQLITE_OK) {
    while (sqlite3_step(st) == SQLITE_ROW) {
      int64_t cs = sqlite3_column_int64(st, 0);
      const char *ch = ctext(st, 1), *sig = ctext(st, 2), *pem = ctext(st, 3);
      ckpts++;
      if (!ch || !sig || !pem || verify_sig(pem, cs, ch, sig) != 0) {
        bad(&v, cs, "checkpoint signature invalid");
        continue;
      }
      if (npins > 0 && !pinned(pins, npins, pem)) {
        bad(&v, cs, "checkpoint signed by another key than --pubkey");
        continue;
      }
      /* Unpinned, a change of key is shown (checkpoint_keys), not refused:
       * a restore without the key file or a move to the HSM changes it. A
       * checkpoint signed by a key of an attacker's own verifies against
       * the key stored beside it: only pinned keys tell them apart. */
      if (!last_pem || (strcmp(last_pem, pem) != 0 && !same_pubkey(last_pem, pem))) {
        nkeys++;
        free(last_pem);
        last_pem = strdup(pem);
      }
      uint8_t md[32];
      SHA256((const unsigned char *)pem, strlen(pem), md);
      hex32(md, keyfp);
      if (cs > last) {
        bad(&v, last + 1, "entries covered by a signed checkpoint were removed");
        continue;
      }
      /* The entry at cs must still carry the signed hash. */
      sqlite3_stmt *q = NULL;
      if (sqlite3_prepare_v2(db, "SELECT hash FROM audit_log WHERE seq = ?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, cs);
        if (sqlite3_step(q) != SQLITE_ROW || !ctext(q, 0) || strcmp(ctext(q, 0), ch) != 0)
          bad(&v, cs, "entry differs from its signed checkpoint");
      }
      sqlite3_finalize(q);
      if (cs > covered)
        covered = cs;
    }
    sqlite3_finalize(st);
  }
  free(last_pem);
  if (sealed && last > covered)
    bad(&v, covered + 1, "entries after the last signed checkpoint (--sealed: a stopped gateway signs its head)");
  /* The last checkpoint the gateway signed, as DATA/audit-sealed names it:
   * still in the store, over the same entry (a chain rewritten with its
   * checkpoints deleted, or emptied, passes every check above). */
  if (got < 0)
    bad(&v, 1, "the record of the last signed checkpoint (" SEALED_FILE ") is unreadable");
  else if (got > 0) {
    bool held = false;
    if (sqlite3_prepare_v2(db,
                           "SELECT 1 FROM audit_checkpoints c JOIN audit_log l ON l.seq = c.seq AND l.hash = c.hash "
                           "WHERE c.seq = ?1 AND c.hash = ?2",
                           -1, &st, NULL) == SQLITE_OK) {
      sqlite3_bind_int64(st, 1, sseq);
      sqlite3_bind_text(st, 2, shash, -1, SQLITE_STATIC);
      held = sqlite3_step(st) == SQLITE_ROW;
      sqlite3_finalize(st);
    }
    if (!held)
      bad(&v, sseq, "the store no longer holds the checkpoint the gateway last signed (" SEALED_FILE ")");
  }
  /* An empty chain in a store that has merchants: every merchant's creation
   * is an entry, so the chain was emptied. */
  if (!v.first_bad && entries == 0 && (sealed || npins > 0) &&
      sqlite3_prepare_v2(db, "SELECT count(*) FROM merchants", -1, &st, NULL) == SQLITE_OK) {
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > 0)
      bad(&v, 1, "the chain is empty but the store has merchants (their creation is recorded)");
    sqlite3_finalize(st);
  }
  json_object_set_new(summary, "sealed_record", got > 0 ? json_integer(sseq) : json_null());
  json_object_set_new(summary, "ok", json_boolean(v.first_bad == 0));
  json_object_set_new(summary, "entries", json_integer(entries));
  json_object_set_new(summary, "checkpoints", json_integer(ckpts));
  json_object_set_new(summary, "unsealed_entries", json_integer(last > covered ? last - covered : 0));
  json_object_set_new(summary, "checkpoint_keys", json_integer(nkeys));
  if (v.first_bad) {
    json_object_set_new(summary, "first_bad_seq", json_integer(v.first_bad));
    json_object_set_new(summary, "reason", json_string(v.reason));
  } else {
    json_object_set_new(summary, "head", json_string(prev));
    json_object_set_new(summary, "checkpoint_key_sha256", keyfp[0] ? json_string(keyfp) : json_null());
  }
  return v.first_bad ? 1 : 0;
}

int tp_audit_verify_copy(const char *db_path, json_t *summary)
{
  sqlite3 *db = NULL;
  int rc = -1;
  if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
      sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK) {
    rc = verify(db, 0, 0, "", NULL, 0, false, summary);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  }
  sqlite3_close(db);
  return rc;
}

static void usage_audit(FILE *f)
{
  fprintf(f, "usage: turnpike audit verify [--data DIR] [--pubkey PEMFILE]... [--sealed]\n\n"
             "--data defaults to $TURNPIKE_SERVER_DATA, else ./var.\n"
             "Walks the audit log's hash chain and checks every signed checkpoint.\n"
             "Exit 0 and a JSON summary when intact; exit 1 naming the first bad entry\n"
             "(first_bad_seq) when an entry was edited, removed or reordered.\n"
             "--pubkey pins a checkpoint key (else the key stored with each checkpoint is used;\n"
             "  checkpoint_keys counts the keys seen). Give it once per key the log was signed\n"
             "  with (a restore without the key file, a move to the HSM change the key).\n"
             "--sealed requires the last entry to be covered by a checkpoint, as a stopped gateway\n"
             "  leaves it: entries after the last checkpoint (unsealed_entries) are protected by\n"
             "  the hash chain only, which anyone who can write the store can recompute.\n");
}

int tp_cmd_audit(int argc, char **argv)
{
  if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
    usage_audit(argc < 1 ? stderr : stdout);
    return argc < 1 ? 2 : 0;
  }
  if (strcmp(argv[0], "verify") != 0) {
    usage_audit(stderr);
    return 2;
  }
  const char *data = tp_cli_default_data(NULL), *pubf[AUDIT_PINS_MAX];
  int npub = 0;
  bool sealed = false;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage_audit(stdout);
      return 0;
    } else if ((v = tp_cli_value(argc, argv, &i, "--data", "audit verify")))
      data = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--pubkey", "audit verify"))) {
      if (npub == AUDIT_PINS_MAX) {
        fprintf(stderr, "turnpike audit verify: at most %d --pubkey\n", AUDIT_PINS_MAX);
        return 2;
      }
      pubf[npub++] = v;
    }
    else if (strcmp(argv[i], "--sealed") == 0)
      sealed = true;
    else {
      fprintf(stderr, "turnpike audit verify: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  static char pin[AUDIT_PINS_MAX][4096];
  const char *pins[AUDIT_PINS_MAX];
  for (int k = 0; k < npub; k++) {
    FILE *f = fopen(pubf[k], "r");
    size_t n = f ? fread(pin[k], 1, sizeof pin[k] - 1, f) : 0;
    if (f)
      fclose(f);
    if (n == 0) {
      fprintf(stderr, "turnpike audit verify: cannot read %s\n", pubf[k]);
      return 2;
    }
    pin[k][n] = '\0';
    pins[k] = pin[k];
  }
  char path[1200];
  snprintf(path, sizeof path, "%s/turnpike.db", data);
  sqlite3 *db = NULL;
  /* A copy on read-only media (the auditor's case): SQLite would need to
   * make the -shm file of a WAL store beside it, and fails. With no WAL
   * there (a stopped gateway checkpoints it away) nothing can change the
   * file, and it is opened immutable, which needs neither. */
  char wal[1210], uri[3700];
  struct stat wst;
  snprintf(wal, sizeof wal, "%s-wal", path);
  bool immutable = access(data, W_OK) != 0 && (stat(wal, &wst) != 0 || wst.st_size == 0);
  if (immutable) {
    /* "file://" and the absolute path (an empty authority: a path of
     * "//x" would otherwise read as the authority x) */
    size_t o = (size_t)snprintf(uri, sizeof uri, path[0] == '/' ? "file://" : "file:");
    for (const char *q = path; *q && o + 4 < sizeof uri; q++)
      o += strchr("%?#", *q) ? (size_t)snprintf(uri + o, sizeof uri - o, "%%%02X", (unsigned char)*q)
                             : (size_t)snprintf(uri + o, sizeof uri - o, "%c", *q);
    snprintf(uri + o, sizeof uri - o, "?immutable=1");
  }
  if (sqlite3_open_v2(immutable ? uri : path, &db, SQLITE_OPEN_READONLY | (immutable ? SQLITE_OPEN_URI : 0), NULL) !=
      SQLITE_OK) {
    fprintf(stderr, "turnpike audit verify: cannot open %s: %s\n", path, db ? sqlite3_errmsg(db) : "no memory");
    sqlite3_close(db);
    return 2;
  }
  sqlite3_busy_timeout(db, 5000);
  json_t *sum = json_object();
  /* One read transaction: the chain, its head and the checkpoints as of one
   * commit. Read statement by statement next to a serving gateway, the head
   * could be read after entries were added past the chain walked, and verify
   * reported removed entries on a store nobody had touched. */
  int rc = -1;
  int64_t sseq = 0;
  char shash[65] = "";
  int got = sealed_read(data, &sseq, shash);
  if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK) {
    rc = verify(db, got, sseq, shash, pins, npub, sealed, sum);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  }
  int err = sqlite3_errcode(db);
  if (rc < 0 && err != SQLITE_OK)
    fprintf(stderr, "turnpike audit verify: %s\n", sqlite3_errmsg(db));
  sqlite3_close(db);
  if (rc < 0) {
    fprintf(stderr, "turnpike audit verify: %s %s\n", err == SQLITE_OK ? "no audit log in" : "cannot read", path);
    json_decref(sum);
    return 2;
  }
  char *s = json_dumps(sum, JSON_COMPACT | JSON_PRESERVE_ORDER);
  printf("%s\n", s);
  if (rc)
    fprintf(stderr, "turnpike audit verify: entry %lld: %s\n",
            (long long)json_integer_value(json_object_get(sum, "first_bad_seq")),
            json_string_value(json_object_get(sum, "reason")));
  free(s);
  json_decref(sum);
  return rc;
}
