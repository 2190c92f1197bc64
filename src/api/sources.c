/* /v1/customers/{id}/sources: Stripe's legacy Cards API, the cards a
 * customer keeps for the Charges API. create (source: a card token, of POST
 * /v1/tokens or a test token tok_visa ...), list, retrieve, update (the
 * holder's name and address, expiry, metadata) and delete; a customer's
 * `source` on create and update, and `default_source` on update, are in
 * customers.c.
 *
 * A card source is a card PaymentMethod whose id begins "card_", attached
 * to the customer and marked turnpike.source "card" (tp_card_source_create
 * in objects.c): it pays wherever a PaymentMethod does (a PaymentIntent's
 * payment_method, a charge's source) and the PaymentMethods API lists it,
 * as Stripe's PaymentMethods API lists a customer's cards. This API shows
 * it as a Card object (tp_card_view). The first card a customer gets is its
 * default_source, which POST /v1/charges with only a customer charges.
 * Deleting a card deletes its PaymentMethod and its vault record; when it
 * was the default, the customer's newest other card becomes the default. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"
#include "jpack.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S(n) {n, TP_P_STRING, NULL, NULL}
#define END {NULL, 0, NULL, NULL}

static const char *const why_not_card[] = {"Turnpike keeps cards only: no bank accounts or other sources", NULL};

static const struct tp_pspec spec_create[] = {
  S("source"),
  {"card", TP_P_ANY, NULL, NULL}, /* source's older name (tp_card_param_alias) */
  {"metadata", TP_P_METADATA, NULL, NULL},
  {"validate", TP_P_BOOL, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  END,
};

static const struct tp_pspec spec_list[] = {
  S("object"), /* any type: only "card" finds some */
  S("ending_before"),
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  S("starting_after"),
  END,
};

/* The holder's fields a card update takes, and where the PaymentMethod
 * keeps them. */
static const struct {
  const char *param, *address_key; /* address_key NULL: billing_details.name */
} holder[] = {
  {"name", NULL},
  {"address_line1", "line1"},
  {"address_line2", "line2"},
  {"address_city", "city"},
  {"address_state", "state"},
  {"address_zip", "postal_code"},
  {"address_country", "country"},
};

static const struct tp_pspec spec_update[] = {
  S("name"),
  S("address_line1"),
  S("address_line2"),
  S("address_city"),
  S("address_state"),
  S("address_zip"),
  S("address_country"),
  {"exp_month", TP_P_INT, NULL, NULL},
  {"exp_year", TP_P_INT, NULL, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"account_holder_name", TP_P_UNSUPPORTED, NULL, why_not_card},
  {"account_holder_type", TP_P_UNSUPPORTED, NULL, why_not_card},
  {"owner", TP_P_UNSUPPORTED, NULL, why_not_card},
  END,
};

static const struct tp_pspec spec_delete[] = {
  {"expand", TP_P_STRLIST, NULL, NULL},
  END,
};

static json_t *load_customer(struct tp_req *r)
{
  json_t *cus = tp_store_get_json(&tp_app.store, TP_K_CUSTOMER, r->merchant.id, r->path_id);
  if (!cus || json_is_true(json_object_get(cus, "deleted"))) {
    json_decref(cus);
    tp_reply_missing(r, "customer", r->path_id, "customer");
    return NULL;
  }
  return cus;
}

bool tp_is_card_source(const json_t *pm, const char *customer)
{
  const char *owner = json_string_value(json_object_get(pm, "customer"));
  const char *src = json_string_value(json_object_get(json_object_get(pm, "turnpike"), "source"));
  return owner && src && strcmp(src, "card") == 0 && (!customer || strcmp(owner, customer) == 0);
}

/* The card {sub} of the URL's customer, or NULL after a 404. */
static json_t *load_card(struct tp_req *r)
{
  json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, r->path_sub);
  if (!tp_is_card_source(pm, r->path_id)) {
    json_decref(pm);
    char msg[200];
    snprintf(msg, sizeof msg, "Customer %.64s does not have a source with ID %.64s", r->path_id, r->path_sub);
    tp_reply_error(r, TP_ERR_RESOURCE_MISSING, "id", msg);
    return NULL;
  }
  return pm;
}

/* The customer's newest card but except ("" none). */
void tp_newest_other_card(const char *merchant, const char *customer, const char *except, char *out)
{
  out[0] = '\0';
  json_t *args = tp_pack("[s, s, s]", merchant, customer, except);
  json_t *rows = tp_store_query(&tp_app.store,
                                "SELECT id FROM payment_methods WHERE merchant = ?1 AND customer = ?2 "
                                "AND id >= 'card_' AND id < 'card`' AND id != ?3 ORDER BY id DESC LIMIT 1",
                                args);
  json_decref(args);
  const char *id = json_string_value(json_object_get(json_array_get(rows, 0), "id"));
  if (id)
    tp_scopy(out, TP_ID_MAX, id);
  json_decref(rows);
}

