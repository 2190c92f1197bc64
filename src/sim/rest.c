/* The simulator's REST/JSON processor API (/p/{processor}/v1/...) and its test
 * controls (/_sim/...), on libmicrohttpd with a thread pool and epoll. A
 * request that waits (for its journal commit, for injected latency or a held
 * timeout) is suspended: no thread sleeps on it. The contract is documented
 * in docs/simulator.md. */
#include "cli.h"
#include "core/currency.h"
#include "jpack.h"
#include "log.h"
#include "sim/sim.h"
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MAX_BODY (64 * 1024)
#define MAX_CONNECTIONS 8192
#define CONN_MEMORY (32 * 1024)
#define CONN_TIMEOUT_S 120
#define JOURNAL_LIMIT_DEFAULT 1000
#define JOURNAL_LIMIT_MAX 100000

struct sreq {
  struct tp_sim_waiter w; /* answer-ready completion (state.c) */
  struct MHD_Connection *conn;
  char method[8];
  char *url;
  char *body;
  size_t body_len, body_cap;
  bool too_large, dispatched, suspended, close_conn, replayed;
  unsigned status;
  char *resp;
  int64_t delay_ms; /* before the answer goes out (latency or a held timeout) */
};

static struct MHD_Daemon *daemon_;
static atomic_bool stopping;
static atomic_uint suspended_count;

/* ---- answers ------------------------------------------------------------------ */
static void answer(struct sreq *r, unsigned status, json_t *o)
{
  free(r->resp);
  r->status = status;
  r->resp = json_dumps(o, JSON_COMPACT);
  json_decref(o);
}

static void answer_error(struct sreq *r, unsigned status, const char *code, const char *message)
{
  json_t *e = tp_pack("{s:s}", "code", code);
  if (message)
    json_object_set_new(e, "message", json_string(message));
  answer(r, status, tp_pack("{s:o}", "error", e));
}

static void resume_cb(void *arg)
{
  struct sreq *r = arg;
  MHD_resume_connection(r->conn);
  atomic_fetch_sub(&suspended_count, 1);
}

/* The answer is set: release it now or after r->delay_ms. Any thread. */
static void finish(struct sreq *r)
{
  if (r->delay_ms > 0)
    tp_sim_timer_add(r->delay_ms, resume_cb, r);
  else
    resume_cb(r);
}

static void suspend(struct sreq *r)
{
  r->suspended = true;
  atomic_fetch_add(&suspended_count, 1);
  MHD_suspend_connection(r->conn);
}

static void on_durable(struct tp_sim_waiter *w, const char *response, bool ok)
{
  struct sreq *r = (struct sreq *)((char *)w - offsetof(struct sreq, w));
  free(r->resp);
  r->resp = ok ? strdup(response) : NULL;
  r->status = r->resp ? 200 : 500;
  finish(r);
}

/* ---- validation helpers ------------------------------------------------------- */
static bool ref_ok(const char *s)
{
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > TP_SIM_REF_MAX)
    return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f || s[i] == '/' || s[i] == '?' || s[i] == '#' ||
        s[i] == '%')
      return false; /* a reference goes in status and fence paths: one that cannot be one is refused */
  return true;
}

static bool digits_ok(const char *s, size_t min, size_t max)
{
  size_t n = s ? strlen(s) : 0;
  if (n < min || n > max)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!isdigit((unsigned char)s[i]))
      return false;
  return true;
}

/* Reads an optional positive amount: 1 present and valid, 0 absent, -1 invalid. */
static int get_amount(json_t *o, int64_t *out)
{
  json_t *v = json_object_get(o, "amount");
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > TP_AMOUNT_MAX)
    return -1;
  *out = json_integer_value(v);
  return 1;
}

static json_t *parse_body(struct sreq *r, const char **msg)
{
  if (r->too_large) {
    *msg = "the body is larger than 64 KiB";
    return NULL;
  }
  json_error_t jerr;
  json_t *o = json_loadb(r->body ? r->body : "", r->body_len, JSON_REJECT_DUPLICATES, &jerr);
  if (!o || !json_is_object(o)) {
    json_decref(o);
    *msg = "the body must be a JSON object";
    return NULL;
  }
  return o;
}

