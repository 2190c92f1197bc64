/* The REST/JSON processor connector: one thread drives a libcurl multi handle
 * (HTTP/1.1 keep-alive, up to RJ_MAX_HOST_CONN connections to the processor);
 * submit() queues a call and wakes the loop with curl_multi_wakeup; each
 * completion maps the answer and calls c->done on the loop thread.
 *
 * The protocol (docs/processors.md):
 *   POST {base}/v1/authorizations                 -> {"status":"approved"|"declined",...}
 *   POST {base}/v1/authorizations/{orig}/capture  -> {"status":"captured"}
 *   POST {base}/v1/authorizations/{orig}/void     -> {"status":"voided"}
 *   POST {base}/v1/refunds                        -> {"status":"succeeded"|"failed"}
 *   GET  {base}/v1/transactions/{ref}             -> the stored answer, 404 never seen
 * Request bodies hold the PAN: they are built in our own buffer, wiped after
 * the transfer, never logged, and curl's verbose mode stays off.
 * https: peer and host name always verified, TLS 1.2 or newer, optional CA
 * file and client certificate (tp_curl_tls_setup, shared with the health
 * checks in procs.c). */
#include "connectors/connector.h"
#include "log.h"
#include "util.h"

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define RJ_QUEUE 65536              /* calls waiting for the loop */
#define RJ_MAX_HOST_CONN 64         /* parallel connections to the processor */
#define RJ_MAX_RESPONSE (64 * 1024) /* bytes of a response body */
#define RJ_BODY_MAX 1024            /* bytes of a request body */
#define RJ_URL_MAX 1024
#define RJ_PATH_MAX 512             /* TLS file paths */

struct rj_xfer {
  struct rj *rj;
  struct tp_proc_call *c;
  CURL *easy;
  char url[RJ_URL_MAX];
  char body[RJ_BODY_MAX];
  size_t body_len;
  char *resp;
  size_t resp_len, resp_cap;
  bool too_large;
  bool sent;                        /* a connection was ready to carry the request (on_prereq) */
  bool resend_refused;              /* libcurl would have sent it again (on_prereq) */
  char errbuf[CURL_ERROR_SIZE];     /* libcurl's words for a failure (logged for TLS failures) */
  struct rj_xfer *next_free;        /* free list */
  struct rj_xfer *prev, *next;      /* in-flight list */
};

struct rj {
  _Atomic int64_t tls_logged_ms; /* last processor_tls_failed log line */
  char name[64];
  char base[512];
  int timeout_ms;
  char ca_file[RJ_PATH_MAX], client_cert[RJ_PATH_MAX], client_key[RJ_PATH_MAX];
  struct tp_tls_opts tls;      /* points into the three paths above */
  struct curl_slist *headers;
  CURLM *multi;
  pthread_t thread;
  pthread_mutex_t mu;
  struct tp_proc_call **q;
  size_t head, len;
  bool stop;
  struct rj_xfer *free_list;   /* loop thread only */
  struct rj_xfer *active;      /* loop thread only: transfers in the multi handle */
};

/* ---- request bodies --------------------------------------------------- */

struct jbuf {
  char *p;
  size_t len, cap;
  bool overflow;
};

