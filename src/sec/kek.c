/* KEK providers, versions, rotation and the re-wrap job (see sec/kek.h).
 *
 * The `file` provider keeps one 32-byte key per version in DATA/kek-vN.key
 * (0600) and wraps data keys with AES-256-GCM: nonce(12) | wrapped(32) |
 * tag(16). Its audit checkpoint key is DATA/audit-signing.pem (0600). */
#include "sec/kek.h"
#include "api/http.h"
#include "cli.h"
#include "config.h"
#include "jpack.h"
#include "log.h"
#include "main/commands.h"
#include "sec/audit.h"
#include "sec/jwe.h"
#include "sec/vault.h"
#include "store/store.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FILE_CACHE 64

/* ---- file provider ---------------------------------------------------------- */
struct file_kek {
  char dir[1024];
  pthread_mutex_t mu;
  struct {
    uint32_t v;
    uint8_t key[32];
  } cache[FILE_CACHE];
  size_t ncache;
  EVP_PKEY *sign_key;
};

static int file_load(struct file_kek *f, uint32_t v, uint8_t key[32])
{
  pthread_mutex_lock(&f->mu);
  for (size_t i = 0; i < f->ncache; i++)
    if (f->cache[i].v == v) {
      memcpy(key, f->cache[i].key, 32);
      pthread_mutex_unlock(&f->mu);
      return 0;
    }
  char path[1200];
  snprintf(path, sizeof path, "%s/kek-v%u.key", f->dir, v);
  int fd = tp_secret_open(path);
  bool none = fd < 0 && errno == ENOENT;
  ssize_t n = fd >= 0 ? read(fd, key, 32) : -1;
  if (fd >= 0)
    close(fd);
  if (n != 32) {
    pthread_mutex_unlock(&f->mu);
    if (none)
      tp_log(TP_LOG_ERROR, "kek_file_missing", "{s:s}", "path", path);
    else /* there, but short, unreadable or unsafe (logged): not "missing" */
      tp_log(TP_LOG_ERROR, "kek_file_bad", "{s:s, s:s}", "path", path, "error",
             fd >= 0 ? "not 32 bytes" : strerror(errno));
    return -1;
  }
  size_t slot = f->ncache < FILE_CACHE ? f->ncache++ : v % FILE_CACHE;
  f->cache[slot].v = v;
  memcpy(f->cache[slot].key, key, 32);
  pthread_mutex_unlock(&f->mu);
  return 0;
}

static int file_create(void *cls, uint32_t v)
{
  struct file_kek *f = cls;
  char path[1200];
  uint8_t key[32];
  snprintf(path, sizeof path, "%s/kek-v%u.key", f->dir, v);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  struct stat sb;
  bool exists = fd < 0 && errno == EEXIST;
  if (exists) {
    /* one there already must be ours, and no one else's to have written */
    int rfd = tp_secret_open(path);
    if (rfd < 0 || fstat(rfd, &sb) != 0) {
      if (rfd >= 0)
        close(rfd);
      tp_log(TP_LOG_ERROR, "kek_file_create", "{s:s, s:s}", "path", path, "error", "an unsafe file is there");
      return -1;
    }
    close(rfd);
    if (sb.st_size == 32) {
      /* A key of this version is there already: a rotation killed after its
       * file and before its row, or a store restored from an older backup
       * while a newer one (sealed with this key) is kept. Used, as the
       * pkcs11 provider uses a key already on the token: made anew, the
       * newer backup could not be read. */
      tp_log(TP_LOG_INFO, "kek_file_exists", "{s:s}", "path", path);
      return 0;
    }
    /* Shorter: a rotation killed while writing it; no record can be sealed
     * with it. Written again. */
    fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW);
  }
  if (fd < 0) {
    tp_log(TP_LOG_ERROR, "kek_file_create", "{s:s, s:s}", "path", path, "error", strerror(errno));
    return -1;
  }
  tp_random(key, sizeof key);
  /* The directory too: a new file's name is durable only once it is. */
  int ok = write(fd, key, 32) == 32 && fsync(fd) == 0 && tp_fsync_dir_of(path) == 0;
  int e = errno;
  close(fd);
  OPENSSL_cleanse(key, sizeof key);
  if (!ok) {
    /* No record is sealed with a key not yet written whole: gone, so the
     * next start makes it again (a short file was read as a store that
     * lost its rows, store_missing; review, session 39). */
    unlink(path);
    tp_log(TP_LOG_ERROR, "kek_file_create", "{s:s, s:s}", "path", path, "error", strerror(e));
  }
  return ok ? 0 : -1;
}

static int file_wrap(void *cls, uint32_t v, const uint8_t dek[32], const uint8_t *aad, size_t aadlen, uint8_t *out,
                     size_t *outlen)
{
  uint8_t key[32];
  if (*outlen < 60 || file_load(cls, v, key) != 0)
    return -1;
  tp_random(out, 12);
  int rc = tp_vault_gcm(1, key, out, aad, aadlen, dek, 32, out + 12, out + 44);
  OPENSSL_cleanse(key, sizeof key);
  *outlen = 60;
  return rc;
}

