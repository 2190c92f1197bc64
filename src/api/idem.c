/* Idempotency keys, scoped per merchant, kept 24 h.
 *
 * The stored reply (in the same commit as the change it describes) is
 * checked first, so a retry after completion always replays; an in-memory
 * set of keys in flight turns a concurrent duplicate into 409. A key whose
 * request started executing (a processor attempt was written) is durably
 * marked pending, so after a crash a retry waits for recovery instead of
 * charging again. Requests that fail validation store nothing (as Stripe). */
#include "api/http.h"
#include "net/webhooks.h"
#include "sec/scopes.h"
#include "store/store.h"
#include "core/card.h"
#include "log.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TP_IDEM_BUCKETS 4096

struct inflight {
  char *key; /* merchant \x1f idempotency key */
  struct inflight *next;
};
static struct inflight *buckets[TP_IDEM_BUCKETS];
/* Keys that left each bucket: bumped under mu, read without it (a claim
 * compares the count it read before its store read with the one at the
 * claim, so only a change matters, never a torn value). */
static _Atomic unsigned long released[TP_IDEM_BUCKETS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static unsigned hash(const char *s)
{
  unsigned h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h % TP_IDEM_BUCKETS;
}

static void full_key(const struct tp_req *r, char *out, size_t n)
{
  snprintf(out, n, "%s\x1f%s", r->merchant.id, r->idem_slot);
}

/* The key as stored (r->idem_slot). A publishable key is public: its
 * requests (a browser's) keep their keys apart from the secret key's, or
 * anyone holding it could take the merchant's server-side keys first (an
 * order number used as a key) and have them refused for a day. A client's
 * key is printable ASCII, so "pk" and a unit separator cannot collide. */
static void set_slot(struct tp_req *r)
{
  snprintf(r->idem_slot, sizeof r->idem_slot, "%s%s", r->publishable ? "pk\x1f" : "", r->idem_key);
}

static unsigned long released_from(const char *k)
{
  return atomic_load(&released[hash(k)]);
}

static bool inflight_has(const char *k)
{
  unsigned b = hash(k);
  bool has = false;
  pthread_mutex_lock(&mu);
  for (struct inflight *e = buckets[b]; e && !has; e = e->next)
    has = strcmp(e->key, k) == 0;
  pthread_mutex_unlock(&mu);
  return has;
}

/* Claim k; *released_out is the bucket's release count at the claim. */
static bool inflight_add(const char *k, unsigned long *released_out)
{
  unsigned b = hash(k);
  pthread_mutex_lock(&mu);
  *released_out = atomic_load(&released[b]);
  for (struct inflight *e = buckets[b]; e; e = e->next)
    if (strcmp(e->key, k) == 0) {
      pthread_mutex_unlock(&mu);
      return false;
    }
  struct inflight *e = malloc(sizeof *e);
  char *dup = strdup(k);
  if (!e || !dup) {
    free(e);
    free(dup);
    pthread_mutex_unlock(&mu);
    return false;
  }
  e->key = dup;
  e->next = buckets[b];
  buckets[b] = e;
  pthread_mutex_unlock(&mu);
  return true;
}

static void inflight_del(const char *k)
{
  unsigned b = hash(k);
  pthread_mutex_lock(&mu);
  for (struct inflight **pp = &buckets[b]; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->key, k) == 0) {
      struct inflight *e = *pp;
      *pp = e->next;
      free(e->key);
      free(e);
      atomic_fetch_add(&released[b], 1);
      break;
    }
  pthread_mutex_unlock(&mu);
}

/* Fingerprint of the request (TP_REQ_HASH_LEN): the method, path and
 * canonical parameters, then '/' and the method and path alone. */
