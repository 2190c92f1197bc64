/* API keys: authentication with a bounded cache, and the admin commands
 * `turnpike api-key roll` (a new secret or publishable key, the old ones
 * valid for an overlap period), `turnpike api-key create` (a restricted rk_
 * key with scopes) and `turnpike api-key revoke` (one key ended now).
 *
 * Keys are stored only as SHA-256 hashes (api_keys.hash, a BLOB). The store's
 * query op binds text only, so a hash goes into SQL as an X'..' literal made
 * here from the digest: never from client text. */
#include "cli.h"
#include "jpack.h"
#include "main/commands.h"
#include "sec/audit.h"
#include "sec/auth.h"
#include "sec/scopes.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "util.h"

#define TP_AUTH_CACHE_SLOTS 1024
#define TP_AUTH_CACHE_S 30        /* default [auth] cache_seconds */
#define TP_KEY_RANDOM_LEN 99      /* base62 characters after "sk_test_" */

/* ---- lookup ------------------------------------------------------------------ */
struct key_slot {
  uint8_t hash[32];
  struct tp_auth a;
  int64_t expires;      /* unix s, 0 = never */
  int64_t until_ms;
  bool used;
};
static struct key_slot cache[TP_AUTH_CACHE_SLOTS];
static pthread_rwlock_t cache_mu = PTHREAD_RWLOCK_INITIALIZER;
static int64_t cache_ms;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

/* Keys changed by an admin command (roll, revoke) in another process are
 * seen once their cache entry is this old. Expiry times are cached with the
 * key, so a known expiry is exact. */
static void cache_init(void)
{
  cache_ms = tp_config_int("auth", "cache_seconds", TP_AUTH_CACHE_S, 0, 3600) * 1000;
}

static void hex_lit(const uint8_t h[32], char out[65])
{
  tp_hex(h, 32, out);
}

static int unhex32(const char *s, uint8_t out[32])
{
  if (!s || strlen(s) != 64)
    return -1;
  for (int i = 0; i < 32; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1)
      return -1;
    out[i] = (uint8_t)v;
  }
  return 0;
}

int tp_auth_open_merchant(const char *dir, const char *id, const char *cmd, struct tp_store *st,
                          struct tp_merchant *m)
{
  if (tp_store_open_existing(st, dir, cmd) != 0) {
    fprintf(stderr, "turnpike %s: cannot open the store in %s\n", cmd, dir);
    return 1;
  }
  int found = tp_auth_merchant(st, id, m);
  if (found == 1)
    return 0;
  fprintf(stderr, "turnpike %s: %s\n", cmd, found < 0 ? "store error" : "no such merchant");
  st->ops->close(st->cls);
  return 1;
}

int tp_auth_merchant(struct tp_store *st, const char *id, struct tp_merchant *m)
{
  json_t *args = tp_pack("[s]", id);
  json_t *rows = tp_store_query(st, "SELECT id, name, hex(fp_key) AS fp FROM merchants WHERE id=?1", args);
  json_decref(args);
  if (!rows)
    return -1;
  json_t *row = json_array_get(rows, 0);
  int found = 0;
  if (row) {
    memset(m, 0, sizeof *m);
    tp_scopy(m->id, sizeof m->id, json_string_value(json_object_get(row, "id")));
    tp_scopy(m->name, sizeof m->name, json_string_value(json_object_get(row, "name")));
    unhex32(json_string_value(json_object_get(row, "fp")), m->fp_key);
    found = 1;
  }
  json_decref(rows);
  return found;
}

/* Read one key row: 1 found (a and *expires set), 0 unknown, -1 error. */
static int key_row(const uint8_t h[32], struct tp_auth *a, int64_t *expires)
{
  char hex[65], sql[400];
  hex_lit(h, hex);
  snprintf(sql, sizeof sql,
           "SELECT m.id AS id, m.name AS name, hex(m.fp_key) AS fp, k.kind AS kind, k.scopes AS scopes, "
           "k.expires AS expires, k.hint AS hint FROM api_keys k JOIN merchants m ON m.id=k.merchant "
           "WHERE k.hash=X'%s'", hex);
  json_t *rows = tp_store_query(&tp_app.store, sql, NULL);
  if (!rows)
    return -1;
  json_t *row = json_array_get(rows, 0);
  if (!row) {
    json_decref(rows);
    return 0;
  }
  memset(a, 0, sizeof *a);
  tp_scopy(a->merchant.id, sizeof a->merchant.id, json_string_value(json_object_get(row, "id")));
  tp_scopy(a->merchant.name, sizeof a->merchant.name, json_string_value(json_object_get(row, "name")));
  unhex32(json_string_value(json_object_get(row, "fp")), a->merchant.fp_key);
  const char *kind = json_string_value(json_object_get(row, "kind"));
  tp_scopy(a->kind, sizeof a->kind, kind ? kind : "");
  if (strcmp(a->kind, "secret") == 0)
    a->scopes = TP_SCOPE_ALL;
  else if (strcmp(a->kind, "restricted") == 0) {
    bool ok;
    a->scopes = tp_scopes_parse(json_string_value(json_object_get(row, "scopes")), &ok);
  }
  json_t *ex = json_object_get(row, "expires");
  *expires = json_is_integer(ex) ? json_integer_value(ex) : 0;
  snprintf(a->actor, sizeof a->actor, "key:%s", json_string_value(json_object_get(row, "hint")));
  char short_hex[33];
  memcpy(short_hex, hex, 32);
  short_hex[32] = '\0';
  snprintf(a->rl_id, sizeof a->rl_id, "k:%s", short_hex);
  json_decref(rows);
  return 1;
}

