/* Webhook delivery from the transactional outbox.
 *
 * Events are committed with the state change that caused them. The writer
 * tells us about each committed event (tp_writer_subscribe); the delivery
 * thread then commits one webhook_deliveries row per matching enabled
 * endpoint and delivers from those rows: the rows, not memory, say what is
 * still owed. A periodic scan (and one at start) adds the rows a crash or a
 * full inbox lost, so after a kill -9 every event is still delivered: at
 * least once, with its stable event id.
 *
 * One thread drives libcurl's multi interface. Each endpoint has its own
 * bound of deliveries in flight and its own due time, so a slow or dead
 * endpoint only ever occupies its own slots. A delivery stays "in flight"
 * in memory until its outcome is committed, so the pending row is never
 * picked twice. Failures are retried with exponential backoff and jitter
 * for up to max_age; an endpoint failing continuously for disable_after is
 * disabled and a turnpike.webhook_endpoint.disabled event is emitted. */
#include "net/webhooks.h"
#include "api/http.h"
#include "api/objects.h"
#include "config.h"
#include "jpack.h"
#include "log.h"
#include "main/features.h"
#include "metrics.h"
#include "store/store.h"
#include "util.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* Limits. */
#define WH_INBOX_MAX 65536       /* queued committed events before we fall back to the scan */
#define WH_MAX_ENDPOINTS 16384   /* endpoints loaded at once (all merchants; ~2.5 KB each) */
#define WH_SCAN_PAGE 500         /* events read per scan query */
#define WH_SCAN_PAGES 20         /* pages per endpoint per scan */
#define WH_SCAN_SETTLE_S 60      /* events younger than this may still have older ids in flight */
#define WH_MAX_SCHEDULE 32       /* entries of retry_schedule */
#define WH_ERR_MAX 200           /* bytes of an attempt's error text */
#define WH_IDLE_MS 1000          /* longest poll sleep */
#define WH_USER_AGENT "Turnpike/1.0 (+webhooks)"

static const char *const known_types[] = {
  "balance.available",
  "charge.captured", "charge.dispute.closed", "charge.dispute.created", "charge.dispute.funds_reinstated",
  "charge.dispute.funds_withdrawn", "charge.dispute.updated", "charge.expired", "charge.failed",
  "charge.pending", "charge.refund.updated", "charge.refunded", "charge.succeeded", "charge.updated",
  "customer.created", "customer.deleted", "customer.source.created", "customer.source.deleted",
  "customer.source.updated", "customer.updated",
  "payment_intent.amount_capturable_updated", "payment_intent.canceled", "payment_intent.created",
  "payment_intent.partially_funded", "payment_intent.payment_failed", "payment_intent.processing",
  "payment_intent.requires_action", "payment_intent.succeeded",
  "payment_method.attached", "payment_method.automatically_updated", "payment_method.detached",
  "payment_method.updated",
  "payout.created", "payout.failed", "payout.paid",
  "radar.early_fraud_warning.created", "radar.early_fraud_warning.updated",
  "refund.created", "refund.failed", "refund.updated",
  "setup_intent.canceled", "setup_intent.created", "setup_intent.requires_action", "setup_intent.setup_failed",
  "setup_intent.succeeded",
  "turnpike.alert.opened", "turnpike.alert.resolved", TP_WH_DISABLED_EVENT,
  NULL,
};

bool tp_event_type_reports(const char *type)
{
  return type && (strncmp(type, "balance.", 8) == 0 || strncmp(type, "payout.", 7) == 0);
}

bool tp_webhooks_event_type_known(const char *type)
{
  for (int i = 0; known_types[i]; i++)
    if (strcmp(type, known_types[i]) == 0)
      return true;
  return false;
}

bool tp_webhooks_event_matches(const char *pattern, const char *type)
{
  return strcmp(pattern, "*") == 0 || strcmp(pattern, type) == 0;
}

void tp_webhooks_new_secret(char out[TP_WH_SECRET_MAX])
{
  /* 43 base62 characters: 256 bits, like 32 random bytes. */
  char r[44];
  tp_random_b62(r, 43);
  snprintf(out, TP_WH_SECRET_MAX, "whsec_%s", r);
}

/* ---- secrets at rest ------------------------------------------------------- */
/* Sealed: hex(nonce(12) | tag(16) | ciphertext) under SHA-256(vault key |
 * label), the endpoint id as associated data, so a sealed secret cannot be
 * moved to another endpoint. */
static void secret_key(uint8_t key[32])
{
  uint8_t buf[32 + 32];
  memcpy(buf, tp_app.vault_key, 32);
  memcpy(buf + 32, "turnpike webhook secrets v1\0\0\0\0\0", 32);
  tp_sha256(buf, sizeof buf, key);
}

static int gcm(bool seal, const uint8_t key[32], const uint8_t nonce[12], const char *aad, const uint8_t *in,
               size_t inlen, uint8_t *out, uint8_t tag[16])
{
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  int ok = c != NULL, n = 0;
  ok = ok && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce, seal ? 1 : 0) == 1;
  ok = ok && EVP_CipherUpdate(c, NULL, &n, (const uint8_t *)aad, (int)strlen(aad)) == 1;
  ok = ok && EVP_CipherUpdate(c, out, &n, in, (int)inlen) == 1;
  if (ok && !seal)
    ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1;
  ok = ok && EVP_CipherFinal_ex(c, out + n, &n) == 1;
  if (ok && seal)
    ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
  EVP_CIPHER_CTX_free(c);
  return ok ? 0 : -1;
}

int tp_webhooks_seal_secret(const char *endpoint_id, const char *secret, char out[TP_WH_SEALED_MAX])
{
  size_t len = strlen(secret);
  if (len >= TP_WH_SECRET_MAX)
    return -1;
  uint8_t key[32], buf[12 + 16 + TP_WH_SECRET_MAX];
  secret_key(key);
  tp_random(buf, 12);
  int rc = gcm(true, key, buf, endpoint_id, (const uint8_t *)secret, len, buf + 28, buf + 12);
  OPENSSL_cleanse(key, sizeof key);
  if (rc != 0)
    return -1;
  tp_hex(buf, 28 + len, out);
  return 0;
}

int tp_webhooks_open_secret(const char *endpoint_id, const char *sealed, char out[TP_WH_SECRET_MAX])
{
  size_t hl = strlen(sealed);
  if (hl % 2 || hl < 2 * 29 || hl / 2 - 28 >= TP_WH_SECRET_MAX)
    return -1;
  uint8_t buf[12 + 16 + TP_WH_SECRET_MAX];
  size_t n = hl / 2;
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    if (sscanf(sealed + 2 * i, "%2x", &v) != 1)
      return -1;
    buf[i] = (uint8_t)v;
  }
  uint8_t key[32];
  secret_key(key);
  int rc = gcm(false, key, buf, endpoint_id, buf + 28, n - 28, (uint8_t *)out, buf + 12);
  OPENSSL_cleanse(key, sizeof key);
  if (rc != 0)
    return -1;
  out[n - 28] = '\0';
  return 0;
}

/* ---- state ------------------------------------------------------------------ */
struct ep {
  char id[TP_ID_MAX];
  char merchant[TP_ID_MAX];
  char floor0[TP_ID_MAX];       /* "evt_" + the endpoint id's time part: older events are not ours */
  char scan_floor[TP_ID_MAX];
  char url[TP_WH_URL_MAX + 1];
  char secret[TP_WH_SECRET_MAX];
  char api_version[48];         /* the endpoint's api_version ("" none): its events say it */
  json_t *events;               /* enabled_events */
  bool enabled;
  int64_t failing_since;        /* unix ms, 0 = healthy */
  /* Jobs whose change sets write this endpoint's row (failing_since, the
   * disable) and are not committed yet: meanwhile load_endpoints lets the
   * row turn the endpoint off but not back on, and keeps failing_since as
   * here. A reload in that window turned a just-disabled endpoint back on;
   * its next failure disabled it again, with a second disabled event and
   * a delivery made after the decision (review, session 42). */
  int row_writes;
  bool held;                    /* a reload kept memory's values over the row's: read it again once written */
  int inflight;                 /* in curl or waiting for the outcome's commit */
  int sending;                  /* of those, requests in curl: what max_in_flight_per_endpoint bounds */
  int64_t next_check;           /* unix ms when its rows may next be due; 0 = now */
  uint8_t row_hash[32];         /* of its status, sealed secret and data as loaded (load_endpoints) */
  int64_t fail_logged;          /* monotonic ms of its last webhook_delivery_failed line */
  unsigned fail_quiet;          /* failures since that line, not logged */
};