static void request_hash(struct tp_req *r)
{
  char *canon = json_dumps(r->params, JSON_COMPACT | JSON_SORT_KEYS);
  size_t ul = strlen(r->url), cl = canon ? strlen(canon) : 0;
  while (ul > 1 && r->url[ul - 1] == '/')
    ul--; /* routed as the same endpoint (route()): the same request */
  size_t n = ul + cl + 48;
  char *buf = malloc(n);
  if (!buf)
    abort();
  /* The kind of key is part of the request: a publishable key replaying a
   * secret key's confirm under its Idempotency-Key would otherwise get the
   * stored reply, client_secret included, without passing the client_secret
   * check (the replay answers before the handler runs). */
  char kind[24] = "";
  if (r->publishable)
    snprintf(kind, sizeof kind, "pk\n");
  else if ((r->scopes & TP_SCOPE_ALL) != TP_SCOPE_ALL)
    /* A restricted key or token: what it may do and see is part of the
     * request too. A reply stored for the secret key holds an expanded
     * customer that a payments:write key is refused, or a webhook
     * endpoint's secret that a key without reports:read is refused (its
     * handler checks that, after a replay would have answered: review,
     * session 39; this was done for expand[] alone). Keys with every scope
     * (secret keys) share their replies, as on Stripe. */
    snprintf(kind, sizeof kind, "scopes %u\n", r->scopes & TP_SCOPE_ALL);
  int len = snprintf(buf, n, "%s %.*s\n%s%s", r->method, (int)ul, r->url, kind, canon ? canon : "");
  /* Keyed, not a plain SHA-256: the body may hold a card number, and a PAN's
   * small search space would make a bare hash reversible. */
  char whole[65], endpoint[65];
  tp_hmac_sha256_hex(tp_app.vault_key, sizeof tp_app.vault_key, buf, (size_t)len, whole);
  /* The endpoint holds no card data: a plain hash will do. */
  tp_sha256_hex(buf, strlen(r->method) + 1 + ul, endpoint);
  /* ':' marks a fingerprint with a restricted key's scopes in it always
   * (session 39); a record made before, '/', is compared with the request
   * as it was hashed then, or a retry across the upgrade got 400
   * idempotency_error for a payment that was made (review). */
  snprintf(r->req_hash, sizeof r->req_hash, "%.64s:%.16s", whole, endpoint);
  r->req_hash_v1[0] = '\0';
  if (kind[0] == 's' && !json_object_get(r->params, "expand")) {
    len = snprintf(buf, n, "%s %.*s\n%s", r->method, (int)ul, r->url, canon ? canon : "");
    tp_hmac_sha256_hex(tp_app.vault_key, sizeof tp_app.vault_key, buf, (size_t)len, r->req_hash_v1);
  }
  tp_card_wipe(buf, n);
  free(buf);
  if (canon)
    tp_card_wipe(canon, cl); /* the parameters, card number and CVC included */
  free(canon);
}

/* How a stored fingerprint differs from r's: 0 the same request,
 * TP_ERR_IDEMPOTENCY_ENDPOINT_MISMATCH another endpoint,
 * TP_ERR_IDEMPOTENCY_MISMATCH other parameters. A record from before the
 * endpoint part is compared on the whole request alone. */
static int idem_differs(const char *stored, const struct tp_req *r)
{
  bool whole_form = strlen(stored) == TP_REQ_HASH_LEN - 1;
  if (whole_form && memcmp(stored + 65, r->req_hash + 65, 16) != 0)
    return TP_ERR_IDEMPOTENCY_ENDPOINT_MISMATCH;
  const char *mine = r->req_hash;
  if (!(whole_form && stored[64] == ':') && r->req_hash_v1[0])
    mine = r->req_hash_v1; /* a record from before session 39: hashed as then */
  return strncmp(stored, mine, 64) != 0 ? TP_ERR_IDEMPOTENCY_MISMATCH : 0;
}

