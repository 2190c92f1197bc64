/* /v1/payment_intents: create, retrieve, update, confirm, capture, cancel,
 * list. The status machine:
 *   requires_payment_method -> requires_confirmation -> (requires_action) ->
 *   processing -> requires_capture | succeeded; any open state -> canceled;
 *   a decline returns to requires_payment_method with last_payment_error. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "jparse.h"
#include "connectors/connector.h"
#include "core/currency.h"
#include "core/payflow.h"
#include "jpack.h"
#include "jsonw.h"
#include "log.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const capture_methods[] = {"automatic", "automatic_async", "manual", NULL};
static const char *const sfu_values[] = {"on_session", "off_session", "", NULL};
static const char *const cancel_reasons[] = {"duplicate", "fraudulent", "requested_by_customer", "abandoned", NULL};
static const char *const confirmation_methods[] = {"automatic", "manual", NULL};
static const char *const allow_redirects[] = {"always", "never", NULL};
/* Stripe's off_session is a boolean or the kind of off-session payment. */
static const char *const off_session_kinds[] = {"one_off", "recurring", NULL};
static const char *const three_ds_requests[] = {"automatic", "any", "challenge", NULL};

static const char *const pmo_capture_methods[] = {"manual", "", NULL};
static const char *const pmo_sfu_values[] = {"none", "off_session", "on_session", "", NULL};
/* request_extended_authorization, _incremental_, _multicapture and
 * _overcapture ask for a feature only where the card and processor offer
 * it: kept and shown, and none of Turnpike's connectors offers one (the
 * charge's payment_method_details say "unavailable" as Stripe's do). */
static const char *const pmo_if_available[] = {"if_available", "never", NULL};
static const struct tp_pspec spec_pmo_card[] = {
  {"request_three_d_secure", TP_P_ENUM, NULL, three_ds_requests},
  {"capture_method", TP_P_ENUM, NULL, pmo_capture_methods},
  {"setup_future_usage", TP_P_ENUM, NULL, pmo_sfu_values},
  {"network", TP_P_ENUM, NULL, tp_card_networks},
  {"request_extended_authorization", TP_P_ENUM, NULL, pmo_if_available},
  {"request_incremental_authorization", TP_P_ENUM, NULL, pmo_if_available},
  {"request_multicapture", TP_P_ENUM, NULL, pmo_if_available},
  {"request_overcapture", TP_P_ENUM, NULL, pmo_if_available},
  {"require_cvc_recollection", TP_P_BOOL, NULL, NULL},
  /* Japanese statement descriptors: kept and shown, as the other options. */
  {"statement_descriptor_suffix_kana", TP_P_STRING, NULL, NULL},
  {"statement_descriptor_suffix_kanji", TP_P_STRING, NULL, NULL},
  {"cvc_token", TP_P_UNSUPPORTED, NULL, tp_why_card_option},
  {"installments", TP_P_UNSUPPORTED, NULL, tp_why_card_option},
  {"moto", TP_P_UNSUPPORTED, NULL, tp_why_card_option},
  {"setup_credential_usage", TP_P_UNSUPPORTED, NULL, tp_why_card_option},
  {"stored_credential_usage", TP_P_UNSUPPORTED, NULL, tp_why_card_option},
  {"mandate_options", TP_P_UNSUPPORTED, NULL, tp_why_mandates},
  {"three_d_secure", TP_P_UNSUPPORTED, NULL, tp_why_external_3ds},
  {NULL, 0, NULL, NULL},
};
/* Cards are the only payment method type. */
static const struct tp_pspec spec_pmo[] = {
  {"card", TP_P_OBJECT, spec_pmo_card, NULL},
  {NULL, 0, NULL, NULL},
};

static const struct tp_pspec spec_apm[] = {
  {"enabled", TP_P_BOOL, NULL, NULL},
  {"allow_redirects", TP_P_ENUM, NULL, allow_redirects},
  {NULL, 0, NULL, NULL},
};