static int file_unwrap(void *cls, uint32_t v, const uint8_t *in, size_t inlen, const uint8_t *aad, size_t aadlen,
                       uint8_t dek[32])
{
  uint8_t key[32], tag[16];
  if (inlen != 60 || file_load(cls, v, key) != 0)
    return -1;
  memcpy(tag, in + 44, 16);
  int rc = tp_vault_gcm(0, key, in, aad, aadlen, in + 12, 32, dek, tag);
  OPENSSL_cleanse(key, sizeof key);
  return rc;
}

/* The checkpoint signing key, created on first use. */
static EVP_PKEY *file_sign_key(struct file_kek *f)
{
  pthread_mutex_lock(&f->mu);
  if (!f->sign_key) {
    char path[1200];
    snprintf(path, sizeof path, "%s/audit-signing.pem", f->dir);
    FILE *fp = tp_secret_fopen(path);
    if (fp) {
      f->sign_key = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
      fclose(fp);
    } else if (errno == ENOENT) {
      EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
      int fd = k ? open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : -1;
      FILE *out = fd >= 0 ? fdopen(fd, "w") : NULL;
      if (out && PEM_write_PrivateKey(out, k, NULL, NULL, 0, NULL, NULL) == 1 && fflush(out) == 0 &&
          fsync(fd) == 0 && tp_fsync_dir_of(path) == 0)
        f->sign_key = k;
      else
        EVP_PKEY_free(k);
      if (out)
        fclose(out);
      else if (fd >= 0)
        close(fd);
    }
  }
  EVP_PKEY *k = f->sign_key;
  pthread_mutex_unlock(&f->mu);
  return k;
}

static int file_sign(void *cls, const uint8_t digest[32], uint8_t *sig, size_t *siglen)
{
  EVP_PKEY *k = file_sign_key(cls);
  EVP_PKEY_CTX *c = k ? EVP_PKEY_CTX_new(k, NULL) : NULL;
  int ok = c && EVP_PKEY_sign_init(c) == 1 && EVP_PKEY_sign(c, sig, siglen, digest, 32) == 1;
  EVP_PKEY_CTX_free(c);
  return ok ? 0 : -1;
}

static int file_pubkey(void *cls, char *pem, size_t cap)
{
  EVP_PKEY *k = file_sign_key(cls);
  BIO *b = BIO_new(BIO_s_mem());
  int rc = -1;
  if (k && b && PEM_write_bio_PUBKEY(b, k) == 1) {
    char *p;
    long n = BIO_get_mem_data(b, &p);
    if (n > 0 && (size_t)n < cap) {
      memcpy(pem, p, (size_t)n);
      pem[n] = '\0';
      rc = 0;
    }
  }
  BIO_free(b);
  return rc;
}

static void file_close(void *cls)
{
  struct file_kek *f = cls;
  OPENSSL_cleanse(f->cache, sizeof f->cache);
  EVP_PKEY_free(f->sign_key);
  pthread_mutex_destroy(&f->mu);
  free(f);
}

int tp_kek_open_file(const char *dir, struct tp_kek_provider *p)
{
  struct file_kek *f = calloc(1, sizeof *f);
  if (!f)
    return -1;
  tp_scopy(f->dir, sizeof f->dir, dir);
  pthread_mutex_init(&f->mu, NULL);
  *p = (struct tp_kek_provider){"file", f, file_create, file_wrap, file_unwrap, file_sign, file_pubkey, file_close, NULL};
  return 0;
}

int tp_kek_open(const char *dir, struct tp_kek_provider *p)
{
  const char *kind = tp_config_get("vault", "kek");
  if (!kind || !*kind || strcmp(kind, "file") == 0)
    return tp_kek_open_file(dir, p);
  if (strcmp(kind, "pkcs11") == 0)
    return tp_kek_open_pkcs11(p);
  tp_log(TP_LOG_ERROR, "kek_provider_unknown", "{s:s}", "kek", kind);
  return -1;
}

/* ---- process-wide state --------------------------------------------------- */
static struct tp_kek_provider g_prov;
static struct tp_kek_provider *g_active;
static _Atomic uint32_t g_current;

struct tp_kek_provider *tp_kek(void)
{
  return g_active;
}

uint32_t tp_kek_current(void)
{
  return atomic_load(&g_current);
}

void tp_kek_set_current(uint32_t v)
{
  atomic_store(&g_current, v);
}

void tp_kek_use(struct tp_kek_provider *p, uint32_t current)
{
  g_active = p;
  atomic_store(&g_current, current);
}

