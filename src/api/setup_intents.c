/* /v1/setup_intents: create, retrieve, update, confirm, cancel, list.
 *
 * A SetupIntent saves a card for later payments without charging it. Its
 * confirmation checks the card as a payment's does, asks for 3-D Secure
 * where the issuer wants it on a setup (the test cards of
 * connectors/sandbox.c, asked on-session) or the SetupIntent's
 * request_three_d_secure does (any, challenge), then has the issuer verify
 * the card (the same test-card table as the sandbox and the simulator; no
 * connector sends an account-verification message yet), and on success
 * saves the PaymentMethod to the SetupIntent's customer and, when it was
 * authenticated, records that for later off-session payments
 * (turnpike.off_session_authenticated, as a payment with
 * setup_future_usage does: payflow.c). Statuses:
 *   requires_payment_method -> requires_confirmation -> (requires_action) ->
 *   succeeded; a failed verification or challenge returns to
 *   requires_payment_method with last_setup_error; an open one -> canceled. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "connectors/connector.h"
#include "core/payflow.h"
#include "jpack.h"
#include "jsonw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UNSUPPORTED(name, why) {name, TP_P_UNSUPPORTED, NULL, why}
#define SI_DESCRIPTION_MAX 1000

static const char *const usages[] = {"off_session", "on_session", NULL};
static const char *const cancel_reasons[] = {"abandoned", "duplicate", "requested_by_customer", NULL};
static const char *const three_ds_requests[] = {"automatic", "any", "challenge", NULL};
static const char *const allow_redirects[] = {"always", "never", NULL};
static const char *const directions[] = {"inbound", "outbound", NULL};

static const struct tp_pspec spec_pmo_card[] = {
  {"request_three_d_secure", TP_P_ENUM, NULL, three_ds_requests},
  {"network", TP_P_ENUM, NULL, tp_card_networks},
  UNSUPPORTED("mandate_options", tp_why_mandates),
  UNSUPPORTED("moto", tp_why_card_option),
  UNSUPPORTED("setup_credential_usage", tp_why_card_option),
  UNSUPPORTED("three_d_secure", tp_why_external_3ds),
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_pmo[] = {
  {"card", TP_P_OBJECT, spec_pmo_card, NULL},
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_apm[] = {
  {"enabled", TP_P_BOOL, NULL, NULL},
  {"allow_redirects", TP_P_ENUM, NULL, allow_redirects},
  {NULL, 0, NULL, NULL},
};

/* What create and update take. */
#define SI_COMMON                                                                                        \
  {"customer", TP_P_STRING, NULL, NULL}, {"description", TP_P_STRING, NULL, NULL},                     \
  {"metadata", TP_P_METADATA, NULL, NULL}, {"payment_method", TP_P_STRING, NULL, NULL},                \
  {"payment_method_data", TP_P_OBJECT, tp_spec_pmd, NULL},                                             \
  {"payment_method_options", TP_P_OBJECT, spec_pmo, NULL},                                             \
  {"payment_method_types", TP_P_STRLIST, NULL, NULL},                                                  \
  {"allowed_payment_method_types", TP_P_STRLIST, NULL, NULL},                                          \
  {"excluded_payment_method_types", TP_P_STRLIST, NULL, NULL},                                         \
  {"flow_directions", TP_P_STRLIST, NULL, NULL}, {"expand", TP_P_STRLIST, NULL, NULL},                  \
  UNSUPPORTED("attach_to_self", tp_why_connect), UNSUPPORTED("customer_account", tp_why_customer_account), \
  UNSUPPORTED("payment_method_configuration", tp_why_pm_configuration)

#define SI_CONFIRMING                                                                                     \
  {"return_url", TP_P_URL, NULL, NULL}, {"use_stripe_sdk", TP_P_BOOL, NULL, NULL},                   \
  UNSUPPORTED("mandate_data", tp_why_mandates), UNSUPPORTED("confirmation_token", tp_why_confirmation_token)

