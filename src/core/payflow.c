/* The processor-call pipeline and its outcome builders (see payflow.h). */
#include "core/payflow.h"
#include "api/objects.h"
#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tp_connector *tp_default_connector;

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

void tp_pay_free(struct tp_pay *p)
{
  if (!p)
    return;
  json_decref(p->pi);
  json_decref(p->charge);
  json_decref(p->refund);
  json_decref(p->pm);
  free(p->body);
  free(p->redirect_body);
  tp_card_wipe(&p->call, sizeof p->call);
  free(p);
}

void tp_pay_attempt(struct tp_pay *p, const char *kind, int64_t amount, const char *currency)
{
  struct tp_attempt *a = &p->att;
  memset(a, 0, sizeof *a);
  tp_id_new(a->id, "att");
  snprintf(a->merchant, sizeof a->merchant, "%s", p->m.id);
  const char *pi = p->pi ? json_string_value(json_object_get(p->pi, "id")) : NULL;
  snprintf(a->payment_intent, sizeof a->payment_intent, "%s", pi ? pi : "");
  snprintf(a->processor, sizeof a->processor, "%s", tp_default_connector->name);
  /* Our reference to the processor is the attempt id: unique per call, so a
   * processor that deduplicates by reference can never charge twice. */
  snprintf(a->idem_ref, sizeof a->idem_ref, "%s", a->id);
  snprintf(a->kind, sizeof a->kind, "%s", kind);
  snprintf(a->state, sizeof a->state, "sent");
  snprintf(a->currency, sizeof a->currency, "%s", currency);
  a->amount = amount;
  snprintf(a->route, sizeof a->route, "default processor %s", tp_default_connector->name);
  if (p->r && p->r->has_idem && p->r->idem_registered) {
    snprintf(a->client_idem_key, sizeof a->client_idem_key, "%s", p->r->idem_key);
    snprintf(a->client_req_hash, sizeof a->client_req_hash, "%s", p->r->req_hash);
  }
  a->created = tp_now();
}

void tp_pay_reply(struct tp_pay *p, unsigned status, json_t *obj)
{
  if (p->r && status < 300) {
    json_t *known = json_array();
    if (p->charge)
      json_array_append(known, p->charge);
    if (p->pm)
      json_array_append(known, p->pm);
    if (p->pi)
      json_array_append(known, p->pi);
    const json_t *ex = json_object_get(p->params, "expand");
    if (json_is_array(ex) && json_array_size(ex) > 0) {
      /* Expansion errors were checked up front; ignore them here. */
      tp_expand(p->r, obj, known);
    }
    json_decref(known);
  }
  free(p->body);
  p->status = status;
  p->body = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(obj);
}

/* ---- the pipeline ---------------------------------------------------------- */
static void finish(struct tp_pay *p, int rc)
{
  if (p->lock_id[0])
    tp_lock_release(p->lock_id);
  if (p->r) {
    if (rc != 0)
      tp_reply_error(p->r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    else if (p->redirect_body) {
      /* The browser goes back with the real outcome of the authorization. */
      char *st = strstr(p->r->location, "redirect_status=succeeded");
      if (st && p->status != 200)
        snprintf(st, sizeof p->r->location - (size_t)(st - p->r->location), "redirect_status=failed");
      tp_reply_raw(p->r, p->redirect_status, p->redirect_body, p->redirect_len, "text/html; charset=utf-8");
      p->redirect_body = NULL;
    } else {
      tp_reply_raw(p->r, p->status, p->body, p->body ? strlen(p->body) : 0, "application/json");
      p->body = NULL;
    }
    tp_req_resume(p->r);
  }
  tp_pay_free(p);
}

static void outcome_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct tp_pay *p = arg;
  if (rc != 0)
    tp_log(TP_LOG_ERROR, "outcome_commit_failed", "{s:s}", "attempt", p->att.id);
  finish(p, rc);
}

static void call_done(struct tp_proc_call *c)
{
  struct tp_pay *p = c->arg;
  struct tp_cs *cs = tp_cs_new();
  struct tp_attempt *a = &p->att;
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
  snprintf(a->result_code, sizeof a->result_code, "%s", c->decline_code);
  snprintf(a->auth_code, sizeof a->auth_code, "%s", c->auth_code);
  snprintf(a->processor_ref, sizeof a->processor_ref, "%s", c->processor_ref);
  /* Card data is not needed past the call. */
  tp_card_wipe(c->pan, sizeof c->pan);
  tp_card_wipe(c->cvc, sizeof c->cvc);
  p->outcome(p, cs);
  tp_cs_attempt(cs, a);
  if (a->client_idem_key[0] && p->body)
    tp_cs_idem(cs, p->m.id, a->client_idem_key, a->client_req_hash, (int)p->status, p->body);
  tp_cs_on_done(cs, outcome_done, p);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    /* The attempt stays "sent"; recovery resolves it on the next start. */
    finish(p, -1);
  }
}