/* max(version) from kek_versions; 0 when none, -1 on error. */
static int64_t latest_version(struct tp_store *st)
{
  json_t *rows = tp_store_query(st, "SELECT max(version) AS v FROM kek_versions", NULL);
  if (!rows)
    return -1;
  json_t *v = json_object_get(json_array_get(rows, 0), "v");
  int64_t r = json_is_integer(v) ? json_integer_value(v) : 0;
  json_decref(rows);
  return r;
}

static void cs_add_version(struct tp_cs *cs, uint32_t v, const char *provider, const char *actor)
{
  json_t *a = tp_pack("[I, s, I]", (json_int_t)v, provider, (json_int_t)tp_now());
  /* min_changes 1 on an INSERT of a primary key: two concurrent rotations
   * cannot both claim the same version. */
  tp_cs_sql(cs, "INSERT INTO kek_versions(version, provider, created) VALUES(?1, ?2, ?3)", a, 1);
  json_decref(a);
  char oid[32];
  snprintf(oid, sizeof oid, "kek_v%u", v);
  json_t *d = tp_pack("{s:I, s:s}", "version", (json_int_t)v, "provider", provider);
  tp_audit_append(cs, NULL, actor, v == 1 ? "kek.created" : "kek.rotated", oid, d);
  json_decref(d);
}

static int apply_direct(struct tp_store *st, struct tp_cs *cs)
{
  int rc = -1;
  int brc = st->ops->apply_batch(st->cls, &cs, 1, &rc);
  return brc == 0 && rc == 0 ? 0 : -1;
}

/* SHA-256 of the configuration file, hex; "none" without one: of the
 * bytes parsed when it was read (tp_cli_ini_parse), as a pipe cannot be
 * read again and a file may have changed since. */
static void config_hash(const char *path, char out[65])
{
  snprintf(out, 65, "%s", path && tp_cli_config_sha256[0] ? tp_cli_config_sha256 : "none");
}

static int unhex(const char *s, uint8_t *out, size_t cap, size_t *len);

/* Whether the provider holds the store's KEK version v: a card record of
 * that version opens (the right key, not just a key of that version: a
 * kek-vN.key made anew, or another store's, wraps and unwraps as well);
 * with no such record yet, a data key wrapped and unwrapped. */
static bool kek_holds(struct tp_store *st, uint32_t v)
{
  char sql[200];
  /* A few records: one damaged record alone does not stop the gateway. */
  snprintf(sql, sizeof sql,
           "SELECT merchant, token, hex(blob) AS b FROM vault WHERE substr(blob, 1, 5) = X'02%08X' LIMIT 3", v);
  json_t *rows = tp_store_query(st, sql, NULL);
  bool ok = false;
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row)
  {
    static uint8_t blob[TP_VAULT_MAX_BLOB + 256];
    size_t len = 0;
    char pan[TP_VAULT_MAX_BLOB];
    int mm = 0, yy = 0;
    const char *hex = json_string_value(json_object_get(row, "b"));
    ok = ok || (hex && unhex(hex, blob, sizeof blob, &len) == 0 &&
                tp_vault_open_rec(json_string_value(json_object_get(row, "merchant")),
                                  json_string_value(json_object_get(row, "token")), blob, len, pan, &mm, &yy) == 0);
    OPENSSL_cleanse(pan, sizeof pan);
    OPENSSL_cleanse(blob, sizeof blob);
  }
  if (json_array_size(rows) == 0) {
    uint8_t dek[32], back[32], wrapped[512];
    size_t wlen = sizeof wrapped;
    static const uint8_t aad[] = "turnpike kek probe";
    tp_random(dek, sizeof dek);
    ok = g_prov.wrap(g_prov.cls, v, dek, aad, sizeof aad - 1, wrapped, &wlen) == 0 &&
         g_prov.unwrap(g_prov.cls, v, wrapped, wlen, aad, sizeof aad - 1, back) == 0 &&
         memcmp(dek, back, sizeof dek) == 0;
    OPENSSL_cleanse(dek, sizeof dek);
    OPENSSL_cleanse(back, sizeof back);
  }
  json_decref(rows);
  return ok;
}

/* Every older version a card record still names (a re-wrap not finished,
 * a backup taken during one) must be held as well: with kek-v30.key left
 * out of a restore, the gateway said ready and failed those cards with a
 * 500. One walk of the vault per version found, and one that finds none. */
