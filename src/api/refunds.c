/* /v1/refunds: a refund is a processor call like a capture: the refund and
 * its attempt are committed before the call, the ledger reversal after. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "core/currency.h"
#include "core/payflow.h"
#include "jpack.h"
#include "sec/audit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const reasons[] = {"duplicate", "fraudulent", "requested_by_customer", NULL};

/* What a refund's create takes but the charge, which POST /v1/refunds
 * names and the Charges API's routes (/v1/charges/{id}/refunds, /refund)
 * have in their path. */
#define REFUND_CREATE_PARAMS \
  {"payment_intent", TP_P_STRING, NULL, NULL}, {"amount", TP_P_INT, NULL, NULL}, \
  {"reason", TP_P_ENUM, NULL, reasons},        {"metadata", TP_P_METADATA, NULL, NULL}, \
  {"expand", TP_P_STRLIST, NULL, NULL},        {"instructions_email", TP_P_STRING, NULL, NULL}, \
  /* Refunds to a customer's balance, without a charge. */ \
  {"currency", TP_P_UNSUPPORTED, NULL, tp_why_customer_balance}, \
  {"customer", TP_P_UNSUPPORTED, NULL, tp_why_customer_balance}, \
  {"origin", TP_P_UNSUPPORTED, NULL, tp_why_customer_balance}, \
  /* Connect's: false is what happens anyway. */ \
  {"refund_application_fee", TP_P_BOOL, NULL, NULL}, {"reverse_transfer", TP_P_BOOL, NULL, NULL}