static void jb_raw(struct jbuf *b, const char *s)
{
  size_t n = strlen(s);
  if (b->overflow || b->len + n >= b->cap) {
    b->overflow = true;
    return;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

/* A JSON string literal; control characters and quotes escaped. */
static void jb_str(struct jbuf *b, const char *s)
{
  jb_raw(b, "\"");
  for (; *s && !b->overflow; s++) {
    char e[8];
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      snprintf(e, sizeof e, "\\%c", ch);
    else if (ch < 0x20)
      snprintf(e, sizeof e, "\\u%04x", ch);
    else {
      e[0] = (char)ch;
      e[1] = 0;
    }
    jb_raw(b, e);
  }
  jb_raw(b, "\"");
}

static void jb_int(struct jbuf *b, long long v)
{
  char n[32];
  snprintf(n, sizeof n, "%lld", v);
  jb_raw(b, n);
}

static bool all_digits(const char *s, size_t max)
{
  size_t n = strlen(s);
  if (n == 0 || n > max)
    return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9')
      return false;
  return true;
}

/* A path segment we put in a URL: our references are [A-Za-z0-9_-]. */
static bool safe_segment(const char *s) { return *s && tp_token_ok(s, 63); }

/* Build url and body for c; -1 when the call cannot be expressed. */
static int build_request(struct rj_xfer *x)
{
  const struct tp_proc_call *c = x->c;
  struct jbuf b = {x->body, 0, sizeof x->body, false};
  const char *base = x->rj->base;
  int n = 0;
  x->body[0] = 0;
  if (!safe_segment(c->ref))
    return -1;
  switch (c->kind) {
  case TP_PROC_AUTHORIZE:
    if (!all_digits(c->pan, 19) || (c->cvc[0] && !all_digits(c->cvc, 4)))
      return -1;
    n = snprintf(x->url, sizeof x->url, "%s/v1/authorizations", base);
    jb_raw(&b, "{\"reference\":");
    jb_str(&b, c->ref);
    if (c->payment[0]) {
      jb_raw(&b, ",\"payment\":");
      jb_str(&b, c->payment);
    }
    jb_raw(&b, ",\"amount\":");
    jb_int(&b, c->amount);
    jb_raw(&b, ",\"currency\":");
    jb_str(&b, c->currency);
    jb_raw(&b, c->capture ? ",\"capture\":true" : ",\"capture\":false");
    jb_raw(&b, ",\"card\":{\"number\":");
    jb_str(&b, c->pan);
    jb_raw(&b, ",\"exp_month\":");
    jb_int(&b, c->exp_month);
    jb_raw(&b, ",\"exp_year\":");
    jb_int(&b, c->exp_year);
    if (c->cvc[0]) {
      jb_raw(&b, ",\"cvc\":");
      jb_str(&b, c->cvc);
    } else if (c->no_cvc)
      jb_raw(&b, ",\"cvc\":null"); /* none ever given; absent: one came with the card earlier */
    jb_raw(&b, "}}");
    break;
  case TP_PROC_CAPTURE:
  case TP_PROC_VOID:
    if (!safe_segment(c->orig_ref))
      return -1;
    n = snprintf(x->url, sizeof x->url, "%s/v1/authorizations/%s/%s", base, c->orig_ref,
                 c->kind == TP_PROC_CAPTURE ? "capture" : "void");
    jb_raw(&b, "{\"reference\":");
    jb_str(&b, c->ref);
    if (c->kind == TP_PROC_CAPTURE) {
      jb_raw(&b, ",\"amount\":");
      jb_int(&b, c->amount);
    }
    jb_raw(&b, "}");
    break;
  case TP_PROC_REFUND:
    if (!safe_segment(c->orig_ref))
      return -1;
    n = snprintf(x->url, sizeof x->url, "%s/v1/refunds", base);
    jb_raw(&b, "{\"reference\":");
    jb_str(&b, c->ref);
    jb_raw(&b, ",\"authorization\":");
    jb_str(&b, c->orig_ref);
    jb_raw(&b, ",\"amount\":");
    jb_int(&b, c->amount);
    jb_raw(&b, "}");
    break;
  case TP_PROC_STATUS:
    n = snprintf(x->url, sizeof x->url, "%s/v1/transactions/%s", base, c->ref);
    break;
  }
  if (n < 0 || (size_t)n >= sizeof x->url || b.overflow)
    return -1;
  x->body_len = b.len;
  return 0;
}

/* ---- responses -------------------------------------------------------- */

static size_t on_write(char *data, size_t size, size_t nmemb, void *arg)
{
  struct rj_xfer *x = arg;
  size_t n = size * nmemb;
  if (x->resp_len + n > RJ_MAX_RESPONSE) {
    x->too_large = true;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  if (x->resp_len + n + 1 > x->resp_cap) {
    size_t cap = x->resp_cap ? x->resp_cap : 1024;
    while (cap < x->resp_len + n + 1)
      cap *= 2;
    char *p = realloc(x->resp, cap);
    if (!p) {
      x->too_large = true;
      return 0;
    }
    x->resp = p;
    x->resp_cap = cap;
  }
  memcpy(x->resp + x->resp_len, data, n);
  x->resp_len += n;
  x->resp[x->resp_len] = 0;
  return n;
}

static void set_error(struct tp_proc_call *c, const char *code)
{
  c->outcome = TP_OUT_ERROR;
  tp_scopy(c->decline_code, sizeof c->decline_code, code);
}

static const char *curl_error_code(CURLcode rc)
{
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT:
    return "processor_timeout";
  case CURLE_COULDNT_CONNECT:
    return "processor_connection_refused";
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return "processor_dns_failed";
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
    return "processor_connection_reset";
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_CLIENTCERT:
  case CURLE_USE_SSL_FAILED:
    return "processor_tls_failed";
  case CURLE_ABORTED_BY_CALLBACK:
    return "processor_cancelled";
  default:
    return "processor_unavailable";
  }
}

/* Transport errors that mean the request never reached the processor,
 * when libcurl reports them for a request not yet sent. */
static bool not_sent_code(const char *code)
{
  return strcmp(code, "processor_connection_refused") == 0 || strcmp(code, "processor_dns_failed") == 0 ||
         strcmp(code, "processor_tls_failed") == 0 || strcmp(code, "processor_connect_timeout") == 0;
}

/* A decline code from the processor: lower-case words only, else generic. */
static void copy_code(struct tp_proc_call *c, const char *code, const char *def)
{
  bool ok = code && *code && strlen(code) < sizeof c->decline_code;
  for (const char *s = code; ok && *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
      ok = false;
  tp_scopy(c->decline_code, sizeof c->decline_code, ok ? code : def);
}

static void copy_text(char *dst, size_t cap, json_t *v)
{
  const char *s = json_string_value(v);
  if (!s)
    return;
  size_t i = 0;
  /* printable ASCII only: these end up in our objects and logs */
  for (; s[i] && i + 1 < cap; i++)
    dst[i] = (s[i] > 0x20 && s[i] < 0x7f) ? s[i] : '_';
  dst[i] = 0;
}

/* The "status" of a processor answer to our outcome. */
static void map_status(struct tp_proc_call *c, enum tp_proc_kind kind, json_t *js)
{
  const char *st = json_string_value(json_object_get(js, "status"));
  /* An answer about another reference than the one sent is no answer to
   * this call (a processor's mix-up, or a proxy's): its outcome unknown. */
  const char *ref = json_string_value(json_object_get(js, "reference"));
  if (!st || (ref && strcmp(ref, c->ref) != 0)) {
    set_error(c, "processor_bad_response");
    return;
  }
  const char *ok = kind == TP_PROC_AUTHORIZE ? "approved"
                   : kind == TP_PROC_CAPTURE ? "captured"
                   : kind == TP_PROC_VOID    ? "voided"
                                             : "succeeded";
  /* A status answer is about the operation it names, or, when it names
   * none, the one we asked about (the attempt's kind). */
  const char *op = json_string_value(json_object_get(js, "operation"));
  enum tp_proc_kind about = kind;
  if (kind == TP_PROC_STATUS) {
    about = !op                           ? c->status_of
            : strcmp(op, "capture") == 0  ? TP_PROC_CAPTURE
            : strcmp(op, "refund") == 0   ? TP_PROC_REFUND
            : strcmp(op, "authorize") == 0 ? TP_PROC_AUTHORIZE
            : strcmp(op, "void") == 0     ? TP_PROC_VOID
                                          : TP_PROC_STATUS;
    if (about == TP_PROC_STATUS) { /* a word of no operation the contract has: not read as any */
      set_error(c, "processor_bad_response");
      return;
    }
  }
  bool of_auth = kind == TP_PROC_STATUS && about == TP_PROC_AUTHORIZE;
  if (kind == TP_PROC_STATUS && strcmp(st, "voided") == 0 &&
      (of_auth || (!op && (about == TP_PROC_CAPTURE || about == TP_PROC_REFUND)))) {
    /* An authorization voided before it arrived: the reference we fenced
     * after a lost answer. It never charged; and a capture's or refund's
     * reference fenced so (the processor keeps it as a voided
     * authorization, and says so with no operation) was never done: until
     * session 37 that was read as the capture or refund made. */
    c->outcome = TP_OUT_NOT_FOUND;
    return;
  }
  if (kind == TP_PROC_STATUS && ((op && about != c->status_of) || (!op && about == TP_PROC_VOID))) {
    /* About another operation than the one asked (an authorization's
     * approval for a capture's reference is no capture); or a void's
     * `voided` with no operation, which is the void done or its
     * reference fenced (the hold still live): unknown, for an operator. */
    set_error(c, "processor_bad_response");
    return;
  }
  /* an authorization that captured in the same call (capture=true) may say
   * so; a status answer, the word of the operation it is about (an
   * authorization's: approved, or captured since) */
  bool approved = strcmp(st, ok) == 0 || (kind == TP_PROC_AUTHORIZE && c->capture && strcmp(st, "captured") == 0);
  if (kind == TP_PROC_STATUS)
    approved = about == TP_PROC_AUTHORIZE ? strcmp(st, "approved") == 0 || strcmp(st, "captured") == 0
               : about == TP_PROC_CAPTURE ? strcmp(st, "captured") == 0
               : about == TP_PROC_REFUND  ? strcmp(st, "succeeded") == 0
                                          : strcmp(st, "voided") == 0;
  /* A capture or refund moves money: its answer (or a status answer about
   * one) must be for the amount asked too, as an ISO 8583 host's fields 4
   * and 49 are checked on every approval. One for another amount moved
   * money we did not ask for: never recorded as done (left unresolved for
   * an operator; until session 33 it was taken as the amount asked). */
  bool moves_money = (about == TP_PROC_CAPTURE || about == TP_PROC_REFUND) && c->amount > 0;
  if (approved) {
    if (kind == TP_PROC_AUTHORIZE || (of_auth && c->amount > 0) || moves_money) {
      /* An approval must be for what we asked, read from its own answer or
       * from a status query after the answer was lost. */
      json_t *amt = json_object_get(js, "amount");
      const char *cur = json_string_value(json_object_get(js, "currency"));
      if (amt && (!json_is_integer(amt) || json_integer_value(amt) != c->amount)) {
        set_error(c, "processor_amount_mismatch");
        return;
      }
      if (cur && strcasecmp(cur, c->currency) != 0) {
        set_error(c, "processor_currency_mismatch");
        return;
      }
      c->amount_checked = amt && cur;
    }
    c->outcome = TP_OUT_APPROVED;
    c->decline_code[0] = 0;
    copy_text(c->auth_code, sizeof c->auth_code, json_object_get(js, "auth_code"));
    copy_text(c->processor_ref, sizeof c->processor_ref, json_object_get(js, "id"));
    return;
  }
  if (strcmp(st, "declined") == 0 || strcmp(st, "failed") == 0) {
    c->outcome = TP_OUT_DECLINED;
    copy_code(c, json_string_value(json_object_get(js, "decline_code")),
              kind == TP_PROC_AUTHORIZE || kind == TP_PROC_STATUS ? "generic_decline" : "processing_error");
    copy_text(c->processor_ref, sizeof c->processor_ref, json_object_get(js, "id"));
    return;
  }
  set_error(c, "processor_bad_response");
}

void tp_restjson_interpret(struct tp_proc_call *c, long http, const char *body, size_t len)
{
  c->decline_code[0] = 0;
  c->amount_checked = false;
  if (http == 503)
    set_error(c, "processor_http_503"); /* unavailable: the request was not handled (RFC 9110 15.6.4) */
  else if (http >= 500)
    set_error(c, "processor_http_5xx"); /* 500, 502, 504: it, or the upstream behind a proxy, may have acted */
  else if (c->kind == TP_PROC_STATUS && http == 404)
    c->outcome = TP_OUT_NOT_FOUND;
  else if (http == 401 || http == 403)
    set_error(c, "processor_auth_failed");
  else if (http == 429)
    set_error(c, "processor_rate_limited");
  else if (http < 200 || http >= 300)
    set_error(c, "processor_http_4xx");
  else {
    json_error_t err;
    json_t *js = body ? json_loadb(body, len, JSON_REJECT_DUPLICATES, &err) : NULL;
    if (!json_is_object(js))
      set_error(c, "processor_bad_response");
    else
      map_status(c, c->kind, js);
    json_decref(js);
  }
}

/* libcurl calls this when a connection (new or reused) is ready and the
 * request is about to go out on it. A second call is libcurl's own retry of
 * a request whose kept-alive connection died before any answer: the
 * processor may have acted on the first send, and a processor that answers
 * a used reference with 409, or does not deduplicate, would then refuse or
 * repeat it (a capture made there and failed here; a refund made twice).
 * So never twice: the outcome is unknown, which a status query settles. */
static int on_prereq(void *arg, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
  (void)primary_ip, (void)local_ip, (void)primary_port, (void)local_port;
  struct rj_xfer *x = arg;
  if (x->sent && x->c->kind != TP_PROC_STATUS) { /* a status query only reads: asked again */
    x->resend_refused = true;
    return CURL_PREREQFUNC_ABORT;
  }
  x->sent = true;
  return CURL_PREREQFUNC_OK;
}

/* Retry-After (RFC 9110 10.2.3): delay-seconds or an HTTP-date, in ms from
 * now; 0 when absent, unreadable or past; at most an hour. */
int64_t tp_retry_after_ms(const char *v, int64_t now_s)
{
  if (!v)
    return 0;
  while (*v == ' ' || *v == '\t')
    v++;
  int64_t secs = -1;
  if (*v >= '0' && *v <= '9') {
    secs = 0;
    for (; *v >= '0' && *v <= '9'; v++)
      if (secs < 3600)
        secs = secs * 10 + (*v - '0');
    while (*v == ' ' || *v == '\t')
      v++;
    if (*v)
      return 0;
  } else {
    time_t t = curl_getdate(v, NULL);
    if (t == (time_t)-1)
      return 0;
    secs = (int64_t)t - now_s;
  }
  if (secs <= 0)
    return 0;
  return (secs > 3600 ? 3600 : secs) * 1000;
}

static void finish_xfer(struct rj_xfer *x, CURLcode rc)
{
  struct tp_proc_call *c = x->c;
  long http = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &http);
  c->decline_code[0] = 0;
  c->retry_after_ms = 0;
  struct curl_header *h = NULL;
  if (rc == CURLE_OK && (http == 429 || http == 503) &&
      curl_easy_header(x->easy, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK && h)
    c->retry_after_ms = tp_retry_after_ms(h->value, (int64_t)time(NULL));
  if (x->too_large)
    set_error(c, "processor_response_too_large");
  else if (rc == CURLE_OPERATION_TIMEDOUT && !x->sent)
    /* No connection (TCP or TLS) was made in time: the request never left. */
    set_error(c, "processor_connect_timeout");
  else if (x->resend_refused || (rc != CURLE_OK && x->sent && not_sent_code(curl_error_code(rc))))
    /* A connection failure after the request went out: libcurl sent it on a
     * kept-alive connection that then died, and its own retry on a fresh
     * connection was refused (on_prereq) or could not connect, resolve or
     * shake hands. The processor
     * may have acted on the first send, so the outcome is unknown (a status
     * query settles it), not "never reached the processor". */
    set_error(c, "processor_connection_reset");
  else if (rc != CURLE_OK)
    set_error(c, curl_error_code(rc));
  else
    tp_restjson_interpret(c, http, x->resp, x->resp_len);
  if (c->outcome == TP_OUT_ERROR && strcmp(c->decline_code, "processor_tls_failed") == 0) {
    /* Why (expired, wrong host, unknown CA, refused client certificate):
     * once per processor every 10 s, as every call fails alike. */
    int64_t now = tp_mono_ms();
    if (now - atomic_load(&x->rj->tls_logged_ms) >= 10000) {
      atomic_store(&x->rj->tls_logged_ms, now);
      long vr = 0;
      curl_easy_getinfo(x->easy, CURLINFO_SSL_VERIFYRESULT, &vr);
      tp_log(TP_LOG_WARN, "processor_tls_failed", "{s:s, s:s, s:i, s:I}", "processor", x->rj->name, "error",
             x->errbuf, "curl", (int)rc, "verify_result", (json_int_t)vr);
    }
  }
  if (c->outcome == TP_OUT_ERROR && TP_LOG_ON(TP_LOG_DEBUG))
    tp_log(TP_LOG_DEBUG, "restjson_call_failed", "{s:s, s:s, s:s, s:i, s:i, s:s}", "processor", x->rj->name, "ref",
           c->ref, "error", c->decline_code, "http_status", (int)http, "curl", (int)rc, "curl_error", x->errbuf);
}

/* ---- TLS ---------------------------------------------------------------- */

void tp_curl_tls_setup(void *easy, const struct tp_tls_opts *tls)
{
  CURL *e = easy;
  /* libcurl verifies by default; set it anyway so no build default or
   * later edit can quietly turn it off for a link that carries PANs. */
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
  if (!tls)
    return;
  if (tls->ca_file && *tls->ca_file)
    curl_easy_setopt(e, CURLOPT_CAINFO, tls->ca_file);
  if (tls->client_cert && *tls->client_cert) {
    curl_easy_setopt(e, CURLOPT_SSLCERT, tls->client_cert);
    curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
  }
  if (tls->client_key && *tls->client_key) {
    curl_easy_setopt(e, CURLOPT_SSLKEY, tls->client_key);
    curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
  }
}

/* ---- the loop --------------------------------------------------------- */

static void xfer_release(struct rj *rj, struct rj_xfer *x)
{
  OPENSSL_cleanse(x->body, sizeof x->body);
  if (x->resp) {
    OPENSSL_cleanse(x->resp, x->resp_cap);
    free(x->resp);
  }
  x->resp = NULL;
  x->resp_len = x->resp_cap = 0;
  x->too_large = false;
  x->c = NULL;
  x->next_free = rj->free_list;
  rj->free_list = x;
}

static void complete(struct rj *rj, struct rj_xfer *x)
{
  struct tp_proc_call *c = x->c;
  xfer_release(rj, x);
  c->done(c);
}

static void start_call(struct rj *rj, struct tp_proc_call *c)
{
  struct rj_xfer *x = rj->free_list;
  if (x) {
    rj->free_list = x->next_free;
    curl_easy_reset(x->easy);
  } else {
    x = calloc(1, sizeof *x);
    if (x)
      x->easy = curl_easy_init();
    if (!x || !x->easy) {
      free(x);
      set_error(c, "processor_unavailable");
      c->done(c);
      return;
    }
    x->rj = rj;
  }
  x->c = c;
  if (build_request(x) != 0) {
    /* A call the protocol cannot express (malformed reference or card
     * fields): the processor would reject it, so do not send it. */
    set_error(c, "processor_http_4xx");
    complete(rj, x);
    return;
  }
  CURL *e = x->easy;
  curl_easy_setopt(e, CURLOPT_URL, x->url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, x);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_VERBOSE, 0L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)rj->timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)rj->timeout_ms);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  tp_curl_tls_setup(e, &rj->tls); /* after curl_easy_reset on a reused handle, too */
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, rj->headers);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  x->sent = false;
  x->resend_refused = false;
  x->errbuf[0] = '\0';
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
  curl_easy_setopt(e, CURLOPT_PREREQDATA, x);
  if (c->kind == TP_PROC_STATUS) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)x->body_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body);
  }
  if (curl_multi_add_handle(rj->multi, e) != CURLM_OK) {
    set_error(c, "processor_unavailable");
    complete(rj, x);
    return;
  }
  x->prev = NULL;
  x->next = rj->active;
  if (rj->active)
    rj->active->prev = x;
  rj->active = x;
}