static bool authorized(struct sreq *r, const struct tp_sim_behaviour *b)
{
  if (!b->api_key[0])
    return true;
  const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
  if (!h || strncasecmp(h, "Bearer ", 7) != 0)
    return false;
  h += 7;
  size_t n = strlen(b->api_key);
  return strlen(h) == n && tp_ct_equal(h, b->api_key, n);
}

/* ---- the processor API ------------------------------------------------------- */
enum pop { P_AUTH, P_CAPTURE, P_VOID, P_REFUND, P_STATUS, P_HEALTH, P_NONE };

/* Split /p/{proc}/v1/{rest}; the path segment (auth id or reference) into seg. */
static enum pop classify(const char *method, const char *rest, char *seg, size_t segcap, bool *bad_method)
{
  *bad_method = false;
  bool post = strcmp(method, "POST") == 0, get = strcmp(method, "GET") == 0;
  enum pop p = P_NONE;
  if (strcmp(rest, "health") == 0)
    p = P_HEALTH, *bad_method = !get;
  else if (strcmp(rest, "authorizations") == 0)
    p = P_AUTH, *bad_method = !post;
  else if (strcmp(rest, "refunds") == 0)
    p = P_REFUND, *bad_method = !post;
  else if (strncmp(rest, "transactions/", 13) == 0) {
    const char *s = rest + 13;
    if (!*s || strchr(s, '/') || strlen(s) >= segcap)
      return P_NONE;
    snprintf(seg, segcap, "%s", s);
    p = P_STATUS, *bad_method = !get;
  } else if (strncmp(rest, "authorizations/", 15) == 0) {
    const char *s = rest + 15, *slash = strchr(s, '/');
    if (!slash || slash == s || (size_t)(slash - s) >= segcap)
      return P_NONE;
    memcpy(seg, s, (size_t)(slash - s));
    seg[slash - s] = '\0';
    if (strcmp(slash, "/capture") == 0)
      p = P_CAPTURE;
    else if (strcmp(slash, "/void") == 0)
      p = P_VOID;
    else
      return P_NONE;
    *bad_method = !post;
  }
  return p;
}

/* Build the ledger request from the body; NULL message when valid. */
static const char *validate(enum pop p, json_t *o, const char *seg, struct tp_sim_request *q, char pan[24])
{
  q->reference = json_string_value(json_object_get(o, "reference"));
  if (!ref_ok(q->reference))
    return "reference is required: 1 to 64 printable characters";
  q->amount = -1;
  int a = get_amount(o, &q->amount);
  if (a < 0)
    return "amount must be a positive integer (minor units)";
  switch (p) {
  case P_AUTH: {
    q->op = TP_SIM_AUTHORIZE;
    if (a == 0)
      return "amount is required";
    json_t *pay = json_object_get(o, "payment");
    if (pay && !json_is_null(pay)) {
      q->payment = json_string_value(pay);
      if (!q->payment || strlen(q->payment) > TP_SIM_REF_MAX)
        return "payment must be a string of at most 64 characters";
    }
    const char *cur = json_string_value(json_object_get(o, "currency"));
    if (!cur || strlen(cur) != 3)
      return "currency must be a three-letter ISO code";
    for (int i = 0; i < 3; i++)
      q->currency[i] = (char)tolower((unsigned char)cur[i]);
    q->currency[3] = '\0';
    if (!tp_currency_find(q->currency))
      return "currency is not a known ISO 4217 code";
    json_t *cap = json_object_get(o, "capture");
    if (cap && !json_is_boolean(cap) && !json_is_null(cap))
      return "capture must be a boolean";
    q->capture = json_is_true(cap);
    json_t *card = json_object_get(o, "card");
    if (!json_is_object(card))
      return "card is required";
    const char *num = json_string_value(json_object_get(card, "number"));
    if (!digits_ok(num, 12, 19))
      return "card.number must be 12 to 19 digits";
    json_t *m = json_object_get(card, "exp_month"), *y = json_object_get(card, "exp_year");
    if (!json_is_integer(m) || json_integer_value(m) < 1 || json_integer_value(m) > 12)
      return "card.exp_month must be 1 to 12";
    if (!json_is_integer(y) || json_integer_value(y) < 2000 || json_integer_value(y) > 2100)
      return "card.exp_year must be a four-digit year";
    json_t *cvc = json_object_get(card, "cvc");
    if (cvc && !json_is_null(cvc) && !digits_ok(json_string_value(cvc), 3, 4))
      return "card.cvc must be 3 or 4 digits";
    q->no_cvc = json_is_null(cvc); /* null: none was ever given; absent: given earlier */
    q->exp_month = (int)json_integer_value(m);
    q->exp_year = (int)json_integer_value(y);
    snprintf(pan, 24, "%s", num);
    q->pan = pan;
    break;
  }
  case P_CAPTURE:
  case P_VOID:
    /* The path's id, decoded by libmicrohttpd: held to the reference rule
     * as a refund's authorization is (a %FF there reached a journal row's
     * JSON and aborted the simulator; "a b" was journaled as a fence) */
    q->op = p == P_CAPTURE ? TP_SIM_CAPTURE : TP_SIM_VOID;
    q->target = seg;
    if (!ref_ok(q->target))
      return "the authorization in the path must be an authorization id or reference";
    break;
  case P_REFUND:
    q->op = TP_SIM_REFUND;
    q->target = json_string_value(json_object_get(o, "authorization"));
    if (!ref_ok(q->target))
      return "authorization is required (an authorization id or reference)";
    break;
  default:
    return "unsupported operation";
  }
  return NULL;
}

