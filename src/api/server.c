/* libmicrohttpd glue: bounded body reading, routing, authentication,
 * parameter parsing, suspend/resume and response queueing. */
#include "api/http.h"
#include "api/commit.h"
#include "core/payflow.h"
#include "cli.h"
#include "api/objects.h"
#include "api/requests.h"
#include "api/params.h"
#include "config.h"
#include "jsonw.h"
#include "log.h"
#include "main/features.h"
#include "sec/auth.h"
#include "sec/jwt.h"
#include "sec/ratelimit.h"
#include "sec/scopes.h"
#include "metrics.h"
#include "net/stream.h"
#include "util.h"

#include <ctype.h>
#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define TP_HTTP_MAX_CONNECTIONS 4096
/* Each libmicrohttpd daemon's own limit: never reached (the acceptor keeps
 * to TP_HTTP_MAX_CONNECTIONS for all of them), since a connection handed to
 * a daemon at its limit deadlocks it in 0.9.75 (acceptor_main). */
#define TP_HTTP_MHD_LIMIT (4 * TP_HTTP_MAX_CONNECTIONS)
#define TP_HTTP_CONN_MEMORY (16 * 1024)   /* per-connection header/read buffer (MHD zeroes it per request) */
/* A request line and header fields past this leave libmicrohttpd's pool
 * too little room for a reply (it closed such connections without one,
 * from ~15.4 KB): 431 at once. */
#define TP_HTTP_HEADERS_MAX 15000
/* What libmicrohttpd 0.9.75 spends of that pool per header field beyond
 * its bytes (its field record): counted against TP_HTTP_HEADERS_MAX, or
 * many small fields (~210 of one byte) passed the count and left no room
 * for the reply, which was then never sent, after the payment was made. */
#define TP_HTTP_FIELD_OVERHEAD 64
#define TP_HTTP_QUERY_ARG_COST 64 /* the same for a query argument (on_uri) */
#define TP_HTTP_TIMEOUT_S 60
/* A request still arriving (from its connection's first byte, or its
 * request line, to its reply) may be idle this long; an idle keep-alive
 * connection between requests, TP_HTTP_TIMEOUT_S. libmicrohttpd 0.9.75
 * (edge-triggered epoll) misses a client's close that comes with the last
 * bytes it sent: such connections stayed, in CLOSE-WAIT, for the whole
 * timeout, and ~6,000 of them in half a second held every slot. */
#define TP_HTTP_REQUEST_IDLE_S 10
#define TP_HTTP_TIMEOUT_TEXT "60" /* TP_HTTP_TIMEOUT_S, for the Keep-Alive header */
#define TP_HTTP_MAX_QUERY 8192
#define TP_HTTP_DRAIN_MAX (8u << 20) /* a too-large body read and dropped to answer 413 (bytes) */

struct tp_app tp_app;

static atomic_uint inflight;
/* Requests from their first byte to the end of their reply (on_completed):
 * the graceful stop waits for them, not only for the suspended ones, so a
 * request being handled or still arriving at the signal is answered. */
static atomic_uint active;
/* Of those, the ones whose request is still arriving (not dispatched): a
 * client may have gone away mid-body, which libmicrohttpd notices only at
 * the connection timeout, so the stop waits for them a moment only. */
static atomic_uint receiving;
/* Bytes of large replies handed to libmicrohttpd and not yet sent (their
 * clients read slowly, or not at all): each is held whole until sent or
 * the connection times out, so 400 connections pipelining a 2.7 MB list
 * and reading nothing held ~1 GB (review, session 41). A read whose reply
 * would pass the bound is answered 503 overloaded instead. */
static atomic_size_t replies_held;
/* Of the active requests, those whose reply is queued and being written:
 * at a stop they get the second a request still arriving gets, not the
 * payment bound (clients that never read held the stop 15-22 s, then lost
 * their replies all the same; review, session 41). */
static atomic_uint replying;
#define TP_HTTP_REPLY_COUNTED (64u * 1024) /* replies from this size on are counted */
static size_t replies_held_max = (size_t)256 << 20; /* [server] reply_memory_mb */

/* The request is complete and handed to its handler (or answered as it
 * stands): no longer "receiving". */
static void mark_dispatched(struct tp_req *r)
{
  if (!r->dispatched)
    atomic_fetch_sub(&receiving, 1);
  r->dispatched = true;
}
static bool log_requests = true; /* [log] requests */

unsigned tp_http_inflight(void)
{
  return atomic_load(&inflight);
}

/* ---- authentication ------------------------------------------------------ */
/* API keys and OAuth access tokens are resolved (and cached) in src/sec/
 * (apikey.c, oauth.c); here only the header is taken apart. */

/* Authorization: Bearer KEY, or Basic base64(KEY:): the key into key
 * (TP_JWT_MAX_LEN + 1 bytes). */
static enum tp_err credential(struct tp_req *r, char *key, size_t cap)
{
  const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
  if (!h || !*h)
    return TP_ERR_AUTH_MISSING;
  if (strncasecmp(h, "Bearer ", 7) == 0) {
    const char *k = h + 7;
    while (*k == ' ')
      k++;
    if (strlen(k) >= cap)
      return TP_ERR_AUTH_INVALID_KEY;
    tp_scopy(key, cap, k);
    tp_rtrim_ows(key); /* RFC 9110 5.5: trailing whitespace is not the value's */
  } else if (strncasecmp(h, "Basic ", 6) == 0) {
    /* The user name is the key, or an OAuth access token (a JWT, as the
     * Bearer value would be): room for a base64 one of cap bytes. */
    if (strlen(h) > 6 + 4 * (cap / 3 + 2) || tp_basic_decode(h + 6, key, cap) < 0)
      return TP_ERR_AUTH_INVALID_KEY;
    char *colon = strchr(key, ':');
    if (colon)
      *colon = '\0';
  } else
    return TP_ERR_AUTH_INVALID_KEY;
  return key[0] ? TP_ERR_OK : TP_ERR_AUTH_MISSING;
}

char *tp_req_credential(struct tp_req *r)
{
  char key[TP_JWT_MAX_LEN + 1];
  char *out = credential(r, key, sizeof key) == TP_ERR_OK ? strdup(key) : NULL;
  OPENSSL_cleanse(key, sizeof key);
  return out;
}

/* An API key or an access token to its merchant and scopes: API keys never
 * hold a '.', a compact JWS always does. */
static enum tp_err resolve(const char *key, struct tp_auth *a)
{
  return strchr(key, '.') ? tp_oauth_authenticate(key, a) : tp_apikey_authenticate(key, a);
}

enum tp_err tp_credential_check(const char *key, const char *merchant)
{
  struct tp_auth a;
  enum tp_err e = resolve(key, &a);
  if (e == TP_ERR_OK && strcmp(a.merchant.id, merchant) != 0)
    e = TP_ERR_AUTH_INVALID_KEY;
  return e;
}

static enum tp_err authenticate(struct tp_req *r)
{
  char key[TP_JWT_MAX_LEN + 1]; /* an API key or a JWT access token */
  enum tp_err e = credential(r, key, sizeof key);
  if (e != TP_ERR_OK)
    return e;
  struct tp_auth a;
  e = resolve(key, &a);
  /* A browser holds the publishable key and a PaymentIntent's client_secret:
   * enough to retrieve and confirm that one PaymentIntent (Stripe.js). The
   * handler checks the secret; the reply is cut to what Stripe shows such a
   * client (tp_publishable_view). The key alone creates a PaymentMethod: the
   * browser tokenises the card, so the PAN never reaches the merchant's
   * server (TP_R_PUBLISHABLE). */
  if (e == TP_ERR_PUBLISHABLE_KEY_FORBIDDEN && strcmp(a.kind, "publishable") == 0 && r->route &&
      (r->route->flags & (TP_R_CLIENT | TP_R_PUBLISHABLE))) {
    a.scopes = tp_scope_required(r->method, r->route->pattern);
    r->publishable = true;
    e = TP_ERR_OK;
  }
  if (e != TP_ERR_OK)
    return e;
  r->merchant = a.merchant;
  memcpy(r->key_kind, a.kind, sizeof r->key_kind);
  r->scopes = a.scopes;
  tp_scopy(r->actor, sizeof r->actor, a.actor);
  tp_scopy(r->rl_id, sizeof r->rl_id, a.rl_id);
  r->authed = true;
  return TP_ERR_OK;
}

enum tp_err tp_req_authenticate(struct tp_req *r)
{
  return authenticate(r);
}

static bool access_check(struct tp_req *r, const struct tp_route *rt);

bool tp_req_login_blocked(struct tp_req *r)
{
  return tp_req_login_blocked_as(r, tp_req_client_addr(r));
}

bool tp_req_login_blocked_as(struct tp_req *r, const char *bucket)
{
  int wait = tp_ratelimit_auth_blocked(bucket, tp_mono_ms());
  if (!wait)
    return false;
  r->retry_after_s = (unsigned)wait;
  tp_metric_inc("turnpike_ratelimit_rejected_total", "reason=\"auth_failures\"", 1);
  tp_reply_error(r, TP_ERR_LOGIN_RATE_LIMITED, NULL, NULL);
  return true;
}

void tp_req_login_failed(struct tp_req *r, enum tp_err e)
{
  /* A publishable key on a secret route is a valid key, not a guess; nor
   * is a real key past its expiry or a token past its exp (a worker left on
   * a rolled key locked every key of the address out). */
  if (e != TP_ERR_OK && e != TP_ERR_AUTH_MISSING && e != TP_ERR_STORE_UNAVAILABLE &&
      e != TP_ERR_PUBLISHABLE_KEY_FORBIDDEN && e != TP_ERR_API_KEY_EXPIRED && e != TP_ERR_OAUTH_TOKEN_EXPIRED)
    tp_ratelimit_auth_failed(tp_req_client_addr(r), tp_mono_ms());
}

bool tp_req_require_scope(struct tp_req *r, unsigned need)
{
  if ((r->scopes & need) == need)
    return true;
  unsigned missing = need & ~r->scopes;
  unsigned one = missing & (~missing + 1); /* name the first scope missing */
  char msg[256];
  bool oauth = strcmp(r->key_kind, "oauth") == 0;
  snprintf(msg, sizeof msg, "The provided %s does not have the required permissions for this request: it needs "
           "the `%s` scope.", oauth ? "access token" : "key", tp_scope_name(one));
  if (oauth)
    snprintf(r->www_authenticate, sizeof r->www_authenticate,
             "Bearer realm=\"turnpike\", error=\"insufficient_scope\", scope=\"%s\"", tp_scope_name(one));
  tp_reply_error(r, oauth ? TP_ERR_OAUTH_INSUFFICIENT_SCOPE : TP_ERR_PERMISSION_DENIED, NULL, msg);
  return false;
}

bool tp_req_access(struct tp_req *r)
{
  return access_check(r, r->route);
}

/* ---- routing ---------------------------------------------------------------- */
static bool match(const char *pattern, const char *url, struct tp_req *r)
{
  const char *p = pattern, *u = url;
  while (*p && *u) {
    if (*p == '{') {
      const char *pe = strchr(p, '}');
      const char *ue = strchr(u, '/');
      size_t ul = ue ? (size_t)(ue - u) : strlen(u);
      if (ul == 0 || ul >= sizeof r->path_id)
        return false;
      char *dst = (strncmp(p, "{id}", 4) == 0) ? r->path_id : r->path_sub;
      memcpy(dst, u, ul);
      dst[ul] = '\0';
      p = pe + 1;
      u += ul;
      continue;
    }
    if (*p != *u)
      return false;
    p++;
    u++;
  }
  if (*u == '/' && u[1] == '\0')
    u++; /* tolerate one trailing slash */
  return *p == '\0' && *u == '\0';
}

