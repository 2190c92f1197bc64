/* /v1/customers: create, retrieve, update, delete, list.
 *
 * A deleted customer stays in the store as Stripe's stub {"id", "object",
 * "deleted": true}: retrieving it answers the stub, lists skip it (the
 * "deleted" column is NULL only for live customers).
 *
 * This file also holds the commit-then-reply helpers of commit.h. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"
#include "jpack.h"
#include "jparse.h"
#include "util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Stripe's own limits on customer fields. */
#define CUS_EMAIL_MAX 512
#define CUS_DESCRIPTION_MAX 5000
#define CUS_PARTY_NAME_MAX 150 /* business_name, individual_name */

#define S(n) {n, TP_P_STRING, NULL, NULL}
#define END {NULL, TP_P_ANY, NULL, NULL}

/* A customer's shipping has no carrier or tracking number (a payment's has). */
static const struct tp_pspec spec_shipping[] = {
  {"address", TP_P_OBJECT, tp_spec_address, NULL}, S("name"), S("phone"), END,
};
static const struct tp_pspec spec_invoice_settings[] = {
  S("default_payment_method"), S("footer"),
  {"custom_fields", TP_P_UNSUPPORTED, NULL, tp_why_invoices},
  {"rendering_options", TP_P_UNSUPPORTED, NULL, tp_why_invoices}, END,
};
static const char *const tax_exempt_choices[] = {"none", "exempt", "reverse", NULL};

/* What create and update both take (a customer's fields). */
#define CUS_COMMON \
  {"address", TP_P_OBJECT, tp_spec_address, NULL}, \
  {"balance", TP_P_INT, NULL, NULL}, \
  S("description"), \
  S("email"), \
  {"expand", TP_P_STRLIST, NULL, NULL}, \
  {"invoice_settings", TP_P_OBJECT, spec_invoice_settings, NULL}, \
  {"metadata", TP_P_METADATA, NULL, NULL}, \
  S("name"), \
  S("phone"), \
  {"preferred_locales", TP_P_STRLIST, NULL, NULL}, \
  {"shipping", TP_P_OBJECT, spec_shipping, NULL}, \
  {"tax_exempt", TP_P_ENUM, NULL, tax_exempt_choices}, \
  S("business_name"), \
  S("individual_name"), \
  S("invoice_prefix"), \
  {"next_invoice_sequence", TP_P_INT, NULL, NULL}, \
  {"tax", TP_P_UNSUPPORTED, NULL, tp_why_tax}, \
  {"validate", TP_P_BOOL, NULL, NULL}, /* the legacy card check: made anyway */ \
  {"card", TP_P_ANY, NULL, NULL}, /* source's older name (tp_card_param_alias) */ \
  {"cash_balance", TP_P_UNSUPPORTED, NULL, tp_why_customer_balance}, \
  S("source")

static const struct tp_pspec spec_create[] = {
  CUS_COMMON,
  S("payment_method"),
  {"tax_id_data", TP_P_UNSUPPORTED, NULL, tp_why_tax},
  {"test_clock", TP_P_UNSUPPORTED, NULL, tp_why_test_clock},
  END,
};

static const struct tp_pspec spec_update[] = {
  CUS_COMMON,
  S("default_source"),
  S("default_card"), /* default_source's older name (tp_card_param_alias) */
  END,
};

static const struct tp_pspec spec_list[] = {
  {"created", TP_P_RANGE, NULL, NULL},
  S("email"),
  S("ending_before"),
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  S("starting_after"),
  {"test_clock", TP_P_UNSUPPORTED, NULL, tp_why_test_clock},
  END,
};

/* ---- commit helpers (commit.h) ------------------------------------------ */
struct commit_ctx {
  struct tp_req *r;
  size_t n;
  char locks[][TP_ID_MAX];
};

static void commit_release(struct commit_ctx *c)
{
  for (size_t i = 0; i < c->n; i++)
    tp_lock_release(c->locks[i]);
}