static void active_unlink(struct rj *rj, struct rj_xfer *x)
{
  if (x->prev)
    x->prev->next = x->next;
  else
    rj->active = x->next;
  if (x->next)
    x->next->prev = x->prev;
  x->prev = x->next = NULL;
}

static void drain_done(struct rj *rj)
{
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(rj->multi, &left)) != NULL) {
    if (m->msg != CURLMSG_DONE)
      continue;
    struct rj_xfer *x = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    CURLcode rc = m->data.result;
    curl_multi_remove_handle(rj->multi, m->easy_handle);
    active_unlink(rj, x);
    finish_xfer(x, rc);
    complete(rj, x);
  }
}

static void *rj_main(void *arg)
{
  struct rj *rj = arg;
  struct tp_proc_call *batch[256];
  for (;;) {
    size_t n = 0;
    bool stop;
    pthread_mutex_lock(&rj->mu);
    while (rj->len > 0 && n < sizeof batch / sizeof batch[0]) {
      batch[n++] = rj->q[rj->head];
      rj->head = (rj->head + 1) % RJ_QUEUE;
      rj->len--;
    }
    stop = rj->stop;
    pthread_mutex_unlock(&rj->mu);
    for (size_t i = 0; i < n; i++)
      start_call(rj, batch[i]);
    if (stop && n == 0)
      break;
    int still = 0;
    curl_multi_perform(rj->multi, &still);
    drain_done(rj);
    if (n == sizeof batch / sizeof batch[0])
      continue; /* more queued: take it before sleeping */
    curl_multi_poll(rj->multi, NULL, 0, 1000, NULL);
  }
  /* Stopping: calls still in flight have an unknown outcome; recovery
   * resolves them by status query on the next start. */
  while (rj->active) {
    struct rj_xfer *x = rj->active;
    curl_multi_remove_handle(rj->multi, x->easy);
    active_unlink(rj, x);
    set_error(x->c, "processor_cancelled");
    complete(rj, x);
  }
  return NULL;
}

