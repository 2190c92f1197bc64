/* /v1/payment_methods: create (cards), retrieve, update, attach, detach,
 * list; and GET /v1/customers/{id}/payment_methods.
 *
 * The card number never lives outside the vault: create hands validated card
 * data to tp_pm_create_card and wipes it; everything else works on the
 * stored PaymentMethod object, which holds only brand, last4 and the like. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Stripe caps billing detail strings well below the generic value limit. */
/* Furthest expiry year an update may set, from now. */
#define PM_EXP_YEARS_AHEAD 50

#define S(n) {n, TP_P_STRING, NULL, NULL}
#define END {NULL, TP_P_ANY, NULL, NULL}

static const char *const type_choices[] = {"card", NULL};
/* A list filter takes any of Stripe's types (an integration lists several);
 * Turnpike holds cards only, so any other lists nothing. */
static const char *const list_type_choices[] = {
  "acss_debit", "affirm", "afterpay_clearpay", "alipay", "alma", "amazon_pay", "au_becs_debit", "bacs_debit",
  "bancontact", "billie", "blik", "boleto", "card", "card_present", "cashapp", "crypto", "customer_balance", "eps",
  "fpx", "giropay", "grabpay", "ideal", "interac_present", "kakao_pay", "klarna", "konbini", "kr_card", "link",
  "mobilepay", "multibanco", "naver_pay", "nz_bank_account", "oxxo", "p24", "pay_by_bank", "payco", "paynow",
  "paypal", "pix", "promptpay", "revolut_pay", "samsung_pay", "satispay", "sepa_debit", "sofort", "swish", "twint",
  "us_bank_account", "wechat_pay", "zip",
  /* and those of the served version (stripe-node 23's list): a filter
   * on one answers an empty list, not a 400 */
  "bizum", "custom", "mb_way", "paypay", "payto", "scalapay", "sequra", "sunbit", "upi", NULL};

static const struct tp_pspec spec_create[] = {
  {"allow_redisplay", TP_P_ENUM, NULL, tp_allow_redisplay},
  {"radar_options", TP_P_OBJECT, tp_spec_radar_options, NULL},
  {"customer", TP_P_UNSUPPORTED, NULL, tp_why_connect}, /* with payment_method: Connect's cloning */
  {"payment_method", TP_P_UNSUPPORTED, NULL, tp_why_connect},
  TP_SPEC_OTHER_PM_TYPES,
  {"billing_details", TP_P_OBJECT, tp_spec_billing_details, NULL},
  {"card", TP_P_OBJECT, tp_spec_card, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  {"type", TP_P_ENUM, NULL, type_choices},
  END,
};

static const struct tp_pspec spec_card_update[] = {
  {"exp_month", TP_P_INT, NULL, NULL},
  {"exp_year", TP_P_INT, NULL, NULL},
  {"networks", TP_P_UNSUPPORTED, NULL, tp_why_networks},
  END,
};

static const struct tp_pspec spec_update[] = {
  {"allow_redisplay", TP_P_ENUM, NULL, tp_allow_redisplay},
  {"us_bank_account", TP_P_UNSUPPORTED, NULL, tp_why_pm_type},
  {"billing_details", TP_P_OBJECT, tp_spec_billing_details, NULL},
  {"card", TP_P_OBJECT, spec_card_update, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  END,
};

static const struct tp_pspec spec_attach[] = {
  S("customer"),
  {"customer_account", TP_P_UNSUPPORTED, NULL, tp_why_customer_account},
  {"expand", TP_P_STRLIST, NULL, NULL},
  END,
};

static const struct tp_pspec spec_detach[] = {
  {"expand", TP_P_STRLIST, NULL, NULL},
  END,
};

static const struct tp_pspec spec_list[] = {
  S("customer"),
  {"allow_redisplay", TP_P_ENUM, NULL, tp_allow_redisplay},
  {"customer_account", TP_P_UNSUPPORTED, NULL, tp_why_customer_account},
  S("ending_before"),
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  S("starting_after"),
  {"type", TP_P_ENUM, NULL, list_type_choices},
  END,
};

static const struct tp_pspec spec_customer_list[] = {
  {"allow_redisplay", TP_P_ENUM, NULL, tp_allow_redisplay},
  S("ending_before"),
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  S("starting_after"),
  {"type", TP_P_ENUM, NULL, list_type_choices},
  END,
};

static void reply_no_such_pm(struct tp_req *r, const char *id)
{
  tp_reply_missing(r, "PaymentMethod", id, "payment_method");
}

/* Reply with a copy of obj, expanded as asked; false after an expand error. */
static bool reply_object(struct tp_req *r, const json_t *obj, const json_t *known)
{
  json_t *out = json_deep_copy(obj);
  const json_t *ex = json_object_get(r->params, "expand");
  if (json_is_array(ex) && json_array_size(ex) > 0 && !tp_expand(r, out, known)) {
    json_decref(out);
    return false;
  }
  tp_reply_json(r, 200, out);
  return true;
}

static bool customer_live(struct tp_req *r, const char *id)
{
  json_t *cus = tp_store_get_json(&tp_app.store, TP_K_CUSTOMER, r->merchant.id, id);
  bool ok = cus && !json_is_true(json_object_get(cus, "deleted"));
  json_decref(cus);
  return ok;
}


/* POST /v1/payment_methods */
void tp_h_pm_create(struct tp_req *r)
{
  if (!tp_check_params(r, spec_create))
    return;
  const char *type = tp_pstr(r->params, "type");
  if (!type || !*type) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "type", NULL);
    return;
  }
  const json_t *card = json_object_get(r->params, "card");
  if (!json_is_object(card)) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "card", NULL);
    return;
  }
  struct tp_card_info ci;
  char cvc[8];
  memset(&ci, 0, sizeof ci);
  if (!tp_card_from_params(r, card, "card", &ci, cvc)) {
    tp_card_wipe(&ci, sizeof ci);
    tp_card_wipe(cvc, sizeof cvc);
    return;
  }
  json_t *bd = json_object_get(r->params, "billing_details");
  const json_t *md = json_object_get(r->params, "metadata");
  if (json_is_object(bd) && !tp_billing_details_ok(r, bd, "billing_details")) {
    tp_card_wipe(&ci, sizeof ci);
    tp_card_wipe(cvc, sizeof cvc);
    return;
  }
  struct tp_cs *cs = tp_cs_new();
  json_t *pm = tp_pm_create_card(cs, &r->merchant, &ci, json_is_object(bd) ? bd : NULL,
                                 json_is_object(md) ? md : NULL, tp_pstr(r->params, "allow_redisplay"), NULL);
  tp_card_wipe(&ci, sizeof ci);
  tp_card_wipe(cvc, sizeof cvc);
  if (!pm) {
    tp_cs_free(cs);
    tp_reply_error(r, TP_ERR_VAULT_UNAVAILABLE, NULL, NULL); /* the card could not be sealed */
    return;
  }
  if (!reply_object(r, pm, NULL)) {
    tp_cs_free(cs);
    json_decref(pm);
    return;
  }
  tp_commit_and_reply(r, cs);
  json_decref(pm);
}

