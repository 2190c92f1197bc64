/* turnpike backup | restore: an online, consistent copy of the store.
 *
 * backup: `VACUUM INTO` on a read-only connection. SQLite copies every table
 * inside one read transaction, so the copy is the store as of one commit,
 * while the server goes on committing (WAL readers never block the writer).
 * The copy is written to FILE.partial with umask 077, fsynced, checked
 * (integrity_check, the ledger: every transaction sums to zero per currency and
 * the running balances equal the entries), then renamed to FILE and the
 * directory fsynced: FILE either does not exist or is a whole, durable,
 * checked copy. Beside it, FILE.sha256 (sha256sum's format) holds the
 * SHA-256 of FILE's bytes: restore refuses a copy that no longer matches it
 * (a changed value no index or constraint covers passes integrity_check).
 *
 * restore: refuses while a server holds the data directory's lock, checks
 * the copy the same way, then replaces DIR/turnpike.db. A stale
 * turnpike.db-wal next to the restored file would be replayed onto it (a
 * WAL does not know which database it belongs to), so the old WAL and its
 * index are removed, and the directory synced, before the rename. But the
 * old WAL may still hold commits (and the pages of a checkpoint cut short)
 * that the old turnpike.db needs: a power cut between the removal and the
 * rename would leave the old store without them. So the old store is first
 * checkpointed in full and its file synced (wal_checkpoint(TRUNCATE)),
 * which leaves a WAL with nothing in it to lose; only a store SQLite cannot
 * checkpoint (a damaged one, most likely what is being replaced) goes
 * without, and restore says so.
 *
 * Key material (vault.key, kek-vN.key, the PEM keys) is never in the copy:
 * card records are sealed under those keys, and a backup that held both
 * would be plaintext card data for whoever reads it (PCI DSS 3.6/3.7 keep
 * keys apart from the data they protect). Both commands name the key files
 * so the operator copies them on their own path. */
#include "main/commands.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "sec/audit.h"
#include "util.h"

extern const size_t tp_migrations_count;

static int fsync_path(const char *path, bool dir)
{
  int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_CLOEXEC);
  if (fd < 0)
    return -1;
  int rc = dir ? fsync(fd) : fdatasync(fd);
  close(fd);
  return rc;
}

static long long one_int(sqlite3 *db, const char *sql, bool *ok)
{
  sqlite3_stmt *st = NULL;
  long long v = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  else
    *ok = false;
  sqlite3_finalize(st);
  return v;
}

/* Open a store file read-only and describe it; NULL (with *why) when it is
 * not a whole Turnpike store. Sets *balanced. */
static json_t *inspect(const char *path, bool *balanced, const char **why)
{
  *balanced = false;
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
    *why = "cannot be opened";
    sqlite3_close(db);
    return NULL;
  }
  sqlite3_busy_timeout(db, 10000);
  sqlite3_stmt *st = NULL;
  bool good = sqlite3_prepare_v2(db, "PRAGMA integrity_check(1)", -1, &st, NULL) == SQLITE_OK &&
              sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) &&
              strcmp((const char *)sqlite3_column_text(st, 0), "ok") == 0;
  sqlite3_finalize(st);
  if (!good) {
    *why = "fails SQLite's integrity_check (not a database, or damaged)";
    sqlite3_close(db);
    return NULL;
  }
  bool ok = true;
  long long version = one_int(db, "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'schema_version'", &ok);
  if (!ok || version < 1) {
    *why = "is not a Turnpike store (no schema version)";
    sqlite3_close(db);
    return NULL;
  }
  if ((size_t)version > tp_migrations_count) {
    *why = "was written by a newer Turnpike (its schema version is unknown here)";
    sqlite3_close(db);
    return NULL;
  }
  json_t *o = json_pack("{s:I}", "schema_version", (json_int_t)version);
  static const char *const tables[] = {"merchants", "payment_intents", "charges", "refunds", "customers",
                                       "payment_methods", "events", "ledger_entries", "attempts", NULL};
  json_t *counts = json_object();
  for (int i = 0; tables[i]; i++) {
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", tables[i]);
    json_object_set_new(counts, tables[i], json_integer(one_int(db, sql, &ok)));
  }
  json_object_set_new(o, "counts", counts);
  /* Double entry: each transaction balances per currency, and the running
   * balances are the sums of the entries. */
  long long unbalanced = one_int(db,
                                 "SELECT count(*) FROM (SELECT 1 FROM ledger_entries GROUP BY txn_id, currency "
                                 "HAVING sum(amount) != 0)",
                                 &ok);
  long long drift = one_int(db,
                            "SELECT count(*) FROM (SELECT merchant, account, currency, sum(amount) AS s "
                            "FROM ledger_entries GROUP BY 1, 2, 3) e FULL JOIN ledger_balances b "
                            "USING (merchant, account, currency) WHERE coalesce(e.s, 0) != coalesce(b.amount, 0)",
                            &ok);
  if (!ok) {
    *why = "could not be read whole";
    json_decref(o);
    sqlite3_close(db);
    return NULL;
  }
  *balanced = unbalanced == 0 && drift == 0;
  json_object_set_new(o, "ledger_balanced", json_boolean(*balanced));
  json_object_set_new(o, "unbalanced_transactions", json_integer(unbalanced));
  json_object_set_new(o, "balances_off", json_integer(drift));
  sqlite3_close(db);
  return o;
}