static void send_call(struct tp_pay *p)
{
  struct tp_proc_call *c = &p->call;
  snprintf(c->ref, sizeof c->ref, "%s", p->att.idem_ref);
  c->amount = p->att.amount;
  snprintf(c->currency, sizeof c->currency, "%s", p->att.currency);
  c->capture = p->att.capture != 0;
  c->done = call_done;
  c->arg = p;
  if (tp_default_connector->ops->submit(tp_default_connector->cls, c) != 0) {
    c->outcome = TP_OUT_ERROR;
    snprintf(c->decline_code, sizeof c->decline_code, "processing_error");
    call_done(c);
  }
}

static void writeahead_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct tp_pay *p = arg;
  if (rc != 0) {
    finish(p, rc);
    return;
  }
  send_call(p);
}

void tp_pay_run(struct tp_pay *p, struct tp_cs *cs)
{
  tp_cs_attempt(cs, &p->att);
  if (p->att.client_idem_key[0])
    tp_cs_idem(cs, p->m.id, p->att.client_idem_key, p->att.client_req_hash, 0, NULL);
  tp_cs_on_done(cs, writeahead_done, p);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    if (p->lock_id[0])
      tp_lock_release(p->lock_id);
    if (p->r) {
      tp_reply_error(p->r, TP_ERR_OVERLOADED, NULL, NULL);
      tp_req_resume(p->r);
    }
    tp_pay_free(p);
  }
}

/* ---- objects ------------------------------------------------------------- */
json_t *tp_ledger_post(struct tp_cs *cs, const char *merchant, const char *processor, const char *currency,
                       int64_t amount, const char *source, const char *type)
{
  char txn[TP_ID_MAX], acct[128];
  tp_id_new(txn, "txn");
  snprintf(acct, sizeof acct, "processor:%s:receivable", processor);
  /* Capture: the processor owes us, the merchant's pending balance grows.
   * Refund: the reverse. Debits positive, credits negative. */
  tp_cs_ledger(cs, txn, merchant, acct, currency, amount);
  tp_cs_ledger(cs, txn, merchant, "merchant:pending", currency, -amount);
  int64_t now = tp_now();
  json_t *bt = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:n, s:n, s:I, s:[], s:I, s:s, s:s, s:s, s:s}", "id", txn,
                         "object", "balance_transaction", "amount", (json_int_t)amount, "available_on",
                         (json_int_t)(now + 2 * 86400), "created", (json_int_t)now, "currency", currency,
                         "description", "exchange_rate", "fee", (json_int_t)0, "fee_details", "net",
                         (json_int_t)amount, "reporting_category", type, "source", source, "status", "pending",
                         "type", type);
  if (!bt)
    abort();
  tp_cs_put(cs, TP_K_BALANCE_TXN, merchant, bt);
  return bt;
}