/* Writer thread: the reply was set before submitting; only a failed commit
 * changes it, so the client never hears of a write that did not happen. */
static void commit_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct commit_ctx *c = arg;
  struct tp_req *r = c->r;
  if (rc != 0)
    tp_reply_commit_failed(r, rc);
  commit_release(c);
  free(c);
  tp_req_resume(r);
}

/* Submit cs and answer with the reply already set once it is committed. */
void tp_commit_and_reply_locks(struct tp_req *r, struct tp_cs *cs, const char *const *lock_ids, size_t n)
{
  struct commit_ctx *c = calloc(1, sizeof *c + n * sizeof c->locks[0]);
  if (!c)
    abort();
  c->r = r;
  for (size_t i = 0; i < n; i++)
    if (lock_ids[i] && lock_ids[i][0])
      snprintf(c->locks[c->n++], TP_ID_MAX, "%s", lock_ids[i]);
  /* The reply is final here: keep it for idempotent replays, in the same commit. */
  tp_idem_record(r, cs);
  tp_cs_on_done(cs, commit_done, c);
  /* Suspend first: the completion may run before tp_writer_submit returns. */
  tp_req_suspend(r);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    tp_reply_error(r, TP_ERR_OVERLOADED, NULL, NULL);
    commit_release(c);
    free(c);
    tp_req_resume(r);
  }
}

void tp_reply_expanded_locks(struct tp_req *r, struct tp_cs *cs, json_t *obj, const char *const *lock_ids, size_t n)
{
  if (!tp_expand(r, obj, NULL)) {
    json_decref(obj);
    tp_cs_free(cs);
    for (size_t i = 0; i < n; i++)
      if (lock_ids[i] && *lock_ids[i])
        tp_lock_release(lock_ids[i]);
    return;
  }
  tp_reply_json(r, 200, obj);
  tp_commit_and_reply_locks(r, cs, lock_ids, n);
}

void tp_reply_expanded_unlock(struct tp_req *r, struct tp_cs *cs, json_t *obj, const char *lock_id)
{
  const char *ids[1] = {lock_id};
  tp_reply_expanded_locks(r, cs, obj, ids, 1);
}

/* Submit cs and answer once committed. */
void tp_commit_and_reply(struct tp_req *r, struct tp_cs *cs)
{
  tp_commit_and_reply_locks(r, cs, NULL, 0);
}

/* Submit cs, release lock_id and answer once committed. */
void tp_commit_and_reply_unlock(struct tp_req *r, struct tp_cs *cs, const char *lock_id)
{
  const char *ids[1] = {lock_id};
  tp_commit_and_reply_locks(r, cs, ids, 1);
}

/* Reply with stored JSON text, expanded when the request asks for it. */
void tp_reply_stored(struct tp_req *r, char *text)
{
  const json_t *ex = json_object_get(r->params, "expand");
  if ((!json_is_array(ex) || json_array_size(ex) == 0) && !tp_legacy_lists_wanted(r)) {
    tp_reply_raw(r, 200, text, strlen(text), "application/json");
    return;
  }
  json_t *o = tp_json_loads(text);
  free(text);
  if (!o) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  if (!tp_expand(r, o, NULL)) {
    json_decref(o);
    return;
  }
  tp_reply_json(r, 200, o);
}

/* 404 resource_missing for the {id} of the URL. */
static void reply_missing(struct tp_req *r, const char *what)
{
  char msg[160];
  snprintf(msg, sizeof msg, "No such %s: '%.64s'", what, r->path_id);
  tp_reply_error(r, TP_ERR_RESOURCE_MISSING, "id", msg);
}

/* GET one stored object by the {id} of the URL. */
void tp_retrieve(struct tp_req *r, enum tp_kind kind, const char *what)
{
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  char *s = tp_store_get(&tp_app.store, kind, r->merchant.id, r->path_id);
  if (!s) {
    reply_missing(r, what);
    return;
  }
  tp_reply_stored(r, s);
}

