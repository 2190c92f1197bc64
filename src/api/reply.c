/* Building replies: JSON objects, Stripe-shaped errors. */
#include "api/http.h"
#include "api/objects.h"
#include "api/params.h"
#include "jpack.h"
#include "jsonw.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tp_reply_raw(struct tp_req *r, unsigned status, char *body, size_t len, const char *content_type)
{
  free(r->resp);
  r->status = status;
  r->err = 0;
  r->resp = body;
  r->resp_len = len;
  r->content_type = content_type;
}

void tp_reply_json(struct tp_req *r, unsigned status, json_t *obj)
{
  if (status < 300)
    tp_legacy_lists(r, obj, NULL); /* a request pinned to an old API version */
  size_t len = 0;
  char *s = tp_json_dump(obj, &len);
  json_decref(obj);
  if (!s) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  tp_reply_raw(r, status, s, len, "application/json");
}

/* A JSON string of s, which may echo what the client sent cut short: not
 * valid UTF-8 (jansson refuses it) comes back with its non-ASCII bytes as
 * '?', so a message is never lost. */
static json_t *echo_string(char *s)
{
  json_t *j = json_string(s);
  if (j)
    return j;
  for (char *c = s; *c; c++)
    if ((unsigned char)*c >= 0x80)
      *c = '?';
  return json_string(s);
}

void tp_error_request_log(json_t *err, const struct tp_req *r)
{
  /* Only an authenticated request is kept in the log (server.c
   * observe_request): another's link led to a 404. */
  if (!r->authed)
    return;
  json_object_set_new(err, "request_log_url", json_sprintf("%s/v1/turnpike/requests/%s", tp_app.public_url,
                                                          r->request_id));
}

/* The codes of the registry that are Stripe's own (its error-codes page
 * documents each; our own, such as processor_* or query_too_many_parameters,
 * have no page there), sorted for bsearch. */
static const char *const stripe_codes[] = {
  "account_invalid", "amount_too_large", "amount_too_small", "api_key_expired", "authentication_required",
  "balance_insufficient", "capture_charge_authorization_expired", "capture_unauthorized_payment",
  "card_decline_rate_limit_exceeded", "card_declined", "charge_already_captured", "charge_already_refunded",
  "charge_disputed", "charge_exceeds_transaction_limit", "charge_expired_for_capture", "charge_not_refundable",
  "country_code_invalid", "customer_max_payment_methods", "email_invalid", "expired_card", "idempotency_key_in_use",
  "incorrect_address", "incorrect_cvc", "incorrect_number", "incorrect_zip", "intent_invalid_state",
  "invalid_characters", "invalid_charge_amount", "invalid_cvc", "invalid_expiry_month", "invalid_expiry_year",
  "invalid_number", "livemode_mismatch", "lock_timeout", "parameter_invalid_empty", "parameter_invalid_integer",
  "parameter_invalid_string_blank", "parameter_invalid_string_empty", "parameter_missing", "parameter_unknown",
  "parameters_exclusive", "payment_intent_action_required", "payment_intent_authentication_failure",
  "payment_intent_incompatible_payment_method", "payment_intent_invalid_parameter", "payment_intent_mandate_invalid",
  "payment_intent_payment_attempt_expired", "payment_intent_payment_attempt_failed",
  "payment_intent_unexpected_state", "payment_method_currency_mismatch", "payment_method_invalid_parameter",
  "payment_method_not_available", "payment_method_unexpected_state", "payment_method_unsupported_type",
  "payouts_not_allowed", "postal_code_invalid", "processing_error", "rate_limit", "refund_disputed_payment",
  "resource_already_exists", "resource_missing", "secret_key_required", "setup_intent_authentication_failure",
  "setup_intent_invalid_parameter", "setup_intent_unexpected_state", "statement_descriptor_invalid",
  "status_transition_invalid", "testmode_charges_only", "token_already_used", "token_in_use", "url_invalid",
};

static int code_cmp(const void *k, const void *e)
{
  return strcmp(k, *(const char *const *)e);
}

static void tp_error_doc_url(json_t *err)
{
  const char *code = json_string_value(json_object_get(err, "code"));
  char page[96];
  if (!code || !*code || (size_t)tp_scopy(page, sizeof page, code) >= sizeof page ||
      !bsearch(code, stripe_codes, sizeof stripe_codes / sizeof stripe_codes[0], sizeof stripe_codes[0], code_cmp))
    return;
  for (char *c = page; *c; c++)
    if (*c == '_')
      *c = '-';
  json_object_set_new(err, "doc_url", json_sprintf("https://stripe.com/docs/error-codes/%s", page));
}