enum tp_err tp_apikey_authenticate(const char *key, struct tp_auth *a)
{
  uint8_t h[32];
  tp_sha256(key, strlen(key), h);
  unsigned i = (unsigned)(h[0] | (h[1] << 8)) % TP_AUTH_CACHE_SLOTS;
  int64_t now_ms = tp_mono_ms(), expires = 0;
  bool hit = false;
  pthread_once(&cache_once, cache_init);
  pthread_rwlock_rdlock(&cache_mu);
  struct key_slot *s = &cache[i];
  if (s->used && s->until_ms > now_ms && memcmp(s->hash, h, 32) == 0) {
    *a = s->a;
    expires = s->expires;
    hit = true;
  }
  pthread_rwlock_unlock(&cache_mu);
  if (!hit) {
    int found = key_row(h, a, &expires);
    if (found < 0)
      return TP_ERR_STORE_UNAVAILABLE;
    if (found == 0)
      return TP_ERR_AUTH_INVALID_KEY;
    pthread_rwlock_wrlock(&cache_mu);
    s->used = true;
    memcpy(s->hash, h, 32);
    s->a = *a;
    s->expires = expires;
    s->until_ms = now_ms + cache_ms;
    pthread_rwlock_unlock(&cache_mu);
  }
  if (expires && expires <= tp_now())
    return TP_ERR_API_KEY_EXPIRED;
  if (strcmp(a->kind, "secret") != 0 && strcmp(a->kind, "restricted") != 0)
    return TP_ERR_PUBLISHABLE_KEY_FORBIDDEN;
  return TP_ERR_OK;
}

/* ---- admin commands ------------------------------------------------------- */
static void usage(FILE *f)
{
  fprintf(f,
          "usage: turnpike api-key roll [--data DIR] --merchant ID [--publishable] [--overlap SECONDS]\n"
          "                             [--expires-in SECONDS]\n"
          "       turnpike api-key create [--data DIR] --merchant ID --scopes \"SCOPE ...\" [--expires-in SECONDS]\n"
          "       turnpike api-key revoke [--data DIR] --merchant ID (--key KEY | --hint HINT)\n\n"
          "roll    creates a new secret key (sk_), or with --publishable a new publishable key (pk_),\n"
          "        and keeps the merchant's current keys of that kind valid for --overlap seconds\n"
          "        (default 86400), after which they answer 401 api_key_expired (a running server\n"
          "        once its cached lookup of the key ages out too: [auth] cache_seconds).\n"
          "create  creates a restricted key (rk_) limited to the given scopes:\n"
          "        payments:read payments:write refunds:write customers:write reports:read admin\n"
          "revoke  ends one key of the merchant (any kind) now: the key itself, or its hint as\n"
          "        printed when it was made (\"rk_test_...wxyz\"), which must name exactly one live key.\n"
          "        A running server refuses it once its cached lookup ages out ([auth] cache_seconds).\n"
          "--expires-in gives the new key a lifetime. Keys are printed once as JSON on stdout and\n"
          "stored only as SHA-256 hashes.\n");
}

static bool parse_secs(const char *s, int64_t max, int64_t *out)
{
  char *end;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || v < 0 || v > max)
    return false;
  *out = v;
  return true;
}