static int rj_submit(void *cls, struct tp_proc_call *c)
{
  struct rj *rj = cls;
  pthread_mutex_lock(&rj->mu);
  if (rj->stop || rj->len == RJ_QUEUE) {
    pthread_mutex_unlock(&rj->mu);
    return -1;
  }
  rj->q[(rj->head + rj->len) % RJ_QUEUE] = c;
  bool wake = rj->len++ == 0;
  pthread_mutex_unlock(&rj->mu);
  if (wake)
    curl_multi_wakeup(rj->multi);
  return 0;
}

static void rj_stop(void *cls)
{
  struct rj *rj = cls;
  pthread_mutex_lock(&rj->mu);
  rj->stop = true;
  pthread_mutex_unlock(&rj->mu);
  curl_multi_wakeup(rj->multi);
  pthread_join(rj->thread, NULL);
  while (rj->free_list) {
    struct rj_xfer *x = rj->free_list;
    rj->free_list = x->next_free;
    curl_easy_cleanup(x->easy);
    free(x);
  }
  curl_multi_cleanup(rj->multi);
  curl_slist_free_all(rj->headers);
  pthread_mutex_destroy(&rj->mu);
  free(rj->q);
  OPENSSL_cleanse(rj, sizeof *rj);
  free(rj);
}