json_t *tp_load_path(struct tp_req *r, enum tp_kind kind, const char *what)
{
  json_t *o = tp_store_get_json(&tp_app.store, kind, r->merchant.id, r->path_id);
  if (!o)
    reply_missing(r, what);
  return o;
}

/* ---- customers ------------------------------------------------------------ */
static json_t *customer_new(const char *id, int64_t created)
{
  char prefix[9];
  tp_random_b62(prefix, 8);
  for (int i = 0; i < 8; i++)
    prefix[i] = (char)toupper((unsigned char)prefix[i]);
  /* business_name and individual_name are shown only once set: the API
   * version's Customer has them optional and never null. */
  return tp_pack("{s:s, s:s, s:n, s:I, s:I, s:n, s:n, s:b, s:n, s:n, s:n, s:s, "
                 "s:{s:n, s:n, s:n, s:n}, s:b, s:{}, s:n, s:I, s:n, s:[], s:n, s:s, s:n}",
                 "id", id, "object", "customer", "address", "balance", (json_int_t)0, "created",
                 (json_int_t)created, "currency", "default_source", "delinquent", 0, "description",
                 "discount", "email", "invoice_prefix", prefix, "invoice_settings", "custom_fields",
                 "default_payment_method", "footer", "rendering_options", "livemode", 0, "metadata", "name",
                 "next_invoice_sequence", (json_int_t)1, "phone", "preferred_locales", "shipping",
                 "tax_exempt", "none", "test_clock");
}

/* Check that pm_id is attached to customer cus_id (or is being attached by
 * this very request, attaching_now). */
static bool default_pm_ok(struct tp_req *r, const char *pm_id, const char *cus_id, const char *attaching_now)
{
  if (attaching_now && strcmp(pm_id, attaching_now) == 0)
    return true;
  json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, pm_id);
  if (!pm) { /* no such PaymentMethod at all: resource_missing, as Stripe answers */
    tp_reply_missing(r, "PaymentMethod", pm_id, "invoice_settings[default_payment_method]");
    return false;
  }
  const char *owner = json_string_value(json_object_get(pm, "customer"));
  bool ok = owner && strcmp(owner, cus_id) == 0;
  json_decref(pm);
  if (!ok) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "The customer does not have a payment method with the ID %s. The payment method must be attached "
             "to the customer.",
             pm_id);
    tp_reply_error(r, TP_ERR_PAYMENT_METHOD_NOT_ATTACHED, "invoice_settings[default_payment_method]", msg);
  }
  return ok;
}