json_t *tp_charge_new(const struct tp_pay *p, bool approved)
{
  char id[TP_ID_MAX];
  tp_id_new(id, "ch");
  const json_t *pi = p->pi;
  const json_t *card = json_object_get(p->pm, "card");
  json_t *pmd_card = json_pack("{s:O, s:{s:n, s:n, s:s}, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:n, s:n}", "brand",
                               json_object_get(card, "brand"), "checks", "address_line1_check",
                               "address_postal_code_check", "cvc_check", p->call.cvc[0] || p->three_ds_done ? "pass" : "unchecked",
                               "country", json_object_get(card, "country"), "exp_month",
                               json_object_get(card, "exp_month"), "exp_year", json_object_get(card, "exp_year"),
                               "fingerprint", json_object_get(card, "fingerprint"), "funding",
                               json_object_get(card, "funding"), "last4", json_object_get(card, "last4"), "network",
                               json_object_get(card, "brand"), "three_d_secure", "wallet");
  if (!pmd_card)
    abort();
  if (p->three_ds_done)
    json_object_set_new(pmd_card, "three_d_secure",
                        json_pack("{s:s, s:s, s:s}", "authentication_flow", "challenge", "result", "authenticated",
                                  "version", "2.2.0"));
  json_t *ch = json_pack("{s:s, s:s, s:O, s:I, s:I, s:n, s:{s:n, s:n, s:n, s:n}, s:b, s:I, s:O, s:O, s:O, "
                         "s:n, s:n, s:b, s:O, s:n, s:b, s:O, s:O, s:{s:o, s:s}, s:O, s:b, s:s, s:{s:s, s:s}}",
                         "id", id, "object", "charge", "amount", json_object_get(pi, "amount"), "amount_captured",
                         (json_int_t)0, "amount_refunded", (json_int_t)0, "balance_transaction", "billing_details",
                         "email", "name", "phone", "address", "captured", 0, "created", (json_int_t)tp_now(),
                         "currency", json_object_get(pi, "currency"), "customer", json_object_get(pi, "customer"),
                         "description", json_object_get(pi, "description"), "failure_code", "failure_message",
                         "livemode", 0, "metadata", json_object_get(pi, "metadata"), "outcome", "paid", approved,
                         "payment_intent", json_object_get(pi, "id"), "payment_method", json_object_get(p->pm, "id"),
                         "payment_method_details", "card", pmd_card, "type", "card", "receipt_email",
                         json_object_get(pi, "receipt_email"), "refunded", 0, "status",
                         approved ? "succeeded" : "failed", "turnpike", "processor", p->att.processor, "attempt",
                         p->att.id);
  if (!ch)
    abort();
  json_object_set(ch, "billing_details", json_object_get(p->pm, "billing_details"));
  json_object_set_new(ch, "authorization_code", approved ? json_string(p->call.auth_code) : json_null());
  return ch;
}

static json_t *outcome_obj(bool approved, const char *decline)
{
  if (approved)
    return json_pack("{s:s, s:n, s:s, s:i, s:s, s:s}", "network_status", "approved_by_network", "reason",
                     "risk_level", "normal", "risk_score", 20, "seller_message", "Payment complete.", "type",
                     "authorized");
  return json_pack("{s:s, s:s, s:s, s:i, s:s, s:s}", "network_status", "declined_by_network", "reason", decline,
                   "risk_level", "normal", "risk_score", 20, "seller_message",
                   "The bank did not return any further details with this decline.", "type", "issuer_declined");
}

void tp_outcome_authorize(struct tp_pay *p, struct tp_cs *cs)
{
  const struct tp_proc_call *c = &p->call;
  json_t *pi = p->pi;
  const char *merchant = p->m.id;
  bool approved = c->outcome == TP_OUT_APPROVED;
  json_t *ch = tp_charge_new(p, approved);
  json_object_set_new(ch, "outcome", outcome_obj(approved, c->decline_code[0] ? c->decline_code : "generic_decline"));
  json_object_set(pi, "latest_charge", json_object_get(ch, "id"));
  json_object_set_new(pi, "next_action", json_null());
  if (approved) {
    int64_t amount = json_integer_value(json_object_get(pi, "amount"));
    const char *cur = json_string_value(json_object_get(pi, "currency"));
    if (p->att.capture) {
      json_t *bt = tp_ledger_post(cs, merchant, p->att.processor, cur, amount, json_string_value(json_object_get(ch, "id")), "charge");
      json_object_set(ch, "balance_transaction", json_object_get(bt, "id"));
      json_decref(bt);
      json_object_set_new(ch, "captured", json_true());
      json_object_set_new(ch, "amount_captured", json_integer(amount));
      json_object_set_new(pi, "status", json_string("succeeded"));
      json_object_set_new(pi, "amount_received", json_integer(amount));
      json_object_set_new(pi, "amount_capturable", json_integer(0));
    } else {
      json_object_set_new(pi, "status", json_string("requires_capture"));
      json_object_set_new(pi, "amount_capturable", json_integer(amount));
    }
    json_object_set_new(pi, "last_payment_error", json_null());
    tp_cs_put(cs, TP_K_CHARGE, merchant, ch);
    tp_cs_put(cs, TP_K_PAYMENT_INTENT, merchant, pi);
    tp_emit(cs, p->r, merchant, "charge.succeeded", ch);
    tp_emit(cs, p->r, merchant, p->att.capture ? "payment_intent.succeeded" : "payment_intent.amount_capturable_updated",
            pi);
    p->charge = ch;
    tp_pay_reply(p, 200, json_incref(pi));
    return;
  }
  /* Declined or failed: the charge is recorded as failed and the
   * PaymentIntent goes back to requires_payment_method. */
  const char *dc = c->decline_code[0] ? c->decline_code : "processing_error";
  const struct tp_error_info *ei = tp_error_by_decline_code(dc);
  if (!ei)
    ei = tp_error_by_decline_code("generic_decline");
  json_t *err = tp_error_object((enum tp_err)ei->number, NULL, NULL);
  json_object_set(ch, "failure_code", json_object_get(err, "code"));
  json_object_set(ch, "failure_message", json_object_get(err, "message"));
  json_object_set(err, "charge", json_object_get(ch, "id"));
  json_object_set(err, "payment_method", p->pm);
  json_object_set_new(err, "doc_url", json_sprintf("https://docs.stripe.com/error-codes/%s",
                                                   json_string_value(json_object_get(err, "code"))));
  json_object_set(pi, "last_payment_error", err);
  json_object_set_new(pi, "status", json_string("requires_payment_method"));
  json_object_set_new(pi, "payment_method", json_null());
  json_object_set_new(pi, "amount_capturable", json_integer(0));
  tp_cs_put(cs, TP_K_CHARGE, merchant, ch);
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, merchant, pi);
  tp_emit(cs, p->r, merchant, "charge.failed", ch);
  tp_emit(cs, p->r, merchant, "payment_intent.payment_failed", pi);
  p->charge = ch;
  json_t *body_err = json_deep_copy(err);
  json_object_set(body_err, "payment_intent", pi);
  json_decref(err);
  tp_pay_reply(p, (unsigned)ei->http_status, json_pack("{s:o}", "error", body_err));
}