static bool older_keks_held(struct tp_store *st, uint32_t current)
{
  char seen[1024];
  int n = snprintf(seen, sizeof seen, "X'%08X'", current);
  for (int found = 0; found < 64; found++) {
    char sql[1400];
    snprintf(sql, sizeof sql,
             "SELECT hex(substr(blob, 2, 4)) AS v, token, EXISTS(SELECT 1 FROM kek_versions k WHERE "
             "printf('%%08X', k.version) = hex(substr(blob, 2, 4))) AS known FROM vault "
             "WHERE substr(blob, 1, 1) = X'02' AND substr(blob, 2, 4) NOT IN (%s) LIMIT 1",
             seen);
    json_t *rows = tp_store_query(st, sql, NULL);
    if (!rows)
      return false;
    json_t *row = json_array_get(rows, 0);
    const char *hex = json_string_value(json_object_get(row, "v"));
    unsigned long u = hex ? strtoul(hex, NULL, 16) : 0;
    bool known = json_integer_value(json_object_get(row, "known")) != 0;
    if (hex && !known)
      /* No KEK of that version was ever made: the record is damaged (a
       * flipped bit in its version field), not a key missing. It fails
       * alone when read, as any damaged record does. */
      tp_log(TP_LOG_ERROR, "vault_record_unreadable", "{s:s?, s:I, s:s}", "token",
             json_string_value(json_object_get(row, "token")), "version", (json_int_t)u, "message",
             "a card record names a key-encryption key version this store never had: the record is damaged");
    json_decref(rows);
    if (!hex)
      return true;
    if (known && !kek_holds(st, (uint32_t)u)) {
      tp_log(TP_LOG_ERROR, "kek_missing", "{s:s, s:I, s:s}", "provider", g_prov.name, "version", (json_int_t)u,
             "message", "card records still name an older key-encryption key the provider does not hold (a "
                        "re-wrap was not finished): put its kek-vN.key back, or use the token that holds it");
      return false;
    }
    int w = snprintf(seen + n, sizeof seen - (size_t)n, ", X'%08lX'", u);
    if (w < 0 || (size_t)(n + w) >= sizeof seen)
      return true; /* past 60-odd versions in use: the rest are checked as cards are read */
    n += w;
  }
  return true;
}

static atomic_bool g_unready; /* the provider's last check failed, or its newest version is unusable here */
static int64_t g_unusable_at_start; /* the newest version tp_kek_init found unusable, 0 none */

/* The store's newest version v does not wrap and unwrap here; cards are
 * sealed with sealing_with. */
static void log_unusable(int64_t v, int64_t sealing_with)
{
  tp_log(TP_LOG_ERROR, "kek_version_unusable", "{s:I, s:s, s:I, s:s}", "version", (json_int_t)v, "provider",
         g_prov.name, "sealing_with", (json_int_t)sealing_with, "message",
         "the store's newest KEK version does not wrap and unwrap here: cards are sealed with the previous one; "
         "fix the key (label, file owner) the daemon sees");
}

/* Whether a vault record names version v: 1, 0, or -1 on a store error. */
static int version_has_records(struct tp_store *st, uint32_t v)
{
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT 1 AS x FROM vault WHERE substr(blob, 1, 5) = X'02%08X' LIMIT 1", v);
  json_t *rows = tp_store_query(st, sql, NULL);
  if (!rows)
    return -1;
  int n = json_array_size(rows) > 0;
  json_decref(rows);
  return n;
}

/* The store's newest version v is not held here: the newest version below
 * it that is, when no record names v or anything between (a `kek rotate`
 * this daemon cannot use: another key label, a key file it may not read);
 * 0 when none, -1 on a store error. */
static int64_t usable_below(struct tp_store *st, int64_t v)
{
  for (int64_t w = v; w >= 1; w--) {
    if (w < v && kek_holds(st, (uint32_t)w))
      return w;
    int hr = version_has_records(st, (uint32_t)w);
    if (hr != 0)
      return hr < 0 ? -1 : 0;
  }
  return 0;
}

