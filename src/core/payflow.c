/* The processor-call pipeline and its outcome builders (see payflow.h).
 *
 * An authorization is orchestrated: the router orders the eligible
 * processors; each call is its own attempt row, committed ("sent", its own
 * reference) before it leaves; a transient failure (transport error, soft
 * decline) is retried on the same processor after a backoff with full jitter,
 * then cascades down the route; a hard decline or an approval ends it. A call
 * whose outcome is unknown (timeout) is first resolved by a status query with
 * its own reference, so a second processor is only tried once the first one
 * is known not to have charged. Backoffs wait on a timer thread, never on a
 * request or connector thread. See docs/routing.md. */
#include "core/payflow.h"
#include "api/objects.h"
#include "config.h"
#include "core/procs.h"
#include "jpack.h"
#include "jsonw.h"
#include "log.h"
#include "metrics.h"
#include "sec/audit.h"
#include "sec/auth.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct tp_connector *tp_default_connector;

/* [routing] settings, read once by tp_recover at start-up. */
static int64_t deadline_ms = 10000, backoff_base_ms = 50, backoff_cap_ms = 1000, recovery_ms = 5000;
static int max_retries = 1;

/* ---- the timer thread ------------------------------------------------------
 * One sorted list of callbacks due at a monotonic time. Backoffs and the
 * recovery tick run here; a callback must be short (it submits work). */
struct timer_ent {
  int64_t due_ms;
  void (*fn)(void *arg, bool stopping);
  void *arg;
  struct timer_ent *next;
};

static pthread_mutex_t tmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tcv;
static struct timer_ent *thead;
static pthread_t tthread;
static bool trunning, tstopping;

static void *timer_main(void *arg)
{
  (void)arg;
  pthread_mutex_lock(&tmu);
  while (!tstopping) {
    int64_t now = tp_mono_ms();
    if (thead && thead->due_ms <= now) {
      struct timer_ent *e = thead;
      thead = e->next;
      pthread_mutex_unlock(&tmu);
      e->fn(e->arg, false);
      free(e);
      pthread_mutex_lock(&tmu);
      continue;
    }
    if (!thead) {
      pthread_cond_wait(&tcv, &tmu);
      continue;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t wait = thead->due_ms - now;
    ts.tv_sec += wait / 1000;
    ts.tv_nsec += (wait % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&tcv, &tmu, &ts);
  }
  pthread_mutex_unlock(&tmu);
  return NULL;
}

static int timer_start(void)
{
  pthread_mutex_lock(&tmu);
  if (trunning) {
    pthread_mutex_unlock(&tmu);
    return 0;
  }
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&tcv, &ca);
  pthread_condattr_destroy(&ca);
  tstopping = false;
  int rc = pthread_create(&tthread, NULL, timer_main, NULL);
  if (rc == 0)
    pthread_setname_np(tthread, "tp-timer");
  trunning = rc == 0;
  pthread_mutex_unlock(&tmu);
  return rc == 0 ? 0 : -1;
}

/* Run fn(arg) after delay_ms on the timer thread; at once when the timer is
 * not running (unit tests, admin commands) or is stopping (fn sees it). */
static void timer_after(int64_t delay_ms, void (*fn)(void *arg, bool stopping), void *arg)
{
  pthread_mutex_lock(&tmu);
  if (!trunning || tstopping) {
    bool stopping = tstopping;
    pthread_mutex_unlock(&tmu);
    fn(arg, stopping);
    return;
  }
  struct timer_ent *e = calloc(1, sizeof *e);
  if (!e)
    abort();
  e->due_ms = tp_mono_ms() + delay_ms;
  e->fn = fn;
  e->arg = arg;
  struct timer_ent **pp = &thead;
  while (*pp && (*pp)->due_ms <= e->due_ms)
    pp = &(*pp)->next;
  e->next = *pp;
  *pp = e;
  pthread_cond_signal(&tcv);
  pthread_mutex_unlock(&tmu);
}

void tp_payflow_stop(void)
{
  pthread_mutex_lock(&tmu);
  if (!trunning) {
    pthread_mutex_unlock(&tmu);
    return;
  }
  tstopping = true;
  pthread_cond_signal(&tcv);
  pthread_mutex_unlock(&tmu);
  pthread_join(tthread, NULL);
  /* Whatever still waits learns that we are stopping. */
  pthread_mutex_lock(&tmu);
  struct timer_ent *e = thead;
  thead = NULL;
  trunning = false;
  pthread_mutex_unlock(&tmu);
  while (e) {
    struct timer_ent *next = e->next;
    e->fn(e->arg, true);
    free(e);
    e = next;
  }
}

/* ---- attempts in flight in this process ---------------------------------------
 * The recovery tick must leave them alone: only attempts nobody here is
 * waiting for are resolved. */
#define INFLIGHT_BUCKETS 4096
struct inflight {
  struct inflight *next;
  char id[64];
};
static struct inflight *inflight_tab[INFLIGHT_BUCKETS];
static size_t inflight_n;
static pthread_mutex_t inflight_mu = PTHREAD_MUTEX_INITIALIZER;

static size_t inflight_bucket(const char *id)
{
  uint64_t h = 1469598103934665603ULL;
  for (; *id; id++)
    h = (h ^ (unsigned char)*id) * 1099511628211ULL;
  return (size_t)(h % INFLIGHT_BUCKETS);
}

/* Add id; false when it was already there. */
static bool inflight_add(const char *id)
{
  size_t b = inflight_bucket(id);
  pthread_mutex_lock(&inflight_mu);
  for (struct inflight *e = inflight_tab[b]; e; e = e->next)
    if (strcmp(e->id, id) == 0) {
      pthread_mutex_unlock(&inflight_mu);
      return false;
    }
  struct inflight *e = calloc(1, sizeof *e);
  if (!e)
    abort();
  tp_scopy(e->id, sizeof e->id, id);
  e->next = inflight_tab[b];
  inflight_tab[b] = e;
  inflight_n++;
  pthread_mutex_unlock(&inflight_mu);
  return true;
}

static void inflight_del(const char *id)
{
  size_t b = inflight_bucket(id);
  pthread_mutex_lock(&inflight_mu);
  for (struct inflight **pp = &inflight_tab[b]; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->id, id) == 0) {
      struct inflight *e = *pp;
      *pp = e->next;
      free(e);
      inflight_n--;
      break;
    }
  pthread_mutex_unlock(&inflight_mu);
}

size_t tp_payflow_inflight(void)
{
  pthread_mutex_lock(&inflight_mu);
  size_t n = inflight_n;
  pthread_mutex_unlock(&inflight_mu);
  return n;
}

/* ---- processors ------------------------------------------------------------ */
/* The connector (and registry entry, if any) of a processor by name. */
static struct tp_connector *conn_of(const char *name, struct tp_proc **out)
{
  struct tp_proc *pr = tp_procs_count() ? tp_proc_find(name) : NULL;
  if (out)
    *out = pr;
  if (pr)
    return &pr->conn;
  if (tp_default_connector && strcmp(tp_default_connector->name, name) == 0)
    return tp_default_connector;
  return NULL;
}

/* The processor for a call on an existing charge: the one that authorized it. */
static const char *charge_processor(const json_t *charge)
{
  const char *n = json_string_value(json_object_get(json_object_get(charge, "turnpike"), "processor"));
  if (n && *n)
    return n;
  if (tp_procs_count())
    return tp_proc_at(0)->name;
  return tp_default_connector ? tp_default_connector->name : "sandbox";
}

/* ---- pay objects --------------------------------------------------------------- */
struct tp_pay *tp_pay_new(struct tp_req *r, const struct tp_merchant *m)
{
  struct tp_pay *p = calloc(1, sizeof *p);
  if (!p)
    abort();
  p->r = r;
  p->m = *m;
  p->params = r ? r->params : NULL;
  return p;
}

static void drop_objects(struct tp_pay *p)
{
  json_decref(p->pi);
  json_decref(p->charge);
  json_decref(p->refund);
  json_decref(p->pm);
  json_decref(p->txn);
  p->pi = p->charge = p->refund = p->pm = p->txn = NULL;
}

/* Give back a probe slot next_step took for a call that will not go. */
static void admission_drop(struct tp_pay *p)
{
  if (p->admitted)
    tp_proc_release(p->admitted, p->admitted_slot);
  p->admitted = NULL;
  p->admitted_slot = 0;
}

void tp_pay_free(struct tp_pay *p)
{
  if (!p)
    return;
  admission_drop(p); /* a planned call that never went (deadline, stop, a failed write-ahead) */
  /* Whatever way a payment ends (a recovery query still unanswered too),
   * the object lock it holds goes with it. */
  if (p->lock_id[0])
    tp_lock_release(p->lock_id);
  if (p->pm_lock_id[0])
    tp_lock_release(p->pm_lock_id);
  if (p->cus_lock_id[0])
    tp_lock_release(p->cus_lock_id);
  drop_objects(p);
  json_decref(p->op_audit);
  free(p->body);
  free(p->redirect_body);
  free(p->return_url);
  if (p->shape) {
    json_decref(p->shape->params);
    free(p->shape->resp);
    free(p->shape->location);
    free(p->shape);
  }
  tp_card_wipe(&p->call, sizeof p->call);
  free(p);
}

/* What besides the objects shapes r's reply: its expand[] and a pinned
 * Stripe-Version that shows the legacy lists, as JSON into out (attempt
 * reply_opts; "" when neither, or when they do not fit: then a recovered
 * reply is the bare object, as before). */
static void reply_opts_keep(const struct tp_req *r, char *out, size_t cap)
{
  out[0] = '\0';
  const json_t *ex = json_object_get(r->params, "expand");
  bool expand = json_is_array(ex) && json_array_size(ex) > 0, legacy = tp_legacy_lists_wanted(r);
  if (!expand && !legacy)
    return;
  json_t *o = json_object();
  if (expand)
    json_object_set(o, "expand", (json_t *)(uintptr_t)ex);
  if (legacy)
    json_object_set_new(o, "v", json_string(r->api_version));
  char *text = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (text && strlen(text) < cap)
    tp_scopy(out, cap, text);
  else
    tp_log(TP_LOG_WARN, "reply_opts_too_long", "{s:s}", "request_id", r->request_id);
  free(text);
}

/* Recovery: a stand-in for the request behind a, from its reply_opts, so
 * the reply stored under the client's key is expanded (and shows the
 * legacy lists) as the live one would have been. Its merchant is p's; its
 * expansions were checked, and allowed to the key, when it came. */
static void reply_shape(struct tp_pay *p, const struct tp_attempt *a)
{
  if (!a->reply_opts[0])
    return;
  json_t *o = json_loads(a->reply_opts, 0, NULL);
  struct tp_req *q = o ? calloc(1, sizeof *q) : NULL;
  if (!q) {
    json_decref(o);
    return;
  }
  q->merchant = p->m;
  q->params = json_object();
  json_t *ex = json_object_get(o, "expand");
  if (json_is_array(ex))
    json_object_set(q->params, "expand", ex);
  tp_scopy(q->api_version, sizeof q->api_version, json_string_value(json_object_get(o, "v")) ?: "");
  tp_scopy(q->request_id, sizeof q->request_id, "recovery");
  json_decref(o);
  p->shape = q;
  p->params = q->params;
}

/* The request whose reply p builds: the live one, recovery's stand-in, or NULL. */
static struct tp_req *reply_req(const struct tp_pay *p)
{
  return p->r ? p->r : p->shape;
}

void tp_pay_attempt(struct tp_pay *p, const char *kind, int64_t amount, const char *currency)
{
  struct tp_attempt *a = &p->att;
  memset(a, 0, sizeof *a);
  tp_id_new(a->id, "att");
  tp_scopy(a->merchant, sizeof a->merchant, p->m.id);
  const char *pi = p->pi ? json_string_value(json_object_get(p->pi, "id")) : NULL;
  tp_scopy(a->payment_intent, sizeof a->payment_intent, pi ? pi : "");
  /* An authorization is routed in tp_pay_run; everything else goes to the
   * processor holding the authorization. */
  tp_scopy(a->processor, sizeof a->processor, charge_processor(p->charge));
  /* Our reference to the processor is the attempt id: unique per call, so a
   * processor that deduplicates by reference can never charge twice. */
  tp_scopy(a->idem_ref, sizeof a->idem_ref, a->id);
  tp_scopy(a->kind, sizeof a->kind, kind);
  snprintf(a->state, sizeof a->state, "sent");
  tp_scopy(a->currency, sizeof a->currency, currency);
  a->amount = amount;
  snprintf(a->route, sizeof a->route, "{\"why\":\"%s\"}", strcmp(kind, "authorize") == 0 ? "default" : "authorization");
  if (p->r && p->r->has_idem && p->r->idem_registered) {
    tp_scopy(a->client_idem_key, sizeof a->client_idem_key, p->r->idem_slot);
    tp_scopy(a->client_req_hash, sizeof a->client_req_hash, p->r->req_hash);
    reply_opts_keep(p->r, a->reply_opts, sizeof a->reply_opts);
  }
  a->reply_charge = p->reply_charge;
  if (strcmp(kind, "void") == 0)
    tp_scopy(a->reason, sizeof a->reason, p->cancellation_reason);
  a->created = tp_now();
}

/* Will the reply expand a balance transaction (latest_charge.balance_transaction,
 * charge.balance_transaction, balance_transaction)? Then the one this
 * outcome posts is kept for it: it is not committed when the reply is built. */
static bool wants_txn(const struct tp_pay *p)
{
  if (!reply_req(p))
    return false;
  const json_t *ex = json_object_get(p->params, "expand");
  size_t i;
  const json_t *v;
  json_array_foreach(ex, i, v)
  {
    const char *s = json_string_value(v);
    size_t n = s ? strlen(s) : 0, k = strlen("balance_transaction");
    if (n >= k && strcmp(s + n - k, "balance_transaction") == 0)
      return true;
  }
  return false;
}

void tp_pay_reply_text(struct tp_pay *p, unsigned status, json_t *obj, char *text)
{
  const json_t *ex = json_object_get(p->params, "expand");
  struct tp_req *rq = reply_req(p);
  if (text && !(rq && json_is_array(ex) && json_array_size(ex) > 0) && !tp_legacy_lists_wanted(rq)) {
    /* obj as already written out (tp_put_emit_text): the same bytes. */
    free(p->body);
    p->status = status;
    p->body = text;
    json_decref(obj);
    return;
  }
  free(text);
  tp_pay_reply(p, status, obj);
}

void tp_pay_reply(struct tp_pay *p, unsigned status, json_t *obj)
{
  const json_t *ex = json_object_get(p->params, "expand");
  bool expand = json_is_array(ex) && json_array_size(ex) > 0;
  struct tp_req *rq = reply_req(p);
  bool legacy = rq && tp_legacy_lists_wanted(rq);
  /* a decline's error.payment_intent, as the pinned version showed it too
   * (with its charges: e.error.payment_intent.charges.data[0].outcome) */
  json_t *err_pi = status >= 400 ? json_object_get(json_object_get(obj, "error"), "payment_intent") : NULL;
  if (rq && ((status < 300 && (expand || legacy)) || (legacy && json_is_object(err_pi)))) {
    /* The objects this payment just wrote, as they are before obj (which
     * may be one of them) is expanded: latest_charge.payment_intent then
     * shows the PaymentIntent with latest_charge as an id, as Stripe does. */
    json_t *known = json_array();
    const json_t *mine[] = {p->txn, p->charge, p->pm, p->pi, p->refund};
    for (size_t i = 0; i < sizeof mine / sizeof mine[0]; i++)
      if (mine[i])
        json_array_append_new(known, json_deep_copy(mine[i]));
    /* Expansion errors were checked up front (tp_check_params). */
    if (status >= 400)
      tp_legacy_lists(rq, err_pi, known);
    else {
      if (expand)
        tp_expand(rq, obj, known);
      tp_legacy_lists(rq, obj, known); /* a request pinned to an old API version */
    }
    json_decref(known);
  }
  /* An error of the payment's own request leads to its request log entry,
   * as every other error reply does (tp_reply_error). */
  json_t *err = status >= 400 && p->r ? json_object_get(obj, "error") : NULL;
  if (json_is_object(err) && !json_object_get(err, "request_log_url"))
    tp_error_request_log(err, p->r);
  free(p->body);
  p->status = status;
  p->body = tp_json_dump(obj, NULL);
  json_decref(obj);
}

/* ---- the pipeline ---------------------------------------------------------- */
/* A payment's objects share strings with its request's parameters (by
 * reference, through jansson's reference counts). The payment lets go of
 * them before its requests resume, so that the HTTP thread which then frees
 * the parameters (on_completed) comes after, not alongside: the resume is
 * the hand-over (ThreadSanitizer saw the two threads free one tree at once
 * when the payment was freed after the resume). Replies are set already. */
static void free_then_resume(struct tp_pay *p, struct tp_req *r, struct tp_req *op_req)
{
  tp_pay_free(p);
  if (r)
    tp_req_resume(r);
  if (op_req)
    tp_req_resume(op_req);
}

/* The 3-D Secure page's redirect, with the real outcome of the
 * authorization as its PaymentIntent stands (before the objects are
 * dropped): an outcome not known yet is "processing", not "failed"
 * (recovery may still find it charged). */