static const struct tp_pspec spec_create[] = {
  SI_COMMON,
  SI_CONFIRMING,
  {"confirm", TP_P_BOOL, NULL, NULL},
  {"usage", TP_P_ENUM, NULL, usages},
  {"automatic_payment_methods", TP_P_OBJECT, spec_apm, NULL},
  UNSUPPORTED("on_behalf_of", tp_why_connect),
  UNSUPPORTED("single_use", tp_why_mandates),
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_update[] = {SI_COMMON, {NULL, 0, NULL, NULL}};
static const struct tp_pspec spec_confirm[] = {
  {"payment_method", TP_P_STRING, NULL, NULL},
  {"payment_method_data", TP_P_OBJECT, tp_spec_pmd, NULL},
  {"payment_method_options", TP_P_OBJECT, spec_pmo, NULL},
  {"allowed_payment_method_types", TP_P_STRLIST, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"client_secret", TP_P_STRING, NULL, NULL},
  SI_CONFIRMING,
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_cancel[] = {
  {"cancellation_reason", TP_P_ENUM, NULL, cancel_reasons},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_retrieve[] = {
  {"client_secret", TP_P_STRING, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_attempts[] = {
  TP_SPEC_PAGING,
  {"setup_intent", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

static const struct tp_pspec spec_list[] = {
  TP_SPEC_PAGING,
  {"customer", TP_P_STRING, NULL, NULL},
  {"payment_method", TP_P_STRING, NULL, NULL},
  UNSUPPORTED("attach_to_self", tp_why_connect),
  UNSUPPORTED("customer_account", tp_why_customer_account),
  {NULL, 0, NULL, NULL},
};

static json_t *si_new(void)
{
  char id[TP_ID_MAX], secret[40], cs[128];
  tp_id_new(id, "seti");
  tp_random_b62(secret, 24);
  snprintf(cs, sizeof cs, "%s_secret_%s", id, secret);
  /* Every key the API version's SetupIntent always has, null where
   * Turnpike has no such feature (Connect, mandates, payment method
   * configurations, setup attempts). */
  json_t *si = tp_pack("{s:s, s:s, s:n, s:n, s:n, s:n, s:s, s:I, s:n, s:n, s:n, s:n, s:n, s:n, s:b, s:n, s:{}, "
                       "s:n, s:n, s:n, s:n, s:{s:{s:n, s:n, s:s}}, s:[s], s:n, s:s, s:s}",
                       "id", id, "object", "setup_intent", "allowed_payment_method_types", "application",
                       "automatic_payment_methods", "cancellation_reason", "client_secret", cs, "created",
                       (json_int_t)tp_now(), "customer", "description", "excluded_payment_method_types",
                       "flow_directions", "last_setup_error", "latest_attempt", "livemode", 0, "mandate", "metadata", "next_action",
                       "on_behalf_of", "payment_method", "payment_method_configuration_details",
                       "payment_method_options", "card", "mandate_options", "network", "request_three_d_secure",
                       "automatic", "payment_method_types", "card", "single_use_mandate", "status",
                       "requires_payment_method", "usage", "off_session");
  if (!si)
    abort();
  return si;
}


/* Stripe's words where it has its own, the SetupIntent in the error (as a
 * PaymentIntent's state errors have theirs: integrations read
 * error.setup_intent.status to tell a retried setup that succeeded). */
static void unexpected_state(struct tp_req *r, const json_t *si, const char *action)
{
  char msg[320];
  const char *st = json_string_value(json_object_get(si, "status"));
  if (!st)
    st = "unknown";
  bool changes_pm = json_object_get(r->params, "payment_method") || json_object_get(r->params, "payment_method_data");
  if (strcmp(st, "succeeded") == 0 && (strcmp(action, "update") == 0 || changes_pm))
    snprintf(msg, sizeof msg, "You cannot update this SetupIntent because it has already succeeded.");
  else if (strcmp(st, "succeeded") == 0 && strcmp(action, "confirm") == 0)
    snprintf(msg, sizeof msg, "You cannot confirm this SetupIntent because it has already succeeded.");
  else if (strcmp(st, "canceled") == 0 && strcmp(action, "cancel") == 0)
    snprintf(msg, sizeof msg, "You cannot cancel this SetupIntent because it is already canceled.");
  else if (strcmp(action, "cancel") == 0)
    snprintf(msg, sizeof msg,
             "You cannot cancel this SetupIntent because it has a status of %s. Only a SetupIntent with one of the "
             "following statuses may be canceled: `requires_payment_method`, `requires_confirmation`, or "
             "`requires_action`.",
             st);
  else
    snprintf(msg, sizeof msg, "You cannot %s this SetupIntent because it has a status of %s.", action, st);
  tp_intent_error(r, "setup_intent", si, TP_ERR_SETUP_INTENT_UNEXPECTED_STATE, NULL, msg);
}

static bool open_status(const json_t *si)
{
  const char *st = json_string_value(json_object_get(si, "status"));
  return st && (strcmp(st, "requires_payment_method") == 0 || strcmp(st, "requires_confirmation") == 0 ||
                strcmp(st, "requires_action") == 0);
}

static bool in_list(const char *v, const char *const *list)
{
  for (; *list; list++)
    if (strcmp(v, *list) == 0)
      return true;
  return false;
}

/* Card is the only payment method type: another one is refused, not
 * dropped; excluding cards leaves nothing. False after replying. */
static bool types_ok(struct tp_req *r, const json_t *params)
{
  static const char *const lists[] = {"payment_method_types", "allowed_payment_method_types",
                                      "excluded_payment_method_types", "flow_directions"};
  for (int l = 0; l < 4; l++) {
    size_t i;
    const json_t *t;
    json_array_foreach(json_object_get(params, lists[l]), i, t)
    {
      const char *type = json_string_value(t);
      bool ok;
      if (l == 3)
        ok = type && in_list(type, directions);
      else if (l == 2)
        ok = type && *type && strcmp(type, "card") != 0;
      else
        ok = type && strcmp(type, "card") == 0;
      if (ok)
        continue;
      char msg[200];
      snprintf(msg, sizeof msg,
               l == 3   ? "Invalid flow_directions: \"%.40s\" is not inbound or outbound."
               : l == 2 ? "Excluding \"%.40s\" leaves no payment method type: Turnpike takes cards only."
                        : "The payment method type \"%.40s\" is invalid: Turnpike takes cards only.",
               type ? type : "");
      tp_reply_error(r, l == 3 ? TP_ERR_PARAMETER_INVALID : TP_ERR_PAYMENT_METHOD_UNSUPPORTED_TYPE, lists[l], msg);
      return false;
    }
  }
  if (tp_utf8_chars(json_string_value(json_object_get(params, "description"))) > SI_DESCRIPTION_MAX) {
    tp_reply_error(r, TP_ERR_PARAMETER_TOO_LONG, "description", NULL);
    return false;
  }
  return true;
}

/* Apply what create and update share to si; the PaymentMethod named or
 * described (created in cs) becomes si's. False after replying. */
static void abandon_attempt(struct tp_req *r, struct tp_cs *cs, const json_t *si);

static bool si_apply(struct tp_req *r, struct tp_cs *cs, json_t *si, bool creating)
{
  const json_t *p = r->params;
  if (!types_ok(r, p))
    return false;
  const char *cus = tp_pstr(p, "customer");
  if (cus && *cus) {
    const char *had = json_string_value(json_object_get(si, "customer"));
    if (had && strcmp(had, cus) != 0 && !creating) {
      tp_reply_error(r, TP_ERR_SETUP_INTENT_INVALID_PARAMETER, "customer",
                     "A SetupIntent's customer cannot be changed once set.");
      return false;
    }
    if (!tp_live_or_missing(r, TP_K_CUSTOMER, cus, "customer", "customer"))
      return false;
    json_object_set_new(si, "customer", json_string(cus));
  }
  if (!tp_set_string(r, si, p, "description", "description", SI_DESCRIPTION_MAX))
    return false;
  json_t *v;
  if ((v = json_object_get(p, "metadata")) && !tp_metadata_update(r, si, v))
    return false;
  static const char *const lists[] = {"allowed_payment_method_types", "excluded_payment_method_types",
                                      "flow_directions"};
  for (int l = 0; l < 3; l++)
    if ((v = json_object_get(p, lists[l])))
      json_object_set_new(si, lists[l], json_is_array(v) ? json_deep_copy(v) : json_null());
  const char *rq = json_string_value(
      json_object_get(json_object_get(json_object_get(p, "payment_method_options"), "card"), "request_three_d_secure"));
  if (rq && *rq)
    json_object_set_new(json_object_get(json_object_get(si, "payment_method_options"), "card"),
                        "request_three_d_secure", json_string(rq));
  if (creating) {
    const char *usage = tp_pstr(p, "usage");
    if (usage && *usage)
      json_object_set_new(si, "usage", json_string(usage));
    if (!tp_apply_apm(r, si, p))
      return false;
  }
  /* The PaymentMethod: by id (checked now, a test id made into one) or
   * described by payment_method_data. */
  const json_t *pmd = json_object_get(p, "payment_method_data");
  const char *pm_id = tp_pstr(p, "payment_method");
  if (json_is_object(pmd) && pm_id && *pm_id) {
    tp_reply_error(r, TP_ERR_PARAMETERS_EXCLUSIVE, "payment_method_data",
                   "You cannot specify both payment_method and payment_method_data.");
    return false;
  }
  json_t *pm = NULL;
  struct tp_card_info ci;
  memset(&ci, 0, sizeof ci);
  char cvc[8] = "";
  if (json_is_object(pmd))
    pm = tp_pm_from_data(r, cs, pmd, &ci, cvc);
  else if (pm_id && *pm_id)
    pm = tp_pm_resolve(r, cs, pm_id, &ci);
  tp_card_wipe(&ci, sizeof ci);
  tp_card_wipe(cvc, sizeof cvc);
  if ((json_is_object(pmd) || (pm_id && *pm_id)) && !pm)
    return false;
  /* Another customer's card is refused when it is set, as on Stripe, not
   * only at confirmation. */
  if (pm && !tp_pm_belongs(r, pm, si, "SetupIntent")) {
    json_decref(pm);
    return false;
  }
  const char *st = json_string_value(json_object_get(si, "status"));
  if (pm) {
    /* Another card while a challenge is out: the challenge was the old
     * card's, so it goes (the new card had inherited its authentication). */
    if (st && strcmp(st, "requires_action") == 0) {
      json_object_set_new(si, "status", json_string("requires_confirmation"));
      json_object_set_new(si, "next_action", json_null());
      abandon_attempt(r, cs, si); /* its attempt with it */
    }
    json_object_set(si, "payment_method", json_object_get(pm, "id"));
    json_decref(pm);
  }
  st = json_string_value(json_object_get(si, "status"));
  if (st && strcmp(st, "requires_payment_method") == 0 && json_is_string(json_object_get(si, "payment_method")))
    json_object_set_new(si, "status", json_string("requires_confirmation"));
  return true;
}

bool tp_si_customer_lock(struct tp_req *r, const json_t *si, char *out)
{
  out[0] = '\0';
  const char *cus = json_string_value(json_object_get(si, "customer"));
  if (!cus || strlen(cus) >= TP_ID_MAX)
    return true;
  if (!tp_lock_try(cus)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL); /* waited out and run again (run_handler) */
    return false;
  }
  tp_scopy(out, TP_ID_MAX, cus);
  return true;
}

/* Save pm to si's customer (unless it has one) and, when authenticated,
 * record that for later off-session payments; into cs when it changed. */
/* A setup verified the card with its issuer: the checks it was given (a
 * CVC, an address line and postal code) are no longer "unchecked" on the
 * PaymentMethod, and its SetupAttempt shows the same (the test card's
 * verdict: connectors/sandbox.c). True if anything changed. */
static bool verified_checks(json_t *pm, const char *pan)
{
  json_t *checks = json_object_get(json_object_get(pm, "card"), "checks");
  if (!json_is_object(checks))
    return false;
  const char *line1, *zip;
  tp_test_card_avs(pan, &line1, &zip);
  const char *const set[][2] = {{"cvc_check", "pass"}, {"address_line1_check", line1},
                                {"address_postal_code_check", zip}};
  bool changed = false;
  for (size_t i = 0; i < sizeof set / sizeof set[0]; i++) {
    const char *now = json_string_value(json_object_get(checks, set[i][0]));
    if (now && strcmp(now, "unchecked") == 0 && strcmp(set[i][1], "unchecked") != 0) {
      json_object_set_new(checks, set[i][0], json_string(set[i][1]));
      changed = true;
    }
  }
  return changed;
}

static void save_pm(struct tp_req *r, struct tp_cs *cs, const json_t *si, json_t *pm, bool authenticated,
                    bool checked)
{
  const char *cus = json_string_value(json_object_get(si, "customer"));
  /* Not to a customer deleted meanwhile, nor a card detached meanwhile
   * (detaching is for good). */
  bool attach = cus && !json_is_string(json_object_get(pm, "customer")) &&
                !json_is_true(json_object_get(json_object_get(pm, "turnpike"), "detached")) &&
                tp_store_live(&tp_app.store, TP_K_CUSTOMER, r->merchant.id, cus) == 1;
  /* set up for off-session payments only by a SetupIntent for them (usage
   * off_session, the default): one for on_session use left the card
   * taking off-session payments without authentication */
  const char *usage = json_string_value(json_object_get(si, "usage"));
  bool mark = authenticated && (!usage || strcmp(usage, "off_session") == 0) &&
              !json_is_true(json_object_get(json_object_get(pm, "turnpike"), "off_session_authenticated"));
  if (mark)
    tp_mark(pm, "off_session_authenticated", json_true());
  if (attach)
    json_object_set_new(pm, "customer", json_string(cus));
  if (attach || mark || checked)
    tp_cs_put(cs, TP_K_PAYMENT_METHOD, r->merchant.id, pm);
  if (attach)
    tp_emit(cs, r, r->merchant.id, "payment_method.attached", pm);
}

/* si's latest attempt, if it still waits for 3-D Secure, is abandoned: a
 * new confirmation or a cancellation replaced it. */
static void abandon_attempt(struct tp_req *r, struct tp_cs *cs, const json_t *si)
{
  const char *id = json_string_value(json_object_get(si, "latest_attempt"));
  json_t *a = id ? tp_store_get_json(&tp_app.store, TP_K_SETUP_ATTEMPT, r->merchant.id, id) : NULL;
  const char *st = json_string_value(json_object_get(a, "status"));
  if (st && strcmp(st, "requires_action") == 0) {
    json_object_set_new(a, "status", json_string("abandoned"));
    tp_cs_put(cs, TP_K_SETUP_ATTEMPT, r->merchant.id, a);
  }
  json_decref(a);
}

json_t *tp_si_attempt(struct tp_req *r, struct tp_cs *cs, const json_t *si, const json_t *pm, const char *status,
                      const json_t *err, bool authenticated)
{
  const char *id = json_string_value(json_object_get(si, "latest_attempt"));
  if (!id)
    return NULL;
  json_t *old = tp_store_get_json(&tp_app.store, TP_K_SETUP_ATTEMPT, r->merchant.id, id);
  json_int_t created = old ? json_integer_value(json_object_get(old, "created")) : (json_int_t)tp_now();
  char tx[37];
  const char *old_tx = json_string_value(json_object_get(
      json_object_get(json_object_get(json_object_get(old, "payment_method_details"), "card"), "three_d_secure"),
      "transaction_id"));
  if (old_tx && strlen(old_tx) == 36)
    memcpy(tx, old_tx, 37); /* the attempt rewritten keeps its authentication's id */
  else
    tp_uuid4(tx); /* the authentication's id, as on a charge (it was null) */
  json_decref(old);
  const json_t *card = json_object_get(pm, "card");
  const char *brand = json_string_value(json_object_get(card, "brand"));
  json_t *tds = authenticated ? tp_pack("{s:s, s:s, s:s, s:n, s:s, s:s}", "authentication_flow", "challenge",
                                        "electronic_commerce_indicator",
                                        brand && strcmp(brand, "mastercard") == 0 ? "02" : "05", "result",
                                        "authenticated", "result_reason", "transaction_id", tx, "version", "2.2.0")
                              : json_null();
  json_t *a = tp_pack("{s:s, s:s, s:n, s:I, s:O?, s:n, s:n, s:b, s:n, s:O, s:{s:{s:O?, s:O?, s:O?, s:O?, "
                      "s:O?, s:O?, s:O?, s:O?, s:O?, s:o, s:n}, s:s}, s:o?, s:O, s:s, s:O}",
                      "id", id, "object", "setup_attempt", "application", "created", created, "customer",
                      json_object_get(si, "customer"), "customer_account", "flow_directions", "livemode", 0,
                      "on_behalf_of", "payment_method", json_object_get(pm, "id"), "payment_method_details", "card",
                      "brand", json_object_get(card, "brand"), "checks", json_object_get(card, "checks"),
                      "country", json_object_get(card, "country"), "exp_month", json_object_get(card, "exp_month"),
                      "exp_year", json_object_get(card, "exp_year"), "fingerprint",
                      json_object_get(card, "fingerprint"), "funding", json_object_get(card, "funding"), "last4",
                      json_object_get(card, "last4"), "network", json_object_get(card, "brand"), "three_d_secure",
                      tds, "wallet", "type", "card", "setup_error", err ? json_deep_copy(err) : NULL, "setup_intent", json_object_get(si, "id"),
                      "status", status, "usage", json_object_get(si, "usage"));
  if (!a)
    abort();
  /* The error as the attempt shows it: without the PaymentMethod in it. */
  json_object_del(json_object_get(a, "setup_error"), "payment_method");
  tp_cs_put(cs, TP_K_SETUP_ATTEMPT, r->merchant.id, a);
  return a;
}

/* si fails with the issuer's decline: back to requires_payment_method. */
static json_t *si_fail(struct tp_req *r, struct tp_cs *cs, json_t *si, json_t *pm, const char *decline,
                       bool authenticated, json_t **attempt)
{
  const struct tp_error_info *ei = tp_error_by_decline_code(decline);
  if (!ei)
    ei = tp_error_by_decline_code("generic_decline");
  json_t *err = tp_error_object((enum tp_err)ei->number, tp_decline_param(ei->code), NULL);
  /* the issuer's check that failed reads fail (Stripe's testing page:
   * "If a CVC number is provided, the cvc_check fails") */
  json_t *checks = json_object_get(json_object_get(pm, "card"), "checks");
  if (strcmp(decline, "incorrect_cvc") == 0 && json_is_string(json_object_get(checks, "cvc_check"))) {
    json_object_set_new(checks, "cvc_check", json_string("fail"));
    tp_cs_put(cs, TP_K_PAYMENT_METHOD, r->merchant.id, pm);
  }
  json_object_set(err, "payment_method", pm);
  json_object_set(si, "last_setup_error", err);
  json_object_set_new(si, "status", json_string("requires_payment_method"));
  json_object_set_new(si, "payment_method", json_null());
  *attempt = tp_si_attempt(r, cs, si, pm, "failed", err, authenticated);
  tp_put_emit(cs, r, r->merchant.id, TP_K_SETUP_INTENT, "setup_intent.setup_failed", si);
  return err;
}

json_t *tp_si_finish(struct tp_req *r, struct tp_cs *cs, json_t *si, json_t *pm, const char *pan,
                     bool authenticated, json_t **attempt)
{
  json_object_set_new(si, "next_action", json_null());
  const char *decline = tp_test_card_check_decline(pan, tp_pm_has_cvc(pm));
  const json_t *card = json_object_get(pm, "card");
  if (!*decline && tp_card_lapsed((int)json_integer_value(json_object_get(card, "exp_month")),
                                  (int)json_integer_value(json_object_get(card, "exp_year")), time(NULL)))
    decline = "expired_card"; /* expired since it was saved: the issuer's check fails */
  if (!*decline) {
    json_object_set_new(si, "status", json_string("succeeded"));
    json_object_set(si, "payment_method", json_object_get(pm, "id"));
    json_object_set_new(si, "last_setup_error", json_null());
    bool checked = verified_checks(pm, pan);
    save_pm(r, cs, si, pm, authenticated, checked);
    *attempt = tp_si_attempt(r, cs, si, pm, "succeeded", NULL, authenticated);
    tp_put_emit(cs, r, r->merchant.id, TP_K_SETUP_INTENT, "setup_intent.succeeded", si);
    return NULL;
  }
  return si_fail(r, cs, si, pm, decline, authenticated, attempt);
}

/* The reply to an API confirmation that ended: si (expanded with pm as
 * this change set leaves it, not as stored), or the card error with si in
 * it. */
static void reply_finished(struct tp_req *r, json_t *si, const json_t *pm, json_t *err, json_t *attempt)
{
  if (!err) {
    json_t *out = json_deep_copy(si);
    json_t *known = tp_pack("[O, o?]", pm, attempt);
    if (tp_expand(r, out, known))
      tp_reply_json(r, 200, out);
    else
      json_decref(out);
    json_decref(known);
    return;
  }
  json_decref(attempt);
  json_t *body = json_deep_copy(err);
  json_object_set_new(body, "setup_intent", json_deep_copy(si));
  const char *dc = json_string_value(json_object_get(err, "decline_code"));
  const struct tp_error_info *ei = dc ? tp_error_by_decline_code(dc) : NULL;
  tp_reply_json(r, ei ? (unsigned)ei->http_status : 402, tp_pack("{s:o}", "error", body));
  json_decref(err);
}

/* Confirm si (owned) in cs (owned), holding lock_id; replies and commits. */
static void si_confirm(struct tp_req *r, json_t *si, struct tp_cs *cs, bool created, const char *lock_id)
{
  char pm_lock[TP_ID_MAX] = ""; /* a copy: si's own payment_method is replaced below */
  char cus_lock[TP_ID_MAX] = "";
  json_t *pm = NULL;
  struct tp_card_info ci;
  memset(&ci, 0, sizeof ci);
  char cvc[8] = "";
  const char *pm_id;
  if (!tp_redirect_allowed(r, si) || !tp_confirm_pm_choice(r, cs, si, &pm, &pm_id, &ci, cvc))
    goto fail;
  if (!pm) {
    if (!pm_id) {
      static const char msg[] =
          "You cannot confirm this SetupIntent because it's missing a payment method. You can either update the "
          "SetupIntent with a payment method and then confirm it again, or confirm it again directly with a payment "
          "method.";
      /* made by this request and not saved: no object to name, nothing
       * kept under the Idempotency-Key (the retry replayed an id that was
       * never written) */
      if (created) {
        tp_reply_error(r, TP_ERR_SETUP_INTENT_UNEXPECTED_STATE, "payment_method", msg);
        r->err = 0; /* a request refused, not a state: tp_idem_keeps_error passes it */
      } else
        tp_intent_error(r, "setup_intent", si, TP_ERR_SETUP_INTENT_UNEXPECTED_STATE, "payment_method", msg);
      goto fail;
    }
    /* A stored PaymentMethod may be saved to the customer below: as attach
     * and detach do, under its lock, read afresh. */
    if (strncmp(pm_id, "pm_card_", 8) != 0) {
      /* An id no PaymentMethod can have (too long, or this SetupIntent's
       * own, whose lock this request holds: it waited on itself) is
       * missing, not busy. */
      if (strlen(pm_id) >= sizeof pm_lock || strcmp(pm_id, r->path_id) == 0 ||
          !(strncmp(pm_id, "pm_", 3) == 0 || strncmp(pm_id, "card_", 5) == 0 || strncmp(pm_id, "tok_", 4) == 0)) {
        tp_reply_missing(r, "PaymentMethod", pm_id, "payment_method");
        goto fail;
      }
      if (!tp_lock_try(pm_id)) {
        tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
        goto fail;
      }
      tp_scopy(pm_lock, sizeof pm_lock, pm_id);
    }
    pm = tp_pm_resolve(r, cs, pm_id, &ci);
    if (!pm)
      goto fail;
  }
  if (!tp_pm_belongs(r, pm, si, "SetupIntent"))
    goto fail;
  /* The card may be saved to the customer below (save_pm): under the
   * customer's lock, as a deletion of that customer takes it, or a
   * deletion at the same moment left the card attached to a deleted
   * customer. */
  if (!tp_si_customer_lock(r, si, cus_lock))
    goto fail;
  /* A customer deleted since the SetupIntent was made: nothing to set the
   * card up for (it went on, and the card was not saved) */
  if (cus_lock[0] && !tp_live_or_missing(r, TP_K_CUSTOMER, cus_lock, "customer", "customer"))
    goto fail;
  json_object_set(si, "payment_method", json_object_get(pm, "id"));
  json_object_set_new(si, "last_setup_error", json_null());
  if (created)
    tp_emit(cs, r, r->merchant.id, "setup_intent.created", si);
  /* Each confirmation is a SetupAttempt (tp_si_attempt). */
  abandon_attempt(r, cs, si);
  char attempt[TP_ID_MAX];
  tp_id_new(attempt, "setatt");
  json_object_set_new(si, "latest_attempt", json_string(attempt));
  /* Setting a card up is on-session: the customer is there to answer. */
  bool tds = tp_wants_3ds(si, ci.pan, false, pm);
  if (tds && tp_test_card_3ds_error(ci.pan)) {
    /* Stripe's 3097: the 3-D Secure attempt fails, as on a PaymentIntent */
    json_object_set_new(si, "next_action", json_null());
    json_t *made = NULL;
    json_t *err = si_fail(r, cs, si, pm, "processing_error", false, &made);
    reply_finished(r, si, pm, err, made);
  } else if (tds) {
    tp_await_3ds(r, si);
    json_t *made = tp_si_attempt(r, cs, si, pm, "requires_action", NULL, false);
    tp_put_emit(cs, r, r->merchant.id, TP_K_SETUP_INTENT, "setup_intent.requires_action", si);
    reply_finished(r, si, pm, NULL, made);
  } else {
    json_t *made = NULL;
    json_t *err = tp_si_finish(r, cs, si, pm, ci.pan, false, &made);
    reply_finished(r, si, pm, err, made);
  }
  tp_card_wipe(&ci, sizeof ci);
  tp_card_wipe(cvc, sizeof cvc);
  json_decref(pm);
  json_decref(si);
  const char *held[3];
  size_t n = 0;
  if (lock_id)
    held[n++] = lock_id;
  if (pm_lock[0])
    held[n++] = pm_lock;
  if (cus_lock[0])
    held[n++] = cus_lock;
  tp_commit_and_reply_locks(r, cs, held, n);
  return;
fail:
  tp_card_wipe(&ci, sizeof ci);
  tp_card_wipe(cvc, sizeof cvc);
  json_decref(pm);
  json_decref(si);
  tp_cs_free(cs);
  if (pm_lock[0])
    tp_lock_release(pm_lock);
  if (cus_lock[0])
    tp_lock_release(cus_lock);
  if (lock_id)
    tp_lock_release(lock_id);
}

void tp_h_si_create(struct tp_req *r)
{
  static const char *const only[] = {"return_url", NULL};
  if (!tp_check_params(r, spec_create) || !tp_confirm_only_ok(r, only))
    return;
  json_t *si = si_new();
  struct tp_cs *cs = tp_cs_new();
  if (!si_apply(r, cs, si, true)) {
    json_decref(si);
    tp_cs_free(cs);
    return;
  }
  bool confirm = false;
  tp_param_bool(r->params, "confirm", &confirm);
  if (confirm) {
    si_confirm(r, si, cs, true, NULL);
    return;
  }
  tp_put_emit(cs, r, r->merchant.id, TP_K_SETUP_INTENT, "setup_intent.created", si);
  tp_reply_expanded_unlock(r, cs, si, NULL);
}

void tp_h_si_retrieve(struct tp_req *r)
{
  if (!tp_check_params(r, spec_retrieve))
    return;
  json_t *si = tp_store_get_json(&tp_app.store, TP_K_SETUP_INTENT, r->merchant.id, r->path_id);
  if (!si) {
    tp_reply_no_such(r, "setupintent", "intent");
    return;
  }
  if (!tp_client_secret_ok(r, si) || !tp_expand(r, si, NULL)) {
    json_decref(si);
    return;
  }
  tp_reply_json(r, 200, si);
}

/* si under its lock; NULL after replying. */
static json_t *load_locked(struct tp_req *r)
{
  if (!tp_lock_try(r->path_id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return NULL;
  }
  json_t *si = tp_store_get_json(&tp_app.store, TP_K_SETUP_INTENT, r->merchant.id, r->path_id);
  if (!si) {
    tp_lock_release(r->path_id);
    tp_reply_no_such(r, "setupintent", "intent");
  }
  return si;
}

void tp_h_si_update(struct tp_req *r)
{
  if (!tp_check_params(r, spec_update))
    return;
  json_t *si = load_locked(r);
  if (!si)
    return;
  /* Once it succeeded or was canceled only its description and metadata
   * may change. */
  if (!open_status(si)) {
    const char *k;
    json_t *v;
    json_object_foreach(r->params, k, v)
    {
      if (strcmp(k, "metadata") != 0 && strcmp(k, "description") != 0 && strcmp(k, "expand") != 0) {
        unexpected_state(r, si, "update");
        json_decref(si);
        tp_lock_release(r->path_id);
        return;
      }
    }
  }
  /* Stripe has no setup_intent.updated event: an update emits none. */
  struct tp_cs *cs = tp_cs_new();
  if (!si_apply(r, cs, si, false)) {
    json_decref(si);
    tp_cs_free(cs);
    tp_lock_release(r->path_id);
    return;
  }
  tp_cs_put(cs, TP_K_SETUP_INTENT, r->merchant.id, si);
  tp_reply_expanded_unlock(r, cs, si, r->path_id);
}

void tp_h_si_confirm(struct tp_req *r)
{
  if (!tp_check_params(r, spec_confirm))
    return;
  json_t *si = load_locked(r);
  if (!si)
    return;
  if (!tp_client_secret_ok(r, si)) {
    json_decref(si);
    tp_lock_release(r->path_id);
    return;
  }
  const char *st = json_string_value(json_object_get(si, "status"));
  if (!st || (strcmp(st, "requires_payment_method") != 0 && strcmp(st, "requires_confirmation") != 0 &&
              strcmp(st, "requires_action") != 0)) {
    unexpected_state(r, si, "confirm");
    json_decref(si);
    tp_lock_release(r->path_id);
    return;
  }
  if (!types_ok(r, r->params) || !tp_publishable_confirm_ok(r, si)) {
    json_decref(si);
    tp_lock_release(r->path_id);
    return;
  }
  const char *rq = json_string_value(json_object_get(
      json_object_get(json_object_get(r->params, "payment_method_options"), "card"), "request_three_d_secure"));
  if (rq && *rq)
    json_object_set_new(json_object_get(json_object_get(si, "payment_method_options"), "card"),
                        "request_three_d_secure", json_string(rq));
  si_confirm(r, si, tp_cs_new(), false, r->path_id);
}

void tp_h_si_cancel(struct tp_req *r)
{
  if (!tp_check_params(r, spec_cancel))
    return;
  json_t *si = load_locked(r);
  if (!si)
    return;
  if (!open_status(si)) {
    unexpected_state(r, si, "cancel");
    json_decref(si);
    tp_lock_release(r->path_id);
    return;
  }
  const char *reason = tp_pstr(r->params, "cancellation_reason");
  json_object_set_new(si, "status", json_string("canceled"));
  json_object_set_new(si, "cancellation_reason", reason && *reason ? json_string(reason) : json_null());
  json_object_set_new(si, "next_action", json_null());
  struct tp_cs *cs = tp_cs_new();
  abandon_attempt(r, cs, si);
  tp_put_emit(cs, r, r->merchant.id, TP_K_SETUP_INTENT, "setup_intent.canceled", si);
  tp_reply_expanded_unlock(r, cs, si, r->path_id);
}

void tp_h_si_list(struct tp_req *r)
{
  tp_reply_list_by(r, spec_list, TP_K_SETUP_INTENT, "/v1/setup_intents");
}

/* GET /v1/setup_attempts?setup_intent=seti_...: the SetupIntent's
 * confirmations, newest first. */
void tp_h_setup_attempt_list(struct tp_req *r)
{
  const char *si = tp_pstr(r->params, "setup_intent");
  if (!si || !*si) {
    if (tp_check_params(r, spec_attempts))
      tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "setup_intent", NULL);
    return;
  }
  /* a SetupIntent that is not there (or another merchant's) is a 404, not
   * an empty list */
  if (!tp_check_params(r, spec_attempts))
    return;
  if (tp_store_live(&tp_app.store, TP_K_SETUP_INTENT, r->merchant.id, si) != 1) {
    tp_reply_missing(r, "setupintent", si, "setup_intent"); /* Stripe names it so */
    return;
  }
  tp_reply_list_by(r, spec_attempts, TP_K_SETUP_ATTEMPT, "/v1/setup_attempts");
}

/* An action of a payment method Turnpike does not take, on intent kind:
 * 404 for no such intent, else 400 naming what is missing. */
static void not_card(struct tp_req *r, enum tp_kind kind, const char *what, const char *action, const char *why)
{
  json_t *intent = tp_store_get_json(&tp_app.store, kind, r->merchant.id, r->path_id);
  if (!intent) {
    tp_reply_no_such(r, what, "intent");
    return;
  }
  json_decref(intent);
  char msg[200];
  snprintf(msg, sizeof msg, "Parameter not supported by Turnpike: %s (Turnpike takes card payments only: %s)", action,
           why);
  tp_reply_error(r, TP_ERR_PARAMETER_UNSUPPORTED, NULL, msg);
}

void tp_h_si_verify_microdeposits(struct tp_req *r)
{
  not_card(r, TP_K_SETUP_INTENT, "setupintent", "verify_microdeposits", "no bank accounts to verify");
}

void tp_h_pi_not_card(struct tp_req *r)
{
  bool balance = strstr(r->url, "/apply_customer_balance") != NULL;
  not_card(r, TP_K_PAYMENT_INTENT, "payment_intent", balance ? "apply_customer_balance" : "verify_microdeposits",
           balance ? "no customer cash balance" : "no bank accounts to verify");
}