/* GET /v1/payment_methods/{id} */
/* GET /v1/payment_methods/{id}: a test id (pm_card_visa ...) answers a new
 * PaymentMethod of its card, as Stripe's test mode does (committed, so its
 * pm_ id can be used and retrieved afterwards). */
void tp_h_pm_retrieve(struct tp_req *r)
{
  if (!tp_pm_test_id(r->path_id)) {
    tp_retrieve(r, TP_K_PAYMENT_METHOD, "PaymentMethod");
    return;
  }
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  struct tp_cs *cs = tp_cs_new();
  struct tp_card_info ci;
  memset(&ci, 0, sizeof ci);
  json_t *pm = tp_pm_resolve(r, cs, r->path_id, &ci);
  tp_card_wipe(&ci, sizeof ci);
  if (pm && reply_object(r, pm, NULL))
    tp_commit_and_reply(r, cs);
  else
    tp_cs_free(cs);
  json_decref(pm);
}

/* Merge billing_details params into the stored object: given keys replace,
 * "" unsets; address keys merge one by one. */
static void billing_merge(json_t *pm, json_t *p)
{
  json_t *bd = json_object_get(pm, "billing_details");
  if (!json_is_object(bd)) {
    bd = json_object();
    json_object_set_new(pm, "billing_details", bd);
  }
  if (tp_unset(p)) {
    json_object_set_new(bd, "address", json_null());
    json_object_set_new(bd, "email", json_null());
    json_object_set_new(bd, "name", json_null());
    json_object_set_new(bd, "phone", json_null());
    json_object_set_new(bd, "tax_id", json_null());
    return;
  }
  const char *k;
  json_t *v;
  json_object_foreach(p, k, v) {
    if (strcmp(k, "address") == 0) {
      static const char *const keys[] = {"city", "country", "line1", "line2", "postal_code", "state"};
      json_t *a = json_object_get(bd, "address");
      if (!json_is_object(a)) {
        a = json_object();
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
          json_object_set_new(a, keys[i], json_null());
        json_object_set_new(bd, "address", a);
      }
      for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const json_t *av = tp_unset(v) ? json_null() : json_object_get(v, keys[i]);
        if (av)
          json_object_set_new(a, keys[i], tp_unset(av) ? json_null() : json_string(json_string_value(av)));
      }
    } else if (json_is_string(v) || json_is_null(v)) {
      json_object_set_new(bd, k, tp_unset(v) ? json_null() : json_string(json_string_value(v)));
    }
  }
}