/* A dead endpoint fails every delivery of every retry: one log line per
 * endpoint per minute, counting the ones it stands for (every attempt is
 * in webhook_attempts and the deliveries metric). */
#define FAIL_LOG_EVERY_MS 60000

/* Endpoints whose delivery rows a commit added (rows_done). */
struct poll_ids {
  struct poll_ids *next;
  size_t n, cap;
  char id[][TP_ID_MAX];
};

struct job {
  struct job *next;             /* W.jobs */
  struct job *settled_next;     /* W.settled */
  char endpoint[TP_ID_MAX];
  char event[TP_ID_MAX];
  char merchant[TP_ID_MAX];
  int attempt;                  /* 1 for the first */
  bool ep_write;                /* its change set writes the endpoint's row (ep.row_writes) */
  int64_t created_ms;           /* when the delivery first became due */
  CURL *easy;
  struct curl_slist *hdrs;
  char *body;
  int64_t t0_ns;
  char errbuf[CURL_ERROR_SIZE];
  char blocked[64];             /* the address refused by private_networks = deny */
};

struct ev_msg {
  struct ev_msg *next;
  char merchant[TP_ID_MAX];
  char id[TP_ID_MAX];
  char type[128];
};

static struct {
  /* settings */
  int64_t connect_ms, timeout_ms, per_endpoint, global_max, retry_base_ms, retry_max_ms, max_age_ms,
    disable_after_ms, scan_ms, stop_wait_ms;
  double retry_factor;
  int64_t schedule[WH_MAX_SCHEDULE];
  int nschedule;
  bool enabled;
  bool deny_private;            /* [webhooks] private_networks = deny */

  /* inbox: written by the writer thread and handlers, read by ours */
  pthread_mutex_t mu;
  struct ev_msg *ev_head, *ev_tail;
  size_t ev_len;
  struct job *settled;
  bool changed, poll, scan_now, stopping, exited, started;
  struct poll_ids *polls;       /* endpoints that got delivery rows (poll without them: every one) */
  CURLM *multi;
  _Atomic size_t n_enabled;     /* enabled endpoints loaded; 0 = ignore events */

  /* owned by the delivery thread */
  pthread_t thread;
  struct ep *eps;
  size_t neps;
  size_t dispatch_rr;           /* where the next dispatch pass starts */
  struct job *jobs;             /* in flight or settling */
  int njobs;
  int64_t next_scan, next_reload;
} W = {.mu = PTHREAD_MUTEX_INITIALIZER};

static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a);

/* Store calls that take ownership of their JSON arguments. */
static json_t *wq(const char *sql, json_t *args)
{
  return tp_store_query_take(&tp_app.store, sql, args);
}

static void wsql(struct tp_cs *cs, const char *sql, json_t *args, int min_changes)
{
  tp_cs_sql(cs, sql, args, min_changes);
  json_decref(args);
}

static void wake(void)
{
  pthread_mutex_lock(&W.mu);
  if (W.multi && !W.exited)
    curl_multi_wakeup(W.multi);
  pthread_mutex_unlock(&W.mu);
}

static void poll_ids_add(struct poll_ids **ids, const char *id);

void tp_webhooks_changed(const char *endpoint)
{
  struct poll_ids *ids = NULL;
  if (endpoint && *endpoint)
    poll_ids_add(&ids, endpoint);
  pthread_mutex_lock(&W.mu);
  W.changed = true;
  if (ids && W.exited) {
    free(ids);
  } else if (ids) {
    ids->next = W.polls;
    W.polls = ids;
  }
  pthread_mutex_unlock(&W.mu);
  wake();
}

static int64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writer thread: copy and signal. */
static void on_event(const char *merchant, const char *event_id, const char *type, const char *event_json,
                     size_t len, void *arg)
{
  (void)event_json;
  (void)len;
  (void)arg;
  if (!merchant || !event_id || !type || atomic_load(&W.n_enabled) == 0)
    return; /* an endpoint being created now is covered by the scan */
  pthread_mutex_lock(&W.mu);
  if (!W.started || W.exited || W.stopping) {
    pthread_mutex_unlock(&W.mu);
    return; /* the scan after the next start finds it */
  }
  if (W.ev_len >= WH_INBOX_MAX) {
    W.scan_now = true;
    pthread_mutex_unlock(&W.mu);
    wake();
    return;
  }
  struct ev_msg *m = calloc(1, sizeof *m);
  if (!m) {
    W.scan_now = true;
    pthread_mutex_unlock(&W.mu);
    return;
  }
  tp_scopy(m->merchant, sizeof m->merchant, merchant);
  tp_scopy(m->id, sizeof m->id, event_id);
  tp_scopy(m->type, sizeof m->type, type);
  if (W.ev_tail)
    W.ev_tail->next = m;
  else
    W.ev_head = m;
  W.ev_tail = m;
  bool first = W.ev_len++ == 0;
  pthread_mutex_unlock(&W.mu);
  if (first) /* one wake-up per batch the thread has not taken yet */
    wake();
}

static void job_free(struct job *j)
{
  if (j->easy)
    curl_easy_cleanup(j->easy);
  curl_slist_free_all(j->hdrs);
  free(j->body);
  free(j);
}