const struct tp_pspec tp_spec_pmd[] = {
  {"type", TP_P_STRING, NULL, NULL},
  {"allow_redisplay", TP_P_ENUM, NULL, tp_allow_redisplay},
  {"radar_options", TP_P_OBJECT, tp_spec_radar_options, NULL},
  TP_SPEC_OTHER_PM_TYPES,
  {"card", TP_P_OBJECT, tp_spec_card, NULL},
  {"billing_details", TP_P_OBJECT, tp_spec_billing_details, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

/* payment_details: the references a card network carries (Level 2). */
static const struct tp_pspec spec_payment_details[] = {
  {"customer_reference", TP_P_STRING, NULL, NULL},
  {"order_reference", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

#define UNSUPPORTED(name, why) {name, TP_P_UNSUPPORTED, NULL, why}

#define PI_COMMON                                                   \
  {"amount", TP_P_INT, NULL, NULL}, {"currency", TP_P_STRING, NULL, NULL}, \
  {"customer", TP_P_STRING, NULL, NULL}, {"description", TP_P_STRING, NULL, NULL}, \
  {"metadata", TP_P_METADATA, NULL, NULL}, {"receipt_email", TP_P_STRING, NULL, NULL}, \
  {"setup_future_usage", TP_P_ENUM, NULL, sfu_values}, {"payment_method", TP_P_STRING, NULL, NULL}, \
  {"payment_method_types", TP_P_STRLIST, NULL, NULL}, {"capture_method", TP_P_ENUM, NULL, capture_methods}, \
  {"statement_descriptor", TP_P_STRING, NULL, NULL}, {"statement_descriptor_suffix", TP_P_STRING, NULL, NULL}, \
  {"shipping", TP_P_OBJECT, tp_spec_shipping, NULL}, {"expand", TP_P_STRLIST, NULL, NULL}, \
  {"payment_method_data", TP_P_OBJECT, tp_spec_pmd, NULL}, {"payment_method_options", TP_P_OBJECT, spec_pmo, NULL}, \
  {"allowed_payment_method_types", TP_P_STRLIST, NULL, NULL},                                  \
  {"excluded_payment_method_types", TP_P_STRLIST, NULL, NULL},                                 \
  {"payment_details", TP_P_OBJECT, spec_payment_details, NULL}, {"transfer_group", TP_P_STRING, NULL, NULL}, \
  UNSUPPORTED("amount_details", tp_why_amount_details), UNSUPPORTED("application_fee_amount", tp_why_connect), \
  UNSUPPORTED("transfer_data", tp_why_connect), UNSUPPORTED("customer_account", tp_why_customer_account), \
  UNSUPPORTED("hooks", tp_why_hooks), UNSUPPORTED("payment_method_configuration", tp_why_pm_configuration)

/* What a confirmation takes, on create (confirm=true) and on confirm. */
#define PI_CONFIRMING                                                                          \
  {"off_session", TP_P_BOOL, NULL, off_session_kinds}, {"return_url", TP_P_URL, NULL, NULL},  \
  {"error_on_requires_action", TP_P_BOOL, NULL, NULL}, {"use_stripe_sdk", TP_P_BOOL, NULL, NULL}, \
  {"radar_options", TP_P_OBJECT, tp_spec_radar_options, NULL},                                  \
  UNSUPPORTED("mandate", tp_why_mandates), UNSUPPORTED("mandate_data", tp_why_mandates),        \
  UNSUPPORTED("confirmation_token", tp_why_confirmation_token)

static const struct tp_pspec spec_create[] = {
  PI_COMMON,
  {"confirm", TP_P_BOOL, NULL, NULL},
  {"confirmation_method", TP_P_ENUM, NULL, confirmation_methods},
  {"automatic_payment_methods", TP_P_OBJECT, spec_apm, NULL},
  UNSUPPORTED("on_behalf_of", tp_why_connect),
  PI_CONFIRMING,
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_update[] = {PI_COMMON, {NULL, 0, NULL, NULL}};
static const struct tp_pspec spec_confirm[] = {
  {"payment_method", TP_P_STRING, NULL, NULL},
  {"payment_method_data", TP_P_OBJECT, tp_spec_pmd, NULL},
  {"payment_method_options", TP_P_OBJECT, spec_pmo, NULL},
  {"receipt_email", TP_P_STRING, NULL, NULL},
  {"setup_future_usage", TP_P_ENUM, NULL, sfu_values},
  {"capture_method", TP_P_ENUM, NULL, capture_methods},
  {"shipping", TP_P_OBJECT, tp_spec_shipping, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"client_secret", TP_P_STRING, NULL, NULL},
  {"allowed_payment_method_types", TP_P_STRLIST, NULL, NULL},
  {"excluded_payment_method_types", TP_P_STRLIST, NULL, NULL},
  {"payment_details", TP_P_OBJECT, spec_payment_details, NULL},
  {"amount_to_confirm", TP_P_INT, NULL, NULL},
  UNSUPPORTED("amount_details", tp_why_amount_details),
  UNSUPPORTED("hooks", tp_why_hooks),
  PI_CONFIRMING,
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_capture[] = {
  {"amount_to_capture", TP_P_INT, NULL, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  {"statement_descriptor", TP_P_STRING, NULL, NULL},
  {"statement_descriptor_suffix", TP_P_STRING, NULL, NULL},
  {"payment_details", TP_P_OBJECT, spec_payment_details, NULL},
  UNSUPPORTED("amount_details", tp_why_amount_details),
  UNSUPPORTED("application_fee_amount", tp_why_connect),
  UNSUPPORTED("transfer_data", tp_why_connect),
  UNSUPPORTED("hooks", tp_why_hooks),
  {"final_capture", TP_P_BOOL, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_cancel[] = {
  {"cancellation_reason", TP_P_ENUM, NULL, cancel_reasons},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_list[] = {
  {"limit", TP_P_INT, NULL, NULL},       {"starting_after", TP_P_STRING, NULL, NULL},
  {"ending_before", TP_P_STRING, NULL, NULL}, {"customer", TP_P_STRING, NULL, NULL},
  {"created", TP_P_RANGE, NULL, NULL},   {"expand", TP_P_STRLIST, NULL, NULL},
  UNSUPPORTED("customer_account", tp_why_customer_account),
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_retrieve[] = {
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"client_secret", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

/* The challenge page's token: a keyed hash of the PaymentIntent id, so it
 * needs no storage and cannot be guessed. */
/* A challenge's link token: 16 hex of a random nonce, then 16 of an HMAC of
 * the intent id and the nonce. A page can check it without the store; the
 * answer to the challenge also needs it to be the token of the intent's
 * current next_action, so each challenge has its own link and an old one
 * (a failed challenge's, in a browser's history) approves nothing. */
void tp_3ds_token(const char *pi_id, char out[65])
{
  uint8_t nonce[8];
  tp_random(nonce, sizeof nonce);
  tp_hex(nonce, sizeof nonce, out);
  tp_3ds_token_mac(pi_id, out, out + 16);
  out[32] = '\0';
}

void tp_3ds_token_mac(const char *pi_id, const char *nonce16, char mac16[17])
{
  char msg[128], mac[65];
  int n = snprintf(msg, sizeof msg, "3ds|%s|%.16s", pi_id, nonce16);
  tp_hmac_sha256_hex(tp_app.vault_key, sizeof tp_app.vault_key, msg, (size_t)n, mac);
  memcpy(mac16, mac, 16);
  mac16[16] = '\0';
}


void tp_await_3ds(struct tp_req *r, json_t *intent)
{
  const char *id = json_string_value(json_object_get(intent, "id"));
  const char *ret = tp_pstr(r->params, "return_url");
  char token[65], url[600];
  tp_3ds_token(id, token);
  snprintf(url, sizeof url, "%s/v1/turnpike/3ds/%s?token=%s&account=%s", tp_app.public_url, id, token,
           r->merchant.id);
  json_object_set_new(intent, "status", json_string("requires_action"));
  json_object_set_new(intent, "next_action",
                      tp_pack("{s:s, s:{s:s, s:o}}", "type", "redirect_to_url", "redirect_to_url", "url", url,
                              "return_url", ret && *ret ? json_string(ret) : json_null()));
}

bool tp_pm_belongs(struct tp_req *r, const json_t *pm, const json_t *intent, const char *what)
{
  const char *pm_cus = json_string_value(json_object_get(pm, "customer"));
  const char *cus = json_string_value(json_object_get(intent, "customer"));
  if (!pm_cus || (cus && strcmp(pm_cus, cus) == 0))
    return true;
  char msg[320];
  if (cus)
    snprintf(msg, sizeof msg, "The provided PaymentMethod belongs to a customer other than the one on this %s.", what);
  else /* Stripe's wording: the merchant left the customer out */
    snprintf(msg, sizeof msg,
             "The `payment_method` parameter supplied %.64s belongs to the Customer %.64s. Please include the "
             "Customer in the `customer` parameter on the %s.",
             json_string_value(json_object_get(pm, "id")) ?: "", pm_cus, what);
  tp_reply_error(r, TP_ERR_PAYMENT_METHOD_UNEXPECTED_STATE, "payment_method", msg);
  return false;
}

/* A stored PaymentMethod set on an intent at its creation or update must
 * be usable by its customer then, as on Stripe, not only at confirmation:
 * another customer's card (or a saved card with the customer left out) is
 * refused before the intent is written. Test ids (pm_card_visa) and tokens
 * belong to no customer; a missing one was refused by tp_pm_exists. */
static bool pm_owner_ok(struct tp_req *r, const json_t *intent, const char *what)
{
  const char *pm_id = json_string_value(json_object_get(intent, "payment_method"));
  if (!pm_id || strncmp(pm_id, "pm_card_", 8) == 0 ||
      (strncmp(pm_id, "pm_", 3) != 0 && strncmp(pm_id, "card_", 5) != 0))
    return true;
  json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, pm_id);
  bool ok = !pm || tp_pm_belongs(r, pm, intent, what);
  json_decref(pm);
  return ok;
}

bool tp_pi_save_target_gone(const struct tp_req *r, const json_t *pi)
{
  const char *sfu = tp_pi_card_option(pi, "setup_future_usage");
  const char *cus = json_string_value(json_object_get(pi, "customer"));
  return sfu && strcmp(sfu, "none") != 0 && cus && tp_store_live(&tp_app.store, TP_K_CUSTOMER, r->merchant.id, cus) == 0;
}

void tp_intent_error(struct tp_req *r, const char *key, const json_t *intent, enum tp_err e, const char *param,
                     const char *msg)
{
  const struct tp_error_info *ei = tp_error_info(e);
  json_t *err = tp_error_object(e, param, msg);
  json_object_set_new(err, key, json_deep_copy(intent));
  tp_error_request_log(err, r);
  tp_reply_json(r, ei ? (unsigned)ei->http_status : 400, tp_pack("{s:o}", "error", err));
  r->err = (int)e; /* an error of the intent's state (tp_idem_keeps_error) */
}

/* An error about the PaymentIntent's state: Stripe names the PaymentIntent
 * in it (stripe-node's err.payment_intent), as a decline's 402 does. */
static void pi_state_error(struct tp_req *r, const json_t *pi, enum tp_err e, const char *param, const char *msg)
{
  tp_intent_error(r, "payment_intent", pi, e, param, msg);
}

static void unexpected_state(struct tp_req *r, const json_t *pi, const char *action)
{
  char msg[320];
  const char *st = json_string_value(json_object_get(pi, "status"));
  if (!st)
    st = "unknown";
  /* Stripe's wording where it has its own: a confirm and a capture name
   * the statuses they take */
  if (strcmp(action, "confirm") == 0 && st && strcmp(st, "succeeded") == 0)
    snprintf(msg, sizeof msg,
             "You cannot confirm this PaymentIntent because it has already succeeded after being previously "
             "confirmed.");
  else if (strcmp(action, "confirm") == 0)
    snprintf(msg, sizeof msg,
             "You cannot confirm this PaymentIntent because it has a status of %s. Only a PaymentIntent with one "
             "of the following statuses may be confirmed: requires_payment_method, requires_confirmation, "
             "requires_action.",
             st);
  else if (strcmp(action, "capture") == 0)
    snprintf(msg, sizeof msg,
             "This PaymentIntent could not be captured because it has a status of %s. Only a PaymentIntent with "
             "one of the following statuses may be captured: requires_capture.",
             st);
  else
    snprintf(msg, sizeof msg, "This PaymentIntent's %s could not be performed because it has a status of %s.", action,
             st);
  pi_state_error(r, pi, TP_ERR_PAYMENT_INTENT_UNEXPECTED_STATE, NULL, msg);
}

/* Below the currency's minimum charge: Stripe's amount_too_small, which
 * names the minimum ("Amount must be at least $0.50 usd"). */
static bool at_least_min_charge(struct tp_req *r, int64_t amount, const struct tp_currency *cur, const char *param)
{
  if (amount >= tp_currency_min_charge(cur))
    return true;
  char msg[200], fmt[40];
  tp_amount_format(fmt, sizeof fmt, tp_currency_min_charge(cur), cur);
  snprintf(msg, sizeof msg, "Amount must be at least %s%s %s", tp_currency_symbol(cur), fmt, cur->code);
  tp_reply_error(r, TP_ERR_AMOUNT_TOO_SMALL, param, msg);
  return false;
}

/* Validate amount against currency; reply and return false when wrong. */
static bool check_amount(struct tp_req *r, int64_t amount, const struct tp_currency *cur)
{
  if (!at_least_min_charge(r, amount, cur, "amount"))
    return false;
  if (tp_amount_check(amount, cur) != 0) {
    /* Stripe names the maximum, grouped: "Amount must be no more than
     * $999,999.99" */
    char num[48], grouped[64], msg[160];
    tp_amount_display(num, sizeof num, TP_AMOUNT_MAX, cur);
    size_t n = strlen(num), o = 0, digits = 0, d0 = strcspn(num, "0123456789");
    for (size_t i = d0; i < n && num[i] >= '0' && num[i] <= '9'; i++)
      digits++;
    for (size_t i = 0; i < n && o + 2 < sizeof grouped; i++) {
      grouped[o++] = num[i];
      size_t left = d0 + digits - 1 - i; /* integer digits still to come */
      if (i >= d0 && i < d0 + digits - 1 && left % 3 == 0)
        grouped[o++] = ',';
    }
    grouped[o] = '\0';
    snprintf(msg, sizeof msg, "Amount must be no more than %s", grouped);
    tp_reply_error(r, TP_ERR_AMOUNT_TOO_LARGE, "amount", msg);
    return false;
  }
  return tp_check_card_amount(r, amount, cur, "amount");
}

static bool check_currency(struct tp_req *r, const char *code, const struct tp_currency **out)
{
  *out = code ? tp_currency_find(code) : NULL;
  if (!*out) {
    char msg[160];
    snprintf(msg, sizeof msg, "Invalid currency: %.8s. Stripe currently supports these currencies: usd, eur, ...",
             code ? code : "");
    tp_reply_error(r, TP_ERR_CURRENCY_INVALID, "currency", code ? msg : NULL);
    return false;
  }
  return true;
}

/* shipping, checked and in Stripe's shape; false after replying. */
static bool apply_shipping(struct tp_req *r, json_t *obj, const json_t *params)
{
  const json_t *v = json_object_get(params, "shipping");
  if (!v)
    return true;
  json_t *sh = tp_shipping_build(r, v, true);
  if (!sh)
    return false;
  json_object_set_new(obj, "shipping", sh);
  return true;
}

/* statement_descriptor (refused on PaymentIntents: every payment here is a
 * card's, which takes statement_descriptor_suffix only, as Stripe since
 * 2024; the Charges API still takes it) and
 * statement_descriptor_suffix (1 to 22), as Stripe checks them: printable
 * ASCII with at least one letter, none of < > \ ' " *. False after
 * replying. */
static bool descriptors_ok(struct tp_req *r, const json_t *params)
{
  static const char *const names[] = {"statement_descriptor", "statement_descriptor_suffix"};
  for (int i = 0; i < 2; i++) {
    const char *v = tp_pstr(params, names[i]);
    if (!v || !*v)
      continue;
    if (i == 0 && strncmp(r->url, "/v1/charges", 11) != 0) {
      /* Stripe since 2024-02-01: not on a PaymentIntent a card may pay
       * (every one here); the suffix is the card's. The legacy Charges API
       * still takes it (for a card, as the suffix when none is given). */
      tp_reply_error(r, TP_ERR_STATEMENT_DESCRIPTOR_CARD, names[i], NULL);
      return false;
    }
    size_t n = strlen(v);
    bool letter = false, ok = n >= (i == 0 ? 5u : 1u) && n <= 22;
    for (const char *c = v; ok && *c; c++) {
      unsigned char ch = (unsigned char)*c;
      ok = ch >= 0x20 && ch <= 0x7e && !strchr("<>\\'\"*", ch);
      letter |= isalpha(ch) != 0;
    }
    if (!ok || !letter) {
      char msg[200];
      snprintf(msg, sizeof msg,
               "Invalid %s: it must be %s to 22 printable ASCII characters with at least one letter, and none "
               "of < > \\ ' \" *",
               names[i], i == 0 ? "5" : "1");
      tp_reply_error(r, TP_ERR_STATEMENT_DESCRIPTOR_INVALID, names[i], msg);
      return false;
    }
  }
  return true;
}

/* A PaymentIntent's description: Stripe's limit. */
#define PI_DESCRIPTION_MAX 1000

/* The strings a PaymentIntent takes from params, checked: descriptors,
 * receipt_email, description's length, and payment_method_types (cards
 * only: another type is refused, not dropped). False after replying. */
static bool pi_strings_ok(struct tp_req *r, const json_t *params)
{
  if (!descriptors_ok(r, params) || !tp_email_param_ok(r, params, "receipt_email", "receipt_email"))
    return false;
  if (tp_utf8_chars(json_string_value(json_object_get(params, "description"))) > PI_DESCRIPTION_MAX) {
    tp_reply_error(r, TP_ERR_PARAMETER_TOO_LONG, "description", NULL);
    return false;
  }
  static const char *const lists[] = {"payment_method_types", "allowed_payment_method_types"};
  for (int l = 0; l < 2; l++) {
    const json_t *types = json_object_get(params, lists[l]);
    size_t i;
    const json_t *t;
    json_array_foreach(types, i, t)
    {
      const char *type = json_string_value(t);
      if (type && strcmp(type, "card") == 0)
        continue;
      char msg[200];
      snprintf(msg, sizeof msg, "The payment method type \"%.40s\" is invalid: Turnpike takes card payments only.",
               type ? type : "");
      tp_reply_error(r, TP_ERR_PAYMENT_METHOD_UNSUPPORTED_TYPE, lists[l], msg);
      return false;
    }
  }
  /* Excluding a type Turnpike never offers changes nothing; excluding
   * cards leaves nothing to pay with. */
  const json_t *excluded = json_object_get(params, "excluded_payment_method_types");
  size_t i;
  const json_t *t;
  json_array_foreach(excluded, i, t)
  {
    const char *type = json_string_value(t);
    if (type && *type && strcmp(type, "card") != 0)
      continue;
    tp_reply_error(r, TP_ERR_PAYMENT_METHOD_UNSUPPORTED_TYPE, "excluded_payment_method_types",
                   type && *type ? "Excluding card leaves no payment method type: Turnpike takes card payments only."
                                 : "Invalid excluded_payment_method_types: a payment method type may not be empty.");
    return false;
  }
  return true;
}

/* allowed_ and excluded_payment_method_types (checked by pi_strings_ok) and
 * payment_details, which create, update and confirm take; "" unsets (the
 * lists are null until set, payment_details is shown only once set). */
static void apply_method_fields(json_t *pi, const json_t *params)
{
  static const char *const lists[] = {"allowed_payment_method_types", "excluded_payment_method_types"};
  for (int l = 0; l < 2; l++) {
    json_t *v = json_object_get(params, lists[l]);
    if (v)
      json_object_set_new(pi, lists[l], json_is_array(v) ? json_deep_copy(v) : json_null());
  }
  json_t *pd = json_object_get(params, "payment_details");
  if (!pd)
    return;
  if (!json_is_object(pd)) {
    json_object_set_new(pi, "payment_details", json_null());
    return;
  }
  json_t *cur = json_object_get(pi, "payment_details");
  if (!json_is_object(cur)) {
    cur = tp_pack("{s:n, s:n}", "customer_reference", "order_reference");
    json_object_set_new(pi, "payment_details", cur);
  }
  const char *k;
  json_t *v;
  json_object_foreach(pd, k, v)
  {
    json_object_set_new(cur, k, json_string_length(v) ? json_copy(v) : json_null());
  }
}

/* Copy the settable fields of params onto pi; false after replying. */
static bool apply_fields(struct tp_req *r, json_t *pi, const json_t *params)
{
  if (!pi_strings_ok(r, params))
    return false;
  apply_method_fields(pi, params);
  static const char *const fields[] = {"description", "receipt_email", "setup_future_usage", "capture_method",
                                       "statement_descriptor", "statement_descriptor_suffix", "customer",
                                       "confirmation_method", "transfer_group", NULL};
  for (int i = 0; fields[i]; i++) {
    json_t *v = json_object_get(params, fields[i]);
    if (!v)
      continue;
    if (json_is_string(v) && !*json_string_value(v))
      json_object_set_new(pi, fields[i], json_null());
    else
      json_object_set(pi, fields[i], v);
  }
  json_t *md = json_object_get(params, "metadata");
  if (md && !tp_metadata_update(r, pi, md))
    return false;
  return apply_shipping(r, pi, params);
}

/* payment_method_options[card]: request_three_d_secure, and capture_method
 * and setup_future_usage, which override the top-level fields for a card
 * (tp_pi_card_option). Kept on the PaymentIntent as Stripe shows them,
 * merged with what an earlier request set; an empty value unsets. */
static bool apply_pm_options(struct tp_req *r, json_t *pi, const json_t *params)
{
  const json_t *pmo = json_object_get(params, "payment_method_options");
  if (json_is_string(pmo) && !*json_string_value(pmo)) {
    /* The hash itself cannot be unset (Stripe's types: not Emptyable). */
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID_EMPTY, "payment_method_options", NULL);
    return false;
  }
  json_t *given = json_object_get(pmo, "card");
  if (json_is_string(given) && !*json_string_value(given)) {
    /* card="" unsets the card's options (Emptyable): capture_method and
     * setup_future_usage are the PaymentIntent's own again. */
    json_t *had = json_object_get(pi, "payment_method_options");
    json_object_del(had, "card");
    if (json_is_object(had) && json_object_size(had) == 0)
      json_object_set_new(pi, "payment_method_options", json_null()); /* as one made without options */
    return true;
  }
  if (!json_is_object(given))
    return true;
  const json_t *net = json_object_get(given, "network");
  if (json_is_string(net) && !*json_string_value(net)) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID_EMPTY, "payment_method_options[card][network]", NULL);
    return false;
  }
  json_t *card = json_object_get(json_object_get(pi, "payment_method_options"), "card");
  if (!json_is_object(card)) {
    card = tp_pack("{s:n, s:n, s:n, s:s}", "installments", "mandate_options", "network", "request_three_d_secure",
                   "automatic");
    if (!json_is_object(json_object_get(pi, "payment_method_options")))
      json_object_set_new(pi, "payment_method_options", json_object());
    json_object_set_new(json_object_get(pi, "payment_method_options"), "card", card);
  }
  const char *k;
  json_t *v;
  json_object_foreach(given, k, v)
  {
    if (json_is_string(v) && !*json_string_value(v))
      json_object_del(card, k); /* the Emptyable ones (the spec refuses "" for the others) */
    else
      json_object_set(card, k, v);
  }
  return true;
}

/* automatic_payment_methods[enabled] (required in the hash) and
 * [allow_redirects]; cards are the only method either way. */
bool tp_apply_apm(struct tp_req *r, json_t *pi, const json_t *params)
{
  const json_t *apm = json_object_get(params, "automatic_payment_methods");
  if (!apm || tp_unset(apm)) /* "" is the form encoding of not set */
    return true;
  if (json_object_get(params, "payment_method_types")) {
    tp_reply_error(r, TP_ERR_PARAMETERS_EXCLUSIVE, "automatic_payment_methods",
                   "You may only specify one of these parameters: automatic_payment_methods, payment_method_types.");
    return false;
  }
  bool enabled = false;
  if (!tp_param_bool(apm, "enabled", &enabled)) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "automatic_payment_methods[enabled]", NULL);
    return false;
  }
  const char *redirects = tp_pstr(apm, "allow_redirects");
  json_object_set_new(pi, "automatic_payment_methods",
                      enabled ? tp_pack("{s:s, s:b}", "allow_redirects", redirects ? redirects : "always",
                                        "enabled", 1)
                              : tp_pack("{s:b}", "enabled", 0));
  return true;
}

/* The challenge of a PaymentIntent with confirmation_method manual was
 * passed for pm and for the PaymentIntent's amount and currency as they are
 * (tp_h_3ds_submit); changing any of them asks again. */
static bool same_str(const json_t *a, const json_t *b)
{
  const char *x = json_string_value(a), *y = json_string_value(b);
  return x && y && strcmp(x, y) == 0;
}

bool tp_pi_authenticated(const json_t *pi, const json_t *pm)
{
  const json_t *a = json_object_get(json_object_get(pi, "turnpike"), "authenticated");
  return json_is_object(a) && same_str(json_object_get(a, "payment_method"), json_object_get(pm, "id")) &&
         json_equal(json_object_get(a, "amount"), json_object_get(pi, "amount")) &&
         same_str(json_object_get(a, "currency"), json_object_get(pi, "currency"));
}

void tp_pi_authenticated_drop(json_t *pi)
{
  json_t *t = json_object_get(pi, "turnpike");
  if (!t)
    return;
  json_object_del(t, "authenticated");
  if (!json_object_size(t))
    json_object_del(pi, "turnpike");
}

/* The card asks for 3-D Secure (for this payment, off_session or not, and
 * pm, which may have been set up by an authenticated payment), or the
 * merchant does (request_three_d_secure any or challenge: the sandbox then
 * challenges every card). */
bool tp_wants_3ds(const json_t *pi, const char *pan, bool off_session, const json_t *pm)
{
  const char *rq = json_string_value(
      json_object_get(json_object_get(json_object_get(pi, "payment_method_options"), "card"), "request_three_d_secure"));
  bool set_up = json_is_true(json_object_get(json_object_get(pm, "turnpike"), "off_session_authenticated"));
  return tp_test_card_requires_3ds(pan, off_session, set_up) ||
         (rq && (strcmp(rq, "any") == 0 || strcmp(rq, "challenge") == 0) && !tp_test_card_no_3ds(pan));
}

static json_t *pi_new(struct tp_req *r, int64_t amount, const struct tp_currency *cur)
{
  char id[TP_ID_MAX], secret[40], cs[128];
  tp_id_new(id, "pi");
  tp_scopy(r->pm_made_for, sizeof r->pm_made_for, id); /* what this request makes a PaymentMethod of pays it */
  tp_random_b62(secret, 24);
  snprintf(cs, sizeof cs, "%s_secret_%s", id, secret);
  /* Every key the API version's PaymentIntent always has, null where
   * Turnpike has no such feature (Connect, Radar reviews, payment method
   * configurations, payment records): clients index them unconditionally
   * (tests/integration/test_object_shapes.py). */
  json_t *pi = tp_pack("{s:s, s:s, s:I, s:I, s:{s:{}}, s:I, s:n, s:n, s:n, s:n, s:n, s:n, s:s, s:s, s:s, s:I, "
                       "s:s, s:n, s:n, s:n, s:n, s:n, s:n, s:b, s:n, s:{}, s:n, s:n, s:n, s:n, s:{}, s:[s], s:n, "
                       "s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:s, s:n, s:n}",
                       "id", id, "object", "payment_intent", "amount", (json_int_t)amount, "amount_capturable",
                       (json_int_t)0, "amount_details", "tip", "amount_received", (json_int_t)0,
                       "allowed_payment_method_types", "application", "application_fee_amount",
                       "automatic_payment_methods", "canceled_at", "cancellation_reason", "capture_method",
                       "automatic", "client_secret", cs, "confirmation_method", "automatic", "created",
                       (json_int_t)tp_now(), "currency", cur->code, "customer", "customer_account", "description",
                       "excluded_payment_method_types", "last_payment_error", "latest_charge", "livemode", 0,
                       "managed_payments", "metadata", "next_action", "on_behalf_of", "payment_method",
                       "payment_method_configuration_details", "payment_method_options", "payment_method_types",
                       "card", "payment_record", "processing", "receipt_email", "review", "setup_future_usage",
                       "shipping", "source", "statement_descriptor", "statement_descriptor_suffix", "status",
                       "requires_payment_method", "transfer_data", "transfer_group");
  if (!pi)
    abort();
  (void)r;
  return pi;
}

/* ---- confirm -------------------------------------------------------------- */
/* The PaymentMethod that payment_method_data describes, created in cs (with
 * its vault record); its card in ci and cvc. NULL after replying. */
json_t *tp_pm_from_data(struct tp_req *r, struct tp_cs *cs, const json_t *pmd, struct tp_card_info *ci,
                        char cvc[8])
{
  const char *type = tp_pstr(pmd, "type");
  if (!type || !*type) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "payment_method_data[type]", NULL);
    return NULL;
  }
  if (strcmp(type, "card") != 0) {
    char msg[200];
    snprintf(msg, sizeof msg, "The payment method type \"%.40s\" is invalid: Turnpike takes card payments only.",
             type);
    tp_reply_error(r, TP_ERR_PAYMENT_METHOD_UNSUPPORTED_TYPE, "payment_method_data[type]", msg);
    return NULL;
  }
  const json_t *card = json_object_get(pmd, "card");
  if (!json_is_object(card)) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "payment_method_data[card]", NULL);
    return NULL;
  }
  json_t *bd = json_object_get(pmd, "billing_details");
  if (json_is_object(bd) && !tp_billing_details_ok(r, bd, "payment_method_data[billing_details]"))
    return NULL;
  if (!tp_card_from_params(r, card, "payment_method_data[card]", ci, cvc))
    return NULL;
  json_t *pm = tp_pm_create_card(cs, &r->merchant, ci, json_object_get(pmd, "billing_details"),
                                 json_object_get(pmd, "metadata"), tp_pstr(pmd, "allow_redisplay"), r->pm_made_for);
  if (!pm)
    tp_reply_error(r, TP_ERR_VAULT_UNAVAILABLE, NULL, NULL);
  return pm;
}

/* Without a confirmation, payment_method_data only creates the
 * PaymentMethod (in cs) and puts it on pi, as Stripe does; the card is
 * charged when pi is confirmed. False after replying. */
static bool attach_pm_data(struct tp_req *r, struct tp_cs *cs, json_t *pi)
{
  tp_scopy(r->pm_made_for, sizeof r->pm_made_for, json_string_value(json_object_get(pi, "id")));
  const json_t *pmd = json_object_get(r->params, "payment_method_data");
  if (!pmd)
    return true;
  const char *pm_given = tp_pstr(r->params, "payment_method");
  if (pm_given && *pm_given) {
    tp_reply_error(r, TP_ERR_PARAMETERS_EXCLUSIVE, "payment_method_data",
                   "You cannot specify both payment_method and payment_method_data.");
    return false;
  }
  struct tp_card_info ci;
  memset(&ci, 0, sizeof ci);
  char cvc[8] = "";
  json_t *pm = tp_pm_from_data(r, cs, pmd, &ci, cvc);
  tp_card_wipe(&ci, sizeof ci);
  tp_card_wipe(cvc, sizeof cvc);
  if (!pm)
    return false;
  json_object_set(pi, "payment_method", json_object_get(pm, "id"));
  json_object_set_new(pi, "status", json_string("requires_confirmation"));
  json_decref(pm);
  return true;
}

/* As Stripe: a PaymentIntent open to every automatic payment method may
 * need a redirect (3-D Secure here), so its confirmation names a return_url
 * unless allow_redirects is never, or the customer is away (off_session) or
 * a Stripe SDK handles the action itself (use_stripe_sdk). False after
 * replying. */
bool tp_redirect_allowed(struct tp_req *r, const json_t *pi)
{
  const json_t *apm = json_object_get(pi, "automatic_payment_methods");
  const char *redirects = json_string_value(json_object_get(apm, "allow_redirects"));
  bool away = false, sdk = false;
  tp_param_bool(r->params, "off_session", &away);
  tp_param_bool(r->params, "use_stripe_sdk", &sdk);
  const char *ret = tp_pstr(r->params, "return_url");
  if (!json_is_true(json_object_get(apm, "enabled")) || (redirects && strcmp(redirects, "never") == 0) || away ||
      sdk || (ret && *ret))
    return true;
  char msg[512];
  snprintf(msg, sizeof msg,
           "A `return_url` must be specified because this %s is configured to automatically "
           "accept the payment methods enabled in the Dashboard, some of which may require a full page "
           "redirect to succeed. If you do not want to accept redirect-based payment methods, set "
           "`automatic_payment_methods[enabled]` to `true` and `automatic_payment_methods[allow_redirects]` "
           "to `never` when creating Setup Intents and Payment Intents.",
           strcmp(json_string_value(json_object_get(pi, "object")) ?: "", "setup_intent") == 0 ? "Setup Intent"
                                                                                               : "Payment Intent");
  tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "return_url", msg);
  return false;
}

bool tp_confirm_pm_choice(struct tp_req *r, struct tp_cs *cs, const json_t *intent, json_t **made,
                          const char **pm_id, struct tp_card_info *ci, char cvc[8])
{
  const json_t *pmd = json_object_get(r->params, "payment_method_data");
  *made = NULL;
  *pm_id = tp_pstr(r->params, "payment_method");
  if (json_is_object(pmd) && *pm_id && **pm_id) {
    tp_reply_error(r, TP_ERR_PARAMETERS_EXCLUSIVE, "payment_method_data",
                   "You cannot specify both payment_method and payment_method_data.");
    return false;
  }
  if (json_is_object(pmd)) {
    *pm_id = NULL;
    *made = tp_pm_from_data(r, cs, pmd, ci, cvc);
    return *made != NULL;
  }
  if (!*pm_id || !**pm_id)
    *pm_id = json_string_value(json_object_get(intent, "payment_method"));
  if (*pm_id && !**pm_id)
    *pm_id = NULL;
  return true;
}

/* Customer cus's default card source (the legacy Cards API) into out, while
 * still its (a card detached through the PaymentMethods API is not); false
 * when it has none. */
static bool default_card_source(const struct tp_req *r, const char *cus, char out[TP_ID_MAX])
{
  out[0] = '\0';
  json_t *c = tp_store_get_json(&tp_app.store, TP_K_CUSTOMER, r->merchant.id, cus);
  const char *def = json_string_value(json_object_get(c, "default_source"));
  if (def) {
    json_t *card = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, def);
    if (tp_is_card_source(card, cus))
      tp_scopy(out, TP_ID_MAX, def);
    json_decref(card);
  }
  json_decref(c);
  return out[0] != '\0';
}