/* Refuse r for reusing its key: another endpoint, or other parameters. */
static void refuse_reuse(struct tp_req *r, int why)
{
  char msg[768]; /* a key of up to 255 characters, named whole as Stripe does */
  if (why == TP_ERR_IDEMPOTENCY_MISMATCH) {
    /* Stripe's wording, naming the key */
    snprintf(msg, sizeof msg,
             "Keys for idempotent requests can only be used with the same parameters they were first used with. "
             "Try using a key other than '%s' if you meant to execute a different request.",
             r->idem_key);
    tp_reply_error(r, why, NULL, msg);
    return;
  }
  if (why != TP_ERR_IDEMPOTENCY_ENDPOINT_MISMATCH) {
    tp_reply_error(r, why, NULL, NULL);
    return;
  }
  snprintf(msg, sizeof msg,
           "Keys for idempotent requests can only be used for the same endpoint they were first used for; this "
           "request is %s %.120s. Try using a key other than '%s' if you meant to execute a different request.",
           r->method, r->url, r->idem_key);
  tp_reply_error(r, why, NULL, msg);
}

/* The stored record of r's key: replay it or refuse (true: replied), or
 * false when the key is free in the store. */
static bool answer_from_store(struct tp_req *r, int found, struct tp_idem_rec *rec)
{
  if (found < 0) {
    /* The key's record could not be read: running the request could run it
     * twice. The client retries with the same key. */
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return true;
  }
  if (found == 1 && rec->status != 0) {
    int why = idem_differs(rec->req_hash, r);
    if (why) {
      free(rec->body);
      refuse_reuse(r, why);
      return true;
    }
    r->replayed = true;
    tp_scopy(r->original_request, sizeof r->original_request, rec->request_id);
    char *opened = r->route && (r->route->flags & TP_R_SEALED_REPLY) ? tp_webhooks_idem_open(rec->body) : NULL;
    if (opened) {
      free(rec->body);
      rec->body = opened;
    }
    tp_reply_raw(r, (unsigned)rec->status, rec->body ? rec->body : strdup("{}"),
                 rec->body ? strlen(rec->body) : 2, "application/json");
    return true;
  }
  free(rec->body);
  rec->body = NULL;
  if (found == 1) { /* pending: in flight before a restart, until recovery ends */
    int why = idem_differs(rec->req_hash, r);
    refuse_reuse(r, why ? why : TP_ERR_IDEMPOTENCY_KEY_IN_USE);
    return true;
  }
  return false;
}

bool tp_idem_begin(struct tp_req *r)
{
  request_hash(r);
  set_slot(r);
  char k[400];
  full_key(r, k, sizeof k);
  /* With commit_sync = pipelined a reader sees a commit before its sync: a
   *    stored reply may not be on disk yet, and replaying it would
   *    acknowledge what a power cut can still take back. Its request is in
   *    flight until the sync (its completion runs after it), so the key is
   *    claimed first there: such a retry gets 409 and comes back. */
  if (tp_writer_pipelined() && inflight_has(k)) {
    tp_reply_error(r, TP_ERR_IDEMPOTENCY_KEY_IN_USE, NULL, NULL);
    return true;
  }
  /* 1. The stored reply first: a retry that races the end of the original
   *    request (the client has the answer before MHD's completion callback
   *    released the key) gets the replay, not 409. */
  unsigned long before = released_from(k);
  struct tp_idem_rec rec;
  memset(&rec, 0, sizeof rec);
  int found = tp_app.store.ops->idem_get(tp_app.store.cls, r->merchant.id, r->idem_slot, &rec);
  if (answer_from_store(r, found, &rec))
    return true;
  /* 2. Claim the key; held by a request in flight: 409. */
  unsigned long at_claim = 0;
  if (!inflight_add(k, &at_claim)) {
    tp_reply_error(r, TP_ERR_IDEMPOTENCY_KEY_IN_USE, NULL, NULL);
    return true;
  }
  /* 3. A request with this key may have committed its reply and left
   *    between 1 and 2; it would have counted a release in the key's bucket.
   *    Then read again, or the payment would run a second time. (Rare: one
   *    bucket of 4096 in a few microseconds.) */
  if (at_claim != before) {
    memset(&rec, 0, sizeof rec);
    found = tp_app.store.ops->idem_get(tp_app.store.cls, r->merchant.id, r->idem_slot, &rec);
    if (answer_from_store(r, found, &rec)) {
      inflight_del(k);
      return true;
    }
  }
  r->idem_registered = true;
  return false;
}