/* Apply create/update params to a customer object; false after replying. */
static bool customer_apply(struct tp_req *r, json_t *cus, const json_t *p, const char *attaching_now)
{
  json_t *v;
  if (!tp_email_param_ok(r, p, "email", "email"))
    return false;
  if (!tp_set_string(r, cus, p, "email", "email", CUS_EMAIL_MAX) ||
      !tp_set_string(r, cus, p, "name", "name", TP_NAME_MAX) ||
      !tp_set_string(r, cus, p, "description", "description", CUS_DESCRIPTION_MAX) ||
      !tp_set_string(r, cus, p, "phone", "phone", TP_PHONE_MAX) ||
      !tp_set_string(r, cus, p, "business_name", "business_name", CUS_PARTY_NAME_MAX) ||
      !tp_set_string(r, cus, p, "individual_name", "individual_name", CUS_PARTY_NAME_MAX))
    return false;
  static const char *const shown_once_set[] = {"business_name", "individual_name"};
  for (size_t i = 0; i < sizeof shown_once_set / sizeof shown_once_set[0]; i++)
    if (json_is_null(json_object_get(cus, shown_once_set[i])))
      json_object_del(cus, shown_once_set[i]);

  /* Stripe's rule: 3 to 12 upper-case letters or digits. Unset keeps it. */
  const char *prefix = tp_pstr(p, "invoice_prefix");
  if (prefix && *prefix) {
    size_t n = strlen(prefix);
    bool ok = n >= 3 && n <= 12;
    for (size_t i = 0; ok && i < n; i++)
      ok = isupper((unsigned char)prefix[i]) || isdigit((unsigned char)prefix[i]);
    if (!ok) {
      tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "invoice_prefix",
                     "Invalid invoice_prefix: it must be 3 to 12 upper-case letters or digits.");
      return false;
    }
    json_object_set_new(cus, "invoice_prefix", json_string(prefix));
  }
  int64_t seq;
  if (tp_param_int(p, "next_invoice_sequence", &seq)) {
    if (seq < 1 || seq > 1000000000) {
      tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "next_invoice_sequence",
                     "Invalid next_invoice_sequence: it must be a positive integer.");
      return false;
    }
    json_object_set_new(cus, "next_invoice_sequence", json_integer((json_int_t)seq));
  }

  if ((v = json_object_get(p, "address"))) {
    json_t *a = tp_unset(v) ? json_null() : tp_address_build(r, v, "address");
    if (!a)
      return false;
    json_object_set_new(cus, "address", a);
  }

  if ((v = json_object_get(p, "shipping"))) {
    json_t *sh = tp_shipping_build(r, v, false);
    if (!sh)
      return false;
    json_object_set_new(cus, "shipping", sh);
  }

  int64_t balance;
  if (tp_param_int(p, "balance", &balance))
    json_object_set_new(cus, "balance", json_integer((json_int_t)balance));
  else if ((v = json_object_get(p, "balance")) && tp_unset(v))
    json_object_set_new(cus, "balance", json_integer(0));

  if ((v = json_object_get(p, "tax_exempt")))
    json_object_set_new(cus, "tax_exempt", json_string(tp_unset(v) ? "none" : json_string_value(v)));

  if ((v = json_object_get(p, "preferred_locales")))
    json_object_set_new(cus, "preferred_locales", json_is_array(v) ? json_deep_copy(v) : json_array());

  if ((v = json_object_get(p, "metadata")) && !tp_metadata_update(r, cus, v))
    return false;

  if ((v = json_object_get(p, "invoice_settings"))) {
    json_t *is = json_object_get(cus, "invoice_settings");
    if (!json_is_object(is)) {
      is = tp_pack("{s:n, s:n, s:n, s:n}", "custom_fields", "default_payment_method", "footer",
                   "rendering_options");
      json_object_set_new(cus, "invoice_settings", is);
    }
    if (tp_unset(v)) {
      json_object_set_new(is, "default_payment_method", json_null());
      json_object_set_new(is, "footer", json_null());
    } else {
      const json_t *d = json_object_get(v, "default_payment_method");
      if (d && !tp_unset(d)) {
        const char *cid = json_string_value(json_object_get(cus, "id"));
        if (!default_pm_ok(r, json_string_value(d), cid, attaching_now))
          return false;
      }
      if (!tp_set_string(r, is, v, "default_payment_method", "invoice_settings[default_payment_method]", TP_ID_MAX) ||
          !tp_set_string(r, is, v, "footer", "invoice_settings[footer]", CUS_DESCRIPTION_MAX))
        return false;
    }
  }
  return true;
}

/* Reply with obj (a copy, expanded as asked); false after an expand error. */
static bool reply_object(struct tp_req *r, const json_t *obj, const json_t *known)
{
  json_t *out = json_deep_copy(obj);
  const json_t *ex = json_object_get(r->params, "expand");
  if (json_is_array(ex) && json_array_size(ex) > 0 && !tp_expand(r, out, known)) {
    json_decref(out);
    return false;
  }
  tp_legacy_lists(r, out, known);
  tp_reply_json(r, 200, out);
  return true;
}