/* Start a confirmation of pi (owned) within cs (owned). Replies on failure.
 * On success the request is suspended until the outcome is committed. */
/* charges_api: the Charges API's create (POST /v1/charges) made pi for this
 * confirmation: nobody can answer a 3-D Secure challenge there, so a card
 * that wants one is declined (authentication_required), and the replies
 * are the charge, or an error naming it, never the PaymentIntent. */
static void confirm(struct tp_req *r, json_t *pi, struct tp_cs *cs, bool created, const char *lock_id,
                    bool charges_api)
{
  const json_t *params = r->params;
  struct tp_card_info ci;
  memset(&ci, 0, sizeof ci);
  char cvc[8] = "";
  json_t *pm = NULL;
  const char *pm_id;
  char def[TP_ID_MAX];
  tp_scopy(r->pm_made_for, sizeof r->pm_made_for, json_string_value(json_object_get(pi, "id")));
  /* A card to be saved to a customer deleted since: refused as a
   * SetupIntent's is (it succeeded and saved nothing, no attach event,
   * nothing to charge off-session later) */
  if (tp_pi_save_target_gone(r, pi)) {
    tp_reply_error(r, TP_ERR_RESOURCE_MISSING, "customer", TP_PI_SAVE_TARGET_GONE);
    goto fail;
  }
  if (!tp_redirect_allowed(r, pi) || !tp_confirm_pm_choice(r, cs, pi, &pm, &pm_id, &ci, cvc))
    goto fail;
  if (!pm) {
    /* Stripe, for those moving from the Charges API: with no payment
     * method, the customer's default card source pays. */
    const char *cus = json_string_value(json_object_get(pi, "customer"));
    if (!pm_id && cus && default_card_source(r, cus, def))
      pm_id = def;
    if (!pm_id) { /* Stripe's words, the PaymentIntent in the error */
      if (created) { /* made by this request and not saved: no object to name, nothing kept */
        tp_reply_error(r, TP_ERR_PAYMENT_METHOD_MISSING, "payment_method", NULL);
        r->err = 0; /* a request refused, not a state: tp_idem_keeps_error passes it */
      } else
        pi_state_error(r, pi, TP_ERR_PAYMENT_METHOD_MISSING, "payment_method", NULL);
      goto fail;
    }
    pm = tp_pm_resolve(r, cs, pm_id, &ci);
    if (!pm || !tp_pm_belongs(r, pm, pi, "PaymentIntent"))
      goto fail;
  }
  /* Made by this confirmation: from payment_method_data, or a test id
   * (pm_card_visa) that stands for a new PaymentMethod each time. (pm_id
   * may be the PaymentIntent's own string, replaced just below.) */
  const char *got_id = json_string_value(json_object_get(pm, "id"));
  bool made_here = !pm_id || !got_id || strcmp(pm_id, got_id) != 0;
  json_object_set(pi, "payment_method", json_object_get(pm, "id"));
  json_object_set_new(pi, "last_payment_error", json_null());
  /* payment_intent.created shows the PaymentIntent as it was created, before
   * this confirmation changed its status (Stripe's event for the create of
   * a confirm=true request), naming the PaymentMethod that pays (pm_card_visa
   * stands for a new one each time); a refused confirmation frees cs and it
   * with it. */
  if (created)
    tp_emit(cs, r, r->merchant.id, "payment_intent.created", pi);

  bool off = false;
  tp_param_bool(params, "off_session", &off);
  const char *sfu_now = tp_pi_card_option(pi, "setup_future_usage");
  if (off && sfu_now && *sfu_now && strcmp(sfu_now, "none") != 0) {
    /* Stripe: a card is set up for later with the customer present. */
    tp_reply_error(r, TP_ERR_OFF_SESSION_SETUP_FUTURE_USAGE, "off_session", NULL);
    goto fail;
  }
  /* A manually confirmed PaymentIntent whose challenge was passed for this
   * card, amount and currency (tp_h_3ds_submit): the server's confirmation
   * authorizes it without asking again. */
  bool authenticated = tp_pi_authenticated(pi, pm);
  tp_pi_authenticated_drop(pi);
  if (!authenticated && tp_wants_3ds(pi, ci.pan, off, pm)) {
    /* The issuer wants 3-D Secure: hand the customer a challenge. */
    bool no_action = false;
    /* error_on_requires_action: fail instead of asking, as off-session. */
    tp_param_bool(params, "error_on_requires_action", &no_action);
    /* Off-session (and through the Charges API) the authorization goes to
     * the issuer, which declines it soft, wanting authentication: a failed
     * charge, as Stripe records it. error_on_requires_action stops before. */
    bool issuer_declines = off || charges_api;
    off = off || no_action || charges_api;
    tp_await_3ds(r, pi);
    /* A card whose 3-D Secure attempt fails (Stripe's 3097): declined
     * processing_error, nothing sent to the processor. */
    bool tds_error = !off && tp_test_card_3ds_error(ci.pan);
    if (off || tds_error) {
      /* Off-session: nobody can answer a challenge; fail like Stripe does. */
      json_object_set_new(pi, "status", json_string("requires_payment_method"));
      json_object_set_new(pi, "next_action", json_null());
      json_t *err = tp_error_object(tds_error ? (enum tp_err)tp_error_by_decline_code("processing_error")->number
                                              : TP_ERR_DECLINE_AUTHENTICATION_REQUIRED,
                                    NULL, NULL);
      json_t *ch = NULL;
      if (issuer_declines && !tds_error) {
        ch = tp_charge_declined_unsent(&r->merchant, pi, pm, ci.pan, "authentication_required", charges_api,
                                               made_here);
        json_object_set(ch, "failure_code", json_object_get(err, "code"));
        json_object_set(ch, "failure_message", json_object_get(err, "message"));
        json_object_set(err, "charge", json_object_get(ch, "id"));
        json_object_set(pi, "latest_charge", json_object_get(ch, "id"));
        tp_put_emit(cs, r, r->merchant.id, TP_K_CHARGE, "charge.failed", ch);
      }
      json_object_set(err, "payment_method", pm);
      json_object_set(pi, "last_payment_error", err);
      json_object_set_new(pi, "payment_method", json_null());
      tp_cs_put(cs, TP_K_PAYMENT_INTENT, r->merchant.id, pi);
      tp_emit(cs, r, r->merchant.id, "payment_intent.payment_failed", pi);
      /* A copy: the PaymentIntent's last_payment_error is err itself, and a
       * tree that contains itself cannot be written out. */
      if (charges_api) {
        json_t *body = json_deep_copy(err);
        json_object_del(body, "payment_method");
        json_decref(err);
        err = body;
      } else {
        /* as every error's PaymentIntent: with the lists a version before
         * 2022-11-15 shows (its charges, this one not in the store yet) */
        json_t *epi = json_deep_copy(pi);
        json_t *known = ch ? tp_pack("[O]", ch) : json_array();
        tp_legacy_lists(r, epi, known);
        json_decref(known);
        json_object_set_new(err, "payment_intent", epi);
      }
      json_decref(ch);
      tp_error_request_log(err, r);
      tp_reply_json(r, 402, tp_pack("{s:o}", "error", err));
    } else {
      tp_cs_put(cs, TP_K_PAYMENT_INTENT, r->merchant.id, pi);
      tp_emit(cs, r, r->merchant.id, "payment_intent.requires_action", pi);
      json_t *out = json_deep_copy(pi);
      json_t *known = tp_pack("[O]", pm);
      tp_expand(r, out, known);
      json_decref(known);
      tp_reply_json(r, 200, out);
    }
    tp_card_wipe(&ci, sizeof ci);
    json_decref(pm);
    json_decref(pi);
    tp_commit_and_reply_unlock(r, cs, lock_id);
    return;
  }

  /* One made by this confirmation was never handed out: nothing to hold. */
  char pm_lock[TP_ID_MAX] = "";
  switch (made_here ? TP_PM_FREE : tp_pm_hold(r, pi, pm, pm_lock)) {
  case TP_PM_FREE:
  case TP_PM_HELD:
    break;
  case TP_PM_BUSY:
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    goto fail;
  case TP_PM_GONE:
    tp_reply_missing(r, "payment_method", json_string_value(json_object_get(pm, "id")), "payment_method");
    goto fail;
  case TP_PM_SPENT:
    tp_reply_pm_consumed(r);
    goto fail;
  case TP_PM_ATTACHED:
    tp_reply_error(r, TP_ERR_PAYMENT_METHOD_UNEXPECTED_STATE, "payment_method",
                   "The provided PaymentMethod belongs to a customer other than the one on this PaymentIntent.");
    goto fail;
  }

  /* Processing: commit the attempt first, then call the processor. */
  json_object_set_new(pi, "status", json_string("processing"));
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, r->merchant.id, pi);
  struct tp_pay *p = tp_pay_new(r, &r->merchant);
  p->pi = pi;
  p->pm = pm;
  p->outcome = tp_outcome_authorize;
  p->reply_charge = charges_api;
  p->three_ds_done = authenticated;
  p->pm_made_here = made_here;
  if (pm_lock[0])
    tp_scopy(p->pm_lock_id, sizeof p->pm_lock_id, pm_lock);
  if (lock_id)
    tp_scopy(p->lock_id, sizeof p->lock_id, lock_id);
  const char *cm = tp_pi_card_option(pi, "capture_method");
  tp_pay_attempt(p, "authorize", json_integer_value(json_object_get(pi, "amount")),
                 json_string_value(json_object_get(pi, "currency")));
  p->att.capture = !(cm && strcmp(cm, "manual") == 0);
  tp_scopy(p->att.vault_token, sizeof p->att.vault_token, json_string_value(json_object_get(pm, "id")));
  p->call.kind = TP_PROC_AUTHORIZE;
  tp_scopy(p->call.pan, sizeof p->call.pan, ci.pan);
  p->call.exp_month = ci.exp_month;
  p->call.exp_year = ci.exp_year;
  tp_scopy(p->call.cvc, sizeof p->call.cvc, cvc);
  tp_card_wipe(&ci, sizeof ci);
  tp_card_wipe(cvc, sizeof cvc);
  tp_req_suspend(r);
  tp_pay_run(p, cs);
  return;