/* The files of DIR that hold keys: never in a backup, needed by a restore. */
static int is_key_file(const struct dirent *e)
{
  size_t n = strlen(e->d_name);
  return n > 4 && (strcmp(e->d_name + n - 4, ".key") == 0 || strcmp(e->d_name + n - 4, ".pem") == 0);
}

static json_t *key_files(const char *dir)
{
  json_t *a = json_array();
  struct dirent **names = NULL;
  int n = scandir(dir, &names, is_key_file, alphasort); /* sorted: a stable answer */
  for (int i = 0; i < n; i++) {
    json_array_append_new(a, json_string(names[i]->d_name));
    free(names[i]);
  }
  free(names);
  return a;
}

static void print_json(json_t *o)
{
  char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (s)
    printf("%s\n", s);
  free(s);
  json_decref(o);
}

/* The SHA-256 of a file's bytes, hex; false with errno set when unreadable. */
static bool file_sha256(const char *path, char hex[65])
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
  static unsigned char buf[1 << 16];
  for (ssize_t n; ok && (n = read(fd, buf, sizeof buf)) != 0;) {
    if (n < 0) {
      if (errno == EINTR)
        continue;
      ok = false;
    } else
      ok = EVP_DigestUpdate(ctx, buf, (size_t)n) == 1;
  }
  unsigned char md[32];
  unsigned int mdlen = 0;
  ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
  int e = errno;
  EVP_MD_CTX_free(ctx);
  close(fd);
  errno = e;
  for (int i = 0; ok && i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", md[i]);
  return ok;
}

/* FILE.sha256 beside FILE: "HEX  NAME\n" (sha256sum -c reads it), written
 * to a .partial, synced, renamed, its directory synced. */
static int write_checksum(const char *out, const char *hex)
{
  char side[1300], tmp[1320];
  snprintf(side, sizeof side, "%s.sha256", out);
  snprintf(tmp, sizeof tmp, "%s.partial", side);
  const char *base = strrchr(out, '/') ? strrchr(out, '/') + 1 : out;
  mode_t old = umask(077);
  FILE *f = fopen(tmp, "wx");
  umask(old);
  if (!f)
    return -1;
  int rc = fprintf(f, "%s  %s\n", hex, base) < 0 ? -1 : 0;
  if (fflush(f) != 0 || fsync(fileno(f)) != 0)
    rc = -1;
  if (fclose(f) != 0)
    rc = -1;
  if (rc != 0 || rename(tmp, side) != 0 || tp_fsync_dir_of(side) != 0) {
    unlink(tmp);
    return -1;
  }
  return 0;
}

/* The checksum FILE.sha256 records for FILE: 1 read into hex, 0 no such
 * file, -1 unreadable or not one SHA-256. Takes what sha256sum writes
 * ("HEX  NAME", "HEX *NAME", "\\HEX  NAME" for an escaped name) and its
 * --tag form ("SHA256 (NAME) = HEX"), or the bare digest; a regular file of
 * at most 4 KiB (a FIFO would hang the restore). */