void tp_outcome_capture(struct tp_pay *p, struct tp_cs *cs)
{
  json_t *pi = p->pi, *ch = p->charge;
  const char *merchant = p->m.id;
  if (p->call.outcome != TP_OUT_APPROVED) {
    /* The authorization stays; the merchant may retry the capture. */
    tp_pay_reply(p, 402, json_pack("{s:o}", "error", tp_error_object(TP_ERR_DECLINE_PROCESSING_ERROR, NULL, NULL)));
    return;
  }
  int64_t amount = p->att.amount;
  const char *cur = json_string_value(json_object_get(pi, "currency"));
  json_t *bt = tp_ledger_post(cs, merchant, p->att.processor, cur, amount, json_string_value(json_object_get(ch, "id")), "charge");
  json_object_set(ch, "balance_transaction", json_object_get(bt, "id"));
  json_decref(bt);
  json_object_set_new(ch, "captured", json_true());
  json_object_set_new(ch, "amount_captured", json_integer(amount));
  json_object_set_new(pi, "status", json_string("succeeded"));
  json_object_set_new(pi, "amount_received", json_integer(amount));
  json_object_set_new(pi, "amount_capturable", json_integer(0));
  tp_cs_put(cs, TP_K_CHARGE, merchant, ch);
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, merchant, pi);
  tp_emit(cs, p->r, merchant, "charge.captured", ch);
  tp_emit(cs, p->r, merchant, "payment_intent.succeeded", pi);
  tp_pay_reply(p, 200, json_incref(pi));
}

void tp_outcome_void(struct tp_pay *p, struct tp_cs *cs)
{
  json_t *pi = p->pi, *ch = p->charge;
  const char *merchant = p->m.id;
  if (p->call.outcome != TP_OUT_APPROVED) {
    tp_pay_reply(p, 402, json_pack("{s:o}", "error", tp_error_object(TP_ERR_DECLINE_PROCESSING_ERROR, NULL, NULL)));
    return;
  }
  if (ch) {
    /* Releasing an uncaptured authorization shows as a full refund (Stripe). */
    json_object_set(ch, "amount_refunded", json_object_get(ch, "amount"));
    json_object_set_new(ch, "refunded", json_true());
    tp_cs_put(cs, TP_K_CHARGE, merchant, ch);
    tp_emit(cs, p->r, merchant, "charge.refunded", ch);
  }
  json_object_set_new(pi, "status", json_string("canceled"));
  json_object_set_new(pi, "canceled_at", json_integer(tp_now()));
  json_object_set_new(pi, "cancellation_reason",
                      p->cancellation_reason[0] ? json_string(p->cancellation_reason) : json_null());
  json_object_set_new(pi, "amount_capturable", json_integer(0));
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, merchant, pi);
  tp_emit(cs, p->r, merchant, "payment_intent.canceled", pi);
  tp_pay_reply(p, 200, json_incref(pi));
}