fail:
  tp_card_wipe(&ci, sizeof ci);
  json_decref(pm);
  json_decref(pi);
  tp_cs_free(cs);
  if (lock_id)
    tp_lock_release(lock_id);
}

enum tp_pm_hold tp_pm_hold(const struct tp_req *r, const json_t *pi, const json_t *pm, char lock[TP_ID_MAX])
{
  const char *id = json_string_value(json_object_get(pm, "id"));
  /* Held with setup_future_usage too, to its outcome (save_for_future_use
   * saves it under this lock): two payments saving one new card for two
   * customers both paid and it was saved to one, and a payment that saved
   * it raced one that spent it (review, session 41). Such a payment does
   * not spend it; tp_pm_spent says whether an earlier one did. */
  if (!id || json_is_string(json_object_get(pm, "customer")) || tp_is_card_source(pm, NULL))
    return TP_PM_FREE;
  if (!tp_lock_try(id))
    return TP_PM_BUSY;
  /* Read again under the lock: a payment that held it may have spent the
   * card after this one read it (two paid). */
  json_t *fresh = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, id);
  enum tp_pm_hold h = !fresh ? TP_PM_GONE : tp_pm_spent(r, fresh) ? TP_PM_SPENT : TP_PM_HELD;
  /* Or attached to a customer meanwhile (a customer made with it, a
   * SetupIntent): then it is that customer's, paid only with it. */
  const char *owner = json_string_value(json_object_get(fresh, "customer"));
  if (h == TP_PM_HELD && owner) {
    const char *cus = json_string_value(json_object_get(pi, "customer"));
    h = cus && strcmp(cus, owner) == 0 ? TP_PM_FREE : TP_PM_ATTACHED;
  }
  json_decref(fresh);
  if (h == TP_PM_HELD)
    tp_scopy(lock, TP_ID_MAX, id);
  else
    tp_lock_release(id);
  return h;
}