static void return_location(struct tp_pay *p)
{
  if (!p->return_url || !p->r || !p->pi)
    return;
  free(p->r->location);
  p->r->location = tp_return_location(p->return_url, "payment_intent", json_string_value(json_object_get(p->pi, "id")),
                                      json_string_value(json_object_get(p->pi, "client_secret")),
                                      tp_redirect_status(p->pi));
  free(p->return_url);
  p->return_url = NULL;
}

/* The customer's browser, back from the 3-D Secure page, answered with a
 * page (not the API's JSON) with error e's status. */
static void browser_page(struct tp_pay *p, enum tp_err e, const char *text)
{
  const struct tp_error_info *ei = tp_error_info(e);
  char *page = NULL;
  if (asprintf(&page, "<!doctype html><title>Not completed</title><p id=\"result\">%s</p>", text) < 0)
    abort();
  tp_reply_raw(p->r, ei ? (unsigned)ei->http_status : 503, page, strlen(page), "text/html; charset=utf-8");
}

static void finish(struct tp_pay *p, int rc)
{
  if (p->lock_id[0])
    tp_lock_release(p->lock_id); /* before the reply: the client may go on at once */
  p->lock_id[0] = '\0';
  if (p->r) {
    if (rc != 0 && p->redirect_body)
      /* the processor has answered, but its outcome is not recorded: what
       * it did is recovery's to find (the attempt stays "sent") */
      browser_page(p, rc == TP_STORE_ERR_FULL ? TP_ERR_STORE_FULL : TP_ERR_STORE_UNAVAILABLE,
                   "The payment's outcome could not be recorded just now. Check your order with the shop "
                   "before you pay again.");
    else if (rc != 0)
      tp_reply_commit_failed(p->r, rc);
    else if (p->redirect_body) {
      return_location(p);
      tp_reply_raw(p->r, p->redirect_status, p->redirect_body, p->redirect_len, "text/html; charset=utf-8");
      p->redirect_body = NULL;
    } else {
      tp_reply_raw(p->r, p->status, p->body, p->body ? strlen(p->body) : 0, "application/json");
      p->body = NULL;
    }
  }
  if (p->op_req) {
    if (rc != 0)
      tp_reply_commit_failed(p->op_req, rc);
    else
      tp_reply_json(p->op_req, 200, tp_attempt_json(&p->att));
  }
  free_then_resume(p, p->r, p->op_req);
}

static void outcome_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct tp_pay *p = arg;
  if (rc != 0)
    tp_log(TP_LOG_ERROR, "outcome_commit_failed", "{s:s}", "attempt", p->att.id);
  /* Only now, with its outcome committed (or not), may recovery look at
   * the attempt: it re-reads its state when it claims it (claim). */
  inflight_del(p->att.id);
  finish(p, rc);
}

static void set_state(struct tp_attempt *a, const struct tp_proc_call *c)
{
  switch (c->outcome) {
  case TP_OUT_APPROVED:
    snprintf(a->state, sizeof a->state, "succeeded");
    break;
  case TP_OUT_DECLINED:
    snprintf(a->state, sizeof a->state, "declined");
    break;
  default:
    snprintf(a->state, sizeof a->state, "failed");
    break;
  }
  /* A call that did not go through without a code of its own (recovery
   * found nothing under the reference, or voided it) reads as its
   * PaymentIntent's error does (tp_outcome_authorize): processing_error. */
  tp_scopy(a->result_code, sizeof a->result_code,
           c->decline_code[0] || c->outcome == TP_OUT_APPROVED ? c->decline_code : "processing_error");
  tp_scopy(a->auth_code, sizeof a->auth_code, c->auth_code);
  tp_scopy(a->processor_ref, sizeof a->processor_ref, c->processor_ref);
  a->updated = tp_now();
}

/* Commit cs (the outcome) with the attempt and the idempotent reply, then
 * answer. */
static void commit_outcome(struct tp_pay *p, struct tp_cs *cs)
{
  struct tp_attempt *a = &p->att;
  /* Card data is not needed past the last call. */
  tp_card_wipe(p->call.pan, sizeof p->call.pan);
  tp_card_wipe(p->call.cvc, sizeof p->call.cvc);
  tp_cs_attempt(cs, a);
  if (p->op_req)
    tp_audit_append(cs, p->m.id, p->op_req->actor[0] ? p->op_req->actor : "api", "attempt.resolved", a->id,
                    p->op_audit);
  if (a->client_idem_key[0] && p->body)
    tp_cs_idem(cs, p->m.id, a->client_idem_key, a->client_req_hash, p->r ? p->r->request_id : NULL, (int)p->status,
               p->body);
  tp_cs_on_done(cs, outcome_done, p);
  /* The outcome and its reply are serialised: the object trees are not
   * needed any more. They are freed here, by the thread that built them
   * while their memory is still in its cache, rather than after the commit
   * by the completion thread, which walked them cold (a third of its time
   * under load). */
  return_location(p);
  drop_objects(p);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    /* The attempt stays "sent"; recovery resolves it. */
    inflight_del(a->id);
    finish(p, -1);
  }
}

/* Is the processor of p's attempt a connector of this type ("restjson",
 * "iso8583")? The two speak different recovery protocols: status query and
 * fence, or reversal. */
static bool proc_type_is(const struct tp_pay *p, const char *type)
{
  const struct tp_connector *conn = conn_of(p->att.processor, NULL);
  return conn && strcmp(conn->ops->type, type) == 0;
}

/* Does the capture or refund call just made owe a reversal? An ISO link
 * that got no (usable) answer reverses the call itself before it reports
 * processor_timeout, or queues that reversal when the link is down
 * (processor_status_unknown); either way the host may have acted on it, so
 * the reversal must be repeated until acknowledged, across restarts. Other
 * errors say the call never left. */
static bool owes_reversal(const struct tp_pay *p)
{
  const struct tp_proc_call *c = &p->call;
  /* A partial approval declined insufficient_funds: its hold is being
   * reversed by the link, and owed until the host acknowledges it. */
  if (c->reversing && c->outcome == TP_OUT_DECLINED && !p->recovering && !p->not_sent)
    return proc_type_is(p, "iso8583");
  if (p->recovering || p->not_sent || c->outcome != TP_OUT_ERROR ||
      (c->kind != TP_PROC_CAPTURE && c->kind != TP_PROC_REFUND))
    return false;
  if (strcmp(c->decline_code, "processor_timeout") != 0 && strcmp(c->decline_code, "processor_status_unknown") != 0)
    return false;
  return proc_type_is(p, "iso8583");
}

/* The last call settled the payment: build the outcome and commit it. */
static void final_outcome(struct tp_pay *p)
{
  struct tp_cs *cs = tp_cs_new();
  set_state(&p->att, &p->call);
  if (owes_reversal(p)) {
    /* The outcome below treats the call as not done (the capture or refund
     * may be repeated); the attempt records in the same change set that
     * its reversal is owed, for recovery to repeat (recover_reversals). */
    snprintf(p->att.state, sizeof p->att.state, "reversal_pending");
    tp_scopy(p->att.orig_data, sizeof p->att.orig_data, p->call.orig_data);
    tp_log(TP_LOG_WARN, "reversal_owed", "{s:s, s:s, s:s, s:s}", "attempt", p->att.id, "kind", p->att.kind,
           "processor", p->att.processor, "error", p->call.decline_code);
  }
  p->outcome(p, cs);
  commit_outcome(p, cs);
}

/* Every processor failed transiently (or the deadline passed): nothing was
 * charged. The PaymentIntent goes back to requires_confirmation with its
 * payment method kept (a plain confirm tries again) and an api_error in
 * last_payment_error; no charge object, as no charge happened. */
static void exhausted_outcome(struct tp_pay *p, enum tp_err e)
{
  struct tp_cs *cs = tp_cs_new();
  const char *merchant = p->m.id;
  json_t *pi = p->pi;
  json_object_set_new(pi, "status", json_string("requires_confirmation"));
  json_t *err;
  if (!p->sent_any && e == TP_ERR_PROCESSOR_RETRIES_EXHAUSTED) {
    /* No call left: every breaker was open or half-open with no probe
     * free by the time it was asked. Nothing was tried, so no payment
     * failed (routing.md §3: as when routing finds no processor). */
    e = TP_ERR_NO_PROCESSOR_AVAILABLE;
    err = tp_error_object(e, NULL, NULL);
    tp_cs_put(cs, TP_K_PAYMENT_INTENT, merchant, pi);
    /* Unlike routing's 503 this one is stored under the Idempotency-Key
     * (the write-ahead was committed): a retry of it gets it again, so
     * SDKs are told not to; a new confirm tries again. */
    if (p->r)
      p->r->settled_error = true;
  } else {
    err = tp_error_object(e, NULL, NULL);
    json_object_set(pi, "last_payment_error", err);
    tp_put_emit(cs, p->r, merchant, TP_K_PAYMENT_INTENT, "payment_intent.payment_failed", pi);
  }
  json_t *body_err = json_deep_copy(err);
  if (!p->reply_charge) /* the Charges API never shows its PaymentIntent */
    json_object_set(body_err, "payment_intent", pi);
  json_decref(err);
  const struct tp_error_info *ei = tp_error_info(e);
  tp_pay_reply(p, ei ? (unsigned)ei->http_status : 502, tp_pack("{s:o}", "error", body_err));
  tp_metric_inc("turnpike_payments_exhausted_total", NULL, 1);
  commit_outcome(p, cs);
}

/* A call's outcome is unknown and could not be resolved now: stop without
 * trying anyone else (that could charge twice). The attempt stays "sent"
 * and the PaymentIntent "processing"; the recovery timer resolves both and
 * stores the reply for the client's retry. */
static void processing_said(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  (void)rc;
  struct tp_pay *p = arg;
  inflight_del(p->att.id); /* only now may recovery take it: the row it reads is written */
  finish(p, 0);
}

/* An approval for another amount or currency than asked (restjson.c,
 * map_status): the card is held for something else, so the reference is
 * voided (the fence) and the payment goes on as if it had not been charged;
 * a void that fails leaves it to recovery and an operator. */
static bool approval_mismatch(const char *code)
{
  return strcmp(code, "processor_amount_mismatch") == 0 || strcmp(code, "processor_currency_mismatch") == 0;
}

static void unresolved(struct tp_pay *p)
{
  tp_log(TP_LOG_WARN, "attempt_unresolved", "{s:s, s:s, s:s}", "attempt", p->att.id, "processor", p->att.processor,
         "error", p->last_code);
  tp_metric_inc("turnpike_attempts_unresolved_total", NULL, 1);
  /* The PaymentIntent stays processing (its write-ahead) until recovery
   * settles it, maybe for long: said as Stripe says it
   * (payment_intent.processing), for integrations driven by webhooks. A
   * payment settled at once never sits there, and says nothing of it. */
  const char *st = p->pi ? json_string_value(json_object_get(p->pi, "status")) : NULL;
  struct tp_cs *said = NULL;
  if (st && strcmp(st, "processing") == 0 && strcmp(p->att.kind, "authorize") == 0) {
    said = tp_cs_new();
    tp_emit(said, p->r, p->m.id, "payment_intent.processing", p->pi);
  }
  /* An ISO link that got no answer has started reversing the message and
   * knows its STAN and field 7: kept on the attempt, so recovery's
   * reversals name it in field 90 as the link's do (without them a host
   * that finds originals by field 90 answers 25, read as nothing stands,
   * while the sale stands there). */
  if (p->call.orig_data[0] && strcmp(p->att.state, "sent") == 0 && strcmp(p->att.kind, "void") != 0 &&
      strcmp(p->att.orig_data, p->call.orig_data) != 0 && proc_type_is(p, "iso8583")) {
    tp_scopy(p->att.orig_data, sizeof p->att.orig_data, p->call.orig_data);
    if (!said)
      said = tp_cs_new();
    tp_cs_attempt(said, &p->att);
  }
  /* A call answered for another amount or currency than asked: kept on
   * the attempt, so recovery does not take a later status answer that
   * leaves the amount out as the approval of the amount asked. */
  if (approval_mismatch(p->last_code) && strcmp(p->att.state, "sent") == 0 &&
      strcmp(p->att.result_code, p->last_code) != 0) {
    tp_scopy(p->att.result_code, sizeof p->att.result_code, p->last_code);
    if (!said)
      said = tp_cs_new();
    tp_cs_attempt(said, &p->att);
  }
  json_t *err = tp_error_object(TP_ERR_PROCESSOR_STATUS_UNKNOWN, NULL, NULL);
  /* As every error of a PaymentIntent request (Stripe: error.payment_intent),
   * as committed (processing): a create+confirm's client learns its id here,
   * to retrieve it once recovery has settled it. Not a refund's (nor one
   * made as the void of an uncaptured charge), nor the Charges API's (which
   * never shows its PaymentIntent). */
  if (p->pi && !p->reply_charge && strcmp(p->att.kind, "refund") != 0 && p->outcome != tp_outcome_void_refund)
    json_object_set(err, "payment_intent", p->pi);
  tp_pay_reply(p, 502, tp_pack("{s:o}", "error", err));
  if (said) { /* committed before the 502 goes out: a client reading its events then finds it */
    tp_cs_on_done(said, processing_said, p);
    if (tp_writer_submit(said) == 0)
      return;
    tp_cs_free(said); /* the outcome's events follow anyway */
  }
  inflight_del(p->att.id);
  finish(p, 0);
}

static void call_done(struct tp_proc_call *c);

/* An ISO 8583 call's STAN and field 7, fixed before its write-ahead and
 * committed with it (the attempt's orig_data): when the gateway stops
 * between the send and the answer, recovery's reversal names the message
 * in field 90 as the host has it (it named zeros; a host that finds the
 * original by field 90 answered 25, read as nothing stands, while the
 * sale stood). */
static void iso_reserve(struct tp_pay *p)
{
  struct tp_connector *conn = conn_of(p->att.processor, NULL);
  if (conn && strcmp(conn->ops->type, "iso8583") == 0)
    tp_iso8583_reserve(conn, p->call.kind, p->att.capture != 0, p->att.orig_data);
}

static void send_call(struct tp_pay *p)
{
  struct tp_proc_call *c = &p->call;
  struct tp_proc *pr = NULL;
  struct tp_connector *conn = conn_of(p->att.processor, &pr);
  if (p->fencing) {
    /* its own reference (so it is idempotent too), naming att's */
    snprintf(c->ref, sizeof c->ref, "%.56s-fence", p->att.idem_ref);
    tp_scopy(c->orig_ref, sizeof c->orig_ref, p->att.idem_ref);
  } else
    tp_scopy(c->ref, sizeof c->ref, p->att.idem_ref);
  /* The processor groups its records by payment (the simulator's journal
   * proves "no double charge" per payment with it). */
  tp_scopy(c->payment, sizeof c->payment, p->att.payment_intent);
  c->amount = p->att.amount;
  tp_scopy(c->currency, sizeof c->currency, p->att.currency);
  c->capture = p->att.capture != 0;
  /* The card's PaymentMethod says whether a CVC ever came with it (a
   * recovery's status query sees what the first call saw). */
  c->no_cvc = p->pm && !c->cvc[0] && !tp_pm_has_cvc(p->pm);
  c->done = call_done;
  c->arg = p;
  c->outcome = TP_OUT_ERROR;
  c->decline_code[0] = c->auth_code[0] = c->processor_ref[0] = '\0';
  c->retry_after_ms = 0;
  c->reversing = false;
  if (c->kind != TP_PROC_VOID && c->kind != TP_PROC_STATUS) /* what its write-ahead fixed (iso_reserve), or "" */
    tp_scopy(c->orig_data, sizeof c->orig_data, p->att.orig_data);
  p->not_sent = false;
  p->sent_us = tp_mono_ns() / 1000;
  /* Screening before the network (Stripe's Radar blocks a card of the
   * highest risk "regardless of your rules": not_sent_to_network): the
   * authorization is declined fraudulent here, never sent, and neither
   * the processor's statistics nor the router learn from it. (The risk
   * comes from the test-card table: there is no fraud scoring, §11.)
   * Recovery's status query of such an authorization (the gateway stopped
   * between its write-ahead and its outcome) gets the same answer: it was
   * never sent, so nothing is asked and nothing fenced. */
  bool authorizes = c->kind == TP_PROC_AUTHORIZE || (c->kind == TP_PROC_STATUS && c->status_of == TP_PROC_AUTHORIZE);
  if (authorizes && !p->fencing && c->pan[0]) {
    int score;
    if (strcmp(tp_test_card_risk(c->pan, &score), "highest") == 0) {
      p->screened = true;
      c->outcome = TP_OUT_DECLINED;
      tp_scopy(c->decline_code, sizeof c->decline_code, "fraudulent");
      call_done(c);
      return;
    }
  }
  /* A new call asks the breaker first (half-open admits a few probes); a
   * status query about a call already made always goes. */
  /* A slot next_step took for this very call, while the breaker is still
   * half-open in the period it was taken: reopened meanwhile (another
   * probe failed), the call is asked for again like any other. */
  bool admitted = p->admitted && p->admitted == pr && tp_proc_slot_live(pr, p->admitted_slot);
  uint64_t slot = admitted ? p->admitted_slot : 0;
  if (p->admitted && !admitted)
    admission_drop(p);
  p->admitted = NULL;
  p->admitted_slot = 0;
  if (pr && c->kind != TP_PROC_STATUS && !p->fencing && p->orchestrated && !admitted && !tp_proc_allow(pr, &slot)) {
    p->not_sent = true;
    snprintf(c->decline_code, sizeof c->decline_code, "processor_circuit_open");
    call_done(c);
    return;
  }
  bool sent_before = p->sent_any;
  p->sent_any = true; /* before submit: the answer may come on another thread */
  if (!conn || conn->ops->submit(conn->cls, c) != 0) {
    p->sent_any = sent_before;
    p->not_sent = true;
    if (pr && slot)
      tp_proc_release(pr, slot); /* never went: its probe slot back */
    c->outcome = TP_OUT_ERROR;
    tp_scopy(c->decline_code, sizeof c->decline_code, conn ? "processor_queue_full" : "processor_config_invalid");
    call_done(c);
  }
}

