/* Recent requests, so the request_log_url of an error reply leads somewhere:
 * a fixed ring of the last TP_REQLOG_SIZE authenticated requests, in memory
 * only (a restart forgets them, as a log rotation would). Holds what the log
 * line holds: never bodies, query strings or card data. */
#include "api/handlers.h"
#include "api/http.h"
#include "api/objects.h"
#include "api/requests.h"
#include "jpack.h"
#include "util.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define TP_REQLOG_SIZE 8192

struct entry {
  char id[40];
  char merchant[64];
  char method[8];
  char route[96];
  char path[256];
  char ip[48];
  unsigned status;
  char err_type[32], err_code[48], err_param[64];
  int tp_code;
  int64_t latency_us, created;
};

static struct entry ring[TP_REQLOG_SIZE];
static size_t next;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

/* The error fields of a reply body, if it is a Stripe error. */
static void error_fields(struct entry *e, const char *body, size_t len)
{
  json_t *j = body && len ? json_loadb(body, len, 0, NULL) : NULL;
  json_t *err = json_object_get(j, "error");
  if (json_is_object(err)) {
    const char *t = json_string_value(json_object_get(err, "type"));
    const char *c = json_string_value(json_object_get(err, "code"));
    const char *p = json_string_value(json_object_get(err, "param"));
    tp_scopy(e->err_type, sizeof e->err_type, t ? t : "");
    tp_scopy(e->err_code, sizeof e->err_code, c ? c : "");
    tp_scopy(e->err_param, sizeof e->err_param, p ? p : "");
    e->tp_code = (int)json_integer_value(json_object_get(err, "tp_code"));
  }
  json_decref(j);
}

void tp_reqlog_record(const char *request_id, const char *merchant, const char *method, const char *route,
                      const char *path, const char *ip, unsigned status, const char *body, size_t body_len, int64_t latency_us)
{
  struct entry e;
  memset(&e, 0, sizeof e);
  tp_scopy(e.id, sizeof e.id, request_id);
  tp_scopy(e.merchant, sizeof e.merchant, merchant);
  tp_scopy(e.method, sizeof e.method, method);
  tp_scopy(e.route, sizeof e.route, route);
  tp_scopy(e.path, sizeof e.path, path);
  tp_scopy(e.ip, sizeof e.ip, ip ? ip : "");
  e.status = status;
  e.latency_us = latency_us;
  e.created = tp_now();
  if (status >= 400)
    error_fields(&e, body, body_len);
  pthread_mutex_lock(&mu);
  ring[next] = e;
  next = (next + 1) % TP_REQLOG_SIZE;
  pthread_mutex_unlock(&mu);
}

/* GET /v1/turnpike/requests/{id}: one of the merchant's recent requests. */
static const struct tp_pspec spec_none[] = {{NULL, 0, NULL, NULL}};

void tp_h_request_retrieve(struct tp_req *r)
{
  if (!tp_check_params(r, spec_none)) /* as every route: an unknown parameter is a 400 */
    return;
  struct entry e;
  bool found = false;
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < TP_REQLOG_SIZE && !found; i++) {
    const struct entry *x = &ring[(next + TP_REQLOG_SIZE - 1 - i) % TP_REQLOG_SIZE];
    if (!x->id[0])
      break;
    if (strcmp(x->id, r->path_id) == 0 && strcmp(x->merchant, r->merchant.id) == 0) {
      e = *x;
      found = true;
    }
  }
  pthread_mutex_unlock(&mu);
  if (!found) {
    tp_reply_error(r, TP_ERR_RESOURCE_MISSING, "id", "No such request (only recent requests are kept)");
    return;
  }
  json_t *o = tp_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:s, s:i, s:I, s:b}", "id", e.id, "object",
                      "turnpike.request", "created", (json_int_t)e.created, "method", e.method, "route", e.route,
                      "path", e.path, "ip", e.ip, "status", (int)e.status, "latency_us", (json_int_t)e.latency_us,
                      "livemode", 0);
  if (e.status >= 400 && e.err_type[0])
    json_object_set_new(o, "error",
                        tp_pack("{s:s, s:s?, s:s?, s:i}", "type", e.err_type, "code", e.err_code[0] ? e.err_code : NULL,
                                "param", e.err_param[0] ? e.err_param : NULL, "tp_code", e.tp_code));
  else
    json_object_set_new(o, "error", json_null());
  tp_reply_json(r, 200, o);
}
