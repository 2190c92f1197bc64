/* /v1/disputes: retrieve, list, update (evidence, metadata, submit), close.
 *
 * A dispute is the cardholder's: a chargeback (the network takes the
 * amount back from the merchant at once, a balanced ledger adjustment and a
 * balance transaction of type "adjustment") or an inquiry (a retrieval
 * request: no money moves). No connector reports disputes yet, so they come
 * from Stripe's test cards (connectors/sandbox.c, tp_test_card_dispute): the
 * charge is marked when authorized and the dispute opened in the commit that
 * captures it (tp_dispute_open). Its statuses, as Stripe's:
 *   needs_response -> under_review (evidence submitted) -> won | lost
 *   warning_needs_response -> warning_under_review -> warning_closed
 * Submitted evidence whose uncategorized_text is "winning_evidence" or
 * "losing_evidence" decides the dispute at once, as in Stripe's test mode
 * (a won chargeback gives the money back: a second adjustment), and
 * "escalate_inquiry_evidence" turns an inquiry into a chargeback;
 * otherwise it stays under review. A fraud chargeback on a payment
 * authenticated by 3-D Secure is not opened (liability shift). close
 * accepts the dispute: lost. A chargeback's charge cannot be refunded
 * (refunds.c). */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "config.h"
#include "core/currency.h"
#include "core/payflow.h"
#include "log.h"
#include "jpack.h"

#include <stdio.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define UNSUPPORTED(name, why) {name, TP_P_UNSUPPORTED, NULL, why}
#define DISPUTE_RESPONSE_DAYS 7  /* evidence due, counted from the dispute */
#define EVIDENCE_TEXT_MAX 20000   /* Stripe's limit on each text field, in characters */
#define EVIDENCE_TOTAL_MAX 150000 /* ... and on all of them together */

static const char *const why_files[] = {"Turnpike has no Files API: give the evidence as text", NULL};
static const char *const why_enhanced[] = {"Turnpike submits no enhanced evidence (Visa Compelling Evidence 3.0, "
                                           "network compliance)", NULL};
static const char *const why_appeal[] = {"Turnpike has no dispute appeals: a dispute ends won or lost", NULL};
static const char *const submission_methods[] = {"manual", "prefer_manual", "prefer_smart_disputes",
                                                 "smart_disputes", NULL};

/* The evidence Stripe takes as text. */
static const char *const evidence_text[] = {
    "access_activity_log", "billing_address", "cancellation_policy_disclosure", "cancellation_rebuttal",
    "customer_email_address", "customer_name", "customer_purchase_ip", "duplicate_charge_explanation",
    "duplicate_charge_id", "product_description", "refund_policy_disclosure", "refund_refusal_explanation",
    "service_date", "shipping_address", "shipping_carrier", "shipping_date", "shipping_tracking_number",
    "uncategorized_text", NULL};
/* ... and as uploaded files. */
static const char *const evidence_files[] = {
    "cancellation_policy", "customer_communication", "customer_signature", "duplicate_charge_documentation",
    "receipt", "refund_policy", "service_documentation", "shipping_documentation", "uncategorized_file", NULL};

#define S(name) {name, TP_P_TEXT, NULL, NULL}
#define F(name) UNSUPPORTED(name, why_files)
static const struct tp_pspec spec_evidence[] = {
  S("access_activity_log"), S("billing_address"), S("cancellation_policy_disclosure"), S("cancellation_rebuttal"),
  S("customer_email_address"), S("customer_name"), S("customer_purchase_ip"), S("duplicate_charge_explanation"),
  S("duplicate_charge_id"), S("product_description"), S("refund_policy_disclosure"),
  S("refund_refusal_explanation"), S("service_date"), S("shipping_address"), S("shipping_carrier"),
  S("shipping_date"), S("shipping_tracking_number"), S("uncategorized_text"),
  F("cancellation_policy"), F("customer_communication"), F("customer_signature"),
  F("duplicate_charge_documentation"), F("receipt"), F("refund_policy"), F("service_documentation"),
  F("shipping_documentation"), F("uncategorized_file"),
  UNSUPPORTED("enhanced_evidence", why_enhanced),
  UNSUPPORTED("appeal", why_appeal),
  {NULL, 0, NULL, NULL},
};
#undef S
#undef F