static const struct tp_route *route(struct tp_req *r, bool *url_known)
{
  *url_known = false;
  for (unsigned i = 0; i < tp_routes_count; i++) {
    const struct tp_route *rt = &tp_routes[i];
    if (!match(rt->pattern, r->url, r))
      continue;
    *url_known = true;
    /* HEAD is GET without the body (RFC 9110 9.3.2; MHD drops the body). */
    if (strcmp(rt->method, r->method) == 0 ||
        (strcmp(r->method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0))
      return rt;
  }
  return NULL;
}

/* ---- parameters ------------------------------------------------------------- */
struct qs {
  char *buf;
  size_t len, cap;
  bool overflow;
};

/* n bytes of s (a NUL included, encoded: the parameter parser refuses it,
 * where a C string cut the value short there) */
static void qs_put(struct qs *q, const char *s, size_t len, bool encode)
{
  for (const char *end = s + len; s < end; s++) {
    char tmp[4];
    size_t n = 1;
    unsigned char c = (unsigned char)*s;
    if (encode && !(c == '[' || c == ']' || c == '_' || c == '-' || c == '.' || (c >= '0' && c <= '9') ||
                    (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
      snprintf(tmp, sizeof tmp, "%%%02X", c);
      n = 3;
    } else
      tmp[0] = (char)c;
    if (q->len + n + 1 > q->cap) {
      q->overflow = true;
      return;
    }
    memcpy(q->buf + q->len, tmp, n);
    q->len += n;
  }
}

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                   const char *value, size_t value_size)
{
  (void)kind;
  struct qs *q = cls;
  if (q->len)
    qs_put(q, "&", 1, false);
  qs_put(q, key, key_size, true);
  if (value) {
    qs_put(q, "=", 1, false);
    qs_put(q, value, value_size, true);
  }
  return q->overflow ? MHD_NO : MHD_YES;
}

/* The request's query string, re-encoded (MHD decoded it), as form text
 * in buf; false when it does not fit (replied). */
static bool query_form(struct tp_req *r, char *buf, size_t cap, size_t *len)
{
  struct qs q = {buf, 0, cap, false};
  MHD_get_connection_values_n(r->conn, MHD_GET_ARGUMENT_KIND, collect_arg, &q);
  if (q.overflow) {
    tp_reply_error(r, TP_ERR_URI_TOO_LONG, NULL, "The query string is too long.");
    return false;
  }
  buf[q.len] = '\0';
  *len = q.len;
  return true;
}

/* Parameters of the query string under those of the body: what the body
 * names wins, objects are merged key by key. */
static void merge_under(json_t *body, const json_t *query)
{
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)(uintptr_t)query, k, v) {
    json_t *b = json_object_get(body, k);
    if (!b)
      json_object_set(body, k, v);
    else if (json_is_object(b) && json_is_object(v))
      merge_under(b, v);
  }
}

/* Per connection (libmicrohttpd's socket context). */
struct conn_ctx {
  const char *uri;
  /* A query string with a bad %-escape: the form parser's error over it,
   * taken before libmicrohttpd decodes it in place (the pair it names). */
  struct tp_params_error qerr;
};

static struct conn_ctx *conn_ctx_of(struct MHD_Connection *conn)
{
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return ci ? ci->socket_context : NULL;
}

/* Parse the query (GET, DELETE) or the body (POST, DELETE with one) into
 * r->params. On a POST of the API (authenticated routes) the query string
 * counts too, as on Stripe: `POST /v1/refunds?amount=100` refunds 100, and
 * an unknown parameter there is refused like one in the body (it was
 * ignored, which turned that partial refund into a full one). stripe-go
 * sends a DELETE's parameters as a form body: they are read, and a bad one
 * refuses the deletion as it would in the query. */
static bool parse_params(struct tp_req *r, bool api)
{
  struct tp_params_error pe;
  memset(&pe, 0, sizeof pe);
  if (r->bad_query) {
    const struct conn_ctx *cc = conn_ctx_of(r->conn);
    if (cc && cc->qerr.message[0])
      pe = cc->qerr;
    else
      snprintf(pe.message, sizeof pe.message, "Invalid percent-encoding in the query string");
    tp_reply_params_error(r, &pe, false);
    return false;
  }
  if (strcmp(r->method, "POST") == 0 || (strcmp(r->method, "DELETE") == 0 && r->body_len > 0)) {
    const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    /* the media type itself, then parameters (RFC 9110 8.3.1): not a prefix */
#define TP_MEDIA_IS(ct, t) \
  (strncasecmp((ct), (t), sizeof(t) - 1) == 0 && \
   (!(ct)[sizeof(t) - 1] || (ct)[sizeof(t) - 1] == ';' || (ct)[sizeof(t) - 1] == ' ' || (ct)[sizeof(t) - 1] == '\t'))
    if (ct && TP_MEDIA_IS(ct, "application/json"))
      r->params = tp_params_parse_json(r->body ? r->body : "", r->body_len, &pe);
    else if (!ct || TP_MEDIA_IS(ct, "application/x-www-form-urlencoded") || r->body_len == 0)
      r->params = tp_params_parse_form(r->body ? r->body : "", r->body_len, &pe);
    else {
      tp_reply_error(r, TP_ERR_UNSUPPORTED_MEDIA_TYPE, NULL, NULL);
      return false;
    }
    char buf[TP_HTTP_MAX_QUERY];
    size_t n = 0;
    if (r->params && api) {
      if (!query_form(r, buf, sizeof buf, &n)) {
        json_decref(r->params);
        r->params = NULL;
        return false;
      }
      json_t *q = n ? tp_params_parse_form(buf, n, &pe) : NULL;
      if (n && !q) {
        json_decref(r->params);
        r->params = NULL;
        tp_reply_params_error(r, &pe, false);
        return false;
      }
      if (q)
        merge_under(r->params, q);
      json_decref(q);
      explicit_bzero(buf, n);
    }
  } else {
    char buf[TP_HTTP_MAX_QUERY];
    size_t n = 0;
    if (!query_form(r, buf, sizeof buf, &n))
      return false;
    r->params = tp_params_parse_form(buf, n, &pe);
    explicit_bzero(buf, n);
  }
  if (!r->params) {
    tp_reply_params_error(r, &pe, false);
    return false;
  }
  return true;
}

/* ---- dispatch ------------------------------------------------------------- */
/* An Origin that is not the gateway's own (its Host): "null", or another
 * scheme://host[:port]. */
static bool cross_site(const struct tp_req *r)
{
  const char *o = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Origin");
  const char *fs = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Sec-Fetch-Site");
  if (fs && (strcasecmp(fs, "cross-site") == 0 || strcasecmp(fs, "same-site") == 0))
    return true;
  if (!o)
    return false;
  const char *host = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
  const char *sep = strstr(o, "://");
  if (!host || !sep)
    return true;
  const char *oh = sep + 3;
  size_t n = strcspn(oh, "/");
  return strlen(host) != n || strncasecmp(host, oh, n) != 0;
}

bool tp_req_browser_basic(const struct tp_req *r)
{
  const char *a = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
  if (!a)
    return false;
  while (*a == ' ' || *a == '\t')
    a++;
  bool basic = strncasecmp(a, "Basic", 5) == 0 && (a[5] == ' ' || a[5] == '\t' || !a[5]);
  return basic && cross_site(r);
}

/* Authentication, rate limits and the route's scope (src/sec/): false when
 * the reply is already set. An address with too many failed attempts is
 * answered 429 before its credentials are even looked at; nothing sleeps. */
static bool access_check(struct tp_req *r, const struct tp_route *rt)
{
  if (tp_req_login_blocked(r))
    return false;
  /* Basic credentials sent by another site's page are ones the browser
   * kept (typed at the 401 prompt, whose WWW-Authenticate Stripe sends
   * too) and replays on any cross-site form POST: one forged request made
   * a refund, or a webhook endpoint that took every later event to the
   * forger (review, session 39). A browser always names the page's Origin
   * (or Sec-Fetch-Site) on such a request; server-side clients send
   * neither, or the gateway itself. Refused before the key is looked at. */
  if (tp_req_browser_basic(r)) {
    tp_reply_error(r, TP_ERR_CROSS_SITE_BASIC_AUTH, NULL, NULL);
    return false;
  }
  enum tp_err e = authenticate(r);
  if (e != TP_ERR_OK) {
    tp_req_login_failed(r, e);
    if (e >= TP_ERR_OAUTH_TOKEN_INVALID && e <= TP_ERR_OAUTH_TOKEN_ISSUER_INVALID)
      snprintf(r->www_authenticate, sizeof r->www_authenticate, "Bearer realm=\"turnpike\", error=\"invalid_token\"");
    tp_reply_error(r, e, NULL, NULL);
    return false;
  }
  /* A publishable key is public: anyone can spend its tokens. Each client
   * address gets its own bucket for it, so one abuser cannot shut every
   * customer's checkout out (Stripe limits publishable-key calls per
   * client the same way). */
  if (r->publishable) {
    size_t n = strlen(r->rl_id);
    char bucket[64];
    tp_ratelimit_addr_bucket(tp_req_client_addr(r), bucket, sizeof bucket); /* an IPv6 /64 is one client */
    snprintf(r->rl_id + n, sizeof r->rl_id - n, "@%s", bucket);
  }
  int wait = tp_ratelimit_take(r->rl_id, tp_mono_ms());
  if (wait) {
    r->retry_after_s = (unsigned)wait;
    tp_metric_inc("turnpike_ratelimit_rejected_total", "reason=\"key\"", 1);
    tp_reply_error(r, TP_ERR_RATE_LIMITED, NULL, NULL);
    return false;
  }
  if (!tp_req_require_scope(r, tp_scope_required(r->method, rt->pattern)))
    return false;
  /* Stripe-Account acts on a connected account (Stripe Connect), and
   * Stripe-Context, which supersedes it, on a related account (a path of
   * accounts, "acct_1/acct_2"). Turnpike has none: naming the key's own
   * account (or, for the context, none) is harmless, any other is refused
   * rather than silently served from the key's account. */
  const char *acct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Stripe-Account");
  const char *ctx = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Stripe-Context");
  char acct_v[128], ctx_v[128]; /* RFC 9110 5.5: trailing whitespace is not the value's */
  if (acct && strlen(acct) < sizeof acct_v) { /* a longer one is no account id: refused as it is */
    tp_scopy(acct_v, sizeof acct_v, acct);
    tp_rtrim_ows(acct_v);
    acct = acct_v;
  }
  if (ctx && strlen(ctx) < sizeof ctx_v) {
    tp_scopy(ctx_v, sizeof ctx_v, ctx);
    tp_rtrim_ows(ctx_v);
    ctx = ctx_v;
  }
  if (!(acct && strcmp(acct, r->merchant.id) != 0) && ctx && *ctx)
    acct = ctx; /* the one to refuse, if any */
  if (acct && strcmp(acct, r->merchant.id) != 0) {
    char msg[256];
    snprintf(msg, sizeof msg, "The provided key does not have access to account '%.64s' (or that account does not "
             "exist). Application access may have been revoked.", acct);
    tp_reply_error(r, TP_ERR_ACCOUNT_INVALID, NULL, msg);
    return false;
  }
  /* Stripe-Version: the SDKs send the API version they were built for.
   * Turnpike answers in one shape (the newest it knows, see README
   * "Objects"), but refuses what is no API version at all, as Stripe does,
   * and names the version in its answer. */
  const char *ver = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Stripe-Version");
  if (ver) {
    char base[TP_API_VERSION_MAX + 1];
    if (!tp_api_version_header(ver, base)) {
      char msg[160];
      snprintf(msg, sizeof msg, "Invalid Stripe API version: %.64s", ver);
      tp_reply_error(r, TP_ERR_API_VERSION_INVALID, NULL, msg);
      return false;
    }
    tp_scopy(r->api_version, sizeof r->api_version, base);
  }
  return true;
}