/* New expiry from card[exp_month]/card[exp_year]; false after replying. */
bool tp_pm_expiry_apply(struct tp_req *r, json_t *pm, const json_t *card, bool nested)
{
  json_t *c = json_object_get(pm, "card");
  if (!json_is_object(c)) {
    tp_reply_error(r, TP_ERR_PAYMENT_METHOD_INVALID_PARAMETER, "card", NULL);
    return false;
  }
  int64_t month = json_integer_value(json_object_get(c, "exp_month"));
  int64_t year = json_integer_value(json_object_get(c, "exp_year"));
  int64_t v;
  if (tp_param_int(card, "exp_month", &v))
    month = v;
  if (tp_param_int(card, "exp_year", &v))
    year = v < 100 ? 2000 + v : v;
  if (month < 1 || month > 12) {
    tp_reply_error(r, TP_ERR_CARD_INVALID_EXPIRY_MONTH, nested ? "card[exp_month]" : "exp_month", NULL);
    return false;
  }
  time_t now = (time_t)tp_now();
  struct tm tm;
  gmtime_r(&now, &tm);
  int64_t cy = tm.tm_year + 1900, cm = tm.tm_mon + 1;
  if (year > cy + PM_EXP_YEARS_AHEAD || year < 2000 ||
      year < cy) { /* Stripe: a past year is invalid_expiry_year, not expired_card (a decline) */
    tp_reply_error(r, TP_ERR_CARD_INVALID_EXPIRY_YEAR, nested ? "card[exp_year]" : "exp_year", NULL);
    return false;
  }
  if (year == cy && month < cm) {
    tp_reply_error(r, TP_ERR_CARD_INVALID_EXPIRY_MONTH, nested ? "card[exp_month]" : "exp_month", NULL);
    return false;
  }
  json_object_set_new(c, "exp_month", json_integer((json_int_t)month));
  json_object_set_new(c, "exp_year", json_integer((json_int_t)year));
  return true;
}