static void writeahead_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct tp_pay *p = arg;
  if (p->prev_att[0]) {
    inflight_del(p->prev_att);
    p->prev_att[0] = '\0';
  }
  if (rc != 0) {
    inflight_del(p->att.id);
    finish(p, rc);
    return;
  }
  send_call(p);
}

/* Errors that prove the processor did not act on the call. */
static bool error_not_processed(const char *code)
{
  static const char *const codes[] = {"processor_connection_refused", "processor_dns_failed", "processor_tls_failed",
                                      "processor_connect_timeout",
                                      "processor_rate_limited", "processor_auth_failed", "processor_http_4xx",
                                      "processor_http_503", "processor_circuit_open", "processor_queue_full",
                                      "processor_link_down", "processor_config_invalid", NULL};
  for (int i = 0; codes[i]; i++)
    if (strcmp(code, codes[i]) == 0)
      return true;
  return false;
}

/* How many times a fence, or a status query that failed, is sent in all
 * before the payment is left to recovery: each only reads or is idempotent
 * by its own reference, so sending again is safe, and a processor failing
 * one call in five still settles nearly every payment in the request. */
#define RESOLVE_TRIES 5

/* Full jitter: uniform in [0, min(cap, base * 2^(try-1))]. */
static int64_t backoff_ms(int try_no)
{
  int64_t ceil_ms = backoff_base_ms;
  for (int i = 1; i < try_no && ceil_ms < backoff_cap_ms; i++)
    ceil_ms *= 2;
  if (ceil_ms > backoff_cap_ms)
    ceil_ms = backoff_cap_ms;
  uint32_t r;
  tp_random(&r, sizeof r);
  return ceil_ms > 0 ? (int64_t)(r % (uint32_t)(ceil_ms + 1)) : 0;
}

void tp_call_target(struct tp_proc_call *c, const json_t *charge)
{
  const json_t *turn = json_object_get(charge, "turnpike");
  const char *att = json_string_value(json_object_get(turn, "attempt"));
  const char *orig = json_string_value(json_object_get(turn, "iso_original"));
  tp_scopy(c->orig_ref, sizeof c->orig_ref, att ? att : "");
  tp_scopy(c->orig_data, sizeof c->orig_data, orig ? orig : "");
}

int64_t tp_payflow_longest_ms(void)
{
  /* A payment sends nothing new past its deadline, but a call sent just
   * before it runs for up to its processor's timeout. */
  int64_t longest = 0;
  for (size_t i = 0; i < tp_procs_count(); i++)
    if (tp_proc_at(i)->timeout_ms > longest)
      longest = tp_proc_at(i)->timeout_ms;
  return deadline_ms + longest;
}

static void route_reason(struct tp_pay *p)
{
  char buf[TP_ROUTE_JSON_MAX];
  tp_router_reason(&p->route, p->route_i, buf, sizeof buf);
  size_t n = strlen(buf);
  if (p->tries > 0 && n > 1 && n + 12 < sizeof buf)
    snprintf(buf + n - 1, sizeof buf - (n - 1), ",\"try\":%d}", p->tries + 1);
  tp_scopy(p->att.route, sizeof p->att.route, buf);
}

/* The timer fired: commit the finished attempt with the next one, then send. */
static void retry_fire(void *arg, bool stopping)
{
  struct tp_pay *p = arg;
  struct tp_cs *cs = tp_cs_new();
  tp_cs_attempt(cs, &p->att); /* the finished call, final state */
  if (stopping || tp_mono_ms() >= p->deadline_ms) {
    /* Nothing new goes out: settle with what we know (a soft decline is
     * the issuer's answer; a transport failure means nothing happened). */
    tp_cs_free(cs);
    if (p->call.outcome == TP_OUT_DECLINED)
      final_outcome(p);
    else
      exhausted_outcome(p, stopping ? TP_ERR_PROCESSOR_CANCELLED : TP_ERR_PROCESSOR_RETRIES_EXHAUSTED);
    return;
  }
  /* The finished call stays claimed until its final state commits with
   * the next write-ahead (writeahead_done). */
  tp_scopy(p->prev_att, sizeof p->prev_att, p->att.id);
  char client_key[sizeof p->att.client_idem_key], client_hash[TP_REQ_HASH_LEN];
  tp_scopy(client_key, sizeof client_key, p->att.client_idem_key);
  tp_scopy(client_hash, sizeof client_hash, p->att.client_req_hash);
  int capture = p->att.capture;
  char vault_token[64], reply_opts[sizeof p->att.reply_opts];
  tp_scopy(vault_token, sizeof vault_token, p->att.vault_token);
  tp_scopy(reply_opts, sizeof reply_opts, p->att.reply_opts);
  char currency[4];
  snprintf(currency, sizeof currency, "%s", p->att.currency); /* tp_pay_attempt clears att */
  tp_pay_attempt(p, "authorize", p->att.amount, currency);
  tp_scopy(p->att.client_idem_key, sizeof p->att.client_idem_key, client_key);
  tp_scopy(p->att.client_req_hash, sizeof p->att.client_req_hash, client_hash);
  tp_scopy(p->att.vault_token, sizeof p->att.vault_token, vault_token);
  tp_scopy(p->att.reply_opts, sizeof p->att.reply_opts, reply_opts);
  p->att.capture = capture;
  tp_scopy(p->att.processor, sizeof p->att.processor, p->route_names[p->route_i]);
  route_reason(p);
  p->call.kind = TP_PROC_AUTHORIZE;
  p->calls++;
  p->tries++;
  iso_reserve(p);
  tp_cs_attempt(cs, &p->att);
  inflight_add(p->att.id);
  tp_cs_on_done(cs, writeahead_done, p);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    inflight_del(p->att.id);
    inflight_del(p->prev_att);
    finish(p, -1);
  }
}

/* Plan a call to q: true when it may go (closed, or a half-open probe slot
 * taken for it, kept in p->admitted). */
static bool admission_take(struct tp_pay *p, struct tp_proc *q)
{
  uint64_t slot = 0;
  if (q && !tp_proc_reserve(q, &slot))
    return false;
  p->admitted = slot ? q : NULL;
  p->admitted_slot = slot;
  return true;
}

/* The current attempt failed without charging: retry, cascade, or give up. */
static void next_step(struct tp_pay *p, bool transport_error)
{
  int64_t now = tp_mono_ms();
  struct tp_proc *pr = NULL;
  conn_of(p->att.processor, &pr);
  /* Same processor again while it has retries left and its breaker lets a
   * call through; else the next processor in the route whose breaker does.
   * A half-open breaker's probe slot is taken here, for the call the timer
   * sends (p->admitted), and one with none free is passed over as an open
   * one is: asked only at send, it refused the retry of a soft decline
   * after another payment took the slot meanwhile, and the payment ended
   * 502 in place of the issuer's answer. (A closed breaker holds nothing:
   * the send asks it again, as it may have opened meanwhile.) */
  admission_drop(p);
  bool same = p->tries < max_retries + 1 && !p->not_sent && (!pr || tp_proc_may_call(pr));
  /* A processor that said when to come back (Retry-After) is not called
   * sooner; one that cannot be called again within the deadline is left
   * for the next processor of the route. */
  int64_t asked = p->retry_after_ms;
  p->retry_after_ms = 0;
  if (same && asked > 0 && now + asked >= p->deadline_ms)
    same = false;
  if (same) {
    int64_t delay = backoff_ms(p->tries);
    if (delay < asked)
      delay = asked;
    if (now + delay >= p->deadline_ms) {
      if (transport_error)
        exhausted_outcome(p, TP_ERR_PROCESSOR_RETRIES_EXHAUSTED);
      else
        final_outcome(p);
      return;
    }
    if (admission_take(p, pr)) {
      tp_metric_inc("turnpike_payment_retries_total", NULL, 1);
      /* p->tries counts calls made to route_i; retry_fire increments it. */
      timer_after(delay, retry_fire, p);
      return;
    }
    /* (its last slot went to another payment just now: the next processor) */
  }
  size_t i = p->route_i + 1;
  if (now < p->deadline_ms) /* nothing new past it: no slot is taken for nothing */
    for (; i < p->route.n; i++) {
      struct tp_proc *q = NULL;
      conn_of(p->route_names[i], &q);
      if (admission_take(p, q))
        break;
    }
  if (now >= p->deadline_ms || i >= p->route.n) {
    if (transport_error)
      exhausted_outcome(p, TP_ERR_PROCESSOR_RETRIES_EXHAUSTED);
    else
      final_outcome(p); /* the last soft decline is the answer */
    return;
  }
  p->route_i = i;
  p->tries = 0;
  tp_metric_inc("turnpike_payment_cascades_total", NULL, 1);
  timer_after(0, retry_fire, p);
}

/* Resolve the outcome-unknown call att by asking its processor. */
static void query_status(struct tp_pay *p)
{
  p->resolving = true;
  p->call.kind = TP_PROC_STATUS;
  send_call(p);
}

/* A status query that failed, or a fence, sent again after a backoff
 * (p->resend: query_status or fence; each only reads or is idempotent by
 * its own reference). */
static void resend_later(void *arg, bool stopping)
{
  struct tp_pay *p = arg;
  if (stopping) {
    unresolved(p);
    return;
  }
  p->resend(p);
}

/* The attempt provably charged nothing (never reached the processor, or
 * its reference is fenced): close it as failed and go on. */
static void not_charged_next(struct tp_pay *p)
{
  snprintf(p->att.state, sizeof p->att.state, "failed");
  tp_scopy(p->att.result_code, sizeof p->att.result_code, p->last_code);
  p->att.updated = tp_now();
  next_step(p, true);
}

/* A status query found no trace of an authorization (or, in recovery, a
 * capture or refund) whose answer was lost (a timeout, a reset). Over HTTP
 * that does not prove it will never arrive: the request may still sit in a
 * socket buffer or a stalled process, to be processed after the payment has
 * gone elsewhere. So the reference is voided first (the processor records it as voided before it
 * was seen, and a late arrival charges nothing: see docs/processors.md),
 * and only a confirmed void lets the payment move on. An ISO link's status
 * query already reverses the reference. */
static bool needs_fence(const struct tp_pay *p)
{
  /* A call that failed in a way proving it was not acted on (refused, an
   * HTTP error answer) needs none: only a lost answer does. */
  return proc_type_is(p, "restjson") &&
         (strcmp(p->att.kind, "authorize") == 0 || strcmp(p->att.kind, "capture") == 0 ||
          strcmp(p->att.kind, "refund") == 0 || strcmp(p->att.kind, "void") == 0) &&
         !(p->last_code[0] && error_not_processed(p->last_code));
}

static void fence(struct tp_pay *p)
{
  tp_metric_inc("turnpike_attempt_fences_total", NULL, 1);
  p->fencing = true;
  p->fence_tries++;
  p->call.kind = TP_PROC_VOID;
  send_call(p);
}

static void mismatch_kept(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct tp_pay *p = arg;
  /* The fence goes out whatever became of that commit: a hold for another
   * amount is voided in any case (a full disk stopped it, and recovery
   * then booked the amount asked; review, session 41). unresolved()
   * commits the mismatch again if the fence does not settle it. */
  if (rc != 0)
    tp_log(TP_LOG_ERROR, "attempt_mismatch_not_kept", "{s:s, s:i}", "attempt", p->att.id, "rc", rc);
  fence(p);
}

/* An answer for another amount or currency than asked (code), found on
 * the call's own answer, a status query's, or recovery's: committed on the
 * attempt (result_code, state still "sent") before the fence goes out.
 * A status answer that leaves the amount out (allowed) does not then
 * settle the attempt as the amount asked, after a fence that failed or a
 * crash while it was in flight (review, session 41: 1000 recorded while
 * the processor held 10000). */
static void fence_mismatch(struct tp_pay *p, const char *code)
{
  tp_scopy(p->last_code, sizeof p->last_code, code);
  p->fence_tries = 0;
  if (strcmp(p->att.result_code, code) == 0) {
    fence(p);
    return;
  }
  tp_scopy(p->att.result_code, sizeof p->att.result_code, code);
  struct tp_cs *cs = tp_cs_new();
  tp_cs_attempt(cs, &p->att);
  tp_cs_on_done(cs, mismatch_kept, p);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    mismatch_kept(NULL, -1, p);
  }
}

/* The fence's answer: true when the reference is voided (nothing was or
 * will be charged with it); the call then reads as "not found" again. */
static bool fenced(struct tp_pay *p)
{
  struct tp_proc_call *c = &p->call;
  p->fencing = false;
  bool ok = c->outcome == TP_OUT_APPROVED; /* "voided" */
  if (!ok)
    tp_log(TP_LOG_WARN, "attempt_fence_failed", "{s:s, s:s, s:s}", "attempt", p->att.id, "processor",
           p->att.processor, "error", c->decline_code);
  c->kind = p->recovering ? TP_PROC_STATUS : TP_PROC_AUTHORIZE;
  c->outcome = ok ? TP_OUT_NOT_FOUND : TP_OUT_ERROR;
  c->auth_code[0] = c->processor_ref[0] = '\0';
  if (ok) {
    c->decline_code[0] = '\0';
    p->fence_tries = 0;
  }
  return ok;
}

/* An orchestrated authorization call finished. */
static void orchestrate(struct tp_pay *p)
{
  struct tp_proc_call *c = &p->call;
  struct tp_proc *pr = NULL;
  conn_of(p->att.processor, &pr);
  if (p->fencing) {
    char why[sizeof c->decline_code];
    tp_scopy(why, sizeof why, c->decline_code);
    if (!fenced(p)) {
      /* The void failed in a way that proves it was not acted on (a 5xx,
       * refused): try it again, with backoff, within the deadline. */
      /* The fence has its own reference: sending it again is safe whatever
       * became of the last one. A 4xx (409: the reference was used, so the
       * call it fences did arrive) will not change. */
      int64_t delay = backoff_ms(p->fence_tries);
      if (strcmp(why, "processor_http_4xx") != 0 && p->fence_tries < RESOLVE_TRIES &&
          tp_mono_ms() + delay < p->deadline_ms) {
        p->resend = fence;
        timer_after(delay, resend_later, p);
        return;
      }
      unresolved(p); /* recovery asks again later */
      return;
    }
    not_charged_next(p);
    return;
  }
  if (p->resolving) {
    p->resolving = false;
    c->kind = TP_PROC_AUTHORIZE;
    switch (c->outcome) {
    case TP_OUT_APPROVED:
      final_outcome(p); /* the earlier call did charge: that is the payment */
      return;
    case TP_OUT_DECLINED:
      if (!tp_decline_is_soft(c->decline_code)) {
        final_outcome(p);
        return;
      }
      set_state(&p->att, c);
      next_step(p, false);
      return;
    case TP_OUT_NOT_FOUND:
      if (needs_fence(p)) {
        if (tp_mono_ms() >= p->deadline_ms)
          unresolved(p); /* nothing new past the deadline: recovery fences */
        else
          fence(p);
        return;
      }
      /* Never reached the processor: safe to go on. */
      not_charged_next(p);
      return;
    default: {
      int64_t delay = backoff_ms(p->status_tries + 1);
      if (error_not_processed(p->last_code)) {
        not_charged_next(p);
      } else if (approval_mismatch(c->decline_code) && proc_type_is(p, "restjson") &&
                 tp_mono_ms() < p->deadline_ms) {
        fence_mismatch(p, c->decline_code);
      } else if (p->status_tries < RESOLVE_TRIES && tp_mono_ms() + delay < p->deadline_ms) {
        p->status_tries++;
        p->resend = query_status;
        timer_after(delay, resend_later, p);
      } else {
        unresolved(p);
      }
      return;
    }
    }
  }
  switch (c->outcome) {
  case TP_OUT_APPROVED:
    final_outcome(p);
    return;
  case TP_OUT_DECLINED:
    if (!tp_decline_is_soft(c->decline_code)) {
      final_outcome(p); /* a hard decline is never retried elsewhere */
      return;
    }
    set_state(&p->att, c);
    next_step(p, false);
    return;
  default:
    break;
  }
  tp_scopy(p->last_code, sizeof p->last_code, c->decline_code[0] ? c->decline_code : "processor_unavailable");
  p->retry_after_ms = c->retry_after_ms; /* kept past the status query below */
  if (p->not_sent ||
      (pr && strcmp(pr->type, "iso8583") == 0 && strcmp(p->last_code, "processor_status_unknown") != 0)) {
    /* Not sent at all, or an ISO link, whose connector reverses a timed-out
     * authorization itself before it reports the error. When the link could
     * not even send the reversal (status unknown), the call may stand: the
     * payment is left to recovery, which reverses it, instead of cascading. */
    set_state(&p->att, c);
    if (!p->not_sent && strcmp(p->last_code, "processor_timeout") == 0) {
      /* The reversal the connector started is owed until the host
       * acknowledges it: committed with this attempt before the cascade
       * goes out, so recovery repeats it (after a restart too), naming
       * the original as the connector's did. */
      snprintf(p->att.state, sizeof p->att.state, "reversal_pending");
      tp_scopy(p->att.orig_data, sizeof p->att.orig_data, p->call.orig_data);
    }
    next_step(p, true);
    return;
  }
  if (approval_mismatch(p->last_code) && proc_type_is(p, "restjson")) {
    /* A definite answer, for something we did not ask: voided at once. A
     * status query would only repeat the outcome, and one that leaves the
     * amount out (allowed) was taken as an approval for the amount asked
     * (review, session 41: 500 held, 1000 recorded, nothing voided). */
    if (tp_mono_ms() < p->deadline_ms)
      fence_mismatch(p, p->last_code);
    else
      unresolved(p);
    return;
  }
  if ((!pr || pr->can_query_status || !tp_procs_count()) && tp_mono_ms() < p->deadline_ms) {
    /* Past the deadline nothing new is sent (tp_payflow_longest_ms): the
     * outcome is left unknown, for recovery to ask. */
    p->status_tries = 0;
    query_status(p);
    return;
  }
  if (error_not_processed(p->last_code)) {
    set_state(&p->att, c);
    next_step(p, true);
    return;
  }
  unresolved(p);
}