static const struct tp_pspec spec_create[] = {
  {"charge", TP_P_STRING, NULL, NULL}, REFUND_CREATE_PARAMS, {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_create_for_charge[] = {
  REFUND_CREATE_PARAMS, {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_update[] = {
  {"metadata", TP_P_METADATA, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_list[] = {
  {"limit", TP_P_INT, NULL, NULL},           {"starting_after", TP_P_STRING, NULL, NULL},
  {"ending_before", TP_P_STRING, NULL, NULL}, {"payment_intent", TP_P_STRING, NULL, NULL},
  {"charge", TP_P_STRING, NULL, NULL},       {"created", TP_P_RANGE, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},      {NULL, 0, NULL, NULL},
};

/* The refund of amount of charge ch as a processor call (pi and ch owned,
 * lock held: the one the outcome releases): its Refund, pending, and its
 * attempt committed first, then the call of kind `call`; outcome builds the
 * result. The request is suspended until then. */
static void run_refund(struct tp_req *r, json_t *pi, json_t *ch, int64_t amount, const char *lock,
                       const char *attempt_kind, enum tp_proc_kind call, tp_pay_outcome_fn outcome, bool reply_charge)
{
  json_t *re = tp_refund_object(amount, ch, tp_pstr(r->params, "reason"), json_object_get(r->params, "metadata"),
                                "pending");
  struct tp_pay *p = tp_pay_new(r, &r->merchant);
  p->pi = pi;
  p->charge = ch;
  p->refund = re;
  p->outcome = outcome;
  p->reply_charge = reply_charge;
  tp_scopy(p->lock_id, sizeof p->lock_id, lock);
  tp_pay_attempt(p, attempt_kind, amount, json_string_value(json_object_get(ch, "currency")));
  tp_scopy(p->att.refund, sizeof p->att.refund, json_string_value(json_object_get(re, "id")));
  p->call.kind = call;
  tp_call_target(&p->call, ch);
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put(cs, TP_K_REFUND, r->merchant.id, re);
  json_t *audit = tp_pack("{s:I, s:O, s:O}", "amount", (json_int_t)amount, "currency",
                          json_object_get(ch, "currency"), "charge", json_object_get(ch, "id"));
  tp_audit_append(cs, r->merchant.id, r->actor[0] ? r->actor : "api", "refund.created", p->att.refund, audit);
  json_decref(audit);
  tp_req_suspend(r);
  tp_pay_run(p, cs);
}

/* A refund of uncaptured charge ch (owned): the release of its hold, all
 * of it, under its PaymentIntent's lock (as a cancel, which it is), the
 * refund made at the void's outcome (tp_outcome_void_refund). Replies. */
static void release_by_refund(struct tp_req *r, json_t *ch, bool reply_charge)
{
  char msg[200], chid[TP_ID_MAX];
  tp_scopy(chid, sizeof chid, json_string_value(json_object_get(ch, "id")) ?: "");
  char pi_id[TP_ID_MAX];
  tp_scopy(pi_id, sizeof pi_id, json_string_value(json_object_get(ch, "payment_intent")) ?: "");
  if (!pi_id[0] || !tp_lock_try(pi_id)) {
    if (pi_id[0])
      tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    else
      tp_reply_error(r, TP_ERR_CHARGE_NOT_REFUNDABLE, "charge", NULL);
    json_decref(ch);
    return;
  }
  /* read again under the lock: a capture or cancel may have ended it */
  json_t *pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, pi_id);
  json_t *now = tp_store_get_json(&tp_app.store, TP_K_CHARGE, r->merchant.id, chid);
  json_decref(ch);
  ch = now;
  /* only the PaymentIntent's live authorization is released: not an
   * earlier charge of it that failed or was fenced (its void would answer
   * "voided" and the live hold would be left standing, its PaymentIntent
   * canceled) */
  const char *latest = json_string_value(json_object_get(pi, "latest_charge"));
  if (ch && (!latest || strcmp(latest, chid) != 0 || !json_is_true(json_object_get(ch, "paid")))) {
    snprintf(msg, sizeof msg, "Charge %.64s did not succeed and cannot be refunded.", chid);
    tp_reply_error(r, TP_ERR_CHARGE_NOT_REFUNDABLE, "charge", msg);
    goto fail;
  }
  if (ch && json_is_true(json_object_get(ch, "refunded"))) { /* released by a refund already */
    snprintf(msg, sizeof msg, "Charge %.64s has already been refunded.", chid);
    tp_reply_error(r, TP_ERR_CHARGE_ALREADY_REFUNDED, "charge", msg);
    goto fail;
  }
  const char *st = json_string_value(json_object_get(pi, "status"));
  int64_t held = json_integer_value(json_object_get(pi, "amount_capturable"));
  if (!pi || !ch || !st || strcmp(st, "requires_capture") != 0 || held <= 0 ||
      json_is_true(json_object_get(ch, "captured"))) {
    snprintf(msg, sizeof msg, "Charge %.64s has not been captured and cannot be refunded.", chid);
    if (ch && json_is_true(json_object_get(ch, "captured")))
      snprintf(msg, sizeof msg, "Charge %.64s changed meanwhile; try again.", chid);
    tp_reply_error(r, TP_ERR_CHARGE_NOT_REFUNDABLE, "charge", msg);
    goto fail;
  }
  int64_t amount = held;
  if (tp_param_int(r->params, "amount", &amount) && amount <= 0) { /* as for a captured charge */
    tp_reply_error(r, TP_ERR_AMOUNT_TOO_SMALL, "amount", "Refund amount must be positive.");
    goto fail;
  }
  if (tp_param_int(r->params, "amount", &amount) && amount != held) {
    const struct tp_currency *cur = tp_currency_find(json_string_value(json_object_get(ch, "currency")));
    char want[48], all[48];
    tp_amount_display(want, sizeof want, amount, cur);
    tp_amount_display(all, sizeof all, held, cur);
    snprintf(msg, sizeof msg, "An uncaptured charge is released whole: refund amount (%s) must be %s.", want, all);
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID_INTEGER, "amount", msg);
    goto fail;
  }
  if (tp_refuse_unsettled(r, pi_id))
    goto fail;
  run_refund(r, pi, ch, amount, pi_id, "void", TP_PROC_VOID, tp_outcome_void_refund, reply_charge);
  return;
fail:
  json_decref(pi);
  json_decref(ch);
  tp_lock_release(pi_id);
}

/* A refund of the charge named by path_charge (the Charges API's nested
 * routes) or by the parameters; reply_charge answers with the charge (the
 * legacy POST /v1/charges/{id}/refund) instead of the refund. */
static void refund_create(struct tp_req *r, const char *path_charge, bool reply_charge)
{
  if (!tp_check_params(r, path_charge ? spec_create_for_charge : spec_create) ||
      !tp_email_param_ok(r, r->params, "instructions_email", "instructions_email"))
    return;
  static const char *const connect_flags[] = {"refund_application_fee", "reverse_transfer"};
  for (int i = 0; i < 2; i++) {
    bool on = false;
    if (tp_param_bool(r->params, connect_flags[i], &on) && on) {
      char msg[200];
      snprintf(msg, sizeof msg, "Parameter not supported by Turnpike: %s (%s)", connect_flags[i], tp_why_connect[0]);
      tp_reply_error(r, TP_ERR_PARAMETER_UNSUPPORTED, connect_flags[i], msg);
      return;
    }
  }
  const char *pi_id = tp_pstr(r->params, "payment_intent");
  const char *ch_id = path_charge ? path_charge : tp_pstr(r->params, "charge");
  if ((!pi_id || !*pi_id) && (!ch_id || !*ch_id)) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "charge",
                   "One of the following params should be provided for this request: payment_intent or charge.");
    return;
  }
  json_t *pi = NULL, *ch = NULL;
  char msg[200];
  if (pi_id && *pi_id) {
    pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, pi_id);
    if (!pi) {
      snprintf(msg, sizeof msg, "No such payment_intent: '%.64s'", pi_id);
      tp_reply_error(r, TP_ERR_RESOURCE_MISSING, "payment_intent", msg);
      return;
    }
    /* Not succeeded: a capture or authorization of it may be going
     * through in this process (it holds the PaymentIntent's lock): wait for
     * it, as a refund by the charge waits on the charge's, and look again
     * (a refund by payment_intent was answered 409 "unknown outcome"
     * while a capture was simply in flight). */
    if (strcmp(json_string_value(json_object_get(pi, "status")), "succeeded") != 0) {
      if (!tp_lock_try(pi_id)) {
        json_decref(pi);
        tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
        return;
      }
      json_decref(pi);
      pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, pi_id);
      tp_lock_release(pi_id);
      if (!pi) {
        tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
        return;
      }
    }
    const char *lc = json_string_value(json_object_get(pi, "latest_charge"));
    /* A capture (or authorization) whose outcome is being settled (none in
     * flight here: its lock was free): 409 as by the charge (a
     * final-looking 400 said a capture that is going through had no
     * successful charge) */
    if (strcmp(json_string_value(json_object_get(pi, "status")), "succeeded") != 0 && tp_refuse_unsettled(r, pi_id)) {
      json_decref(pi);
      return;
    }
    if (strcmp(json_string_value(json_object_get(pi, "status")), "succeeded") != 0 || !lc) {
      snprintf(msg, sizeof msg, "This PaymentIntent (%.64s) does not have a successful charge to refund.", pi_id);
      tp_reply_error(r, TP_ERR_CHARGE_NOT_REFUNDABLE, "payment_intent", msg);
      json_decref(pi);
      return;
    }
    if (ch_id && *ch_id && strcmp(ch_id, lc) != 0) {
      tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "charge", "The charge does not belong to this PaymentIntent.");
      json_decref(pi);
      return;
    }
    ch_id = lc;
  }
  char chid[TP_ID_MAX];
  tp_scopy(chid, sizeof chid, ch_id);
  if (!tp_lock_try(chid)) {
    json_decref(pi);
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  ch = tp_store_get_json(&tp_app.store, TP_K_CHARGE, r->merchant.id, chid);
  if (!ch) {
    snprintf(msg, sizeof msg, "No such charge: '%.64s'", chid);
    tp_reply_error(r, TP_ERR_RESOURCE_MISSING, "charge", msg);
    goto fail;
  }
  if (!json_is_true(json_object_get(ch, "captured"))) {
    /* Still held: a refund releases it (its authorization voided), the
     * older way to cancel, which Charges-era libraries use for void. */
    json_decref(pi);
    tp_lock_release(chid);
    release_by_refund(r, ch, reply_charge);
    return;
  }
  /* A chargeback has taken the money back already (Stripe: charge_disputed). */
  if (json_is_true(json_object_get(ch, "disputed")) && tp_charge_dispute_blocks_refund(r->merchant.id, chid)) {
    snprintf(msg, sizeof msg, "Charge %.64s has been charged back; you can't refund a disputed charge.", chid);
    tp_reply_error(r, TP_ERR_CHARGE_DISPUTED, "charge", msg);
    goto fail;
  }
  /* A refund whose outcome is unknown is not in amount_refunded yet. */
  const char *ch_pi = json_string_value(json_object_get(ch, "payment_intent"));
  if (ch_pi && tp_refuse_unsettled(r, ch_pi))
    goto fail;
  int64_t captured = json_integer_value(json_object_get(ch, "amount_captured"));
  /* Only what was captured can be refunded. A charge released before
   * session 28 counts its uncaptured rest in amount_refunded (Stripe did
   * before API 2025-03-31.basil), which tp_charge_released takes off. */
  int64_t refunded = json_integer_value(json_object_get(ch, "amount_refunded")) - tp_charge_released(ch);
  /* The charge lock is held until the outcome commits, so no other refund
   * of this charge is in flight. */
  int64_t remaining = captured - refunded;
  if (remaining <= 0) {
    snprintf(msg, sizeof msg, "Charge %.64s has already been refunded.", chid);
    tp_reply_error(r, TP_ERR_CHARGE_ALREADY_REFUNDED, "charge", msg);
    goto fail;
  }
  int64_t amount = remaining;
  if (tp_param_int(r->params, "amount", &amount)) {
    if (amount < 1) {
      tp_reply_error(r, TP_ERR_AMOUNT_TOO_SMALL, "amount", "Refund amount must be positive.");
      goto fail;
    }
    if (!tp_check_card_amount(r, amount, tp_currency_find(json_string_value(json_object_get(ch, "currency"))),
                              "amount"))
      goto fail;
    if (amount > remaining) {
      const struct tp_currency *cur = tp_currency_find(json_string_value(json_object_get(ch, "currency")));
      char want[48], left[48];
      tp_amount_display(want, sizeof want, amount, cur);
      tp_amount_display(left, sizeof left, remaining, cur);
      /* Stripe's words differ by whether anything was refunded before. */
      snprintf(msg, sizeof msg, "Refund amount (%s) is greater than %s (%s)", want,
               refunded > 0 ? "unrefunded amount on charge" : "charge amount", left);
      tp_reply_error(r, TP_ERR_REFUND_AMOUNT_TOO_LARGE, "amount", msg);
      goto fail;
    }
  }
  if (!pi) {
    const char *pid = json_string_value(json_object_get(ch, "payment_intent"));
    pi = pid ? tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, pid) : NULL;
  }
  run_refund(r, pi, ch, amount, chid, "refund", TP_PROC_REFUND, tp_outcome_refund, reply_charge);
  return;
