/* /v1/charges: retrieve, list and update. Charges are made by the payment
 * flow (payment_intents.c); an update changes only what describes one
 * (description, metadata, receipt_email, shipping, fraud_details). */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"

#include <stdio.h>
#include <string.h>

static const struct tp_pspec spec_list[] = {
  {"created", TP_P_RANGE, NULL, NULL},
  {"customer", TP_P_STRING, NULL, NULL},
  {"ending_before", TP_P_STRING, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  {"payment_intent", TP_P_STRING, NULL, NULL},
  {"starting_after", TP_P_STRING, NULL, NULL},
  {"transfer_group", TP_P_STRING, NULL, NULL},
  {NULL, TP_P_ANY, NULL, NULL},
};

static const char *const fraud_reports[] = {"fraudulent", "safe", "", NULL};
static const struct tp_pspec spec_fraud[] = {
  {"user_report", TP_P_ENUM, NULL, fraud_reports},
  {NULL, 0, NULL, NULL},
};
static const struct tp_pspec spec_update[] = {
  {"description", TP_P_STRING, NULL, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  {"receipt_email", TP_P_STRING, NULL, NULL},
  {"shipping", TP_P_OBJECT, tp_spec_shipping, NULL},
  {"fraud_details", TP_P_OBJECT, spec_fraud, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"customer", TP_P_STRING, NULL, NULL},
  {"transfer_group", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

/* POST /v1/charges/{id}. A charge also changes under its PaymentIntent's
 * lock (capture, cancel) and its own (refunds): both are held. */
void tp_h_charge_update(struct tp_req *r)
{
  if (!tp_check_params(r, spec_update) || !tp_email_param_ok(r, r->params, "receipt_email", "receipt_email"))
    return;
  /* customer: only a charge without one takes one (Stripe's rule). */
  const char *cus = tp_pstr(r->params, "customer");
  if (cus && *cus && !tp_live_or_missing(r, TP_K_CUSTOMER, cus, "customer", "customer"))
    return;
  const json_t *ship = json_object_get(r->params, "shipping");
  json_t *sh = ship ? tp_shipping_build(r, ship, true) : NULL;
  if (ship && !sh)
    return;
  json_t *ch = tp_load_path(r, TP_K_CHARGE, "charge");
  if (!ch) {
    json_decref(sh);
    return;
  }
  char pi_lock[TP_ID_MAX] = "";
  tp_scopy(pi_lock, sizeof pi_lock, json_string_value(json_object_get(ch, "payment_intent")) ?: "");
  json_decref(ch);
  if (pi_lock[0] && !tp_lock_try(pi_lock)) {
    json_decref(sh);
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  if (!tp_lock_try(r->path_id)) {
    if (pi_lock[0])
      tp_lock_release(pi_lock);
    json_decref(sh);
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  const char *locks[2] = {r->path_id, pi_lock};
  size_t nlocks = pi_lock[0] ? 2 : 1;
  /* Read again under the locks: the first read only named the lock. */
  ch = tp_store_get_json(&tp_app.store, TP_K_CHARGE, r->merchant.id, r->path_id);
  if (!ch) {
    for (size_t i = 0; i < nlocks; i++)
      tp_lock_release(locks[i]);
    json_decref(sh);
    tp_reply_error(r, TP_ERR_RESOURCE_MISSING, "id", NULL);
    return;
  }
  const char *had = json_string_value(json_object_get(ch, "customer"));
  const char *refuse = NULL;
  if (cus && (!*cus ? had != NULL : had && strcmp(had, cus) != 0))
    refuse = "This charge already has a customer: its customer may only be set when it has none.";
  else if (cus && *cus && !had && pi_lock[0]) {
    /* nor one other than its PaymentIntent's (the two would disagree) */
    json_t *pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, pi_lock);
    const char *pc = json_string_value(json_object_get(pi, "customer"));
    if (pc && strcmp(pc, cus) != 0)
      refuse = "This charge's PaymentIntent has another customer: a charge takes its PaymentIntent's.";
    json_decref(pi);
  }
  if (refuse) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "customer", refuse);
    for (size_t i = 0; i < nlocks; i++)
      tp_lock_release(locks[i]);
    json_decref(sh);
    json_decref(ch);
    return;
  }
  json_t *before = json_deep_copy(ch);
  if (cus && *cus)
    json_object_set_new(ch, "customer", json_string(cus));
  static const char *const text_fields[] = {"description", "receipt_email", "transfer_group", NULL};
  for (int i = 0; text_fields[i]; i++) {
    const json_t *v = json_object_get(r->params, text_fields[i]);
    if (v)
      json_object_set_new(ch, text_fields[i], tp_unset(v) ? json_null() : json_string(json_string_value(v)));
  }
  if (sh)
    json_object_set_new(ch, "shipping", sh);
  const json_t *md = json_object_get(r->params, "metadata");
  if (md && !tp_metadata_update(r, ch, md)) {
    json_decref(before);
    json_decref(ch); /* holds sh */
    for (size_t i = 0; i < nlocks; i++)
      tp_lock_release(locks[i]);
    return;
  }
  const json_t *fd = json_object_get(r->params, "fraud_details");
  if (fd) {
    json_t *cur = json_object_get(ch, "fraud_details");
    if (!json_is_object(cur)) {
      cur = json_object();
      json_object_set_new(ch, "fraud_details", cur);
    }
    const json_t *rep = json_object_get(fd, "user_report");
    if (rep && tp_unset(rep))
      json_object_del(cur, "user_report");
    else if (rep)
      json_object_set(cur, "user_report", (json_t *)(uintptr_t)rep);
  }
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put(cs, TP_K_CHARGE, r->merchant.id, ch);
  if (cus && *cus && !had && pi_lock[0]) {
    /* Its PaymentIntent (held by pi_lock) takes the customer too, when it
     * has none: the charge and ?customer= lists of PaymentIntents agreed
     * on no customer. (A Charges API charge has no PaymentIntent on
     * Stripe; here it shows one, which must not say otherwise.) */
    json_t *pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, pi_lock);
    if (pi && json_is_null(json_object_get(pi, "customer"))) {
      json_object_set_new(pi, "customer", json_string(cus));
      tp_cs_put(cs, TP_K_PAYMENT_INTENT, r->merchant.id, pi);
    }
    json_decref(pi);
  }
  tp_metadata_index_emptied(cs, TP_K_CHARGE, r->merchant.id, json_object_size(json_object_get(before, "metadata")), ch);
  tp_emit_update(cs, r, r->merchant.id, "charge.updated", before, ch);
  json_decref(before);
  if (!tp_expand(r, ch, NULL)) {
    tp_cs_free(cs);
    json_decref(ch);
    for (size_t i = 0; i < nlocks; i++)
      tp_lock_release(locks[i]);
    return;
  }
  tp_reply_json(r, 200, ch);
  tp_commit_and_reply_locks(r, cs, locks, nlocks);
}

/* GET /v1/charges/{id} */
void tp_h_charge_retrieve(struct tp_req *r)
{
  tp_retrieve(r, TP_K_CHARGE, "charge");
}

/* GET /v1/charges */
void tp_h_charge_list(struct tp_req *r)
{
  struct tp_params_error pe;
  if (tp_params_check(r->params, spec_list, &pe) != 0) {
    tp_reply_params_error(r, &pe, false);
    return;
  }
  struct tp_list_query q;
  tp_list_query_init(&q, TP_K_CHARGE, r->merchant.id);
  const char *pi = tp_pstr(r->params, "payment_intent");
  const char *cus = tp_pstr(r->params, "customer");
  if (pi && *pi) {
    q.col_name = "payment_intent";
    q.col_value = pi;
  }
  if (cus && *cus) {
    q.col2_name = "customer";
    q.col2_value = cus;
  }
  const char *group = tp_pstr(r->params, "transfer_group");
  if (group && *group) {
    q.field = "$.transfer_group";
    q.field_value = group;
  }
  if (!tp_list_params(r, &q))
    return;
  tp_reply_list(r, &q, "/v1/charges");
}