int tp_kek_init(struct tp_store *st, const char *dir, const char *config_path)
{
  if (tp_kek_open(dir, &g_prov) != 0)
    return -1;
  g_active = &g_prov;
  if (strcmp(g_prov.name, "file") == 0)
    tp_log(TP_LOG_WARN, "vault_file_kek", "{s:s}", "message",
           "card vault key-encryption keys are files in the data dir; set [vault] kek = pkcs11 (HSM) in production");
  int64_t v = latest_version(st);
  if (v < 0)
    return -1;
  if (v > 0) {
    /* The provider must hold the store's current KEK: on another token (a
     * wrong pkcs11_token_label), another provider, or with its key file
     * gone or another, the gateway started, said it was ready and failed
     * every card with a 500. */
    if (!kek_holds(st, (uint32_t)v)) {
      /* A newest version nothing is sealed under yet, which this daemon
       * cannot use, is what the running daemon refuses to switch to
       * (maint_main): start on the version before it, not ready, as it
       * ran (a restart was refused, one deploy from an outage). */
      int64_t u = usable_below(st, v);
      if (u <= 0) {
        tp_log(TP_LOG_ERROR, "kek_missing", "{s:s, s:I, s:s}", "provider", g_prov.name, "version", (json_int_t)v,
               "message", "the key provider does not hold the store's current key-encryption key: check [vault] "
                          "kek, the token label and its PIN, or the kek-vN.key files in the data directory");
        return -1;
      }
      log_unusable(v, u);
      atomic_store(&g_unready, true);
      g_unusable_at_start = v;
      v = u;
    }
    if (!older_keks_held(st, (uint32_t)v))
      return -1;
  }
  if (v == 0 && strcmp(g_prov.name, "file") == 0) {
    /* A store that knows no key version beside a key file of one: not the
     * store the keys came with (its WAL lost after a checkpoint, another
     * store copied in). Starting would seal new cards with that key as if
     * nothing were missing. */
    char p[1200];
    snprintf(p, sizeof p, "%s/kek-v1.key", dir);
    if (access(p, F_OK) == 0) {
      tp_log(TP_LOG_ERROR, "store_missing", "{s:s, s:s}", "found", p, "message",
             "the data directory holds a key-encryption key the store does not know: the store lost what it had "
             "(its -wal file?) or is another one; restore it (turnpike restore), or move the keys away");
      return -1;
    }
  }
  /* The JWE keys once the start is known to go ahead: a start refused for a
   * missing KEK made new ones, and an operator who then copied in only the
   * key the refusal named started with them (card data encrypted to the
   * old ones refused). */
  if (tp_jwe_init(dir) != 0)
    return -1;
  struct tp_cs *cs = tp_cs_new();
  if (v == 0) {
    if (g_prov.create(g_prov.cls, 1) != 0) {
      tp_cs_free(cs);
      return -1;
    }
    cs_add_version(cs, 1, g_prov.name, "system");
    v = 1;
  }
  /* Before this start appends to the chain (and its stop signs the head):
   * is the chain still the one this gateway last signed? */
  tp_audit_start_check(st, dir);
  /* Configuration in force, recorded at every start: a change shows as a
   * new hash in the chain. */
  char h[65];
  config_hash(config_path, h);
  json_t *d = tp_pack("{s:s, s:s, s:s}", "sha256", h, "file", config_path ? config_path : "", "kek", g_prov.name);
  tp_audit_append(cs, NULL, "system", "config.loaded", NULL, d);
  json_decref(d);
  int rc = apply_direct(st, cs);
  tp_cs_free(cs);
  if (rc != 0) {
    tp_log(TP_LOG_ERROR, "kek_init_failed", NULL);
    return -1;
  }
  atomic_store(&g_current, (uint32_t)v);
  tp_log(TP_LOG_INFO, "kek_ready", "{s:s, s:I}", "provider", g_prov.name, "version", (json_int_t)v);
  return 0;
}

/* ---- re-wrap -------------------------------------------------------------- */
static int unhex(const char *s, uint8_t *out, size_t cap, size_t *len)
{
  size_t n = strlen(s);
  if (n % 2 || n / 2 > cap)
    return -1;
  for (size_t i = 0; i < n / 2; i++) {
    int a = tp_hex_digit(s[2 * i]), b = tp_hex_digit(s[2 * i + 1]);
    if (a < 0 || b < 0)
      return -1;
    out[i] = (uint8_t)(a << 4 | b);
  }
  *len = n / 2;
  return 0;
}

static void tohex(const uint8_t *in, size_t n, char *out)
{
  static const char d[] = "0123456789ABCDEF";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = d[in[i] >> 4];
    out[2 * i + 1] = d[in[i] & 15];
  }
  out[2 * n] = '\0';
}

static char rw_cursor[128];
static int rw_pass_count;

int tp_kek_rewrap_batch(int max)
{
again:;
  uint32_t cur = tp_kek_current();
  char hdr[11];
  uint8_t h5[5] = {2, (uint8_t)(cur >> 24), (uint8_t)(cur >> 16), (uint8_t)(cur >> 8), (uint8_t)cur};
  tohex(h5, 5, hdr);
  json_t *rows = NULL;
  for (int round = 0; round < 2; round++) {
    /* Format-2 records whose header names another version, in token order
     * from a cursor, so that a record which cannot be re-wrapped is tried
     * once per pass, not forever. */
    json_t *a = tp_pack("[s, s, i]", hdr, rw_cursor, max);
    rows = tp_store_query(&tp_app.store,
                          "SELECT token, merchant, hex(blob) AS b FROM vault WHERE token > ?2 AND "
                          "(substr(hex(blob), 1, 2) = '01' OR (substr(hex(blob), 1, 2) = '02' AND "
                          "substr(hex(blob), 1, 10) <> ?1)) ORDER BY token LIMIT ?3",
                          a);
    json_decref(a);
    if (!rows)
      return -1;
    if (json_array_size(rows) > 0)
      break;
    json_decref(rows);
    rows = NULL;
    if (!rw_cursor[0] || rw_pass_count == 0) {
      rw_cursor[0] = '\0';
      rw_pass_count = 0;
      return 0; /* a whole pass found nothing left to do */
    }
    rw_cursor[0] = '\0';
    rw_pass_count = 0;
  }
  if (!rows)
    return 0;
  struct tp_cs *cs = tp_cs_new();
  int n = 0;
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row)
  {
    const char *tok = json_string_value(json_object_get(row, "token"));
    const char *mer = json_string_value(json_object_get(row, "merchant"));
    const char *hex = json_string_value(json_object_get(row, "b"));
    if (!tok || !mer || !hex)
      continue;
    tp_scopy(rw_cursor, sizeof rw_cursor, tok);
    uint8_t blob[TP_VAULT_MAX_BLOB], out[TP_VAULT_MAX_BLOB];
    size_t bl, ol;
    char ohex[2 * TP_VAULT_MAX_BLOB + 1];
    if (unhex(hex, blob, sizeof blob, &bl) != 0 ||
        tp_vault_rewrap(mer, tok, blob, bl, cur, out, &ol) != 0) {
      tp_log(TP_LOG_ERROR, "kek_rewrap_failed", "{s:s}", "token", tok);
      continue;
    }
    tohex(out, ol, ohex);
    /* Compare-and-set on the old bytes: a record changed meanwhile is left
     * for the next pass. */
    json_t *a = tp_pack("[s, s, s, s]", ohex, tok, mer, hex);
    tp_cs_sql(cs, "UPDATE vault SET blob = tp_unhex(?1) WHERE token = ?2 AND merchant = ?3 AND hex(blob) = ?4", a,
              0);
    json_decref(a);
    n++;
  }
  json_decref(rows);
  if (n == 0) {
    tp_cs_free(cs);
    goto again; /* every row failed: go on from the advanced cursor (a loop: a call
                 * per batch of failures took ~1 KB of stack each, for the whole vault) */
  }
  if (tp_writer_submit_wait(cs) != 0)
    return -1;
  rw_pass_count += n;
  return n;
}