fail:
  json_decref(pi);
  json_decref(ch);
  tp_lock_release(chid);
}

void tp_h_refund_create(struct tp_req *r)
{
  refund_create(r, NULL, false);
}

/* POST /v1/charges/{id}/refunds: a refund of the path's charge, the refund
 * answered. */
void tp_h_charge_refund_create(struct tp_req *r)
{
  refund_create(r, r->path_id, false);
}

/* POST /v1/charges/{id}/refund (Stripe's older "refund a charge"): the same,
 * the charge answered. */
void tp_h_charge_refund(struct tp_req *r)
{
  refund_create(r, r->path_id, true);
}

void tp_h_refund_retrieve(struct tp_req *r)
{
  tp_retrieve(r, TP_K_REFUND, "refund");
}

/* POST /v1/refunds/{id}/cancel. Stripe cancels only a refund that waits for
 * the customer (requires_action); a card refund here is pending while its
 * processor call runs, then succeeded or failed, so none ever can be. */
void tp_h_refund_cancel(struct tp_req *r)
{
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  json_t *re = tp_load_path(r, TP_K_REFUND, "refund");
  if (!re)
    return;
  const char *st = json_string_value(json_object_get(re, "status"));
  char msg[200];
  snprintf(msg, sizeof msg, "Only a refund with a status of requires_action can be canceled; this refund's status is %s.",
           st ? st : "unknown");
  tp_reply_error(r, TP_ERR_REFUND_NOT_CANCELABLE, NULL, msg);
  json_decref(re);
}