/* POST /v1/customers */
void tp_h_customer_create(struct tp_req *r)
{
  if (!tp_check_params(r, spec_create) || !tp_card_param_alias(r))
    return;
  char id[TP_ID_MAX];
  tp_id_new(id, "cus");
  json_t *cus = customer_new(id, tp_now());
  struct tp_cs *cs = tp_cs_new();
  json_t *pm = NULL, *known = json_array();
  char pm_lock[TP_ID_MAX] = "";
  const char *pm_id = tp_pstr(r->params, "payment_method");
  struct tp_card_info ci; /* of a PaymentMethod made here (a test id, a token) */
  memset(&ci, 0, sizeof ci);

  if (pm_id && *pm_id) {
    char *s = tp_store_get(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, pm_id);
    bool stored = s != NULL;
    if (s) {
      pm = tp_json_loads(s);
      free(s);
    } else {
      /* Test ids (pm_card_visa...) make a fresh PaymentMethod, as Stripe does. */
      pm = tp_pm_resolve(r, cs, pm_id, &ci);
      if (!pm)
        goto fail; /* replied */
    }
    if (!pm) {
      tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
      goto fail;
    }
    const char *resolved = json_string_value(json_object_get(pm, "id"));
    /* A test id named as the default too means the PaymentMethod it made. */
    json_t *is = json_object_get(r->params, "invoice_settings");
    const char *def = json_string_value(json_object_get(is, "default_payment_method"));
    if (def && strcmp(def, pm_id) == 0 && strcmp(resolved, pm_id) != 0)
      json_object_set_new(is, "default_payment_method", json_string(resolved));
    pm_id = resolved;
    if (!tp_lock_try(pm_id)) {
      tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
      goto fail;
    }
    tp_scopy(pm_lock, sizeof pm_lock, pm_id);
    pm_id = pm_lock; /* resolved points into pm, which the fresh read below replaces */
    if (!stored && strcmp(pm_lock, tp_pstr(r->params, "payment_method")) != 0) {
      /* made here of a token (or test id): a request that spent the same
       * token first has stored its card by now, under this lock */
      json_t *spent = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, pm_id);
      json_decref(spent);
      if (spent) {
        char msg[160];
        snprintf(msg, sizeof msg, "You cannot use a Stripe token more than once: %.64s.",
                 tp_pstr(r->params, "payment_method"));
        tp_reply_error(r, TP_ERR_TOKEN_ALREADY_USED, "payment_method", msg);
        goto fail;
      }
    }
    if (stored) { /* read again under the lock: an attach may have committed since */
      json_t *fresh = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, pm_id);
      if (!fresh) {
        tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
        goto fail;
      }
      json_decref(pm);
      pm = fresh;
    }
    if (!tp_pm_usable(r, pm))
      goto fail;
    if (!json_is_null(json_object_get(pm, "customer")) && json_object_get(pm, "customer")) {
      tp_reply_error(r, TP_ERR_PAYMENT_METHOD_ALREADY_ATTACHED, "payment_method",
                     "The payment method you provided has already been attached to a customer.");
      goto fail;
    }
    bool ok = tp_pm_attach_check(r, pm, stored ? NULL : &ci);
    tp_card_wipe(&ci, sizeof ci);
    if (!ok)
      goto fail;
    json_object_set_new(pm, "customer", json_string(id));
  }

  if (!customer_apply(r, cus, r->params, pm_id))
    goto fail;
  /* source: a card token made the customer's first card and its default
   * (the legacy Cards API, sources.c). */
  const char *source = tp_pstr(r->params, "source");
  json_t *card = NULL;
  if (source && *source) {
    card = tp_card_source_create(r, cs, source, "source", id, NULL);
    if (!card)
      goto fail;
    json_object_set(cus, "default_source", json_object_get(card, "id"));
  }

  tp_cs_put(cs, TP_K_CUSTOMER, r->merchant.id, cus);
  tp_emit(cs, r, r->merchant.id, "customer.created", cus);
  if (card) {
    json_t *view = tp_card_view(card);
    tp_emit(cs, r, r->merchant.id, "customer.source.created", view);
    json_decref(view);
    json_array_append_new(known, card); /* expand[]=default_source, sources: not in the store yet */
  }
  if (pm) {
    tp_cs_put(cs, TP_K_PAYMENT_METHOD, r->merchant.id, pm);
    tp_emit(cs, r, r->merchant.id, "payment_method.attached", pm);
    json_array_append(known, pm);
  }
  if (!reply_object(r, cus, known))
    goto fail;
  tp_commit_and_reply_unlock(r, cs, pm_lock[0] ? pm_lock : NULL);
  json_decref(cus);
  json_decref(pm);
  json_decref(known);
  return;