/* Runs with r not yet suspended; either answers synchronously (r->resp set)
 * or suspends r and completes it later, or sets r->close_conn. */
static void handle_processor(struct sreq *r, const char *path)
{
  char proc[TP_SIM_NAME_MAX], seg[TP_SIM_REF_MAX + 1];
  const char *slash = strchr(path, '/');
  if (!slash || (size_t)(slash - path) >= sizeof proc || strncmp(slash, "/v1/", 4) != 0) {
    answer_error(r, 404, "not_found", "unknown path");
    return;
  }
  memcpy(proc, path, (size_t)(slash - path));
  proc[slash - path] = '\0';
  if (!tp_sim_name_ok(proc)) {
    answer_error(r, 404, "not_found", "invalid processor name");
    return;
  }
  bool bad_method;
  enum pop p = classify(r->method, slash + 4, seg, sizeof seg, &bad_method);
  if (p == P_NONE) {
    answer_error(r, 404, "not_found", "unknown path");
    return;
  }
  if (bad_method) {
    answer_error(r, 405, "method_not_allowed", NULL);
    return;
  }
  struct tp_sim_behaviour b;
  tp_sim_behaviour(proc, &b);
  if (p == P_HEALTH) {
    answer(r, b.outage ? 503 : 200, tp_pack("{s:s}", "status", b.outage ? "outage" : "ok"));
    return;
  }
  if (!authorized(r, &b)) {
    answer_error(r, 401, "unauthorized", NULL);
    return;
  }
  struct tp_sim_request q;
  memset(&q, 0, sizeof q);
  q.processor = proc;
  q.b = &b;
  char pan[24] = "";
  json_t *body = NULL;
  if (p != P_STATUS) {
    const char *msg = NULL;
    body = parse_body(r, &msg);
    if (!body) {
      answer_error(r, 400, "invalid_request", msg);
      return;
    }
    msg = validate(p, body, seg, &q, pan);
    if (msg) {
      answer_error(r, 400, "invalid_request", msg);
      json_decref(body);
      return;
    }
  }
  /* Injected faults, in the order a real outage shows them. */
  if (b.outage) {
    answer_error(r, 503, "processor_unavailable", "the processor is down (simulated outage)");
    goto out;
  }
  if (b.reset_rate > 0 && tp_sim_rand() < b.reset_rate) {
    r->close_conn = true;
    goto out;
  }
  if (b.error_rate > 0 && tp_sim_rand() < b.error_rate) {
    static const unsigned codes[] = {500, 502, 503};
    answer_error(r, codes[(unsigned)(tp_sim_rand() * 3) % 3], "processor_error", "simulated processor error");
    goto out;
  }
  r->delay_ms = tp_sim_latency(&b);
  if (p != P_STATUS && (b.timeout_ops & (1u << q.op)) && b.timeout_rate > 0 && tp_sim_rand() < b.timeout_rate) {
    if (b.timeout_before) {
      /* Lost on the way in: held, then dropped, never processed. */
      r->close_conn = true;
      r->delay_ms = b.timeout_hold_ms;
      suspend(r);
      finish(r);
      goto out;
    }
    r->delay_ms = b.timeout_hold_ms; /* processed and journaled; the answer comes too late */
  }
  suspend(r);
  r->w.fn = on_durable;
  char *resp = NULL;
  enum tp_sim_result res;
  if (p == P_STATUS) {
    res = tp_sim_status(proc, seg, &r->w, &resp);
  } else {
    bool replayed = false;
    res = tp_sim_process(&q, &r->w, &resp, &replayed);
    r->replayed = replayed;
  }
  switch (res) {
  case TP_SIM_DONE:
    r->status = 200;
    r->resp = resp;
    resp = NULL;
    finish(r);
    break;
  case TP_SIM_WAIT:
    break;
  case TP_SIM_NOT_FOUND:
    answer_error(r, 404, "not_found", p == P_STATUS ? "no operation used this reference" : "no such authorization");
    r->replayed = false;
    finish(r);
    break;
  case TP_SIM_CONFLICT:
    answer_error(r, 409, "invalid_state", resp);
    r->replayed = false;
    finish(r);
    break;
  case TP_SIM_TOO_LARGE:
    answer_error(r, 400, "amount_too_large", "capture amount exceeds the authorized amount");
    finish(r);
    break;
  }
  free(resp);
out:
  json_decref(body);
}

