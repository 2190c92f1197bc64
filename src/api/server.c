/* libmicrohttpd glue: bounded body reading, routing, authentication,
 * parameter parsing, suspend/resume and response queueing. */
#include "api/http.h"
#include "api/params.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TP_HTTP_MAX_CONNECTIONS 4096
#define TP_HTTP_CONN_MEMORY (64 * 1024)   /* per-connection header/read buffer */
#define TP_HTTP_TIMEOUT_S 60
#define TP_HTTP_MAX_QUERY 8192
#define TP_AUTH_CACHE_SLOTS 1024

struct tp_app tp_app;

static struct MHD_Daemon *daemon_;
static atomic_uint inflight;

unsigned tp_http_inflight(void)
{
  return atomic_load(&inflight);
}

/* ---- authentication ------------------------------------------------------ */
/* A small cache of key hash -> merchant so a payment costs no key lookup. */
struct auth_slot {
  uint8_t hash[32];
  struct tp_merchant m;
  char kind[16];
  int64_t until_ms;
  bool used;
};
static struct auth_slot auth_cache[TP_AUTH_CACHE_SLOTS];
static pthread_rwlock_t auth_mu = PTHREAD_RWLOCK_INITIALIZER;

static bool auth_lookup(const char *key, struct tp_merchant *m, char kind[16])
{
  uint8_t h[32];
  tp_sha256(key, strlen(key), h);
  unsigned slot = (unsigned)(h[0] | (h[1] << 8)) % TP_AUTH_CACHE_SLOTS;
  int64_t now = tp_mono_ms();
  pthread_rwlock_rdlock(&auth_mu);
  struct auth_slot *s = &auth_cache[slot];
  if (s->used && s->until_ms > now && memcmp(s->hash, h, 32) == 0) {
    *m = s->m;
    memcpy(kind, s->kind, 16);
    pthread_rwlock_unlock(&auth_mu);
    return true;
  }
  pthread_rwlock_unlock(&auth_mu);
  int found = tp_app.store.ops->apikey_lookup(tp_app.store.cls, h, m, kind);
  if (found != 1)
    return false;
  pthread_rwlock_wrlock(&auth_mu);
  s->used = true;
  memcpy(s->hash, h, 32);
  s->m = *m;
  memcpy(s->kind, kind, 16);
  s->until_ms = now + 30000; /* revocations take effect within 30 s */
  pthread_rwlock_unlock(&auth_mu);
  return true;
}

static const char *b64_alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_decode(const char *in, char *out, size_t outcap)
{
  size_t o = 0;
  unsigned acc = 0;
  int bits = 0;
  for (; *in && *in != '='; in++) {
    const char *p = strchr(b64_alpha, *in);
    if (!p)
      return -1;
    acc = (acc << 6) | (unsigned)(p - b64_alpha);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (o + 1 >= outcap)
        return -1;
      out[o++] = (char)((acc >> bits) & 0xff);
    }
  }
  out[o] = '\0';
  return (int)o;
}