fail:
  tp_card_wipe(&ci, sizeof ci);
  if (pm_lock[0])
    tp_lock_release(pm_lock);
  tp_cs_free(cs);
  json_decref(cus);
  json_decref(pm);
  json_decref(known);
}

/* GET /v1/customers/{id} (a deleted customer answers its stub, 200). */
void tp_h_customer_retrieve(struct tp_req *r)
{
  tp_retrieve(r, TP_K_CUSTOMER, "customer");
}

/* Load a live (not deleted) customer, or reply 404 and return NULL. */
static json_t *customer_load_live(struct tp_req *r, const char *id, const char *param)
{
  json_t *cus = tp_store_get_json(&tp_app.store, TP_K_CUSTOMER, r->merchant.id, id);
  if (!cus || json_is_true(json_object_get(cus, "deleted"))) {
    json_decref(cus);
    tp_reply_missing(r, "customer", id, param);
    return NULL;
  }
  return cus;
}

/* An update's source and default_source (the legacy Cards API, sources.c):
 * source makes a card of a card token the new default and deletes the old
 * default card, as Stripe does; default_source names one of the customer's
 * cards. False after replying. */
/* default_source and source of a customer update, into cs; the card made
 * and the one deleted go into known (for the reply's expansions: neither is
 * in the store yet). */
/* The cards an update names or deletes are read and changed under their
 * own locks (after the customer's, as everywhere), held to the commit
 * (locks, *nlocks: ids in lock_ids): a card updated or detached at the same
 * moment wrote back the copy it had read and brought a deleted card back
 * (a "ghost" whose vault record was gone: 500 when charged), or left
 * default_source naming a detached card. */
struct card_locks {
  char ids[2][TP_ID_MAX];
  const char *locks[3];
  size_t n;
};