/* ---- handlers ---------------------------------------------------------------- */
/* What a PaymentIntent's and a Charges API charge's creation both need:
 * amount and currency (valid together), and the customer, when named, a
 * live one. False after replying. */
static bool create_basics(struct tp_req *r, int64_t *amount, const struct tp_currency **cur)
{
  if (!tp_param_int(r->params, "amount", amount)) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "amount", "Missing required param: amount.");
    return false;
  }
  const char *code = tp_pstr(r->params, "currency");
  if (!code) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "currency", "Missing required param: currency.");
    return false;
  }
  if (!check_currency(r, code, cur) || !check_amount(r, *amount, *cur))
    return false;
  const char *cus = tp_pstr(r->params, "customer");
  return !cus || !*cus || tp_live_or_missing(r, TP_K_CUSTOMER, cus, "customer", "customer");
}

/* The parameters Stripe's reference says "can only be used with
 * confirm=true" on a create (mandate and mandate_data too, which Turnpike
 * refuses anyway): without it they would be kept nowhere and do nothing. */
bool tp_confirm_only_ok(struct tp_req *r, const char *const *only)
{
  bool confirming = false;
  if (tp_param_bool(r->params, "confirm", &confirming) && confirming)
    return true;
  for (int i = 0; only[i]; i++)
    if (json_object_get(r->params, only[i])) {
      tp_reply_error(r, TP_ERR_PARAMETER_REQUIRES_CONFIRM, only[i], NULL);
      return false;
    }
  return true;
}

void tp_h_pi_create(struct tp_req *r)
{
  int64_t amount;
  const struct tp_currency *cur;
  static const char *const only[] = {"off_session", "return_url", "error_on_requires_action", NULL};
  if (!tp_check_params(r, spec_create) || !tp_confirm_only_ok(r, only) || !create_basics(r, &amount, &cur))
    return;
  const char *pm_given = tp_pstr(r->params, "payment_method");
  if (pm_given && *pm_given && !tp_pm_exists(r, pm_given, "payment_method"))
    return;
  json_t *pi = pi_new(r, amount, cur);
  if (!apply_fields(r, pi, r->params) || !tp_apply_apm(r, pi, r->params)) {
    json_decref(pi);
    return;
  }
  if (!apply_pm_options(r, pi, r->params)) {
    json_decref(pi);
    return;
  }
  const char *pm_id = tp_pstr(r->params, "payment_method");
  bool do_confirm = false;
  tp_param_bool(r->params, "confirm", &do_confirm);
  if (pm_id && *pm_id) {
    json_object_set_new(pi, "payment_method", json_string(pm_id));
    json_object_set_new(pi, "status", json_string("requires_confirmation"));
  }
  if (!pm_owner_ok(r, pi, "PaymentIntent")) {
    json_decref(pi);
    return;
  }
  struct tp_cs *cs = tp_cs_new();
  if (do_confirm) {
    confirm(r, pi, cs, true, NULL, false);
    return;
  }
  if (!attach_pm_data(r, cs, pi) || !tp_pm_materialize(r, cs, pi)) {
    json_decref(pi);
    tp_cs_free(cs);
    return;
  }
  tp_put_emit(cs, r, r->merchant.id, TP_K_PAYMENT_INTENT, "payment_intent.created", pi);
  if (!tp_expand(r, pi, NULL)) {
    json_decref(pi);
    tp_cs_free(cs);
    return;
  }
  tp_reply_json(r, 200, pi);
  tp_commit_and_reply_unlock(r, cs, NULL);
}

/* What Stripe shows a client that holds only the publishable key and the
 * client_secret: the fields its API reference marks as retrievable with a
 * publishable key. Everything else (metadata, customer, charges, amounts
 * received) is the merchant's. */
static const char *const client_fields[] = {
    "id", "object", "amount", "automatic_payment_methods", "canceled_at", "cancellation_reason",
    "capture_method", "client_secret", "confirmation_method", "created", "currency", "description",
    "last_payment_error", "livemode", "next_action", "payment_method", "payment_method_types", "processing",
    "receipt_email", "setup_future_usage", "shipping", "status", NULL};

/* The same for a SetupIntent. */
static const char *const si_client_fields[] = {
    "id", "object", "cancellation_reason", "client_secret", "created", "description", "last_setup_error",
    "livemode", "next_action", "payment_method", "payment_method_types", "status", "usage", NULL};

static void client_cut(json_t *pi, const char *const *fields)
{
  const char *k;
  json_t *v;
  void *tmp;
  json_object_foreach_safe(pi, tmp, k, v)
  {
    bool keep = false;
    for (int i = 0; fields[i] && !keep; i++)
      keep = strcmp(k, fields[i]) == 0;
    if (!keep)
      json_object_del(pi, k);
  }
}

/* What no reply to a publishable key holds, anywhere in it (the top-level
 * cut below is of one object; a PaymentMethod also comes nested, as
 * last_payment_error.payment_method, error.payment_method of a 402 or an
 * expanded payment_method):
 * - a card's fingerprint (Stripe, since API 2014-10-07): it is an HMAC of
 *   the card number under the merchant's key, and a public key that
 *   answered it for any number it was given would recover a stored card's
 *   number from its last4 and fingerprint (a copy of the store, or of a
 *   backup) by trying the digits left open; dropped from every card object
 *   (one with last4);
 * - metadata, redacted to {} ("We redact metadata from objects in response
 *   to publishable key requests", Stripe's metadata page): the merchant's
 *   notes (fraud flags, CRM tiers) on a saved card reached the shopper's
 *   browser through a decline's payment_method (session 38's review);
 * - a PaymentMethod's customer id, the merchant's. */
static void public_redact(json_t *v)
{
  if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) public_redact(x);
    return;
  }
  if (!json_is_object(v))
    return;
  if (json_object_get(v, "last4"))
    json_object_del(v, "fingerprint");
  const char *type = json_string_value(json_object_get(v, "object"));
  if (type && strcmp(type, "payment_method") == 0 && json_object_get(v, "customer"))
    json_object_set_new(v, "customer", json_null());
  /* the gateway's own marks (which payment made a PaymentMethod, a
   * charge's processor and sandbox hints) are the merchant's, not the
   * browser's */
  if (type)
    json_object_del(v, "turnpike");
  const char *k;
  json_t *x;
  json_object_foreach(v, k, x)
  {
    if (strcmp(k, "metadata") == 0) {
      if (json_is_object(x))
        json_object_clear(x);
    } else {
      public_redact(x);
    }
  }
}

char *tp_publishable_view(const char *body, size_t *len, bool client)
{
  json_t *o = tp_json_loadb(body, *len);
  if (!o)
    return NULL;
  public_redact(o);
  if (!client) {
    char *out = tp_json_dump(o, len);
    json_decref(o);
    return out;
  }
  json_t *err = json_object_get(o, "error");
  json_t *pi = err ? json_object_get(err, "payment_intent") : o;
  const char *type = json_string_value(json_object_get(pi, "object"));
  if (type && strcmp(type, "payment_intent") == 0)
    client_cut(pi, client_fields);
  json_t *si = err ? json_object_get(err, "setup_intent") : o;
  type = json_string_value(json_object_get(si, "object"));
  if (type && strcmp(type, "setup_intent") == 0)
    client_cut(si, si_client_fields);
  char *out = tp_json_dump(o, len);
  json_decref(o);
  return out;
}

bool tp_client_secret_ok(struct tp_req *r, const json_t *pi)
{
  if (!r->publishable)
    return true;
  const char *given = json_string_value(json_object_get(r->params, "client_secret"));
  const char *want = json_string_value(json_object_get(pi, "client_secret"));
  if (given && want && strlen(given) == strlen(want) && tp_ct_equal(given, want, strlen(want)))
    return true;
  const char *what = json_string_value(json_object_get(pi, "object"));
  bool si = what && strcmp(what, "setup_intent") == 0;
  tp_reply_error(r, si ? TP_ERR_SETUP_INTENT_CLIENT_SECRET_INVALID : TP_ERR_CLIENT_SECRET_INVALID, "client_secret",
                 NULL);
  return false;
}

void tp_h_pi_retrieve(struct tp_req *r)
{
  if (!tp_check_params(r, spec_retrieve))
    return;
  json_t *pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, r->path_id);
  if (!pi) {
    tp_reply_no_such(r, "payment_intent", "intent");
    return;
  }
  if (!tp_client_secret_ok(r, pi)) {
    json_decref(pi);
    return;
  }
  if (!tp_expand(r, pi, NULL)) {
    json_decref(pi);
    return;
  }
  tp_reply_json(r, 200, pi);
}

/* Load PaymentIntent id (the URL's, or a charge's) under its lock; replies
 * and returns NULL on failure. */
static json_t *load_locked(struct tp_req *r, const char *id)
{
  if (!tp_lock_try(id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return NULL;
  }
  json_t *pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, id);
  if (!pi) {
    tp_lock_release(id);
    tp_reply_no_such(r, "payment_intent", "intent");
  }
  return pi;
}