/* ---- CORS ------------------------------------------------------------------ */
/* Browsers call /v1 from a merchant's page with the publishable key
 * (Stripe.js: tokenise a card, retrieve and confirm a PaymentIntent with its
 * client_secret). As Stripe's API does, every /v1 reply may be read by any
 * origin: authentication is a bearer key, never a cookie, so a page can do
 * nothing with the API that its own key does not allow. */
static bool cors_url(const char *url)
{
  /* Not the 3-D Secure page: a page a browser navigates to and posts a
   * form from, never read by another origin's script. */
  return (strncmp(url, "/v1/", 4) == 0 && strncmp(url, "/v1/turnpike/3ds/", 17) != 0) || strcmp(url, "/v1") == 0;
}

/* Every request header an official SDK sends from a page: stripe-node's
 * browser build adds X-Stripe-Client-Telemetry from its second request on
 * (telemetry is on by default) and User-Agent, which Firefox lets a page
 * set and then asks about. */
#define CORS_ALLOW_HEADERS \
  "Authorization, Content-Type, Idempotency-Key, Stripe-Version, Stripe-Account, Stripe-Context, " \
  "X-Stripe-Client-User-Agent, X-Stripe-Client-Telemetry, User-Agent"
#define CORS_EXPOSE_HEADERS \
  "Request-Id, Idempotency-Key, Idempotent-Replayed, Original-Request, Stripe-Should-Retry, Stripe-Version, " \
  "Retry-After"

/* The methods the request's path serves, into r->methods ("GET, HEAD,
 * POST"; HEAD wherever GET is). Returns the first route with the path, NULL
 * when there is none. */
static const struct tp_route *path_methods(struct tp_req *r)
{
  const struct tp_route *first = NULL;
  size_t n = 0;
  for (unsigned i = 0; i < tp_routes_count; i++) {
    const struct tp_route *rt = &tp_routes[i];
    if (!match(rt->pattern, r->url, r))
      continue;
    if (!first)
      first = rt;
    if (strstr(r->methods, rt->method))
      continue;
    int w = snprintf(r->methods + n, sizeof r->methods - n, "%s%s", n ? ", " : "", rt->method);
    if (w > 0 && (size_t)w < sizeof r->methods - n)
      n += (size_t)w;
  }
  if (strstr(r->methods, "GET"))
    tp_scopy(r->methods + n, sizeof r->methods - n, ", HEAD");
  return first;
}

/* An OPTIONS preflight (Fetch standard, CORS protocol): no credentials, so
 * answered before authentication, with the methods the path serves. */
static void preflight(struct tp_req *r)
{
  r->route = path_methods(r);
  if (!r->route) {
    tp_reply_error(r, TP_ERR_URL_UNKNOWN, NULL, NULL);
    return;
  }
  if (!cors_url(r->url)) {
    tp_reply_error(r, TP_ERR_METHOD_NOT_ALLOWED, NULL, NULL);
    return;
  }
  r->cors_preflight = true;
  tp_reply_raw(r, 204, strdup(""), 0, "text/plain");
}

/* How long a request waits for an object another request holds (Stripe
 * waits too, then answers 429 lock_timeout): [server] lock_wait_ms. */
static int64_t lock_wait_ms = 2000;

/* A wait's wake and its suspension are ordered by this mutex: the wake
 * (another thread, once the waiter is registered) cannot resume the
 * connection before run_handler has suspended it, and run_handler never
 * suspends a connection only to resume it in the same call. */
static pthread_mutex_t wait_mu = PTHREAD_MUTEX_INITIALIZER;

static void lock_wake(void *arg)
{
  struct tp_req *r = arg;
  pthread_mutex_lock(&wait_mu);
  r->lock_rerun = true;
  tp_req_resume(r);
  pthread_mutex_unlock(&wait_mu);
}

/* Forget the reply a handler set (its 429, before it runs again). */
static void drop_reply(struct tp_req *r)
{
  free(r->resp);
  r->resp = NULL;
  r->resp_len = 0;
  r->status = 0;
  r->retry_after_s = 0;
  r->content_type = NULL;
}

/* The route's handler. Refused for an object another request holds (it
 * replied 429 lock_timeout, having changed nothing), the request waits,
 * suspended, for that object's release, then runs again; the 429 goes out
 * when the wait ends with the object still held. */
static void run_handler_loop(struct tp_req *r);

static void run_handler(struct tp_req *r)
{
  tp_lock_owner(r->merchant.id); /* the locks it takes are this merchant's request's */
  run_handler_loop(r);
  /* An error of a request that started executing is its result: kept
   * under its Idempotency-Key and replayed, as a success is (idem.c). */
  if (!r->suspended && tp_idem_keeps_error(r))
    tp_commit_and_reply(r, tp_cs_new());
  tp_lock_pretend(NULL); /* the thread's next request is another's */
  tp_lock_owner(NULL);
}

static void run_handler_loop(struct tp_req *r)
{
  bool pretended = false;
  for (;;) {
    tp_lock_busy_id[0] = '\0';
    r->route->fn(r);
    if (r->suspended || !tp_lock_busy_id[0] || r->status != 429 || lock_wait_ms <= 0)
      return;
    if (!pretended && tp_lock_foreign(r->merchant.id, tp_lock_busy_id)) {
      /* Held by another merchant's request, so another merchant's object:
       * run again past its lock; the reads under this merchant find
       * nothing there and answer as for an id that never existed. (Once:
       * a second such id waits like any other.) */
      tp_lock_pretend(tp_lock_busy_id);
      pretended = true;
      drop_reply(r);
      continue;
    }
    int64_t now = tp_mono_ms();
    if (!r->lock_deadline_ms)
      r->lock_deadline_ms = now + lock_wait_ms;
    if (now >= r->lock_deadline_ms)
      return;
    char busy[TP_ID_MAX];
    tp_scopy(busy, sizeof busy, tp_lock_busy_id);
    pthread_mutex_lock(&wait_mu);
    int w = tp_lock_wait(busy, r->lock_deadline_ms, lock_wake, r);
    if (w == 1) {
      drop_reply(r);
      tp_req_suspend(r);
    }
    pthread_mutex_unlock(&wait_mu);
    if (w != 0)
      return; /* waiting; or it cannot wait (-1): the 429 stands */
    drop_reply(r); /* released since the handler looked: at once again */
  }
}

static void dispatch(struct tp_req *r)
{
  tp_store_read_failed = false; /* this request's reads only (tp_reply_missing) */
  if (r->bad_target) { /* RFC 9112 3: an invalid request-line gets 400 */
    tp_reply_error(r, TP_ERR_REQUEST_FRAMING_INVALID, NULL,
                   "The request line is not valid HTTP/1.1: its target holds a space (RFC 9112 3).");
    r->close_after = true;
    return;
  }
  if (strcmp(r->method, "OPTIONS") == 0) {
    if (strcmp(r->url, "*") == 0) { /* RFC 9110 9.3.7: the server in general */
      snprintf(r->methods, sizeof r->methods, "GET, HEAD, POST, DELETE, OPTIONS");
      tp_reply_raw(r, 200, strdup(""), 0, "text/plain");
      return;
    }
    preflight(r);
    return;
  }
  /* RFC 9110 9.1: a method that is not a token is no request line (400,
   * RFC 9112 3); one that is not a method of HTTP is unimplemented (501),
   * not merely disallowed on this path (405). */
  static const char *const http_methods[] = {"GET",     "HEAD",  "POST",  "PUT",  "DELETE",
                                             "CONNECT", "TRACE", "PATCH", NULL}; /* OPTIONS: above */
  int mi = 0;
  while (http_methods[mi] && strcmp(http_methods[mi], r->method) != 0)
    mi++;
  if (strcmp(r->method, "CONNECT") == 0) { /* RFC 9110 9.1: a method not implemented here */
    tp_reply_error(r, TP_ERR_METHOD_NOT_IMPLEMENTED, NULL, NULL);
    return;
  }
  if (!http_methods[mi]) {
    bool token = r->method[0] && !strchr(r->method, '?');
    if (token)
      tp_reply_error(r, TP_ERR_METHOD_NOT_IMPLEMENTED, NULL, NULL);
    else
      tp_reply_error(r, TP_ERR_REQUEST_FRAMING_INVALID, NULL,
                     "The request's header fields are not valid HTTP/1.1: the method is not a token (RFC 9110 9.1).");
    r->close_after = !token;
    return;
  }
  bool url_known = false;
  const struct tp_route *rt = r->bad_path ? NULL : route(r, &url_known);
  if (!rt) {
    if (url_known) {
      /* RFC 9110 15.5.6: a 405 carries Allow, the methods the path serves. */
      (void)path_methods(r);
      tp_reply_error(r, TP_ERR_METHOD_NOT_ALLOWED, NULL, NULL);
    } else
      tp_reply_error(r, TP_ERR_URL_UNKNOWN, NULL, NULL);
    return;
  }
  r->route = rt;
  if (r->too_large) {
    tp_reply_error(r, TP_ERR_BODY_TOO_LARGE, NULL, NULL);
    return;
  }
  /* RFC 9110 8.4, 15.5.16: a body in a coding we do not decode (gzip ...)
   * is refused, not parsed as form data. */
  if (r->coded_body) {
    tp_reply_error(r, TP_ERR_CONTENT_ENCODING_UNSUPPORTED, NULL, NULL);
    return;
  }
  if ((rt->flags & TP_R_AUTH) && !access_check(r, rt))
    return;
  if (!parse_params(r, (rt->flags & TP_R_AUTH) != 0))
    return;
  if (tp_app.shutting_down && strcmp(r->method, "POST") == 0) {
    tp_reply_error(r, TP_ERR_SHUTTING_DOWN, NULL, NULL);
    return;
  }
  /* The space guard (src/core/housekeeping.c): with the disk nearly full,
   * keep what is left for the outcomes of calls already sent. */
  if (tp_store_space_low() && (rt->flags & TP_R_AUTH) && !(rt->flags & TP_R_NO_NEW_WORK) &&
      (strcmp(r->method, "POST") == 0 || strcmp(r->method, "DELETE") == 0)) {
    tp_reply_error(r, TP_ERR_STORE_FULL, NULL, "The data store is nearly out of space; new requests are refused "
                                              "until space is freed");
    return;
  }
  if ((rt->flags & TP_R_AUTH) && strcmp(r->method, "POST") == 0) {
    const char *k = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Idempotency-Key");
    if (k && *k) {
      /* RFC 9110 5.5: trailing whitespace is not the value's, nor counted */
      size_t kl = strlen(k);
      while (kl > 0 && (k[kl - 1] == ' ' || k[kl - 1] == '\t'))
        kl--;
      if (kl > 255) {
        tp_reply_error(r, TP_ERR_IDEMPOTENCY_KEY_TOO_LONG, NULL, NULL);
        return;
      }
      tp_scopy(r->idem_key, sizeof r->idem_key, k); /* cut at 255: what is cut is whitespace */
      tp_rtrim_ows(r->idem_key); /* RFC 9110 5.5: "k " is the key "k" */
      if (!r->idem_key[0]) { /* blanks alone: not a key, and not "no key" either */
        tp_reply_error(r, TP_ERR_IDEMPOTENCY_KEY_INVALID, NULL, NULL);
        return;
      }
      /* Printable ASCII only: the key is echoed in headers and written
       * into every event of the request (objects.c builds them by hand). */
      for (const char *c = r->idem_key; *c; c++)
        if (*c < 0x20 || *c > 0x7e) {
          r->idem_key[0] = '\0';
          tp_reply_error(r, TP_ERR_IDEMPOTENCY_KEY_INVALID, NULL, NULL);
          return;
        }
      r->has_idem = r->idem_key[0] != '\0';
      if (!r->has_idem) {
        run_handler(r);
        return;
      }
      if (tp_idem_begin(r))
        return;
    }
  }
  run_handler(r);
}