/* W.eps is in id order (load_endpoints reads ORDER BY id): a binary search. */
static struct ep *ep_find(const char *id)
{
  size_t lo = 0, hi = W.neps;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(W.eps[mid].id, id);
    if (c == 0)
      return &W.eps[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

static bool job_inflight(const char *endpoint, const char *event)
{
  for (struct job *j = W.jobs; j; j = j->next)
    if (strcmp(j->endpoint, endpoint) == 0 && strcmp(j->event, event) == 0)
      return true;
  return false;
}

/* "evt_" + the endpoint id's suffix: events at or below it are older than
 * the endpoint (ids sort by time). */
static void endpoint_floor(const char *endpoint_id, char out[TP_ID_MAX])
{
  const char *dash = strchr(endpoint_id, '_');
  snprintf(out, TP_ID_MAX, "evt_%s", dash ? dash + 1 : "");
}

bool tp_webhooks_endpoint_wants(const char *endpoint_id, const json_t *enabled_events, const char *event_id,
                                const char *type)
{
  char floor[TP_ID_MAX];
  endpoint_floor(endpoint_id, floor);
  if (strcmp(event_id, floor) <= 0)
    return false;
  size_t i;
  const json_t *v;
  json_array_foreach(enabled_events, i, v)
  {
    const char *p = json_string_value(v);
    if (p && tp_webhooks_event_matches(p, type))
      return true;
  }
  return false;
}

static bool ep_wants(const struct ep *e, const char *event_id, const char *type)
{
  return e->enabled && tp_webhooks_endpoint_wants(e->id, e->events, event_id, type);
}

bool tp_webhooks_owed(const char *endpoint_id, bool enabled, const json_t *enabled_events, const char *event_id,
                      const char *type)
{
  /* No row yet counts only above the endpoint's scan floor: below it the
   * thread has looked and decided (events of a disabled period, or of types
   * it did not want then), and such an event showed pending_webhooks 1 for
   * good and fell out of both delivery_success lists. */
  json_t *rows = tp_store_query_take(&tp_app.store,
                                     "SELECT (SELECT state FROM webhook_deliveries WHERE endpoint=?1 AND event=?2) "
                                     "AS state, (SELECT scan_floor FROM webhook_endpoints WHERE id=?1) AS floor",
                                     tp_pack("[s, s]", endpoint_id, event_id));
  json_t *row = json_array_get(rows, 0);
  const char *state = json_string_value(json_object_get(row, "state"));
  const char *floor = json_string_value(json_object_get(row, "floor"));
  bool owed = state ? strcmp(state, "pending") == 0
                    : row && enabled && (!floor || strcmp(event_id, floor) > 0) &&
                          tp_webhooks_endpoint_wants(endpoint_id, enabled_events, event_id, type);
  json_decref(rows);
  return owed;
}

/* An endpoint created with an api_version gets its events saying that
 * version (Stripe renders them in it; Turnpike has one shape), so that
 * SDKs that check an event's version against their own (stripe-go's and
 * Stripe.net's ConstructEvent) accept them. The stored text names
 * TP_API_VERSION near its start (tp_cs_put_event_around's head). Returns the
 * body to send (body itself when there is nothing to change). */
static char *with_api_version(char *body, const char *version)
{
  static const char mark[] = "\"api_version\":\"" TP_API_VERSION "\"";
  if (!version[0] || strcmp(version, TP_API_VERSION) == 0)
    return body;
  size_t len = strlen(body);
  const char *at = memmem(body, len < 160 ? len : 160, mark, sizeof mark - 1);
  if (!at)
    return body;
  size_t vl = strlen(version), head = (size_t)(at - body) + 15, old = sizeof TP_API_VERSION - 1;
  char *out = malloc(len - old + vl + 1);
  if (!out)
    abort();
  memcpy(out, body, head);
  memcpy(out + head, version, vl);
  memcpy(out + head + vl, body + head + old, len - head - old + 1);
  free(body);
  return out;
}

/* The delivered event says how many endpoints still owe it a successful
 * delivery, this one included, as Stripe's payloads do. The stored text
 * says 0 (the count changes after the event is written): the envelope's
 * tail, written by tp_put_emit, is patched before the body is signed.
 * Returns the body to send (body itself when there is nothing to patch). */
static char *with_pending(char *body, const char *merchant, const char *endpoint_id, const char *event_id)
{
  static const char pw[] = "},\"livemode\":false,\"pending_webhooks\":0,";
  static const char ty[] = "},\"type\":\"";
  size_t len = strlen(body);
  const char *at = NULL, *tp = NULL;
  /* the envelope's own fields come after data.object: the last occurrences */
  for (const char *p = body; (p = memmem(p, len - (size_t)(p - body), pw, sizeof pw - 1)); p++)
    at = p;
  for (const char *p = body; (p = memmem(p, len - (size_t)(p - body), ty, sizeof ty - 1)); p++)
    tp = p;
  if (!at || !tp || tp < at)
    return body;
  char type[128];
  const char *t = tp + sizeof ty - 1;
  size_t tn = strcspn(t, "\"\\");
  if (tn == 0 || tn >= sizeof type || t[tn] != '"')
    return body;
  memcpy(type, t, tn);
  type[tn] = '\0';
  /* The endpoint delivering it owes it (its row is pending: that is why
   * it is being delivered), without asking the store; the merchant's
   * other endpoints are asked. */
  long long n = 0;
  for (size_t i = 0; i < W.neps; i++)
    if (strcmp(W.eps[i].merchant, merchant) == 0)
      n += strcmp(W.eps[i].id, endpoint_id) == 0 ||
           tp_webhooks_owed(W.eps[i].id, W.eps[i].enabled, W.eps[i].events, event_id, type);
  if (n == 0)
    return body;
  char num[24];
  int nl = snprintf(num, sizeof num, "%lld", n);
  size_t digit = (size_t)(at - body) + sizeof pw - 3; /* the '0' */
  char *out = malloc(len + (size_t)nl);
  if (!out)
    return body;
  memcpy(out, body, digit);
  memcpy(out + digit, num, (size_t)nl);
  memcpy(out + digit + nl, body + digit + 1, len - digit); /* with the NUL */
  free(body);
  return out;
}

/* ---- endpoints ------------------------------------------------------------ */
static void eps_free(struct ep *eps, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    json_decref(eps[i].events);
    OPENSSL_cleanse(eps[i].secret, sizeof eps[i].secret);
  }
  free(eps);
}

/* Reload every endpoint; keeps in-flight counts of those that stay. */
static void load_endpoints(void)
{
  json_t *rows = wq("SELECT id, merchant, status, secret, failing_since, scan_floor, data FROM "
                      "webhook_endpoints ORDER BY id LIMIT ?1",
                      tp_pack("[I]", (json_int_t)WH_MAX_ENDPOINTS));
  if (!rows) {
    tp_log(TP_LOG_ERROR, "webhook_endpoints_load_failed", NULL);
    return;
  }
  size_t n = json_array_size(rows);
  if (n >= WH_MAX_ENDPOINTS)
    tp_log(TP_LOG_ERROR, "webhook_endpoints_capped", "{s:I, s:s}", "loaded", (json_int_t)n, "effect",
           "endpoints past the cap (in id order) get no deliveries");
  struct ep *eps = calloc(n ? n : 1, sizeof *eps);
  if (!eps)
    abort();
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    json_t *row = json_array_get(rows, i);
    struct ep *e = &eps[k];
    const char *id = json_string_value(json_object_get(row, "id"));
    const char *sealed = json_string_value(json_object_get(row, "secret"));
    const char *status = json_string_value(json_object_get(row, "status"));
    const char *text = json_string_value(json_object_get(row, "data")) ?: "";
    if (!id || !sealed)
      goto unusable;
    /* An endpoint as it was at the last load is taken over as it stands
     * (its secret not decrypted again, its due rows not asked for again):
     * every change to one endpoint reloads them all, and with thousands
     * that cost every merchant's deliveries seconds. What changed is asked
     * anew; a delivery row written since wakes its endpoint (rows_done,
     * tp_webhooks_changed). */
    char *key = NULL;
    uint8_t hash[32];
    if (asprintf(&key, "%s\x1f%s\x1f%s", status ? status : "", sealed, text) < 0)
      abort();
    tp_sha256(key, strlen(key), hash);
    free(key);
    struct ep *old = ep_find(id);
    bool same = old && memcmp(old->row_hash, hash, sizeof hash) == 0;
    if (old) {
      e->fail_logged = old->fail_logged;
      e->fail_quiet = old->fail_quiet;
    }
    if (same) {
      memcpy(e->secret, old->secret, sizeof e->secret);
      tp_scopy(e->url, sizeof e->url, old->url);
      tp_scopy(e->api_version, sizeof e->api_version, old->api_version);
      e->events = json_incref(old->events);
      e->next_check = old->next_check;
    } else {
      json_t *data = json_loads(text, 0, NULL);
      const char *url = json_string_value(json_object_get(data, "url"));
      if (!url || strlen(url) > TP_WH_URL_MAX || tp_webhooks_open_secret(id, sealed, e->secret)) {
        json_decref(data);
        goto unusable;
      }
      tp_scopy(e->url, sizeof e->url, url);
      tp_scopy(e->api_version, sizeof e->api_version,
               json_string_value(json_object_get(data, "api_version")) ?: "");
      e->events = json_incref(json_object_get(data, "enabled_events"));
      if (!json_is_array(e->events)) {
        json_decref(e->events);
        e->events = json_array();
      }
      json_decref(data);
      e->next_check = 0;
    }
    memcpy(e->row_hash, hash, sizeof hash);
    tp_scopy(e->id, sizeof e->id, id);
    tp_scopy(e->merchant, sizeof e->merchant, json_string_value(json_object_get(row, "merchant")) ?: "");
    endpoint_floor(id, e->floor0);
    tp_scopy(e->scan_floor, sizeof e->scan_floor, json_string_value(json_object_get(row, "scan_floor")) ?: "");
    e->enabled = status && strcmp(status, "enabled") == 0;
    e->failing_since = json_integer_value(json_object_get(row, "failing_since"));
    if (old) {
      e->inflight = old->inflight;
      e->sending = old->sending;
      e->row_writes = old->row_writes;
      if (old->row_writes > 0) {
        /* Our own write to the row is on its way, so the row may be older
         * than memory: a disable decided here stands; a disable in the row
         * (the merchant's) wins; failing_since is memory's while the two
         * agree on the status. The held values last until the write is
         * reaped, which asks for a reload (reap_settled). */
        bool row_enabled = e->enabled;
        int64_t row_failing = e->failing_since;
        e->enabled = row_enabled && old->enabled;
        if (row_enabled == old->enabled)
          e->failing_since = old->failing_since;
        e->held = old->held || e->enabled != row_enabled || e->failing_since != row_failing;
      }
    }
    k++;
    continue;
  unusable:
    OPENSSL_cleanse(e->secret, sizeof e->secret);
    tp_log(TP_LOG_ERROR, "webhook_endpoint_unusable", "{s:s?}", "endpoint", id);
  }
  json_decref(rows);
  eps_free(W.eps, W.neps);
  W.eps = eps;
  W.neps = k;
  size_t en = 0;
  for (size_t i = 0; i < k; i++)
    en += eps[i].enabled;
  atomic_store(&W.n_enabled, en);
}

