/* /v1/tokens: Stripe's legacy card tokens. create (a secret key, or the
 * publishable key in a browser, as Stripe.js's createToken) and retrieve.
 *
 * A token is a card held for one use: the card goes to the vault under the
 * token's id, and the token object shows only what a Card object shows
 * (brand, last4, expiry, the cardholder's name and address). Using it, as a
 * charge's source (POST /v1/charges source=tok_...), as card[token] of a
 * PaymentMethod or payment_method_data, or as a payment_method, makes a
 * card PaymentMethod of it and spends it in that commit (tp_pm_create_card
 * in objects.c): the token shows used, its vault record goes, and a row in
 * token_redemptions makes a second commit spending it fail, so two requests
 * racing with one token cannot both use it. A used token is refused with
 * 400 token_already_used, as Stripe refuses it. Bank account, PII, account,
 * person and CVC-update tokens are refused by name. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"
#include "core/currency.h"
#include "jpack.h"
#include "sec/auth.h"
#include "sec/vault.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UNSUPPORTED(name, why) {name, TP_P_UNSUPPORTED, NULL, why}

static const char *const why_token_type[] = {"Turnpike makes card tokens only", NULL};

static const struct tp_pspec spec_card[] = {
  {"number", TP_P_STRING, NULL, NULL},
  {"exp_month", TP_P_INT, NULL, NULL},
  {"exp_year", TP_P_INT, NULL, NULL},
  {"cvc", TP_P_STRING, NULL, NULL},
  {"name", TP_P_STRING, NULL, NULL},
  {"address_line1", TP_P_STRING, NULL, NULL},
  {"address_line2", TP_P_STRING, NULL, NULL},
  {"address_city", TP_P_STRING, NULL, NULL},
  {"address_state", TP_P_STRING, NULL, NULL},
  {"address_zip", TP_P_STRING, NULL, NULL},
  {"address_country", TP_P_STRING, NULL, NULL},
  {"currency", TP_P_STRING, NULL, NULL},
  {"networks", TP_P_UNSUPPORTED, NULL, tp_why_networks},
  {NULL, 0, NULL, NULL},
};

static const struct tp_pspec spec_create[] = {
  {"card", TP_P_OBJECT, spec_card, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  UNSUPPORTED("customer", tp_why_connect), /* with card: Connect's token of a platform customer's card */
  UNSUPPORTED("bank_account", why_token_type),
  UNSUPPORTED("pii", why_token_type),
  UNSUPPORTED("account", why_token_type),
  UNSUPPORTED("person", why_token_type),
  UNSUPPORTED("cvc_update", why_token_type),
  {NULL, 0, NULL, NULL},
};

/* The token's Card object: what the card shows, never its number. */
static json_t *card_object(const struct tp_req *r, const json_t *p, const struct tp_card_info *ci, bool cvc)
{
  char id[TP_ID_MAX], fp[17];
  tp_id_new(id, "card");
  tp_card_fingerprint(&r->merchant, ci->pan, fp);
  const char *line1 = tp_pstr(p, "address_line1"), *zip = tp_pstr(p, "address_zip");
  json_t *c = tp_pack("{s:s, s:s, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?, s:s, s:s, s:s?, s:n, s:i, s:i, "
                      "s:s, s:s, s:s, s:{}, s:s?, s:{s:n}, s:n, s:n, s:s}",
                      "id", id, "object", "card", "address_city", tp_pstr(p, "address_city"), "address_country",
                      tp_pstr(p, "address_country"), "address_line1", line1, "address_line1_check",
                      line1 && *line1 ? "unchecked" : NULL, "address_line2", tp_pstr(p, "address_line2"),
                      "address_state", tp_pstr(p, "address_state"), "address_zip", zip, "address_zip_check",
                      zip && *zip ? "unchecked" : NULL, "brand", tp_card_object_brand(tp_brand_name(ci->brand)), "country", ci->country,
                      "cvc_check", cvc ? "unchecked" : NULL, "dynamic_last4", "exp_month", ci->exp_month,
                      "exp_year", ci->exp_year, "fingerprint", fp, "funding", ci->funding, "last4", ci->last4,
                      "metadata", "name", tp_pstr(p, "name"), "networks", "preferred", "regulated_status",
                      "tokenization_method", "allow_redisplay", "unspecified");
  if (!c)
    abort();
  return c;
}

/* POST /v1/tokens */
void tp_h_token_create(struct tp_req *r)
{
  if (!tp_check_params(r, spec_create))
    return;
  const json_t *card = json_object_get(r->params, "card");
  if (!json_is_object(card)) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "card", NULL);
    return;
  }
  if (!tp_card_holder_ok(r, card, "card"))
    return;
  const char *currency = tp_pstr(card, "currency");
  if (currency && *currency && !tp_currency_find(currency)) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "card[currency]", NULL);
    return;
  }
  struct tp_card_info ci;
  char cvc[8];
  memset(&ci, 0, sizeof ci);
  bool ok = tp_card_from_params(r, card, "card", &ci, cvc);
  bool had_cvc = cvc[0] != '\0';
  tp_card_wipe(cvc, sizeof cvc);
  if (!ok) {
    tp_card_wipe(&ci, sizeof ci);
    return;
  }
  char id[TP_ID_MAX];
  tp_id_new(id, "tok");
  uint8_t blob[TP_VAULT_MAX_BLOB];
  size_t bl = 0;
  int sealed = tp_vault_seal_rec(r->merchant.id, id, ci.pan, ci.exp_month, ci.exp_year, blob, &bl);
  json_t *c = sealed == 0 ? card_object(r, card, &ci, had_cvc) : NULL;
  tp_card_wipe(&ci, sizeof ci);
  if (sealed != 0) {
    tp_reply_error(r, TP_ERR_VAULT_UNAVAILABLE, NULL, NULL);
    return;
  }
  const char *ip = tp_req_client_addr(r);
  json_t *tok = tp_pack("{s:s, s:s, s:o, s:s?, s:I, s:b, s:s, s:b}", "id", id, "object", "token", "card", c,
                        "client_ip", ip && *ip ? ip : NULL, "created", (json_int_t)tp_now(), "livemode", 0, "type",
                        "card", "used", 0);
  if (!tok)
    abort();
  struct tp_cs *cs = tp_cs_new();
  tp_cs_vault(cs, id, r->merchant.id, blob, bl);
  tp_cs_put(cs, TP_K_TOKEN, r->merchant.id, tok);
  tp_reply_json(r, 200, tok);
  tp_commit_and_reply(r, cs);
}

/* GET /v1/tokens/{id} */
void tp_h_token_retrieve(struct tp_req *r)
{
  tp_retrieve(r, TP_K_TOKEN, "token");
}