static int read_checksum(const char *from, char hex[65])
{
  char side[1300];
  snprintf(side, sizeof side, "%s.sha256", from);
  int fd = open(side, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  struct stat ls;
  if (fd < 0) /* none at all; a dangling link is one that cannot be read */
    return errno == ENOENT && lstat(side, &ls) != 0 ? 0 : -1;
  struct stat st;
  char buf[4097];
  ssize_t n = -1;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size < (off_t)sizeof buf)
    n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n < 0)
    return -1;
  buf[n] = '\0';
  const char *h = buf;
  if (strncmp(h, "SHA256 (", 8) == 0) {
    const char *eq = strstr(h, ") = ");
    if (!eq)
      return -1;
    h = eq + 4;
  } else if (*h == '\\')
    h++;
  if (strspn(h, "0123456789abcdefABCDEF") != 64 || !strchr(" \r\n", h[64]))
    return -1;
  for (int i = 0; i < 64; i++)
    hex[i] = (char)tolower((unsigned char)h[i]);
  hex[64] = '\0';
  return 1;
}

static void usage_backup(FILE *f)
{
  fprintf(f, "usage: turnpike backup --out FILE [--data DIR]\n\n"
             "Writes a consistent copy of the store in DIR (default $TURNPIKE_SERVER_DATA, else ./var)\n"
             "to FILE while the "
             "server runs: one snapshot, fsynced, checked (SQLite integrity_check, every ledger\n"
             "transaction balanced, running balances equal to the entries), then renamed\n"
             "into place, with FILE.sha256 (its SHA-256, sha256sum's format) beside it, which\n"
             "restore checks. FILE must not exist. Prints a JSON summary; exit 1 if the copy\n"
             "could not be made or its ledger does not balance.\n\n"
             "Keys are not in the copy: back up the files the summary lists under\n"
             "key_files (vault.key, kek-vN.key, *.pem) separately from it.\n");
}

/* A consistent copy of the store at src (its WAL included: SQLite reads
 * through it) written to dst, owner-only; false with the reason in err. */