/* ---- retry schedule -------------------------------------------------------- */
/* Delay after the n-th failed attempt (n >= 1), with +-20% jitter. */
static int64_t backoff_ms(int n)
{
  int64_t d;
  if (W.nschedule > 0) {
    d = W.schedule[n - 1 < W.nschedule ? n - 1 : W.nschedule - 1] * 1000;
  } else {
    double x = (double)W.retry_base_ms;
    for (int i = 1; i < n && x < (double)W.retry_max_ms; i++)
      x *= W.retry_factor;
    d = x > (double)W.retry_max_ms ? W.retry_max_ms : (int64_t)x;
  }
  if (d < 1)
    d = 1;
  uint32_t r;
  tp_random(&r, sizeof r);
  int64_t span = d * 2 / 5;
  return d - d / 5 + (span > 0 ? (int64_t)(r % (uint64_t)(span + 1)) : 0);
}

/* ---- committing --------------------------------------------------------- */
static void settled_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct job *j = arg;
  if (rc != 0)
    tp_log(TP_LOG_WARN, "webhook_outcome_not_stored", "{s:s, s:s}", "endpoint", j->endpoint, "event_id", j->event);
  pthread_mutex_lock(&W.mu);
  if (W.exited) {
    pthread_mutex_unlock(&W.mu);
    job_free(j);
    return;
  }
  j->settled_next = W.settled;
  W.settled = j;
  pthread_mutex_unlock(&W.mu);
  wake();
}

/* Delivery rows were committed: look for due ones (endpoints unchanged).
 * arg: the endpoints that got rows (a struct poll_ids, owned), so that only
 * they are asked again: one query per endpoint, and with thousands of
 * endpoints on the gateway each event cost a pass over all of them; NULL:
 * every endpoint. */
static void rows_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  (void)rc;
  struct poll_ids *ids = arg;
  pthread_mutex_lock(&W.mu);
  if (ids && W.exited) {
    free(ids); /* nobody left to poll */
  } else if (ids) {
    ids->next = W.polls;
    W.polls = ids;
  } else {
    W.poll = true;
  }
  pthread_mutex_unlock(&W.mu);
  wake();
}

static void poll_ids_add(struct poll_ids **ids, const char *id)
{
  struct poll_ids *p = *ids;
  if (!p || p->n == p->cap) {
    size_t cap = p ? p->cap * 2 : 8;
    struct poll_ids *q = realloc(p, sizeof *q + cap * sizeof q->id[0]);
    if (!q)
      abort();
    q->cap = cap;
    if (!p) {
      q->n = 0;
      q->next = NULL;
    }
    *ids = p = q;
  }
  tp_scopy(p->id[p->n++], sizeof p->id[0], id);
}

/* Submit; false (and cs freed) when the writer refuses. */
static bool submit(struct tp_cs *cs)
{
  if (tp_writer_submit(cs) == 0)
    return true;
  tp_cs_free(cs);
  return false;
}

/* Decided against the endpoint as committed, not as this thread last
 * loaded it: a row queued before a change reached the thread would
 * otherwise be committed after it. So only while the endpoint exists (after
 * a DELETE such rows stayed pending for good: nothing delivers or purges
 * them, and the outbox lag metric grew without end), is enabled, and the
 * event is above its scan floor (a re-enable or a new enabled_events moves
 * the floor to that moment: events of the disabled period, or from before
 * the new filter, are not its). */
static const char *ins_delivery =
  "INSERT INTO webhook_deliveries(endpoint, event, merchant, state, attempts, next_at, created) "
  "SELECT ?1, ?2, ?3, 'pending', 0, ?4, ?4 WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = ?1 AND "
  "status = 'enabled' AND (scan_floor IS NULL OR scan_floor < ?2)) "
  "ON CONFLICT(endpoint, event) DO NOTHING";

/* Commit delivery rows for new events; the commit wakes the dispatcher. */
static void fanout(struct ev_msg *list)
{
  struct tp_cs *cs = NULL;
  struct poll_ids *ids = NULL;
  int64_t t = now_ms();
  for (struct ev_msg *m = list; m; m = m->next) {
    for (size_t i = 0; i < W.neps; i++) {
      struct ep *e = &W.eps[i];
      if (strcmp(e->merchant, m->merchant) != 0 || !ep_wants(e, m->id, m->type))
        continue;
      if (!cs)
        cs = tp_cs_new();
      wsql(cs, ins_delivery, tp_pack("[s, s, s, I]", e->id, m->id, m->merchant, (json_int_t)t), 0);
      if (!ids || strcmp(ids->id[ids->n - 1], e->id) != 0)
        poll_ids_add(&ids, e->id);
    }
  }
  if (!cs)
    return;
  tp_cs_on_done(cs, rows_done, ids);
  if (!submit(cs)) {
    free(ids); /* the callback never runs */
    pthread_mutex_lock(&W.mu);
    W.scan_now = true;
    pthread_mutex_unlock(&W.mu);
  }
}

/* Add the rows a crash or a full inbox lost; advance each endpoint's floor
 * past events old enough that no older-id event can still be committing. */