/* Is a re-wrap's end owed to the log and the audit trail: the current
 * version, past the first, not yet said done (meta kek_rewrapped_version)?
 * (A restart inside the settle period found nothing left to do and said
 * nothing: the operator, told to keep the old keys until kek_rewrap_done,
 * never heard it.) By the version this process re-wrapped to, not the
 * audit trail's last rotation: one made while the start-up pass ran was
 * said done before any record was re-wrapped to it. */
static bool rewrap_done_owed(void)
{
  uint32_t cur = tp_kek_current();
  if (cur <= 1)
    return false;
  json_t *rows = tp_store_query(&tp_app.store, "SELECT value FROM meta WHERE key = 'kek_rewrapped_version'", NULL);
  if (!rows)
    return false;
  const char *v = json_string_value(json_object_get(json_array_get(rows, 0), "value"));
  bool owed = !v || strtoul(v, NULL, 10) != cur;
  json_decref(rows);
  return owed;
}

/* Vault records whose KEK version is not the current one (format 1, or a
 * format-2 header naming another version); -1 when the count fails. */
static int64_t records_not_current(void)
{
  uint32_t cur = tp_kek_current();
  char hdr[11];
  uint8_t h5[5] = {2, (uint8_t)(cur >> 24), (uint8_t)(cur >> 16), (uint8_t)(cur >> 8), (uint8_t)cur};
  tohex(h5, 5, hdr);
  json_t *a = tp_pack("[s]", hdr);
  json_t *rows = tp_store_query(&tp_app.store,
                                "SELECT count(*) AS n FROM vault WHERE substr(hex(blob), 1, 2) = '01' OR "
                                "(substr(hex(blob), 1, 2) = '02' AND substr(hex(blob), 1, 10) <> ?1)",
                                a);
  json_decref(a);
  int64_t n = rows ? json_integer_value(json_object_get(json_array_get(rows, 0), "n")) : -1;
  json_decref(rows);
  return n;
}

/* ---- maintenance thread ---------------------------------------------------- */
static pthread_t g_thread;
static bool g_running;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static bool g_stop;
static atomic_bool g_poke;

bool tp_kek_ready(void)
{
  return !atomic_load(&g_unready);
}

void tp_kek_poke(void)
{
  atomic_store(&g_poke, true);
  pthread_mutex_lock(&g_mu);
  pthread_cond_signal(&g_cv);
  pthread_mutex_unlock(&g_mu);
}

static bool sleep_ms(int ms)
{
  struct timespec ts;
  tp_mono_deadline(&ts, ms);
  pthread_mutex_lock(&g_mu);
  if (!g_stop)
    pthread_cond_timedwait(&g_cv, &g_mu, &ts);
  bool stop = g_stop;
  pthread_mutex_unlock(&g_mu);
  return !stop;
}

/* How long a re-wrap that found nothing left keeps looking before it is
 * done (kek_rewrap_done): a card sealed under the old version before the
 * switch commits with its request's write-ahead, moments later
 * ([vault] rewrap_settle_ms). */
#define KEK_SETTLE_MS 10000