/* The path, card-number-like digit runs masked, cut to cap: the whole
 * path is masked before it is cut (at most the request line's 12 KiB), as
 * a number across the cut kept its first digits, under the run the mask
 * takes for a card number, and masking shortens what comes before (a
 * full-width digit becomes one '*'), bringing a number from past any fixed
 * slack into the part kept. */
static void masked_path(char *out, size_t cap, const char *url)
{
  url = url ? url : "";
  if ((size_t)tp_scopy(out, cap, url) < cap) { /* the whole path fits: masked where it is (every request) */
    tp_mask_card_numbers(out);
    return;
  }
  char *all = strdup(url);
  if (!all) {
    tp_scopy(out, cap, "");
    return;
  }
  tp_mask_card_numbers(all);
  tp_scopy(out, cap, all);
  free(all);
  tp_utf8_scrub(out); /* a character the cut split */
}

/* Count the request in the metrics and write its log line (no bodies, no
 * query strings, card-number-like digit runs masked, spaced or dashed too
 * (tp_mask_card_numbers): nothing that could hold card data). */
static void observe_request(struct tp_req *r)
{
  r->observed = true;
  int64_t us = (tp_mono_ns() - r->t0_ns) / 1000;
  char labels[192];
  /* The method as a label: one of a fixed set (each distinct method was a
   * new series, and a client could fill the registry or break the text). */
  static const char *const known[] = {"GET", "POST", "DELETE", "HEAD", "OPTIONS", "PUT", "PATCH", NULL};
  const char *method = "other";
  for (int i = 0; known[i]; i++)
    if (strcmp(r->method, known[i]) == 0)
      method = known[i];
  snprintf(labels, sizeof labels, "route=\"%s\",method=\"%s\",code=\"%uxx\"",
           r->route ? r->route->pattern : "unmatched", method, r->status / 100);
  tp_metric_inc("turnpike_http_requests_total", labels, 1);
  snprintf(labels, sizeof labels, "route=\"%s\",method=\"%s\"", r->route ? r->route->pattern : "unmatched",
           method);
  tp_metric_observe_us("turnpike_http_request_duration_seconds", labels, us);
  if (r->authed) {
    char rpath[256];
    masked_path(rpath, sizeof rpath, r->url);
    tp_reqlog_record(r->request_id, r->merchant.id, r->method, r->route ? r->route->pattern : "unmatched", rpath,
                     tp_req_client_addr(r), r->status, r->resp, r->resp_len, us);
  }
  if (!log_requests || !TP_LOG_ON(TP_LOG_INFO))
    return;
  /* The object the request was about: the {id} of the path, else the id of
   * the object replied (objects are built with "id" first). */
  char obj[sizeof r->path_id] = "";
  const char *id_at = NULL;
  if (r->path_id[0])
    tp_scopy(obj, sizeof obj, r->path_id);
  else if (r->resp && r->resp_len > 8 && strncmp(r->resp, "{\"id\":\"", 7) == 0)
    id_at = r->resp + 7;
  else if (r->resp && r->status >= 400) {
    /* A decline made a PaymentIntent (or SetupIntent) and its charge: the
     * error carries it, and the line names it so the payment can be traced. */
    static const char *const keys[] = {"\"payment_intent\":{\"id\":\"", "\"setup_intent\":{\"id\":\""};
    for (int k = 0; k < 2 && !id_at; k++) {
      const char *f = memmem(r->resp, r->resp_len, keys[k], strlen(keys[k]));
      if (f)
        id_at = f + strlen(keys[k]);
    }
  }
  if (id_at) {
    size_t i = 0;
    for (const char *p = id_at; i + 1 < sizeof obj && p < r->resp + r->resp_len && *p != '"'; p++)
      obj[i++] = *p;
    obj[i] = '\0';
  }
  char path[512];
  masked_path(path, sizeof path, r->url);
  tp_mask_card_numbers(obj);
  /* Once per request: the fields are written directly (tp_jbuf), the same
   * line tp_log would give. */
  struct tp_jbuf b = {0};
  TP_JBUF_STR(&b, "\"request_id\":", r->request_id);
  TP_JBUF_STR(&b, ",\"method\":", r->method);
  TP_JBUF_STR(&b, ",\"route\":", r->route ? r->route->pattern : "unmatched");
  TP_JBUF_STR(&b, ",\"path\":", path);
  TP_JBUF_INT(&b, ",\"status\":", (int64_t)r->status);
  TP_JBUF_STR(&b, ",\"merchant\":", r->authed ? r->merchant.id : "");
  TP_JBUF_STR(&b, ",\"ip\":", tp_req_client_addr(r));
  TP_JBUF_STR(&b, ",\"object\":", obj);
  TP_JBUF_INT(&b, ",\"latency_us\":", us);
  if (r->gone_status)
    TP_JBUF_INT(&b, ",\"reply_status\":", (int64_t)r->gone_status);
  if (r->replayed) /* the stored reply of an earlier request with its Idempotency-Key */
    TP_JBUF_LIT(&b, ",\"replayed\":true");
  size_t n = 0;
  char *fields = tp_jbuf_finish(&b, &n);
  if (fields)
    tp_log_fields(TP_LOG_INFO, "request", fields, n, true);
  free(fields);
}

/* Stripe-Should-Retry, which Stripe's SDKs obey before their own rules
 * (they retry any 409 and 5xx, with the same Idempotency-Key): "true" for a
 * lock or key held by another request, which frees up in moments; "false"
 * for an answer that is final (a replay, or a payment outcome the key
 * replays), so the SDK does not wait to be told the same; else unset. */
static char *tls_cert, *tls_key, *tls_prio; /* [tls], PEM text; NULL: plain HTTP */

static const char *should_retry(const struct tp_req *r)
{
  if (r->replayed || (r->settled_error && r->status >= 400))
    return "false";
  if (r->status < 400 || !r->resp)
    return NULL;
  /* Every error body carries its registry number (tp_code). */
  const char *c = memmem(r->resp, r->resp_len, "\"tp_code\":", 10);
  if (!c)
    return NULL;
  long code = strtol(c + 10, NULL, 10);
  if (code == TP_ERR_LOCK_TIMEOUT || code == TP_ERR_IDEMPOTENCY_KEY_IN_USE ||
      code == TP_ERR_SEARCH_CONCURRENCY_LIMITED || /* a search refused at once, to retry shortly */
      code == TP_ERR_SHUTTING_DOWN) /* nothing done: the restarted gateway, or another, takes it */
    return "true";
  if (code == TP_ERR_PROCESSOR_RETRIES_EXHAUSTED || code == TP_ERR_PROCESSOR_STATUS_UNKNOWN)
    return "false";
  return NULL;
}

static enum MHD_Result queue_reply(struct tp_req *r)
{
  /* The key's result is committed (or there is none to keep): it is free
   * for the next request now, not once this reply has gone out, or a
   * client that sent the next one on another connection the moment it read
   * this reply could find it still in use (a 409 after a validation error,
   * which keeps nothing). */
  tp_idem_end(r);
  /* answered: the connection may now idle as keep-alive allows */
  MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)TP_HTTP_TIMEOUT_S);
  /* A client that half-closed as it sent its request (printf ... | nc -N)
   * has nothing more to send: libmicrohttpd 0.9.75's edge-triggered epoll
   * can miss that FIN, and the connection sat 60 s in CLOSE-WAIT after the
   * reply; 70 such a second held every connection slot (review, session
   * 41). Seen here (a read of nothing at end of stream), the connection
   * may idle a second only, not be closed with this reply: requests it
   * pipelined before its FIN may be in libmicrohttpd's buffer already, and
   * closing answered the first alone (the day's review). Plain HTTP only:
   * TLS reads its own records. */
  if (!tls_cert) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    char c;
    if (ci && recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0)
      MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, 1u);
  }
  if (r->raw_resp) {
    enum MHD_Result rr = MHD_queue_response(r->conn, r->status, r->raw_resp);
    MHD_destroy_response(r->raw_resp);
    r->raw_resp = NULL;
    observe_request(r);
    return rr;
  }
  if (!r->resp) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
  }
  if (r->publishable && r->resp && (!r->content_type || strcmp(r->content_type, "application/json") == 0)) {
    /* After the idempotency record took the whole reply: a replay to a
     * secret key still gets all of it. */
    size_t len = r->resp_len;
    char *cut = tp_publishable_view(r->resp, &len, (r->route->flags & TP_R_CLIENT) != 0);
    if (!cut) {
      tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    } else {
      free(r->resp);
      r->resp = cut;
      r->resp_len = len;
    }
  }
  if (r->resp_len >= TP_HTTP_REPLY_COUNTED) {
    size_t held = atomic_fetch_add(&replies_held, r->resp_len) + r->resp_len;
    /* (one reply alone is never refused, however large) */
    if (held > replies_held_max && held > r->resp_len &&
        (strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0)) {
      /* only a read: what a write did is in its idempotency record */
      atomic_fetch_sub(&replies_held, r->resp_len);
      tp_log(TP_LOG_WARN, "replies_held_full", "{s:I, s:s}", "bytes", (json_int_t)(held - r->resp_len), "route",
             r->route ? r->route->pattern : "");
      tp_reply_error(r, TP_ERR_OVERLOADED, NULL, NULL);
    } else {
      r->reply_held = r->resp_len;
    }
  }
  const char *retry = should_retry(r); /* before MHD takes the body */
  struct MHD_Response *resp = MHD_create_response_from_buffer(r->resp_len, r->resp, MHD_RESPMEM_MUST_FREE);
  if (!resp)
    return MHD_NO;
  if (!r->reply_queued && r->dispatched) { /* (one refused before its body is read counts as receiving) */
    r->reply_queued = true;
    atomic_fetch_add(&replying, 1);
  }
  observe_request(r);
  r->resp = NULL; /* MHD owns it now */
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                          r->content_type ? r->content_type : "application/json");
  MHD_add_response_header(resp, "Request-Id", r->request_id);
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache, no-store");
  if (r->url && strncmp(r->url, "/oauth/", 7) == 0) /* a token's reply: RFC 6749 §5.1 asks for both */
    MHD_add_response_header(resp, "Pragma", "no-cache");
  if (r->has_idem)
    MHD_add_response_header(resp, "Idempotency-Key", r->idem_key);
  if (r->replayed) {
    MHD_add_response_header(resp, "Idempotent-Replayed", "true");
    if (r->original_request[0]) /* Stripe: the request that made this reply */
      MHD_add_response_header(resp, "Original-Request", r->original_request);
  }
  if (retry)
    MHD_add_response_header(resp, "Stripe-Should-Retry", retry);
  /* The version asked for, or (as Stripe sends the account's default) the one served. */
  MHD_add_response_header(resp, "Stripe-Version", r->api_version[0] ? r->api_version : TP_API_VERSION);
  /* Only a redirect goes somewhere: a 3-D Secure approval that could not be
   * sent (no processor, overloaded, store full) keeps the PaymentIntent as
   * it was, and the return URL prepared for it must not say otherwise. */
  if (r->location && r->status >= 300 && r->status < 400 &&
      MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, r->location) != MHD_YES)
    tp_log(TP_LOG_ERROR, "location_refused", "{s:s}", "request", r->request_id);
  MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
  if (tls_cert) /* RFC 6797: only on a secure transport; not includeSubDomains (the merchant's other hosts) */
    MHD_add_response_header(resp, "Strict-Transport-Security", "max-age=31536000");
  if (r->content_type && strncmp(r->content_type, "text/html", 9) == 0) {
    /* The 3-D Secure page: no script, no framing (a page of another site
     * cannot lay it under a click), its token kept out of Referer. */
    /* Framed only by the merchant's own page (the origin of the intent's
     * return_url), as Stripe's "3D Secure in an iframe" guide does it;
     * X-Frame-Options cannot name an origin, so it goes then. */
    char csp[400];
    snprintf(csp, sizeof csp, "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors %s; base-uri 'none'",
             r->frame_origin[0] ? r->frame_origin : "'none'");
    MHD_add_response_header(resp, "Content-Security-Policy", csp);
    if (!r->frame_origin[0])
      MHD_add_response_header(resp, "X-Frame-Options", "DENY");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
  }
  if (r->status == 429 || r->retry_after_s) {
    char ra[16];
    snprintf(ra, sizeof ra, "%u", r->retry_after_s ? r->retry_after_s : 1);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
  }
  if (r->www_authenticate[0])
    MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, r->www_authenticate);
  else if (r->status == 401 && r->url && strncmp(r->url, "/v1/", 4) == 0)
    /* RFC 9110 11.6.1: a 401 names a scheme (Stripe's: Basic). Not the
     * OAuth token endpoint's: a client_secret_post failure has none (RFC
     * 6749 5.2), and clients read a challenge as the error. */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Basic realm=\"Stripe\"");
  if (r->status == 426) { /* RFC 9110 15.5.22, RFC 6455 4.4: what to upgrade to */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "websocket");
    MHD_add_response_header(resp, "Sec-WebSocket-Version", "13");
  }
  if (r->status == 415) /* RFC 9110 12.5.3: the codings a request body may have */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCEPT_ENCODING, "identity");
  if ((r->status == 405 || (r->status == 200 && strcmp(r->url, "*") == 0)) && r->methods[0])
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->methods);
  /* its body is not read: the connection cannot go on; or the gateway is
   * stopping: the client is told before it sends another request into the
   * close (it got its 503s on a kept-alive connection, then a reset under
   * the next request, not knowing whether it ran) */
  bool close = r->close_after || tp_app.shutting_down;
  if (r->status == 426) /* RFC 9110 7.8: an Upgrade is sent with its Connection option */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, close ? "upgrade, close" : "upgrade");
  else if (close)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
  if (!close && r->keep_alive) /* how long an idle connection is kept, so that a
                                * client (undici/fetch) closes it first rather
                                * than send into the server's close */
    MHD_add_response_header(resp, "Keep-Alive", "timeout=" TP_HTTP_TIMEOUT_TEXT);
  if (cors_url(r->url)) {
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    if (r->cors_preflight) {
      MHD_add_response_header(resp, "Access-Control-Allow-Methods", r->methods);
      MHD_add_response_header(resp, "Access-Control-Allow-Headers", CORS_ALLOW_HEADERS);
      MHD_add_response_header(resp, "Access-Control-Max-Age", "300");
    } else
      MHD_add_response_header(resp, "Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS);
  }
  enum MHD_Result ret = MHD_queue_response(r->conn, r->status, resp);
  MHD_destroy_response(resp);
  return ret;
}