/* POST /v1/refunds/{id}: metadata of refund re_id (of charge ch_only when
 * given: the Charges API's nested route, where another charge's refund is
 * missing). The refund's processor call and its recovery write the refund
 * under its charge's lock (the refund flow's), so the update takes that
 * lock as well as the refund's and reads the refund under both: with the
 * refund's alone, an update that read it pending could commit after the
 * outcome and put it back to pending for good. */
static void refund_update(struct tp_req *r, const char *re_id, const char *ch_only)
{
  if (!tp_check_params(r, spec_update))
    return;
  json_t *re = tp_store_get_json(&tp_app.store, TP_K_REFUND, r->merchant.id, re_id);
  const char *of = json_string_value(json_object_get(re, "charge"));
  if (!re || (ch_only && (!of || strcmp(of, ch_only) != 0))) {
    json_decref(re);
    tp_reply_missing(r, "refund", re_id, "id");
    return;
  }
  /* and its PaymentIntent's: the release of an uncaptured charge writes
   * the refund under that lock (release_by_refund) */
  char ch_lock[TP_ID_MAX], pi_lock[TP_ID_MAX];
  tp_scopy(ch_lock, sizeof ch_lock, of ?: "");
  tp_scopy(pi_lock, sizeof pi_lock, json_string_value(json_object_get(re, "payment_intent")) ?: "");
  json_decref(re);
  const char *want[3] = {ch_lock, pi_lock, re_id}, *locks[3];
  size_t nlocks = 0;
  for (size_t i = 0; i < 3; i++) {
    if (!want[i][0])
      continue;
    if (!tp_lock_try(want[i])) {
      while (nlocks)
        tp_lock_release(locks[--nlocks]);
      tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
      return;
    }
    locks[nlocks++] = want[i];
  }
  re = tp_store_get_json(&tp_app.store, TP_K_REFUND, r->merchant.id, re_id);
  if (!re) {
    tp_reply_missing(r, "refund", re_id, "id");
    for (size_t i = 0; i < nlocks; i++)
      tp_lock_release(locks[i]);
    return;
  }
  json_t *before = json_deep_copy(re);
  json_t *md = json_object_get(r->params, "metadata");
  if (md && !tp_metadata_update(r, re, md)) {
    json_decref(before);
    json_decref(re);
    for (size_t i = 0; i < nlocks; i++)
      tp_lock_release(locks[i]);
    return;
  }
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put(cs, TP_K_REFUND, r->merchant.id, re);
  /* Stripe: refund.updated for some payment methods, charge.refund.updated
   * for every refund update. A refund still pending has not been announced
   * (refund.created comes with its processor's outcome, showing this
   * change): an update of it before would be the first its listeners hear. */
  const char *st = json_string_value(json_object_get(re, "status"));
  if (!st || strcmp(st, "pending") != 0) {
    tp_emit_update(cs, r, r->merchant.id, "refund.updated", before, re);
    tp_emit_update(cs, r, r->merchant.id, "charge.refund.updated", before, re);
  }
  json_decref(before);
  tp_expand(r, re, NULL);
  tp_reply_json(r, 200, re);
  tp_commit_and_reply_locks(r, cs, locks, nlocks);
}