void tp_h_pi_update(struct tp_req *r)
{
  if (!tp_check_params(r, spec_update))
    return;
  json_t *pi = load_locked(r, r->path_id);
  if (!pi)
    return;
  const char *st = json_string_value(json_object_get(pi, "status"));
  if (strcmp(st, "processing") == 0) {
    /* Its outcome (or recovery) writes the PaymentIntent next. Stripe
     * names the first field and where it may change. */
    const char *k = "update";
    json_t *v;
    json_object_foreach(r->params, k, v) if (strcmp(k, "expand") != 0) break;
    if (!k || strcmp(k, "expand") == 0) {
      unexpected_state(r, pi, "update");
      goto out;
    }
    char msg[360];
    bool described = strcmp(k, "metadata") == 0 || strcmp(k, "description") == 0 ||
                     strcmp(k, "receipt_email") == 0 || strcmp(k, "shipping") == 0;
    snprintf(msg, sizeof msg,
             "This PaymentIntent's %s could not be updated because it has a status of processing. You may only "
             "update the %s of a PaymentIntent with one of the following statuses: requires_payment_method, "
             "requires_confirmation, requires_action%s.",
             k, k, described ? ", requires_capture, succeeded" : "");
    pi_state_error(r, pi, TP_ERR_PAYMENT_INTENT_UNEXPECTED_STATE, k, msg);
    goto out;
  }
  if (strcmp(st, "canceled") == 0 && json_object_get(r->params, "receipt_email")) {
    /* Stripe's own refusal (the receipt of a payment that never was) */
    pi_state_error(r, pi, TP_ERR_PAYMENT_INTENT_UNEXPECTED_STATE, "receipt_email",
                   "This PaymentIntent's receipt_email could not be updated because it has a status of canceled. "
                   "You may only update the receipt_email of a PaymentIntent with one of the following statuses: "
                   "requires_payment_method, requires_confirmation, requires_action, requires_capture, succeeded.");
    goto out;
  }
  if (strcmp(st, "requires_payment_method") != 0 && strcmp(st, "requires_confirmation") != 0 &&
      strcmp(st, "requires_action") != 0) {
    /* As on Stripe, what only describes the payment (metadata, description,
     * receipt_email, shipping) may change once it is confirmed, say an order
     * id added after it has succeeded; what would change the payment itself
     * only before. */
    static const char *const any_status[] = {"metadata", "description", "receipt_email", "shipping", "expand",
                                             NULL};
    const char *k;
    json_t *v;
    json_object_foreach(r->params, k, v)
    {
      int i = 0;
      while (any_status[i] && strcmp(any_status[i], k) != 0)
        i++;
      if (any_status[i])
        continue;
      char msg[320];
      snprintf(msg, sizeof msg,
               "This PaymentIntent's %s could not be updated because it has a status of %s. You may only update "
               "the %s of a PaymentIntent with one of the following statuses: requires_payment_method, "
               "requires_confirmation, requires_action.",
               k, st, k);
      pi_state_error(r, pi,
                     strcmp(k, "amount") == 0 ? TP_ERR_PAYMENT_INTENT_AMOUNT_LOCKED
                                              : TP_ERR_PAYMENT_INTENT_UNEXPECTED_STATE,
                     k, msg);
      goto out;
    }
  }
  const char *code = tp_pstr(r->params, "currency");
  const struct tp_currency *cur = tp_currency_find(json_string_value(json_object_get(pi, "currency")));
  if (code && !check_currency(r, code, &cur))
    goto out;
  int64_t amount = json_integer_value(json_object_get(pi, "amount"));
  tp_param_int(r->params, "amount", &amount);
  if (!check_amount(r, amount, cur))
    goto out;
  const char *cus = tp_pstr(r->params, "customer");
  const char *had = json_string_value(json_object_get(pi, "customer"));
  if (had && json_object_get(r->params, "customer") && strcmp(had, cus ? cus : "") != 0) {
    /* Stripe's rule: once set, a PaymentIntent's customer stays (it moved
     * a payment, and the card saved with it, to another customer). */
    tp_reply_error(r, TP_ERR_PAYMENT_INTENT_CUSTOMER_LOCKED, "customer", NULL);
    goto out;
  }
  if (cus && *cus && !tp_live_or_missing(r, TP_K_CUSTOMER, cus, "customer", "customer"))
    goto out;
  const char *pm_given = tp_pstr(r->params, "payment_method");
  if (pm_given && *pm_given && !tp_pm_exists(r, pm_given, "payment_method"))
    goto out;
  /* What the customer authenticated (a 3-D Secure challenge is for an
   * amount, a currency and a card): changing any of them in requires_action
   * takes the payment back to requires_confirmation, its challenge gone, as
   * on Stripe. (The challenge issued for 20.00 USD authorized 99.99 EUR.) */
  bool in_action = strcmp(st, "requires_action") == 0;
  bool authenticated_changed =
    amount != json_integer_value(json_object_get(pi, "amount")) ||
    strcmp(cur->code, json_string_value(json_object_get(pi, "currency")) ?: "") != 0 ||
    json_object_get(r->params, "payment_method_data") != NULL;
  json_object_set_new(pi, "amount", json_integer(amount));
  json_object_set_new(pi, "currency", json_string(cur->code));
  /* Stripe: the previous confirmation's error "will be cleared if the
   * PaymentIntent is later updated for any reason". */
  json_object_set_new(pi, "last_payment_error", json_null());
  size_t md_keys = json_object_size(json_object_get(pi, "metadata"));
  if (!apply_fields(r, pi, r->params) || !apply_pm_options(r, pi, r->params))
    goto out;
  const char *pm_id = tp_pstr(r->params, "payment_method");
  if (pm_id && *pm_id) {
    json_object_set_new(pi, "payment_method", json_string(pm_id));
    json_object_set_new(pi, "status", json_string("requires_confirmation"));
  }
  if ((json_object_get(r->params, "payment_method") || json_object_get(r->params, "customer")) &&
      !pm_owner_ok(r, pi, "PaymentIntent"))
    goto out;
  if (in_action && authenticated_changed)
    json_object_set_new(pi, "status", json_string("requires_confirmation"));
  if (strcmp(json_string_value(json_object_get(pi, "status")), "requires_action") != 0)
    json_object_set_new(pi, "next_action", json_null());
  struct tp_cs *cs = tp_cs_new();
  if (!attach_pm_data(r, cs, pi) || !tp_pm_materialize(r, cs, pi)) {
    tp_cs_free(cs);
    goto out;
  }
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, r->merchant.id, pi);
  tp_metadata_index_emptied(cs, TP_K_PAYMENT_INTENT, r->merchant.id, md_keys, pi);
  json_t *out = json_incref(pi);
  if (!tp_expand(r, out, NULL)) {
    json_decref(out);
    tp_cs_free(cs);
    goto out;
  }
  tp_reply_json(r, 200, out);
  json_decref(pi);
  tp_commit_and_reply_unlock(r, cs, r->path_id);
  return;
out:
  json_decref(pi);
  tp_lock_release(r->path_id);
}

/* With a publishable key (a browser holding the client_secret), what only
 * the merchant decides stays as the merchant set it: no off_session (the
 * customer is there), no other capture_method, and 3-D Secure asked no
 * less than the merchant asked (automatic < any < challenge). False after
 * replying. intent: the PaymentIntent or SetupIntent as stored. */
bool tp_publishable_confirm_ok(struct tp_req *r, const json_t *intent)
{
  if (!r->publishable)
    return true;
  static const char *const rank[] = {"automatic", "any", "challenge", NULL};
  const char *bad = NULL;
  bool off = false;
  if (tp_param_bool(r->params, "off_session", &off) && off)
    bad = "off_session";
  const char *cm = tp_pstr(r->params, "capture_method");
  const char *cm_had = json_string_value(json_object_get(intent, "capture_method"));
  if (!bad && cm && cm_had && strcmp(cm, cm_had) != 0)
    bad = "capture_method";
  /* the card's option, which decides over the top-level field ("" unsets it) */
  const json_t *pmo_cm = json_object_get(
      json_object_get(json_object_get(r->params, "payment_method_options"), "card"), "capture_method");
  const char *pmo_had = json_string_value(json_object_get(
      json_object_get(json_object_get(intent, "payment_method_options"), "card"), "capture_method"));
  if (!bad && pmo_cm && !(json_is_string(pmo_cm) && pmo_had && strcmp(json_string_value(pmo_cm), pmo_had) == 0))
    bad = "payment_method_options[card][capture_method]";
  const char *rq = json_string_value(json_object_get(
      json_object_get(json_object_get(r->params, "payment_method_options"), "card"), "request_three_d_secure"));
  const char *rq_had = json_string_value(json_object_get(
      json_object_get(json_object_get(intent, "payment_method_options"), "card"), "request_three_d_secure"));
  if (!bad && rq && rq_had) {
    int g = -1, h = -1;
    for (int i = 0; rank[i]; i++) {
      if (strcmp(rq, rank[i]) == 0)
        g = i;
      if (strcmp(rq_had, rank[i]) == 0)
        h = i;
    }
    if (g < h)
      bad = "payment_method_options[card][request_three_d_secure]";
  }
  if (!bad)
    return true;
  char msg[256];
  snprintf(msg, sizeof msg,
           "With a publishable key, %s cannot be set or lowered: it is the merchant's decision (use the secret "
           "key).",
           bad);
  tp_reply_error(r, TP_ERR_PARAMETER_INVALID, bad, msg);
  return false;
}

/* A publishable key's change of setup_future_usage from had to given:
 * none set yet, the same, or on_session to off_session. */
static bool sfu_change_ok(const json_t *had, const json_t *given)
{
  const char *h = json_string_value(had), *g = json_string_value(given);
  if (!h || !*h || !given)
    return true;
  return g && (strcmp(g, h) == 0 || (strcmp(h, "on_session") == 0 && strcmp(g, "off_session") == 0));
}

void tp_h_pi_confirm(struct tp_req *r)
{
  if (!tp_check_params(r, spec_confirm))
    return;
  json_t *pi = load_locked(r, r->path_id);
  if (!pi)
    return;
  if (!tp_client_secret_ok(r, pi)) {
    json_decref(pi);
    tp_lock_release(r->path_id);
    return;
  }
  /* confirmation_method manual: every attempt is the server's (Stripe). */
  const char *method = json_string_value(json_object_get(pi, "confirmation_method"));
  if (r->publishable && method && strcmp(method, "manual") == 0) {
    tp_reply_error(r, TP_ERR_PAYMENT_INTENT_MANUAL_CONFIRMATION, NULL, NULL);
    json_decref(pi);
    tp_lock_release(r->path_id);
    return;
  }
  const char *st = json_string_value(json_object_get(pi, "status"));
  if (strcmp(st, "requires_payment_method") != 0 && strcmp(st, "requires_confirmation") != 0 &&
      strcmp(st, "requires_action") != 0) {
    unexpected_state(r, pi, "confirm");
    json_decref(pi);
    tp_lock_release(r->path_id);
    return;
  }
  int64_t to_confirm;
  if (tp_param_int(r->params, "amount_to_confirm", &to_confirm) &&
      to_confirm != json_integer_value(json_object_get(pi, "amount"))) {
    /* Stripe's default; a part of the amount is a multi-part payment,
     * which no connector here can make. */
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "amount_to_confirm",
                   "Invalid amount_to_confirm: Turnpike confirms the PaymentIntent's whole amount.");
    json_decref(pi);
    tp_lock_release(r->path_id);
    return;
  }
  if (!tp_email_param_ok(r, r->params, "receipt_email", "receipt_email") || !pi_strings_ok(r, r->params) ||
      !tp_publishable_confirm_ok(r, pi)) {
    json_decref(pi);
    tp_lock_release(r->path_id);
    return;
  }
  /* Stripe: with a publishable key, a setup_future_usage already set may
   * only go from on_session to off_session (the browser cannot undo the
   * merchant's decision to save the card); the card's option alike. */
  const json_t *pmo_had = json_object_get(json_object_get(pi, "payment_method_options"), "card");
  const json_t *pmo_new = json_object_get(json_object_get(r->params, "payment_method_options"), "card");
  bool top_ok = sfu_change_ok(json_object_get(pi, "setup_future_usage"), json_object_get(r->params, "setup_future_usage"));
  bool card_ok = sfu_change_ok(json_object_get(pmo_had, "setup_future_usage"), json_object_get(pmo_new, "setup_future_usage"));
  if (r->publishable && (!top_ok || !card_ok)) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID,
                   !top_ok ? "setup_future_usage" : "payment_method_options[card][setup_future_usage]",
                   "With a publishable key, setup_future_usage may only be changed from on_session to "
                   "off_session once it is set.");
    json_decref(pi);
    tp_lock_release(r->path_id);
    return;
  }
  apply_method_fields(pi, r->params);
  static const char *const fields[] = {"receipt_email", "setup_future_usage", "capture_method", NULL};
  for (int i = 0; fields[i]; i++) {
    json_t *v = json_object_get(r->params, fields[i]);
    if (v) /* "" unsets (what may be: capture_method "" is refused by its spec) */
      json_object_set_new(pi, fields[i], tp_unset(v) ? json_null() : json_incref(v));
  }
  if (!apply_shipping(r, pi, r->params)) {
    json_decref(pi);
    tp_lock_release(r->path_id);
    return;
  }
  if (!apply_pm_options(r, pi, r->params)) {
    json_decref(pi);
    tp_lock_release(r->path_id);
    return;
  }
  confirm(r, pi, tp_cs_new(), false, r->path_id, false);
}