/* *con_cls of a request whose path has an encoded "/", "\\" or NUL: libmicrohttpd
 * decodes the path before routing, so "pi_X%2Fcancel" would reach the cancel
 * route (RFC 3986 2.2: an encoded delimiter is data). Such a path names no
 * object here and is answered 404. */
static char encoded_delimiter;
/* on_uri's mark: the query string holds a "%" not followed by two hex
 * digits (libmicrohttpd passes it through as text; the body's parser
 * refuses it, and so does the query's now) */
static char bad_query_escape;
static char bad_target; /* a request target with a space or a tab in it (RFC 9112 3) */
/* on_uri answered the request 414 itself and shut the socket: nothing of it
 * runs (libmicrohttpd may have the whole request in its buffer already, and
 * went on to hand it over: a payment was made while its client read 414) */
static char uri_refused;


/* A Stripe-shaped error written straight to the socket, which is then shut
 * down: for a request libmicrohttpd has no room left to answer (a request
 * line or header section that filled its connection pool). Best effort: a
 * client that does not read gets the close alone; over TLS, only the close. */
static void raw_reply_close(struct MHD_Connection *conn, unsigned status, const char *reason, enum tp_err code,
                            const char *request_id)
{
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!ci)
    return;
  int fd = ci->connect_fd;
  if (!tls_cert) {
    json_t *err = tp_error_object(code, NULL, NULL);
    json_t *whole = err ? json_pack("{s:o}", "error", err) : NULL;
    char *body = whole ? json_dumps(whole, JSON_COMPACT) : NULL;
    json_decref(whole);
    /* RFC 9110 6.6.1: an origin server with a clock sends Date. */
    char date[40] = "";
    struct tm tm;
    time_t now = time(NULL);
    if (gmtime_r(&now, &tm))
      strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    char head[400];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %u %s\r\nDate: %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
                      "Request-Id: %s\r\nContent-Length: %zu\r\n\r\n",
                      status, reason, date, request_id, body ? strlen(body) : 0);
    if (hl > 0 && (size_t)hl < sizeof head && send(fd, head, (size_t)hl, MSG_NOSIGNAL | MSG_DONTWAIT) == hl && body)
      (void)send(fd, body, strlen(body), MSG_NOSIGNAL | MSG_DONTWAIT);
    free(body);
  }
  shutdown(fd, SHUT_RDWR);
}

/* What the header section says about the request's framing, checked in
 * the first call before any body is read (RFC 9112): a request whose length
 * two parsers could read differently (a proxy in front, and libmicrohttpd,
 * which takes the first Content-Length and ignores a name with a space
 * before its colon) is refused and its connection closed, never read on. */
/* Fields of which a request may hold one: libmicrohttpd's look-up returns
 * the first copy, where a proxy may keep the last (RFC 9110 5.3), so a
 * second is refused rather than another key, account, version or body type
 * acted on than the one a proxy saw. */
static const struct {
  const char *name, *why;
} singletons[] = {{"Authorization", "more than one Authorization"},
                  {"Idempotency-Key", "more than one Idempotency-Key"},
                  {"Stripe-Account", "more than one Stripe-Account"},
                  {"Stripe-Version", "more than one Stripe-Version"},
                  {"Stripe-Context", "more than one Stripe-Context"},
                  {"Content-Type", "more than one Content-Type (RFC 9110 8.3)"},
                  /* RFC 6455 11.3.1, 11.3.5: not more than once in a request
                   * (a second key was served, the accept made from the first) */
                  {"Sec-WebSocket-Key", "more than one Sec-WebSocket-Key (RFC 6455 11.3.1)"},
                  {"Sec-WebSocket-Version", "more than one Sec-WebSocket-Version (RFC 6455 11.3.5)"}};
#define N_SINGLETONS (sizeof singletons / sizeof singletons[0])

struct header_scan {
  int content_length, transfer_encoding, host;
  int singleton[N_SINGLETONS]; /* copies of each of singletons[] */
  bool bad_name, bad_host, te_too_long, expect_continue;
  char te_list[256]; /* the Transfer-Encoding fields' lists, joined */
  bool coded_body;             /* Content-Encoding other than identity */
  bool conn_close, conn_keep;  /* Connection: close / keep-alive */
  uint64_t declared;
  size_t bytes;
};

/* A field name is a token (RFC 9110 5.1, 5.6.2). */
static bool token_ok(const char *s)
{
  if (!*s)
    return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
      return false;
  return true;
}

/* A Host value (RFC 9112 3.2, RFC 3986 3.2.2): empty, or a reg-name (its
 * characters), an IPv4 address or a bracketed IP literal, then an optional
 * ":" and digits. Nothing reads it, but a request with an invalid one is
 * to be refused. */
static bool host_ok(const char *v)
{
  if (!v)
    return true;
  while (*v == ' ' || *v == '\t') /* OWS is not the value's (RFC 9110 5.5) */
    v++;
  const char *end = v + strlen(v);
  while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
    end--;
  const char *p = v;
  if (p == end)
    return true;
  /* a bracketed IPv6, IPvFuture (RFC 3986) or zoned (RFC 6874) literal
   * takes ':' too; a name does not */
  const char *ok = *p == '[' ? ":.-_~!$&'()*+,;=%" : "-._~!$&'()*+,;=%";
  for (p += *p == '['; p < end && (isalnum((unsigned char)*p) || strchr(ok, *p)); p++)
    ;
  if (*v == '[' ? (p == end || *p++ != ']' || p - v < 4) : p == v)
    return false;
  if (p < end && *p == ':')
    for (p++; p < end; p++)
      if (!isdigit((unsigned char)*p))
        return false;
  return p == end;
}

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
  (void)kind;
  struct header_scan *h = cls;
  h->bytes += strlen(key) + (value ? strlen(value) : 0) + 4 + TP_HTTP_FIELD_OVERHEAD;
  if (!token_ok(key))
    h->bad_name = true;
  else if (strcasecmp(key, "Content-Length") == 0) {
    h->content_length++;
    h->declared = value ? strtoull(value, NULL, 10) : 0;
  } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
    /* Every field's list joined in order (RFC 9110 5.3: two fields are one
     * list), judged whole in framing_error; too long a list is judged bad. */
    h->transfer_encoding++;
    size_t l = strlen(h->te_list), vl = value ? strlen(value) : 0;
    if (l + vl + 2 < sizeof h->te_list)
      snprintf(h->te_list + l, sizeof h->te_list - l, "%s%s", l ? "," : "", value ? value : "");
    else
      h->te_too_long = true;
  } else if (strcasecmp(key, "Host") == 0) {
    h->host++;
    h->bad_host |= !host_ok(value);
  } else if (strcasecmp(key, "Expect") == 0)
    h->expect_continue = true;
  else if (strcasecmp(key, "Content-Encoding") == 0)
    h->coded_body |= value && *value && strcasecmp(value, "identity") != 0;
  else if (strcasecmp(key, "Connection") == 0 && value) {
    h->conn_close |= strcasestr(value, "close") != NULL;
    h->conn_keep |= strcasestr(value, "keep-alive") != NULL;
  } else {
    for (size_t i = 0; i < N_SINGLETONS; i++)
      if (strcasecmp(key, singletons[i].name) == 0) {
        h->singleton[i]++;
        break;
      }
  }
  return MHD_YES;
}

/* Per connection (libmicrohttpd's socket context): where the request
 * line of the request being read sits in the connection's buffer. */
/* The highest end of a field's key or value: with the request line's start
 * (conn_ctx.uri), the bytes the request's section really takes in the
 * buffer, whitespace libmicrohttpd skipped and a query's %XX it decoded in
 * place included (the parsed lengths left them out: a header or trailer
 * padded with 15 KB of spaces, or a percent-encoded query, passed the
 * count, and the payment was made with no room left for the reply). */
struct span {
  const char *hi;
};

static enum MHD_Result span_field(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
  (void)kind;
  struct span *sp = cls;
  const char *e = value ? value + strlen(value) : key + strlen(key);
  if (!sp->hi || e > sp->hi)
    sp->hi = e;
  return MHD_YES;
}

/* The section's footprint from uri to the fields' ends, plus records; 0
 * when it cannot be told (no start, or ends that are not after it within
 * the buffer). */
static size_t raw_footprint(struct MHD_Connection *conn, const char *uri, enum MHD_ValueKind kinds, size_t records)
{
  if (!uri)
    return 0;
  struct span sp = {NULL};
  MHD_get_connection_values(conn, kinds, span_field, &sp);
  if (!sp.hi || (uintptr_t)sp.hi <= (uintptr_t)uri || (uintptr_t)sp.hi - (uintptr_t)uri > TP_HTTP_CONN_MEMORY)
    return 0;
  return (size_t)((uintptr_t)sp.hi - (uintptr_t)uri) + records;
}