static void scan(void)
{
  int64_t t = now_ms();
  int64_t settled_before = t / 1000 - WH_SCAN_SETTLE_S;
  for (size_t i = 0; i < W.neps; i++) {
    struct ep *e = &W.eps[i];
    if (!e->enabled)
      continue;
    char cursor[TP_ID_MAX], floor[TP_ID_MAX];
    tp_scopy(floor, sizeof floor, strcmp(e->scan_floor, e->floor0) > 0 ? e->scan_floor : e->floor0);
    tp_scopy(cursor, sizeof cursor, floor);
    bool floor_moving = true;
    struct tp_cs *cs = NULL;
    /* Only events on disk (commit_sync = pipelined): a row made for one
     * committed and not yet synced was delivered, and a power cut then
     * erased the event; it gets its row live, after its sync. */
    char bound[TP_ID_MAX];
    tp_writer_durable_bound(bound);
    for (int page = 0; page < WH_SCAN_PAGES; page++) {
      json_t *rows = wq("SELECT e.id AS id, e.type AS type, e.created AS created, "
                          "(SELECT COUNT(*) FROM webhook_deliveries d WHERE d.endpoint=?2 AND "
                          "d.event=e.id) AS has FROM events e WHERE e.merchant=?1 AND e.id>?3 "
                          "AND (?5 = '' OR e.id < ?5) ORDER BY e.id LIMIT ?4",
                          tp_pack("[s, s, s, I, s]", e->merchant, e->id, cursor, (json_int_t)WH_SCAN_PAGE, bound));
      if (!rows)
        break;
      size_t n = json_array_size(rows);
      /* and again once read: a batch committed between the bound and the
       * read's snapshot set it before its COMMIT (stream.c replay_step) */
      tp_writer_durable_bound(bound);
      bool bounded = false;
      for (size_t k = 0; k < n; k++) {
        json_t *row = json_array_get(rows, k);
        const char *id = json_string_value(json_object_get(row, "id"));
        const char *type = json_string_value(json_object_get(row, "type"));
        if (!id)
          continue;
        if (bound[0] && strcmp(id, bound) >= 0) {
          bounded = true; /* not on disk yet: its row comes live */
          break;
        }
        if (type && json_integer_value(json_object_get(row, "has")) == 0 && ep_wants(e, id, type)) {
          if (!cs)
            cs = tp_cs_new();
          wsql(cs, ins_delivery, tp_pack("[s, s, s, I]", e->id, id, e->merchant, (json_int_t)t), 0);
        }
        if (floor_moving && json_integer_value(json_object_get(row, "created")) < settled_before)
          tp_scopy(floor, sizeof floor, id);
        else
          floor_moving = false;
        tp_scopy(cursor, sizeof cursor, id);
      }
      json_decref(rows);
      if (n < WH_SCAN_PAGE || bounded)
        break;
    }
    if (strcmp(floor, e->scan_floor) != 0) {
      if (!cs)
        cs = tp_cs_new();
      /* Only forward: re-enabling moves the floor ahead of us. */
      wsql(cs, "UPDATE webhook_endpoints SET scan_floor=?2 WHERE id=?1 AND scan_floor<?2",
           tp_pack("[s, s]", e->id, floor), 0);
      tp_scopy(e->scan_floor, sizeof e->scan_floor, floor);
    }
    if (cs) {
      struct poll_ids *ids = NULL;
      poll_ids_add(&ids, e->id);
      tp_cs_on_done(cs, rows_done, ids);
      if (!submit(cs))
        free(ids);
    }
  }
  /* Outbox lag: how long the oldest due delivery has waited. A disabled
   * endpoint's deliveries are not due (they wait for it to be enabled
   * again): counted, one dead endpoint would raise the lag for ever. */
  json_t *rows = wq("SELECT MIN(d.next_at) AS m, COUNT(*) AS n FROM webhook_deliveries d JOIN webhook_endpoints e "
                    "ON e.id = d.endpoint WHERE d.state='pending' AND e.status='enabled'", NULL);
  json_t *m = json_object_get(json_array_get(rows, 0), "m");
  int64_t lag = json_is_integer(m) && json_integer_value(m) < t ? (t - json_integer_value(m)) / 1000 : 0;
  tp_metric_set("turnpike_outbox_lag_seconds", NULL, lag);
  tp_metric_set("turnpike_webhook_pending_deliveries", NULL,
                json_integer_value(json_object_get(json_array_get(rows, 0), "n")));
  tp_metric_set("turnpike_webhook_in_flight", NULL, W.njobs);
  json_decref(rows);
}

/* ---- delivering ------------------------------------------------------------ */
static size_t discard(char *p, size_t sz, size_t n, void *arg)
{
  (void)p;
  (void)arg;
  return sz * n; /* the total timeout bounds how long a body may stream */
}

/* Start one delivery; false if it could not start (row left for later). */
static bool start_job(struct ep *e, const char *event_id, int attempts, int64_t created_ms)
{
  char *body = tp_store_get(&tp_app.store, TP_K_EVENT, e->merchant, event_id);
  if (!body && tp_store_read_failed) {
    /* Not gone: unreadable now (an I/O error, a busy store). Left for later. */
    tp_log(TP_LOG_WARN, "webhook_event_unreadable", "{s:s, s:s}", "endpoint", e->id, "event_id", event_id);
    return false;
  }
  if (!body) {
    /* The event is gone: nothing can ever be delivered for this row. */
    struct tp_cs *cs = tp_cs_new();
    wsql(cs, "UPDATE webhook_deliveries SET state='failed' WHERE endpoint=?1 AND event=?2",
         tp_pack("[s, s]", e->id, event_id), 0);
    wsql(cs,
         "UPDATE webhook_attempts SET next_retry_at=NULL WHERE endpoint=?1 AND event=?2 AND next_retry_at IS NOT NULL "
         "AND attempt = (SELECT max(a.attempt) FROM webhook_attempts a WHERE a.endpoint=?1 AND a.event=?2)",
         tp_pack("[s, s]", e->id, event_id), 0);
    submit(cs);
    return false;
  }
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    abort();
  tp_scopy(j->endpoint, sizeof j->endpoint, e->id);
  tp_scopy(j->event, sizeof j->event, event_id);
  tp_scopy(j->merchant, sizeof j->merchant, e->merchant);
  j->attempt = attempts + 1;
  j->created_ms = created_ms;
  body = with_api_version(with_pending(body, e->merchant, e->id, event_id), e->api_version);
  j->body = body;
  size_t blen = strlen(body);

  /* Stripe's scheme: v1 = HMAC-SHA256(secret, "<t>.<body>"), keyed by the
   * whole "whsec_..." string. */
  int64_t ts = tp_now();
  char tsbuf[24];
  int tl = snprintf(tsbuf, sizeof tsbuf, "%lld.", (long long)ts);
  char *signed_payload = malloc((size_t)tl + blen);
  if (!signed_payload)
    abort();
  memcpy(signed_payload, tsbuf, (size_t)tl);
  memcpy(signed_payload + tl, body, blen);
  char sig[65];
  tp_hmac_sha256_hex(e->secret, strlen(e->secret), signed_payload, (size_t)tl + blen, sig);
  free(signed_payload);
  char hdr[160];
  snprintf(hdr, sizeof hdr, "Stripe-Signature: t=%lld,v1=%s", (long long)ts, sig);
  j->hdrs = curl_slist_append(j->hdrs, hdr);
  j->hdrs = curl_slist_append(j->hdrs, "Content-Type: application/json; charset=utf-8");
  j->hdrs = curl_slist_append(j->hdrs, "User-Agent: " WH_USER_AGENT);
  j->hdrs = curl_slist_append(j->hdrs, "Expect:"); /* no 100-continue round trip */
  j->hdrs = curl_slist_append(j->hdrs, "Cache-Control: no-cache");

  CURL *c = curl_easy_init();
  if (!c || !j->hdrs) {
    job_free(j);
    if (c)
      curl_easy_cleanup(c);
    return false;
  }
  j->easy = c;
  curl_easy_setopt(c, CURLOPT_URL, e->url);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_POST, 1L);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, j->body);
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, j->hdrs);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)W.connect_ms);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)W.timeout_ms);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, j->errbuf);
  curl_easy_setopt(c, CURLOPT_PRIVATE, j);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, j);
  j->t0_ns = tp_mono_ns();
  if (curl_multi_add_handle(W.multi, c) != CURLM_OK) {
    job_free(j);
    return false;
  }
  j->next = W.jobs;
  W.jobs = j;
  W.njobs++;
  e->inflight++;
  e->sending++;
  return true;
}

/* Emit the disabled event and flip the status, in one commit. */
static void disable_endpoint(struct tp_cs *cs, struct ep *e)
{
  json_t *rows = wq("SELECT data FROM webhook_endpoints WHERE id=?1", tp_pack("[s]", e->id));
  json_t *obj = json_loads(json_string_value(json_object_get(json_array_get(rows, 0), "data")) ?: "", 0, NULL);
  json_decref(rows);
  wsql(cs, "UPDATE webhook_endpoints SET status='disabled', failing_since=NULL WHERE id=?1 AND status='enabled'",
       tp_pack("[s]", e->id), 0);
  if (obj) {
    json_object_set_new(obj, "status", json_string("disabled"));
    tp_emit(cs, NULL, e->merchant, TP_WH_DISABLED_EVENT, obj);
    json_decref(obj);
  }
  tp_log(TP_LOG_WARN, "webhook_endpoint_disabled", "{s:s, s:s, s:I}", "endpoint", e->id, "merchant", e->merchant,
         "failing_ms", (json_int_t)(now_ms() - e->failing_since));
  e->enabled = false;
  e->failing_since = 0;
}