/* Add the INSERT of a new key to cs. */
static void add_key(struct tp_cs *cs, const char *merchant, const char *kind, const char *key, const char *scopes,
                    int64_t expires, char hint[32])
{
  uint8_t h[32];
  char hex[65], sql[400];
  tp_sha256(key, strlen(key), h);
  hex_lit(h, hex);
  size_t kl = strlen(key);
  snprintf(hint, 32, "%.8s...%s", key, key + (kl > 4 ? kl - 4 : 0));
  snprintf(sql, sizeof sql,
           "INSERT INTO api_keys(hash, merchant, kind, hint, created, expires, scopes) "
           "VALUES(X'%s', ?1, ?2, ?3, ?4, ?5, ?6)", hex);
  json_t *args = tp_pack("[s, s, s, I, o, o]", merchant, kind, hint, (json_int_t)tp_now(),
                         expires ? json_integer(expires) : json_null(), scopes ? json_string(scopes) : json_null());
  tp_cs_sql(cs, sql, args, 1);
  json_decref(args);
}

/* `api-key revoke`: the one live key of merchant named by its text (its
 * hash) or its hint ends now, with an audit entry in the same commit. */
static int revoke_key(const char *data, const char *merchant, const char *key, const char *hint)
{
  if (!key == !hint || (key && strlen(key) > 200) || (hint && strlen(hint) >= 32)) {
    fprintf(stderr, "turnpike api-key revoke: give exactly one of --key KEY or --hint HINT\n");
    return 2;
  }
  tp_log_threshold = TP_LOG_WARN;
  struct tp_store st;
  struct tp_merchant m;
  if (tp_auth_open_merchant(data, merchant, "api-key", &st, &m) != 0)
    return 1;
  int64_t now = tp_now();
  /* The live keys it names (not yet expired), at most two looked at. */
  char sql[300], hex[65];
  json_t *args;
  if (key) {
    uint8_t h[32];
    tp_sha256(key, strlen(key), h);
    hex_lit(h, hex);
    snprintf(sql, sizeof sql,
             "SELECT hint, kind FROM api_keys WHERE hash=X'%s' AND merchant=?1 AND (expires IS NULL OR expires>?2) "
             "LIMIT 2", hex);
    args = tp_pack("[s, I]", merchant, (json_int_t)now);
  } else {
    snprintf(sql, sizeof sql,
             "SELECT hint, kind, hex(hash) AS h FROM api_keys WHERE hint=?3 AND merchant=?1 "
             "AND (expires IS NULL OR expires>?2) LIMIT 2");
    args = tp_pack("[s, I, s]", merchant, (json_int_t)now, hint);
  }
  json_t *rows = st.ops->query(st.cls, sql, args);
  json_decref(args);
  if (!rows || json_array_size(rows) != 1) {
    fprintf(stderr, "turnpike api-key revoke: %s\n",
            !rows ? "store read failed"
            : json_array_size(rows) ? "the hint names more than one live key: revoke by --key"
                                    : "no live key of this merchant is named so");
    json_decref(rows);
    st.ops->close(st.cls);
    return 1;
  }
  json_t *row = json_array_get(rows, 0);
  char khint[32], kind[16];
  tp_scopy(khint, sizeof khint, json_string_value(json_object_get(row, "hint")));
  tp_scopy(kind, sizeof kind, json_string_value(json_object_get(row, "kind")));
  if (!key)
    tp_scopy(hex, sizeof hex, json_string_value(json_object_get(row, "h")));
  json_decref(rows);
  struct tp_cs *cs = tp_cs_new();
  snprintf(sql, sizeof sql, "UPDATE api_keys SET expires=?1 WHERE hash=X'%s' AND merchant=?2", hex);
  args = tp_pack("[I, s]", (json_int_t)now, merchant);
  tp_cs_sql(cs, sql, args, 1);
  json_decref(args);
  if (tp_audit_cli_commit(&st, cs, merchant, "api_key.revoked", khint,
                          tp_pack("{s:s, s:I}", "kind", kind, "revoked_at", (json_int_t)now), "api-key") != 0)
    return 1;
  json_t *out = tp_pack("{s:s, s:s, s:s, s:I}", "merchant", merchant, "hint", khint, "kind", kind, "revoked_at",
                        (json_int_t)now);
  char *txt = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
  printf("%s\n", txt);
  free(txt);
  json_decref(out);
  return 0;
}