/* A query argument's or trailer field's share of the pool: its bytes and
 * libmicrohttpd's record of it. */
static enum MHD_Result count_field(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
  size_t *bytes = cls;
  *bytes += strlen(key) + (value ? strlen(value) : 0) + 4 +
            (kind == MHD_GET_ARGUMENT_KIND ? TP_HTTP_QUERY_ARG_COST : TP_HTTP_FIELD_OVERHEAD);
  return MHD_YES;
}

/* The Transfer-Encoding list, whole: 0 when it is one field of exactly
 * "chunked" (what libmicrohttpd frames); 501 when every coding but a final,
 * single chunked is one not supported ("gzip, chunked", or "gzip" alone);
 * 400 otherwise: chunked twice or not last, an empty element, whitespace
 * libmicrohttpd keeps ("chunked "), too long a list. */
static int te_judge(const struct header_scan *h)
{
  if (h->transfer_encoding == 1 && strcasecmp(h->te_list, "chunked") == 0)
    return 0;
  if (h->te_too_long)
    return 400;
  int chunked = 0, n = 0;
  bool last_chunked = false, empty = false;
  const char *p = h->te_list;
  for (;;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    while (len && (*p == ' ' || *p == '\t'))
      p++, len--;
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
      len--;
    n++;
    empty |= len == 0;
    last_chunked = len == 7 && strncasecmp(p, "chunked", 7) == 0;
    chunked += last_chunked;
    if (!e)
      break;
    p = e + 1;
  }
  if (chunked == 0 && !empty)
    return 501;
  if (chunked == 1 && last_chunked && !empty && n > 1)
    return 501;
  return 400;
}

/* The error to answer before reading the body, or 0; what else the one
 * walk of the header fields tells the request goes into r. */
static enum tp_err framing_error(struct tp_req *r, const char *version, size_t url_len, const char **why)
{
  struct MHD_Connection *conn = r->conn;
  struct header_scan h;
  memset(&h, 0, sizeof h);
  h.bytes = url_len;
  int nfields = MHD_get_connection_values(conn, MHD_HEADER_KIND, scan_header, &h);
  /* The query's arguments share the pool too (on_uri's count): a long
   * query and a header section each under the limit left no room for the
   * reply, which was never sent after the payment was made. */
  nfields += MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, count_field, &h.bytes);
  if (nfields < 0)
    nfields = 0;
  r->field_count = nfields;
  /* and what they really take, whitespace and %XX included */
  struct conn_ctx *cc = conn_ctx_of(conn);
  size_t raw = raw_footprint(conn, cc ? cc->uri : NULL, MHD_HEADER_KIND, (size_t)nfields * TP_HTTP_FIELD_OVERHEAD);
  if (raw > h.bytes)
    h.bytes = raw;
  r->field_bytes = h.bytes;
  r->section_start = cc ? cc->uri : NULL;
  r->chunked = h.transfer_encoding > 0;
  /* HTTP/1.1, or a later 1.x, which a 1.1 server handles as 1.1 (RFC 9110
   * 2.5); HTTP/1.0 otherwise. */
  bool http11 = version && strncmp(version, "HTTP/1.", 7) == 0 && version[7] >= '1' && version[7] <= '9';
  *why = NULL;
  r->coded_body = h.coded_body;
  /* Will the connection stay open after this reply (RFC 9112 9.3)? */
  r->keep_alive = http11 ? !h.conn_close : h.conn_keep;
  r->http11 = http11;
  if (h.bytes > TP_HTTP_HEADERS_MAX)
    return TP_ERR_HEADERS_TOO_LARGE;
  if (h.bad_name)
    *why = "a field name that is not a token: whitespace or a control character (RFC 9110 5.1, RFC 9112 5.1)";
  else if (h.content_length > 1)
    *why = "more than one Content-Length (RFC 9112 6.3)";
  else if (h.transfer_encoding && h.content_length)
    *why = "both Transfer-Encoding and Content-Length (RFC 9112 6.3)";
  else if (h.transfer_encoding && !http11)
    *why = "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1)";
  else if (http11 && h.host != 1)
    *why = "an HTTP/1.1 request needs exactly one Host (RFC 9112 3.2)";
  else if (h.host > 1)
    *why = "more than one Host (RFC 9112 3.2)";
  else if (h.bad_host)
    *why = "a Host that is not host[:port] (RFC 9112 3.2, RFC 3986 3.2.2)";
  for (size_t i = 0; i < N_SINGLETONS && !*why; i++)
    if (h.singleton[i] > 1)
      *why = singletons[i].why;
  int te = h.transfer_encoding ? te_judge(&h) : 0;
  if (!*why && te == 400)
    *why = "Transfer-Encoding: chunked applied more than once, not as the final coding, or not as libmicrohttpd "
           "reads it (one field, exactly chunked) (RFC 9112 6.1, 6.3)";
  if (*why)
    return TP_ERR_REQUEST_FRAMING_INVALID;
  if (te == 501)
    return TP_ERR_TRANSFER_ENCODING_UNSUPPORTED;
  /* A body over the limit: a client waiting for 100 Continue, or one that
   * would send more than TP_HTTP_DRAIN_MAX, is answered before it is read
   * (and the connection closed); a smaller one is read and dropped, so the
   * client, still writing, is not reset before it reads the 413 (RFC 9112
   * 9.6), and the connection goes on. */
  if (h.content_length && h.declared > TP_PARAMS_MAX_BODY && (h.expect_continue || h.declared > TP_HTTP_DRAIN_MAX))
    return TP_ERR_BODY_TOO_LARGE;
  return 0;
}

/* The path of a request target: RFC 9112 §3.2.2 has servers accept the
 * absolute form ("http://host/v1/..."), which proxies send; it names the
 * same resource as its path. */
static const char *origin_form(const char *url)
{
  size_t skip = strncasecmp(url, "http://", 7) == 0 ? 7 : strncasecmp(url, "https://", 8) == 0 ? 8 : 0;
  if (!skip)
    return url;
  const char *slash = strchr(url + skip, '/');
  return slash ? slash : "/";
}

/* commit_sync = pipelined: a reply built by the handler from what it read
 * (not by a commit's completion, which runs after its batch is synced) is
 * held until every batch begun before it is on disk. Reads see a commit
 * before its sync, and a GET showed a payment, its charge and events that
 * a power cut then erased (review, session 39; the stream and webhooks,
 * and idempotent replays, were bounded before). The syncer resumes it. */
static pthread_mutex_t sync_mu = PTHREAD_MUTEX_INITIALIZER;
static struct tp_req *sync_waiters;

static bool sync_hold(struct tp_req *r)
{
  uint64_t mark = tp_writer_read_mark(); /* 0 in full mode: nothing to hold */
  if (tp_writer_synced(mark))
    return false;
  if (r->raw_resp)
    return false; /* a WebSocket upgrade: the stream bounds what it sends itself */
  /* Only what an account reads: not /healthz, /readyz, /metrics, a
   * preflight, or a request refused before its key was taken (they show no
   * committed object, and a stalled disk held the liveness probe and the
   * metrics that say so; review, session 39). */
  if (!r->authed || r->cors_preflight || !r->url || strncmp(r->url, "/v1/", 4) != 0)
    return false;
  r->sync_mark = mark;
  tp_req_suspend(r); /* first: the syncer may resume it at once */
  pthread_mutex_lock(&sync_mu);
  r->sync_next = sync_waiters;
  sync_waiters = r;
  bool now = tp_writer_synced(mark);
  if (now)
    sync_waiters = r->sync_next; /* still first: only this thread adds */
  pthread_mutex_unlock(&sync_mu);
  if (now)
    tp_req_resume(r);
  return true;
}

/* The syncer thread, after a sync: the replies it covers go out. */
static void on_synced(void)
{
  struct tp_req *go = NULL;
  pthread_mutex_lock(&sync_mu);
  for (struct tp_req **p = &sync_waiters; *p;) {
    struct tp_req *w = *p;
    if (tp_writer_synced(w->sync_mark)) {
      *p = w->sync_next;
      w->sync_next = go;
      go = w;
    } else {
      p = &w->sync_next;
    }
  }
  pthread_mutex_unlock(&sync_mu);
  while (go) {
    struct tp_req *n = go->sync_next;
    tp_req_resume(go);
    go = n;
  }
}

static enum MHD_Result handle_request(struct MHD_Connection *conn, const char *url, const char *method,
                                     const char *version, const char *upload_data, size_t *upload_data_size,
                                     void **con_cls)
{
  struct tp_req *r = *con_cls;
  if (r == (void *)&uri_refused)
    return MHD_NO; /* answered and closed by on_uri */
  bool bad_path = r == (void *)&encoded_delimiter, bad_query = r == (void *)&bad_query_escape,
       bad_line = r == (void *)&bad_target;
  if (bad_path || bad_query || bad_line)
    r = *con_cls = NULL;
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r)
      return MHD_NO;
    r->conn = conn;
    r->bad_path = bad_path;
    r->bad_query = bad_query;
    r->bad_target = bad_line;
    r->t0_ns = tp_mono_ns();
    /* A method is a token (RFC 9110 9.1) and a path text: what else came
     * (libmicrohttpd takes any method and decodes %FF in a path) is made
     * printable before anything logs or labels it. */
    tp_scopy(r->method, sizeof r->method, method);
    for (char *m = r->method; *m; m++)
      if (!((*m >= 'A' && *m <= 'Z') || (*m >= 'a' && *m <= 'z') || (*m >= '0' && *m <= '9') || strchr("-_.", *m)))
        *m = '?';
    r->url = strdup(origin_form(url));
    if (!r->url) {
      free(r);
      return MHD_NO;
    }
    tp_utf8_scrub(r->url);
    atomic_fetch_add(&active, 1); /* until on_completed */
    atomic_fetch_add(&receiving, 1); /* until dispatched */
    char rnd[15];
    tp_random_b62(rnd, 14);
    snprintf(r->request_id, sizeof r->request_id, "req_%s", rnd);
    *con_cls = r;
    const char *why;
    enum tp_err fe = framing_error(r, version, strlen(url), &why);
    if (fe == TP_ERR_HEADERS_TOO_LARGE && !tls_cert) {
      /* libmicrohttpd's pool, nearly full with these headers, may have no
       * room for a reply's: answered on the socket, then closed. */
      raw_reply_close(conn, 431, "Request Header Fields Too Large", TP_ERR_HEADERS_TOO_LARGE, r->request_id);
      return MHD_NO;
    }
    if (fe) {
      char msg[160];
      if (why)
        snprintf(msg, sizeof msg, "The request's header fields are not valid HTTP/1.1: %s.", why);
      tp_reply_error(r, fe, NULL, why ? msg : NULL);
      r->close_after = true;
      mark_dispatched(r);
      return queue_reply(r);
    }
    return MHD_YES;
  }
  if (*upload_data_size) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    if (tp_body_append(&r->body, &r->body_len, &r->body_cap, &r->too_large, upload_data, n, TP_PARAMS_MAX_BODY))
      return MHD_NO;
    r->body_seen += n;
    if (r->body_seen > TP_HTTP_DRAIN_MAX) {
      /* A chunked body (its size not declared, so not refused before it
       * was read) past what is read and dropped: answered now and closed,
       * or one client streamed without end and held a worker. */
      if (!tls_cert)
        raw_reply_close(conn, 413, "Content Too Large", TP_ERR_BODY_TOO_LARGE, r->request_id);
      return MHD_NO;
    }
    return MHD_YES;
  }
  if (!r->dispatched && r->chunked) {
    /* Trailer fields (after a chunked body) fill the same pool as the
     * header fields: counted with them, or many of them left no room for
     * the reply, never sent after the payment was made. Refused before
     * anything runs. */
    size_t bytes = r->field_bytes;
    int trailers = MHD_get_connection_values(conn, MHD_FOOTER_KIND, count_field, &bytes);
    size_t records = (size_t)(r->field_count + (trailers > 0 ? trailers : 0)) * TP_HTTP_FIELD_OVERHEAD;
    size_t raw = raw_footprint(conn, r->section_start, MHD_HEADER_KIND | MHD_FOOTER_KIND, records);
    if (raw > bytes)
      bytes = raw;
    if (bytes > TP_HTTP_HEADERS_MAX) {
      if (!tls_cert) {
        raw_reply_close(conn, 431, "Request Header Fields Too Large", TP_ERR_HEADERS_TOO_LARGE, r->request_id);
        return MHD_NO;
      }
      tp_reply_error(r, TP_ERR_HEADERS_TOO_LARGE, NULL, NULL);
      r->close_after = true;
      mark_dispatched(r);
      return queue_reply(r);
    }
  }
  if (!r->dispatched) {
    mark_dispatched(r);
    dispatch(r);
    if (r->suspended || sync_hold(r))
      return MHD_YES;
  } else if (r->lock_rerun) {
    r->lock_rerun = false;
    r->suspended = false;
    if (tp_app.shutting_down && strcmp(r->method, "POST") == 0) {
      /* Woken after the signal: a stopping gateway starts nothing new (it
       * changed nothing yet, so the client can retry elsewhere). */
      drop_reply(r);
      tp_reply_error(r, TP_ERR_SHUTTING_DOWN, NULL, NULL);
      return queue_reply(r);
    }
    run_handler(r);
    if (r->suspended || sync_hold(r))
      return MHD_YES;
  }
  return queue_reply(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
  (void)cls;
  (void)conn;
  struct tp_req *r = *con_cls;
  if (!r || r == (void *)&encoded_delimiter || r == (void *)&bad_query_escape || r == (void *)&bad_target ||
      r == (void *)&uri_refused)
    return;
  if (r->dispatched && !r->observed && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
    /* The client went away before its reply was queued (it closed, or
     * half-closed after sending: libmicrohttpd takes a FIN as an abort):
     * what the request did (a payment made) is still counted and logged,
     * as 499 with the reply it did not get, as nginx logs it. */
    r->gone_status = r->status ? r->status : 500;
    r->status = 499;
    observe_request(r);
  }
  atomic_fetch_sub(&active, 1);
  if (!r->dispatched)
    atomic_fetch_sub(&receiving, 1);
  if (r->reply_held)
    atomic_fetch_sub(&replies_held, r->reply_held);
  if (r->reply_queued)
    atomic_fetch_sub(&replying, 1);
  tp_idem_end(r);
  if (r->raw_resp)
    MHD_destroy_response(r->raw_resp);
  if (r->ctx_free)
    r->ctx_free(r->ctx);
  tp_params_wipe(r->params);
  json_decref(r->params);
  free(r->resp);
  tp_body_free(r->body, r->body_cap);
  free(r->url);
  free(r->location);
  free(r);
  *con_cls = NULL;
}

