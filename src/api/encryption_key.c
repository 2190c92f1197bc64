/* GET /v1/turnpike/encryption_key: the public keys clients encrypt card data
 * with (JWK set), and the card[encrypted] path of card parameters. */
#include "api/handlers.h"
#include "api/objects.h"
#include "core/card.h"
#include "jpack.h"
#include "sec/jwe.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tp_h_encryption_key(struct tp_req *r)
{
  /* A public route authenticated here: publishable keys (which browsers hold)
   * are refused by the API-key check only for being publishable, so that
   * answer proves a valid key too. */
  /* The failed-login block and count of every authenticated route: this
   * one answered whether any key was valid, as often as asked, also for an
   * address locked out everywhere else. */
  if (tp_req_login_blocked(r))
    return;
  enum tp_err e = tp_req_authenticate(r);
  if (e != TP_ERR_OK && e != TP_ERR_PUBLISHABLE_KEY_FORBIDDEN) {
    tp_req_login_failed(r, e);
    tp_reply_error(r, e, NULL, NULL);
    return;
  }
  json_t *k = tp_jwe_jwks();
  if (!k || json_array_size(json_object_get(k, "keys")) == 0) {
    json_decref(k);
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  json_object_set_new(k, "object", json_string("encryption_key"));
  tp_reply_json(r, 200, k);
}

/* Overwrite a jansson string's bytes before the value is freed. */
static void wipe_str(json_t *v)
{
  if (json_is_string(v))
    tp_card_wipe((void *)(uintptr_t)json_string_value(v), json_string_length(v));
}

/* An integer field that clients may also send as a decimal string. */
static json_t *int_field(const json_t *v)
{
  if (json_is_integer(v))
    return json_integer(json_integer_value(v));
  const char *s = json_string_value(v);
  if (!s || !*s || strlen(s) > 6)
    return NULL;
  char *end;
  long n = strtol(s, &end, 10);
  return *end ? NULL : json_integer(n);
}

bool tp_card_from_jwe(struct tp_req *r, const char *jwe, const char *param_prefix, struct tp_card_info *ci,
                      char *cvc_out)
{
  char param[160];
  snprintf(param, sizeof param, "%s[encrypted]", param_prefix);
  uint8_t *plain = malloc(TP_JWE_MAX_PLAIN + 1);
  size_t pl = 0;
  const char *why = NULL;
  if (!plain) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return false;
  }
  if (tp_jwe_decrypt(jwe, plain, TP_JWE_MAX_PLAIN + 1, &pl, &why) != 0) {
    free(plain);
    tp_reply_error(r, TP_ERR_CARD_ENCRYPTED_INVALID, param, why);
    return false;
  }
  json_t *c = json_loadb((const char *)plain, pl, JSON_REJECT_DUPLICATES, NULL);
  tp_card_wipe(plain, TP_JWE_MAX_PLAIN + 1);
  free(plain);
  json_t *card = NULL;
  if (json_is_object(c) && json_is_string(json_object_get(c, "number"))) {
    json_t *m = int_field(json_object_get(c, "exp_month")), *y = int_field(json_object_get(c, "exp_year"));
    const json_t *cvc = json_object_get(c, "cvc");
    if (m && y && (!cvc || json_is_string(cvc))) {
      card = tp_pack("{s:O, s:o, s:o}", "number", json_object_get(c, "number"), "exp_month", m, "exp_year", y);
      if (cvc)
        json_object_set(card, "cvc", (json_t *)(uintptr_t)cvc);
    } else {
      json_decref(m);
      json_decref(y);
    }
  }
  bool ok = false;
  if (!card)
    tp_reply_error(r, TP_ERR_CARD_ENCRYPTED_INVALID, param,
                   "The decrypted card must be a JSON object with number, exp_month, exp_year and cvc.");
  else
    ok = tp_card_from_params(r, card, param_prefix, ci, cvc_out);
  /* card shares c's strings: wipe them once, through c, after use. */
  if (json_is_object(c)) {
    const char *k;
    json_t *v;
    json_object_foreach(c, k, v) wipe_str(v);
  }
  json_decref(card);
  json_decref(c);
  return ok;
}