static const struct tp_connector_ops rj_ops = {"restjson", rj_submit, rj_stop};

/* Copy an optional path; false when it does not fit. */
static bool copy_path(char *dst, const char *src)
{
  if (!src)
    src = "";
  if (strlen(src) >= RJ_PATH_MAX)
    return false;
  snprintf(dst, RJ_PATH_MAX, "%s", src);
  return true;
}

int tp_restjson_start(struct tp_connector *out, const char *name, const char *base_url, const char *api_key,
                      int timeout_ms, const struct tp_tls_opts *tls)
{
  size_t bl = strlen(base_url);
  while (bl > 0 && base_url[bl - 1] == '/')
    bl--;
  struct rj *rj = calloc(1, sizeof *rj);
  if (!rj)
    return -1;
  if (bl == 0 || bl >= sizeof rj->base) {
    free(rj);
    return -1;
  }
  memcpy(rj->base, base_url, bl);
  if (tls && (!copy_path(rj->ca_file, tls->ca_file) || !copy_path(rj->client_cert, tls->client_cert) ||
              !copy_path(rj->client_key, tls->client_key))) {
    free(rj);
    return -1;
  }
  rj->tls.ca_file = rj->ca_file;
  rj->tls.client_cert = rj->client_cert;
  rj->tls.client_key = rj->client_key;
  tp_scopy(rj->name, sizeof rj->name, name);
  rj->timeout_ms = timeout_ms > 0 ? timeout_ms : 2000;
  rj->q = calloc(RJ_QUEUE, sizeof *rj->q);
  rj->multi = curl_multi_init();
  pthread_mutex_init(&rj->mu, NULL);
  rj->headers = curl_slist_append(NULL, "Content-Type: application/json");
  rj->headers = curl_slist_append(rj->headers, "Accept: application/json");
  rj->headers = curl_slist_append(rj->headers, "Expect:"); /* no 100-continue round trip */
  if (api_key && *api_key) {
    char auth[512];
    int n = snprintf(auth, sizeof auth, "Authorization: Bearer %s", api_key);
    if (n > 0 && (size_t)n < sizeof auth)
      rj->headers = curl_slist_append(rj->headers, auth);
    OPENSSL_cleanse(auth, sizeof auth);
  }
  if (!rj->q || !rj->multi || !rj->headers) {
    curl_slist_free_all(rj->headers);
    if (rj->multi)
      curl_multi_cleanup(rj->multi);
    free(rj->q);
    free(rj);
    return -1;
  }
  curl_multi_setopt(rj->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)RJ_MAX_HOST_CONN);
  curl_multi_setopt(rj->multi, CURLMOPT_MAXCONNECTS, (long)RJ_MAX_HOST_CONN);
  if (pthread_create(&rj->thread, NULL, rj_main, rj) != 0) {
    curl_slist_free_all(rj->headers);
    curl_multi_cleanup(rj->multi);
    free(rj->q);
    free(rj);
    return -1;
  }
  pthread_setname_np(rj->thread, "tp-rest");
  tp_scopy(out->name, sizeof out->name, name);
  out->ops = &rj_ops;
  out->cls = rj;
  return 0;
}