/* Authorization: Bearer KEY, or Basic base64(KEY:). */
static enum tp_err authenticate(struct tp_req *r)
{
  const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
  if (!h || !*h)
    return TP_ERR_AUTH_MISSING;
  char key[256];
  if (strncasecmp(h, "Bearer ", 7) == 0) {
    const char *k = h + 7;
    while (*k == ' ')
      k++;
    if (strlen(k) >= sizeof key)
      return TP_ERR_AUTH_INVALID_KEY;
    snprintf(key, sizeof key, "%s", k);
  } else if (strncasecmp(h, "Basic ", 6) == 0) {
    if (strlen(h) > 400 || b64_decode(h + 6, key, sizeof key) < 0)
      return TP_ERR_AUTH_INVALID_KEY;
    char *colon = strchr(key, ':');
    if (colon)
      *colon = '\0';
  } else
    return TP_ERR_AUTH_INVALID_KEY;
  if (!key[0])
    return TP_ERR_AUTH_MISSING;
  if (!auth_lookup(key, &r->merchant, r->key_kind))
    return TP_ERR_AUTH_INVALID_KEY;
  if (strcmp(r->key_kind, "secret") != 0)
    return TP_ERR_PUBLISHABLE_KEY_FORBIDDEN;
  r->authed = true;
  return TP_ERR_OK;
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
    if (strcmp(rt->method, r->method) == 0)
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

static void qs_put(struct qs *q, const char *s, bool encode)
{
  for (; *s; s++) {
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

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
  (void)kind;
  struct qs *q = cls;
  if (q->len)
    qs_put(q, "&", false);
  qs_put(q, key, true);
  if (value) {
    qs_put(q, "=", false);
    qs_put(q, value, true);
  }
  return q->overflow ? MHD_NO : MHD_YES;
}

/* Parse the query (GET/DELETE) or the body (POST) into r->params. */
static bool parse_params(struct tp_req *r)
{
  struct tp_params_error pe;
  memset(&pe, 0, sizeof pe);
  if (strcmp(r->method, "POST") == 0) {
    const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ct && strncasecmp(ct, "application/json", 16) == 0)
      r->params = tp_params_parse_json(r->body ? r->body : "", r->body_len, &pe);
    else if (!ct || strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0 || r->body_len == 0)
      r->params = tp_params_parse_form(r->body ? r->body : "", r->body_len, &pe);
    else {
      tp_reply_error(r, TP_ERR_UNSUPPORTED_MEDIA_TYPE, NULL, NULL);
      return false;
    }
    /* Stripe also reads the query string on POST; merge it under the body. */
  } else {
    char buf[TP_HTTP_MAX_QUERY];
    struct qs q = {buf, 0, sizeof buf, false};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, collect_arg, &q);
    if (q.overflow) {
      tp_reply_error(r, TP_ERR_BODY_TOO_LARGE, NULL, "The query string is too long.");
      return false;
    }
    buf[q.len] = '\0';
    r->params = tp_params_parse_form(buf, q.len, &pe);
  }
  if (!r->params) {
    tp_reply_params_error(r, &pe, false);
    return false;
  }
  return true;
}

/* ---- dispatch ------------------------------------------------------------- */
static void dispatch(struct tp_req *r)
{
  bool url_known;
  const struct tp_route *rt = route(r, &url_known);
  if (!rt) {
    if (url_known)
      tp_reply_error(r, TP_ERR_METHOD_NOT_ALLOWED, NULL, NULL);
    else
      tp_reply_error(r, TP_ERR_URL_UNKNOWN, NULL, NULL);
    return;
  }
  r->route = rt;
  if (r->too_large) {
    tp_reply_error(r, TP_ERR_BODY_TOO_LARGE, NULL, NULL);
    return;
  }
  if (rt->flags & TP_R_AUTH) {
    enum tp_err e = authenticate(r);
    if (e != TP_ERR_OK) {
      tp_reply_error(r, e, NULL, NULL);
      return;
    }
  }
  if (!parse_params(r))
    return;
  if (tp_app.shutting_down && strcmp(r->method, "POST") == 0) {
    tp_reply_error(r, TP_ERR_SHUTTING_DOWN, NULL, NULL);
    return;
  }
  if ((rt->flags & TP_R_AUTH) && strcmp(r->method, "POST") == 0) {
    const char *k = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Idempotency-Key");
    if (k && *k) {
      if (strlen(k) > 255) {
        tp_reply_error(r, TP_ERR_IDEMPOTENCY_KEY_TOO_LONG, NULL, NULL);
        return;
      }
      snprintf(r->idem_key, sizeof r->idem_key, "%s", k);
      r->has_idem = true;
      if (tp_idem_begin(r))
        return;
    }
  }
  rt->fn(r);
}