static void reversal_answered(struct tp_pay *p);
static bool unlocated_first(const char *id);
static void unlocated_forget(const char *id);

static bool answer_lost(const struct tp_pay *p)
{
  const struct tp_proc_call *c = &p->call;
  if (p->not_sent || c->outcome != TP_OUT_ERROR ||
      (c->kind != TP_PROC_CAPTURE && c->kind != TP_PROC_REFUND && c->kind != TP_PROC_VOID))
    return false;
  if (proc_type_is(p, "iso8583"))
    /* An ISO void is the reversal of the authorization, which the link
     * goes on repeating after it reports the timeout: the host may still
     * release the hold, so the cancel is not "failed" (the chaos test saw
     * a PaymentIntent left requires_capture on a reversed authorization).
     * A lapsed authorization is canceled whatever the answer. (Captures
     * and refunds are reversed instead: owes_reversal.) */
    return c->kind == TP_PROC_VOID && p->outcome != tp_outcome_expire &&
           (strcmp(c->decline_code, "processor_timeout") == 0 ||
            strcmp(c->decline_code, "processor_status_unknown") == 0);
  return proc_type_is(p, "restjson") && !error_not_processed(c->decline_code);
}

/* A key of the card for the breaker's count of soft declines per card
 * (FNV-1a of its digits; in memory only, never written); 0 when unknown. */
static uint64_t card_key(const char *pan)
{
  if (!pan || !*pan)
    return 0;
  uint64_t h = 1469598103934665603ull;
  for (const char *c = pan; *c; c++) {
    h ^= (unsigned char)*c;
    h *= 1099511628211ull;
  }
  return h ? h : 1;
}

static void call_done(struct tp_proc_call *c)
{
  struct tp_pay *p = c->arg;
  int64_t lat = tp_mono_ns() / 1000 - p->sent_us;
  struct tp_proc *pr = NULL;
  conn_of(p->att.processor, &pr);
  if (c->kind != TP_PROC_STATUS && !p->fencing && !p->not_sent && !p->screened) {
    bool soft = c->outcome == TP_OUT_DECLINED && tp_decline_is_soft(c->decline_code);
    bool transient = c->outcome == TP_OUT_ERROR || soft;
    if (pr)
      /* a call without the card (capture, refund, void) is keyed by the
       * authorization it names: one PaymentIntent's repeated captures count
       * once, as one card's repeats do (each counted as a new card) */
      tp_proc_record(pr, p->brand, p->att.currency, c->outcome, c->decline_code, transient, lat,
                     card_key(c->pan[0] ? c->pan : c->orig_ref[0] ? c->orig_ref : c->ref), p->orchestrated);
    /* The bandit learns issuer answers only; a processor's own failures
     * (processing_error, transport) are the breaker's business. */
    if (c->kind == TP_PROC_AUTHORIZE &&
        (c->outcome == TP_OUT_APPROVED ||
         (c->outcome == TP_OUT_DECLINED && strcmp(c->decline_code, "processing_error") != 0)))
      tp_router_learn(p->att.processor, p->brand, p->att.currency, c->outcome == TP_OUT_APPROVED);
  }
  if (p->orchestrated && !p->recovering) {
    orchestrate(p);
    return;
  }
  if (p->recovering && !c->unlocated)
    unlocated_forget(p->att.id); /* (its first 25, if any, no longer counts) */
  if (p->recovering && strcmp(p->att.state, "reversal_pending") == 0) {
    reversal_answered(p);
    return;
  }
  if (!p->recovering && answer_lost(p)) {
    /* A capture, refund or void through a REST processor whose answer was
     * lost may have moved the money: not a failure. Left "sent" for
     * recovery's status query, which records what the processor did and
     * stores the reply for the client's retry. (An ISO link reverses such
     * a call instead: owes_reversal.) */
    tp_scopy(p->last_code, sizeof p->last_code, c->decline_code);
    unresolved(p);
    return;
  }
  if (p->recovering && p->fencing)
    fenced(p); /* voided: "not found" below; else an error: asked again next tick */
  else if (p->recovering && c->kind == TP_PROC_STATUS && needs_fence(p) &&
           (c->outcome == TP_OUT_NOT_FOUND ||
            (c->outcome == TP_OUT_ERROR && approval_mismatch(c->decline_code) &&
             strcmp(p->att.kind, "authorize") == 0))) {
    if (c->outcome == TP_OUT_ERROR)
      fence_mismatch(p, c->decline_code);
    else
      fence(p);
    return;
  }
  if (p->recovering && c->kind == TP_PROC_STATUS && c->outcome == TP_OUT_APPROVED && !c->amount_checked &&
      approval_mismatch(p->att.result_code) && proc_type_is(p, "restjson")) {
    /* The call was answered for another amount or currency; a status
     * answer that leaves the amount out does not undo that. An
     * authorization is voided (the fence); a capture or refund stays for
     * an operator (docs/processors.md). */
    if (strcmp(p->att.kind, "authorize") == 0) {
      fence(p);
      return;
    }
    tp_scopy(c->decline_code, sizeof c->decline_code, p->att.result_code);
    c->outcome = TP_OUT_ERROR;
  }
  if (p->recovering && c->kind == TP_PROC_STATUS && c->outcome == TP_OUT_NOT_FOUND && c->unlocated &&
      unlocated_first(p->att.id)) {
    /* An ISO host's first 25: asked again at the next tick */
    tp_scopy(c->decline_code, sizeof c->decline_code, "processor_reversal_unlocated");
    c->outcome = TP_OUT_ERROR;
  }
  if (p->recovering && c->outcome == TP_OUT_ERROR) {
    /* Still unknown: the attempt stays "sent" for the next tick. */
    tp_log(TP_LOG_WARN, "recovery_unresolved", "{s:s, s:s, s:s}", "attempt", p->att.id, "processor",
           p->att.processor, "error", c->decline_code);
    inflight_del(p->att.id);
    tp_pay_free(p);
    return;
  }
  final_outcome(p);
}

/* Order the processors for an authorization; 0 when none can take it. */
static size_t route_payment(struct tp_pay *p)
{
  const json_t *card = json_object_get(p->pm, "card");
  tp_scopy(p->brand, sizeof p->brand, json_string_value(json_object_get(card, "brand")) ?: "");
  tp_scopy(p->country, sizeof p->country, json_string_value(json_object_get(card, "country")) ?: "");
  struct tp_route_cand c[TP_ROUTE_CANDIDATES];
  size_t nc = 0;
  const char *cur = p->att.currency;
  for (size_t i = 0; i < tp_procs_count() && nc < TP_ROUTE_CANDIDATES; i++) {
    struct tp_proc *pr = tp_proc_at(i);
    c[nc].name = pr->name;
    c[nc].supports = tp_proc_supports(pr, p->brand, cur);
    c[nc].open = tp_proc_breaker(pr) == TP_BREAKER_OPEN;
    p->route_breaker_open = p->route_breaker_open || (c[nc].supports && c[nc].open);
    c[nc].fee = tp_proc_fee(pr, cur, p->att.amount);
    c[nc].p50_us = tp_proc_latency_us(pr, 50);
    c[nc].weight = pr->weight;
    c[nc].priority = pr->priority;
    nc++;
  }
  if (nc == 0 && tp_default_connector) {
    struct tp_route_cand d = {tp_default_connector->name, true, false, 0, 0, 1, 0};
    c[nc++] = d;
  }
  struct tp_route_pay pay = {p->att.payment_intent, p->m.id, cur, p->brand, p->country, p->att.amount,
                             p->pi ? json_object_get(p->pi, "metadata") : NULL};
  size_t n = tp_router_route(&pay, c, nc, &p->route);
  for (size_t i = 0; i < n; i++)
    tp_scopy(p->route_names[i], sizeof p->route_names[i], c[p->route.e[i].cand].name);
  return n;
}

/* Refuse a payment nothing was committed or sent for. A browser back from
 * the 3-D Secure page (p->redirect_body) gets a page, not the API's JSON:
 * with the error's status, the PaymentIntent as it was (requires_action),
 * and the challenge still open to be tried again. */
static void refuse(struct tp_pay *p, enum tp_err e)
{
  if (!p->r)
    return;
  if (!p->redirect_body) {
    tp_reply_error(p->r, e, NULL, NULL);
    return;
  }
  browser_page(p, e, e == TP_ERR_NO_PROCESSOR_ROUTE
                        ? "This payment cannot be taken with this card here. Nothing was charged."
                        : "The payment could not be made just now. Nothing was charged. "
                          "Go back and try again in a moment.");
}

void tp_pay_run(struct tp_pay *p, struct tp_cs *cs)
{
  if (p->call.kind == TP_PROC_AUTHORIZE && strcmp(p->att.kind, "authorize") == 0) {
    if (route_payment(p) == 0) {
      /* Nothing was committed or sent: the request fails like a validation
       * error and the PaymentIntent stays as it was. */
      tp_cs_free(cs);
      tp_metric_inc("turnpike_payments_unroutable_total", NULL, 1);
      /* Only an open breaker passes: a retry may find it closed (503,
       * which SDKs retry). No processor taking this brand or currency, or
       * a rule allowing none, will not change: 400, as Stripe refuses a
       * currency the account cannot take (SDKs retried it: review,
       * session 41). */
      refuse(p, p->route_breaker_open ? TP_ERR_NO_PROCESSOR_AVAILABLE : TP_ERR_NO_PROCESSOR_ROUTE);
      free_then_resume(p, p->r, NULL);
      return;
    }
    p->orchestrated = true;
    p->route_i = 0;
    p->calls = 1;
    p->deadline_ms = tp_mono_ms() + deadline_ms;
    tp_scopy(p->att.processor, sizeof p->att.processor, p->route_names[0]);
    p->tries = 0;
    route_reason(p);
    p->tries = 1;
  }
  iso_reserve(p);
  tp_cs_attempt(cs, &p->att);
  if (p->att.client_idem_key[0])
    tp_cs_idem(cs, p->m.id, p->att.client_idem_key, p->att.client_req_hash, p->r ? p->r->request_id : NULL, 0,
               NULL);
  tp_cs_on_done(cs, writeahead_done, p);
  inflight_add(p->att.id);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    inflight_del(p->att.id);
    if (p->lock_id[0])
      tp_lock_release(p->lock_id);
    p->lock_id[0] = '\0';
    refuse(p, TP_ERR_OVERLOADED);
    free_then_resume(p, p->r, NULL);
  }
}

/* ---- objects ------------------------------------------------------------- */
/* [balance] available_after_seconds: how long a balance transaction stays
 * pending (Stripe: 2 days for US card payments); tp_balance_sweep then
 * makes it available. */
static int64_t available_after_s = 2 * 86400;

int64_t tp_balance_available_after(void)
{
  return available_after_s;
}

/* A capture of the bypass-pending test card's charge (turnpike.available_at_once). */
static bool at_once(const json_t *ch)
{
  return json_is_true(json_object_get(json_object_get(ch, "turnpike"), "available_at_once"));
}

static void ledger_post(struct tp_cs *cs, const struct tp_posting *po, bool available, char txn[TP_ID_MAX],
                        json_t **obj_out)
{
  char acct[128];
  tp_id_new(txn, "txn");
  snprintf(acct, sizeof acct, "processor:%s:receivable", po->processor);
  /* Capture: the processor owes us, the merchant's pending balance grows
   * (its available balance for the bypass-pending test card). Refund and
   * dispute withdrawal: the reverse, out of the available balance at once
   * (Stripe: "refunds use your available balance", which may go negative);
   * what comes back (a failed refund, a dispute won) is available at once
   * too. A fee (a dispute's) is kept by the processor: both sides move by
   * the net. Debits positive, credits negative. */
  int64_t net = po->amount - po->fee;
  tp_cs_ledger(cs, txn, po->merchant, acct, po->currency, net);
  tp_cs_ledger(cs, txn, po->merchant, available ? "merchant:available" : "merchant:pending", po->currency, -net);
  /* The balance transaction, written directly (a flat object, one per
   * capture and refund: no tree needed). */
  int64_t now = tp_now();
  struct tp_jbuf b = {0};
  TP_JBUF_STR(&b, "{\"id\":", txn);
  TP_JBUF_INT(&b, ",\"object\":\"balance_transaction\",\"amount\":", po->amount);
  TP_JBUF_INT(&b, ",\"available_on\":", available ? now : now + available_after_s);
  TP_JBUF_LIT(&b, ",\"balance_type\":\"payments\"");
  TP_JBUF_INT(&b, ",\"created\":", now);
  TP_JBUF_STR(&b, ",\"currency\":", po->currency);
  if (po->description)
    TP_JBUF_STR(&b, ",\"description\":", po->description);
  else
    TP_JBUF_LIT(&b, ",\"description\":null");
  TP_JBUF_INT(&b, ",\"exchange_rate\":null,\"fee\":", po->fee);
  if (po->fee) {
    TP_JBUF_INT(&b, ",\"fee_details\":[{\"amount\":", po->fee);
    TP_JBUF_STR(&b, ",\"application\":null,\"currency\":", po->currency);
    TP_JBUF_STR(&b, ",\"description\":", po->fee_description ? po->fee_description : "Processor fee");
    TP_JBUF_LIT(&b, ",\"type\":\"stripe_fee\"}]");
  } else {
    TP_JBUF_LIT(&b, ",\"fee_details\":[]");
  }
  TP_JBUF_INT(&b, ",\"net\":", net);
  /* Stripe reports a dispute's adjustments under "dispute". */
  /* Stripe's categories split adjustments: a chargeback's withdrawal is a
   * dispute, its reinstatement (a won dispute) a dispute_reversal. */
  TP_JBUF_STR(&b, ",\"reporting_category\":",
              strcmp(po->type, "adjustment") != 0 ? po->type : po->amount > 0 ? "dispute_reversal" : "dispute");
  TP_JBUF_STR(&b, ",\"source\":", po->source);
  TP_JBUF_STR(&b, ",\"status\":", available ? "available" : "pending");
  TP_JBUF_STR(&b, ",\"type\":", po->type);
  TP_JBUF_LIT(&b, "}");
  size_t len = 0;
  char *bt = tp_jbuf_finish(&b, &len);
  if (!bt)
    abort();
  if (obj_out) {
    json_decref(*obj_out);
    *obj_out = json_loadb(bt, len, 0, NULL);
  }
  tp_cs_put_row(cs, TP_K_BALANCE_TXN, po->merchant, txn, now, po->source, po->type, bt, len);
}

void tp_ledger_post(struct tp_cs *cs, const struct tp_posting *po, char txn[TP_ID_MAX], json_t **obj_out)
{
  /* Only a charge's funds wait ([balance] available_after_seconds); refunds,
   * their failures and dispute adjustments move the available balance. */
  ledger_post(cs, po, strcmp(po->type, "charge") != 0, txn, obj_out);
}

/* A capture's posting: the charge's amount to the merchant's pending
 * balance (available at once for the bypass-pending test card). */
static void charge_post(struct tp_cs *cs, struct tp_pay *p, const json_t *ch, const char *cur, int64_t amount,
                        char txn[TP_ID_MAX])
{
  /* Stripe's balance transaction of a charge is described as the charge. */
  const struct tp_posting po = {.merchant = p->m.id, .processor = p->att.processor, .currency = cur,
                                .amount = amount, .source = json_string_value(json_object_get(ch, "id")),
                                .type = "charge", .description = json_string_value(json_object_get(ch, "description"))};
  ledger_post(cs, &po, at_once(ch), txn, wants_txn(p) ? &p->txn : NULL);
}