/* POST /v1/payment_methods/{id} */
void tp_h_pm_update(struct tp_req *r)
{
  if (!tp_check_params(r, spec_update))
    return;
  json_t *bd = json_object_get(r->params, "billing_details");
  if (json_is_object(bd) && !tp_billing_details_ok(r, bd, "billing_details"))
    return;
  if (!tp_lock_try(r->path_id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, r->path_id);
  json_t *before = NULL;
  if (!pm) {
    reply_no_such_pm(r, r->path_id);
    goto out_unlock;
  }
  /* Stripe only lets saved (attached) payment methods change. */
  if (!json_is_string(json_object_get(pm, "customer"))) {
    tp_reply_error(r, TP_ERR_PAYMENT_METHOD_UNEXPECTED_STATE, NULL,
                   "You must save this PaymentMethod to a customer before you can update it.");
    goto out_unlock;
  }
  before = json_deep_copy(pm);
  json_t *v;
  if ((v = json_object_get(r->params, "billing_details"))) {
    billing_merge(pm, v);
    tp_pm_address_checks(pm);
  }
  if ((v = json_object_get(r->params, "metadata")) && !tp_metadata_update(r, pm, v))
    goto out_unlock;
  if ((v = json_object_get(r->params, "allow_redisplay")) && json_string_length(v))
    json_object_set(pm, "allow_redisplay", v);
  if ((v = json_object_get(r->params, "card")) && json_is_object(v) && !tp_pm_expiry_apply(r, pm, v, true))
    goto out_unlock;
  bool changed = !json_equal(pm, before);
  if (!changed && !r->idem_key[0]) {
    reply_object(r, pm, NULL);
    goto out_unlock;
  }
  struct tp_cs *cs = tp_cs_new();
  if (changed) { /* else only the Idempotency-Key is recorded (as a customer's) */
    tp_cs_put(cs, TP_K_PAYMENT_METHOD, r->merchant.id, pm);
    tp_emit_update(cs, r, r->merchant.id, "payment_method.updated", before, pm);
  }
  if (!reply_object(r, pm, NULL)) {
    tp_cs_free(cs);
    goto out_unlock;
  }
  tp_commit_and_reply_unlock(r, cs, r->path_id);
  json_decref(pm);
  json_decref(before);
  return;

out_unlock:
  tp_lock_release(r->path_id);
  json_decref(pm);
  json_decref(before);
}

/* POST /v1/payment_methods/{id}/attach */
void tp_h_pm_attach(struct tp_req *r)
{
  if (!tp_check_params(r, spec_attach))
    return;
  const char *cus_id = tp_pstr(r->params, "customer");
  if (!cus_id || !*cus_id) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "customer", NULL);
    return;
  }
  /* The customer's lock, then the PaymentMethod's (the order a customer's
   * deletion takes them in), and the customer checked under it: an attach
   * overlapping the deletion either lands before it, to be detached by it,
   * or finds the customer gone. */
  char cus_lock[TP_ID_MAX];
  tp_scopy(cus_lock, sizeof cus_lock, cus_id);
  if (!tp_lock_try(cus_lock)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  if (!customer_live(r, cus_id)) {
    tp_lock_release(cus_lock);
    tp_reply_missing(r, "customer", cus_id, "customer");
    return;
  }
  if (!tp_lock_try(r->path_id)) {
    tp_lock_release(cus_lock);
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  struct tp_cs *cs = tp_cs_new();
  struct tp_card_info ci;
  memset(&ci, 0, sizeof ci);
  bool made = false;
  json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, r->path_id);
  if (!pm) {
    /* Test ids (pm_card_visa...) attach a fresh PaymentMethod. */
    pm = tp_pm_resolve(r, cs, r->path_id, &ci);
    if (!pm)
      goto fail; /* replied */
    made = true;
  }
  if (!tp_pm_usable(r, pm))
    goto fail;
  const json_t *owner = json_object_get(pm, "customer");
  if (json_is_string(owner)) {
    if (strcmp(json_string_value(owner), cus_id) == 0) {
      /* Already attached here: nothing to change, but an Idempotency-Key
       * is recorded with this answer (the empty change set), as a no-op
       * update's is: a retry after a detach replays it. */
      if (!reply_object(r, pm, NULL) || !r->idem_key[0])
        goto fail;
      const char *locks[2] = {cus_lock, r->path_id};
      tp_commit_and_reply_locks(r, cs, locks, 2);
      json_decref(pm);
      return;
    }
    tp_reply_error(r, TP_ERR_PAYMENT_METHOD_ALREADY_ATTACHED, NULL,
                   "The payment method you provided has already been attached to a customer.");
    goto fail;
  }
  if (!tp_pm_attach_check(r, pm, made ? &ci : NULL))
    goto fail;
  tp_card_wipe(&ci, sizeof ci);
  json_object_set_new(pm, "customer", json_string(cus_id));
  tp_cs_put(cs, TP_K_PAYMENT_METHOD, r->merchant.id, pm);
  tp_emit(cs, r, r->merchant.id, "payment_method.attached", pm);
  if (!reply_object(r, pm, NULL))
    goto fail;
  const char *locks[2] = {cus_lock, r->path_id};
  tp_commit_and_reply_locks(r, cs, locks, 2);
  json_decref(pm);
  return;

fail:
  tp_card_wipe(&ci, sizeof ci);
  tp_lock_release(r->path_id);
  tp_lock_release(cus_lock);
  tp_cs_free(cs);
  json_decref(pm);
}