static enum MHD_Result queue_reply(struct tp_req *r)
{
  if (!r->resp) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
  }
  struct MHD_Response *resp = MHD_create_response_from_buffer(r->resp_len, r->resp, MHD_RESPMEM_MUST_FREE);
  if (!resp)
    return MHD_NO;
  r->resp = NULL; /* MHD owns it now */
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                          r->content_type ? r->content_type : "application/json");
  MHD_add_response_header(resp, "Request-Id", r->request_id);
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache, no-store");
  if (r->has_idem)
    MHD_add_response_header(resp, "Idempotency-Key", r->idem_key);
  if (r->replayed)
    MHD_add_response_header(resp, "Idempotent-Replayed", "true");
  if (r->location[0])
    MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, r->location);
  if (r->status == 429)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
  enum MHD_Result ret = MHD_queue_response(r->conn, r->status, resp);
  MHD_destroy_response(resp);
  if (TP_LOG_ON(TP_LOG_DEBUG))
    tp_log(TP_LOG_DEBUG, "request", "{s:s, s:s, s:s, s:i, s:s, s:I}", "request_id", r->request_id, "method",
           r->method, "path", r->url, "status", (int)r->status, "merchant", r->authed ? r->merchant.id : "",
           "latency_us", (json_int_t)((tp_mono_ns() - r->t0_ns) / 1000));
  return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
  (void)cls;
  (void)version;
  struct tp_req *r = *con_cls;
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r)
      return MHD_NO;
    r->conn = conn;
    r->t0_ns = tp_mono_ns();
    snprintf(r->method, sizeof r->method, "%s", method);
    r->url = strdup(url);
    if (!r->url) {
      free(r);
      return MHD_NO;
    }
    char rnd[15];
    tp_random_b62(rnd, 14);
    snprintf(r->request_id, sizeof r->request_id, "req_%s", rnd);
    *con_cls = r;
    return MHD_YES;
  }
  if (*upload_data_size) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    if (r->too_large || r->body_len + n > TP_PARAMS_MAX_BODY) {
      r->too_large = true; /* keep draining; answer 413 at the end */
      return MHD_YES;
    }
    if (r->body_len + n + 1 > r->body_cap) {
      size_t cap = r->body_cap ? r->body_cap : 1024;
      while (cap < r->body_len + n + 1)
        cap *= 2;
      /* Not realloc: the old buffer may hold a card number and must be wiped. */
      char *nb = malloc(cap);
      if (!nb)
        return MHD_NO;
      if (r->body) {
        memcpy(nb, r->body, r->body_len);
        explicit_bzero(r->body, r->body_cap);
        free(r->body);
      }
      r->body = nb;
      r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, upload_data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return MHD_YES;
  }
  if (!r->dispatched) {
    r->dispatched = true;
    dispatch(r);
    if (r->suspended)
      return MHD_YES;
  }
  return queue_reply(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
  (void)cls;
  (void)conn;
  (void)toe;
  struct tp_req *r = *con_cls;
  if (!r)
    return;
  tp_idem_end(r);
  if (r->ctx_free)
    r->ctx_free(r->ctx);
  tp_params_wipe(r->params);
  json_decref(r->params);
  free(r->resp);
  if (r->body)
    explicit_bzero(r->body, r->body_cap);
  free(r->body);
  free(r->url);
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

int tp_http_start(const char *host, uint16_t port, unsigned threads, uint16_t *bound_port)
{
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
    tp_log(TP_LOG_ERROR, "listen_address", "{s:s}", "host", host);
    return -1;
  }
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC;
  daemon_ = MHD_start_daemon(flags, port, NULL, NULL, on_request, NULL,
                             MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                             MHD_OPTION_THREAD_POOL_SIZE, threads,
                             MHD_OPTION_CONNECTION_LIMIT, (unsigned)TP_HTTP_MAX_CONNECTIONS,
                             MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)TP_HTTP_CONN_MEMORY,
                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)TP_HTTP_TIMEOUT_S,
                             MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                             MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
                             MHD_OPTION_END);
  if (!daemon_)
    return -1;
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
  *bound_port = di ? di->port : port;
  return 0;
}

void tp_http_stop(unsigned wait_ms)
{
  if (!daemon_)
    return;
  MHD_socket s = MHD_quiesce_daemon(daemon_);
  if (s != MHD_INVALID_SOCKET)
    close(s);
  int64_t until = tp_mono_ms() + wait_ms;
  while (atomic_load(&inflight) > 0 && tp_mono_ms() < until)
    usleep(5000);
  /* Let resumed connections flush their replies. */
  usleep(100000);
  MHD_stop_daemon(daemon_);
  daemon_ = NULL;
}