json_t *tp_charge_new(const struct tp_pay *p, bool approved)
{
  char id[TP_ID_MAX];
  tp_id_new(id, "ch");
  const json_t *pi = p->pi;
  const json_t *card = json_object_get(p->pm, "card");
  /* The issuer checks what it was given: the CVC, and the billing
   * address's line1 and postal code (by test card: connectors/sandbox.c).
   * amount_authorized and authorization_code are filled in below when the
   * processor approves. */
  const json_t *addr = json_object_get(json_object_get(p->pm, "billing_details"), "address");
  const char *avs_line1, *avs_zip;
  tp_test_card_avs(p->call.pan, &avs_line1, &avs_zip);
  /* Stripe's cvc_check: null when no CVC was given, else the issuer's
   * verdict (a CVC given with a card saved earlier is checked too; after
   * a 3-D Secure challenge the CVC itself is gone, but the PaymentMethod
   * says one came, and no_cvc was set from it). */
  const char *cvc_check = strcmp(p->call.decline_code, "incorrect_cvc") == 0 ? "fail"
                          : !p->call.no_cvc                                 ? "pass"
                                                                              : NULL;
  json_t *pmd_card = tp_pack("{s:n, s:n, s:O, s:{s:s?, s:s?, s:s?}, s:O, s:n, s:O, s:O, s:O, s:O, s:n, s:O, s:n, "
                             "s:O, s:n, s:n, s:n, s:n, s:n}",
                             "amount_authorized", "authorization_code", "brand", json_object_get(card, "brand"),
                             "checks", "address_line1_check",
                             json_string_length(json_object_get(addr, "line1")) ? avs_line1 : NULL,
                             "address_postal_code_check",
                             json_string_length(json_object_get(addr, "postal_code")) ? avs_zip : NULL, "cvc_check",
                             cvc_check, "country",
                             json_object_get(card, "country"), "electronic_commerce_indicator", "exp_month",
                             json_object_get(card, "exp_month"), "exp_year", json_object_get(card, "exp_year"),
                             "fingerprint", json_object_get(card, "fingerprint"), "funding",
                             json_object_get(card, "funding"), "installments", "last4", json_object_get(card, "last4"),
                             "mandate", "network", json_object_get(card, "brand"), "network_transaction_id",
                             "regulated_status", "three_d_secure", "transaction_link_id", "wallet");
  if (!pmd_card)
    abort();
  /* The request_* features, only when the PaymentIntent asked for them
   * (to keep every charge small): no connector here offers one. */
  const json_t *pmo_card = json_object_get(json_object_get(pi, "payment_method_options"), "card");
  static const char *const features[][2] = {{"request_extended_authorization", "extended_authorization"},
                                            {"request_incremental_authorization", "incremental_authorization"},
                                            {"request_multicapture", "multicapture"},
                                            {"request_overcapture", "overcapture"}};
  for (size_t i = 0; i < sizeof features / sizeof features[0]; i++)
    if (json_object_get(pmo_card, features[i][0]))
      json_object_set_new(pmd_card, features[i][1],
                          tp_pack("{s:s}", "status", i == 0 ? "disabled" : "unavailable"));
  if (p->three_ds_done) {
    /* The electronic commerce indicator of a fully authenticated payment:
     * 02 on Mastercard's scale, 05 on the others'. */
    const char *eci = strcmp(json_string_value(json_object_get(card, "brand")) ?: "", "mastercard") == 0 ? "02" : "05";
    json_object_set_new(pmd_card, "electronic_commerce_indicator", json_string(eci));
    /* transaction_id: the 3-D Secure server's id of the authentication
     * (a UUID in EMV 3DS), one per charge: it was null */
    char tx[37];
    tp_uuid4(tx);
    json_object_set_new(pmd_card, "three_d_secure",
                        tp_pack("{s:s, s:s, s:n, s:s, s:n, s:s, s:s}", "authentication_flow", "challenge",
                                "electronic_commerce_indicator", eci, "exemption_indicator", "result",
                                "authenticated", "result_reason", "transaction_id", tx, "version", "2.2.0"));
  }
  /* Every key the API version's Charge always has (clients index them
   * unconditionally: tests/integration/test_object_shapes.py), null where
   * Turnpike has no such feature (Connect, Radar reviews, hosted receipts,
   * Sources); what the PaymentIntent carries over is copied from it. */
  json_t *ch = tp_pack("{s:s, s:s, s:O, s:I, s:I, s:n, s:n, s:n, s:n, s:O?, s:b, s:I, s:O, s:O, s:O, s:b, s:n, "
                       "s:n, s:n, s:{}, s:b, s:O, s:n, s:n, s:b, s:O, s:O, s:{s:o, s:s}, s:O, s:n, s:n, s:b, s:n, "
                       "s:O?, s:n, s:n, s:O?, s:O?, s:s, s:n, s:O?, s:{s:s, s:s}}",
                       "id", id, "object", "charge", "amount", json_object_get(pi, "amount"), "amount_captured",
                       (json_int_t)0, "amount_refunded", (json_int_t)0, "application", "application_fee",
                       "application_fee_amount", "balance_transaction", "billing_details",
                       json_object_get(p->pm, "billing_details"), "captured", 0, "created", (json_int_t)tp_now(),
                       "currency", json_object_get(pi, "currency"), "customer", json_object_get(pi, "customer"),
                       "description", json_object_get(pi, "description"), "disputed", 0,
                       "failure_balance_transaction", "failure_code", "failure_message", "fraud_details",
                       "livemode", 0, "metadata", json_object_get(pi, "metadata"), "on_behalf_of", "outcome",
                       "paid", approved, "payment_intent", json_object_get(pi, "id"), "payment_method",
                       json_object_get(p->pm, "id"), "payment_method_details", "card", pmd_card, "type", "card",
                       "receipt_email", json_object_get(pi, "receipt_email"), "receipt_number", "receipt_url",
                       "refunded", 0, "review", "shipping", json_object_get(pi, "shipping"), "source",
                       "source_transfer", "statement_descriptor", json_object_get(pi, "statement_descriptor"),
                       "statement_descriptor_suffix", json_object_get(pi, "statement_descriptor_suffix"), "status",
                       approved ? "succeeded" : "failed", "transfer_data", "transfer_group",
                       json_object_get(pi, "transfer_group"), "turnpike", "processor", p->att.processor, "attempt",
                       p->att.id);
  if (!ch)
    abort();
  /* A test card whose cardholder disputes the payment: opened at capture
   * (tp_dispute_open), when the card is no longer at hand. */
  const char *dispute = tp_test_card_dispute(p->call.pan);
  if (approved && *dispute)
    json_object_set_new(json_object_get(ch, "turnpike"), "dispute", json_string(dispute));
  if (approved && tp_test_card_refund_fails(p->call.pan))
    json_object_set_new(json_object_get(ch, "turnpike"), "refunds_fail", json_true());
  if (approved && tp_test_card_bypass_pending(p->call.pan))
    json_object_set_new(json_object_get(ch, "turnpike"), "available_at_once", json_true());
  if (approved && p->call.orig_data[0]) /* field 90 of its void (ISO 8583) */
    json_object_set_new(json_object_get(ch, "turnpike"), "iso_original", json_string(p->call.orig_data));
  if (approved) {
    json_object_set_new(ch, "authorization_code", json_string(p->call.auth_code));
    json_object_set(pmd_card, "amount_authorized", json_object_get(pi, "amount"));
    json_object_set(pmd_card, "authorization_code", json_object_get(ch, "authorization_code"));
  }
  /* A customer's card (the legacy Cards API) is the charge's source, as
   * Stripe shows it; so is the card of a token a Charges API charge was
   * made with (source=tok_..., which became the PaymentMethod). */
  if (tp_is_card_source(p->pm, NULL) || (p->reply_charge && p->pm_made_here)) {
    /* with what this charge's checks found (ActiveMerchant reads its AVS
     * and CVC results there), not the card's "unchecked" from before */
    json_t *src = tp_card_view(p->pm);
    const json_t *checks = json_object_get(pmd_card, "checks");
    static const char *const map[][2] = {{"cvc_check", "cvc_check"},
                                         {"address_line1_check", "address_line1_check"},
                                         {"address_zip_check", "address_postal_code_check"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
      const json_t *v = json_object_get(checks, map[i][1]);
      if (json_is_string(v))
        json_object_set(src, map[i][0], (json_t *)(uintptr_t)v);
    }
    json_object_set_new(ch, "source", src);
  }
  tp_charge_set_descriptor(ch, pi, p->m.name);
  return ch;
}

void tp_charge_set_descriptor(json_t *ch, const json_t *from, const char *merchant_name)
{
  char desc[TP_DESCRIPTOR_MAX + 1];
  tp_calculated_descriptor(desc, json_string_value(json_object_get(from, "statement_descriptor")),
                           json_string_value(json_object_get(from, "statement_descriptor_suffix")), merchant_name);
  json_object_set_new(ch, "calculated_statement_descriptor", desc[0] ? json_string(desc) : json_null());
}


/* The charge's outcome. Risk comes from the test card (there is no fraud
 * scoring yet, docs/architecture.md §11): a card of the highest risk is
 * shown blocked, as Stripe's default rules block it. No connector reports
 * the network's own advice or decline codes. */
static json_t *outcome_obj(bool approved, const char *decline, const char *pan)
{
  int score;
  const char *risk = tp_test_card_risk(pan, &score);
  if (approved)
    return tp_pack("{s:n, s:n, s:n, s:s, s:n, s:s, s:i, s:s, s:s}", "advice_code", "network_advice_code",
                   "network_decline_code", "network_status", "approved_by_network", "reason", "risk_level", risk,
                   "risk_score", score, "seller_message", "Payment complete.", "type", "authorized");
  if (strcmp(risk, "highest") == 0 && strcmp(decline, "fraudulent") == 0)
    return tp_pack("{s:n, s:n, s:n, s:s, s:s, s:s, s:i, s:s, s:s}", "advice_code", /* an issuer's, not screening's */
                   "network_advice_code", "network_decline_code", "network_status", "not_sent_to_network",
                   "reason", "highest_risk_level", "risk_level", risk, "risk_score", score, "seller_message",
                   "Turnpike blocked this payment as too risky.", "type", "blocked");
  /* Stripe's wording: only a generic decline comes without a reason. */
  char seller[128];
  if (strcmp(decline, "generic_decline") == 0)
    tp_scopy(seller, sizeof seller, "The bank did not return any further details with this decline.");
  else
    snprintf(seller, sizeof seller, "The bank returned the decline code `%.64s`.", decline);
  return tp_pack("{s:n, s:n, s:n, s:s, s:s, s:s, s:i, s:s, s:s}", "advice_code", "network_advice_code",
                 "network_decline_code", "network_status", "declined_by_network", "reason", decline, "risk_level",
                 risk, "risk_score", score, "seller_message", seller, "type", "issuer_declined");
}

const char *tp_pi_card_option(const json_t *pi, const char *field)
{
  const json_t *card = json_object_get(json_object_get(pi, "payment_method_options"), "card");
  const char *v = json_string_value(json_object_get(card, field));
  return v ? v : json_string_value(json_object_get(pi, field));
}

/* setup_future_usage with a customer: once the card is authorized it is
 * saved to that customer (Stripe attaches the PaymentMethod on a successful
 * confirmation), unless it belongs to a customer already. */
static bool set_up_by_authentication(const json_t *pm)
{
  return json_is_true(json_object_get(json_object_get(pm, "turnpike"), "off_session_authenticated"));
}

/* A payment authenticated by 3-D Secure that sets the card up for future
 * use also records that on the PaymentMethod (turnpike.
 * off_session_authenticated): the issuer of a card that asks only until it
 * is set up (Stripe's 4000002500003155) then takes off-session payments
 * without a challenge. */
/* A PaymentMethod that paid without being attached to a customer (nor
 * saved by this payment) is spent, as on Stripe: it may not pay again nor be
 * attached afterwards (tp_pm_usable: payment_method_consumed). Read afresh
 * under its lock, like save_for_future_use, so an attach committed during
 * the processor call is not overwritten. */
static void consume_unattached(struct tp_pay *p, struct tp_cs *cs)
{
  const char *pm_id = json_string_value(json_object_get(p->pm, "id"));
  /* One made by this very confirmation is not written again for it: its id
   * was never handed out before (a cost of a row per payment otherwise). */
  /* Nor one paid with setup_future_usage and no customer: Stripe lets it
   * be attached to one afterwards. */
  const char *sfu = tp_pi_card_option(p->pi, "setup_future_usage");
  if (!pm_id || p->pm_made_here || json_is_string(json_object_get(p->pm, "customer")) ||
      tp_is_card_source(p->pm, NULL) || (sfu && strcmp(sfu, "none") != 0))
    return;
  if (!p->pm_lock_id[0]) {
    if (!tp_lock_try(pm_id))
      return; /* another request has it now: left usable */
    tp_scopy(p->pm_lock_id, sizeof p->pm_lock_id, pm_id);
  }
  /* Afresh under the lock (save_for_future_use may have held it and left
   * p->pm as read before the call, when an attach had won meanwhile). */
  json_t *fresh = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, p->m.id, pm_id);
  if (!fresh)
    return;
  json_decref(p->pm);
  p->pm = fresh;
  if (json_is_string(json_object_get(p->pm, "customer")) ||
      json_is_true(json_object_get(json_object_get(p->pm, "turnpike"), "detached")))
    return;
  tp_mark(p->pm, "detached", json_true());
  tp_cs_put(cs, TP_K_PAYMENT_METHOD, p->m.id, p->pm);
}

static void save_for_future_use(struct tp_pay *p, struct tp_cs *cs)
{
  const char *sfu = tp_pi_card_option(p->pi, "setup_future_usage");
  if (sfu && strcmp(sfu, "none") == 0)
    sfu = NULL; /* the card's own "none" overrides the top level */
  const char *cus = json_string_value(json_object_get(p->pi, "customer"));
  /* (set up for off-session payments only by setup_future_usage
   * off_session; on_session saves the card, no more) */
  bool mark = p->three_ds_done && sfu && strcmp(sfu, "off_session") == 0 && !set_up_by_authentication(p->pm);
  /* With no customer there is nothing to attach to, but a card that passed
   * its challenge is set up all the same (Stripe lets it be attached later,
   * then paid off-session without asking, as a SetupIntent's is). */
  if (!sfu || (!cus && !mark) || !json_is_object(p->pm) ||
      (json_is_string(json_object_get(p->pm, "customer")) && !mark))
    return;
  /* As attach, detach and update do: take the PaymentMethod's lock, then
   * read it afresh. p->pm was read before the processor call, and an attach
   * committed since then must not be overwritten. The lock is held until
   * this outcome is committed (released with p). A PaymentMethod another
   * request holds right now is not saved; the payment itself goes on. */
  const char *pm_id = json_string_value(json_object_get(p->pm, "id"));
  bool held = pm_id && strcmp(p->pm_lock_id, pm_id) == 0; /* taken at confirm (tp_pay.pm_lock_id) */
  if (!pm_id || (!held && !tp_lock_try(pm_id))) {
    tp_log(TP_LOG_WARN, "payment_method_not_saved", "{s:s?, s:s}", "payment_method", pm_id, "reason", "locked");
    return;
  }
  tp_scopy(p->pm_lock_id, sizeof p->pm_lock_id, pm_id);
  json_t *fresh = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, p->m.id, pm_id);
  if (fresh) {
    const char *owner = json_string_value(json_object_get(fresh, "customer"));
    if (owner && (!mark || !cus || strcmp(owner, cus) != 0)) {
      json_decref(fresh);
      return; /* attached meanwhile: stays where it is */
    }
    json_decref(p->pm);
    p->pm = fresh;
  }
  /* Marking alone is Turnpike's own bookkeeping: no Stripe event. */
  if (mark)
    tp_mark(p->pm, "off_session_authenticated", json_true());
  /* Not to a customer deleted meanwhile, nor a card detached meanwhile
   * (detaching is for good). The customer is read under its lock, which a
   * deletion holds until it has detached its cards: without it a deletion
   * at the same moment left this card on a deleted customer. */
  bool attach = cus && !json_is_string(json_object_get(p->pm, "customer")) &&
                !json_is_true(json_object_get(json_object_get(p->pm, "turnpike"), "detached"));
  /* Held by another request (another payment of the customer finishing,
   * an update): read without it, as before, rather than not save the card
   * the customer asked to keep (that left most cards unsaved under load). */
  if (attach && !p->cus_lock_id[0] && strlen(cus) < sizeof p->cus_lock_id && tp_lock_try(cus))
    tp_scopy(p->cus_lock_id, sizeof p->cus_lock_id, cus);
  attach = attach && tp_store_live(&tp_app.store, TP_K_CUSTOMER, p->m.id, cus) == 1;
  if (attach)
    json_object_set_new(p->pm, "customer", json_string(cus));
  if (!attach && !mark)
    return;
  tp_cs_put(cs, TP_K_PAYMENT_METHOD, p->m.id, p->pm);
  if (attach)
    tp_emit(cs, p->r, p->m.id, "payment_method.attached", p->pm);
}

/* The card field an issuer's decline is about, as Stripe names it in the
 * error's param (a wrong CVC: "cvc"), or NULL. */