/* Record a finished attempt and schedule what follows; the job stays in
 * flight until that commit is done. */
static void finish(struct job *j, CURLcode cc)
{
  long status = 0;
  curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_multi_remove_handle(W.multi, j->easy);
  int64_t dur_us = (tp_mono_ns() - j->t0_ns) / 1000;
  j->ep_write = false;
  bool ok = cc == CURLE_OK && status >= 200 && status < 300;
  const char *outcome = ok ? "success" : cc == CURLE_OPERATION_TIMEDOUT ? "timeout" : "failure";
  char err[WH_ERR_MAX];
  err[0] = '\0';
  if (cc != CURLE_OK && j->blocked[0])
    snprintf(err, sizeof err, "destination_blocked: %s is not a public address ([webhooks] private_networks = deny)",
             j->blocked);
  else if (cc != CURLE_OK)
    snprintf(err, sizeof err, "%.*s", WH_ERR_MAX - 1, j->errbuf[0] ? j->errbuf : curl_easy_strerror(cc));
  else if (!ok)
    snprintf(err, sizeof err, "HTTP status %ld", status);
  char labels[40];
  snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
  tp_metric_inc("turnpike_webhook_deliveries_total", labels, 1);
  tp_metric_observe_us("turnpike_webhook_delivery_duration_seconds", NULL, dur_us);

  int64_t t = now_ms();
  struct tp_cs *cs = tp_cs_new();
  json_t *next_retry = json_null();
  struct ep *e = ep_find(j->endpoint);
  curl_easy_cleanup(j->easy);
  j->easy = NULL;
  if (e) {
    /* The request is done: its slot goes to the next delivery now, not when
     * the outcome is committed (a group commit under load takes
     * milliseconds, which bounded an endpoint to a few hundred deliveries a
     * second). The job stays in flight, so its row is not picked again. */
    e->sending--;
    e->next_check = 0;
  }
  if (!e) {
    /* Deleted meanwhile: its rows and attempts are gone, record nothing. */
    tp_cs_free(cs);
    settled_done(NULL, 0, j);
    return;
  }
  if (ok) {
    /* "created" guards every update: a resend meanwhile made a new delivery. */
    wsql(cs,
         "UPDATE webhook_deliveries SET state='succeeded', attempts=?3 WHERE endpoint=?1 AND event=?2 AND "
         "created=?4",
         tp_pack("[s, s, i, I]", j->endpoint, j->event, j->attempt, (json_int_t)j->created_ms), 0);
    if (e->failing_since) {
      wsql(cs, "UPDATE webhook_endpoints SET failing_since=NULL WHERE id=?1", tp_pack("[s]", e->id), 0);
      e->failing_since = 0;
      j->ep_write = true;
    }
  } else {
    if (t - j->created_ms >= W.max_age_ms) {
      wsql(cs,
           "UPDATE webhook_deliveries SET state='failed', attempts=?3 WHERE endpoint=?1 AND event=?2 AND "
           "created=?4",
           tp_pack("[s, s, i, I]", j->endpoint, j->event, j->attempt, (json_int_t)j->created_ms), 0);
    } else {
      int64_t next = t + backoff_ms(j->attempt);
      next_retry = json_integer(next / 1000);
      wsql(cs,
           "UPDATE webhook_deliveries SET attempts=?3, next_at=?4 WHERE endpoint=?1 AND event=?2 AND "
           "state='pending' AND created=?5",
           tp_pack("[s, s, i, I, I]", j->endpoint, j->event, j->attempt, (json_int_t)next, (json_int_t)j->created_ms),
           0);
    }
    if (e->enabled) {
      if (!e->failing_since) {
        e->failing_since = t;
        wsql(cs, "UPDATE webhook_endpoints SET failing_since=?2 WHERE id=?1",
             tp_pack("[s, I]", e->id, (json_int_t)t), 0);
        j->ep_write = true;
      } else if (t - e->failing_since >= W.disable_after_ms) {
        disable_endpoint(cs, e);
        j->ep_write = true;
      }
    }
    int64_t mono = tp_mono_ms();
    if (e->fail_logged == 0 || mono - e->fail_logged >= FAIL_LOG_EVERY_MS) {
      tp_log(TP_LOG_INFO, "webhook_delivery_failed", "{s:s, s:s, s:i, s:I, s:s, s:s, s:I}", "endpoint", j->endpoint,
             "event_id", j->event, "attempt", j->attempt, "status", (json_int_t)status, "outcome", outcome, "error",
             err, "failures_not_logged", (json_int_t)e->fail_quiet);
      e->fail_logged = mono;
      e->fail_quiet = 0;
    } else {
      e->fail_quiet++;
    }
  }
  char aid[TP_ID_MAX];
  tp_id_new(aid, "wda");
  json_t *args = tp_pack("[s, s, s, s, i, o, s, s?, I, I, o]", aid, j->endpoint, j->event, j->merchant, j->attempt,
                         status > 0 ? json_integer(status) : json_null(), outcome, err[0] ? err : NULL,
                         (json_int_t)(dur_us / 1000), (json_int_t)(t / 1000), next_retry);
  wsql(cs,
       "INSERT INTO webhook_attempts(id, endpoint, event, merchant, attempt, status_code, outcome, error, "
       "duration_ms, created, next_retry_at) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11 "
       "WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = ?2)",
       args, 0);
  if (j->ep_write)
    e->row_writes++;
  tp_cs_on_done(cs, settled_done, j);
  if (!submit(cs))
    settled_done(NULL, -1, j);
}

/* Take back the jobs whose outcome is committed. */
static void reap_settled(struct job *list)
{
  while (list) {
    struct job *j = list;
    list = j->settled_next;
    for (struct job **pp = &W.jobs; *pp; pp = &(*pp)->next)
      if (*pp == j) {
        *pp = j->next;
        break;
      }
    W.njobs--;
    struct ep *e = ep_find(j->endpoint);
    if (e) {
      e->inflight--;
      e->next_check = 0;
      if (j->ep_write && e->row_writes > 0 && --e->row_writes == 0 && e->held) {
        e->held = false;
        W.next_reload = 0; /* a reload kept memory over the row: read it again now it is written */
      }
    }
    job_free(j);
  }
}

/* Start due deliveries within the bounds; returns the earliest time a
 * not-yet-due row becomes due. */
/* Whether e may start a delivery with W.njobs in flight: within
 * max_in_flight, or, for an endpoint with nothing on the wire, within a
 * reserve of a quarter more. Endpoints that hang until the timeout (64 of
 * them at 4 slots fill the 256) then cannot keep every other endpoint
 * waiting out their timeouts (7 s seen before, with timeout_ms 8000). */
static bool global_room(const struct ep *e)
{
  return W.njobs < W.global_max || (e->sending == 0 && W.njobs < W.global_max + (W.global_max + 3) / 4);
}