/* ---- /_sim --------------------------------------------------------------------- */
static void handle_control(struct sreq *r, const char *what)
{
  if (strcmp(what, "faults") == 0) {
    if (strcmp(r->method, "GET") == 0) {
      answer(r, 200, tp_pack("{s:o}", "processors", tp_sim_faults_dump()));
      return;
    }
    if (strcmp(r->method, "POST") != 0) {
      answer_error(r, 405, "method_not_allowed", NULL);
      return;
    }
    const char *msg = NULL;
    json_t *o = parse_body(r, &msg);
    char err[160];
    if (!o) {
      answer_error(r, 400, "invalid_request", msg);
      return;
    }
    if (tp_sim_faults_apply(o, err, sizeof err) != 0)
      answer_error(r, 400, "invalid_request", err);
    else
      answer(r, 200, tp_pack("{s:o}", "processors", tp_sim_faults_dump()));
    json_decref(o);
    return;
  }
  if (strcmp(what, "journal") == 0) {
    if (strcmp(r->method, "GET") != 0) {
      answer_error(r, 405, "method_not_allowed", NULL);
      return;
    }
    const char *proc = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "processor");
    const char *ref = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "reference");
    const char *pay = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "payment");
    const char *lim = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "limit");
    int64_t limit = JOURNAL_LIMIT_DEFAULT;
    if (lim && *lim) {
      char *end;
      long long v = strtoll(lim, &end, 10);
      if (*end || v < 1 || v > JOURNAL_LIMIT_MAX) {
        answer_error(r, 400, "invalid_request", "limit must be 1 to 100000");
        return;
      }
      limit = v;
    }
    if ((proc && strlen(proc) > 64) || (ref && strlen(ref) > 64) || (pay && strlen(pay) > 64)) {
      answer_error(r, 400, "invalid_request", "filters are at most 64 characters");
      return;
    }
    json_t *o = tp_sim_journal_query(proc, ref, pay, limit);
    if (!o)
      answer_error(r, 500, "internal_error", "cannot read the journal");
    else
      answer(r, 200, o);
    return;
  }
  answer_error(r, 404, "not_found", "unknown path");
}