static void *maint_main(void *arg)
{
  (void)arg;
  int poll_ms = (int)tp_config_int("vault", "kek_poll_seconds", 2, 1, 3600) * 1000;
  int batch = (int)tp_config_int("vault", "rewrap_batch", 50, 1, 1000);
  int pause_ms = (int)tp_config_int("vault", "rewrap_pause_ms", 20, 0, 10000);
  int settle_ms = (int)tp_config_int("vault", "rewrap_settle_ms", KEK_SETTLE_MS, 0, 600000);
  bool rewrap = true; /* one pass at start finishes a re-wrap a restart interrupted */
  bool switched = false; /* the version changed while this process sealed cards: settle before done */
  int total = 0;
  int64_t retry_at = 0, retry_wait_ms = 0, settle_at = 0, unusable_retry_at = 0;
  int64_t unusable_logged = g_unusable_at_start; /* tp_kek_init said it */
  int64_t next_poll = tp_mono_ms() + poll_ms;
  for (;;) {
    bool poked = atomic_exchange(&g_poke, false);
    if (poked || tp_mono_ms() >= next_poll) {
      next_poll = tp_mono_ms() + poll_ms;
      if (poked) /* SIGHUP: the operator fixed something; look at once */
        unusable_retry_at = 0;
      bool ok = !g_prov.check || g_prov.check(g_prov.cls) == 0;
      int64_t v = latest_version(&tp_app.store);
      /* A version found unusable is tried again once a minute, not every
       * poll (each try logs the provider's error). */
      bool unusable;
      if (ok && v > (int64_t)tp_kek_current() && unusable_logged == v && tp_mono_ms() < unusable_retry_at)
        unusable = true;
      else {
        unusable = ok && v > (int64_t)tp_kek_current() && !kek_holds(&tp_app.store, (uint32_t)v);
        if (unusable)
          unusable_retry_at = tp_mono_ms() + 60000;
      }
      if (g_prov.check && atomic_exchange(&g_unready, !ok || unusable) == ok && !unusable)
        tp_log(ok ? TP_LOG_INFO : TP_LOG_ERROR, ok ? "kek_ready" : "kek_not_ready", "{s:s}", "provider",
               g_prov.name);
      if (!g_prov.check)
        atomic_store(&g_unready, unusable);
      if (unusable) {
        /* A version this process cannot use (made by `kek rotate` with
         * another key label, or a key file it may not read): sealing with
         * it failed every new card while /readyz said ready, and a restart
         * was refused. The old version goes on sealing; not ready until
         * the new one works (asked again once a minute, or at a SIGHUP). */
        if (unusable_logged != v)
          log_unusable(v, tp_kek_current());
        unusable_logged = v;
      } else if (ok && v > (int64_t)tp_kek_current()) {
        unusable_logged = 0;
        tp_kek_set_current((uint32_t)v);
        tp_log(TP_LOG_INFO, "kek_current", "{s:I}", "version", (json_int_t)v);
        rewrap = true;
        switched = true;
        total = 0;
        retry_at = retry_wait_ms = settle_at = 0;
      }
    }
    if (rewrap && tp_mono_ms() >= retry_at) {
      int n = tp_kek_rewrap_batch(batch);
      if (n > 0) {
        total += n;
        settle_at = 0;
      }
      int64_t left = n == 0 ? records_not_current() : 0;
      if (n == 0 && left != 0) {
        /* A pass left records it could not re-wrap (the KEK provider failed
         * them, or the count failed): not done, and the older versions
         * still needed. Try again later, less often each time. */
        retry_wait_ms = retry_wait_ms ? (retry_wait_ms * 2 > 300000 ? 300000 : retry_wait_ms * 2) : 5000;
        retry_at = tp_mono_ms() + retry_wait_ms;
        tp_log(TP_LOG_WARN, "kek_rewrap_incomplete", "{s:I, s:I, s:I}", "version", (json_int_t)tp_kek_current(),
               "records_left", (json_int_t)left, "retry_ms", (json_int_t)retry_wait_ms);
      } else if (n == 0 && switched && !settle_at) {
        /* None left: but a request that sealed a card under the old
         * version just before the switch may not have committed it yet
         * (sealed, then routed and queued for the writer). Look again for
         * KEK_SETTLE_MS before saying done, and re-wrap what turns up. */
        settle_at = tp_mono_ms() + settle_ms;
      } else if (n == 0 && (!switched || tp_mono_ms() >= settle_at)) {
        rewrap = false;
        switched = false;
        retry_wait_ms = settle_at = 0;
        if (total > 0 || rewrap_done_owed()) {
          struct tp_cs *cs = tp_cs_new();
          json_t *d = tp_pack("{s:I, s:i}", "version", (json_int_t)tp_kek_current(), "records", total);
          tp_audit_append(cs, NULL, "system", "kek.rewrapped", NULL, d);
          json_decref(d);
          char ver[16];
          snprintf(ver, sizeof ver, "%u", tp_kek_current());
          json_t *a = tp_pack("[s]", ver);
          tp_cs_sql(cs, "INSERT OR REPLACE INTO meta(key, value) VALUES('kek_rewrapped_version', ?1)", a, 1);
          json_decref(a);
          /* Said once its record is on disk: an operator told done retires
           * the old key (said first, a crash could leave the re-wrap
           * unrecorded; a test reading the audit trail at the log line
           * found it not yet there). After a failed commit it is said at
           * the next start or version switch (rewrap_done_owed). */
          if (tp_writer_submit_wait(cs) == 0)
            tp_log(TP_LOG_INFO, "kek_rewrap_done", "{s:I, s:i}", "version", (json_int_t)tp_kek_current(), "records",
                   total);
        }
      }
    }
    tp_audit_tick();
    int nap = !rewrap || tp_mono_ms() < retry_at ? 250 : settle_at ? 1000 : pause_ms;
    if (!sleep_ms(nap))
      break;
  }
  return NULL;
}