/* POST /v1/charges: the Charges API's create. Turnpike makes every charge
 * through a PaymentIntent, so this creates one (its description, metadata,
 * receipt_email, shipping, descriptors, transfer_group and customer are
 * the charge's), confirms it with the source (a PaymentMethod, a test
 * PaymentMethod id, a test card token tok_visa ..., or the customer's
 * default PaymentMethod) and answers the charge: capture=false holds it for
 * POST /v1/charges/{id}/capture. The charge's payment_intent names that
 * PaymentIntent (Stripe shows null on a Charges API charge) and its events
 * are sent as well. */
static const struct tp_pspec spec_charge_create[] = {
  {"amount", TP_P_INT, NULL, NULL},
  {"currency", TP_P_STRING, NULL, NULL},
  {"source", TP_P_STRING, NULL, NULL},
  {"customer", TP_P_STRING, NULL, NULL},
  {"capture", TP_P_BOOL, NULL, NULL},
  {"description", TP_P_STRING, NULL, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  {"receipt_email", TP_P_STRING, NULL, NULL},
  {"shipping", TP_P_OBJECT, tp_spec_shipping, NULL},
  {"statement_descriptor", TP_P_STRING, NULL, NULL},
  {"statement_descriptor_suffix", TP_P_STRING, NULL, NULL},
  {"transfer_group", TP_P_STRING, NULL, NULL},
  {"radar_options", TP_P_OBJECT, tp_spec_radar_options, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"card", TP_P_ANY, NULL, NULL}, /* source's older name (tp_card_param_alias) */
  /* What ActiveMerchant's Stripe gateway sends on every charge, for
   * Stripe's fraud signals, which Stripe takes: taken, and not kept
   * (uncaptured, capture=false's older name, excepted: below). */
  {"payment_user_agent", TP_P_STRING, NULL, NULL},
  {"ip", TP_P_STRING, NULL, NULL},
  {"user_agent", TP_P_STRING, NULL, NULL},
  {"referrer", TP_P_STRING, NULL, NULL},
  {"external_id", TP_P_STRING, NULL, NULL},
  {"recurring", TP_P_BOOL, NULL, NULL},
  {"uncaptured", TP_P_BOOL, NULL, NULL},
  UNSUPPORTED("application_fee", tp_why_connect),
  UNSUPPORTED("application_fee_amount", tp_why_connect),
  UNSUPPORTED("destination", tp_why_connect),
  UNSUPPORTED("on_behalf_of", tp_why_connect),
  UNSUPPORTED("transfer_data", tp_why_connect),
  UNSUPPORTED("level3", tp_why_amount_details),
  {NULL, 0, NULL, NULL},
};

void tp_h_charge_create(struct tp_req *r)
{
  int64_t amount;
  const struct tp_currency *cur;
  r->charges_api = true;
  if (!tp_check_params(r, spec_charge_create) || !tp_card_param_alias(r) || !create_basics(r, &amount, &cur))
    return;
  const char *cus = tp_pstr(r->params, "customer");
  /* The source: a PaymentMethod, a card token (a test token such as
   * tok_visa stands for its test card; one from POST /v1/tokens is spent
   * by the PaymentMethod the confirmation makes of it) or, without one,
   * the customer's default card or PaymentMethod. */
  char source[TP_ID_MAX + 8] = "";
  const char *given = tp_pstr(r->params, "source");
  if (given && *given)
    tp_scopy(source, sizeof source, given);
  else if (cus && *cus && !default_card_source(r, cus, source)) {
    /* its default card source, else its default PaymentMethod */
    json_t *c = tp_store_get_json(&tp_app.store, TP_K_CUSTOMER, r->merchant.id, cus);
    const char *def =
        json_string_value(json_object_get(json_object_get(c, "invoice_settings"), "default_payment_method"));
    tp_scopy(source, sizeof source, def ? def : "");
    json_decref(c);
  }
  if (!source[0]) {
    /* A customer with no card: Stripe's 402 card_error, code missing,
     * param card (a CardError that "please add a card" handlers catch). */
    if (cus && *cus)
      tp_reply_error(r, TP_ERR_CARD_MISSING, "card", NULL);
    else
      tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "source", "Must provide source or customer.");
    return;
  }
  if (given && *given && cus && *cus && strncmp(given, "pm_card_", 8) != 0) {
    /* With a customer, the source is one of its cards (Stripe: a token is
     * used alone, and one named with a customer is refused). */
    json_t *pm = strncmp(given, "tok_", 4) == 0 ? NULL
                                                 : tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD,
                                                                     r->merchant.id, given);
    const char *owner = json_string_value(json_object_get(pm, "customer"));
    bool linked = owner && strcmp(owner, cus) == 0;
    json_decref(pm);
    if (!linked) {
      char msg[200];
      snprintf(msg, sizeof msg, "Customer %.64s does not have a linked source with ID %.64s.", cus, given);
      tp_reply_error(r, TP_ERR_RESOURCE_MISSING, "source", msg);
      return;
    }
  }
  if (!tp_pm_exists(r, source, "source"))
    return;
  if (given && *given && !(cus && *cus)) {
    /* a customer's card is charged with its customer */
    json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, given);
    const char *owner = json_string_value(json_object_get(pm, "customer"));
    if (owner) {
      char msg[200];
      snprintf(msg, sizeof msg, "The source %.64s belongs to a customer: pass that customer with it.", given);
      json_decref(pm);
      tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "source", msg);
      return;
    }
    json_decref(pm);
  }
  json_t *pi = pi_new(r, amount, cur);
  if (!apply_fields(r, pi, r->params)) {
    json_decref(pi);
    return;
  }
  /* uncaptured=true, Stripe's first "authorize only" (capture=false's
   * older name, which ActiveMerchant still sends for it): a hold, never a
   * charge the merchant meant only to authorize. */
  bool capture = true, uncaptured = false;
  bool capture_given = tp_param_bool(r->params, "capture", &capture);
  if (tp_param_bool(r->params, "uncaptured", &uncaptured) && uncaptured) {
    if (capture_given && capture) {
      json_decref(pi);
      tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "uncaptured",
                     "uncaptured=true is capture=false: they cannot both be given with opposite meanings.");
      return;
    }
    capture = false;
  }
  if (!capture)
    json_object_set_new(pi, "capture_method", json_string("manual"));
  json_object_set_new(pi, "payment_method", json_string(source));
  json_object_set_new(pi, "status", json_string("requires_confirmation"));
  confirm(r, pi, tp_cs_new(), true, NULL, true);
}

/* statement_descriptor and _suffix given at capture: the charge's, as
 * Stripe's capture sets them; false after replying. */
static bool capture_descriptors(struct tp_req *r, json_t *ch)
{
  if (!descriptors_ok(r, r->params))
    return false;
  static const char *const names[] = {"statement_descriptor", "statement_descriptor_suffix"};
  bool changed = false;
  for (int i = 0; i < 2; i++) {
    const char *v = tp_pstr(r->params, names[i]);
    if (v && *v) {
      json_object_set_new(ch, names[i], json_string(v));
      changed = true;
    }
  }
  if (changed)
    tp_charge_set_descriptor(ch, ch, r->merchant.name);
  return true;
}

/* What a capture request changes besides the capture, as the request
 * sent it (not the objects as they are: an update of either while the
 * capture's outcome is unknown must not be undone by recovery): its
 * metadata as a patch ("" deletes a key), payment_details on the
 * PaymentIntent, receipt_email, transfer_group and the statement
 * descriptors (with the one the charge shows) on the charge. Written ahead
 * with the attempt when there is any (tp_capture_set_write). */
static void capture_set(struct tp_pay *p, struct tp_cs *cs, bool reply_charge)
{
  json_t *pi = json_object(), *ch = json_object(), *v;
  if ((v = json_object_get(p->params, "metadata")) && (json_is_object(v) || tp_unset(v)))
    json_object_set_new(reply_charge ? ch : pi, "metadata", json_is_object(v) ? json_incref(v) : json_string(""));
  if (json_object_get(p->params, "payment_details"))
    json_object_set(pi, "payment_details", json_object_get(p->pi, "payment_details"));
  static const char *const ch_keys[] = {"receipt_email", "transfer_group", "statement_descriptor",
                                        "statement_descriptor_suffix", NULL};
  bool descriptor = false;
  for (int i = 0; ch_keys[i]; i++) {
    const char *s = tp_pstr(p->params, ch_keys[i]);
    if (s && *s && (i >= 2 || reply_charge)) {
      json_object_set(ch, ch_keys[i], json_object_get(p->charge, ch_keys[i]));
      descriptor |= i >= 2;
    }
  }
  if (descriptor)
    json_object_set(ch, "calculated_statement_descriptor", json_object_get(p->charge, "calculated_statement_descriptor"));
  if (json_object_size(pi) || json_object_size(ch)) {
    json_t *set = tp_pack("{s:o, s:o}", "payment_intent", pi, "charge", ch);
    tp_capture_set_write(p, cs, set);
    json_decref(set);
  } else {
    json_decref(pi);
    json_decref(ch);
  }
}

/* When the authorization of uncaptured charge ch lapses: its
 * capture_before, or (charges written before it existed) from its
 * creation. */
static int64_t authorization_due(const json_t *ch)
{
  json_t *before = json_object_get(json_object_get(json_object_get(ch, "payment_method_details"), "card"),
                                   "capture_before");
  return json_is_integer(before) ? json_integer_value(before)
                                 : json_integer_value(json_object_get(ch, "created")) + tp_authorization_ttl();
}

/* Capture the authorization of PaymentIntent pi_id (its lock taken here):
 * amount_param names the amount's parameter (amount_to_capture, or amount on
 * the Charges API), reply_charge answers with the charge instead of the
 * PaymentIntent. The reply comes when the capture is committed. */