void tp_card_source_delete(struct tp_cs *cs, const struct tp_req *r, const json_t *pm)
{
  const char *id = json_string_value(json_object_get(pm, "id"));
  json_t *args = tp_pack("[s, s]", r->merchant.id, id);
  tp_cs_sql(cs, "DELETE FROM payment_methods WHERE merchant = ?1 AND id = ?2", args, 1);
  json_decref(args);
  args = tp_pack("[s, s]", id, r->merchant.id);
  tp_cs_sql(cs, "DELETE FROM vault WHERE token = ?1 AND merchant = ?2", args, 0);
  json_decref(args);
  json_t *view = tp_card_view(pm);
  tp_emit(cs, r, r->merchant.id, "customer.source.deleted", view);
  json_decref(view);
}

/* Reply with the card as Stripe's Card object. */
static void reply_card(struct tp_req *r, const json_t *pm, struct tp_cs *cs, const char *lock_id)
{
  tp_reply_expanded_unlock(r, cs, tp_card_view(pm), lock_id);
}

/* POST /v1/customers/{id}/sources */
void tp_h_source_create(struct tp_req *r)
{
  if (!tp_check_params(r, spec_create) || !tp_card_param_alias(r))
    return;
  const char *source = tp_pstr(r->params, "source");
  if (!tp_lock_try(r->path_id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  json_t *cus = load_customer(r);
  if (cus && (!source || !*source)) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "source", NULL);
    json_decref(cus);
    cus = NULL;
  }
  struct tp_cs *cs = tp_cs_new();
  json_t *pm = cus ? tp_card_source_create(r, cs, source, "source", r->path_id,
                                           json_object_get(r->params, "metadata"))
                   : NULL;
  if (!pm) {
    tp_cs_free(cs);
    json_decref(cus);
    tp_lock_release(r->path_id);
    return;
  }
  json_t *view = tp_card_view(pm);
  tp_emit(cs, r, r->merchant.id, "customer.source.created", view);
  json_decref(view);
  if (!json_is_string(json_object_get(cus, "default_source"))) {
    json_t *before = json_deep_copy(cus);
    json_object_set(cus, "default_source", json_object_get(pm, "id"));
    tp_cs_put(cs, TP_K_CUSTOMER, r->merchant.id, cus);
    tp_emit_update(cs, r, r->merchant.id, "customer.updated", before, cus);
    json_decref(before);
  }
  reply_card(r, pm, cs, r->path_id);
  json_decref(pm);
  json_decref(cus);
}

static void to_cards(json_t *data, void *arg)
{
  (void)arg;
  size_t i;
  json_t *pm;
  json_array_foreach(data, i, pm) json_array_set_new(data, i, tp_card_view(pm));
}

/* GET /v1/customers/{id}/sources */
void tp_h_source_list(struct tp_req *r)
{
  if (!tp_check_params(r, spec_list))
    return;
  json_t *cus = load_customer(r);
  if (!cus)
    return;
  json_decref(cus);
  struct tp_list_query q;
  tp_card_sources_query(&q, r->merchant.id, r->path_id);
  const char *object = tp_pstr(r->params, "object");
  if (object && *object)
    q.field_value = object; /* a bank_account, source ... is no card: none */
  if (!tp_list_params(r, &q))
    return;
  char url[160];
  /* the Cards API's own path (/cards) or the Sources API's */
  snprintf(url, sizeof url, "/v1/customers/%s/%s", r->path_id,
           strstr(r->route->pattern, "/cards") ? "cards" : "sources");
  tp_reply_list_fixed(r, &q, url, to_cards, NULL);
}

/* GET /v1/customers/{id}/sources/{source} */
void tp_h_source_retrieve(struct tp_req *r)
{
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  json_t *cus = load_customer(r);
  json_t *pm = cus ? load_card(r) : NULL;
  json_decref(cus);
  if (!pm)
    return;
  json_t *view = tp_card_view(pm);
  json_decref(pm);
  if (!tp_expand(r, view, NULL)) {
    json_decref(view);
    return;
  }
  tp_reply_json(r, 200, view);
}