static bool lock_card(struct tp_req *r, struct card_locks *cl, const char *id)
{
  /* Only what can be a card: any other id (the customer's own, another
   * object's) is no source of this customer, refused as such at once, not
   * waited for (its lock may be this request's own, or anyone's). */
  if (strncmp(id, "card_", 5) != 0 && strncmp(id, "src_", 4) != 0 && strncmp(id, "pm_", 3) != 0)
    return true;
  for (size_t i = 0; i < cl->n; i++)
    if (strcmp(cl->locks[i], id) == 0)
      return true;
  if (!tp_lock_try(id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return false;
  }
  char *slot = cl->ids[cl->n - 1];
  tp_scopy(slot, TP_ID_MAX, id);
  cl->locks[cl->n++] = slot;
  return true;
}

static bool sources_apply(struct tp_req *r, struct tp_cs *cs, json_t *cus, json_t *known, struct card_locks *cl)
{
  const char *def = tp_pstr(r->params, "default_source");
  const char *source = tp_pstr(r->params, "source");
  const char *def_param = r->default_card_sent ? "default_card" : "default_source";
  if (def && *def) {
    if (strlen(def) >= TP_ID_MAX) {
      tp_reply_missing(r, "source", def, def_param);
      return false;
    }
    if (!lock_card(r, cl, def))
      return false;
    json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, def);
    bool ok = tp_is_card_source(pm, r->path_id);
    json_decref(pm);
    if (!ok) {
      tp_reply_missing(r, "source", def, def_param);
      return false;
    }
    json_object_set_new(cus, "default_source", json_string(def));
  }
  if (source && *source) {
    /* The old default's lock first: nothing made yet if it is busy. */
    const char *old = json_string_value(json_object_get(cus, "default_source"));
    if (old && strlen(old) < TP_ID_MAX && !lock_card(r, cl, old))
      return false;
    json_t *card = tp_card_source_create(r, cs, source, "source", r->path_id, NULL);
    if (!card)
      return false;
    json_t *view = tp_card_view(card);
    tp_emit(cs, r, r->merchant.id, "customer.source.created", view);
    json_decref(view);
    json_t *old_pm = old ? tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, old) : NULL;
    if (tp_is_card_source(old_pm, r->path_id)) {
      tp_card_source_delete(cs, r, old_pm);
      /* nor as the invoice default: no default names a card that is gone */
      json_t *is = json_object_get(cus, "invoice_settings");
      const char *inv = json_string_value(json_object_get(is, "default_payment_method"));
      if (inv && strcmp(inv, old) == 0)
        json_object_set_new(is, "default_payment_method", json_null());
      json_array_append_new(known, tp_pack("{s:O, s:s, s:b}", "id", json_object_get(old_pm, "id"), "object", "card",
                                           "deleted", 1));
    }
    json_decref(old_pm);
    json_object_set(cus, "default_source", json_object_get(card, "id"));
    json_array_append_new(known, card);
  }
  return true;
}

/* POST /v1/customers/{id} */
void tp_h_customer_update(struct tp_req *r)
{
  if (!tp_check_params(r, spec_update) || !tp_card_param_alias(r))
    return;
  if (!tp_lock_try(r->path_id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  json_t *cus = customer_load_live(r, r->path_id, "id");
  json_t *before = cus ? json_deep_copy(cus) : NULL;
  json_t *known = json_array();
  struct tp_cs *cs = tp_cs_new();
  struct card_locks cl = {.locks = {r->path_id}, .n = 1};
  if (!cus || !customer_apply(r, cus, r->params, NULL) || !sources_apply(r, cs, cus, known, &cl))
    goto out_unlock;
  bool changed = !json_equal(cus, before);
  if (!changed && !r->idem_key[0]) {
    /* Nothing changed: Stripe answers the object and emits no event. */
    reply_object(r, cus, known);
    goto out_unlock;
  }
  /* Unchanged with an Idempotency-Key: the empty change set records the
   * key and this answer (Stripe stores the first result of every key), so
   * a retry replays it rather than undoing a later update. */
  if (changed) {
    tp_cs_put(cs, TP_K_CUSTOMER, r->merchant.id, cus);
    tp_metadata_index_emptied(cs, TP_K_CUSTOMER, r->merchant.id,
                              json_object_size(json_object_get(before, "metadata")), cus);
    tp_emit_update(cs, r, r->merchant.id, "customer.updated", before, cus);
  }
  if (!reply_object(r, cus, known))
    goto out_unlock;
  tp_commit_and_reply_locks(r, cs, cl.locks, cl.n);
  json_decref(cus);
  json_decref(before);
  json_decref(known);
  return;

out_unlock:
  tp_cs_free(cs);
  for (size_t i = 0; i < cl.n; i++)
    tp_lock_release(cl.locks[i]);
  json_decref(cus);
  json_decref(before);
  json_decref(known);
}

/* A customer being deleted lets go of its payment methods, as on Stripe:
 * each PaymentMethod is detached (used up, like any detached one:
 * payment_method.detached) and each card of the legacy Cards API deleted
 * with its vault record (customer.source.deleted), within cs. Each is
 * changed under its own lock; *locks gets the customer's (held by the
 * caller) and theirs, pointing into *pms, to release once committed. False
 * after replying (a store error, or one of them busy: 429 lock_timeout);
 * the caller releases the locks taken so far. */
static bool release_payment_methods(struct tp_req *r, struct tp_cs *cs, json_t **pms, const char ***locks,
                                    size_t *nlocks)
{
  *pms = tp_store_query_take(&tp_app.store,
                             "SELECT id FROM payment_methods WHERE merchant = ?1 AND customer = ?2 ORDER BY id",
                             tp_pack("[s, s]", r->merchant.id, r->path_id));
  if (!*pms) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return false;
  }
  *locks = calloc(json_array_size(*pms) + 1, sizeof **locks);
  if (!*locks)
    abort();
  (*locks)[(*nlocks)++] = r->path_id;
  size_t i;
  json_t *row;
  json_array_foreach(*pms, i, row)
  {
    const char *id = json_string_value(json_object_get(row, "id"));
    if (!id)
      continue;
    if (!tp_lock_try(id)) {
      tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
      return false;
    }
    (*locks)[(*nlocks)++] = id;
    json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, id);
    const char *owner = json_string_value(json_object_get(pm, "customer"));
    if (!pm || !owner || strcmp(owner, r->path_id) != 0) { /* gone or moved before its lock was taken */
      json_decref(pm);
      continue;
    }
    if (tp_is_card_source(pm, r->path_id)) {
      tp_card_source_delete(cs, r, pm);
    } else {
      tp_pm_detach(cs, r, pm);
    }
    json_decref(pm);
  }
  return true;
}