static void dispatch(struct sreq *r)
{
  if (atomic_load(&stopping)) {
    answer_error(r, 503, "shutting_down", NULL);
    return;
  }
  if (strncmp(r->url, "/p/", 3) == 0)
    handle_processor(r, r->url + 3);
  else if (strncmp(r->url, "/_sim/", 6) == 0)
    handle_control(r, r->url + 6);
  else
    answer_error(r, 404, "not_found", "unknown path");
}

static enum MHD_Result queue(struct sreq *r)
{
  if (!r->resp)
    answer_error(r, 500, "internal_error", NULL);
  if (!r->resp)
    return MHD_NO;
  struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(r->resp), r->resp, MHD_RESPMEM_MUST_FREE);
  if (!resp)
    return MHD_NO;
  r->resp = NULL;
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  if (r->replayed)
    MHD_add_response_header(resp, "Idempotent-Replayed", "true");
  enum MHD_Result ret = MHD_queue_response(r->conn, r->status, resp);
  MHD_destroy_response(resp);
  if (TP_LOG_ON(TP_LOG_DEBUG))
    tp_log(TP_LOG_DEBUG, "sim_request", "{s:s, s:s, s:i, s:b}", "method", r->method, "path", r->url, "status",
           (int)r->status, "replayed", (int)r->replayed);
  return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
  (void)cls;
  (void)version;
  struct sreq *r = *con_cls;
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r)
      return MHD_NO;
    r->conn = conn;
    tp_scopy(r->method, sizeof r->method, method);
    r->url = strdup(url);
    if (!r->url) {
      free(r);
      return MHD_NO;
    }
    *con_cls = r;
    return MHD_YES;
  }
  if (*upload_data_size) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    if (tp_body_append(&r->body, &r->body_len, &r->body_cap, &r->too_large, upload_data, n, MAX_BODY))
      return MHD_NO;
    return MHD_YES;
  }
  if (!r->dispatched) {
    r->dispatched = true;
    dispatch(r);
    if (r->suspended)
      return MHD_YES;
  }
  if (r->close_conn)
    return MHD_NO; /* a simulated reset: the client sees the connection drop */
  return queue(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
  (void)cls;
  (void)conn;
  (void)toe;
  struct sreq *r = *con_cls;
  if (!r)
    return;
  free(r->resp);
  tp_body_free(r->body, r->body_cap); /* held a card number */
  free(r->url);
  free(r);
  *con_cls = NULL;
}

int tp_sim_rest_start(const char *host, uint16_t port, unsigned threads, uint16_t *bound)
{
  struct sockaddr_storage sa;
  socklen_t sa_len;
  if (tp_cli_sockaddr(host, port, &sa, &sa_len) != 0) {
    tp_log(TP_LOG_ERROR, "sim_listen_address", "{s:s}", "host", host);
    return -1;
  }
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC |
                   (sa.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
  daemon_ = MHD_start_daemon(flags, port, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR,
                             (struct sockaddr *)&sa, MHD_OPTION_THREAD_POOL_SIZE, threads,
                             MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNECTIONS,
                             MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONN_TIMEOUT_S,
                             MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
  if (!daemon_)
    return -1;
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
  *bound = di ? di->port : port;
  return 0;
}

/* First half of shutdown: refuse new work (on_request answers it
 * "stopping"). The listening socket stays open until MHD_stop_daemon:
 * MHD_quiesce_daemon on an epoll pool races a worker's own removal of the
 * socket from its epoll set in libmicrohttpd 0.9.75, and the loser aborts
 * the process (the gateway's server.c says more). */
void tp_sim_rest_quiesce(void)
{
  atomic_store(&stopping, true);
}

void tp_sim_rest_stop(void)
{
  if (!daemon_)
    return;
  /* Every suspended request has been released by the timer and writer
   * shutdown; give the resumed ones a moment to flush their answers. */
  int64_t until = tp_mono_ms() + 2000;
  while (atomic_load(&suspended_count) > 0 && tp_mono_ms() < until)
    usleep(5000);
  usleep(100000);
  MHD_stop_daemon(daemon_);
  daemon_ = NULL;
}