void tp_idem_record(struct tp_req *r, struct tp_cs *cs)
{
  if (!r->has_idem || !r->idem_registered)
    return;
  /* a webhook endpoint's secret, never kept plain */
  char *sealed = r->route && (r->route->flags & TP_R_SEALED_REPLY) && r->status == 200
                   ? tp_webhooks_idem_seal(r->resp)
                   : NULL;
  tp_cs_idem(cs, r->merchant.id, r->idem_slot, r->req_hash, r->request_id, (int)r->status, sealed ? sealed : r->resp);
  free(sealed);
}

/* Stripe saves the result of a request that "started executing", errors
 * included, and replays it to a retry with the key; only a request that
 * failed validation, or conflicted with one executing concurrently, saves
 * nothing. Turnpike's errors that come from the state of the objects the
 * request acted on, not from its parameters (a capture of a PaymentIntent
 * that already succeeded, a refund of a charge refunded meanwhile), are
 * such results. A missing object and an amount past what is left are the
 * client's parameters to fix, so they store nothing. */
bool tp_idem_keeps_error(const struct tp_req *r)
{
  static const int kept[] = {
    TP_ERR_PAYMENT_INTENT_UNEXPECTED_STATE, TP_ERR_PAYMENT_INTENT_AMOUNT_LOCKED, TP_ERR_CAPTURE_UNAUTHORIZED_PAYMENT,
    TP_ERR_CAPTURE_CHARGE_AUTHORIZATION_EXPIRED, TP_ERR_PAYMENT_METHOD_UNEXPECTED_STATE,
    TP_ERR_PAYMENT_METHOD_NOT_ATTACHED, TP_ERR_PAYMENT_METHOD_ALREADY_ATTACHED, TP_ERR_TOKEN_ALREADY_USED,
    TP_ERR_SETUP_INTENT_UNEXPECTED_STATE, TP_ERR_INTENT_INVALID_STATE, TP_ERR_CHARGE_ALREADY_REFUNDED,
    TP_ERR_CHARGE_ALREADY_CAPTURED, TP_ERR_CHARGE_NOT_REFUNDABLE, TP_ERR_CHARGE_EXPIRED_FOR_CAPTURE,
    TP_ERR_CHARGE_DISPUTED, TP_ERR_REFUND_DISPUTED_PAYMENT, TP_ERR_REFUND_NOT_CANCELABLE,
    TP_ERR_DISPUTE_ALREADY_CLOSED, TP_ERR_STATUS_TRANSITION_INVALID, TP_ERR_PAYMENT_METHOD_CONSUMED,
    TP_ERR_ATTEMPT_UNEXPECTED_STATE, TP_ERR_PAYMENT_METHOD_MISSING, /* a confirm of an intent with none, as a
                                                                       * SetupIntent's is */
  };
  if (!r->has_idem || !r->idem_registered || r->settled_error || r->status < 400 || r->status >= 500 || !r->err)
    return false;
  for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
    if (kept[i] == r->err)
      return true;
  return false;
}

void tp_idem_record_pending(struct tp_req *r, struct tp_cs *cs)
{
  if (!r->has_idem || !r->idem_registered)
    return;
  tp_cs_idem(cs, r->merchant.id, r->idem_slot, r->req_hash, r->request_id, 0, NULL);
}

void tp_idem_end(struct tp_req *r)
{
  if (!r->idem_registered)
    return;
  char k[400];
  full_key(r, k, sizeof k);
  inflight_del(k);
  r->idem_registered = false;
}