/* POST /v1/customers/{id}/sources/{source} */
void tp_h_source_update(struct tp_req *r)
{
  if (!tp_check_params(r, spec_update))
    return;
  if (!tp_card_holder_ok(r, r->params, NULL))
    return;
  if (!tp_lock_try(r->path_sub)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  json_t *cus = load_customer(r);
  json_t *pm = cus ? load_card(r) : NULL;
  json_decref(cus);
  if (!pm) {
    tp_lock_release(r->path_sub);
    return;
  }
  /* A copy: the view shares pm's metadata, which the update changes in
   * place (a metadata-only update looked like no change: not saved). */
  json_t *view0 = tp_card_view(pm);
  json_t *before = json_deep_copy(view0);
  json_decref(view0);
  /* Only an expiry the request sends is checked (a name or metadata
   * update of a card that has since expired was refused, naming
   * exp_year), against the UTC calendar (an average-length year turned
   * over hours before New Year). */
  if ((json_object_get(r->params, "exp_month") || json_object_get(r->params, "exp_year")) &&
      !tp_pm_expiry_apply(r, pm, r->params, false)) {
    json_decref(before);
    goto fail;
  }
  json_t *bd = json_object_get(pm, "billing_details");
  for (size_t i = 0; i < sizeof holder / sizeof holder[0]; i++) {
    const char *v = tp_pstr(r->params, holder[i].param);
    if (!v)
      continue;
    json_t *val = *v ? json_string(v) : json_null();
    if (holder[i].address_key)
      json_object_set_new(json_object_get(bd, "address"), holder[i].address_key, val);
    else
      json_object_set_new(bd, "name", val);
  }
  const json_t *md = json_object_get(r->params, "metadata");
  if (md && !tp_metadata_update(r, pm, md)) {
    json_decref(before);
    goto fail;
  }
  json_t *after = tp_card_view(pm);
  struct tp_cs *cs = tp_cs_new();
  if (!json_equal(before, after)) {
    tp_cs_put(cs, TP_K_PAYMENT_METHOD, r->merchant.id, pm);
    tp_emit_update(cs, r, r->merchant.id, "customer.source.updated", before, after);
  }
  json_decref(before);
  json_decref(after);
  reply_card(r, pm, cs, r->path_sub);
  json_decref(pm);
  return;
fail:
  json_decref(pm);
  tp_lock_release(r->path_sub);
}

/* DELETE /v1/customers/{id}/sources/{source} */
void tp_h_source_delete(struct tp_req *r)
{
  if (!tp_check_params(r, spec_delete))
    return;
  /* The customer (its default_source) and the card (an update of it must
   * not write it back after the delete), customer first as everywhere. An
   * id that is the customer's own is no card of it: not waited for on the
   * lock this request holds. */
  if (strcmp(r->path_sub, r->path_id) == 0) {
    tp_reply_missing(r, "source", r->path_sub, "id");
    return;
  }
  if (!tp_lock_try(r->path_id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  if (!tp_lock_try(r->path_sub)) {
    tp_lock_release(r->path_id);
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  json_t *cus = load_customer(r);
  json_t *pm = cus ? load_card(r) : NULL;
  if (!pm) {
    json_decref(cus);
    tp_lock_release(r->path_sub);
    tp_lock_release(r->path_id);
    return;
  }
  struct tp_cs *cs = tp_cs_new();
  tp_card_source_delete(cs, r, pm);
  const char *def = json_string_value(json_object_get(cus, "default_source"));
  json_t *is = json_object_get(cus, "invoice_settings");
  const char *inv = json_string_value(json_object_get(is, "default_payment_method"));
  bool was_source = def && strcmp(def, r->path_sub) == 0, was_invoice = inv && strcmp(inv, r->path_sub) == 0;
  if (was_source || was_invoice) {
    /* No default names a card that is gone (as a detach clears both). */
    json_t *before = json_deep_copy(cus);
    if (was_source) {
      char next[TP_ID_MAX];
      tp_newest_other_card(r->merchant.id, r->path_id, r->path_sub, next);
      json_object_set_new(cus, "default_source", next[0] ? json_string(next) : json_null());
    }
    if (was_invoice)
      json_object_set_new(is, "default_payment_method", json_null());
    tp_cs_put(cs, TP_K_CUSTOMER, r->merchant.id, cus);
    tp_emit_update(cs, r, r->merchant.id, "customer.updated", before, cus);
    json_decref(before);
  }
  json_t *gone = tp_pack("{s:s, s:s, s:s, s:b}", "id", r->path_sub, "object", "card", "customer", r->path_id,
                         "deleted", 1);
  tp_reply_json(r, 200, gone);
  const char *locks[2] = {r->path_id, r->path_sub};
  tp_commit_and_reply_locks(r, cs, locks, 2);
  json_decref(pm);
  json_decref(cus);
}