static bool vacuum_into(const char *src, const char *dst, char *err, size_t errcap)
{
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(src, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
    snprintf(err, errcap, "cannot open %s: %s", src, sqlite3_errmsg(db));
    sqlite3_close(db);
    return false;
  }
  sqlite3_busy_timeout(db, 10000);
  sqlite3_stmt *st = NULL;
  mode_t old = umask(077);
  int rc = sqlite3_prepare_v2(db, "VACUUM INTO ?1", -1, &st, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_bind_text(st, 1, dst, -1, SQLITE_STATIC);
  if (rc == SQLITE_OK)
    rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
  umask(old);
  if (rc != SQLITE_OK)
    snprintf(err, errcap, "copy failed: %s", sqlite3_errmsg(db));
  sqlite3_finalize(st);
  sqlite3_close(db);
  if (rc != SQLITE_OK)
    return false;
  if (fsync_path(dst, false) != 0) {
    snprintf(err, errcap, "cannot sync %s: %s", dst, strerror(errno));
    return false;
  }
  return true;
}

int tp_cmd_backup(int argc, char **argv)
{
  const char *data = tp_cli_default_data(NULL), *out = NULL;
  for (int i = 0; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage_backup(stdout);
      return 0;
    } else if ((v = tp_cli_value(argc, argv, &i, "--data", "backup")))
      data = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--out", "backup")))
      out = v;
    else {
      fprintf(stderr, "turnpike backup: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!out || !*out) {
    usage_backup(stderr);
    return 2;
  }
  char src[1200], tmp[1200];
  snprintf(src, sizeof src, "%s/turnpike.db", data);
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.partial", out) >= sizeof tmp) {
    fprintf(stderr, "turnpike backup: --out is too long\n");
    return 2;
  }
  struct stat sb;
  if (stat(src, &sb) != 0) {
    fprintf(stderr, "turnpike backup: no store at %s\n", src);
    return 1;
  }
  char side[1300];
  snprintf(side, sizeof side, "%s.sha256", out);
  if (lstat(out, &sb) == 0 || lstat(side, &sb) == 0) {
    fprintf(stderr, "turnpike backup: %s exists; a backup never overwrites\n", lstat(out, &sb) == 0 ? out : side);
    return 1;
  }
  {
    /* its directory, said plainly (SQLite said "unable to open database") */
    char dir[1200];
    tp_scopy(dir, sizeof dir, out);
    char *slash = strrchr(dir, '/');
    if (slash)
      *(slash == dir ? slash + 1 : slash) = '\0';
    else
      tp_scopy(dir, sizeof dir, ".");
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(dir, W_OK) != 0) {
      fprintf(stderr, "turnpike backup: cannot write into %s: %s\n", dir,
              stat(dir, &sb) != 0 ? strerror(errno) : !S_ISDIR(sb.st_mode) ? "not a directory" : strerror(errno));
      return 1;
    }
  }
  unlink(tmp); /* left by an interrupted backup: never a whole copy */
  char side_tmp[1320];
  snprintf(side_tmp, sizeof side_tmp, "%s.partial", side);
  unlink(side_tmp); /* the same for its checksum */
  time_t t0 = time(NULL);
  char err[400];
  if (!vacuum_into(src, tmp, err, sizeof err)) {
    fprintf(stderr, "turnpike backup: %s\n", err);
    unlink(tmp);
    return 1;
  }
  bool balanced;
  const char *why = "";
  json_t *sum = inspect(tmp, &balanced, &why);
  if (!sum) {
    fprintf(stderr, "turnpike backup: the copy %s\n", why);
    unlink(tmp);
    return 1;
  }
  char hex[65];
  if (!file_sha256(tmp, hex)) {
    fprintf(stderr, "turnpike backup: cannot read the copy back: %s\n", strerror(errno));
    unlink(tmp);
    json_decref(sum);
    return 1;
  }
  if (rename(tmp, out) != 0 || tp_fsync_dir_of(out) != 0) {
    fprintf(stderr, "turnpike backup: cannot put the copy at %s: %s\n", out, strerror(errno));
    unlink(tmp);
    json_decref(sum);
    return 1;
  }
  /* After the copy: a FILE.sha256 always names a whole FILE. Without it
   * (a stop right here) restore says the bytes went unchecked. */
  if (write_checksum(out, hex) != 0) {
    fprintf(stderr, "turnpike backup: cannot write %s: %s\n", side, strerror(errno));
    json_decref(sum);
    return 1;
  }
  stat(out, &sb);
  json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:s, s:s}", "object", "backup", "path", out, "bytes",
                        (json_int_t)sb.st_size, "created", (json_int_t)t0, "sha256", hex, "checksum_file", side);
  json_object_update(o, sum);
  json_decref(sum);
  json_object_set_new(o, "key_files", key_files(data));
  json_object_set_new(o, "key_files_note",
                      json_string("not in the backup: copy them separately; a restore needs them to read "
                                  "card records"));
  print_json(o);
  if (!balanced) {
    fprintf(stderr, "turnpike backup: written, but the store's ledger does not balance\n");
    return 1;
  }
  return 0;
}

/* Fold the old store's WAL into its database file, synced, so that removing
 * the WAL loses nothing (see the top of the file). 0 when done or when there
 * is no old store; -1, with the reason in why, when SQLite could not. */
static int settle_old(const char *db_path, char *why, size_t cap)
{
  struct stat sb;
  if (stat(db_path, &sb) != 0)
    return 0;
  sqlite3 *db = NULL;
  int busy = -1, log = -1, done = -1;
  if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
      sqlite3_exec(db, "PRAGMA synchronous=FULL", NULL, NULL, NULL) == SQLITE_OK) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "PRAGMA wal_checkpoint(TRUNCATE)", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      busy = sqlite3_column_int(st, 0);
      log = sqlite3_column_int(st, 1);
      done = sqlite3_column_int(st, 2);
    }
    sqlite3_finalize(st);
  }
  /* The message belongs to the connection: copied before it is closed. */
  snprintf(why, cap, "%s", busy > 0 ? "is busy" : db ? sqlite3_errmsg(db) : "cannot be opened");
  if (sqlite3_close(db) != SQLITE_OK)
    busy = -1;
  /* busy 0 and every frame of the log checkpointed (-1, -1 when not in WAL
   * mode: nothing to fold). */
  return busy == 0 && log == done ? 0 : -1;
}