static void capture(struct tp_req *r, const char *pi_id, const char *amount_param, bool reply_charge)
{
  bool final = true;
  if (tp_param_bool(r->params, "final_capture", &final) && !final) {
    /* Multicapture (Stripe: "only ... when multicapture is available"):
     * no processor here keeps the rest of a hold after a capture, so the
     * capture would release it; refused before anything moves. */
    tp_reply_error(r, TP_ERR_PARAMETER_UNSUPPORTED, "final_capture",
                   "Parameter not supported by Turnpike: final_capture=false (multicapture is not available: a "
                   "capture releases the rest of the authorization)");
    return;
  }
  json_t *pi = load_locked(r, pi_id);
  if (!pi)
    return;
  if (strcmp(json_string_value(json_object_get(pi, "status")), "requires_capture") != 0) {
    unexpected_state(r, pi, "capture");
    goto fail;
  }
  if (tp_refuse_unsettled(r, pi_id))
    goto fail;
  int64_t capturable = json_integer_value(json_object_get(pi, "amount_capturable"));
  int64_t amount = capturable;
  if (tp_param_int(r->params, amount_param, &amount)) {
    if (amount > capturable) {
      tp_reply_error(r, TP_ERR_CAPTURE_AMOUNT_TOO_LARGE, amount_param, NULL);
      goto fail;
    }
    /* A partial capture is a charge of that amount: the same minimum. */
    const struct tp_currency *cur = tp_currency_find(json_string_value(json_object_get(pi, "currency")));
    if (!at_least_min_charge(r, amount, cur, amount_param) || !tp_check_card_amount(r, amount, cur, amount_param))
      goto fail;
  }
  const char *chid = json_string_value(json_object_get(pi, "latest_charge"));
  json_t *ch = chid ? tp_store_get_json(&tp_app.store, TP_K_CHARGE, r->merchant.id, chid) : NULL;
  if (!ch) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    goto fail;
  }
  if (authorization_due(ch) <= tp_now()) {
    /* Past capture_before (Stripe: "can no longer be captured"), though
     * the expiry scan has not voided it yet (it runs once a minute, 100 at
     * a time, and not at all while the gateway was down): refused, and
     * voided now rather than at the next scan. */
    tp_reply_error(r, TP_ERR_CHARGE_EXPIRED_FOR_CAPTURE, NULL, NULL);
    json_decref(ch);
    json_decref(pi);
    tp_lock_release(pi_id);
    (void)tp_pi_expire(r->merchant.id, pi_id, tp_now());
    return;
  }
  json_t *md = json_object_get(r->params, "metadata");
  if (md) {
    json_t *p2 = tp_pack("{s:O}", "metadata", md);
    /* Merged with what the object holds, metadata can pass 50 keys: refused
     * before anything is captured. */
    bool ok = apply_fields(r, reply_charge ? ch : pi, p2);
    json_decref(p2);
    if (!ok) {
      json_decref(ch);
      goto fail;
    }
  }
  const char *receipt = tp_pstr(r->params, "receipt_email");
  if (reply_charge && receipt && *receipt)
    json_object_set_new(ch, "receipt_email", json_string(receipt));
  const char *group = tp_pstr(r->params, "transfer_group");
  if (reply_charge && group && *group)
    json_object_set_new(ch, "transfer_group", json_string(group));
  if (!reply_charge)
    apply_method_fields(pi, r->params); /* payment_details */
  if (!capture_descriptors(r, ch)) {
    json_decref(ch);
    goto fail;
  }
  struct tp_pay *p = tp_pay_new(r, &r->merchant);
  p->pi = pi;
  p->charge = ch;
  p->outcome = tp_outcome_capture;
  p->reply_charge = reply_charge;
  tp_scopy(p->lock_id, sizeof p->lock_id, pi_id);
  tp_pay_attempt(p, "capture", amount, json_string_value(json_object_get(pi, "currency")));
  p->call.kind = TP_PROC_CAPTURE;
  tp_call_target(&p->call, ch);
  struct tp_cs *wa = tp_cs_new();
  capture_set(p, wa, reply_charge);
  tp_req_suspend(r);
  tp_pay_run(p, wa);
  return;
fail:
  json_decref(pi);
  tp_lock_release(pi_id);
}

/* POST /v1/payment_intents/{id}/increment_authorization. None of the
 * connectors can raise a hold (the ISO 8583 and REST protocols here have no
 * incremental authorization message), so after the usual checks this
 * refuses, as Stripe does for a PaymentIntent that is not eligible. */
static const struct tp_pspec spec_increment[] = {
  {"amount", TP_P_INT, NULL, NULL},
  {"payment_details", TP_P_OBJECT, spec_payment_details, NULL},
  UNSUPPORTED("amount_details", tp_why_amount_details),
  UNSUPPORTED("application_fee_amount", tp_why_connect),
  UNSUPPORTED("transfer_data", tp_why_connect),
  UNSUPPORTED("hooks", tp_why_hooks),
  {"description", TP_P_STRING, NULL, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  {"statement_descriptor", TP_P_STRING, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

void tp_h_pi_increment(struct tp_req *r)
{
  if (!tp_check_params(r, spec_increment))
    return;
  int64_t amount;
  if (!tp_param_int(r->params, "amount", &amount)) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "amount", NULL);
    return;
  }
  json_t *pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, r->path_id);
  if (!pi) {
    tp_reply_missing(r, "payment_intent", r->path_id, "intent"); /* as the other PaymentIntent routes name it */
    return;
  }
  if (strcmp(json_string_value(json_object_get(pi, "status")), "requires_capture") != 0)
    unexpected_state(r, pi, "increment_authorization");
  else
    tp_reply_error(r, TP_ERR_INCREMENTAL_AUTHORIZATION_UNAVAILABLE, NULL, NULL);
  json_decref(pi);
}

void tp_h_pi_capture(struct tp_req *r)
{
  if (!tp_check_params(r, spec_capture))
    return;
  capture(r, r->path_id, "amount_to_capture", false);
}

/* POST /v1/charges/{id}/capture: the Charges API's capture of a charge
 * created by a PaymentIntent with capture_method=manual. It captures that
 * PaymentIntent (amount as amount_to_capture) and answers the charge. */
static const struct tp_pspec spec_charge_capture[] = {
  {"amount", TP_P_INT, NULL, NULL},
  {"transfer_group", TP_P_STRING, NULL, NULL},
  UNSUPPORTED("application_fee", tp_why_connect),
  UNSUPPORTED("application_fee_amount", tp_why_connect),
  UNSUPPORTED("transfer_data", tp_why_connect),
  {"receipt_email", TP_P_STRING, NULL, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  {"statement_descriptor", TP_P_STRING, NULL, NULL},
  {"statement_descriptor_suffix", TP_P_STRING, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

/* An uncaptured charge whose hold was released: by the expiry of its
 * authorization (its PaymentIntent canceled with reason "expired", or
 * "automatic" before API 2025-03-31.basil) or by a cancel. */
static void refused_released(struct tp_req *r, const json_t *ch)
{
  const char *pi_id = json_string_value(json_object_get(ch, "payment_intent"));
  json_t *pi = pi_id ? tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, pi_id) : NULL;
  const char *why = json_string_value(json_object_get(pi, "cancellation_reason"));
  if (why && (strcmp(why, "expired") == 0 || strcmp(why, "automatic") == 0))
    tp_reply_error(r, TP_ERR_CHARGE_EXPIRED_FOR_CAPTURE, NULL, NULL);
  else {
    char msg[160];
    snprintf(msg, sizeof msg, "Charge %.64s cannot be captured: its authorization was canceled.",
             json_string_value(json_object_get(ch, "id")) ?: "");
    tp_reply_error(r, TP_ERR_PAYMENT_INTENT_UNEXPECTED_STATE, NULL, msg);
  }
  json_decref(pi);
}

void tp_h_charge_capture(struct tp_req *r)
{
  if (!tp_check_params(r, spec_charge_capture))
    return;
  json_t *ch = tp_load_path(r, TP_K_CHARGE, "charge");
  if (!ch)
    return;
  if (json_is_true(json_object_get(ch, "captured")))
    tp_reply_error(r, TP_ERR_CHARGE_ALREADY_CAPTURED, NULL, NULL);
  else if (json_is_true(json_object_get(ch, "refunded")) ||
           json_integer_value(json_object_get(json_object_get(ch, "turnpike"), "uncaptured")) > 0)
    refused_released(r, ch);
  else if (!json_is_true(json_object_get(ch, "paid")))
    tp_reply_error(r, TP_ERR_CAPTURE_UNAUTHORIZED_PAYMENT, NULL, NULL);
  else {
    char pi_id[TP_ID_MAX];
    tp_scopy(pi_id, sizeof pi_id, json_string_value(json_object_get(ch, "payment_intent")) ?: "");
    json_decref(ch);
    capture(r, pi_id, "amount", true);
    return;
  }
  json_decref(ch);
}

static json_t *charge_of(const struct tp_merchant *m, const json_t *pi)
{
  const char *chid = json_string_value(json_object_get(pi, "latest_charge"));
  return chid ? tp_store_get_json(&tp_app.store, TP_K_CHARGE, m->id, chid) : NULL;
}

/* Void the authorization of pi (held under its lock, which the flow
 * releases): a cancel (r, tp_outcome_void) or a lapsed authorization (no
 * request, tp_outcome_expire). Takes pi and ch. */
static void start_void(struct tp_req *r, const struct tp_merchant *m, json_t *pi, json_t *ch, const char *reason,
                       tp_pay_outcome_fn outcome)
{
  struct tp_pay *p = tp_pay_new(r, m);
  p->pi = pi;
  p->charge = ch;
  p->outcome = outcome;
  tp_scopy(p->lock_id, sizeof p->lock_id, json_string_value(json_object_get(pi, "id")));
  tp_scopy(p->cancellation_reason, sizeof p->cancellation_reason, reason ? reason : "");
  tp_pay_attempt(p, "void", json_integer_value(json_object_get(pi, "amount_capturable")),
                 json_string_value(json_object_get(pi, "currency")));
  p->call.kind = TP_PROC_VOID;
  tp_call_target(&p->call, p->charge);
  tp_pay_run(p, tp_cs_new());
}

int tp_pi_expire(const char *merchant, const char *pi_id, int64_t now)
{
  if (!tp_lock_try(pi_id))
    return 0; /* a request has it now: next scan */
  struct tp_merchant m;
  memset(&m, 0, sizeof m);
  tp_scopy(m.id, sizeof m.id, merchant);
  json_t *pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, merchant, pi_id);
  const char *st = json_string_value(json_object_get(pi, "status"));
  json_t *ch = st && strcmp(st, "requires_capture") == 0 ? charge_of(&m, pi) : NULL;
  int64_t due = ch ? authorization_due(ch) : 0;
  /* Not while a capture's outcome is unknown (it may have been taken):
   * the next scan, once it is settled. */
  if (!ch || due > now || tp_pi_unsettled(merchant, pi_id) != 0) {
    json_decref(pi);
    json_decref(ch);
    tp_lock_release(pi_id);
    return 0;
  }
  tp_log(TP_LOG_INFO, "authorization_expired", "{s:s, s:s}", "payment_intent", pi_id, "merchant", merchant);
  start_void(NULL, &m, pi, ch, "expired", tp_outcome_expire); /* "automatic" before 2025-03-31.basil */
  return 1;
}

void tp_h_pi_cancel(struct tp_req *r)
{
  if (!tp_check_params(r, spec_cancel))
    return;
  json_t *pi = load_locked(r, r->path_id);
  if (!pi)
    return;
  const char *st = json_string_value(json_object_get(pi, "status"));
  const char *reason = tp_pstr(r->params, "cancellation_reason");
  if (strcmp(st, "requires_capture") == 0) {
    if (tp_refuse_unsettled(r, r->path_id)) {
      json_decref(pi);
      tp_lock_release(r->path_id);
      return;
    }
    tp_req_suspend(r);
    start_void(r, &r->merchant, pi, charge_of(&r->merchant, pi), reason, tp_outcome_void);
    return;
  }
  if (strcmp(st, "requires_payment_method") != 0 && strcmp(st, "requires_confirmation") != 0 &&
      strcmp(st, "requires_action") != 0) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "You cannot cancel this PaymentIntent because it has a status of %s. Only a PaymentIntent with one of "
             "the following statuses may be canceled: requires_payment_method, requires_capture, "
             "requires_confirmation, requires_action.",
             st);
    pi_state_error(r, pi, TP_ERR_PAYMENT_INTENT_UNEXPECTED_STATE, NULL, msg);
    json_decref(pi);
    tp_lock_release(r->path_id);
    return;
  }
  json_object_set_new(pi, "status", json_string("canceled"));
  json_object_set_new(pi, "canceled_at", json_integer(tp_now()));
  json_object_set_new(pi, "cancellation_reason", reason ? json_string(reason) : json_null());
  json_object_set_new(pi, "next_action", json_null());
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, r->merchant.id, pi);
  tp_emit(cs, r, r->merchant.id, "payment_intent.canceled", pi);
  tp_expand(r, pi, NULL);
  tp_reply_json(r, 200, pi);
  tp_commit_and_reply_unlock(r, cs, r->path_id);
}

void tp_h_pi_list(struct tp_req *r)
{
  if (!tp_check_params(r, spec_list))
    return;
  struct tp_list_query q;
  tp_list_query_init(&q, TP_K_PAYMENT_INTENT, r->merchant.id);
  if (!tp_list_params(r, &q))
    return;
  const char *cus = tp_pstr(r->params, "customer");
  if (cus && *cus) {
    q.col_name = "customer";
    q.col_value = cus;
  }
  bool has_more = false;
  json_t *data = tp_app.store.ops->list(tp_app.store.cls, &q, &has_more);
  if (!data) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  json_t *list = tp_pack("{s:s, s:s, s:b, s:o}", "object", "list", "url", "/v1/payment_intents", "has_more",
                         has_more, "data", data);
  if (!tp_expand(r, list, NULL)) {
    json_decref(list);
    return;
  }
  tp_reply_json(r, 200, list);
}