void tp_h_refund_update(struct tp_req *r)
{
  refund_update(r, r->path_id, NULL);
}

/* POST /v1/charges/{id}/refunds/{refund}. */
void tp_h_charge_refund_update(struct tp_req *r)
{
  refund_update(r, r->path_sub, r->path_id);
}

/* A page of refunds, newest first, of one PaymentIntent and/or charge when
 * given (NULL or "" for any). */
static void reply_refunds(struct tp_req *r, const char *pi, const char *ch, const char *url)
{
  struct tp_list_query q;
  tp_list_query_init(&q, TP_K_REFUND, r->merchant.id);
  if (!tp_list_params(r, &q))
    return;
  if (pi && *pi) {
    q.col_name = "payment_intent";
    q.col_value = pi;
  }
  if (ch && *ch) {
    q.col2_name = "charge";
    q.col2_value = ch;
  }
  tp_reply_list(r, &q, url);
}

void tp_h_refund_list(struct tp_req *r)
{
  if (tp_check_params(r, spec_list))
    reply_refunds(r, tp_pstr(r->params, "payment_intent"), tp_pstr(r->params, "charge"), "/v1/refunds");
}

/* GET /v1/charges/{id}/refunds, the url of a charge's expanded `refunds`:
 * GET /v1/refunds?charge= under that url, 404 for a charge this merchant
 * does not have. */
void tp_h_charge_refund_list(struct tp_req *r)
{
  static const struct tp_pspec spec[] = {
    {"limit", TP_P_INT, NULL, NULL},           {"starting_after", TP_P_STRING, NULL, NULL},
    {"ending_before", TP_P_STRING, NULL, NULL}, {"expand", TP_P_STRLIST, NULL, NULL},
    {NULL, 0, NULL, NULL},
  };
  if (!tp_check_params(r, spec) || !tp_live_or_missing(r, TP_K_CHARGE, r->path_id, "charge", "id"))
    return;
  char url[128];
  snprintf(url, sizeof url, "/v1/charges/%.64s/refunds", r->path_id);
  reply_refunds(r, NULL, r->path_id, url);
}

/* GET /v1/charges/{id}/refunds/{refund}: one of the charge's refunds; a
 * refund of another charge is missing here. */
void tp_h_charge_refund_retrieve(struct tp_req *r)
{
  if (!tp_check_params(r, tp_spec_expand_only) || !tp_live_or_missing(r, TP_K_CHARGE, r->path_id, "charge", "id"))
    return;
  json_t *re = tp_store_get_json(&tp_app.store, TP_K_REFUND, r->merchant.id, r->path_sub);
  const char *ch = json_string_value(json_object_get(re, "charge"));
  if (!re || !ch || strcmp(ch, r->path_id) != 0) {
    json_decref(re);
    tp_reply_missing(r, "refund", r->path_sub, "id");
    return;
  }
  if (!tp_expand(r, re, NULL)) {
    json_decref(re);
    return;
  }
  tp_reply_json(r, 200, re);
}