static void usage_restore(FILE *f)
{
  fprintf(f, "usage: turnpike restore --from FILE [--data DIR] [--force] [--accept-unsealed-audit]\n\n"
             "Puts a copy made by `turnpike backup` in place as DIR/turnpike.db (default\n"
             "$TURNPIKE_SERVER_DATA, else ./var). Refuses while a turnpike serve uses DIR, when FILE\n"
             "does not match FILE.sha256 (a file without one is restored with a warning), when FILE is not a whole\n"
             "Turnpike store or its ledger does not balance, when its audit chain is broken\n"
             "or has no signed checkpoint (unless --accept-unsealed-audit), when it was made\n"
             "under another vault.key than DIR's, and when DIR already holds a store unless\n"
             "--force (which replaces it, and drops that store's WAL; DIR must then hold\n"
             "every key file the copy needs). The\n"
             "next `turnpike serve` migrates it if it is older. Prints a JSON summary,\n"
             "with the key files the store needs that DIR lacks.\n\n"
             "A restore goes back to the moment of the backup: what was acknowledged\n"
             "after it is not in the store, and a client retrying such a request with its\n"
             "Idempotency-Key would be served anew. Reconcile with the processors (their\n"
             "journals or settlement files) before the restored store takes traffic.\n");
}


/* Key files the restored store needs: vault.key always, kek-vN.key for
 * the file provider's current KEK version and every version a card record
 * still names (serve's own check, kek.c older_keks_held): not every version
 * ever made (a retired one, destroyed as key retirement wants, refused
 * `restore --force` for good). */
static json_t *missing_keys(const char *db_path, const char *dir)
{
  json_t *need = json_array();
  json_array_append_new(need, json_string("vault.key"));
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT version FROM kek_versions WHERE provider = 'file' AND "
                           "(version = (SELECT max(version) FROM kek_versions) OR printf('%08X', version) IN "
                           "(SELECT DISTINCT hex(substr(blob, 2, 4)) FROM vault WHERE substr(blob, 1, 1) = X'02')) "
                           "ORDER BY version",
                           -1,
                           &st, NULL) == SQLITE_OK)
      while (sqlite3_step(st) == SQLITE_ROW) {
        char name[48];
        snprintf(name, sizeof name, "kek-v%lld.key", (long long)sqlite3_column_int64(st, 0));
        json_array_append_new(need, json_string(name));
      }
    sqlite3_finalize(st);
    /* The audit checkpoints' signing key, kept by the file provider in the
     * data directory: a new one made at start leaves a log whose
     * checkpoints are of two keys (audit verify shows checkpoint_keys). */
    st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT EXISTS(SELECT 1 FROM audit_checkpoints) AND "
                           "EXISTS(SELECT 1 FROM kek_versions WHERE provider = 'file')",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0))
      json_array_append_new(need, json_string("audit-signing.pem"));
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  /* Made anew at start when absent, but then every OAuth access token
   * issued before is refused, and card data a page encrypted with the JWK
   * set it fetched no longer decrypts: listed so they are copied too (the
   * backup names them among its key files). */
  json_array_append_new(need, json_string("oauth_signing_key.pem"));
  json_array_append_new(need, json_string("jwe-rsa.pem"));
  json_array_append_new(need, json_string("jwe-ec.pem"));
  json_t *missing = json_array();
  size_t i;
  json_t *v;
  json_array_foreach(need, i, v)
  {
    char p[1300];
    snprintf(p, sizeof p, "%s/%s", dir, json_string_value(v));
    if (access(p, R_OK) != 0)
      json_array_append(missing, v);
  }
  json_decref(need);
  return missing;
}

/* Whether the copy fits the keys in dir, before it replaces anything: a
 * copy made under another vault.key (another installation) is refused, and
 * so, when a store would be replaced, is one whose vault or KEK files dir
 * lacks (a KEK retired after a rotation). Either used to replace the store
 * and leave one no gateway could start on. */