static const struct tp_pspec spec_update[] = {
  {"evidence", TP_P_OBJECT, spec_evidence, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  {"submit", TP_P_BOOL, NULL, NULL},
  {"intended_submission_method", TP_P_ENUM, NULL, submission_methods},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_list[] = {
  TP_SPEC_PAGING,
  {"charge", TP_P_STRING, NULL, NULL},
  {"payment_intent", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

/* The network's reason code for a reason, by brand (Visa's 10.4 "other
 * fraud, card-absent", 13.1 "merchandise not received"; Mastercard's 4837
 * and 4855). */
static const char *reason_code(const char *reason, const char *brand)
{
  bool mc = brand && strcmp(brand, "mastercard") == 0;
  if (strcmp(reason, "product_not_received") == 0)
    return mc ? "4855" : "13.1";
  return mc ? "4837" : "10.4";
}

/* Characters (code points) of a string value; 0 for anything else. */
static size_t chars(const json_t *v)
{
  const unsigned char *p = (const unsigned char *)json_string_value(v);
  size_t n = 0;
  for (; p && *p; p++)
    n += (*p & 0xC0) != 0x80;
  return n;
}

static json_t *evidence_new(void)
{
  json_t *e = json_object();
  for (int i = 0; evidence_text[i]; i++)
    json_object_set_new(e, evidence_text[i], json_null());
  for (int i = 0; evidence_files[i]; i++)
    json_object_set_new(e, evidence_files[i], json_null());
  json_object_set_new(e, "enhanced_evidence", json_object());
  return e;
}

/* The dispute fee the network charges for a chargeback, in minor units of
 * currency: [disputes] fee.CUR, else [disputes] fee, in the currency's
 * major units ("15" is 15.00 USD, 15 JPY, 15.000 KWD; Stripe's is 15 USD).
 * 0 when set to 0, or when the setting is not an amount in that currency
 * (logged). */
static int64_t dispute_fee(const char *currency)
{
  const struct tp_currency *c = tp_currency_find(currency);
  char key[16];
  snprintf(key, sizeof key, "fee.%.3s", currency ? currency : "");
  const char *v = tp_config_get("disputes", key);
  if (!v)
    v = tp_config_get("disputes", "fee");
  if (!v)
    v = "15";
  int64_t fee = 0;
  if (!c || tp_amount_parse(v, c, &fee) != 0 || fee < 0 || fee > TP_AMOUNT_MAX) {
    tp_log(TP_LOG_WARN, "dispute_fee_invalid", "{s:s, s:s}", "currency", currency ? currency : "", "value", v);
    return 0;
  }
  return fee;
}

static void fee_key_ok(const char *key, const char *value, void *arg)
{
  bool *ok = arg;
  /* "fee" applies to every currency, so it must be one in each (a whole
   * number: 15.50 is no amount of yen); "fee.CUR" to its own. */
  const char *code = strncasecmp(key, "fee.", 4) == 0 ? key + 4 : strcasecmp(key, "fee") == 0 ? "jpy" : NULL;
  const struct tp_currency *c = code ? tp_currency_find(code) : NULL;
  int64_t fee, most = 0;
  /* and an amount in the currency of most decimals too (CLF, 4), where it
   * is the most minor units */
  bool every = strcasecmp(key, "fee") == 0;
  if (!c || tp_amount_parse(value, c, &fee) != 0 || fee < 0 || fee > TP_AMOUNT_MAX ||
      (every && (tp_amount_parse(value, tp_currency_find("clf"), &most) != 0 || most > TP_AMOUNT_MAX))) {
    tp_log(TP_LOG_ERROR, "config_invalid", "{s:s, s:s, s:s, s:s}", "section", "disputes", "key", key, "value", value,
           "why", !(code && c) ? "not fee or fee.CUR of a currency"
                  : every     ? "not an amount in every currency (fee applies to every currency: a whole number)"
                              : "not an amount in that currency");
    *ok = false;
  }
}

bool tp_disputes_config_ok(void)
{
  bool ok = true;
  tp_config_keys("disputes", "fee", fee_key_ok, &ok);
  /* and the environment's, which tp_config_get prefers to the file's (a
   * bad TURNPIKE_DISPUTES_FEE started and made every chargeback free), and
   * TURNPIKE_DISPUTES_FEE_CUR, the environment's fee.CUR */
  for (char **e = environ; *e; e++) {
    static const char pre[] = "TURNPIKE_DISPUTES_FEE";
    if (strncmp(*e, pre, sizeof pre - 1) != 0)
      continue;
    const char *rest = *e + sizeof pre - 1, *eq = strchr(rest, '=');
    if (!eq || (rest != eq && (eq - rest != 4 || rest[0] != '_')))
      continue; /* TURNPIKE_DISPUTES_FEE=... or TURNPIKE_DISPUTES_FEE_XYZ=... */
    char key[16] = "fee";
    if (rest != eq && !(isupper((unsigned char)rest[1]) && isupper((unsigned char)rest[2]) &&
                        isupper((unsigned char)rest[3]))) {
      /* the getter reads TURNPIKE_DISPUTES_FEE_USD only: _usd was ignored */
      tp_log(TP_LOG_ERROR, "config_invalid", "{s:s, s:s}", "variable", *e, "why",
             "the currency of TURNPIKE_DISPUTES_FEE_CUR is written in upper case");
      ok = false;
      continue;
    }
    if (rest != eq)
      snprintf(key, sizeof key, "fee.%c%c%c", tolower((unsigned char)rest[1]), tolower((unsigned char)rest[2]),
               tolower((unsigned char)rest[3]));
    if (eq[1])
      fee_key_ok(key, eq + 1, &ok);
  }
  return ok;
}

/* Move a chargeback's amount: out of the merchant's balance with the
 * dispute fee (sign -1), or back in with the fee given back (+1, the fee
 * of the withdrawal), as a balanced ledger transaction and its balance
 * transaction, listed on the dispute. */
static void adjust(struct tp_cs *cs, const char *merchant, json_t *dp, const char *charge, const char *processor,
                   int sign, int64_t amount)
{
  const char *cur = json_string_value(json_object_get(dp, "currency"));
  json_t *bts = json_object_get(dp, "balance_transactions");
  /* A withdrawal of amount, with the fee; a reversal gives back what the
   * withdrawal (the first balance transaction) took. */
  const json_t *taken = json_array_get(bts, 0);
  int64_t fee = sign < 0 ? dispute_fee(cur) : -json_integer_value(json_object_get(taken, "fee"));
  amount = sign < 0 ? -amount : -json_integer_value(json_object_get(taken, "amount"));
  char txn[TP_ID_MAX], desc[96];
  snprintf(desc, sizeof desc, "Chargeback %s for %.64s", sign < 0 ? "withdrawal" : "reversal", charge);
  json_t *bt = NULL;
  const struct tp_posting po = {.merchant = merchant, .processor = processor, .currency = cur,
                                .amount = amount, .fee = fee,
                                .source = json_string_value(json_object_get(dp, "id")), .type = "adjustment",
                                .description = desc, .fee_description = "Dispute fee"};
  tp_ledger_post(cs, &po, txn, &bt);
  if (bt)
    json_array_append_new(bts, bt);
}

/* An early fraud warning on captured charge ch (Stripe's test card
 * 4000000000005423): the issuer reports likely fraud, no money moves and
 * nothing is disputed; the warning is actionable until the charge is
 * refunded in full (tp_efw_settle). ch names it in turnpike.efw. */
static void efw_open(struct tp_cs *cs, const char *merchant, json_t *ch, json_t *turn)
{
  char id[TP_ID_MAX];
  tp_id_new(id, "issfr");
  json_t *w = tp_pack("{s:s, s:s, s:b, s:O, s:I, s:s, s:b, s:O?}", "id", id, "object", "radar.early_fraud_warning",
                      "actionable", 1, "charge", json_object_get(ch, "id"), "created", (json_int_t)tp_now(),
                      "fraud_type", "misc", "livemode", 0, "payment_intent", json_object_get(ch, "payment_intent"));
  if (!w)
    abort();
  tp_put_emit(cs, NULL, merchant, TP_K_EARLY_FRAUD_WARNING, "radar.early_fraud_warning.created", w);
  json_decref(w);
  json_object_del(turn, "dispute");
  json_object_set_new(turn, "efw", json_string(id));
  tp_cs_put(cs, TP_K_CHARGE, merchant, ch);
}

void tp_efw_settle(struct tp_cs *cs, const struct tp_req *r, const char *merchant, const json_t *ch)
{
  const char *id = json_string_value(json_object_get(json_object_get(ch, "turnpike"), "efw"));
  json_t *w = id ? tp_store_get_json(&tp_app.store, TP_K_EARLY_FRAUD_WARNING, merchant, id) : NULL;
  if (w && json_is_true(json_object_get(w, "actionable"))) {
    json_t *before = json_deep_copy(w);
    json_object_set_new(w, "actionable", json_false());
    tp_cs_put(cs, TP_K_EARLY_FRAUD_WARNING, merchant, w);
    tp_emit_update(cs, r, merchant, "radar.early_fraud_warning.updated", before, w);
    json_decref(before);
  }
  json_decref(w);
}

void tp_dispute_open(struct tp_cs *cs, const char *merchant, json_t *ch)
{
  json_t *turn = json_object_get(ch, "turnpike");
  const char *kind = json_string_value(json_object_get(turn, "dispute"));
  if (!kind)
    return;
  if (strcmp(kind, "early_fraud_warning") == 0) {
    efw_open(cs, merchant, ch, turn);
    return;
  }
  bool inquiry = strcmp(kind, "inquiry") == 0;
  const char *reason = inquiry ? "fraudulent" : kind;
  const json_t *card = json_object_get(json_object_get(ch, "payment_method_details"), "card");
  const char *tds = json_string_value(json_object_get(json_object_get(card, "three_d_secure"), "result"));
  /* Liability shift: a fraud chargeback on a payment the cardholder
   * authenticated by 3-D Secure is the issuer's to bear, and Stripe's test
   * card for it (4000000000000259) says so: "protected after 3D Secure
   * authentication". No dispute, no money withdrawn. */
  if (!inquiry && strcmp(reason, "fraudulent") == 0 && tds && strcmp(tds, "authenticated") == 0)
    return;
  const char *brand = json_string_value(json_object_get(card, "brand"));
  char id[TP_ID_MAX];
  tp_id_new(id, "dp");
  int64_t now = tp_now();
  json_t *dp = tp_pack("{s:s, s:s, s:O, s:[], s:O, s:I, s:O, s:[], s:o, s:{s:I, s:{}, s:b, s:b, s:i, s:s}, "
                       "s:n, s:b, s:b, s:{}, s:s, s:O?, s:{s:{s:s, s:s, s:s, s:s}, s:s}, s:s, s:s}",
                       "id", id, "object", "dispute", "amount", json_object_get(ch, "amount_captured"),
                       "balance_transactions", "charge", json_object_get(ch, "id"), "created", (json_int_t)now,
                       "currency", json_object_get(ch, "currency"), "enhanced_eligibility_types", "evidence",
                       evidence_new(), "evidence_details", "due_by",
                       (json_int_t)(now + DISPUTE_RESPONSE_DAYS * 86400), "enhanced_eligibility", "has_evidence", 0,
                       "past_due", 0, "submission_count", 0, "submission_method", "not_submitted",
                       "intended_submission_method", "is_charge_refundable", inquiry, "livemode", 0, "metadata",
                       "network_reason_code", reason_code(reason, brand), "payment_intent",
                       json_object_get(ch, "payment_intent"), "payment_method_details", "card", "brand",
                       brand ? brand : "unknown", "case_type", inquiry ? "inquiry" : "chargeback", "network",
                       brand ? brand : "unknown", "network_reason_code", reason_code(reason, brand), "type", "card",
                       "reason", reason, "status", inquiry ? "warning_needs_response" : "needs_response");
  if (!dp)
    abort();
  tp_put_emit(cs, NULL, merchant, TP_K_DISPUTE, "charge.dispute.created", dp);
  if (!inquiry) {
    adjust(cs, merchant, dp, json_string_value(json_object_get(ch, "id")),
           json_string_value(json_object_get(turn, "processor")), -1,
           json_integer_value(json_object_get(dp, "amount")));
    tp_put_emit(cs, NULL, merchant, TP_K_DISPUTE, "charge.dispute.funds_withdrawn", dp);
  }
  json_decref(dp);
  json_object_del(turn, "dispute");
  json_object_set_new(ch, "disputed", json_true());
  tp_cs_put(cs, TP_K_CHARGE, merchant, ch);
}


void tp_h_dispute_retrieve(struct tp_req *r)
{
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  tp_retrieve(r, TP_K_DISPUTE, "dispute");
}

void tp_h_dispute_list(struct tp_req *r)
{
  tp_reply_list_by(r, spec_list, TP_K_DISPUTE, "/v1/disputes");
}

/* GET /v1/radar/early_fraud_warnings/{id} */
void tp_h_efw_retrieve(struct tp_req *r)
{
  tp_retrieve(r, TP_K_EARLY_FRAUD_WARNING, "early fraud warning");
}

/* GET /v1/radar/early_fraud_warnings (by charge, payment_intent) */
void tp_h_efw_list(struct tp_req *r)
{
  tp_reply_list_by(r, spec_list, TP_K_EARLY_FRAUD_WARNING, "/v1/radar/early_fraud_warnings");
}

/* The dispute under its lock, and the processor of its charge; NULL after
 * replying. */
static json_t *load_locked(struct tp_req *r, char processor[TP_ID_MAX])
{
  if (!tp_lock_try(r->path_id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return NULL;
  }
  json_t *dp = tp_store_get_json(&tp_app.store, TP_K_DISPUTE, r->merchant.id, r->path_id);
  if (!dp) {
    tp_lock_release(r->path_id);
    tp_reply_no_such(r, "dispute", "dispute");
    return NULL;
  }
  json_t *ch = tp_store_get_json(&tp_app.store, TP_K_CHARGE, r->merchant.id,
                                 json_string_value(json_object_get(dp, "charge")));
  tp_scopy(processor, TP_ID_MAX,
           json_string_value(json_object_get(json_object_get(ch, "turnpike"), "processor")) ?: "sandbox");
  json_decref(ch);
  return dp;
}

static bool open_status(const char *st)
{
  return strcmp(st, "needs_response") == 0 || strcmp(st, "warning_needs_response") == 0;
}

/* Decide dp: won (a chargeback's money comes back) or lost; an inquiry
 * just closes. Events into cs. */
static void decide(struct tp_req *r, struct tp_cs *cs, json_t *dp, const char *processor, bool won)
{
  bool inquiry = strncmp(json_string_value(json_object_get(dp, "status")), "warning_", 8) == 0;
  json_object_set_new(dp, "status", json_string(inquiry ? "warning_closed" : won ? "won" : "lost"));
  if (!inquiry && won && json_array_size(json_object_get(dp, "balance_transactions")) > 0) {
    adjust(cs, r->merchant.id, dp, json_string_value(json_object_get(dp, "charge")), processor, +1, 0);
    tp_emit(cs, r, r->merchant.id, "charge.dispute.funds_reinstated", dp);
  }
  tp_emit(cs, r, r->merchant.id, "charge.dispute.closed", dp);
}

/* Stripe's test mode: an inquiry answered with "escalate_inquiry_evidence"
 * becomes a chargeback, which takes the money and the fee; it then needs a
 * response of its own and its charge can no longer be refunded. */
static void escalate(struct tp_req *r, struct tp_cs *cs, json_t *dp, const char *processor)
{
  /* What the cardholder has not had back yet: after a refund Stripe takes
   * no more ("after the payment has been fully refunded, no further funds
   * are withdrawn"), and a fraud claim on a payment the cardholder
   * authenticated is the issuer's (liability shift, as tp_dispute_open).
   * Read under the charge's lock (taken by the caller), which a refund
   * holds until its outcome commits. */
  json_t *ch = tp_store_get_json(&tp_app.store, TP_K_CHARGE, r->merchant.id,
                                 json_string_value(json_object_get(dp, "charge")));
  int64_t left = json_integer_value(json_object_get(ch, "amount_captured")) -
                 json_integer_value(json_object_get(ch, "amount_refunded"));
  int64_t unrefunded = left > 0 ? left : 0;
  const char *tds = json_string_value(json_object_get(
      json_object_get(json_object_get(json_object_get(ch, "payment_method_details"), "card"), "three_d_secure"),
      "result"));
  if (tds && strcmp(tds, "authenticated") == 0)
    left = 0;
  json_decref(ch);
  int64_t take = json_integer_value(json_object_get(dp, "amount"));
  if (take > left)
    take = left > 0 ? left : 0;
  json_t *before = json_deep_copy(dp);
  /* A chargeback is for what the cardholder has not had back: after a
   * partial refund its amount is the rest (the withdrawal's), not the
   * inquiry's (after a full refund nothing is withdrawn and it stays). */
  if (unrefunded > 0 && json_integer_value(json_object_get(dp, "amount")) > unrefunded)
    json_object_set_new(dp, "amount", json_integer(unrefunded));
  json_object_set_new(dp, "status", json_string("needs_response"));
  json_object_set_new(dp, "is_charge_refundable", json_false());
  json_object_set_new(json_object_get(json_object_get(dp, "payment_method_details"), "card"), "case_type",
                      json_string("chargeback"));
  json_object_set_new(json_object_get(dp, "evidence_details"), "due_by",
                      json_integer(tp_now() + DISPUTE_RESPONSE_DAYS * 86400));
  tp_emit_update(cs, r, r->merchant.id, "charge.dispute.updated", before, dp);
  json_decref(before);
  if (take > 0) {
    adjust(cs, r->merchant.id, dp, json_string_value(json_object_get(dp, "charge")), processor, -1, take);
    tp_emit(cs, r, r->merchant.id, "charge.dispute.funds_withdrawn", dp);
  }
}

void tp_h_dispute_update(struct tp_req *r)
{
  if (!tp_check_params(r, spec_update))
    return;
  char ch_lock[TP_ID_MAX] = ""; /* the charge's, when taken (an inquiry: escalate) */
  char processor[TP_ID_MAX];
  json_t *dp = load_locked(r, processor);
  if (!dp)
    return;
  const char *st = json_string_value(json_object_get(dp, "status"));
  const json_t *ev = json_object_get(r->params, "evidence");
  bool submit = true; /* Stripe: evidence is submitted unless submit=false */
  tp_param_bool(r->params, "submit", &submit);
  if ((ev || json_object_get(r->params, "submit")) && !open_status(st)) {
    char msg[200];
    bool reviewing = strcmp(st, "under_review") == 0 || strcmp(st, "warning_under_review") == 0;
    snprintf(msg, sizeof msg, "This dispute is already %s: its evidence can no longer be changed.",
             reviewing ? "under review" : "closed");
    /* a closed one answers the registry's own code (1087), kept under the
     * Idempotency-Key as a state error (tp_idem_keeps_error) */
    tp_reply_error(r, reviewing ? TP_ERR_PARAMETER_INVALID : TP_ERR_DISPUTE_ALREADY_CLOSED, "evidence", msg);
    goto out;
  }
  /* An inquiry's update may escalate it into a chargeback (escalate), which
   * must not cross a refund of its charge: the refund holds the charge's
   * lock until its outcome commits, and this takes it too. */
  if (strcmp(st, "warning_needs_response") == 0) {
    const char *chid = json_string_value(json_object_get(dp, "charge"));
    if (!chid || !tp_lock_try(chid)) {
      tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
      goto out;
    }
    tp_scopy(ch_lock, sizeof ch_lock, chid);
    /* A refund whose outcome is unknown (its processor call timed out) has
     * let the lock go and is not in amount_refunded yet: what the
     * escalation may take is not known until it settles (as a refund
     * waits for one, refunds.c). */
    const char *pi_id = json_string_value(json_object_get(dp, "payment_intent"));
    if (pi_id && tp_refuse_unsettled(r, pi_id))
      goto out;
  }
  json_t *before = json_deep_copy(dp);
  json_t *evidence = json_object_get(dp, "evidence");
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)(uintptr_t)ev, k, v)
  {
    if (chars(v) > EVIDENCE_TEXT_MAX) {
      char param[80];
      snprintf(param, sizeof param, "evidence[%s]", k);
      tp_reply_error(r, TP_ERR_PARAMETER_TOO_LONG, param, NULL);
      json_decref(before);
      goto out;
    }
    json_object_set_new(evidence, k, tp_unset(v) ? json_null() : json_string(json_string_value(v)));
  }
  size_t total = 0;
  json_object_foreach(evidence, k, v) total += chars(v);
  if (total > EVIDENCE_TOTAL_MAX) {
    tp_reply_error(r, TP_ERR_PARAMETER_TOO_LONG, "evidence",
                   "The evidence is too long: its text fields may hold 150,000 characters in all.");
    json_decref(before);
    goto out;
  }
  if ((v = json_object_get(r->params, "metadata")) && !tp_metadata_update(r, dp, v)) {
    json_decref(before);
    goto out;
  }
  const char *ism = tp_pstr(r->params, "intended_submission_method");
  if (ism && *ism)
    json_object_set_new(dp, "intended_submission_method", json_string(ism));
  json_t *details = json_object_get(dp, "evidence_details");
  bool has = false;
  json_object_foreach(evidence, k, v) has = has || json_is_string(v);
  json_object_set_new(details, "has_evidence", json_boolean(has));
  struct tp_cs *cs = tp_cs_new();
  bool inquiry = strcmp(st, "warning_needs_response") == 0;
  if (open_status(st) && submit && (ev || json_object_get(r->params, "submit"))) {
    json_object_set_new(dp, "status", json_string(inquiry ? "warning_under_review" : "under_review"));
    json_object_set_new(details, "submission_count",
                        json_integer(json_integer_value(json_object_get(details, "submission_count")) + 1));
    json_object_set_new(details, "submission_method", json_string("manual"));
    /* Stripe: "whether the last evidence submission was submitted past
     * the due date" (it is taken, its delivery not guaranteed) */
    const json_t *due = json_object_get(details, "due_by");
    json_object_set_new(details, "past_due", json_boolean(json_is_integer(due) && tp_now() > json_integer_value(due)));
    tp_emit_update(cs, r, r->merchant.id, "charge.dispute.updated", before, dp);
    /* Stripe's test mode decides on these words at once. */
    const char *text = json_string_value(json_object_get(evidence, "uncategorized_text"));
    if (text && (strcmp(text, "winning_evidence") == 0 || strcmp(text, "losing_evidence") == 0))
      decide(r, cs, dp, processor, strcmp(text, "winning_evidence") == 0);
    else if (text && inquiry && strcmp(text, "escalate_inquiry_evidence") == 0)
      escalate(r, cs, dp, processor);
  } else if (!json_equal(before, dp)) {
    tp_emit_update(cs, r, r->merchant.id, "charge.dispute.updated", before, dp);
  }
  json_decref(before);
  tp_cs_put(cs, TP_K_DISPUTE, r->merchant.id, dp);
  const char *locks[2] = {r->path_id, ch_lock};
  tp_reply_expanded_locks(r, cs, dp, locks, 2);
  return;
out:
  json_decref(dp);
  tp_lock_release(r->path_id);
  if (ch_lock[0])
    tp_lock_release(ch_lock);
}

void tp_h_dispute_close(struct tp_req *r)
{
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  char processor[TP_ID_MAX];
  json_t *dp = load_locked(r, processor);
  if (!dp)
    return;
  const char *st = json_string_value(json_object_get(dp, "status"));
  if (!open_status(st) && strcmp(st, "under_review") != 0 && strcmp(st, "warning_under_review") != 0) {
    char msg[200];
    snprintf(msg, sizeof msg, "This dispute is already closed (%s).", st);
    tp_reply_error(r, TP_ERR_DISPUTE_ALREADY_CLOSED, NULL, msg);
    json_decref(dp);
    tp_lock_release(r->path_id);
    return;
  }
  struct tp_cs *cs = tp_cs_new();
  decide(r, cs, dp, processor, false);
  tp_cs_put(cs, TP_K_DISPUTE, r->merchant.id, dp);
  tp_reply_expanded_unlock(r, cs, dp, r->path_id);
}

bool tp_charge_dispute_blocks_refund(const char *merchant, const char *charge_id)
{
  struct tp_list_query q;
  tp_list_query_init(&q, TP_K_DISPUTE, merchant);
  q.col_name = "charge";
  q.col_value = charge_id;
  q.limit = 100;
  bool has_more = false;
  json_t *list = tp_app.store.ops->list(tp_app.store.cls, &q, &has_more);
  bool blocks = false;
  size_t i;
  json_t *dp;
  json_array_foreach(list, i, dp) blocks = blocks || json_is_false(json_object_get(dp, "is_charge_refundable"));
  json_decref(list);
  return blocks;
}