/* POST /v1/payment_methods/{id}/detach */
void tp_h_pm_detach(struct tp_req *r)
{
  if (!tp_check_params(r, spec_detach))
    return;
  if (!tp_lock_try(r->path_id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  const char *locks[2] = {r->path_id, NULL};
  json_t *cus = NULL;
  json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, r->path_id);
  if (!pm) {
    reply_no_such_pm(r, r->path_id);
    goto fail;
  }
  const char *cus_id = json_string_value(json_object_get(pm, "customer"));
  if (!cus_id) {
    tp_reply_error(r, TP_ERR_PAYMENT_METHOD_NOT_ATTACHED, NULL,
                   "The payment method you provided is not attached to a customer so detachment is impossible.");
    goto fail;
  }
  /* The customer's lock always, and the customer read under it: an update
   * making this its default at the same moment (checked under the
   * customer's lock) then comes before, and its default is cleared here, or
   * after, and finds the card detached; and a concurrent update of the
   * customer is not written over by a copy read before it. */
  if (!tp_lock_try(cus_id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    goto fail;
  }
  char cus_lock[TP_ID_MAX];
  tp_scopy(cus_lock, sizeof cus_lock, cus_id); /* pm's copy goes with the detach */
  locks[1] = cus_lock;
  struct tp_cs *cs = tp_cs_new();
  /* A customer whose default PaymentMethod this was loses it, as on
   * Stripe; one whose default card of the legacy Cards API this was gets
   * its newest other card, as deleting the card as a source does (Stripe's
   * "delete a card": the card is gone from its sources either way). */
  cus = tp_store_get_json(&tp_app.store, TP_K_CUSTOMER, r->merchant.id, cus_id);
  json_t *is = cus ? json_object_get(cus, "invoice_settings") : NULL;
  const char *def = json_string_value(json_object_get(is, "default_payment_method"));
  const char *src = json_string_value(json_object_get(cus, "default_source"));
  bool was_default = def && strcmp(def, r->path_id) == 0, was_source = src && strcmp(src, r->path_id) == 0;
  if (was_default || was_source) {
    json_t *cus_before = json_deep_copy(cus);
    if (was_default)
      json_object_set_new(is, "default_payment_method", json_null());
    if (was_source) {
      char next[TP_ID_MAX];
      tp_newest_other_card(r->merchant.id, cus_id, r->path_id, next);
      json_object_set_new(cus, "default_source", next[0] ? json_string(next) : json_null());
    }
    tp_cs_put(cs, TP_K_CUSTOMER, r->merchant.id, cus);
    tp_emit_update(cs, r, r->merchant.id, "customer.updated", cus_before, cus);
    json_decref(cus_before);
  }
  tp_pm_detach(cs, r, pm);
  if (!reply_object(r, pm, NULL)) {
    tp_cs_free(cs);
    goto fail;
  }
  tp_commit_and_reply_locks(r, cs, locks, 2);
  json_decref(pm);
  json_decref(cus);
  return;

fail:
  for (size_t i = 0; i < 2; i++)
    if (locks[i])
      tp_lock_release(locks[i]);
  json_decref(pm);
  json_decref(cus);
}

static void list_pms(struct tp_req *r, const char *customer, const char *url)
{
  struct tp_list_query q;
  tp_list_query_init(&q, TP_K_PAYMENT_METHOD, r->merchant.id);
  const char *type = tp_pstr(r->params, "type");
  if (customer && *customer) {
    q.col_name = "customer";
    q.col_value = customer;
  }
  if (type && *type) {
    q.col2_name = "type";
    q.col2_value = type;
  }
  /* PaymentMethods stored before allow_redisplay was shown are "unspecified". */
  const char *redisplay = tp_pstr(r->params, "allow_redisplay");
  if (redisplay && *redisplay) {
    q.field = "$.allow_redisplay";
    q.field_value = redisplay;
    q.field_default = "unspecified";
  }
  if (!tp_list_params(r, &q))
    return;
  tp_reply_list(r, &q, url);
}

/* GET /v1/payment_methods?customer=cus_...&type=card (customer optional here). */
void tp_h_pm_list(struct tp_req *r)
{
  if (!tp_check_params(r, spec_list))
    return;
  const char *customer = tp_pstr(r->params, "customer");
  if (customer && *customer && !customer_live(r, customer)) {
    tp_reply_missing(r, "customer", customer, "customer");
    return;
  }
  list_pms(r, customer, "/v1/payment_methods");
}

/* GET /v1/customers/{id}/payment_methods */
void tp_h_customer_pm_list(struct tp_req *r)
{
  if (!tp_check_params(r, spec_customer_list))
    return;
  if (!customer_live(r, r->path_id)) {
    tp_reply_missing(r, "customer", r->path_id, "customer");
    return;
  }
  char url[160];
  snprintf(url, sizeof url, "/v1/customers/%s/payment_methods", r->path_id);
  list_pms(r, r->path_id, url);
}

/* GET /v1/customers/{id}/payment_methods/{payment_method}: one of the
 * customer's PaymentMethods; one attached to nobody or to someone else is
 * missing here. */
void tp_h_customer_pm_retrieve(struct tp_req *r)
{
  static const struct tp_pspec spec[] = {{"expand", TP_P_STRLIST, NULL, NULL}, {NULL, 0, NULL, NULL}};
  if (!tp_check_params(r, spec))
    return;
  if (!customer_live(r, r->path_id)) {
    tp_reply_missing(r, "customer", r->path_id, "customer");
    return;
  }
  json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, r->path_sub);
  const char *owner = json_string_value(json_object_get(pm, "customer"));
  if (!pm || !owner || strcmp(owner, r->path_id) != 0) {
    json_decref(pm);
    tp_reply_missing(r, "PaymentMethod", r->path_sub, "payment_method");
    return;
  }
  if (!tp_expand(r, pm, NULL)) {
    json_decref(pm);
    return;
  }
  tp_reply_json(r, 200, pm);
}