const char *tp_decline_param(const char *code)
{
  static const char *const params[][2] = {
    {"incorrect_cvc", "cvc"}, {"invalid_cvc", "cvc"}, {"expired_card", "exp_month"},
    {"incorrect_number", "number"}, {"invalid_number", "number"}, {"invalid_expiry_month", "exp_month"},
    {"invalid_expiry_year", "exp_year"},
  };
  for (size_t i = 0; code && i < sizeof params / sizeof params[0]; i++)
    if (strcmp(code, params[i][0]) == 0)
      return params[i][1];
  return NULL;
}

json_t *tp_charge_declined_unsent(const struct tp_merchant *m, const json_t *pi, const json_t *pm, const char *pan,
                                  const char *decline, bool reply_charge, bool pm_made_here)
{
  struct tp_pay *p = calloc(1, sizeof *p);
  if (!p)
    abort();
  p->m = *m;
  p->reply_charge = reply_charge;
  p->pm_made_here = pm_made_here;
  p->pi = (json_t *)(uintptr_t)pi; /* read only, not freed */
  p->pm = (json_t *)(uintptr_t)pm;
  tp_scopy(p->call.pan, sizeof p->call.pan, pan ? pan : "");
  tp_scopy(p->call.decline_code, sizeof p->call.decline_code, decline);
  p->call.no_cvc = true; /* nothing was checked */
  json_t *ch = tp_charge_new(p, false);
  json_object_set_new(ch, "outcome", outcome_obj(false, decline, p->call.pan));
  /* no processor took it, no attempt was made */
  json_t *turn = json_object_get(ch, "turnpike");
  json_object_del(turn, "processor");
  json_object_del(turn, "attempt");
  tp_card_wipe(p->call.pan, sizeof p->call.pan);
  free(p);
  return ch;
}

static bool async_capture(const json_t *pi)
{
  const char *cm = tp_pi_card_option(pi, "capture_method");
  return cm && strcmp(cm, "automatic_async") == 0;
}

void tp_outcome_authorize(struct tp_pay *p, struct tp_cs *cs)
{
  const struct tp_proc_call *c = &p->call;
  json_t *pi = p->pi;
  const char *merchant = p->m.id;
  bool approved = c->outcome == TP_OUT_APPROVED;
  json_t *ch = tp_charge_new(p, approved);
  json_object_set_new(ch, "outcome",
                      outcome_obj(approved, c->decline_code[0] ? c->decline_code : "generic_decline", c->pan));
  json_object_set(pi, "latest_charge", json_object_get(ch, "id"));
  json_object_set_new(pi, "next_action", json_null());
  if (approved) {
    int64_t amount = json_integer_value(json_object_get(pi, "amount"));
    const char *cur = json_string_value(json_object_get(pi, "currency"));
    char txn[TP_ID_MAX] = "";
    if (p->att.capture) {
      charge_post(cs, p, ch, cur, amount, txn);
      json_object_set_new(ch, "balance_transaction", json_string(txn));
      /* capture_method automatic_async (Stripe): the balance transaction
       * is not promised with charge.succeeded but announced by a
       * charge.updated after the payment; integrations wait for it. */
      if (async_capture(pi))
        json_object_set_new(ch, "balance_transaction", json_null());
      json_object_set_new(ch, "captured", json_true());
      json_object_set_new(ch, "amount_captured", json_integer(amount));
      json_object_set_new(pi, "status", json_string("succeeded"));
      json_object_set_new(pi, "amount_received", json_integer(amount));
      json_object_set_new(pi, "amount_capturable", json_integer(0));
    } else {
      json_object_set_new(pi, "status", json_string("requires_capture"));
      json_object_set_new(pi, "amount_capturable", json_integer(amount));
      /* Stripe: when an uncaptured authorization lapses (tp_pi_expire). */
      json_object_set_new(json_object_get(json_object_get(ch, "payment_method_details"), "card"), "capture_before",
                          json_integer(tp_now() + tp_authorization_ttl()));
    }
    json_object_set_new(pi, "last_payment_error", json_null());
    save_for_future_use(p, cs);
    consume_unattached(p, cs);
    char *text = NULL;
    tp_put_emit_text(cs, p->r, merchant, TP_K_CHARGE, "charge.succeeded", ch, p->reply_charge ? &text : NULL);
    tp_put_emit_text(cs, p->r, merchant, TP_K_PAYMENT_INTENT,
                     p->att.capture ? "payment_intent.succeeded" : "payment_intent.amount_capturable_updated", pi,
                     p->reply_charge ? NULL : &text);
    if (p->att.capture && async_capture(pi)) {
      json_t *before = json_deep_copy(ch);
      json_object_set_new(ch, "balance_transaction", json_string(txn));
      tp_cs_put(cs, TP_K_CHARGE, merchant, ch);
      tp_emit_update(cs, p->r, merchant, "charge.updated", before, ch);
      json_decref(before);
    }
    if (p->att.capture) /* a dispute (test card) comes after the payment, as on Stripe */
      tp_dispute_open(cs, merchant, ch);
    p->charge = ch;
    tp_pay_reply_text(p, 200, json_incref(p->reply_charge ? ch : pi), text);
    return;
  }
  /* Declined or failed: the charge is recorded as failed and the
   * PaymentIntent goes back to requires_payment_method. */
  const char *dc = c->decline_code[0] ? c->decline_code : "processing_error";
  const struct tp_error_info *ei = tp_error_by_decline_code(dc);
  if (!ei)
    ei = tp_error_by_decline_code("generic_decline");
  json_t *err = tp_error_object((enum tp_err)ei->number, tp_decline_param(ei->code), NULL);
  json_object_set(ch, "failure_code", json_object_get(err, "code"));
  json_object_set(ch, "failure_message", json_object_get(err, "message"));
  json_object_set(err, "charge", json_object_get(ch, "id"));
  json_object_set(err, "payment_method", p->pm);
  json_object_set(pi, "last_payment_error", err);
  json_object_set_new(pi, "status", json_string("requires_payment_method"));
  json_object_set_new(pi, "payment_method", json_null());
  json_object_set_new(pi, "amount_capturable", json_integer(0));
  tp_put_emit(cs, p->r, merchant, TP_K_CHARGE, "charge.failed", ch);
  tp_put_emit(cs, p->r, merchant, TP_K_PAYMENT_INTENT, "payment_intent.payment_failed", pi);
  p->charge = ch;
  json_t *body_err = json_deep_copy(err);
  if (p->reply_charge) /* the Charges API's error names the charge alone */
    json_object_del(body_err, "payment_method");
  else
    json_object_set(body_err, "payment_intent", pi);
  json_decref(err);
  tp_pay_reply(p, (unsigned)ei->http_status, tp_pack("{s:o}", "error", body_err));
}

/* Part or all of an authorization is given back uncaptured. Since API
 * 2025-03-31.basil Stripe makes no Refund of it and leaves the charge's
 * amount_refunded and refunded alone (the money never moved): it is only
 * remembered, as turnpike.uncaptured. (Charges released before session 28
 * have a Refund and turnpike.released, counted in amount_refunded, which
 * tp_charge_released still takes off.) */
static void release_uncaptured(struct tp_pay *p, int64_t released)
{
  json_t *turn = json_object_get(p->charge, "turnpike");
  if (released > 0 && json_is_object(turn))
    json_object_set_new(turn, "uncaptured", json_integer(released));
}

static void capture_set_key(const struct tp_pay *p, char *out, size_t n)
{
  snprintf(out, n, "capture_set:%s", p->att.id);
}

void tp_capture_set_write(struct tp_pay *p, struct tp_cs *cs, const json_t *set)
{
  char key[96];
  capture_set_key(p, key, sizeof key);
  char *text = json_dumps(set, JSON_COMPACT);
  if (!text)
    return;
  json_t *args = tp_pack("[s, s]", key, text);
  tp_cs_sql(cs, "INSERT INTO meta(key, value) VALUES(?1, ?2)", args, 1);
  json_decref(args);
  free(text);
  p->capture_set = true;
}

/* Recovery: the capture's changes written ahead, onto the objects read back. */
static void capture_set_apply(struct tp_pay *p)
{
  char key[96];
  capture_set_key(p, key, sizeof key);
  json_t *rows = tp_store_query_take(&tp_app.store, "SELECT value FROM meta WHERE key = ?1", tp_pack("[s]", key));
  const char *text = json_string_value(json_object_get(json_array_get(rows, 0), "value"));
  json_t *set = text ? json_loads(text, 0, NULL) : NULL;
  json_decref(rows);
  if (!set)
    return;
  p->capture_set = true;
  json_t *objs[2] = {p->pi, p->charge};
  const char *names[2] = {"payment_intent", "charge"};
  for (int i = 0; i < 2; i++) {
    json_t *o = json_object_get(set, names[i]);
    if (!json_is_object(o) || !objs[i])
      continue;
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
      if (strcmp(k, "metadata") == 0)
        tp_metadata_apply(objs[i], v); /* a patch, as the request's: what was set since stays */
      else
        json_object_set(objs[i], k, v);
    }
  }
  json_decref(set);
}

static void capture_set_drop(struct tp_pay *p, struct tp_cs *cs)
{
  if (!p->capture_set)
    return;
  char key[96];
  capture_set_key(p, key, sizeof key);
  json_t *args = tp_pack("[s]", key);
  tp_cs_sql(cs, "DELETE FROM meta WHERE key = ?1", args, 0);
  json_decref(args);
}

void tp_outcome_capture(struct tp_pay *p, struct tp_cs *cs)
{
  json_t *pi = p->pi, *ch = p->charge;
  const char *merchant = p->m.id;
  capture_set_drop(p, cs);
  if (p->call.outcome != TP_OUT_APPROVED) {
    /* The authorization stays; the merchant may retry the capture. Stripe's
     * error of a request about a PaymentIntent carries it: as stored (the
     * capture's own changes were not made). */
    json_t *err = tp_error_object(TP_ERR_DECLINE_PROCESSING_ERROR, NULL, NULL);
    json_t *now = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, merchant,
                                    json_string_value(json_object_get(pi, "id")));
    if (now)
      json_object_set_new(err, "payment_intent", now);
    tp_pay_reply(p, 402, tp_pack("{s:o}", "error", err));
    return;
  }
  int64_t amount = p->att.amount;
  const char *cur = json_string_value(json_object_get(pi, "currency"));
  char txn[TP_ID_MAX];
  charge_post(cs, p, ch, cur, amount, txn);
  json_object_set_new(ch, "balance_transaction", json_string(txn));
  json_object_set_new(ch, "captured", json_true());
  json_object_set_new(ch, "amount_captured", json_integer(amount));
  /* A partial capture releases the rest of the authorization. */
  release_uncaptured(p, json_integer_value(json_object_get(ch, "amount")) - amount);
  json_object_set_new(pi, "status", json_string("succeeded"));
  json_object_set_new(pi, "amount_received", json_integer(amount));
  json_object_set_new(pi, "amount_capturable", json_integer(0));
  tp_put_emit(cs, p->r, merchant, TP_K_CHARGE, "charge.captured", ch);
  tp_put_emit(cs, p->r, merchant, TP_K_PAYMENT_INTENT, "payment_intent.succeeded", pi);
  tp_dispute_open(cs, merchant, ch);
  tp_pay_reply(p, 200, json_incref(p->reply_charge ? ch : pi));
}

/* The authorization is released: the charge stays uncaptured (Stripe since
 * 2025-03-31.basil: no Refund, not refunded), announced with charge_event
 * when there is one (charge.expired), and the PaymentIntent is canceled
 * with the reason p->cancellation_reason (none when empty). */
static void release_authorization(struct tp_pay *p, struct tp_cs *cs, const char *charge_event)
{
  json_t *pi = p->pi, *ch = p->charge;
  const char *merchant = p->m.id;
  if (ch) {
    release_uncaptured(p, json_integer_value(json_object_get(ch, "amount")));
    if (charge_event)
      tp_put_emit(cs, p->r, merchant, TP_K_CHARGE, charge_event, ch);
    else
      tp_cs_put(cs, TP_K_CHARGE, merchant, ch);
  }
  json_object_set_new(pi, "status", json_string("canceled"));
  json_object_set_new(pi, "canceled_at", json_integer(tp_now()));
  json_object_set_new(pi, "cancellation_reason",
                      p->cancellation_reason[0] ? json_string(p->cancellation_reason) : json_null());
  json_object_set_new(pi, "amount_capturable", json_integer(0));
  tp_put_emit(cs, p->r, merchant, TP_K_PAYMENT_INTENT, "payment_intent.canceled", pi);
  tp_pay_reply(p, 200, json_incref(pi));
}

void tp_outcome_void(struct tp_pay *p, struct tp_cs *cs)
{
  if (p->call.outcome != TP_OUT_APPROVED) {
    /* The processor kept the hold (a void declined): a processor's answer,
     * not a card's, so no card_error (a cancel never has one on Stripe);
     * the PaymentIntent is unchanged, still requires_capture. */
    json_t *err = tp_error_object(TP_ERR_PROCESSOR_VOID_DECLINED, NULL, NULL);
    json_object_set(err, "payment_intent", p->pi);
    json_object_set_new(err, "processor_code", json_string(p->call.decline_code));
    tp_pay_reply(p, 502, tp_pack("{s:o}", "error", err));
    return;
  }
  release_authorization(p, cs, NULL); /* Stripe: payment_intent.canceled only */
}

int64_t tp_authorization_ttl(void)
{
  static _Atomic int64_t ttl;
  int64_t v = atomic_load(&ttl);
  if (!v) {
    v = tp_config_int("authorizations", "expire_after_seconds", 7 * 86400, 1, 31 * 86400);
    atomic_store(&ttl, v);
  }
  return v;
}

/* An authorization left uncaptured past its capture_before: the void was
 * asked of the processor, but whatever it answered the hold lapses at the
 * issuer, so the PaymentIntent is canceled (reason "expired", set by
 * tp_pi_expire; "automatic" before API 2025-03-31.basil) and the charge
 * expired, as Stripe does. */
void tp_outcome_expire(struct tp_pay *p, struct tp_cs *cs)
{
  if (p->call.outcome != TP_OUT_APPROVED)
    tp_log(TP_LOG_WARN, "authorization_expired_void_failed", "{s:s, s:s, s:s}", "payment_intent",
           json_string_value(json_object_get(p->pi, "id")), "processor", p->att.processor, "error",
           p->call.decline_code);
  release_authorization(p, cs, "charge.expired");
}

/* A refund that succeeded is later returned by the issuer (the card was
 * closed; Stripe's test card 4000000000005126, marked on its charge): the
 * money comes back to the merchant (a balanced ledger transaction, balance
 * transaction type refund_failure), the refund is failed and the charge's
 * amount_refunded goes back down. Stripe does this "some time later"; here
 * it is in the same commit, after the reply that shows it succeeded. */
static void refund_fails(struct tp_pay *p, struct tp_cs *cs, json_t *re, json_t *ch, const char *cur, int64_t amount)
{
  const char *merchant = p->m.id;
  char txn[TP_ID_MAX];
  tp_ledger_post(cs,
                 &(struct tp_posting){.merchant = merchant, .processor = p->att.processor, .currency = cur,
                                      .amount = amount, .source = json_string_value(json_object_get(re, "id")),
                                      .type = "refund_failure", .description = "REFUND FAILURE"},
                 txn, NULL);
  json_t *before = json_deep_copy(re);
  json_object_set_new(re, "status", json_string("failed"));
  json_object_set_new(re, "failure_reason", json_string("expired_or_canceled_card"));
  json_object_set_new(re, "failure_balance_transaction", json_string(txn));
  int64_t refunded = json_integer_value(json_object_get(ch, "amount_refunded")) - amount;
  json_object_set_new(ch, "amount_refunded", json_integer(refunded));
  json_object_set_new(ch, "refunded", json_false());
  /* What happens later at the card network (Stripe: refund.updated for
   * every refund, charge.refund.updated, refund.failed), so made by no
   * request: request.id null. */
  tp_emit_update(cs, NULL, merchant, "refund.updated", before, re);
  tp_emit_update(cs, NULL, merchant, "charge.refund.updated", before, re);
  tp_put_emit(cs, NULL, merchant, TP_K_REFUND, "refund.failed", re);
  tp_cs_put(cs, TP_K_CHARGE, merchant, ch);
  json_decref(before);
}

/* A refund its processor did not make. Stripe announces every refund it
 * creates (refund.created, here as it stood while the processor was
 * asked), then its failure. */
/* Stripe's Refund failure_reason for the issuer's decline of it; unknown
 * when the processor gave none (a timeout, an error). */
static const char *refund_failure_reason(const char *decline)
{
  if (!decline || !*decline)
    return "unknown";
  if (strcmp(decline, "lost_card") == 0 || strcmp(decline, "stolen_card") == 0 ||
      strcmp(decline, "pickup_card") == 0)
    return "lost_or_stolen_card";
  if (strcmp(decline, "expired_card") == 0)
    return "expired_or_canceled_card";
  if (strcmp(decline, "insufficient_funds") == 0)
    return "insufficient_funds";
  return "declined";
}

static void refund_not_made(struct tp_pay *p, struct tp_cs *cs)
{
  json_t *re = p->refund;
  const char *merchant = p->m.id;
  json_t *before = json_deep_copy(re);
  tp_emit(cs, p->r, merchant, "refund.created", before);
  json_object_set_new(re, "status", json_string("failed"));
  json_object_set_new(re, "failure_reason", json_string(p->call.outcome == TP_OUT_DECLINED
                                                            ? refund_failure_reason(p->call.decline_code)
                                                            : "unknown"));
  tp_emit_update(cs, p->r, merchant, "refund.updated", before, re);
  tp_emit_update(cs, p->r, merchant, "charge.refund.updated", before, re);
  tp_put_emit(cs, p->r, merchant, TP_K_REFUND, "refund.failed", re);
  json_decref(before);
  tp_pay_reply(p, 200, json_incref(p->reply_charge ? p->charge : re));
}