json_t *tp_error_object(enum tp_err e, const char *param, const char *message)
{
  const struct tp_error_info *ei = tp_error_info(e);
  if (!ei)
    ei = tp_error_info(TP_ERR_INTERNAL);
  char msg[768];
  if (message)
    tp_scopy(msg, sizeof msg, message);
  else if (strstr(ei->message, "%s")) {
    /* Registry messages hold at most one %s, for a parameter name (checked by gen.py). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(msg, sizeof msg, ei->message, param ? param : "");
#pragma GCC diagnostic pop
  }
  else
    tp_scopy(msg, sizeof msg, ei->message);
  /* Messages and params can echo what the client sent (an id, a parameter
   * name): a card number typed into the wrong field must not come back. */
  tp_mask_card_numbers(msg);
  char pbuf[256];
  if (param) {
    tp_scopy(pbuf, sizeof pbuf, param);
    tp_mask_card_numbers(pbuf);
    param = pbuf;
  }
  json_t *o = json_object();
  json_object_set_new(o, "type", json_string(ei->type));
  if (ei->code)
    json_object_set_new(o, "code", json_string(ei->code));
  if (ei->decline_code)
    json_object_set_new(o, "decline_code", json_string(ei->decline_code));
  json_object_set_new(o, "message", echo_string(msg));
  if (param && *param)
    json_object_set_new(o, "param", echo_string(pbuf));
  json_object_set_new(o, "tp_code", json_integer(ei->number));
  tp_error_doc_url(o); /* Stripe: "a URL to more information about the error code reported" */
  return o;
}

void tp_reply_error(struct tp_req *r, enum tp_err e, const char *param, const char *message)
{
  if (e == TP_ERR_INTERNAL && tp_store_read_failed) { /* a list the store could not read */
    e = TP_ERR_STORE_UNAVAILABLE;
    message = NULL;
  }
  const struct tp_error_info *ei = tp_error_info(e);
  unsigned status = ei ? (unsigned)ei->http_status : 500;
  json_t *err = tp_error_object(e, param, message);
  tp_error_request_log(err, r);
  tp_reply_json(r, status, tp_pack("{s:o}", "error", err));
  if (r->status == status)
    r->err = (int)e;
}

void tp_reply_params_error(struct tp_req *r, const struct tp_params_error *pe, bool unknown)
{
  enum tp_err e = TP_ERR_PARAMETER_INVALID;
  if (pe->code > 0 && !unknown && tp_error_info((enum tp_err)pe->code))
    e = (enum tp_err)pe->code; /* the check named its row */
  else if (unknown || strncmp(pe->message, "Received unknown parameter", 26) == 0)
    e = TP_ERR_PARAMETER_UNKNOWN;
  else if (strncmp(pe->message, "Parameter not supported", 23) == 0)
    e = TP_ERR_PARAMETER_UNSUPPORTED;
  else if (strncmp(pe->message, "Invalid integer", 15) == 0)
    e = TP_ERR_PARAMETER_INVALID_INTEGER;
  else if (strncmp(pe->message, "You passed an empty string", 26) == 0)
    e = TP_ERR_PARAMETER_INVALID_EMPTY;
  else if (strcmp(pe->message, "Not a valid URL") == 0)
    e = TP_ERR_URL_INVALID;
  else if (!pe->param[0])
    e = TP_ERR_BODY_MALFORMED;
  tp_reply_error(r, e, pe->param[0] ? pe->param : NULL, pe->message[0] ? pe->message : NULL);
}

void tp_reply_commit_failed(struct tp_req *r, int rc)
{
  if (rc == TP_STORE_ERR_CONFLICT && r->conflict_err) {
    /* another request got there first (a token both spent): the same
     * answer as if it had committed before this one read */
    tp_reply_error(r, (enum tp_err)r->conflict_err, r->conflict_param[0] ? r->conflict_param : NULL,
                   r->conflict_msg[0] ? r->conflict_msg : NULL);
    return;
  }
  tp_reply_error(r, rc == TP_STORE_ERR_FULL ? TP_ERR_STORE_FULL : TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
}