static int64_t dispatch(void)
{
  int64_t t = now_ms(), wake_at = INT64_MAX;
  /* Each pass starts one endpoint further on, so that the first ones in id
   * order are not always served first when slots are short. */
  size_t start = W.neps ? W.dispatch_rr++ % W.neps : 0;
  for (size_t step = 0; step < W.neps; step++) {
    struct ep *e = &W.eps[(start + step) % W.neps];
    if (!e->enabled)
      continue;
    if (e->next_check > t) {
      if (e->next_check < wake_at)
        wake_at = e->next_check;
      continue;
    }
    if (!global_room(e)) {
      e->next_check = 0; /* due, waiting for a global slot: every settle runs dispatch again */
      continue;
    }
    int64_t cap = W.per_endpoint - e->sending;
    if (cap <= 0) {
      e->next_check = INT64_MAX; /* a settle resets it */
      continue;
    }
    json_t *rows = wq("SELECT event, attempts, next_at, created FROM webhook_deliveries WHERE "
                        "endpoint=?1 AND state='pending' ORDER BY next_at LIMIT ?2",
                        tp_pack("[s, I]", e->id, (json_int_t)(e->inflight + cap + 1)));
    if (!rows)
      continue;
    e->next_check = INT64_MAX;
    size_t n = json_array_size(rows);
    for (size_t k = 0; k < n; k++) {
      json_t *row = json_array_get(rows, k);
      const char *ev = json_string_value(json_object_get(row, "event"));
      int64_t next_at = json_integer_value(json_object_get(row, "next_at"));
      if (!ev || job_inflight(e->id, ev))
        continue;
      if (next_at > t) {
        e->next_check = next_at;
        break;
      }
      if (!global_room(e)) {
        e->next_check = 0; /* due, waiting for a global slot */
        break;
      }
      if (cap == 0) {
        e->next_check = INT64_MAX; /* one of its own settles resets it */
        break;
      }
      if (start_job(e, ev, (int)json_integer_value(json_object_get(row, "attempts")),
                    json_integer_value(json_object_get(row, "created"))))
        cap--;
    }
    json_decref(rows);
    if (e->next_check > 0 && e->next_check < wake_at)
      wake_at = e->next_check;
  }
  return wake_at;
}

/* ---- the thread ------------------------------------------------------------ */
static void *wh_main(void *arg)
{
  (void)arg;
  int64_t wake_at = 0;
  int64_t stop_deadline = 0;
  for (;;) {
    pthread_mutex_lock(&W.mu);
    struct ev_msg *evs = W.ev_head;
    W.ev_head = W.ev_tail = NULL;
    W.ev_len = 0;
    struct job *settled = W.settled;
    W.settled = NULL;
    bool changed = W.changed, poll = W.poll, scan_now = W.scan_now, stopping = W.stopping;
    struct poll_ids *polls = W.polls;
    W.polls = NULL;
    W.changed = W.poll = W.scan_now = false;
    pthread_mutex_unlock(&W.mu);

    reap_settled(settled);
    int64_t t = now_ms();
    if (stopping) {
      while (evs) {
        struct ev_msg *m = evs;
        evs = m->next;
        free(m);
      }
      if (!stop_deadline) {
        stop_deadline = t + W.stop_wait_ms;
        tp_log(TP_LOG_INFO, "webhooks_stopping", "{s:i}", "in_flight", W.njobs);
      }
      if (W.njobs == 0 || t >= stop_deadline)
        break;
    } else {
      if (changed || t >= W.next_reload) {
        load_endpoints();
        W.next_reload = t + W.scan_ms;
        wake_at = 0;
      }
      if (evs) {
        fanout(evs);
        while (evs) {
          struct ev_msg *m = evs;
          evs = m->next;
          free(m);
        }
      }
      if (scan_now || t >= W.next_scan) {
        scan();
        W.next_scan = t + W.scan_ms;
      }
      if (poll)
        for (size_t i = 0; i < W.neps; i++)
          W.eps[i].next_check = 0;
      for (struct poll_ids *p = polls; p; p = p->next)
        for (size_t i = 0; i < p->n; i++) {
          struct ep *e = ep_find(p->id[i]);
          if (e)
            e->next_check = 0;
        }
      if (polls)
        poll = true;
      if (changed || poll || settled || wake_at <= t)
        wake_at = dispatch();
    }
    while (polls) {
      struct poll_ids *p = polls;
      polls = p->next;
      free(p);
    }

    int running = 0;
    curl_multi_perform(W.multi, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(W.multi, &left))) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      struct job *j = NULL;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&j);
      if (j)
        finish(j, msg->data.result);
    }
    t = now_ms();
    int64_t until = W.next_scan;
    if (wake_at < until)
      until = wake_at;
    int64_t ms = until - t;
    if (ms > WH_IDLE_MS)
      ms = WH_IDLE_MS;
    if (ms < 0)
      ms = 0;
    if (stopping && ms > 50)
      ms = 50;
    curl_multi_poll(W.multi, NULL, 0, (int)ms, NULL);
  }

  /* Abandon what is still in curl: its rows stay pending and are delivered
   * after the next start. Settling jobs are freed by their completion. */
  int abandoned = 0;
  for (struct job **pp = &W.jobs; *pp;) {
    struct job *j = *pp;
    if (j->easy) {
      curl_multi_remove_handle(W.multi, j->easy);
      *pp = j->next;
      job_free(j);
      abandoned++;
    } else {
      pp = &j->next;
    }
  }
  pthread_mutex_lock(&W.mu);
  W.exited = true;
  struct job *settled = W.settled;
  W.settled = NULL;
  struct poll_ids *polls = W.polls;
  W.polls = NULL;
  pthread_mutex_unlock(&W.mu);
  while (polls) {
    struct poll_ids *p = polls;
    polls = p->next;
    free(p);
  }
  /* Settled jobs are still on W.jobs: unlink them as they are freed. */
  reap_settled(settled);
  W.jobs = NULL; /* what is left is settling: its completion frees it */
  W.njobs = 0;
  if (abandoned)
    tp_log(TP_LOG_WARN, "webhooks_abandoned", "{s:i}", "deliveries", abandoned);
  return NULL;
}

/* private_networks: "allow" (the default: a self-hosted gateway delivers
 * to the merchant's own services) or "deny" (merchants are untrusted
 * tenants: no endpoint may make the gateway call into its own network).
 * Anything else is refused at start. */
static int private_networks_setting(void)
{
  const char *v = tp_config_get("webhooks", "private_networks");
  if (!v || strcmp(v, "allow") == 0)
    return 0;
  if (strcmp(v, "deny") == 0)
    return 1;
  tp_log(TP_LOG_ERROR, "config_invalid", "{s:s, s:s, s:s}", "setting", "webhooks.private_networks", "value", v,
         "expected", "allow | deny");
  return -1;
}

bool tp_webhooks_host_denied(const char *host)
{
  if (private_networks_setting() != 1)
    return false;
  size_t n = strlen(host);
  while (n && host[n - 1] == '.') /* "localhost." is localhost */
    n--;
  if ((n == 9 && strncasecmp(host, "localhost", 9) == 0) ||
      (n > 10 && strncasecmp(host + n - 10, ".localhost", 10) == 0))
    return true;
  return tp_addr_text_is_public(host) == 0;
}

/* libcurl asks us for every socket it connects, after name resolution: the
 * address checked is the one connected to, so a name that resolves (or
 * re-resolves) to an internal address is refused too. */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
  struct job *j = clientp;
  (void)purpose;
  if (W.deny_private && !tp_addr_is_public(&a->addr)) {
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->family == AF_INET)
      inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)&a->addr)->sin_addr, ip, sizeof ip);
    else if (a->family == AF_INET6)
      inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)&a->addr)->sin6_addr, ip, sizeof ip);
    tp_scopy(j->blocked, sizeof j->blocked, ip);
    return CURL_SOCKET_BAD;
  }
  return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