void tp_outcome_refund(struct tp_pay *p, struct tp_cs *cs)
{
  json_t *re = p->refund, *ch = p->charge;
  const char *merchant = p->m.id;
  int64_t amount = p->att.amount;
  if (p->call.outcome != TP_OUT_APPROVED) {
    json_object_set_new(re, "status", json_string("failed"));
    json_object_set_new(re, "failure_reason", json_string("unknown"));
    tp_cs_put(cs, TP_K_REFUND, merchant, re);
    tp_emit(cs, p->r, merchant, "refund.failed", re);
    tp_pay_reply(p, 200, json_incref(re));
    return;
  }
  const char *cur = json_string_value(json_object_get(re, "currency"));
  json_t *bt = tp_ledger_post(cs, merchant, p->att.processor, cur, -amount, json_string_value(json_object_get(re, "id")),
                              "refund");
  json_object_set(re, "balance_transaction", json_object_get(bt, "id"));
  json_decref(bt);
  json_object_set_new(re, "status", json_string("succeeded"));
  int64_t refunded = json_integer_value(json_object_get(ch, "amount_refunded")) + amount;
  json_object_set_new(ch, "amount_refunded", json_integer(refunded));
  json_object_set_new(ch, "refunded", json_boolean(refunded >= json_integer_value(json_object_get(ch, "amount_captured"))));
  tp_cs_put(cs, TP_K_REFUND, merchant, re);
  tp_cs_put(cs, TP_K_CHARGE, merchant, ch);
  tp_emit(cs, p->r, merchant, "refund.created", re);
  tp_emit(cs, p->r, merchant, "charge.refunded", ch);
  tp_pay_reply(p, 200, json_incref(re));
}

/* ---- recovery ---------------------------------------------------------------- */
struct recovery_wait {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int left;
};

int tp_recover(void)
{
  struct tp_attempt *list = NULL;
  size_t n = 0;
  if (tp_app.store.ops->attempts_in_state(tp_app.store.cls, "sent", &list, &n) != 0)
    return -1;
  int done = 0;
  for (size_t i = 0; i < n; i++) {
    struct tp_attempt *a = &list[i];
    struct tp_merchant m;
    memset(&m, 0, sizeof m);
    snprintf(m.id, sizeof m.id, "%s", a->merchant);
    struct tp_pay *p = tp_pay_new(NULL, &m);
    p->att = *a;
    p->pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, a->merchant, a->payment_intent);
    if (!p->pi) {
      tp_log(TP_LOG_ERROR, "recovery_missing_pi", "{s:s}", "attempt", a->id);
      tp_pay_free(p);
      continue;
    }
    const char *lc = json_string_value(json_object_get(p->pi, "latest_charge"));
    if (lc)
      p->charge = tp_store_get_json(&tp_app.store, TP_K_CHARGE, a->merchant, lc);
    if (a->vault_token[0]) {
      p->pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, a->merchant, a->vault_token);
      struct tp_card_info ci;
      if (tp_vault_load(a->merchant, a->vault_token, &ci) == 0) {
        snprintf(p->call.pan, sizeof p->call.pan, "%s", ci.pan);
        tp_card_wipe(&ci, sizeof ci);
      }
    }
    if (strcmp(a->kind, "authorize") == 0)
      p->outcome = tp_outcome_authorize;
    else if (strcmp(a->kind, "capture") == 0)
      p->outcome = tp_outcome_capture;
    else if (strcmp(a->kind, "void") == 0)
      p->outcome = tp_outcome_void;
    else {
      p->outcome = tp_outcome_refund;
      p->refund = tp_store_get_json(&tp_app.store, TP_K_REFUND, a->merchant, a->refund);
      if (p->refund) {
        const char *chid = json_string_value(json_object_get(p->refund, "charge"));
        json_decref(p->charge);
        p->charge = chid ? tp_store_get_json(&tp_app.store, TP_K_CHARGE, a->merchant, chid) : NULL;
      }
      if (!p->refund || !p->charge) {
        tp_pay_free(p);
        continue;
      }
    }
    /* Ask the processor what became of our reference; never re-send. */
    p->call.kind = TP_PROC_STATUS;
    tp_log(TP_LOG_INFO, "recovery_attempt", "{s:s, s:s, s:s}", "attempt", a->id, "kind", a->kind, "processor",
           a->processor);
    send_call(p);
    done++;
  }
  free(list);
  return done;
}