/* A refund made for reason fraudulent reports the charge as fraudulent
 * (Stripe: charge.fraud_details.user_report "fraudulent"; the field is the
 * merchant's own assessment, as the charge update's fraud_details sets). */
static void refund_reports_fraud(json_t *ch, const json_t *re)
{
  const char *why = json_string_value(json_object_get(re, "reason"));
  if (!why || strcmp(why, "fraudulent") != 0)
    return;
  json_t *fd = json_object_get(ch, "fraud_details");
  if (!json_is_object(fd)) {
    fd = json_object();
    json_object_set_new(ch, "fraud_details", fd);
  }
  json_object_set_new(fd, "user_report", json_string("fraudulent"));
}

/* The charge stored and its charge.refunded event, with
 * data.previous_attributes as Stripe's has them (amount_refunded and
 * refunded before): a webhook handler takes this refund's amount as the
 * difference, and had none to take. */
static void put_charge_refunded(struct tp_cs *cs, struct tp_pay *p, const json_t *before, const json_t *ch)
{
  tp_cs_put(cs, TP_K_CHARGE, p->m.id, ch);
  json_t *prev = tp_prev_attrs(before, ch); /* as an update's: inside objects, what changed there */
  tp_emit_prev(cs, p->r, p->m.id, "charge.refunded", ch, prev);
  json_decref(prev);
}

/* A refund of an uncaptured charge: its authorization voided (Stripe's
 * older way to release a hold, which ActiveMerchant's void and verify and
 * omnipay still use). The Refund shows the release (no money moved: no
 * balance transaction), the charge is refunded as before API
 * 2025-03-31.basil (amount_refunded, marked turnpike.released so refund
 * limits and balances leave it out), the PaymentIntent canceled. */
void tp_outcome_void_refund(struct tp_pay *p, struct tp_cs *cs)
{
  if (p->call.outcome != TP_OUT_APPROVED) {
    refund_not_made(p, cs); /* the authorization stands */
    return;
  }
  json_t *re = p->refund, *ch = p->charge, *pi = p->pi;
  const char *merchant = p->m.id;
  int64_t amount = p->att.amount;
  json_t *before = json_deep_copy(ch);
  release_uncaptured(p, json_integer_value(json_object_get(ch, "amount")));
  json_t *turn = json_object_get(ch, "turnpike");
  if (json_is_object(turn))
    json_object_set_new(turn, "released", json_integer(tp_charge_released(ch) + amount));
  json_object_set_new(ch, "amount_refunded",
                      json_integer(json_integer_value(json_object_get(ch, "amount_refunded")) + amount));
  json_object_set_new(ch, "refunded", json_true());
  json_object_set_new(re, "status", json_string("succeeded"));
  tp_put_emit(cs, p->r, merchant, TP_K_REFUND, "refund.created", re);
  refund_reports_fraud(ch, re);
  put_charge_refunded(cs, p, before, ch);
  json_decref(before);
  json_object_set_new(pi, "status", json_string("canceled"));
  json_object_set_new(pi, "canceled_at", json_integer(tp_now()));
  json_object_set_new(pi, "cancellation_reason", json_null());
  json_object_set_new(pi, "amount_capturable", json_integer(0));
  tp_put_emit(cs, p->r, merchant, TP_K_PAYMENT_INTENT, "payment_intent.canceled", pi);
  tp_pay_reply(p, 200, json_incref(p->reply_charge ? ch : re));
}

void tp_outcome_refund(struct tp_pay *p, struct tp_cs *cs)
{
  json_t *re = p->refund, *ch = p->charge;
  const char *merchant = p->m.id;
  int64_t amount = p->att.amount;
  if (p->call.outcome != TP_OUT_APPROVED) {
    refund_not_made(p, cs);
    return;
  }
  const char *cur = json_string_value(json_object_get(re, "currency"));
  char txn[TP_ID_MAX];
  /* Stripe's words on a refund's balance transaction (its exports). */
  const char *chd = json_string_value(json_object_get(ch, "description"));
  size_t dl = (chd ? strlen(chd) : 0) + 32;
  char *desc = malloc(dl);
  if (!desc)
    abort();
  if (chd && *chd)
    snprintf(desc, dl, "REFUND FOR CHARGE (%s)", chd);
  else
    snprintf(desc, dl, "REFUND FOR PAYMENT");
  tp_ledger_post(cs,
                 &(struct tp_posting){.merchant = merchant, .processor = p->att.processor, .currency = cur,
                                      .amount = -amount, .source = json_string_value(json_object_get(re, "id")),
                                      .type = "refund", .description = desc},
                 txn, wants_txn(p) ? &p->txn : NULL);
  free(desc);
  json_object_set_new(re, "balance_transaction", json_string(txn));
  json_object_set_new(re, "status", json_string("succeeded"));
  json_t *before = json_deep_copy(ch);
  int64_t refunded = json_integer_value(json_object_get(ch, "amount_refunded")) + amount;
  json_object_set_new(ch, "amount_refunded", json_integer(refunded));
  json_object_set_new(ch, "refunded", json_boolean(refunded - tp_charge_released(ch) >=
                                                  json_integer_value(json_object_get(ch, "amount_captured"))));
  tp_put_emit(cs, p->r, merchant, TP_K_REFUND, "refund.created", re);
  refund_reports_fraud(ch, re);
  put_charge_refunded(cs, p, before, ch);
  json_decref(before);
  if (json_is_true(json_object_get(ch, "refunded")))
    tp_efw_settle(cs, p->r, merchant, ch);
  /* the reply is written out now, as it stands; the Charges API's legacy
   * refund answers the charge */
  tp_pay_reply(p, 200, json_incref(p->reply_charge ? ch : re));
  if (json_is_true(json_object_get(json_object_get(ch, "turnpike"), "refunds_fail")))
    refund_fails(p, cs, re, ch, cur, amount);
}

/* ---- recovery ---------------------------------------------------------------- */
/* Only the attempt row changes (its PaymentIntent moved on without it). */
static void outcome_attempt_only(struct tp_pay *p, struct tp_cs *cs)
{
  (void)cs;
  if (p->call.outcome == TP_OUT_APPROVED) {
    /* Cannot happen while attempts of one payment are strictly sequential;
     * loud if it ever does, for a person to void it. */
    tp_log(TP_LOG_ERROR, "recovery_orphan_approval", "{s:s, s:s, s:s}", "attempt", p->att.id, "processor",
           p->att.processor, "payment_intent", p->att.payment_intent);
    tp_metric_inc("turnpike_recovery_orphan_approvals_total", NULL, 1);
  }
}

/* The call kind of an attempt kind, for a status query about it. */
static enum tp_proc_kind kind_of(const char *kind)
{
  if (strcmp(kind, "capture") == 0)
    return TP_PROC_CAPTURE;
  if (strcmp(kind, "refund") == 0)
    return TP_PROC_REFUND;
  if (strcmp(kind, "void") == 0)
    return TP_PROC_VOID;
  return TP_PROC_AUTHORIZE;
}

/* Take attempt a (as a scan or a request read it) for this thread: no
 * call, recovery or operator of this process is on it, and its committed
 * state is still a's (the scan may have read it just before another
 * thread's outcome for it committed). False when it is not to be touched. */
static bool claim(const struct tp_attempt *a)
{
  if (!inflight_add(a->id))
    return false;
  struct tp_attempt now;
  if (tp_app.store.ops->attempt_get(tp_app.store.cls, a->id, &now) == 1 && strcmp(now.state, a->state) == 0)
    return true;
  inflight_del(a->id);
  return false;
}

/* A pay object for recovery to settle attempt a with, no request behind it. */
static struct tp_pay *attempt_pay(const struct tp_attempt *a)
{
  struct tp_merchant m;
  /* the whole row: its name is a charge's calculated_statement_descriptor
   * (a charge recovery made had null where the live one had the name) */
  if (tp_auth_merchant(&tp_app.store, a->merchant, &m) != 1) {
    memset(&m, 0, sizeof m);
    tp_scopy(m.id, sizeof m.id, a->merchant);
  }
  struct tp_pay *p = tp_pay_new(NULL, &m);
  p->att = *a;
  reply_shape(p, a);
  p->recovering = true;
  p->reply_charge = a->reply_charge != 0; /* the reply stored under the client's key */
  return p;
}

/* A pay object to settle attempt a (left "sent") with the objects its
 * outcome needs (PaymentIntent, charge, PaymentMethod and card, refund),
 * read under the lock the live call held (the PaymentIntent's; a refund's
 * charge's), so that no request changes them before the outcome commits,
 * and its outcome builder. NULL when they are gone, or when the lock is
 * taken (*busy: a request is on the payment now). The caller has claimed a;
 * on NULL the claim is released. */
static struct tp_pay *recovery_pay(const struct tp_attempt *a, bool *busy)
{
  struct tp_pay *p = attempt_pay(a);
  *busy = false;
  const char *lock = a->payment_intent;
  if (strcmp(a->kind, "refund") == 0) {
    p->refund = tp_store_get_json(&tp_app.store, TP_K_REFUND, a->merchant, a->refund);
    lock = json_string_value(json_object_get(p->refund, "charge"));
    if (!lock)
      goto gone;
  }
  if (!tp_lock_try(lock)) {
    *busy = true;
    goto gone;
  }
  tp_scopy(p->lock_id, sizeof p->lock_id, lock);
  p->pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, a->merchant, a->payment_intent);
  if (!p->pi) {
    tp_log(TP_LOG_ERROR, "recovery_missing_pi", "{s:s}", "attempt", a->id);
    goto gone;
  }
  const char *lc = p->refund ? json_string_value(json_object_get(p->refund, "charge"))
                             : json_string_value(json_object_get(p->pi, "latest_charge"));
  if (lc)
    p->charge = tp_store_get_json(&tp_app.store, TP_K_CHARGE, a->merchant, lc);
  if (a->vault_token[0]) {
    p->pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, a->merchant, a->vault_token);
    struct tp_card_info ci;
    if (tp_vault_load(a->merchant, a->vault_token, &ci) == 0) {
      tp_scopy(p->call.pan, sizeof p->call.pan, ci.pan);
      tp_card_wipe(&ci, sizeof ci);
    }
    const json_t *card = json_object_get(p->pm, "card");
    tp_scopy(p->brand, sizeof p->brand, json_string_value(json_object_get(card, "brand")) ?: "");
  }
  if (strcmp(a->kind, "authorize") == 0) {
    const char *st = json_string_value(json_object_get(p->pi, "status"));
    p->outcome = st && strcmp(st, "processing") == 0 ? tp_outcome_authorize : outcome_attempt_only;
  } else if (strcmp(a->kind, "capture") == 0) {
    p->outcome = tp_outcome_capture;
    capture_set_apply(p);
  }
  else if (strcmp(a->kind, "void") == 0) {
    /* A void is a cancel or an expiry (tp_pi_expire): the same outcome as
     * live, with the reason the attempt kept. An attempt from before
     * migration 0023 kept none: the expiry is then the void past the
     * charge's capture_before, and a cancel's reason is lost (null). */
    if (a->refund[0]) {
      /* the release of an uncaptured charge by a refund (refunds.c) */
      p->refund = tp_store_get_json(&tp_app.store, TP_K_REFUND, a->merchant, a->refund);
      if (!p->refund)
        goto gone;
    }
    bool lapsed = strcmp(a->reason, "expired") == 0;
    if (!a->reason[0]) {
      json_int_t due = json_integer_value(json_object_get(
          json_object_get(json_object_get(p->charge, "payment_method_details"), "card"), "capture_before"));
      lapsed = due > 0 && due <= tp_now();
    }
    p->outcome = p->refund ? tp_outcome_void_refund : lapsed ? tp_outcome_expire : tp_outcome_void;
    tp_scopy(p->cancellation_reason, sizeof p->cancellation_reason, lapsed ? "expired" : a->reason);
  } else {
    p->outcome = tp_outcome_refund;
    if (!p->charge)
      goto gone;
  }
  p->call.kind = TP_PROC_STATUS;
  p->call.status_of = kind_of(a->kind);
  /* an ISO link's reversal names the original whole when the link knew it
   * (unresolved kept it) */
  tp_scopy(p->call.orig_data, sizeof p->call.orig_data, a->orig_data);
  if (strcmp(a->kind, "void") == 0 && proc_type_is(p, "iso8583")) {
    /* An ISO void is the reversal of the authorization: asking again is
     * sending it again, which is harmless (a host that reversed it already
     * answers 25, nothing stands, read as voided by the connector). */
    p->call.kind = TP_PROC_VOID;
    tp_call_target(&p->call, p->charge);
  }
  return p;
gone:
  inflight_del(a->id);
  tp_pay_free(p);
  return NULL;
}

/* Start resolving one attempt left "sent"; false when skipped. */
static bool recover_one(const struct tp_attempt *a)
{
  if (!claim(a))
    return false; /* someone here is still on it, or it is settled now */
  bool busy;
  struct tp_pay *p = recovery_pay(a, &busy);
  if (!p)
    return false; /* gone, or a request is on the payment: next tick */
  /* Ask the processor what became of our reference; never re-send. (An ISO
   * link answers a status query by reversing the reference: NOT_FOUND.) */
  tp_log(TP_LOG_INFO, "recovery_attempt", "{s:s, s:s, s:s}", "attempt", a->id, "kind", a->kind, "processor",
         a->processor);
  tp_metric_inc("turnpike_recovery_attempts_total", NULL, 1);
  send_call(p);
  return true;
}

/* ---- reversals owed ------------------------------------------------------------
 * A timed-out ISO 8583 authorization is committed "reversal_pending" (see
 * orchestrate), and so is a timed-out capture or refund (owes_reversal):
 * the host may have acted on it while the payment went on elsewhere (or the
 * capture / refund was reported as not done), so its reversal is repeated
 * until the host acknowledges it, however long that takes and across
 * restarts (store-and-forward). The connector's own 0401 repeats are the
 * fast path; this is the durable one. Only the attempt row changes, to
 * "reversed": its PaymentIntent, charge and refund moved on and no event is
 * emitted. */
static int64_t reversal_backoff_max_ms = 60000;

#define REV_BUCKETS 1024
#define REV_COUNTS_MAX 64
struct rev_wait {
  struct rev_wait *next;
  char id[64];
  int64_t due_ms; /* monotonic: the next try not before */
  int tries;
};
static struct rev_wait *rev_tab[REV_BUCKETS];
/* Pending reversals per processor as of the last scan (API, gauge). */
static struct rev_count {
  char name[64];
  size_t n;
} rev_counts[REV_COUNTS_MAX];
static size_t rev_counts_n;
static pthread_mutex_t rev_mu = PTHREAD_MUTEX_INITIALIZER;

/* Where this process's backoff entry for attempt id is, or would go (rev_mu
 * held): *slot is NULL when there is none. */
static struct rev_wait **tab_slot(struct rev_wait **tab, const char *id)
{
  struct rev_wait **pp = &tab[inflight_bucket(id) % REV_BUCKETS];
  while (*pp && strcmp((*pp)->id, id) != 0)
    pp = &(*pp)->next;
  return pp;
}

static struct rev_wait **rev_slot(const char *id)
{
  return tab_slot(rev_tab, id);
}

/* Remove id's entry from tab (rev_mu held); whether it had one. */
static bool tab_take(struct rev_wait **tab, const char *id)
{
  struct rev_wait **pp = tab_slot(tab, id), *e = *pp;
  if (!e)
    return false;
  *pp = e->next;
  free(e);
  return true;
}

/* -1: no try of id seen here yet; 0: due now; 1: backing off. */
static int rev_due(const char *id, int64_t now_ms)
{
  pthread_mutex_lock(&rev_mu);
  struct rev_wait *e = *rev_slot(id);
  int rc = !e ? -1 : e->due_ms > now_ms;
  pthread_mutex_unlock(&rev_mu);
  return rc;
}

/* A try of id failed: the next waits recovery_interval_ms, doubling per
 * failure up to reversal_backoff_max_ms. Returns that wait. */
static int64_t rev_later(const char *id)
{
  pthread_mutex_lock(&rev_mu);
  struct rev_wait **pp = rev_slot(id), *e = *pp;
  if (!e) {
    e = calloc(1, sizeof *e);
    if (!e)
      abort();
    tp_scopy(e->id, sizeof e->id, id);
    *pp = e;
  }
  int64_t wait = recovery_ms;
  for (int i = 0; i < e->tries && wait < reversal_backoff_max_ms; i++)
    wait *= 2;
  if (wait > reversal_backoff_max_ms)
    wait = reversal_backoff_max_ms;
  if (e->tries < 1000)
    e->tries++;
  e->due_ms = tp_mono_ms() + wait;
  pthread_mutex_unlock(&rev_mu);
  return wait;
}

static void rev_forget(const char *id)
{
  pthread_mutex_lock(&rev_mu);
  (void)tab_take(rev_tab, id);
  pthread_mutex_unlock(&rev_mu);
}