static void load_settings(void)
{
  W.enabled = tp_config_bool("webhooks", "enabled", true);
  W.deny_private = private_networks_setting() == 1;
  W.connect_ms = tp_config_int("webhooks", "connect_timeout_ms", 5000, 10, 600000);
  W.timeout_ms = tp_config_int("webhooks", "timeout_ms", 10000, 10, 600000);
  W.per_endpoint = tp_config_int("webhooks", "max_in_flight_per_endpoint", 4, 1, 1000);
  W.global_max = tp_config_int("webhooks", "max_in_flight", 256, 1, 100000);
  W.retry_base_ms = tp_config_int("webhooks", "retry_base_ms", 60000, 1, INT64_C(86400000));
  W.retry_max_ms = tp_config_int("webhooks", "retry_max_ms", INT64_C(21600000), 1, INT64_C(86400000) * 30);
  W.retry_factor = (double)tp_config_int("webhooks", "retry_factor_percent", 200, 100, 1000) / 100.0;
  W.max_age_ms = tp_config_int("webhooks", "max_age_s", 259200, 1, INT64_C(86400) * 365) * 1000;
  W.disable_after_ms = tp_config_int("webhooks", "disable_after_s", 259200, 1, INT64_C(86400) * 365) * 1000;
  W.scan_ms = tp_config_int("webhooks", "scan_interval_ms", 10000, 50, 3600000);
  W.stop_wait_ms = tp_config_int("webhooks", "stop_wait_ms", 3000, 0, 60000);
  W.nschedule = 0;
  const char *s = tp_config_get("webhooks", "retry_schedule");
  while (s && *s && W.nschedule < WH_MAX_SCHEDULE) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || v < 1 || v > 86400LL * 30) {
      tp_config_invalid("webhooks", "retry_schedule", tp_config_get("webhooks", "retry_schedule"));
      W.nschedule = 0;
      break;
    }
    W.schedule[W.nschedule++] = v;
    while (*end == ' ' || *end == ',')
      end++;
    s = end;
  }
}

int tp_webhooks_start(void)
{
  if (private_networks_setting() < 0)
    return -1;
  load_settings();
  if (!W.enabled) {
    tp_log(TP_LOG_INFO, "webhooks_disabled", NULL);
    return 0;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return -1;
  W.multi = curl_multi_init();
  if (!W.multi)
    return -1;
  tp_metric_help("turnpike_webhook_deliveries_total", "Webhook delivery attempts by outcome.");
  tp_metric_help("turnpike_webhook_delivery_duration_seconds", "Duration of webhook delivery attempts.");
  tp_metric_help("turnpike_outbox_lag_seconds", "How long the oldest due webhook delivery has waited.");
  tp_metric_help("turnpike_webhook_pending_deliveries", "Webhook deliveries not yet succeeded or given up.");
  tp_metric_help("turnpike_webhook_in_flight", "Webhook deliveries in flight.");
  /* One subscription for the process lifetime; a stopped thread ignores it. */
  static bool subscribed;
  if (!subscribed) {
    if (tp_writer_subscribe(on_event, NULL) != 0)
      return -1;
    subscribed = true;
  }
  pthread_mutex_lock(&W.mu);
  W.started = true;
  W.exited = W.stopping = false;
  W.scan_now = W.changed = true;
  pthread_mutex_unlock(&W.mu);
  W.next_scan = 0;
  if (pthread_create(&W.thread, NULL, wh_main, NULL) != 0)
    return -1;
  pthread_setname_np(W.thread, "tp-webhooks");
  tp_log(TP_LOG_INFO, "webhooks_started", "{s:I, s:I}", "per_endpoint", (json_int_t)W.per_endpoint, "retry_base_ms",
         (json_int_t)W.retry_base_ms);
  return 0;
}

void tp_webhooks_stop(void)
{
  pthread_mutex_lock(&W.mu);
  bool run = W.started && !W.exited;
  W.stopping = true;
  pthread_mutex_unlock(&W.mu);
  if (!run)
    return;
  wake();
  pthread_join(W.thread, NULL);
  pthread_mutex_lock(&W.mu);
  W.started = false;
  CURLM *multi = W.multi;
  W.multi = NULL;
  while (W.ev_head) {
    struct ev_msg *m = W.ev_head;
    W.ev_head = m->next;
    free(m);
  }
  W.ev_tail = NULL;
  W.ev_len = 0;
  pthread_mutex_unlock(&W.mu);
  curl_multi_cleanup(multi);
  eps_free(W.eps, W.neps);
  W.eps = NULL;
  W.neps = 0;
}

/* An Idempotency-Key keeps the create's reply for a retry, secret and all:
 * stored with the secret sealed as the endpoint's own is (a copy of the
 * store or a backup showed it for the key's 24 hours otherwise), and
 * opened again for the replay. */
#define IDEM_SEALED_PREFIX "tpsealed:"

/* body with the string value at [at, at + len) replaced by with (malloc'd):
 * the rest of the reply stays byte for byte as it was sent. */
static char *splice(const char *body, const char *at, size_t len, const char *with)
{
  size_t head = (size_t)(at - body), wl = strlen(with), tail = strlen(at + len);
  char *out = malloc(head + wl + tail + 1);
  if (!out)
    return NULL;
  memcpy(out, body, head);
  memcpy(out + head, with, wl);
  memcpy(out + head + wl, at + len, tail + 1);
  return out;
}

/* The top-level "secret" of the webhook_endpoint reply body, if it starts
 * with prefix: where its value starts and its length, or NULL; id the
 * endpoint's. Found from the parsed body, then at the last `"secret":"`
 * of the text (the field is the object's last; a metadata key "secret"
 * comes before it), which must hold the same value. */
static const char *secret_value(const char *body, const char *prefix, size_t *len, char id[TP_ID_MAX])
{
  json_t *o = body ? json_loads(body, 0, NULL) : NULL;
  const char *oid = json_string_value(json_object_get(o, "id"));
  const char *obj = json_string_value(json_object_get(o, "object"));
  const char *sec = json_string_value(json_object_get(o, "secret"));
  const char *at = NULL;
  if (oid && strlen(oid) < TP_ID_MAX && obj && strcmp(obj, "webhook_endpoint") == 0 && sec &&
      strncmp(sec, prefix, strlen(prefix)) == 0) {
    const char *key = "\"secret\":\"";
    for (const char *f = strstr(body, key); f; f = strstr(f + 1, key))
      at = f + strlen(key);
    size_t sl = strlen(sec);
    if (at && strncmp(at, sec, sl) == 0 && at[sl] == '"') {
      tp_scopy(id, TP_ID_MAX, oid);
      *len = sl;
    } else {
      at = NULL;
    }
  }
  json_decref(o);
  return at;
}

char *tp_webhooks_idem_seal(const char *body)
{
  size_t len;
  char id[TP_ID_MAX];
  const char *at = secret_value(body, "whsec_", &len, id);
  if (!at)
    return NULL;
  char secret[TP_WH_SECRET_MAX], sealed[TP_WH_SEALED_MAX], tagged[TP_WH_SEALED_MAX + sizeof IDEM_SEALED_PREFIX];
  char *out = NULL;
  if (len < sizeof secret) {
    memcpy(secret, at, len);
    secret[len] = '\0';
    if (tp_webhooks_seal_secret(id, secret, sealed) == 0) {
      snprintf(tagged, sizeof tagged, IDEM_SEALED_PREFIX "%s", sealed);
      out = splice(body, at, len, tagged);
    }
    tp_card_wipe(secret, sizeof secret);
  }
  /* never the plain one: without a sealed form, null (no secret to use) */
  return out ? out : splice(body, at - 1, len + 2, "null");
}

char *tp_webhooks_idem_open(const char *body)
{
  size_t len;
  char id[TP_ID_MAX];
  const char *at = secret_value(body, IDEM_SEALED_PREFIX, &len, id);
  if (!at)
    return NULL;
  size_t pl = strlen(IDEM_SEALED_PREFIX);
  char sealed[TP_WH_SEALED_MAX], secret[TP_WH_SECRET_MAX];
  char *out = NULL;
  if (len - pl < sizeof sealed) {
    memcpy(sealed, at + pl, len - pl);
    sealed[len - pl] = '\0';
    if (tp_webhooks_open_secret(id, sealed, secret) == 0)
      out = splice(body, at, len, secret);
    tp_card_wipe(secret, sizeof secret);
  }
  return out;
}