int tp_cmd_api_key(int argc, char **argv)
{
  if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
    usage(argc < 1 ? stderr : stdout);
    return argc < 1 ? 2 : 0;
  }
  bool roll = strcmp(argv[0], "roll") == 0, revoke = strcmp(argv[0], "revoke") == 0, publishable = false;
  if (!roll && !revoke && strcmp(argv[0], "create") != 0) {
    usage(stderr);
    return 2;
  }
  const char *data = tp_cli_default_data(NULL), *merchant = NULL, *scopes_s = NULL, *v, *rkey = NULL, *rhint = NULL;
  int64_t overlap = 86400, expires_in = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0) {
      usage(stdout);
      return 0;
    } else if ((v = tp_cli_value(argc, argv, &i, "--data", "api-key")))
      data = v;
    else if ((v = tp_cli_value(argc, argv, &i, "--merchant", "api-key")))
      merchant = v;
    else if (revoke && (v = tp_cli_value(argc, argv, &i, "--key", "api-key")))
      rkey = v;
    else if (revoke && (v = tp_cli_value(argc, argv, &i, "--hint", "api-key")))
      rhint = v;
    else if (roll && strcmp(argv[i], "--publishable") == 0)
      publishable = true;
    else if (!roll && !revoke && (v = tp_cli_value(argc, argv, &i, "--scopes", "api-key")))
      scopes_s = v;
    else if (roll && (v = tp_cli_value(argc, argv, &i, "--overlap", "api-key"))) {
      if (!parse_secs(v, 365 * 86400, &overlap)) {
        fprintf(stderr, "turnpike api-key: --overlap wants 0..31536000 seconds\n");
        return 2;
      }
    } else if (!revoke && (v = tp_cli_value(argc, argv, &i, "--expires-in", "api-key"))) {
      if (!parse_secs(v, 10 * 365 * 86400, &expires_in) || expires_in == 0) {
        fprintf(stderr, "turnpike api-key: --expires-in wants 1..315360000 seconds\n");
        return 2;
      }
    } else {
      fprintf(stderr, "turnpike api-key: unknown option %s\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (!merchant || strlen(merchant) >= TP_ID_MAX) {
    fprintf(stderr, "turnpike api-key: --merchant ID is required\n");
    return 2;
  }
  if (revoke)
    return revoke_key(data, merchant, rkey, rhint);
  unsigned mask = 0;
  char scopes[160] = "";
  if (!roll) {
    bool ok;
    mask = scopes_s ? tp_scopes_parse(scopes_s, &ok) : 0;
    if (!scopes_s || !ok || !mask) {
      fprintf(stderr, "turnpike api-key create: --scopes wants one or more of payments:read payments:write "
                      "refunds:write customers:write reports:read admin\n");
      return 2;
    }
    tp_scopes_format(mask, scopes, sizeof scopes);
  }
  tp_log_threshold = TP_LOG_WARN;
  struct tp_store st;
  struct tp_merchant m;
  if (tp_auth_open_merchant(data, merchant, "api-key", &st, &m) != 0)
    return 1;
  int64_t now = tp_now();
  int64_t expires = expires_in ? now + expires_in : 0;
  char key[128], rnd[TP_KEY_RANDOM_LEN + 1], hint[32];
  tp_random_b62(rnd, TP_KEY_RANDOM_LEN);
  const char *kind = !roll ? "restricted" : publishable ? "publishable" : "secret";
  snprintf(key, sizeof key, "%s_test_%s", !roll ? "rk" : publishable ? "pk" : "sk", rnd);
  struct tp_cs *cs = tp_cs_new();
  int64_t old_until = now + overlap;
  if (roll) {
    /* Every live key of the kind now ends at the overlap (earlier expiries stay). */
    json_t *args = tp_pack("[I, s, s]", (json_int_t)old_until, merchant, kind);
    tp_cs_sql(cs, "UPDATE api_keys SET expires=?1 WHERE merchant=?2 AND kind=?3 "
                  "AND (expires IS NULL OR expires>?1)", args, 0);
    json_decref(args);
  }
  add_key(cs, merchant, kind, key, roll ? NULL : scopes, expires, hint);
  json_t *details = roll ? tp_pack("{s:I, s:s}", "previous_keys_expire_at", (json_int_t)old_until, "kind", kind)
                         : tp_pack("{s:s}", "scopes", scopes);
  if (expires)
    json_object_set_new(details, "expires_at", json_integer(expires));
  if (tp_audit_cli_commit(&st, cs, merchant, roll ? "api_key.rolled" : "api_key.created", hint, details,
                          "api-key") != 0)
    return 1;
  json_t *out = tp_pack("{s:s, s:s, s:s, s:o}", "merchant", merchant,
                        !roll ? "restricted_key" : publishable ? "publishable_key" : "secret_key", key,
                        "hint", hint, "expires_at", expires ? json_integer(expires) : json_null());
  if (roll)
    json_object_set_new(out, "previous_keys_expire_at", json_integer(old_until));
  else
    json_object_set_new(out, "scopes", json_string(scopes));
  char *s = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
  printf("%s\n", s);
  free(s);
  json_decref(out);
  return 0;
}