/* Attempts whose recovery reversal was answered 25 once (an ISO host had
 * no record of the call): the next one is believed. The call may still
 * be on its way to the host (queued at it, at its issuer, on the
 * connection the crash cut), approved after a first 25, and standing
 * there while the attempt was closed (review, session 41: the link asks
 * its own reversals again; recovery believed the first). True the first
 * time for id, then false (and id forgotten). */
static struct rev_wait *unlocated_tab[REV_BUCKETS];

/* id closed, or answered other than 25: a first 25 it had is forgotten. */
static void unlocated_forget(const char *id)
{
  pthread_mutex_lock(&rev_mu);
  (void)tab_take(unlocated_tab, id);
  pthread_mutex_unlock(&rev_mu);
}

static bool unlocated_first(const char *id)
{
  pthread_mutex_lock(&rev_mu);
  bool first = !tab_take(unlocated_tab, id);
  struct rev_wait *e = first ? calloc(1, sizeof *e) : NULL;
  if (e) {
    tp_scopy(e->id, sizeof e->id, id);
    struct rev_wait **pp = tab_slot(unlocated_tab, id);
    e->next = *pp;
    *pp = e;
  }
  pthread_mutex_unlock(&rev_mu);
  return first && e; /* no memory to remember it: believed now */
}

size_t tp_payflow_reversals_pending(const char *processor)
{
  size_t n = 0;
  pthread_mutex_lock(&rev_mu);
  for (size_t i = 0; i < rev_counts_n; i++)
    if (strcmp(rev_counts[i].name, processor) == 0)
      n = rev_counts[i].n;
  pthread_mutex_unlock(&rev_mu);
  return n;
}

/* Publish the counts of one scan: the API's and the gauge per processor
 * (every ISO processor, and any name that had some before, so a count that
 * drops to zero shows zero). */
static void rev_publish(const struct rev_count *c, size_t n)
{
  char esc[160], labels[192];
  pthread_mutex_lock(&rev_mu);
  for (size_t i = 0; i < rev_counts_n; i++) {
    size_t j = 0;
    while (j < n && strcmp(c[j].name, rev_counts[i].name) != 0)
      j++;
    if (j == n) {
      tp_metric_label_escape(esc, sizeof esc, rev_counts[i].name);
      snprintf(labels, sizeof labels, "processor=\"%s\"", esc);
      tp_metric_set("turnpike_reversals_pending", labels, 0);
    }
  }
  memcpy(rev_counts, c, n * sizeof *c);
  rev_counts_n = n;
  pthread_mutex_unlock(&rev_mu);
  for (size_t i = 0; i < n; i++) {
    tp_metric_label_escape(esc, sizeof esc, c[i].name);
    snprintf(labels, sizeof labels, "processor=\"%s\"", esc);
    tp_metric_set("turnpike_reversals_pending", labels, (int64_t)c[i].n);
  }
}

/* The processor answered recovery's reversal of p->att. */
static void reversal_answered(struct tp_pay *p)
{
  const struct tp_proc_call *c = &p->call;
  if (c->outcome == TP_OUT_NOT_FOUND && !(c->unlocated && unlocated_first(p->att.id))) {
    /* 0410 with 00 (reversed now) or 25 (nothing stands under the
     * reference, e.g. the connector's own 0401 got there first). */
    rev_forget(p->att.id);
    snprintf(p->att.state, sizeof p->att.state, "reversed");
    if (c->processor_ref[0])
      tp_scopy(p->att.processor_ref, sizeof p->att.processor_ref, c->processor_ref);
    p->att.updated = tp_now();
    tp_log(TP_LOG_INFO, "reversal_recovered", "{s:s, s:s, s:s}", "attempt", p->att.id, "processor",
           p->att.processor, "payment_intent", p->att.payment_intent);
    tp_metric_inc("turnpike_reversals_recovered_total", NULL, 1);
    commit_outcome(p, tp_cs_new());
    return;
  }
  /* Refused, no answer, link down: still owed; never given up. A first
   * 25 is asked again on purpose (a call still at the issuer may be
   * approved after it), and logged as such, not as a fault. */
  int64_t wait = rev_later(p->att.id);
  const char *why = c->outcome == TP_OUT_ERROR         ? c->decline_code
                    : c->outcome == TP_OUT_NOT_FOUND ? "first_not_found_asked_again"
                                                       : "unexpected_answer";
  tp_log(c->outcome == TP_OUT_NOT_FOUND ? TP_LOG_INFO : TP_LOG_WARN, "reversal_still_pending",
         "{s:s, s:s, s:s, s:I}", "attempt", p->att.id, "processor", p->att.processor, "error", why, "retry_ms",
         (json_int_t)wait);
  inflight_del(p->att.id);
  tp_pay_free(p);
}

/* Send the reversal of one "reversal_pending" attempt again (through the
 * status call, which an ISO link answers by reversing the reference); false
 * when someone here is already on it. */
static bool recover_reversal(const struct tp_attempt *a)
{
  if (!claim(a))
    return false;
  struct tp_pay *p = attempt_pay(a);
  if (a->vault_token[0]) {
    /* Field 2 like the first reversal; hosts match on field 37 anyway. */
    struct tp_card_info ci;
    if (tp_vault_load(a->merchant, a->vault_token, &ci) == 0) {
      tp_scopy(p->call.pan, sizeof p->call.pan, ci.pan);
      tp_card_wipe(&ci, sizeof ci);
    }
  }
  p->call.kind = TP_PROC_STATUS;
  p->call.status_of = kind_of(a->kind); /* the reversal names the capture or refund it undoes */
  tp_scopy(p->call.orig_data, sizeof p->call.orig_data, a->orig_data); /* field 90, when known */
  tp_log(TP_LOG_INFO, "reversal_retry", "{s:s, s:s, s:s}", "attempt", a->id, "kind", a->kind, "processor",
         a->processor);
  tp_metric_inc("turnpike_reversal_retries_total", NULL, 1);
  send_call(p);
  return true;
}

int tp_payflow_resolve(struct tp_req *r, const struct tp_attempt *a, bool processed, const char *auth_code,
                       const char *processor_ref, const char *reason)
{
  bool owed = strcmp(a->state, "reversal_pending") == 0;
  /* A reversal is owed because the host may have acted on a call the
   * payment went on without: "processed" has no outcome to record there
   * (the money would have to come back by a refund at the host). */
  if ((!owed && strcmp(a->state, "sent") != 0) || (owed && processed))
    return TP_ERR_ATTEMPT_UNEXPECTED_STATE;
  if (!claim(a))
    return TP_ERR_ATTEMPT_IN_FLIGHT; /* its call, or recovery's, is out now, or just settled it */
  struct tp_pay *p;
  if (owed) {
    /* Only the attempt row changes: no object lock. */
    p = attempt_pay(a);
  } else {
    bool busy;
    if (!(p = recovery_pay(a, &busy)))
      return busy ? TP_ERR_ATTEMPT_IN_FLIGHT : TP_ERR_STORE_UNAVAILABLE;
  }
  p->op_req = r;
  p->op_audit = tp_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "outcome", processed ? "processed" : "not_processed",
                        "kind", a->kind, "state_before", a->state, "processor", a->processor, "payment_intent",
                        a->payment_intent, "reason", reason ? reason : "");
  tp_log(TP_LOG_WARN, "attempt_resolved_by_operator", "{s:s, s:s, s:s, s:s, s:s}", "attempt", a->id, "kind",
         a->kind, "processor", a->processor, "outcome", processed ? "processed" : "not_processed", "actor",
         r->actor);
  tp_metric_inc("turnpike_attempts_resolved_by_operator_total", NULL, 1);
  tp_req_suspend(r);
  if (owed) {
    /* The host did not act on it, or it was undone there: stop repeating. */
    rev_forget(a->id);
    snprintf(p->att.state, sizeof p->att.state, "reversed");
    tp_scopy(p->att.result_code, sizeof p->att.result_code, "resolved_by_operator");
    p->att.updated = tp_now();
    commit_outcome(p, tp_cs_new());
    return 0;
  }
  /* The answer a status query would have brought. */
  struct tp_proc_call *c = &p->call;
  c->outcome = processed ? TP_OUT_APPROVED : TP_OUT_NOT_FOUND;
  tp_scopy(c->decline_code, sizeof c->decline_code, processed ? "" : "processing_error");
  tp_scopy(c->auth_code, sizeof c->auth_code, auth_code ? auth_code : "");
  tp_scopy(c->processor_ref, sizeof c->processor_ref, processor_ref ? processor_ref : "");
  final_outcome(p);
  return 0;
}

/* Whether attempt a has been left alone long enough (since `since`, unix
 * seconds) for recovery to act: twice its processor's timeout, plus one
 * second because the times are whole seconds. Before that, the call or the
 * connector's own repeats may still be under way. */
static bool quiet_since(const struct tp_attempt *a, int64_t since, int64_t now)
{
  struct tp_proc *pr = NULL;
  conn_of(a->processor, &pr);
  int64_t timeout_ms = pr && pr->timeout_ms > 0 ? pr->timeout_ms : 5000;
  return (now - since) * 1000 >= 2 * timeout_ms + 1000;
}

/* Reverse again the "reversal_pending" attempts nobody here is on: all at
 * start-up; on the tick, those past their backoff, or (first seen) older
 * than twice their processor's timeout so the connector's 0401 repeats
 * go first. */
static int recover_reversals(bool startup)
{
  struct tp_attempt *list = NULL;
  size_t n = 0;
  if (tp_app.store.ops->attempts_in_state(tp_app.store.cls, "reversal_pending", &list, &n) != 0)
    return 0;
  struct rev_count counts[REV_COUNTS_MAX];
  size_t nc = 0;
  for (size_t i = 0; i < tp_procs_count() && nc < REV_COUNTS_MAX; i++)
    if (strcmp(tp_proc_at(i)->type, "iso8583") == 0) {
      tp_scopy(counts[nc].name, sizeof counts[nc].name, tp_proc_at(i)->name);
      counts[nc++].n = 0;
    }
  int done = 0;
  int64_t now = tp_now(), mono = tp_mono_ms();
  for (size_t i = 0; i < n; i++) {
    const struct tp_attempt *a = &list[i];
    size_t j = 0;
    while (j < nc && strcmp(counts[j].name, a->processor) != 0)
      j++;
    if (j == nc && nc < REV_COUNTS_MAX) {
      tp_scopy(counts[nc].name, sizeof counts[nc].name, a->processor);
      counts[nc++].n = 0;
    }
    if (j < nc)
      counts[j].n++;
    if (!startup) {
      int due = rev_due(a->id, mono);
      if (due > 0)
        continue;
      if (due < 0 && !quiet_since(a, a->updated, now))
        continue;
    }
    done += recover_reversal(a);
  }
  free(list);
  rev_publish(counts, nc);
  return done;
}

/* The attempts left "sent" when this process started (sorted ids): no call
 * or connector repeat of this process is behind them, so a tick takes them
 * at once, as the start-up pass did. Without this, one the start-up pass
 * could not settle (its processor's link not up yet: processor_link_down)
 * waited twice its timeout from its creation, a minute with a 30 s
 * timeout, while its PaymentIntent refused every other money movement.
 * Written before the first tick is scheduled, read only by ticks. */
static char (*boot_sent)[sizeof ((struct tp_attempt *)0)->id];
static size_t boot_sent_n;

static int id_cmp(const void *a, const void *b)
{
  return strcmp(a, b);
}

static void boot_sent_keep(const struct tp_attempt *list, size_t n)
{
  if (n == 0 || !(boot_sent = calloc(n, sizeof *boot_sent)))
    return; /* without memory: those wait out their quiet period */
  for (size_t i = 0; i < n; i++)
    tp_scopy(boot_sent[i], sizeof boot_sent[i], list[i].id);
  qsort(boot_sent, n, sizeof *boot_sent, id_cmp);
  boot_sent_n = n;
}

static bool boot_sent_has(const char *id)
{
  return boot_sent_n > 0 && bsearch(id, boot_sent, boot_sent_n, sizeof *boot_sent, id_cmp) != NULL;
}

/* Resolve attempts left "sent": all of them at start-up, else those older
 * than twice their processor's timeout that nobody here waits for, and
 * those the start-up pass found. */
static int recover_scan(bool startup)
{
  struct tp_attempt *list = NULL;
  size_t n = 0;
  if (tp_app.store.ops->attempts_in_state(tp_app.store.cls, "sent", &list, &n) != 0)
    return -1;
  if (startup)
    boot_sent_keep(list, n);
  int done = 0;
  int64_t now = tp_now();
  for (size_t i = 0; i < n; i++) {
    const struct tp_attempt *a = &list[i];
    if (!startup && !quiet_since(a, a->created, now) && !boot_sent_has(a->id))
      continue;
    done += recover_one(a);
  }
  free(list);
  return done + recover_reversals(startup);
}

static void recovery_tick(void *arg, bool stopping)
{
  (void)arg;
  if (stopping || tp_app.shutting_down)
    return;
  int n = recover_scan(false);
  if (n > 0)
    tp_log(TP_LOG_INFO, "recovery_tick", "{s:i}", "attempts", n);
  timer_after(recovery_ms, recovery_tick, NULL);
}

/* A connector found that the call of attempt ref, given up on and
 * reversed, stands at its processor after all (tp_connector_reversal_owed):
 * an attempt closed as reversed owes its reversal again, which recovery
 * repeats until the processor acknowledges it. One still owing it is left
 * as it is; anything else (it succeeded after all) is logged. */
static void reversal_owed(const char *ref)
{
  struct tp_attempt a;
  if (tp_app.store.ops->attempt_get(tp_app.store.cls, ref, &a) != 1)
    return;
  /* Closed as reversed, or as failed or declined on a reversal's 25, or
   * owing one now: written "reversal_pending" in every case. The writer
   * applies change sets in order, so a "reversed" recovery committed just
   * before (queued behind a slow fsync when the approval came) is
   * overwritten, not the other way round (review, session 41). A call
   * still in flight ("sent") is the payment's or recovery's to settle, and
   * a succeeded one stands as it should. */
  if (strcmp(a.state, "sent") == 0 || strcmp(a.state, "succeeded") == 0) {
    tp_log(TP_LOG_WARN, "reversal_owed_in_flight", "{s:s, s:s}", "attempt", a.id, "state", a.state);
    return;
  }
  snprintf(a.state, sizeof a.state, "reversal_pending");
  a.updated = tp_now();
  struct tp_cs *cs = tp_cs_new();
  tp_cs_attempt(cs, &a);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    tp_log(TP_LOG_ERROR, "reversal_reopen_failed", "{s:s}", "attempt", a.id);
    return;
  }
  tp_log(TP_LOG_WARN, "reversal_reopened", "{s:s, s:s, s:s}", "attempt", a.id, "processor", a.processor,
         "payment_intent", a.payment_intent);
}

int tp_recover(void)
{
  tp_connector_on_reversal_owed(reversal_owed);
  deadline_ms = tp_config_int("routing", "deadline_ms", 10000, 100, 600000);
  backoff_base_ms = tp_config_int("routing", "backoff_base_ms", 50, 0, 60000);
  backoff_cap_ms = tp_config_int("routing", "backoff_cap_ms", 1000, 0, 600000);
  max_retries = (int)tp_config_int("routing", "max_retries", 1, 0, 10);
  recovery_ms = tp_config_int("routing", "recovery_interval_ms", 5000, 100, 3600000);
  reversal_backoff_max_ms = tp_config_int("routing", "reversal_backoff_max_ms", 60000, 100, 86400000);
  available_after_s = tp_config_int("balance", "available_after_seconds", 2 * 86400, 2, 30 * 86400);
  tp_metric_help("turnpike_payment_retries_total", "Calls retried on the same processor after a transient failure");
  tp_metric_help("turnpike_payment_cascades_total", "Payments moved to the next processor of their route");
  /* at 0 from the start (Prometheus: rate() and absence alerts work before the first) */
  tp_metric_inc("turnpike_payment_retries_total", NULL, 0);
  tp_metric_inc("turnpike_payment_cascades_total", NULL, 0);
  tp_metric_help("turnpike_payments_exhausted_total", "Payments whose every call failed transiently (or timed out)");
  tp_metric_help("turnpike_payments_unroutable_total", "Payments with no eligible processor");
  tp_metric_help("turnpike_attempts_unresolved_total", "Calls left with an unknown outcome for recovery");
  tp_metric_help("turnpike_attempts_resolved_by_operator_total",
                 "Unsettled attempts an operator settled (POST /v1/turnpike/attempts/{id}/resolve)");
  tp_metric_help("turnpike_attempt_fences_total",
                 "Lost calls (authorizations; captures and refunds in recovery) voided by reference before moving on");
  tp_metric_help("turnpike_recovery_attempts_total", "Attempts resolved by a recovery status query");
  tp_metric_help("turnpike_reversals_pending",
                 "Timed-out ISO 8583 authorizations, captures and refunds whose reversal is still owed");
  tp_metric_help("turnpike_reversal_retries_total", "Reversals sent again by recovery");
  tp_metric_help("turnpike_reversals_recovered_total", "Owed reversals the host acknowledged (attempt reversed)");
  if (timer_start() != 0)
    return -1;
  int done = recover_scan(true);
  timer_after(recovery_ms, recovery_tick, NULL);
  return done;
}