void tp_req_suspend(struct tp_req *r)
{
  r->suspended = true;
  atomic_fetch_add(&inflight, 1);
  MHD_suspend_connection(r->conn);
}

void tp_req_resume(struct tp_req *r)
{
  MHD_resume_connection(r->conn);
  atomic_fetch_sub(&inflight, 1);
}

/* TLS (tp_http_set_tls): PEM texts kept until the daemon stops. */

int tp_http_set_tls(const char *cert_pem, const char *key_pem, const char *priorities)
{
  if (!MHD_is_feature_supported(MHD_FEATURE_TLS)) {
    tp_log(TP_LOG_ERROR, "tls_unsupported", "{s:s}", "reason", "libmicrohttpd was built without TLS");
    return -1;
  }
  free(tls_cert);
  free(tls_key);
  free(tls_prio);
  tls_cert = strdup(cert_pem);
  tls_key = strdup(key_pem);
  tls_prio = strdup(priorities);
  return tls_cert && tls_key && tls_prio ? 0 : -1;
}

/* A request line that fills the connection's memory but for a few hundred
 * bytes (TP_HTTP_CONN_MEMORY less ~0-150) leaves libmicrohttpd 0.9.75 no
 * room to build its own 431 answer, and it answers nothing until the idle
 * timeout (found by test_api_fuzz). Longer lines get its 414 and shorter
 * ones reach on_request, which refuses a query past TP_HTTP_MAX_QUERY. So a
 * URI longer than TP_HTTP_URI_MAX is answered here, as soon as the line is
 * parsed: a 414 in Stripe's error shape written to the socket (plain HTTP;
 * over TLS the bytes would have to go through the session), then the socket
 * is shut down, which MHD sees as the peer closing and cleans up. The
 * answer goes out before MHD has sent anything for this request (it reads
 * a request only after the last answer went out). */
#define TP_HTTP_URI_MAX (TP_HTTP_CONN_MEMORY - 4096)


static bool query_bad_escape(const char *uri)
{
  const char *q = strchr(uri, '?');
  for (const char *p = q; p && *p && *p != '#'; p++)
    if (*p == '%' && (tp_hex_digit(p[1]) < 0 || tp_hex_digit(p[2]) < 0))
      return true;
  return false;
}

/* What the form parser says of the raw query string (the same message,
 * code and param as a bad escape in a body). */
static void query_error(const char *uri, struct tp_params_error *pe)
{
  memset(pe, 0, sizeof *pe);
  const char *q = strchr(uri, '?');
  if (!q)
    return;
  q++;
  size_t n = strcspn(q, "#");
  json_t *params = tp_params_parse_form(q, n, pe);
  if (params) { /* not expected: the escape is there */
    tp_params_wipe(params);
    json_decref(params);
    memset(pe, 0, sizeof *pe);
  }
}

static bool encodes_delimiter(const char *uri)
{
  for (const char *p = uri; *p && *p != '?' && *p != '#'; p++)
    if (p[0] == '%' && p[1] && p[2] &&
        ((p[1] == '2' && (p[2] == 'f' || p[2] == 'F')) || (p[1] == '0' && p[2] == '0') ||
         (p[1] == '5' && (p[2] == 'c' || p[2] == 'C'))))
      return true;
  return false;
}

/* libmicrohttpd keeps each query argument in the connection's pool
 * (TP_HTTP_CONN_MEMORY) beside the request line and the header fields, ~61
 * bytes each (measured: 128 arguments in a 7.6 KB line, or 100 in 9.3 KB,
 * fill it), and 0.9.75 then sends nothing and holds the connection until
 * its timeout. A line and its arguments are kept within TP_HTTP_URI_MAX
 * together, which leaves the header fields the same 4 KB as a long line
 * alone; and no more than 128 arguments (expand[] takes 20). */
#define TP_HTTP_MAX_QUERY_ARGS 128
#define TP_HTTP_QUERY_ARG_COST 64

static size_t query_args(const char *uri)
{
  const char *q = strchr(uri, '?');
  if (!q)
    return 0;
  size_t n = 1;
  for (q++; *q; q++)
    n += *q == '&';
  return n;
}

/* Connections are accepted here, by one thread of ours, and handed to one
 * of N libmicrohttpd daemons of one thread each (`server.threads`) with
 * MHD_add_connection; MHD itself listens on nothing
 * (MHD_USE_NO_LISTEN_SOCKET). Why not MHD's own listening and thread pool:
 * - stopping MHD's accepting takes MHD_quiesce_daemon, and on an epoll
 *   daemon with its own threads 0.9.75 races a worker's removal of the
 *   listening socket from its epoll set against its own, and whichever
 *   loses aborts the process ("Failed to remove listen FD from epoll set";
 *   seen in clean-clone runs at a stop just after a start);
 * - a pool daemon's MHD_add_connection places a connection by its
 *   descriptor's number, on a worker stuck in a slow handler as readily as
 *   on an idle one, and one that finds its worker at its share of the
 *   limit (the limit over the pool) takes a path of 0.9.75's
 *   new_connection_process_ that leaves its cleanup mutex locked: the
 *   worker deadlocks on itself, and the stop waits for it for ever (a burst
 *   of 4,096 connections; review, session 39).
 * Here each connection goes to the daemon with the fewest connections of
 * those not inside a callback of ours now, and each daemon's limit
 * (TP_HTTP_MHD_LIMIT) is four times what the count below lets all of them
 * hold together.
 *
 * At TP_HTTP_MAX_CONNECTIONS the thread stops accepting, so a new client
 * waits in the listen backlog as it did with MHD's own accepting. The count
 * is the connections MHD has started plus those handed over and not yet
 * started (a hand-over MHD drops before it starts one: forget_dropped). */
struct http_worker {
  struct MHD_Daemon *d;
  atomic_uint conns;            /* started and not closed */
  atomic_uint pending;          /* handed over, not yet started */
  atomic_uint busy;             /* requests inside on_request now */
  atomic_ullong started_total;  /* connections it has started */
  /* the acceptor's own: when it last saw this daemon idle with pending
   * connections and none started (0: not so) */
  unsigned long long seen_started;
  int64_t stall_since;
};
static struct http_worker *workers;
static unsigned nworkers;
static pthread_t acceptor;
static bool acceptor_running;
static int acceptor_stop_fd = -1; /* a pipe: its write end ends the thread */
static int acceptor_stop_w = -1;

static void dec_floor0(atomic_uint *v)
{
  unsigned p = atomic_load(v);
  while (p > 0 && !atomic_compare_exchange_weak(v, &p, p - 1))
    ;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
  struct http_worker *w = cls;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
    atomic_fetch_add(&w->conns, 1);
    atomic_fetch_add(&w->started_total, 1);
    dec_floor0(&w->pending);
    MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)TP_HTTP_REQUEST_IDLE_S);
    *socket_context = calloc(1, sizeof(struct conn_ctx)); /* NULL: the parsed count alone */
  } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
    atomic_fetch_sub(&w->conns, 1);
    free(*socket_context);
    *socket_context = NULL;
  }
}

/* The daemon a new connection goes to: the fewest connections (started and
 * handed over) among those not inside a handler now; all busy, the fewest.
 * Ties go round. Called by the acceptor, and by the stop once it has
 * ended. */
static struct http_worker *pick_worker(void)
{
  static unsigned next;
  struct http_worker *best = NULL;
  unsigned long best_score = ULONG_MAX;
  for (unsigned k = 0; k < nworkers; k++) {
    struct http_worker *w = &workers[(next + k) % nworkers];
    unsigned long score = (unsigned long)atomic_load(&w->conns) + atomic_load(&w->pending) +
                          (atomic_load(&w->busy) ? (unsigned long)TP_HTTP_MAX_CONNECTIONS : 0);
    if (score < best_score) {
      best = w;
      best_score = score;
    }
  }
  next++;
  return best;
}

/* MHD's access handler: the request's work (handle_request), counted as
 * its daemon's thread being busy meanwhile (pick_worker). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
  struct http_worker *w = cls;
  atomic_fetch_add(&w->busy, 1);
  enum MHD_Result res = handle_request(conn, url, method, version, upload_data, upload_data_size, con_cls);
  atomic_fetch_sub(&w->busy, 1);
  return res;
}

/* Hands accepted fd over; false when MHD refused it (and closed it). */
static bool hand_over(int fd, const struct sockaddr_storage *ca, socklen_t cl)
{
  struct http_worker *w = pick_worker();
  atomic_fetch_add(&w->pending, 1);
  if (MHD_add_connection(w->d, fd, (const struct sockaddr *)ca, cl) == MHD_YES)
    return true;
  dec_floor0(&w->pending);
  return false;
}