static bool keys_fit(const char *copy, const char *dir, bool replacing, char *why, size_t cap)
{
  char p[1300];
  snprintf(p, sizeof p, "%s/vault.key", dir);
  uint8_t key[32];
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  ssize_t n = fd >= 0 ? read(fd, key, sizeof key) : -1;
  if (fd >= 0)
    close(fd);
  if (n == (ssize_t)sizeof key) {
    char want[65] = "";
    tp_vault_key_check_value(key, want);
    explicit_bzero(key, sizeof key);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    bool other = false;
    if (sqlite3_open_v2(copy, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'vault_key_check'", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      const char *have = (const char *)sqlite3_column_text(st, 0);
      other = have && strcmp(have, want) != 0;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (other) {
      snprintf(why, cap, "was made under another vault.key than %.300s (another installation's?): its saved cards, "
                         "secrets and fingerprints could not be read; not restored", p);
      return false;
    }
  }
  if (!replacing)
    return true; /* a new directory: the key files are copied in on their own path */
  json_t *missing = missing_keys(copy, dir);
  size_t i;
  json_t *v;
  char list[600] = "";
  json_array_foreach(missing, i, v)
  {
    const char *name = json_string_value(v);
    if (strcmp(name, "audit-signing.pem") == 0 || strcmp(name, "oauth_signing_key.pem") == 0 ||
        strncmp(name, "jwe-", 4) == 0) /* a new one is made (for the audit key, the log shows two keys) */
      continue;
    size_t l = strlen(list);
    snprintf(list + l, sizeof list - l, "%s%s", l ? ", " : "", name);
  }
  json_decref(missing);
  if (!list[0])
    return true;
  snprintf(why, cap, "needs key files %.200s lacks: %.400s; copy them in first (the store it would replace was left as "
                     "it is)", dir, list);
  return false;
}

/* Whether the copy's store has ever been served (its heartbeat, written
 * every second by a running gateway, whose first tick also signs the
 * chain), or holds objects only a gateway makes: one set up with the CLI
 * alone has neither, and its chain has had no chance to be signed. */
static bool holds_payments(const char *copy)
{
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  bool any = true; /* unreadable: as if it did */
  if (sqlite3_open_v2(copy, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
      sqlite3_prepare_v2(db,
                         "SELECT EXISTS(SELECT 1 FROM heartbeat) OR EXISTS(SELECT 1 FROM payment_intents) OR "
                         "EXISTS(SELECT 1 FROM charges) OR EXISTS(SELECT 1 FROM customers) OR "
                         "EXISTS(SELECT 1 FROM payment_methods) OR EXISTS(SELECT 1 FROM webhook_endpoints)",
                         -1, &st, NULL) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    any = sqlite3_column_int(st, 0) != 0;
  sqlite3_finalize(st);
  sqlite3_close(db);
  return any;
}

/* SHA-256 (hex) of the public half of DIR/audit-signing.pem as the file
 * provider writes it into a checkpoint; false when there is none. */
static bool dir_audit_key_sha256(const char *dir, char out[65])
{
  char path[1300];
  snprintf(path, sizeof path, "%s/audit-signing.pem", dir);
  FILE *fp = fopen(path, "r");
  if (!fp)
    return false;
  EVP_PKEY *k = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
  fclose(fp);
  BIO *b = k ? BIO_new(BIO_s_mem()) : NULL;
  bool ok = false;
  char *p;
  long n;
  if (b && PEM_write_bio_PUBKEY(b, k) == 1 && (n = BIO_get_mem_data(b, &p)) > 0) {
    uint8_t md[32];
    SHA256((const unsigned char *)p, (size_t)n, md);
    for (int i = 0; i < 32; i++)
      snprintf(out + 2 * i, 3, "%02x", md[i]);
    ok = true;
  }
  BIO_free(b);
  EVP_PKEY_free(k);
  return ok;
}

/* The restored store's own last checkpoint becomes DIR/audit-sealed (the
 * gateway's record of what it last signed: audit.c). */
static void reseal(const char *db_path, const char *dir)
{
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int64_t seq = 0;
  char hash[65] = "";
  if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
      sqlite3_prepare_v2(db, "SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1", -1, &st, NULL) ==
        SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 1)) {
    seq = sqlite3_column_int64(st, 0);
    snprintf(hash, sizeof hash, "%s", (const char *)sqlite3_column_text(st, 1));
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  if (tp_audit_sealed_set(dir, seq, hash) != 0)
    fprintf(stderr, "turnpike restore: warning: cannot write %s/audit-sealed; the next start reports the audit "
                    "chain as tampered until it is removed\n", dir);
}

int tp_cmd_restore(int argc, char **argv)
{
  const char *data = tp_cli_default_data(NULL), *from = NULL;
  bool force = false, accept_unsealed = false;
  for (int i = 0; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage_restore(stdout);
      return 0;
    } else if ((v = tp_cli_value(argc, argv, &i, "--data", "restore")))
      data = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--from", "restore")))
      from = v;
    else if (strcmp(argv[i], "--force") == 0)
      force = true;
    else if (strcmp(argv[i], "--accept-unsealed-audit") == 0)
      accept_unsealed = true;
    else {
      fprintf(stderr, "turnpike restore: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!from || !*from) {
    usage_restore(stderr);
    return 2;
  }
  /* Held until exit: no server starts on DIR while the file is swapped. */
  long holder = 0;
  int lock = tp_cli_lock_dir(data, "turnpike.lock", true, &holder);
  if (lock < 0) {
    if (lock == -2)
      fprintf(stderr, "turnpike restore: a turnpike serve (pid %ld) uses %s; stop it first\n", holder, data);
    else
      fprintf(stderr, "turnpike restore: cannot lock %s: %s\n", data, strerror(errno));
    return 1;
  }
  char db[1200], wal[1300], shm[1300], tmp[1300];
  snprintf(db, sizeof db, "%s/turnpike.db", data);
  snprintf(wal, sizeof wal, "%s-wal", db);
  snprintf(shm, sizeof shm, "%s-shm", db);
  snprintf(tmp, sizeof tmp, "%s.restoring", db);
  struct stat sb, fb;
  if (stat(db, &sb) == 0 && stat(from, &fb) == 0 && sb.st_dev == fb.st_dev && sb.st_ino == fb.st_ino) {
    fprintf(stderr, "turnpike restore: %s is the store of %s itself\n", from, data);
    close(lock);
    return 1;
  }
  if (stat(db, &sb) == 0 && !force) {
    fprintf(stderr, "turnpike restore: %s already holds a store; --force replaces it\n", data);
    close(lock);
    return 1;
  }
  /* The bytes first: a backup's FILE.sha256 must match it. A file without
   * one (a store copied off a stopped server, a backup whose checksum file
   * was not carried along) is restored with a warning. */
  char want[65], got[65];
  const char *checksum = "absent";
  int crc = read_checksum(from, want);
  if (crc < 0) {
    fprintf(stderr, "turnpike restore: %s.sha256 is not a SHA-256 checksum file; not restored\n", from);
    close(lock);
    return 1;
  }
  if (crc == 1) {
    if (!file_sha256(from, got)) {
      fprintf(stderr, "turnpike restore: cannot read %s: %s\n", from, strerror(errno));
      close(lock);
      return 1;
    }
    if (strcmp(want, got) != 0) {
      fprintf(stderr, "turnpike restore: %s does not match its checksum (%s.sha256): its bytes changed since "
                      "the backup; not restored\n", from, from);
      close(lock);
      return 1;
    }
    checksum = "verified";
  } else
    fprintf(stderr, "turnpike restore: warning: no %s.sha256 beside it: its bytes are not checked against the "
                    "backup's checksum\n", from);
  /* Copied through SQLite, so a source with a WAL (a store copied off a
   * stopped or killed server) comes whole: a file copy took the main file
   * alone and lost what its WAL held. The copy is what is inspected. */
  int rc = 1;
  json_t *sum = NULL;
  char err[400];
  unlink(tmp);
  if (!vacuum_into(from, tmp, err, sizeof err)) {
    fprintf(stderr, "turnpike restore: %s\n", err);
    goto done;
  }
  bool balanced;
  const char *why = "";
  sum = inspect(tmp, &balanced, &why);
  if (!sum) {
    fprintf(stderr, "turnpike restore: %s %s\n", from, why);
    goto done;
  }
  if (!balanced) {
    fprintf(stderr, "turnpike restore: the ledger in %s does not balance; not restored\n", from);
    goto done;
  }
  char kwhy[800];
  if (!keys_fit(tmp, data, stat(db, &sb) == 0, kwhy, sizeof kwhy)) {
    fprintf(stderr, "turnpike restore: %s %s\n", from, kwhy);
    goto done;
  }
  /* Its audit chain must hold (a backup sits on storage less guarded than
   * the data directory): a broken one is refused; one no checkpoint
   * covers in part is said, as `audit verify` would. */
  json_t *audit = json_object();
  int arc = tp_audit_verify_copy(tmp, audit);
  if (arc != 0) {
    fprintf(stderr, "turnpike restore: the audit chain in %s %s%s (entry %lld); not restored\n", from,
            arc < 0 ? "cannot be read" : "is broken: ",
            arc < 0 ? "" : json_string_value(json_object_get(audit, "reason")) ?: "",
            (long long)json_integer_value(json_object_get(audit, "first_bad_seq")));
    json_decref(audit);
    goto done;
  }
  if (json_integer_value(json_object_get(audit, "checkpoints")) == 0 &&
      json_integer_value(json_object_get(audit, "entries")) > 0 && !accept_unsealed && holds_payments(tmp)) {
    /* No signed checkpoint at all: nothing in the copy can be told from a
     * chain rewritten whole (a store that has run a minute, or stopped
     * once, has one). */
    fprintf(stderr, "turnpike restore: the audit chain in %s has %lld entries and no signed checkpoint, so "
                    "none of it can be checked; not restored (--accept-unsealed-audit restores it all the "
                    "same)\n",
            from, (long long)json_integer_value(json_object_get(audit, "entries")));
    json_decref(audit);
    goto done;
  }
  if (json_integer_value(json_object_get(audit, "unsealed_entries")) > 0)
    fprintf(stderr, "turnpike restore: warning: %lld audit entries of %s are under no signed checkpoint (%lld "
                    "checkpoints): check them before the store takes traffic\n",
            (long long)json_integer_value(json_object_get(audit, "unsealed_entries")), from,
            (long long)json_integer_value(json_object_get(audit, "checkpoints")));
  /* Signed by another key than the directory's: a checkpoint verifies
   * against the key stored beside it, so one of a forger's own would pass
   * (`audit verify --pubkey` pins the key). Said, not refused: a move to
   * the HSM signs with another key too. */
  char dkey[65];
  const char *ckey = json_string_value(json_object_get(audit, "checkpoint_key_sha256"));
  if (ckey && dir_audit_key_sha256(data, dkey) && strcmp(ckey, dkey) != 0)
    fprintf(stderr, "turnpike restore: warning: the last audit checkpoint of %s is signed by another key than "
                    "%s/audit-signing.pem: check it with `turnpike audit verify --pubkey`\n",
            from, data);
  json_object_set(sum, "audit", audit);
  json_decref(audit);
  /* The record of the old store's last signed checkpoint goes before the
   * store does: a power cut after the rename left it beside a store that
   * does not hold it (a false tamper alarm at the next start). */
  if (tp_audit_sealed_set(data, 0, NULL) != 0) {
    fprintf(stderr, "turnpike restore: cannot remove %s/audit-sealed: %s\n", data, strerror(errno));
    goto done;
  }
  char unsettled[200];
  if (settle_old(db, unsettled, sizeof unsettled) != 0)
    fprintf(stderr, "turnpike restore: warning: the old store %s %s; its WAL is removed without a checkpoint\n",
            db, unsettled);
  if ((unlink(wal) != 0 && errno != ENOENT) || (unlink(shm) != 0 && errno != ENOENT) ||
      fsync_path(data, true) != 0) {
    fprintf(stderr, "turnpike restore: cannot remove the old store's WAL in %s: %s\n", data, strerror(errno));
    reseal(db, data); /* the old store stays: its record back */
    goto done;
  }
  if (rename(tmp, db) != 0 || fsync_path(data, true) != 0) {
    fprintf(stderr, "turnpike restore: cannot put the copy at %s: %s\n", db, strerror(errno));
    reseal(db, data);
    goto done;
  }
  rc = 0;
  reseal(db, data);
  json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "object", "restore", "from", from, "path", db, "checksum", checksum);
  json_object_update(o, sum);
  json_object_set_new(o, "missing_key_files", missing_keys(db, data));
  print_json(o);
done:
  if (rc)
    unlink(tmp);
  json_decref(sum);
  close(lock);
  return rc;
}