/* DELETE /v1/customers/{id} */
void tp_h_customer_delete(struct tp_req *r)
{
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  if (!tp_lock_try(r->path_id)) {
    tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
    return;
  }
  json_t *cus = customer_load_live(r, r->path_id, "id");
  if (!cus) {
    tp_lock_release(r->path_id);
    return;
  }
  struct tp_cs *cs = tp_cs_new();
  json_t *pms = NULL;
  const char **locks = NULL;
  size_t nlocks = 0;
  if (!release_payment_methods(r, cs, &pms, &locks, &nlocks)) {
    for (size_t i = 0; i < nlocks; i++)
      tp_lock_release(locks[i]);
    tp_cs_free(cs);
    goto out;
  }
  json_t *stub = tp_pack("{s:s, s:s, s:b}", "id", r->path_id, "object", "customer", "deleted", 1);
  tp_cs_put(cs, TP_K_CUSTOMER, r->merchant.id, stub);
  tp_metadata_index_emptied(cs, TP_K_CUSTOMER, r->merchant.id, json_object_size(json_object_get(cus, "metadata")),
                            stub);
  /* The event carries the customer as it was, like Stripe's. */
  tp_emit(cs, r, r->merchant.id, "customer.deleted", cus);
  tp_reply_json(r, 200, stub);
  tp_commit_and_reply_locks(r, cs, locks, nlocks);
out:
  free(locks);
  json_decref(pms);
  json_decref(cus);
}

/* GET /v1/customers */
void tp_h_customer_list(struct tp_req *r)
{
  if (!tp_check_params(r, spec_list))
    return;
  struct tp_list_query q;
  tp_list_query_init(&q, TP_K_CUSTOMER, r->merchant.id);
  const char *email = tp_pstr(r->params, "email");
  /* The store matches "deleted IS NULL" for a NULL value: live customers only. */
  if (email && *email) {
    q.col_name = "email";
    q.col_value = email;
    q.col2_name = "deleted";
    q.col2_value = NULL;
  } else {
    q.col_name = "deleted";
    q.col_value = NULL;
  }
  if (!tp_list_params(r, &q))
    return;
  tp_reply_list(r, &q, "/v1/customers");
}