/* Connections started and handed over, all daemons: what the limit counts. */
static unsigned conns_held(void)
{
  unsigned n = 0;
  for (unsigned k = 0; k < nworkers; k++)
    n += atomic_load(&workers[k].conns) + atomic_load(&workers[k].pending);
  return n;
}

/* A hand-over MHD dropped before starting it (a TLS session or epoll_ctl
 * out of memory) never starts: a daemon seen idle (not inside a handler)
 * with connections pending and none started, twice a second apart, has
 * dropped them; its count is cleared. Only then: a daemon inside a slow
 * handler starts nothing while its connections wait, and clearing its count
 * on a timer let the acceptor take thousands more, past the daemon's own
 * limit, where libmicrohttpd 0.9.75 deadlocks (review, session 39). */
static void forget_dropped(int64_t now)
{
  for (unsigned k = 0; k < nworkers; k++) {
    struct http_worker *w = &workers[k];
    unsigned long long started = atomic_load(&w->started_total);
    if (started != w->seen_started || atomic_load(&w->pending) == 0 || atomic_load(&w->busy) > 0) {
      w->seen_started = started;
      w->stall_since = 0;
    } else if (w->stall_since == 0) {
      w->stall_since = now;
    } else if (now - w->stall_since > 1000) {
      atomic_store(&w->pending, 0);
      w->stall_since = 0;
    }
  }
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
  (void)cls;
  /* a request begins: the idle limit of one arriving (TP_HTTP_REQUEST_IDLE_S) */
  MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)TP_HTTP_REQUEST_IDLE_S);
  struct conn_ctx *cc = conn_ctx_of(conn);
  if (cc)
    cc->uri = uri; /* where this request's section starts in libmicrohttpd's buffer */
  if (!uri)
    return NULL;
  size_t len = strnlen(uri, TP_HTTP_URI_MAX + 1), args = query_args(uri);
  bool too_long = len > TP_HTTP_URI_MAX;
  if (!too_long && args <= TP_HTTP_MAX_QUERY_ARGS && len + args * TP_HTTP_QUERY_ARG_COST <= TP_HTTP_URI_MAX)
  {
    /* "GET /v1/balance xyz HTTP/1.1": libmicrohttpd takes the target to the
     * last space, and it was served as a path with a space in it */
    if (strpbrk(uri, " \t"))
      return &bad_target;
    if (encodes_delimiter(uri))
      return &encoded_delimiter;
    if (!query_bad_escape(uri))
      return NULL;
    if (cc)
      query_error(uri, &cc->qerr);
    return &bad_query_escape;
  }
  char rnd[15], rid[24];
  tp_random_b62(rnd, 14);
  snprintf(rid, sizeof rid, "req_%s", rnd);
  raw_reply_close(conn, 414, "URI Too Long", too_long ? TP_ERR_URI_TOO_LONG : TP_ERR_QUERY_TOO_MANY_PARAMETERS, rid);
  tp_metric_inc("turnpike_http_uri_too_long_total", NULL, 1);
  return &uri_refused;
}

/* The listening socket is made here, before libmicrohttpd starts, so
 * that the address it is bound to (a port 0 chosen by the kernel) is known
 * before any request can arrive: the links handed out in replies
 * (tp_app.public_url) are set from it in between, not written by the main
 * thread while the first requests are answered (ThreadSanitizer saw
 * exactly that in CI). */
static int listen_fd = -1;
static bool listen_v6;

int tp_http_listen(const char *host, uint16_t port, uint16_t *bound_port)
{
  struct sockaddr_storage sa;
  socklen_t sa_len;
  if (tp_cli_sockaddr(host, port, &sa, &sa_len) != 0) {
    tp_log(TP_LOG_ERROR, "listen_address", "{s:s}", "host", host);
    return -1;
  }
  int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (sa.ss_family == AF_INET6) /* as libmicrohttpd does without dual stack */
    (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  struct sockaddr_storage got;
  socklen_t got_len = sizeof got;
  if (bind(fd, (struct sockaddr *)&sa, sa_len) != 0 || listen(fd, SOMAXCONN) != 0 ||
      getsockname(fd, (struct sockaddr *)&got, &got_len) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  *bound_port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                : ((struct sockaddr_in *)&got)->sin_port);
  listen_fd = fd;
  listen_v6 = sa.ss_family == AF_INET6;
  return 0;
}

/* Waits up to ms for the stop pipe (true: stop) or, with fd >= 0, for fd
 * to be readable. */
static bool acceptor_wait(int fd, int ms)
{
  struct pollfd p[2] = {{.fd = acceptor_stop_fd, .events = POLLIN}, {.fd = fd, .events = POLLIN}};
  int n = poll(p, fd >= 0 ? 2 : 1, ms);
  return n > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR));
}

static void *acceptor_main(void *arg)
{
  (void)arg;
  for (;;) {
    forget_dropped(tp_mono_ms());
    if (conns_held() >= TP_HTTP_MAX_CONNECTIONS) {
      if (acceptor_wait(-1, 20))
        break;
      continue;
    }
    if (acceptor_wait(listen_fd, 1000))
      break;
    /* a burst: up to 64 at a time, then the count is looked at again */
    for (int i = 0; i < 64; i++) {
      if (conns_held() >= TP_HTTP_MAX_CONNECTIONS)
        break;
      struct sockaddr_storage ca;
      socklen_t cl = sizeof ca;
      int fd = accept4(listen_fd, (struct sockaddr *)&ca, &cl, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          tp_metric_inc("turnpike_http_accept_failures_total", NULL, 1);
          if (acceptor_wait(-1, 100)) /* a connection must close first */
            goto out;
        }
        break; /* EAGAIN, or the client already gone (ECONNABORTED) */
      }
      (void)hand_over(fd, &ca, cl); /* refused: MHD has closed fd itself */
    }
  }
out:
  return NULL;
}

static unsigned http_threads = 1;

unsigned tp_http_threads(void)
{
  return http_threads;
}

int tp_http_start(unsigned threads)
{
  http_threads = threads ? threads : 1;
  if (listen_fd < 0) {
    errno = EBADF;
    return -1;
  }
  log_requests = tp_config_bool("log", "requests", true);
  lock_wait_ms = tp_config_int("server", "lock_wait_ms", 2000, 0, 60000);
  replies_held_max = (size_t)tp_config_int("server", "reply_memory_mb", 256, 1, 1048576) << 20;
  tp_writer_on_synced(on_synced);
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC |
                   MHD_ALLOW_UPGRADE | MHD_USE_NO_LISTEN_SOCKET | (listen_v6 ? MHD_USE_IPv6 : 0);
  struct MHD_OptionItem tls_opts[] = {
    {MHD_OPTION_HTTPS_MEM_CERT, 0, tls_cert},
    {MHD_OPTION_HTTPS_MEM_KEY, 0, tls_key},
    {MHD_OPTION_HTTPS_PRIORITIES, 0, tls_prio},
    {MHD_OPTION_END, 0, NULL},
  };
  if (tls_cert)
    flags |= MHD_USE_TLS;
  else
    tls_opts[0].option = MHD_OPTION_END;
  workers = calloc(http_threads, sizeof *workers);
  int e = ENOMEM;
  if (workers) {
    for (nworkers = 0; nworkers < http_threads; nworkers++) {
      struct http_worker *w = &workers[nworkers];
      w->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, w,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)TP_HTTP_MHD_LIMIT,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)TP_HTTP_CONN_MEMORY,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)TP_HTTP_TIMEOUT_S,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                              MHD_OPTION_NOTIFY_CONNECTION, on_connection, w,
                              MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL,
                              MHD_OPTION_ARRAY, tls_opts,
                              MHD_OPTION_END);
      if (!w->d) {
        e = errno ? errno : EINVAL;
        break;
      }
    }
  }
  int pfd[2] = {-1, -1};
  if (workers && nworkers == http_threads && pipe2(pfd, O_CLOEXEC) == 0) {
    acceptor_stop_fd = pfd[0];
    acceptor_stop_w = pfd[1];
    e = pthread_create(&acceptor, NULL, acceptor_main, NULL);
    if (e == 0) {
      pthread_setname_np(acceptor, "tp-accept");
      acceptor_running = true;
      return 0;
    }
    close(pfd[0]);
    close(pfd[1]);
    acceptor_stop_fd = acceptor_stop_w = -1;
  } else if (workers && nworkers == http_threads) {
    e = errno;
  }
  for (unsigned k = 0; workers && k < nworkers; k++)
    MHD_stop_daemon(workers[k].d);
  free(workers);
  workers = NULL;
  nworkers = 0;
  close(listen_fd);
  listen_fd = -1;
  errno = e;
  return -1;
}

void tp_http_stop(unsigned wait_ms)
{
  if (!workers)
    return;
  /* Stop accepting: our acceptor ends (see acceptor_main). */
  if (acceptor_running) {
    ssize_t w = write(acceptor_stop_w, "q", 1);
    (void)w;
    pthread_join(acceptor, NULL);
    acceptor_running = false;
  }
  if (listen_fd >= 0) {
    /* Connections the kernel already completed but we had not accepted
     * would be reset by close(): a client that sent its request before the
     * signal would get no answer. Hand them to MHD instead; a POST among
     * them is answered 503 shutting_down, which a client can retry. */
    /* Up to the connection limit, as the acceptor (past it the backlog is
     * reset by the close, §11). */
    while (conns_held() < TP_HTTP_MAX_CONNECTIONS) {
      struct sockaddr_storage ca;
      socklen_t cl = sizeof ca;
      int fd = accept4(listen_fd, (struct sockaddr *)&ca, &cl, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0)
        break;
      (void)hand_over(fd, &ca, cl); /* refused: MHD has closed fd itself */
    }
    close(listen_fd); /* no new connections: a client now gets a refusal */
    listen_fd = -1;
  }
  tp_stream_shutdown(); /* upgraded sockets must be closed before MHD stops */
  /* A suspended request ends by its payment's deadline plus one call's
   * timeout, or a lock wait by lock_wait_ms (then answered 503, starting
   * nothing); libmicrohttpd aborts the process if it is stopped with a
   * connection still suspended, so wait for that, not only wait_ms. The
   * wait is for every request begun (active): one being handled or still
   * arriving is answered too, unless its client stalls past the bound. */
  int64_t longest = tp_payflow_longest_ms();
  if (lock_wait_ms > longest)
    longest = lock_wait_ms;
  longest += 2000;
  int64_t now = tp_mono_ms(), until = now + (longest > (int64_t)wait_ms ? longest : (int64_t)wait_ms);
  int64_t arriving_until = now + 1000; /* a request still arriving, a reply still going: a second to finish */
  for (;;) {
    unsigned a = atomic_load(&active), in = atomic_load(&receiving), out = atomic_load(&replying);
    now = tp_mono_ms();
    bool waiting = a > in + out || atomic_load(&inflight) > 0 || (in + out > 0 && now < arriving_until);
    if (!waiting || now >= until)
      break;
    usleep(5000);
  }
  if (atomic_load(&inflight) > 0) {
    /* Cannot happen by the bound above; everything acknowledged is
     * committed and recovery settles the rest at the next start. */
    tp_log(TP_LOG_ERROR, "shutdown_requests_abandoned", "{s:i}", "inflight", (int)atomic_load(&inflight));
    tp_log_buffer_stop();
    _exit(1);
  }
  /* Let resumed connections flush their replies. */
  usleep(100000);
  for (unsigned k = 0; k < nworkers; k++)
    MHD_stop_daemon(workers[k].d);
  free(workers);
  workers = NULL;
  nworkers = 0;
  if (acceptor_stop_fd >= 0) {
    close(acceptor_stop_fd);
    close(acceptor_stop_w);
    acceptor_stop_fd = acceptor_stop_w = -1;
  }
  tp_lock_wait_stop(); /* its waiters were requests, all ended above */
}
