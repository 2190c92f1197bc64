/* GET /v1/account (and /v1/accounts/{id} for the key's own account): the
 * merchant as Stripe's Account object, which the SDKs read to learn whose
 * key they hold (stripe.accounts.retrieve()). Turnpike merchants take card
 * payments and have no payouts, Connect or onboarding, so the object says
 * so: charges_enabled, details_submitted, card_payments active, payouts
 * disabled, a standard account. Another account's id is 404: no Connect. */
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"
#include "jpack.h"

#include <stdio.h>
#include <string.h>

static void reply_account(struct tp_req *r)
{
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  json_t *args = tp_pack("[s]", r->merchant.id);
  json_t *rows = tp_store_query(&tp_app.store, "SELECT created FROM merchants WHERE id = ?1", args);
  json_decref(args);
  if (!rows || json_array_size(rows) != 1) {
    json_decref(rows);
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return;
  }
  json_int_t created = json_integer_value(json_object_get(json_array_get(rows, 0), "created"));
  json_decref(rows);
  json_t *acct = tp_pack(
      "{s:s, s:s, s:{s:n, s:n, s:s, s:n, s:n, s:n, s:n, s:n, s:n}, s:n, s:{s:s, s:s}, s:b, s:s, s:I, s:s, "
      "s:b, s:n, s:{}, s:b, s:n, s:s}",
      "id", r->merchant.id, "object", "account", "business_profile", "mcc", "minority_owned_business_designation",
      "name", r->merchant.name, "specified_commercial_transactions_act_url", "support_address", "support_email",
      "support_phone", "support_url", "url", "business_type", "capabilities", "card_payments", "active",
      "transfers", "inactive", "charges_enabled", 1, "country", "US", "created", created, "default_currency",
      "usd", "details_submitted", 1, "email", "metadata", "payouts_enabled", 0, "settings", "type",
      "standard");
  if (!acct) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  tp_reply_json(r, 200, acct);
}

/* GET /v1/account */
void tp_h_account_retrieve(struct tp_req *r)
{
  reply_account(r);
}

/* GET /v1/accounts/{id} */
void tp_h_accounts_retrieve(struct tp_req *r)
{
  if (strcmp(r->path_id, r->merchant.id) != 0) {
    tp_reply_no_such(r, "account", "account");
    return;
  }
  reply_account(r);
}