int tp_kek_start(void)
{
  g_stop = false;
  tp_cond_init_mono(&g_cv);
  if (pthread_create(&g_thread, NULL, maint_main, NULL) != 0)
    return -1;
  g_running = true;
  return 0;
}

void tp_kek_stop(void)
{
  if (!g_running)
    return;
  pthread_mutex_lock(&g_mu);
  g_stop = true;
  pthread_cond_signal(&g_cv);
  pthread_mutex_unlock(&g_mu);
  pthread_join(g_thread, NULL);
  g_running = false;
  tp_audit_tick_final();
}

/* ---- turnpike kek rotate ----------------------------------------------------- */
static int ini_put(void *user, const char *section, const char *name, const char *value)
{
  (void)user;
  tp_config_put(section, name, value);
  return 1;
}

static void usage_kek(FILE *f)
{
  fprintf(f, "usage: turnpike kek rotate [--data DIR] [--config FILE]\n\n"
             "--data defaults to $TURNPIKE_SERVER_DATA, else [server] data of --config, else ./var.\n"
             "Creates a new key-encryption key version with the provider of [vault] kek (file | pkcs11)\n"
             "and makes it current. A running daemon picks it up within [vault] kek_poll_seconds and\n"
             "re-wraps the data keys of older card records in the background; reads work throughout.\n"
             "Prints {\"version\",\"provider\"} as JSON.\n");
}

int tp_cmd_kek(int argc, char **argv)
{
  if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
    usage_kek(argc < 1 ? stderr : stdout);
    return argc < 1 ? 2 : 0;
  }
  if (strcmp(argv[0], "rotate") != 0) {
    usage_kek(stderr);
    return 2;
  }
  const char *data = NULL, *cfg = NULL;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if ((v = tp_cli_value(argc, argv, &i, "--data", "kek rotate")))
      data = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--config", "kek rotate")))
      cfg = v;
    else if (strcmp(argv[i], "--help") == 0) {
      usage_kek(stdout);
      return 0;
    } else {
      fprintf(stderr, "turnpike kek rotate: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (cfg && tp_cli_ini_parse(cfg, ini_put, NULL) != 0) {
    fprintf(stderr, "turnpike kek rotate: cannot read %s\n", cfg);
    return 2;
  }
  if (!data) /* as serve finds it: the environment, then the file */
    data = tp_cli_default_data(tp_config_get("server", "data"));
  tp_log_threshold = TP_LOG_WARN;
  struct tp_store st;
  if (tp_store_open_existing(&st, data, "kek rotate") != 0)
    return 1;
  struct tp_kek_provider p;
  if (tp_kek_open(data, &p) != 0) {
    st.ops->close(st.cls);
    return 1;
  }
  int rc = 1;
  int64_t v = latest_version(&st);
  /* A version made by another provider than the daemon's would be one the
   * daemon cannot use: refuse (usually a forgotten --config). */
  json_t *prow = tp_store_query(&st, "SELECT provider FROM kek_versions ORDER BY version DESC LIMIT 1", NULL);
  const char *prev = json_string_value(json_object_get(json_array_get(prow, 0), "provider"));
  if (prev && strcmp(prev, p.name) != 0) {
    fprintf(stderr, "turnpike kek rotate: the store's KEKs come from the %s provider, not %s (pass --config?)\n",
            prev, p.name);
    v = -1;
  }
  json_decref(prow);
  if (v >= 0 && v + 1 < TP_KEK_MAX_VERSIONS && p.create(p.cls, (uint32_t)v + 1) == 0) {
    struct tp_cs *cs = tp_cs_new();
    cs_add_version(cs, (uint32_t)v + 1, p.name, "cli");
    if (apply_direct(&st, cs) == 0) {
      printf("{\"version\":%u,\"provider\":\"%s\"}\n", (unsigned)v + 1, p.name);
      rc = 0;
    }
    tp_cs_free(cs);
  }
  if (rc != 0)
    fprintf(stderr, "turnpike kek rotate: failed\n");
  p.close(p.cls);
  st.ops->close(st.cls);
  return rc;
}
