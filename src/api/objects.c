/* Shared object builders: events, card payment methods, expansion, lists,
 * per-object locks. */
#include "api/objects.h"
#include "sec/scopes.h"
#include "core/currency.h"
#include "core/payflow.h"
#include "jpack.h"
#include "jsonw.h"
#include "log.h"
#include "sec/jwe.h"
#include "sec/vault.h"
#include "store/zjson.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const struct tp_pspec tp_spec_card[] = {
  {"number", TP_P_STRING, NULL, NULL},
  {"exp_month", TP_P_INT, NULL, NULL},
  {"exp_year", TP_P_INT, NULL, NULL},
  {"cvc", TP_P_STRING, NULL, NULL},
  {"token", TP_P_STRING, NULL, NULL},
  {"encrypted", TP_P_STRING, NULL, NULL}, /* JWE of the fields above (sec/jwe.h) */
  {"networks", TP_P_UNSUPPORTED, NULL, tp_why_networks},
  {NULL, 0, NULL, NULL},
};

const struct tp_pspec tp_spec_address[] = {
  {"line1", TP_P_STRING, NULL, NULL}, {"line2", TP_P_STRING, NULL, NULL},
  {"city", TP_P_STRING, NULL, NULL},  {"state", TP_P_STRING, NULL, NULL},
  {"postal_code", TP_P_STRING, NULL, NULL}, {"country", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

const struct tp_pspec tp_spec_billing_details[] = {
  {"address", TP_P_OBJECT, tp_spec_address, NULL},
  {"email", TP_P_STRING, NULL, NULL},
  {"name", TP_P_STRING, NULL, NULL},
  {"phone", TP_P_STRING, NULL, NULL},
  {"tax_id", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

const struct tp_pspec tp_spec_shipping[] = {
  {"address", TP_P_OBJECT, tp_spec_address, NULL}, {"name", TP_P_STRING, NULL, NULL},
  {"phone", TP_P_STRING, NULL, NULL}, {"carrier", TP_P_STRING, NULL, NULL},
  {"tracking_number", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

/* Loose on purpose: Stripe accepts anything shaped local@domain. */
static bool email_ok(const char *s)
{
  const char *at = s ? strchr(s, '@') : NULL;
  if (!at || at == s || at[1] == '\0' || strchr(at + 1, '@'))
    return false;
  for (const char *p = s; *p; p++)
    if ((unsigned char)*p <= ' ')
      return false;
  return true;
}

bool tp_billing_details_ok(struct tp_req *r, json_t *bd, const char *param)
{
  const char *k;
  json_t *v;
  char name[128];
  json_object_foreach(bd, k, v)
  {
    snprintf(name, sizeof name, "%s[%s]", param, k);
    if (json_is_string(v) && tp_utf8_chars(json_string_value(v)) > TP_ADDRESS_FIELD_MAX) {
      tp_reply_error(r, TP_ERR_PARAMETER_TOO_LONG, name, NULL);
      return false;
    }
    if (strcmp(k, "email") == 0 && !tp_email_param_ok(r, bd, k, name))
      return false;
    if (!json_is_object(v))
      continue;
    const char *k2;
    json_t *v2;
    json_object_foreach(v, k2, v2)
    {
      snprintf(name, sizeof name, "%s[%s][%s]", param, k, k2);
      if (json_is_string(v2) && tp_utf8_chars(json_string_value(v2)) > TP_ADDRESS_FIELD_MAX) {
        tp_reply_error(r, TP_ERR_PARAMETER_TOO_LONG, name, NULL);
        return false;
      }
      if (strcmp(k2, "country") != 0 || !json_is_string(v2) || tp_unset(v2))
        continue;
      const char *c = json_string_value(v2);
      if (strlen(c) != 2 || !isalpha((unsigned char)c[0]) || !isalpha((unsigned char)c[1])) {
        tp_reply_error(r, TP_ERR_COUNTRY_CODE_INVALID, name, NULL);
        return false;
      }
      char up[3] = {(char)toupper((unsigned char)c[0]), (char)toupper((unsigned char)c[1]), 0};
      json_object_set_new(v, k2, json_string(up)); /* same key: the iteration goes on */
    }
  }
  return true;
}


bool tp_email_param_ok(struct tp_req *r, const json_t *params, const char *key, const char *param)
{
  const json_t *v = json_object_get(params, key);
  if (!json_is_string(v) || tp_unset(v) || email_ok(json_string_value(v)))
    return true;
  tp_reply_error(r, TP_ERR_EMAIL_INVALID, param, "Invalid email address: the email must be like name@example.com");
  return false;
}

bool tp_card_param_alias(struct tp_req *r)
{
  /* default_card, default_source's older name (ActiveMerchant's store with
   * set_default sends it), where the route takes default_source */
  json_t *dc = json_object_get(r->params, "default_card");
  if (dc) {
    if (json_object_get(r->params, "default_source")) {
      tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "default_card",
                     "default_card is the older name of default_source: give one of them.");
      return false;
    }
    json_object_set(r->params, "default_source", dc);
    json_object_del(r->params, "default_card");
    r->default_card_sent = true;
  }
  json_t *card = json_object_get(r->params, "card");
  if (!card)
    return true;
  if (!json_is_string(card)) {
    tp_reply_error(r, TP_ERR_PARAMETER_UNSUPPORTED, "card",
                   "Parameter not supported by Turnpike: card with the card's numbers (make a token or PaymentMethod "
                   "of them, and pass its id as source)");
    return false;
  }
  if (json_object_get(r->params, "source")) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "card", "card is the older name of source: give one of them.");
    return false;
  }
  json_object_set(r->params, "source", card);
  json_object_del(r->params, "card");
  return true;
}

bool tp_set_string(struct tp_req *r, json_t *obj, const json_t *p, const char *key, const char *param, size_t max)
{
  const json_t *v = json_object_get(p, key);
  if (!v)
    return true;
  if (tp_unset(v)) {
    json_object_set_new(obj, key, json_null());
    return true;
  }
  if (tp_utf8_chars(json_string_value(v)) > max) { /* characters, as Stripe counts */
    tp_reply_error(r, TP_ERR_PARAMETER_TOO_LONG, param, NULL);
    return false;
  }
  json_object_set_new(obj, key, json_string(json_string_value(v)));
  return true;
}

json_t *tp_address_build(struct tp_req *r, const json_t *p, const char *param)
{
  static const char *const keys[] = {"city", "country", "line1", "line2", "postal_code", "state"};
  json_t *a = json_object();
  char name[128];
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    json_object_set_new(a, keys[i], json_null());
    snprintf(name, sizeof name, "%s[%s]", param, keys[i]);
    if (!tp_set_string(r, a, p, keys[i], name, TP_ADDRESS_FIELD_MAX)) {
      json_decref(a);
      return NULL;
    }
  }
  const char *country = json_string_value(json_object_get(a, "country"));
  if (country && !(strlen(country) == 2 && isalpha((unsigned char)country[0]) &&
                   isalpha((unsigned char)country[1]))) {
    snprintf(name, sizeof name, "%s[country]", param);
    tp_reply_error(r, TP_ERR_COUNTRY_CODE_INVALID, name, NULL);
    json_decref(a);
    return NULL;
  }
  if (country) {
    char up[3] = {(char)toupper((unsigned char)country[0]), (char)toupper((unsigned char)country[1]), 0};
    json_object_set_new(a, "country", json_string(up));
  }
  return a;
}

json_t *tp_shipping_build(struct tp_req *r, const json_t *v, bool tracking)
{
  if (tp_unset(v))
    return json_null();
  const json_t *sa = json_object_get(v, "address");
  if (!json_is_object(sa)) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "shipping[address]", NULL);
    return NULL;
  }
  const json_t *name = json_object_get(v, "name");
  if (!name || tp_unset(name)) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "shipping[name]", NULL);
    return NULL;
  }
  json_t *a = tp_address_build(r, sa, "shipping[address]");
  if (!a)
    return NULL;
  json_t *sh = tp_pack("{s:o, s:n, s:n}", "address", a, "name", "phone");
  if (tracking) {
    json_object_set_new(sh, "carrier", json_null());
    json_object_set_new(sh, "tracking_number", json_null());
  }
  if (!tp_set_string(r, sh, v, "name", "shipping[name]", TP_NAME_MAX) ||
      !tp_set_string(r, sh, v, "phone", "shipping[phone]", TP_PHONE_MAX) ||
      (tracking && (!tp_set_string(r, sh, v, "carrier", "shipping[carrier]", TP_NAME_MAX) ||
                    !tp_set_string(r, sh, v, "tracking_number", "shipping[tracking_number]", TP_NAME_MAX)))) {
    json_decref(sh);
    return NULL;
  }
  return sh;
}

static bool expand_paths_ok(struct tp_req *r);

char *tp_return_location(const char *ret, const char *kind, const char *id, const char *secret, const char *status)
{
  const char *frag = strchr(ret, '#');
  int base = frag ? (int)(frag - ret) : (int)strlen(ret);
  const char *q = memchr(ret, '?', (size_t)base);
  char sep = !q ? '?' : (ret[base - 1] == '?' || ret[base - 1] == '&') ? '\0' : '&';
  char *raw = NULL;
  if (asprintf(&raw, "%.*s%s%s=%s&%s_client_secret=%s&redirect_status=%s%s", base, ret,
               sep ? (char[]){sep, '\0'} : "", kind, id ? id : "", kind, secret ? secret : "", status,
               frag ? frag : "") < 0)
    return NULL;
  /* A Location field is a URI (RFC 9110 10.2.2): ASCII. A return_url may
   * hold UTF-8 (an IRI: a path or a host in another script) or characters a
   * URI may not (RFC 3986 2: "<>\\^`{|}"); those go percent-encoded, as a
   * browser would send them, and the rest of the URL as it was written. */
  size_t n = strlen(raw);
  char *out = malloc(n * 3 + 1);
  if (!out) {
    free(raw);
    return NULL;
  }
  static const char hex[] = "0123456789ABCDEF";
  char *o = out;
  for (const unsigned char *c = (const unsigned char *)raw; *c; c++) {
    if (*c >= 0x80 || *c <= 0x20 || *c == 0x7f || strchr("\"<>\\^`{|}", *c)) {
      *o++ = '%';
      *o++ = hex[*c >> 4];
      *o++ = hex[*c & 15];
    } else
      *o++ = (char)*c;
  }
  *o = '\0';
  free(raw);
  return out;
}

const char *tp_redirect_status(const json_t *intent)
{
  const char *st = json_string_value(json_object_get(intent, "status"));
  if (!st)
    return "failed";
  if (!strcmp(st, "succeeded") || !strcmp(st, "requires_capture"))
    return "succeeded";
  if (!strcmp(st, "processing"))
    return "processing";
  return "failed";
}

bool tp_check_params(struct tp_req *r, const struct tp_pspec *spec)
{
  struct tp_params_error pe;
  memset(&pe, 0, sizeof pe);
  if (tp_params_check(r->params, spec, &pe) != 0) {
    tp_reply_params_error(r, &pe, false);
    return false;
  }
  /* expand[] is checked here, before the handler does anything: a request
   * whose expansion cannot be made is refused whole, as Stripe does, not
   * carried out with the expansion left off. */
  return expand_paths_ok(r);
}

const struct tp_pspec tp_spec_expand_only[] = {
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

const char *tp_pstr(const json_t *params, const char *key)
{
  return json_string_value(json_object_get(params, key));
}

/* ---- events ---------------------------------------------------------------- */
/* The event about an object whose compact JSON is obj (olen bytes): its
 * own fields are serialised separately and spliced around obj, giving the
 * same bytes as serialising the whole event, without walking the object
 * again. */
static void emit_dumped(struct tp_cs *cs, const struct tp_req *r, const char *merchant, const char *type,
                        const json_t *object, const char *obj, size_t olen, const char *prev, size_t prevlen,
                        const uint8_t *oz, size_t ozlen)
{
  /* Written by hand: an event is the same envelope around an object that is
   * already serialised, three times per payment, and building it as a tree
   * (json_pack) cost more than everything else the event needs. The bytes
   * are those json_dumps gives for the same fields in the same order. */
  char id[TP_ID_MAX];
  tp_id_new(id, "evt");
  int64_t created = tp_now();
  struct tp_jbuf b = {0};
  TP_JBUF_STR(&b, "{\"id\":", id);
  TP_JBUF_INT(&b, ",\"object\":\"event\",\"api_version\":\"" TP_API_VERSION "\",\"created\":", created);
  TP_JBUF_LIT(&b, ",\"data\":{\"object\":");
  size_t head = b.len;
  tp_jbuf_raw(&b, obj, olen);
  if (prev) {
    TP_JBUF_LIT(&b, ",\"previous_attributes\":");
    tp_jbuf_raw(&b, prev, prevlen);
  }
  /* Stripe's request is null for what the customer did, not an API call. */
  if (r && r->customer_page)
    r = NULL;
  TP_JBUF_STR(&b, "},\"livemode\":false,\"pending_webhooks\":0,\"request\":{\"id\":", r ? r->request_id : NULL);
  TP_JBUF_STR(&b, ",\"idempotency_key\":", r && r->has_idem ? r->idem_key : NULL);
  TP_JBUF_STR(&b, "},\"type\":", type);
  TP_JBUF_LIT(&b, "}");
  size_t len = 0;
  char *ev = tp_jbuf_finish(&b, &len);
  if (!ev)
    abort();
  /* oz: the object's own stored frame, reused inside the event's. */
  tp_cs_put_event_around(cs, merchant, id, created, type, json_string_value(json_object_get(object, "id")), ev,
                         len, head, olen, oz, ozlen);
}

void tp_emit(struct tp_cs *cs, const struct tp_req *r, const char *merchant, const char *type, const json_t *object)
{
  size_t ol = 0;
  char *os = tp_json_dump(object, &ol);
  if (!os)
    abort();
  emit_dumped(cs, r, merchant, type, object, os, ol, NULL, 0, NULL, 0);
  free(os);
}

/* What changed from before to after, as Stripe's previous_attributes: each
 * changed field with its old value (null when it was absent); in a nested
 * object (metadata, billing_details, address ...) only the changed keys. */
json_t *tp_prev_attrs(const json_t *before, const json_t *after)
{
  json_t *out = json_object();
  const char *k;
  json_t *bv, *av;
  json_object_foreach((json_t *)(uintptr_t)before, k, bv) {
    av = json_object_get(after, k);
    if (json_equal(bv, av))
      continue;
    if (json_is_object(bv) && json_is_object(av))
      json_object_set_new(out, k, tp_prev_attrs(bv, av));
    else
      json_object_set(out, k, bv);
  }
  json_object_foreach((json_t *)(uintptr_t)after, k, av) {
    if (!json_object_get(before, k))
      json_object_set_new(out, k, json_null());
  }
  return out;
}

/* An event about object with data.previous_attributes = prev. */
void tp_emit_prev(struct tp_cs *cs, const struct tp_req *r, const char *merchant, const char *type,
                  const json_t *object, const json_t *prev)
{
  size_t ol = 0, pl = 0;
  char *os = tp_json_dump(object, &ol), *ps = tp_json_dump(prev, &pl);
  if (!os || !ps)
    abort();
  emit_dumped(cs, r, merchant, type, object, os, ol, ps, pl, NULL, 0);
  free(os);
  free(ps);
}

void tp_emit_update(struct tp_cs *cs, const struct tp_req *r, const char *merchant, const char *type,
                    const json_t *before, const json_t *object)
{
  json_t *prev = tp_prev_attrs(before, object);
  /* Nothing changed (an update that re-sent what the object holds): no
   * event, as on Stripe, whose *.updated says a property changed. */
  if (json_object_size(prev) > 0)
    tp_emit_prev(cs, r, merchant, type, object, prev);
  json_decref(prev);
}

void tp_put_emit(struct tp_cs *cs, const struct tp_req *r, const char *merchant, enum tp_kind kind, const char *type,
                 const json_t *object)
{
  tp_put_emit_text(cs, r, merchant, kind, type, object, NULL);
}

void tp_put_emit_text(struct tp_cs *cs, const struct tp_req *r, const char *merchant, enum tp_kind kind,
                      const char *type, const json_t *object, char **text)
{
  size_t ol = 0;
  char *os = tp_json_dump(object, &ol);
  if (!os)
    abort();
  if (text) {
    *text = malloc(ol + 1);
    if (!*text)
      abort();
    memcpy(*text, os, ol + 1);
  }
  /* The object is compressed once: its frame is stored in its row and,
   * between the envelope's own small frames, in its event's. The event
   * first (as before), then the put takes os and the frame over. */
  size_t zl = 0;
  uint8_t *z = tp_zjson_pack(os, ol, &zl);
  emit_dumped(cs, r, merchant, type, object, os, ol, NULL, 0, z, zl);
  tp_cs_put_framed(cs, kind, merchant, object, os, ol, z, zl);
}

/* ---- refunds ---------------------------------------------------------------- */
json_t *tp_refund_object(int64_t amount, const json_t *ch, const char *reason, const json_t *metadata,
                         const char *status)
{
  char id[TP_ID_MAX];
  tp_id_new(id, "re");
  json_t *re = tp_pack("{s:s, s:s, s:I, s:n, s:O, s:I, s:O, s:O?, s:n, s:o, s:O, s:O?, s:o, s:n, s:n, s:s, s:n}",
                       "id", id, "object", "refund", "amount", (json_int_t)amount, "balance_transaction", "charge",
                       json_object_get(ch, "id"), "created", (json_int_t)tp_now(), "currency",
                       json_object_get(ch, "currency"), "customer", json_object_get(ch, "customer"),
                       "customer_account", "metadata", json_object(), "payment_intent", json_object_get(ch, "payment_intent"), "payment_method",
                       json_object_get(ch, "payment_method"), "reason",
                       reason ? json_string(reason) : json_null(), "receipt_number", "source_transfer_reversal",
                       "status", status, "transfer_reversal");
  if (!re)
    abort();
  if (json_is_object(metadata))
    tp_metadata_apply(re, metadata); /* a key sent empty is not kept */
  /* Where the money goes back: the card. No connector reports an acquirer
   * reference number (ARN) for a refund, so there is none to show. */
  json_object_set_new(re, "destination_details",
                      tp_pack("{s:{s:s, s:s, s:s}, s:s}", "card", "reference_status", "unavailable",
                              "reference_type", "acquirer_reference_number", "type", "refund", "type", "card"));
  return re;
}

int64_t tp_charge_released(const json_t *ch)
{
  return json_integer_value(json_object_get(json_object_get(ch, "turnpike"), "released"));
}

/* ---- cards ----------------------------------------------------------------- */
/* The pad a merchant's stored fingerprint key is masked with: from vault.key,
 * which stays out of the store and its backups (0024_fingerprint_key_masked.sql). */
static void fp_pad(const char *merchant, uint8_t pad[32])
{
  /* The last merchant's, per thread: an HMAC per payment otherwise (a
   * PaymentMethod made per payment computes its fingerprint). vault.key does
   * not change while the process runs. */
  static _Thread_local char last[64];
  static _Thread_local uint8_t last_pad[32];
  if (last[0] && strcmp(last, merchant) == 0) {
    memcpy(pad, last_pad, 32);
    return;
  }
  char msg[96];
  int n = snprintf(msg, sizeof msg, "turnpike fingerprint key v1:%s", merchant);
  tp_hmac_sha256(tp_app.vault_key, sizeof tp_app.vault_key, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1,
                 pad);
  if (tp_scopy(last, sizeof last, merchant) < (int)sizeof last)
    memcpy(last_pad, pad, 32);
  else
    last[0] = '\0';
}

int tp_vault_key_check(struct tp_store *st)
{
  char want[65];
  tp_vault_key_check_value(tp_app.vault_key, want);
  json_t *rows = tp_store_query(st, "SELECT value FROM meta WHERE key = 'vault_key_check'", NULL);
  if (!rows)
    return -1;
  const char *have = json_string_value(json_object_get(json_array_get(rows, 0), "value"));
  int rc = 0;
  if (have && strcmp(have, want) != 0) {
    tp_log(TP_LOG_ERROR, "vault_key_mismatch", "{s:s}", "message",
           "the data directory's vault.key is not the one this store was used with: put back the vault.key "
           "that came with it (saved cards, webhook secrets, idempotency records and card fingerprints need it)");
    rc = -1;
  } else if (!have) {
    struct tp_cs *cs = tp_cs_new();
    json_t *args = tp_pack("[s]", want);
    tp_cs_sql(cs, "INSERT INTO meta(key, value) VALUES('vault_key_check', ?1) ON CONFLICT DO NOTHING", args, 0);
    json_decref(args);
    int set_rc = 0;
    if (st->ops->apply_batch(st->cls, &cs, 1, &set_rc) != 0 || set_rc != 0)
      rc = -1;
    tp_cs_free(cs);
  }
  json_decref(rows);
  return rc;
}

int tp_fp_keys_mask(struct tp_store *st)
{
  json_t *rows = tp_store_query(st, "SELECT id, hex(fp_key) AS fp FROM merchants WHERE fp_key_masked=0", NULL);
  if (!rows)
    return -1;
  size_t n = json_array_size(rows), i;
  json_t *row;
  struct tp_cs *cs = n ? tp_cs_new() : NULL;
  json_array_foreach(rows, i, row)
  {
    const char *id = json_string_value(json_object_get(row, "id"));
    const char *fp = json_string_value(json_object_get(row, "fp"));
    if (!id || !fp || strlen(fp) != 64)
      continue;
    uint8_t pad[32];
    fp_pad(id, pad);
    char lit[65], sql[200];
    for (int k = 0; k < 32; k++) {
      unsigned v = (unsigned)strtoul((char[]){fp[2 * k], fp[2 * k + 1], 0}, NULL, 16);
      snprintf(lit + 2 * k, 3, "%02X", (v ^ pad[k]) & 0xff);
    }
    snprintf(sql, sizeof sql, "UPDATE merchants SET fp_key=X'%s', fp_key_masked=1 WHERE id=?1 AND fp_key_masked=0",
             lit);
    json_t *args = tp_pack("[s]", id);
    tp_cs_sql(cs, sql, args, 1);
    json_decref(args);
  }
  json_decref(rows);
  if (!cs)
    return 0;
  int rc = 0;
  int r = st->ops->apply_batch(st->cls, &cs, 1, &rc);
  tp_cs_free(cs);
  if (r != 0 || rc != 0)
    return -1;
  tp_log(TP_LOG_INFO, "fingerprint_keys_masked", "{s:I}", "merchants", (json_int_t)n);
  return 0;
}

void tp_card_fingerprint(const struct tp_merchant *m, const char *pan, char out[17])
{
  char hex[65];
  uint8_t key[32];
  fp_pad(m->id, key);
  for (int i = 0; i < 32; i++)
    key[i] ^= m->fp_key[i];
  tp_hmac_sha256_hex(key, sizeof key, pan, strlen(pan), hex);
  tp_card_wipe(key, sizeof key);
  static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  for (int i = 0; i < 16; i++) {
    unsigned v = (unsigned)strtoul((char[]){hex[2 * i], hex[2 * i + 1], 0}, NULL, 16);
    out[i] = b62[v % 62];
  }
  out[16] = '\0';
}

const char *const tp_allow_redisplay[] = {"always", "limited", "unspecified", NULL};

const char *const tp_why_connect[] = {"Turnpike has no Stripe Connect: no connected accounts, application fees or "
                                      "transfers", NULL};
const char *const tp_why_customer_account[] = {"Turnpike has no Accounts v2; name a customer", NULL};
const char *const tp_why_mandates[] = {"Turnpike takes card payments without mandates", NULL};
const char *const tp_why_hooks[] = {"Turnpike has no Stripe Tax hooks", NULL};
const char *const tp_why_pm_configuration[] = {"Turnpike has no payment method configurations: cards only", NULL};
const char *const tp_why_confirmation_token[] = {"Turnpike has no ConfirmationTokens; pass payment_method or "
                                                 "payment_method_data", NULL};
const char *const tp_why_amount_details[] = {"Turnpike sends no Level 2/3 data or tips to processors", NULL};
const char *const tp_why_tax[] = {"Turnpike has no Stripe Tax or tax ids", NULL};
const char *const tp_why_test_clock[] = {"Turnpike has no test clocks", NULL};
const char *const tp_why_customer_balance[] = {"Turnpike has no customer balances", NULL};
const char *const tp_why_pm_type[] = {"Turnpike takes cards only", NULL};
const char *const tp_why_networks[] = {"each card is sent on its own brand's network: no co-badged choice", NULL};
const char *const tp_why_invoices[] = {"Turnpike has no invoices", NULL};
const char *const tp_card_networks[] = {"amex",       "cartes_bancaires", "diners",   "discover", "eftpos_au",
                                       "girocard",   "interac",          "jcb",      "link",     "mastercard",
                                       "unionpay",   "unknown",          "visa",     NULL};
const char *const tp_why_card_option[] = {"Turnpike's connectors offer no installments, MOTO flag, CVC tokens or "
                                          "credential-usage indicators", NULL};
const char *const tp_why_external_3ds[] = {"Turnpike runs its own 3-D Secure and takes no results from another "
                                           "3-D Secure server", NULL};
const struct tp_pspec tp_spec_radar_options[] = {
  {"session", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

/* Spend card token tok on PaymentMethod pm_id within cs: the token shows
 * used, its vault record is deleted, and its row in token_redemptions makes
 * a second change set spending it fail (the check before, in token_card,
 * only sees what has committed). Returns the billing details the token's
 * card carries (name, address), for a PaymentMethod given none. */
static json_t *token_spend(struct tp_cs *cs, const struct tp_merchant *m, const char *tok, const char *pm_id)
{
  json_t *t = tp_store_get_json(&tp_app.store, TP_K_TOKEN, m->id, tok);
  json_t *bd = NULL;
  if (t) {
    json_object_set_new(t, "used", json_true());
    tp_cs_put(cs, TP_K_TOKEN, m->id, t);
    const json_t *c = json_object_get(t, "card");
    bd = tp_pack("{s:{s:O?, s:O?, s:O?, s:O?, s:O?, s:O?}, s:O?}", "address", "city", json_object_get(c, "address_city"),
                 "country", json_object_get(c, "address_country"), "line1", json_object_get(c, "address_line1"),
                 "line2", json_object_get(c, "address_line2"), "postal_code", json_object_get(c, "address_zip"),
                 "state", json_object_get(c, "address_state"), "name", json_object_get(c, "name"));
    json_decref(t);
  }
  json_t *args = tp_pack("[s, s, s, I]", m->id, tok, pm_id, (json_int_t)tp_now());
  /* ON CONFLICT DO NOTHING, then min_changes: a token spent meanwhile
   * fails the set as a conflict (TP_STORE_ERR_CONFLICT, answered
   * token_already_used), not as a store error (503). */
  tp_cs_sql(cs,
            "INSERT INTO token_redemptions(merchant, token, payment_method, created) VALUES(?1,?2,?3,?4) "
            "ON CONFLICT DO NOTHING",
            args, 1);
  json_decref(args);
  json_t *del = tp_pack("[s, s]", tok, m->id);
  tp_cs_sql(cs, "DELETE FROM vault WHERE token=?1 AND merchant=?2", del, 0);
  json_decref(del);
  return bd;
}

/* A card PaymentMethod (id prefix "pm", or "card" for a customer's card
 * source, shown with turnpike.source "card"), attached to customer (NULL:
 * nobody), put in cs. */
static json_t *pm_create(struct tp_cs *cs, const struct tp_merchant *m, const struct tp_card_info *ci,
                         const json_t *billing_details, const json_t *metadata, const char *allow_redisplay,
                         const char *prefix, const char *customer, const char *made_for)
{
  char id[TP_ID_MAX], fp[17];
  /* A Card (not a PaymentMethod) made of a token is the token's card. */
  if (strcmp(prefix, "card") == 0 && strncmp(ci->card_id, "card_", 5) == 0)
    tp_scopy(id, sizeof id, ci->card_id);
  else
    tp_id_new(id, prefix);
  tp_card_fingerprint(m, ci->pan, fp);
  uint8_t blob[TP_VAULT_MAX_BLOB];
  size_t bl = 0;
  if (tp_vault_seal_rec(m->id, id, ci->pan, ci->exp_month, ci->exp_year, blob, &bl) != 0)
    return NULL;
  tp_cs_vault(cs, id, m->id, blob, bl);
  json_t *token_bd = ci->token[0] ? token_spend(cs, m, ci->token, id) : NULL;
  if (!billing_details)
    billing_details = token_bd;
  const char *brand = tp_brand_name(ci->brand);
  json_t *bd = tp_pack("{s:{s:n, s:n, s:n, s:n, s:n, s:n}, s:n, s:n, s:n, s:n}", "address", "city", "country",
                       "line1", "line2", "postal_code", "state", "email", "name", "phone", "tax_id");
  if (json_is_object(billing_details)) {
    const char *k;
    json_t *v;
    void *it;
    json_t *bdm = json_deep_copy(billing_details);
    /* "" unsets (Stripe's emptyable fields): null, as an update and a
     * customer's creation take it (it was stored as "", and an address
     * given as "" became the string "") */
    json_object_foreach_safe(bdm, it, k, v)
    {
      if (strcmp(k, "address") == 0) {
        const char *ak;
        json_t *av;
        json_t *addr = json_object_get(bd, "address");
        if (json_is_object(v))
          json_object_foreach(v, ak, av)
          {
            if (json_is_string(av) && json_object_get(addr, ak))
              json_object_set_new(addr, ak, json_string_length(av) ? json_incref(av) : json_null());
          }
      } else if (json_is_string(v))
        json_object_set_new(bd, k, json_string_length(v) ? json_incref(v) : json_null());
    }
    json_decref(bdm);
  }
  /* metadata as an update takes it: a key set to "" is none */
  json_t *md = json_object();
  if (json_is_object(metadata)) {
    const char *mk;
    json_t *mv;
    json_object_foreach((json_t *)(uintptr_t)metadata, mk, mv)
    {
      if (!json_is_string(mv) || json_string_length(mv))
        json_object_set(md, mk, mv);
    }
  }
  json_t *card = tp_pack("{s:s, s:{s:n, s:n, s:s?}, s:s, s:s, s:i, s:i, s:s, s:s, s:n, s:s, s:{s:[s], s:n}, "
                         "s:n, s:{s:b}, s:n}",
                         "brand", brand, "checks", "address_line1_check", "address_postal_code_check",
                         "cvc_check", ci->cvc ? "unchecked" : NULL, "country", ci->country, "display_brand", brand,
                         "exp_month", ci->exp_month, "exp_year", ci->exp_year, "fingerprint", fp, "funding",
                         ci->funding, "generated_from", "last4", ci->last4, "networks", "available", brand,
                         "preferred", "regulated_status", "three_d_secure_usage", "supported", 1, "wallet");
  json_t *pm = tp_pack("{s:s, s:s, s:s, s:o, s:o, s:I, s:n, s:n, s:b, s:o, s:s}", "id", id, "object",
                       "payment_method", "allow_redisplay",
                       allow_redisplay && *allow_redisplay ? allow_redisplay : "unspecified", "billing_details", bd,
                       "card", card, "created", (json_int_t)tp_now(), "customer", "customer_account",
                       "livemode", 0, "metadata", md, "type", "card");
  if (!pm)
    abort();
  json_decref(token_bd);
  tp_pm_address_checks(pm);
  if (customer) {
    json_object_set_new(pm, "customer", json_string(customer));
    tp_mark(pm, "source", json_string("card"));
  } else if (made_for && *made_for) {
    tp_mark(pm, "made_for", json_string(made_for));
  }
  tp_cs_put(cs, TP_K_PAYMENT_METHOD, m->id, pm);
  return pm;
}

json_t *tp_pm_create_card(struct tp_cs *cs, const struct tp_merchant *m, const struct tp_card_info *ci,
                          const json_t *billing_details, const json_t *metadata, const char *allow_redisplay,
                          const char *made_for)
{
  return pm_create(cs, m, ci, billing_details, metadata, allow_redisplay, "pm", NULL, made_for);
}

/* Stripe's test PaymentMethods (pm_card_NAME) and card tokens (tok_NAME):
 * one name table for both, each name standing for its test card number.
 * Using one creates a fresh card PaymentMethod, as Stripe does. */
static const struct {
  const char *name;
  const char *pan;
} test_cards[] = {
  {"visa", "4242424242424242"},
  {"visa_debit", "4000056655665556"},
  {"mastercard", "5555555555554444"},
  {"mastercard_debit", "5200828282828210"},
  {"mastercard_prepaid", "5105105105105100"},
  {"amex", "371449635398431"},
  {"discover", "6011111111111117"},
  {"diners", "3056930009020004"},
  {"jcb", "3566002020360505"},
  {"unionpay", "6200000000000005"},
  /* by country (card.country from the BIN table in core/card.c) */
  {"us", "4242424242424242"},
  {"at", "4000000400000008"},
  {"be", "4000000560000004"},
  {"dk", "4000002080000001"},
  {"fi", "4000002460000001"},
  {"fr", "4000002500000003"},
  {"de", "4000002760000016"},
  {"ie", "4000003720000005"},
  {"it", "4000003800000008"},
  {"nl", "4000005280000002"},
  {"no", "4000005780000007"},
  {"es", "4000007240000007"},
  {"se", "4000007520000008"},
  {"ch", "4000007560000009"},
  {"gb", "4000008260000000"},
  {"gb_debit", "4000058260000005"},
  {"au", "4000000360000006"},
  {"ca", "4000001240000000"},
  {"mx", "4000004840008001"},
  {"br", "4000000760000002"},
  {"jp", "4000003920000003"},
  {"sg", "4000007020000003"},
  {"in", "4000003560000008"},
  {"ar", "4000000320000021"},
  {"cl", "4000001520000001"},
  {"co", "4000001700000003"},
  {"cr", "4000001880000005"},
  {"ec", "4000002180000000"},
  {"pa", "4000005910000000"},
  {"py", "4000006000000066"},
  {"pe", "4000006040000068"},
  {"uy", "4000008580000003"},
  {"ae", "4000007840000001"},
  {"ae_mastercard", "5200007840000022"},
  {"bg", "4000001000000000"},
  {"by", "4000001120000005"},
  {"hr", "4000001910000009"},
  {"cy", "4000001960000008"},
  {"cz", "4000002030000002"},
  {"ee", "4000002330000009"},
  {"gi", "4000002920000005"},
  {"gr", "4000003000000030"},
  {"hu", "4000003480000005"},
  {"lv", "4000004280000005"},
  {"li", "4000004380000004"},
  {"lt", "4000004400000000"},
  {"lu", "4000004420000006"},
  {"mt", "4000004700000007"},
  {"pl", "4000006160000005"},
  {"pt", "4000006200000007"},
  {"ro", "4000006420000001"},
  {"sa", "4000006820000007"},
  {"si", "4000007050000006"},
  {"sk", "4000007030000001"},
  {"gb_mastercard", "5555558265554449"},
  {"cn", "4000001560000002"},
  {"hk", "4000003440000004"},
  {"my", "4000004580000002"},
  {"nz", "4000005540000008"},
  {"tw", "4000001580000008"},
  {"th_credit", "4000007640000003"},
  {"th_debit", "4000057640000008"},
  /* declines (connectors/sandbox.c) */
  {"chargeDeclined", "4000000000000002"},
  {"visa_chargeDeclined", "4000000000000002"},
  {"chargeDeclinedInsufficientFunds", "4000000000009995"},
  {"visa_chargeDeclinedInsufficientFunds", "4000000000009995"},
  {"chargeDeclinedLostCard", "4000000000009987"},
  {"visa_chargeDeclinedLostCard", "4000000000009987"},
  {"chargeDeclinedStolenCard", "4000000000009979"},
  {"visa_chargeDeclinedStolenCard", "4000000000009979"},
  {"chargeDeclinedExpiredCard", "4000000000000069"},
  {"chargeDeclinedIncorrectCvc", "4000000000000127"},
  {"chargeDeclinedProcessingError", "4000000000000119"},
  {"visa_chargeDeclinedVelocityLimitExceeded", "4000000000006975"},
  {"chargeDeclinedFraudulent", "4100000000000019"},
  {"radarBlock", "4100000000000019"},
  {"riskLevelHighest", "4000000000004954"},
  {"riskLevelElevated", "4000000000009235"},
  {"chargeCustomerFail", "4000000000000341"},
  /* disputes, opened once the charge is captured (api/disputes.c) */
  {"createDispute", "4000000000000259"},
  {"createDisputeProductNotReceived", "4000000000002685"},
  {"createDisputeInquiry", "4000000000001976"},
  {"createIssuerFraudRecord", "4000000000005423"}, /* an early fraud warning */
  {"refundFail", "4000000000005126"},
  {"bypassPending", "4000000000000077"}, /* funds available at once */
  /* the issuer's checks */
  {"cvcCheckFail", "4000000000000101"},
  {"avsFail", "4000000000000010"},
  {"avsLine1Fail", "4000000000000028"},
  {"avsZipFail", "4000000000000036"},
  {"avsUnchecked", "4000000000000044"},
  /* 3-D Secure (connectors/sandbox.c says when each asks) */
  {"threeDSecure2Required", "4000000000003220"},
  {"threeDSecureRequired", "4000000000003063"},
  {"threeDSecureRequiredChargeDeclined", "4000008400001629"},
  {"authenticationRequired", "4000002760003184"},
  {"authenticationRequiredOnSetup", "4000002500003155"},
  {"authenticationRequiredSetupForOffSession", "4000003800000446"},
  {"authenticationRequiredChargeDeclinedInsufficientFunds", "4000008260003178"},
  {"threeDSecureOptional", "4000000000003055"},
  /* the lookup fails: declined card_declined; or, only asked for, a processing error */
  {"threeDSecureRequiredProcessingError", "4000008400001280"},
  {"threeDSecureOptionalProcessingError", "4000000000003097"},
  {"amex_threeDSecureNotSupported", "378282246310005"},
};

/* The test card number behind a pm_card_NAME (tokens false) or tok_NAME
 * (tokens true) id, or NULL. */
static const char *test_pan(const char *id, bool tokens)
{
  const char *prefix = tokens ? "tok_" : "pm_card_";
  size_t pl = strlen(prefix);
  if (!id || strncmp(id, prefix, pl) != 0)
    return NULL;
  for (size_t i = 0; i < sizeof test_cards / sizeof test_cards[0]; i++)
    if (strcmp(id + pl, test_cards[i].name) == 0)
      return test_cards[i].pan;
  return NULL;
}

/* A test card as a validated card that expires in three years. */
static bool test_card_info(const char *pan, struct tp_card_info *ci)
{
  struct tp_card_input in = {pan, 12, (int)(1970 + tp_now() / 31556952) + 3, NULL};
  const char *bad;
  if (tp_card_validate(&in, (time_t)tp_now(), ci, &bad) != TP_CARD_OK)
    return false;
  ci->cvc = true; /* Stripe's test cards and tokens carry a CVC */
  return true;
}

/* A card token made by POST /v1/tokens (api/tokens.c), not yet used: its
 * card from the vault, with ci->token set so that the PaymentMethod made
 * from it spends the token (tp_pm_create_card). False after replying 404
 * (param names the parameter) or 400 token_already_used. */
static bool token_card(struct tp_req *r, const char *tok, const char *param, struct tp_card_info *ci)
{
  char msg[160];
  json_t *t = strncmp(tok, "tok_", 4) == 0 ? tp_store_get_json(&tp_app.store, TP_K_TOKEN, r->merchant.id, tok) : NULL;
  if (!t) {
    snprintf(msg, sizeof msg, "No such token: '%.64s'", tok);
    tp_reply_error(r, TP_ERR_RESOURCE_MISSING, param, msg);
    return false;
  }
  bool used = json_is_true(json_object_get(t, "used"));
  bool cvc = json_is_string(json_object_get(json_object_get(t, "card"), "cvc_check"));
  char card_id[sizeof ci->card_id];
  tp_scopy(card_id, sizeof card_id, json_string_value(json_object_get(json_object_get(t, "card"), "id")) ?: "");
  json_decref(t);
  if (!used && tp_vault_load(r->merchant.id, tok, ci) != 0) {
    /* Its card gone: spent since it was read, by a request that raced
     * this one (the vault record goes in the commit that spends it), or
     * deleted unused past [tokens] ttl_seconds (tp_token_purge). */
    t = tp_store_get_json(&tp_app.store, TP_K_TOKEN, r->merchant.id, tok);
    used = json_is_true(json_object_get(t, "used"));
    json_decref(t);
    if (!used) {
      tp_card_wipe(ci, sizeof *ci);
      snprintf(msg, sizeof msg, "This token has expired: %.64s. Create a new one.", tok);
      tp_reply_error(r, TP_ERR_TOKEN_EXPIRED, param, msg);
      return false;
    }
  }
  if (used) {
    tp_card_wipe(ci, sizeof *ci);
    snprintf(msg, sizeof msg, "You cannot use a Stripe token more than once: %.64s.", tok);
    tp_reply_error(r, TP_ERR_TOKEN_ALREADY_USED, param, msg);
    return false;
  }
  tp_scopy(ci->token, sizeof ci->token, tok);
  tp_scopy(ci->card_id, sizeof ci->card_id, card_id);
  ci->cvc = cvc;
  /* Spent by a request that commits first, this one's commit fails as a
   * conflict (token_spend): it is then this error, not 503. */
  r->conflict_err = TP_ERR_TOKEN_ALREADY_USED;
  snprintf(r->conflict_msg, sizeof r->conflict_msg, "You cannot use a Stripe token more than once: %.64s.", tok);
  tp_scopy(r->conflict_param, sizeof r->conflict_param, param);
  return true;
}

bool tp_card_from_params(struct tp_req *r, const json_t *card, const char *param_prefix, struct tp_card_info *ci,
                         char *cvc_out)
{
  char param[160];
  cvc_out[0] = '\0';
  const char *tok = json_string_value(json_object_get(card, "token"));
  if (tok) {
    /* A test card token (tok_visa ...) stands for the whole card. */
    snprintf(param, sizeof param, "%s[token]", param_prefix);
    static const char *const others[] = {"number", "exp_month", "exp_year", "cvc", "encrypted"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
      if (json_object_get(card, others[i])) {
        tp_reply_error(r, TP_ERR_PARAMETERS_EXCLUSIVE, param, NULL);
        return false;
      }
    }
    const char *pan = test_pan(tok, true);
    if (pan && test_card_info(pan, ci))
      return true;
    return token_card(r, tok, param, ci);
  }
  const char *jwe = json_string_value(json_object_get(card, "encrypted"));
  if (jwe) { /* client-side encrypted card: decrypted only on this path */
    /* The encrypted fields are the card: clear ones beside them would be
     * dropped unseen (another card number sent with it was ignored). */
    static const char *const clear[] = {"number", "exp_month", "exp_year", "cvc"};
    for (size_t i = 0; i < sizeof clear / sizeof clear[0]; i++)
      if (json_object_get(card, clear[i])) {
        snprintf(param, sizeof param, "%s[encrypted]", param_prefix);
        tp_reply_error(r, TP_ERR_PARAMETERS_EXCLUSIVE, param, NULL);
        return false;
      }
    return tp_card_from_jwe(r, jwe, param_prefix, ci, cvc_out);
  }
  const char *number = json_string_value(json_object_get(card, "number"));
  json_t *jm = json_object_get(card, "exp_month"), *jy = json_object_get(card, "exp_year");
  if (!number || !*number) {
    snprintf(param, sizeof param, "%s[number]", param_prefix);
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, param, NULL);
    return false;
  }
  if (!json_is_integer(jm)) {
    snprintf(param, sizeof param, "%s[exp_month]", param_prefix);
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, param, NULL);
    return false;
  }
  if (!json_is_integer(jy)) {
    snprintf(param, sizeof param, "%s[exp_year]", param_prefix);
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, param, NULL);
    return false;
  }
  const char *cvc = json_string_value(json_object_get(card, "cvc"));
  json_int_t m = json_integer_value(jm), y = json_integer_value(jy);
  struct tp_card_input in = {number, (m < -1000 || m > 1000) ? 0 : (int)m, (y < 0 || y > 100000) ? 99999 : (int)y,
                             (cvc && *cvc) ? cvc : NULL};
  const char *bad = NULL;
  enum tp_card_check cc = tp_card_validate(&in, (time_t)tp_now(), ci, &bad);
  if (cc != TP_CARD_OK) {
    static const enum tp_err map[] = {
      [TP_CARD_INCORRECT_NUMBER] = TP_ERR_CARD_INCORRECT_NUMBER,
      [TP_CARD_INVALID_NUMBER] = TP_ERR_CARD_INVALID_NUMBER,
      [TP_CARD_INVALID_EXPIRY_MONTH] = TP_ERR_CARD_INVALID_EXPIRY_MONTH,
      [TP_CARD_INVALID_EXPIRY_YEAR] = TP_ERR_CARD_INVALID_EXPIRY_YEAR,
      [TP_CARD_EXPIRED] = TP_ERR_CARD_EXPIRED,
      [TP_CARD_INVALID_CVC] = TP_ERR_CARD_INVALID_CVC,
    };
    snprintf(param, sizeof param, "%s[%s]", param_prefix, bad ? bad : "number");
    tp_card_wipe(ci, sizeof *ci);
    enum tp_err e = map[cc];
    if (cc == TP_CARD_EXPIRED) /* entered in the past: the field that is wrong */
      e = bad && strcmp(bad, "exp_year") == 0 ? TP_ERR_CARD_INVALID_EXPIRY_YEAR : TP_ERR_CARD_INVALID_EXPIRY_MONTH;
    tp_reply_error(r, e, param, NULL);
    return false;
  }
  if (cvc && *cvc) {
    snprintf(cvc_out, 5, "%s", cvc);
    ci->cvc = true;
  }
  return true;
}

int tp_vault_load(const char *merchant, const char *pm_id, struct tp_card_info *ci)
{
  void *blob = NULL;
  size_t len = 0;
  int got = tp_app.store.ops->vault_get(tp_app.store.cls, merchant, pm_id, &blob, &len);
  if (got != 1) {
    /* The operator's to look at: a card that cannot be read is a 500. */
    tp_log(TP_LOG_ERROR, "vault_record_unreadable", "{s:s, s:s, s:s}", "merchant", merchant, "payment_method",
           pm_id, "reason", got == 0 ? "no vault record" : "store read failed");
    return -1;
  }
  char pan[TP_VAULT_MAX_BLOB];
  int mm = 0, yy = 0;
  int rc = tp_vault_open_rec(merchant, pm_id, blob, len, pan, &mm, &yy);
  free(blob);
  if (rc != 0) {
    tp_log(TP_LOG_ERROR, "vault_record_unreadable", "{s:s, s:s, s:s}", "merchant", merchant, "payment_method",
           pm_id, "reason", "does not decrypt (tampered, moved, or its key-encryption key is not this one)");
    return -1;
  }
  struct tp_card_input in = {pan, mm, yy, NULL};
  const char *bad;
  /* A card that expired since it was saved still loads: the processor
   * decides about expiry then. */
  enum tp_card_check cc = tp_card_validate(&in, (time_t)tp_now(), ci, &bad);
  tp_card_wipe(pan, sizeof pan);
  return cc == TP_CARD_OK || cc == TP_CARD_EXPIRED ? 0 : -1;
}

/* A card token of POST /v1/tokens (tok_..., not a test token's name). */
static bool stored_token(const char *id)
{
  return id && strncmp(id, "tok_", 4) == 0 && !test_pan(id, true);
}

/* The test card behind pm_card_NAME or tok_NAME, or NULL. */
static const char *test_id_pan(const char *id)
{
  const char *pan = test_pan(id, false);
  return pan ? pan : test_pan(id, true);
}

bool tp_pm_test_id(const char *id)
{
  return test_pan(id, false) != NULL;
}

bool tp_pm_materialize(struct tp_req *r, struct tp_cs *cs, json_t *pi)
{
  const char *pm_id = json_string_value(json_object_get(pi, "payment_method"));
  if (!test_id_pan(pm_id) && !stored_token(pm_id))
    return true;
  struct tp_card_info ci;
  json_t *pm = tp_pm_resolve(r, cs, pm_id, &ci);
  tp_card_wipe(&ci, sizeof ci);
  if (!pm)
    return false;
  json_object_set(pi, "payment_method", json_object_get(pm, "id"));
  json_decref(pm);
  return true;
}

void tp_reply_missing(struct tp_req *r, const char *what, const char *id, const char *param)
{
  if (tp_store_read_failed) { /* not found, or not read? */
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return;
  }
  char msg[160];
  snprintf(msg, sizeof msg, "No such %s: '%.64s'", what, id ? id : "");
  tp_reply_error(r, TP_ERR_RESOURCE_MISSING, param, msg);
}

void tp_reply_no_such(struct tp_req *r, const char *what, const char *param)
{
  tp_reply_missing(r, what, r->path_id, param);
}

bool tp_live_or_missing(struct tp_req *r, enum tp_kind kind, const char *id, const char *what, const char *param)
{
  int live = tp_store_live(&tp_app.store, kind, r->merchant.id, id);
  if (live < 0) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return false;
  }
  if (live)
    return true;
  tp_reply_missing(r, what, id, param);
  return false;
}

bool tp_pm_exists(struct tp_req *r, const char *pm_id, const char *param)
{
  if (stored_token(pm_id)) { /* usable once: checked, then wiped */
    struct tp_card_info ci;
    bool ok = token_card(r, pm_id, param, &ci);
    tp_card_wipe(&ci, sizeof ci);
    return ok;
  }
  return test_id_pan(pm_id) ||
         tp_live_or_missing(r, TP_K_PAYMENT_METHOD, pm_id, strcmp(param, "source") == 0 ? "source" : "PaymentMethod",
                            param);
}

json_t *tp_pm_resolve(struct tp_req *r, struct tp_cs *cs, const char *pm_id, struct tp_card_info *ci)
{
  const char *pan = test_id_pan(pm_id);
  /* A token (a charge's source=tok_...) is spent into a Card, card_..., as
   * on Stripe; a test PaymentMethod id into a PaymentMethod. */
  const char *prefix = strncmp(pm_id, "tok_", 4) == 0 ? "card" : "pm";
  if (stored_token(pm_id)) {
    /* an error names the parameter the token came in (payment_method on a
     * PaymentIntent or SetupIntent, source on a charge or customer) */
    const char *pmp = tp_pstr(r->params, "payment_method");
    if (!token_card(r, pm_id, pmp && strcmp(pmp, pm_id) == 0 ? "payment_method" : "source", ci))
      return NULL;
    json_t *pm = pm_create(cs, &r->merchant, ci, NULL, NULL, NULL, prefix, NULL, r->pm_made_for);
    if (!pm)
      tp_reply_error(r, TP_ERR_VAULT_UNAVAILABLE, NULL, NULL);
    return pm;
  }
  if (pan && test_card_info(pan, ci)) {
    /* Stripe's address-check test PaymentMethods (avsFail ...) carry an
     * address, so that their checks say what the name promises. */
    const char *l1 = NULL, *zip = NULL;
    tp_test_card_avs(pan, &l1, &zip);
    json_t *bd = strcmp(l1, "pass") != 0 || strcmp(zip, "pass") != 0
                     ? tp_pack("{s:{s:s, s:s}}", "address", "line1", "510 Townsend St", "postal_code", "94103")
                     : NULL;
    json_t *pm = pm_create(cs, &r->merchant, ci, bd, NULL, NULL, prefix, NULL, r->pm_made_for);
    json_decref(bd);
    if (!pm)
      tp_reply_error(r, TP_ERR_VAULT_UNAVAILABLE, NULL, NULL);
    return pm;
  }
  json_t *pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, pm_id);
  if (!pm) {
    tp_reply_missing(r, "PaymentMethod", pm_id, "payment_method");
    return NULL;
  }
  if (!tp_pm_usable(r, pm)) {
    json_decref(pm);
    return NULL;
  }
  if (tp_vault_load(r->merchant.id, pm_id, ci) != 0) {
    json_decref(pm);
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return NULL;
  }
  ci->cvc = tp_pm_has_cvc(pm);
  tp_card_exp_of(ci, pm);
  return pm;
}

/* The decline a card attached to a customer gets from its issuer's check
 * (tp_card_source_create's rule, for PaymentMethods): replied, false. */
static bool attach_check_reply(struct tp_req *r, const char *decline)
{
  const struct tp_error_info *ei = tp_error_by_decline_code(decline);
  if (!ei)
    ei = tp_error_by_decline_code("generic_decline");
  tp_reply_error(r, (enum tp_err)ei->number, tp_decline_param(ei->code), NULL);
  return false;
}

bool tp_pm_attach_check(struct tp_req *r, const json_t *pm, const struct tp_card_info *made)
{
  const char *id = json_string_value(json_object_get(pm, "id"));
  const json_t *card = json_object_get(pm, "card");
  if (!id || !card)
    return true; /* not a card */
  struct tp_card_info ci;
  memset(&ci, 0, sizeof ci);
  if (made)
    tp_scopy(ci.pan, sizeof ci.pan, made->pan);
  else if (tp_vault_load(r->merchant.id, id, &ci) != 0) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return false;
  }
  const char *decline = tp_test_card_check_decline(ci.pan, tp_pm_has_cvc(pm));
  tp_card_wipe(&ci, sizeof ci);
  if (!*decline && tp_card_lapsed((int)json_integer_value(json_object_get(card, "exp_month")),
                                  (int)json_integer_value(json_object_get(card, "exp_year")), time(NULL)))
    decline = "expired_card";
  return *decline ? attach_check_reply(r, decline) : true;
}

void tp_card_exp_of(struct tp_card_info *ci, const json_t *pm)
{
  /* The vault keeps the card as it was saved; an update of a reissued
   * card's expiry (POST /v1/payment_methods/{id}, a card source's update)
   * changes the PaymentMethod only, and the processor gets that. */
  const json_t *card = json_object_get(pm, "card");
  json_int_t m = json_integer_value(json_object_get(card, "exp_month"));
  json_int_t y = json_integer_value(json_object_get(card, "exp_year"));
  if (m >= 1 && m <= 12 && y >= 1000 && y <= 9999) {
    ci->exp_month = (int)m;
    ci->exp_year = (int)y;
  }
}

void tp_pm_address_checks(json_t *pm)
{
  static const char *const parts[][2] = {{"line1", "address_line1_check"},
                                         {"postal_code", "address_postal_code_check"}};
  const json_t *addr = json_object_get(json_object_get(pm, "billing_details"), "address");
  json_t *checks = json_object_get(json_object_get(pm, "card"), "checks");
  if (!json_is_object(checks))
    return;
  for (size_t i = 0; i < 2; i++) {
    if (!json_string_length(json_object_get(addr, parts[i][0])))
      json_object_set_new(checks, parts[i][1], json_null());
    else if (!json_is_string(json_object_get(checks, parts[i][1])))
      json_object_set_new(checks, parts[i][1], json_string("unchecked"));
  }
}

bool tp_pm_has_cvc(const json_t *pm)
{
  return json_is_string(json_object_get(json_object_get(json_object_get(pm, "card"), "checks"), "cvc_check"));
}

json_t *tp_card_source_create(struct tp_req *r, struct tp_cs *cs, const char *source, const char *param,
                              const char *customer, const json_t *metadata)
{
  struct tp_card_info ci;
  memset(&ci, 0, sizeof ci);
  const char *pan = test_pan(source, true);
  bool ok;
  if (pan)
    ok = test_card_info(pan, &ci);
  else if (source && strncmp(source, "tok_", 4) == 0)
    ok = token_card(r, source, param, &ci);
  else {
    tp_reply_missing(r, "token", source ? source : "", param);
    ok = false;
  }
  /* Stripe checks a card attached to a Customer as a source with its
   * issuer: the decline test cards fail there, all but 4000000000000341
   * ("attaching this card to a Customer object succeeds, but attempts to
   * charge the customer fail"). Nothing is made (a token is not spent). */
  const char *decline = ok ? tp_test_card_check_decline(ci.pan, ci.cvc) : "";
  if (*decline)
    ok = attach_check_reply(r, decline);
  json_t *pm = ok ? pm_create(cs, &r->merchant, &ci, NULL, metadata, NULL, "card", customer, NULL) : NULL;
  if (ok && !pm)
    tp_reply_error(r, TP_ERR_VAULT_UNAVAILABLE, NULL, NULL);
  tp_card_wipe(&ci, sizeof ci);
  return pm;
}

void tp_card_sources_query(struct tp_list_query *q, const char *merchant, const char *customer)
{
  tp_list_query_init(q, TP_K_PAYMENT_METHOD, merchant);
  q->col_name = "customer";
  q->col_value = customer;
  q->field = "$.turnpike.source";
  q->field_value = "card";
  q->field_default = "";
}

void tp_pm_detach(struct tp_cs *cs, const struct tp_req *r, json_t *pm)
{
  /* Detached for good: Stripe's detached PaymentMethod pays no more and
   * is not attached again (tp_pm_usable). */
  /* previous_attributes names the customer it left (Stripe's; a handler
   * has no other way to know whose card went). */
  json_t *prev = tp_pack("{s:O}", "customer", json_object_get(pm, "customer"));
  json_object_set_new(pm, "customer", json_null());
  tp_mark(pm, "detached", json_true());
  tp_cs_put(cs, TP_K_PAYMENT_METHOD, r->merchant.id, pm);
  tp_emit_prev(cs, r, r->merchant.id, "payment_method.detached", pm, prev);
  json_decref(prev);
}

void tp_mark(json_t *obj, const char *key, json_t *value)
{
  json_t *t = json_object_get(obj, "turnpike");
  if (!json_is_object(t)) {
    t = json_object();
    json_object_set_new(obj, "turnpike", t);
  }
  json_object_set_new(t, key, value);
}

/* A PaymentMethod made by a PaymentIntent's own request (its
 * payment_method_data, a test id, a token: turnpike.made_for) and not
 * attached to a customer has been spent once that PaymentIntent paid with
 * it: it still names it and is paying, holds the authorization or has
 * been paid, or was canceled after its charge with it succeeded. A
 * decline spends nothing (the PaymentIntent then names no PaymentMethod,
 * and its latest charge, failed, stays after a new card is given). The
 * mark costs the payment nothing (it is in the row the PaymentMethod is
 * written as); consume_unattached (payflow.c) marks the others when they
 * pay. As there, one the payment sets up for later (setup_future_usage) is
 * not spent. */
static bool spent_by_its_payment(const struct tp_req *r, const json_t *pm)
{
  const char *made_for = json_string_value(json_object_get(json_object_get(pm, "turnpike"), "made_for"));
  const char *id = json_string_value(json_object_get(pm, "id"));
  if (!made_for || !id || json_is_string(json_object_get(pm, "customer")))
    return false;
  json_t *pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, made_for);
  const char *paid_by = json_string_value(json_object_get(pi, "payment_method"));
  const char *st = json_string_value(json_object_get(pi, "status"));
  const char *sfu = tp_pi_card_option(pi, "setup_future_usage");
  bool spent = false;
  if (paid_by && strcmp(paid_by, id) == 0 && st && !(sfu && strcmp(sfu, "none") != 0)) {
    spent = strcmp(st, "processing") == 0 || strcmp(st, "requires_capture") == 0 || strcmp(st, "succeeded") == 0;
    const char *lc = json_string_value(json_object_get(pi, "latest_charge"));
    if (!spent && strcmp(st, "canceled") == 0 && lc) {
      json_t *ch = tp_store_get_json(&tp_app.store, TP_K_CHARGE, r->merchant.id, lc);
      const char *ch_pm = json_string_value(json_object_get(ch, "payment_method"));
      const char *ch_st = json_string_value(json_object_get(ch, "status"));
      spent = ch_pm && strcmp(ch_pm, id) == 0 && ch_st && strcmp(ch_st, "succeeded") == 0;
      json_decref(ch);
    }
  }
  json_decref(pi);
  return spent;
}

bool tp_pm_spent(const struct tp_req *r, const json_t *pm)
{
  return json_is_true(json_object_get(json_object_get(pm, "turnpike"), "detached")) || spent_by_its_payment(r, pm);
}

void tp_reply_pm_consumed(struct tp_req *r)
{
  tp_reply_error(r, TP_ERR_PAYMENT_METHOD_CONSUMED, r->charges_api ? "source" : "payment_method", NULL);
}

bool tp_pm_usable(struct tp_req *r, const json_t *pm)
{
  if (!tp_pm_spent(r, pm))
    return true;
  tp_reply_pm_consumed(r);
  return false;
}

bool tp_card_holder_ok(struct tp_req *r, const json_t *obj, const char *prefix)
{
  static const char *const fields[] = {"name",          "address_line1", "address_line2", "address_city",
                                       "address_state", "address_zip",   "address_country"};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    const char *v = tp_pstr(obj, fields[i]);
    if (v && tp_utf8_chars(v) > TP_ADDRESS_FIELD_MAX) {
      char param[64];
      if (prefix)
        snprintf(param, sizeof param, "%s[%s]", prefix, fields[i]);
      else
        snprintf(param, sizeof param, "%s", fields[i]);
      tp_reply_error(r, TP_ERR_PARAMETER_INVALID, param, NULL);
      return false;
    }
  }
  return true;
}

const char *tp_card_object_brand(const char *brand)
{
  static const char *const map[][2] = {{"visa", "Visa"},         {"mastercard", "MasterCard"},
                                       {"amex", "American Express"}, {"discover", "Discover"},
                                       {"diners", "Diners Club"}, {"jcb", "JCB"},
                                       {"unionpay", "UnionPay"}};
  for (size_t i = 0; brand && i < sizeof map / sizeof map[0]; i++)
    if (strcmp(brand, map[i][0]) == 0)
      return map[i][1];
  return "Unknown";
}

json_t *tp_card_view(const json_t *pm)
{
  const json_t *card = json_object_get(pm, "card"), *bd = json_object_get(pm, "billing_details");
  const json_t *addr = json_object_get(bd, "address"), *checks = json_object_get(card, "checks");
  json_t *c = tp_pack("{s:O, s:s, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:s, s:O?, s:O?, s:O?, "
                      "s:O?, s:n, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:O?, s:{s:n}, s:n}",
                      "id", json_object_get(pm, "id"), "object", "card", "address_city",
                      json_object_get(addr, "city"), "address_country", json_object_get(addr, "country"),
                      "address_line1", json_object_get(addr, "line1"), "address_line1_check",
                      json_object_get(checks, "address_line1_check"), "address_line2",
                      json_object_get(addr, "line2"), "address_state", json_object_get(addr, "state"),
                      "address_zip", json_object_get(addr, "postal_code"), "address_zip_check",
                      json_object_get(checks, "address_postal_code_check"), "allow_redisplay",
                      json_object_get(pm, "allow_redisplay"), "brand",
                      tp_card_object_brand(json_string_value(json_object_get(card, "brand"))), "country",
                      json_object_get(card, "country"), "customer", json_object_get(pm, "customer"), "cvc_check",
                      json_object_get(checks, "cvc_check"), "exp_month", json_object_get(card, "exp_month"),
                      "dynamic_last4", "exp_year", json_object_get(card, "exp_year"), "fingerprint",
                      json_object_get(card, "fingerprint"), "funding", json_object_get(card, "funding"), "last4",
                      json_object_get(card, "last4"), "metadata", json_object_get(pm, "metadata"), "name",
                      json_object_get(bd, "name"), "regulated_status", json_object_get(card, "regulated_status"),
                      "networks", "preferred", "tokenization_method");
  if (!c)
    abort();
  return c;
}

/* ---- expansion -------------------------------------------------------------- */
static enum tp_kind kind_of_id(const char *id, bool *ok)
{
  *ok = true;
  for (int k = 0; k < TP_K__COUNT; k++) {
    size_t pl = strlen(tp_kinds[k].prefix);
    if (strncmp(id, tp_kinds[k].prefix, pl) == 0 && id[pl] == '_')
      return (enum tp_kind)k;
  }
  *ok = false;
  return TP_K_PAYMENT_INTENT;
}

static json_t *find_known(const json_t *known, const char *id)
{
  size_t i;
  json_t *v;
  json_array_foreach(known, i, v)
  {
    const char *vid = json_string_value(json_object_get(v, "id"));
    /* A copy: expanding inside it (latest_charge.payment_intent) must not
     * change the caller's object, nor make a tree that contains itself
     * (the PaymentIntent in its own charge), which cannot be written out. */
    if (vid && strcmp(vid, id) == 0)
      return json_deep_copy(v);
  }
  return NULL;
}

/* Lists that an object shows only when expanded (Stripe, API 2022-11-15
 * on): a charge's refunds, newest first, the first ten with has_more, as
 * GET /v1/refunds?charge= gives them; a customer's sources, subscriptions
 * and tax ids, which Turnpike never has. True when path named one of them
 * on this kind of object. */
/* A stored list's page (data) as this request leaves it: each object of
 * known that belongs to the list (belongs(o, owner)) replaces its stored
 * version, or comes first when the store does not have it yet (newest
 * first); one known as deleted ({"id", "deleted": true}) is taken out. */
static bool refund_of(const json_t *o, const char *charge)
{
  return strcmp(json_string_value(json_object_get(o, "object")) ?: "", "refund") == 0 &&
         strcmp(json_string_value(json_object_get(o, "charge")) ?: "", charge) == 0;
}

static bool charge_of(const json_t *o, const char *pi)
{
  return strcmp(json_string_value(json_object_get(o, "object")) ?: "", "charge") == 0 &&
         strcmp(json_string_value(json_object_get(o, "payment_intent")) ?: "", pi) == 0;
}

static void overlay_known(json_t *data, const json_t *known, bool (*belongs)(const json_t *o, const char *owner),
                          const char *owner)
{
  size_t i;
  json_t *o;
  json_array_foreach(known, i, o) {
    const char *oid = json_string_value(json_object_get(o, "id"));
    bool gone = json_is_true(json_object_get(o, "deleted"));
    if (!oid || (!gone && !belongs(o, owner)))
      continue;
    size_t k = json_array_size(data);
    while (k-- > 0 && strcmp(json_string_value(json_object_get(json_array_get(data, k), "id")) ?: "", oid) != 0)
      ;
    if (gone) {
      if (k != (size_t)-1)
        json_array_remove(data, k);
    } else if (k != (size_t)-1) {
      json_array_set_new(data, k, json_deep_copy(o));
    } else {
      json_array_insert_new(data, 0, json_deep_copy(o));
    }
  }
}

static void legacy_pi_charges(struct tp_req *r, json_t *pi, const json_t *known);

/* How many rows q matches in the store, a page of 100 at a time; -1 when
 * the store said no or past 100 pages. */
static int64_t count_all(struct tp_list_query q)
{
  int64_t n = 0;
  char after[TP_ID_MAX] = "";
  q.limit = 100;
  q.ending_before = NULL;
  for (int page = 0; page < 100; page++) {
    q.starting_after = after[0] ? after : NULL;
    bool more = false;
    json_t *rows = tp_app.store.ops->list(tp_app.store.cls, &q, &more);
    if (!rows)
      return -1;
    size_t k = json_array_size(rows);
    n += (int64_t)k;
    const char *lid = k ? json_string_value(json_object_get(json_array_get(rows, k - 1), "id")) : NULL;
    tp_scopy(after, sizeof after, lid ? lid : "");
    json_decref(rows);
    if (!more || !after[0])
      return n;
  }
  return -1;
}

/* What this request changes of that count, before it commits: a known
 * object of the list the store does not hold yet (+1), one known as deleted
 * that it still holds (-1). */
static int64_t known_delta(const struct tp_req *r, enum tp_kind kind, const json_t *known,
                           bool (*belongs)(const json_t *o, const char *owner), const char *owner)
{
  int64_t d = 0;
  size_t i;
  json_t *o;
  json_array_foreach(known, i, o) {
    const char *oid = json_string_value(json_object_get(o, "id"));
    if (!oid)
      continue;
    bool gone = json_is_true(json_object_get(o, "deleted"));
    if (!gone && !belongs(o, owner))
      continue;
    int live = tp_store_live(&tp_app.store, kind, r->merchant.id, oid);
    d += !gone && live == 0 ? 1 : gone && live == 1 ? -1 : 0;
  }
  return d;
}

static bool expand_list(struct tp_req *r, json_t *obj, const char *path, const json_t *known)
{
  const char *what = json_string_value(json_object_get(obj, "object"));
  const char *id = json_string_value(json_object_get(obj, "id"));
  if (!what || !id || strlen(id) >= TP_ID_MAX)
    return false;
  if (json_is_true(json_object_get(obj, "deleted")))
    return true; /* a deleted object's stub has no lists: nothing to add (and not refused) */
  const json_t *had = json_object_get(obj, path);
  if (json_is_object(had) && strcmp(json_string_value(json_object_get(had, "object")) ?: "", "list") == 0)
    return true; /* expanded already, perhaps deeper ("refunds.data.x" before "refunds") */
  if (strcmp(what, "payment_intent") == 0 && strcmp(path, "charges") == 0) {
    /* the list an API version before 2022-11-15 shows, made now so that
     * charges.data.balance_transaction expands inside it */
    if (!tp_legacy_lists_wanted(r))
      return false;
    legacy_pi_charges(r, obj, known);
    return json_object_get(obj, "charges") != NULL;
  }
  char url[160];
  json_t *data = NULL;
  bool more = false;
  struct tp_list_query q;
  bool counted = false; /* q is the list's query (total_count past the page) */
  if (strcmp(what, "charge") == 0 && strcmp(path, "refunds") == 0) {
    tp_list_query_init(&q, TP_K_REFUND, r->merchant.id);
    counted = true;
    q.col2_name = "charge";
    q.col2_value = id;
    data = tp_app.store.ops->list(tp_app.store.cls, &q, &more);
    if (!data)
      return true; /* left as it was: the store said no */
    /* a refund this request is writing, as it is now (the store has it as
     * it was before the processor's answer) */
    overlay_known(data, known, refund_of, id);
  } else if (strcmp(what, "customer") == 0 && strcmp(path, "sources") == 0) {
    /* its cards (the legacy Cards API, sources.c), newest first */
    tp_card_sources_query(&q, r->merchant.id, id);
    counted = true;
    data = tp_app.store.ops->list(tp_app.store.cls, &q, &more);
    if (!data)
      return true;
    /* a card this request made (not in the store yet) is the newest; one
     * it deleted is gone */
    overlay_known(data, known, tp_is_card_source, id);
    size_t i;
    json_t *pm;
    json_array_foreach(data, i, pm) json_array_set_new(data, i, tp_card_view(pm));
  } else if (strcmp(what, "customer") == 0 && (strcmp(path, "subscriptions") == 0 || strcmp(path, "tax_ids") == 0)) {
    data = json_array();
  } else {
    return false;
  }
  snprintf(url, sizeof url, "/v1/%s/%s/%s", strcmp(what, "charge") == 0 ? "charges" : "customers", id, path);
  /* total_count, as Stripe's embedded lists show it (a charge's refunds, a
   * customer's sources: "$customer->sources->total_count"); known here when
   * the page holds them all. */
  size_t k = json_array_size(data);
  int64_t total = (int64_t)k;
  if (more && counted) {
    /* the store's count, and what this request changes of it (the page was
     * overlaid with it: its length and last id are not the store's) */
    bool refunds = strcmp(what, "charge") == 0;
    total = count_all(q);
    if (total >= 0)
      total += known_delta(r, refunds ? TP_K_REFUND : TP_K_PAYMENT_METHOD, known,
                           refunds ? refund_of : tp_is_card_source, id);
  }
  json_t *list = tp_pack("{s:s, s:o, s:b, s:I, s:s}", "object", "list", "data", data, "has_more", more, "total_count",
                         (json_int_t)total, "url", url);
  if (total < 0)
    json_object_del(list, "total_count");
  json_object_set_new(obj, path, list);
  return true;
}

bool tp_legacy_lists_wanted(const struct tp_req *r)
{
  return r && r->api_version[0] && strcmp(r->api_version, "2022-11-15") < 0;
}

/* A PaymentIntent's charges (newest first, a page of ten), as API versions
 * before 2022-11-15 showed them. */
static void legacy_pi_charges(struct tp_req *r, json_t *pi, const json_t *known)
{
  const char *id = json_string_value(json_object_get(pi, "id"));
  if (!id || json_object_get(pi, "charges"))
    return;
  struct tp_list_query q;
  tp_list_query_init(&q, TP_K_CHARGE, r->merchant.id);
  q.col_name = "payment_intent";
  q.col_value = id;
  bool more = false;
  json_t *data = tp_app.store.ops->list(tp_app.store.cls, &q, &more);
  if (!data)
    return;
  /* the charge this request writes may not be in the store yet (first:
   * the newest), and the page stays a page */
  overlay_known(data, known, charge_of, id);
  while (q.limit > 0 && json_array_size(data) > (size_t)q.limit) {
    json_array_remove(data, json_array_size(data) - 1);
    more = true;
  }
  size_t k;
  json_t *c;
  json_array_foreach(data, k, c) (void)expand_list(r, c, "refunds", known); /* each as that version showed it */
  char url[128];
  snprintf(url, sizeof url, "/v1/charges?payment_intent=%s", id);
  /* past the page, counted as a charge's refunds are (expand_list): an
   * integration reading charges.total_count raised once a customer had
   * retried past ten declines (review, session 41) */
  int64_t total = more ? count_all(q) : (int64_t)json_array_size(data);
  if (more && total >= 0)
    total += known_delta(r, TP_K_CHARGE, known, charge_of, id);
  json_t *list = tp_pack("{s:s, s:o, s:b, s:I, s:s}", "object", "list", "data", data, "has_more", more,
                         "total_count", (json_int_t)total, "url", url);
  if (total < 0)
    json_object_del(list, "total_count");
  json_object_set_new(pi, "charges", list);
}

static void legacy_one(struct tp_req *r, json_t *obj, const json_t *known)
{
  const char *what = json_string_value(json_object_get(obj, "object"));
  if (!what)
    return;
  if (strcmp(what, "payment_intent") == 0)
    legacy_pi_charges(r, obj, known);
  else if (strcmp(what, "charge") == 0)
    (void)expand_list(r, obj, "refunds", known);
  else if (strcmp(what, "customer") == 0 && strcmp(r->api_version, "2020-08-27") < 0 &&
           !json_is_true(json_object_get(obj, "deleted")))
    (void)expand_list(r, obj, "sources", known);
}

void tp_legacy_lists(struct tp_req *r, json_t *obj, const json_t *known)
{
  if (!tp_legacy_lists_wanted(r) || !json_is_object(obj))
    return;
  const char *what = json_string_value(json_object_get(obj, "object"));
  if (what && (strcmp(what, "list") == 0 || strcmp(what, "search_result") == 0)) {
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(obj, "data"), i, v) legacy_one(r, v, known);
    return;
  }
  legacy_one(r, obj, known);
}

static void expand_field(struct tp_req *r, json_t *obj, const char *path, const json_t *known)
{
  const char *dot = strchr(path, '.');
  if (dot) {
    char head[64];
    size_t hl = (size_t)(dot - path);
    if (hl >= sizeof head)
      return;
    memcpy(head, path, hl);
    head[hl] = '\0';
    json_t *sub = json_object_get(obj, head);
    if (json_is_string(sub) || (!sub && expand_list(r, obj, head, known))) {
      /* "latest_charge.balance_transaction" expands latest_charge first
       * (Stripe), then the field inside it; "refunds.data.x" the list a
       * charge shows only when expanded, then inside its items. */
      if (json_is_string(sub))
        expand_field(r, obj, head, known);
      sub = json_object_get(obj, head);
    }
    if (json_is_array(sub)) {
      size_t i;
      json_t *v;
      json_array_foreach(sub, i, v) expand_field(r, v, dot + 1, known);
    } else if (json_is_object(sub))
      expand_field(r, sub, dot + 1, known);
    return;
  }
  if (expand_list(r, obj, path, known))
    return;
  const char *id = json_string_value(json_object_get(obj, path));
  if (!id)
    return;
  bool card = strncmp(id, "card_", 5) == 0;
  if (card && (strcmp(path, "default_source") == 0 || strcmp(path, "source") == 0)) {
    /* a customer's card as the Card object it is there */
    json_t *pm = find_known(known, id);
    if (!pm)
      pm = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, id);
    if (pm)
      json_object_set_new(obj, path, tp_card_view(pm));
    json_decref(pm);
    return;
  }
  bool ok;
  enum tp_kind k = card ? TP_K_PAYMENT_METHOD : kind_of_id(id, &ok);
  if (!card && !ok)
    return;
  json_t *full = find_known(known, id);
  if (!full)
    full = tp_store_get_json(&tp_app.store, k, r->merchant.id, id);
  if (full) {
    /* as the pinned API version showed it, inside as at the top (a refund's
     * expanded charge with its refunds: ActiveMerchant's refund reads them) */
    if (tp_legacy_lists_wanted(r))
      legacy_one(r, full, known);
    json_object_set_new(obj, path, full);
  }
}

#define TP_EXPAND_MAX_LEVELS 4 /* Stripe's limit, "data" of a list counted */

/* Every expand[] path: non-empty, at most 200 bytes and four levels, and
 * ending in a field that holds an id; false after replying otherwise. */
/* Whether the n bytes at seg are one of list's names. */
static bool seg_in(const char *const *list, const char *seg, size_t n)
{
  for (int j = 0; list[j]; j++)
    if (strlen(list[j]) == n && strncmp(seg, list[j], n) == 0)
      return true;
  return false;
}

static bool expand_paths_ok(struct tp_req *r)
{
  const json_t *ex = json_object_get(r->params, "expand");
  if (!json_is_array(ex))
    return true;
  /* Stripe's expandable fields of the objects Turnpike serves. Those that
   * Turnpike always leaves null (review, application, transfers ...) expand
   * to null, as on Stripe; refunds, sources, subscriptions and tax_ids are
   * lists (expand_list). */
  static const char *const ok_fields[] = {"latest_charge",
                                          "customer",
                                          "payment_method",
                                          "payment_intent",
                                          "charge",
                                          "balance_transaction",
                                          "source",
                                          "default_payment_method",
                                          "object",
                                          "refunds",
                                          "review",
                                          "application",
                                          "application_fee",
                                          "on_behalf_of",
                                          "failure_balance_transaction",
                                          "source_transfer",
                                          "transfer",
                                          "transfer_reversal",
                                          "source_transfer_reversal",
                                          "default_source",
                                          "test_clock",
                                          "sources",
                                          "subscriptions",
                                          "tax_ids",
                                          "latest_attempt",
                                          "setup_intent",
                                          "mandate", /* a SetupIntent's (null here: none is made) */
                                          "single_use_mandate",
                                          "destination", /* a payout's (there are none: /v1/payouts is empty) */
                                          "original_payout",
                                          "reversed_by",
                                          NULL};
  size_t i;
  json_t *v;
  json_array_foreach(ex, i, v)
  {
    const char *path = json_string_value(v);
    if (!path || strlen(path) > 200 || !*path) {
      tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "expand", NULL);
      return false;
    }
    char msg[300];
    int levels = 1;
    for (const char *p = path; *p; p++)
      levels += *p == '.';
    if (levels > TP_EXPAND_MAX_LEVELS) {
      snprintf(msg, sizeof msg, "You cannot expand more than %d levels of a property. Property: %.200s",
               TP_EXPAND_MAX_LEVELS, path);
      tp_reply_error(r, TP_ERR_EXPAND_TOO_DEEP, "expand", msg);
      return false;
    }
    /* One walk: each level must be an expandable field ("metadata.customer"
     * and ".customer" are refused, as Stripe does), or an object
     * that holds one (a list's items under "data",
     * customer.invoice_settings.default_payment_method); and each expanded
     * level is an object read, needing the scope that reads it (a
     * reports:read key read customers through balance_transactions'
     * source.customer): balance transactions reports:read, the rest
     * payments:read. */
    static const char *const containers[] = {"data", "invoice_settings", "transfer_data", NULL};
    static const char *const txns[] = {"balance_transaction", "failure_balance_transaction", NULL};
    bool okf = true;
    unsigned need = 0;
    for (const char *seg = path; okf && seg;) {
      const char *dot = strchr(seg, '.');
      size_t n = dot ? (size_t)(dot - seg) : strlen(seg);
      bool container = dot && seg_in(containers, seg, n);
      okf = container || seg_in(ok_fields, seg, n) ||
            (n == 7 && strncmp(seg, "charges", 7) == 0 && tp_legacy_lists_wanted(r));
      if (!container)
        need |= seg_in(txns, seg, n) ? TP_SCOPE_REPORTS_READ : TP_SCOPE_PAYMENTS_READ;
      seg = dot ? dot + 1 : NULL;
    }
    if (!okf) {
      snprintf(msg, sizeof msg, "This property cannot be expanded (%.200s).", path);
      tp_reply_error(r, TP_ERR_EXPAND_INVALID, "expand", msg);
      return false;
    }
    if (r->authed && !r->publishable && (r->scopes & need) != need) {
      unsigned missing = need & ~r->scopes;
      unsigned first = missing & TP_SCOPE_PAYMENTS_READ ? TP_SCOPE_PAYMENTS_READ : TP_SCOPE_REPORTS_READ;
      snprintf(msg, sizeof msg,
               "The provided key does not have the required permissions to expand %.120s: it needs the `%s` "
               "scope.", path, tp_scope_name(first));
      tp_reply_error(r, TP_ERR_PERMISSION_DENIED, "expand", msg);
      return false;
    }
    /* A publishable key (a browser with a client_secret) may expand the
     * payment method it is paying with, nothing else: the reply's cut of
     * what a browser may see (no customer, no metadata) is of the top
     * level, and payment_method.customer handed over the whole Customer. */
    if (r->publishable && strcmp(path, "payment_method") != 0) {
      snprintf(msg, sizeof msg, "This property cannot be expanded with a publishable key (%.200s).", path);
      tp_reply_error(r, TP_ERR_EXPAND_INVALID, "expand", msg);
      return false;
    }
  }
  return true;
}

bool tp_expand(struct tp_req *r, json_t *obj, const json_t *known)
{
  const json_t *ex = json_object_get(r->params, "expand");
  if (!json_is_array(ex))
    return true;
  /* Checked already by tp_check_params; again for a caller that did not. */
  if (!expand_paths_ok(r))
    return false;
  /* A list's (or search result's) own fields are not expandable: its items
   * are, under "data.". */
  const char *what = json_string_value(json_object_get(obj, "object"));
  bool list = what && (strcmp(what, "list") == 0 || strcmp(what, "search_result") == 0);
  size_t i;
  json_t *v;
  json_array_foreach(ex, i, v)
  {
    const char *path = json_string_value(v);
    if (list && strncmp(path, "data.", 5) != 0) {
      char msg[400];
      snprintf(msg, sizeof msg,
               "This property cannot be expanded (%.120s). You may want to try expanding 'data.%.120s' instead.",
               path, path);
      tp_reply_error(r, TP_ERR_EXPAND_INVALID, "expand", msg);
      return false;
    }
  }
  json_array_foreach(ex, i, v)
    expand_field(r, obj, json_string_value(v), known);
  return true;
}

/* ---- lists ---------------------------------------------------------------- */
bool tp_param_limit(struct tp_req *r, int64_t *limit)
{
  int64_t lim;
  if (!tp_param_int(r->params, "limit", &lim))
    return true;
  if (lim < 1 || lim > 100) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID_INTEGER, "limit", "Invalid limit: must be an integer between 1 and 100");
    return false;
  }
  *limit = lim;
  return true;
}

bool tp_param_cursors(struct tp_req *r, const char **after, const char **before)
{
  *after = tp_pstr(r->params, "starting_after");
  if (*after && !**after)
    *after = NULL;
  if (!before)
    return true;
  *before = tp_pstr(r->params, "ending_before");
  if (*before && !**before)
    *before = NULL;
  if (*after && *before) {
    tp_reply_error(r, TP_ERR_PARAMETERS_EXCLUSIVE, "ending_before",
                   "Received both starting_after and ending_before parameters. Please pass in only one.");
    return false;
  }
  return true;
}

bool tp_list_params(struct tp_req *r, struct tp_list_query *q)
{
  q->merchant = r->merchant.id;
  int64_t lim = q->limit;
  if (!tp_param_limit(r, &lim))
    return false;
  q->limit = (int)lim;
  if (!tp_param_cursors(r, &q->starting_after, &q->ending_before))
    return false;
  /* A cursor must name an object of this merchant and kind (Stripe: 400). */
  const char *cursor = q->starting_after ? q->starting_after : q->ending_before;
  if (cursor) {
    char *obj = tp_store_get(&tp_app.store, q->kind, q->merchant, cursor);
    if (!obj) {
      char msg[200];
      snprintf(msg, sizeof msg, "No such %s: '%.64s'", tp_kinds[q->kind].object, cursor);
      tp_reply_error(r, TP_ERR_PAGINATION_CURSOR_INVALID, q->starting_after ? "starting_after" : "ending_before", msg);
      return false;
    }
    free(obj);
  }
  const json_t *c = json_object_get(r->params, "created");
  if (json_is_integer(c)) {
    q->created_gte = q->created_lte = json_integer_value(c);
  } else if (json_is_object(c)) {
    /* Every bound given applies (their intersection); a bound nothing can
     * pass (gt the largest integer, lt the smallest) makes the list empty
     * rather than being dropped. */
    json_t *v;
    bool none = false;
    int64_t x;
    if ((v = json_object_get(c, "gte")) && json_is_integer(v) && (x = json_integer_value(v)) > q->created_gte)
      q->created_gte = x;
    if ((v = json_object_get(c, "gt")) && json_is_integer(v)) {
      x = json_integer_value(v);
      if (x == INT64_MAX)
        none = true;
      else if (x + 1 > q->created_gte)
        q->created_gte = x + 1;
    }
    if ((v = json_object_get(c, "lte")) && json_is_integer(v) && (x = json_integer_value(v)) < q->created_lte)
      q->created_lte = x;
    if ((v = json_object_get(c, "lt")) && json_is_integer(v)) {
      x = json_integer_value(v);
      if (x == INT64_MIN)
        none = true;
      else if (x - 1 < q->created_lte)
        q->created_lte = x - 1;
    }
    if (none) {
      q->created_gte = INT64_MAX;
      q->created_lte = INT64_MIN;
    }
  }
  return true;
}

void tp_reply_list_by(struct tp_req *r, const struct tp_pspec *spec, enum tp_kind kind, const char *url)
{
  if (!tp_check_params(r, spec))
    return;
  struct tp_list_query q;
  tp_list_query_init(&q, kind, r->merchant.id);
  if (!tp_list_params(r, &q))
    return;
  /* The kind's two indexed columns filter by the parameters of their names. */
  const char *v1 = tp_pstr(r->params, tp_kinds[kind].col[0]), *v2 = tp_pstr(r->params, tp_kinds[kind].col[1]);
  if (v1 && *v1) {
    q.col_name = tp_kinds[kind].col[0];
    q.col_value = v1;
  }
  if (v2 && *v2) {
    q.col2_name = tp_kinds[kind].col[1];
    q.col2_value = v2;
  }
  tp_reply_list(r, &q, url);
}

void tp_reply_list(struct tp_req *r, struct tp_list_query *q, const char *url)
{
  tp_reply_list_fixed(r, q, url, NULL, NULL);
}

void tp_reply_list_fixed(struct tp_req *r, struct tp_list_query *q, const char *url, void (*fix)(json_t *, void *),
                         void *arg)
{
  bool has_more = false;
  json_t *data = tp_app.store.ops->list(tp_app.store.cls, q, &has_more);
  if (!data) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  if (fix)
    fix(data, arg);
  json_t *list = tp_pack("{s:s, s:s, s:b, s:o}", "object", "list", "url", url, "has_more", has_more, "data", data);
  /* expand[]=data.x applies to the items */
  const json_t *ex = json_object_get(r->params, "expand");
  if (json_is_array(ex) && json_array_size(ex) > 0 && !tp_expand(r, list, NULL)) {
    json_decref(list);
    return;
  }
  tp_reply_json(r, 200, list);
}

/* ---- locks ------------------------------------------------------------------ */
#define LOCK_BUCKETS 1024
struct lock_ent {
  char id[TP_ID_MAX];
  char merchant[TP_ID_MAX]; /* whose request took it ("": not known, tp_lock_owner) */
  struct lock_ent *next;
};
static _Thread_local char lock_owner[TP_ID_MAX];

void tp_lock_owner(const char *merchant)
{
  tp_scopy(lock_owner, sizeof lock_owner, merchant ? merchant : "");
}
static struct lock_ent *locks[LOCK_BUCKETS];
static pthread_mutex_t lock_mu = PTHREAD_MUTEX_INITIALIZER;

static unsigned lock_hash(const char *s)
{
  unsigned h = 5381;
  for (; *s; s++)
    h = h * 33 + (unsigned char)*s;
  return h % LOCK_BUCKETS;
}

_Thread_local char tp_lock_busy_id[TP_ID_MAX];
static _Thread_local char lock_pretend[TP_ID_MAX];

/* The key a lock is kept under: the id's first TP_ID_MAX - 1 bytes, the
 * same for the take, the look-ups and the release (an id of 64-71
 * characters, which a path allows, was stored cut and looked up whole: its
 * entry never found again, one leaked per request, and two requests on it
 * both got the lock). Two long ids alike that far share a lock. */
#define LOCK_KEY(var, id) \
  char var[TP_ID_MAX]; \
  tp_scopy(var, sizeof var, (id))

void tp_lock_pretend(const char *id)
{
  tp_scopy(lock_pretend, sizeof lock_pretend, id ? id : ""); /* cut as LOCK_KEY cuts */
}

/* Is id, by its prefix a stored kind's, in merchant's store (or can the
 * store not say)? An id of no stored kind is taken as ours. */
static bool lock_id_ours(const char *merchant, const char *id)
{
  const char *us = strchr(id, '_');
  if (!us)
    return true;
  size_t n = (size_t)(us - id);
  for (int k = 0; k < TP_K__COUNT; k++)
    if (strlen(tp_kinds[k].prefix) == n && strncmp(tp_kinds[k].prefix, id, n) == 0) {
      char *data = tp_store_get(&tp_app.store, (enum tp_kind)k, merchant, id);
      bool ours = data != NULL || tp_store_read_failed;
      free(data);
      return ours;
    }
  return true;
}

bool tp_lock_foreign(const char *merchant, const char *whole)
{
  LOCK_KEY(id, whole);
  /* Only a lock whose taker is known to be another merchant's request: an
   * object not in this merchant's store may still be its own (a token's
   * card, made by the request that holds it), and a request of no merchant
   * (the 3-D Secure page, which finds its merchant under the lock) or of
   * the payment flow's threads proves nothing. A test id (tok_visa,
   * pm_card_visa) is every merchant's. */
  if (!merchant || !merchant[0] || test_id_pan(id))
    return false;
  unsigned b = lock_hash(id);
  bool foreign = false;
  pthread_mutex_lock(&lock_mu);
  for (struct lock_ent *e = locks[b]; e; e = e->next)
    if (strcmp(e->id, id) == 0) {
      foreign = e->merchant[0] && strcmp(e->merchant, merchant) != 0;
      break;
    }
  pthread_mutex_unlock(&lock_mu);
  /* Nor an object of this merchant's: another merchant's request that
   * names it takes its lock before its reads find nothing (the lock is by
   * id), and this merchant's request run past that lock ran beside its own
   * other requests on the object (two refunds of one charge both made,
   * 1200 refunded of 1000). Only an id of a kind the store knows, not in
   * this merchant's store (a deleted customer's stub counts), is another's;
   * anything else is waited for. */
  return foreign && !lock_id_ours(merchant, id);
}

static bool held(unsigned b, const char *id)
{
  for (struct lock_ent *e = locks[b]; e; e = e->next)
    if (strcmp(e->id, id) == 0)
      return true;
  return false;
}

bool tp_lock_try(const char *whole)
{
  LOCK_KEY(id, whole);
  if (lock_pretend[0] && strcmp(id, lock_pretend) == 0)
    return true;
  unsigned b = lock_hash(id);
  pthread_mutex_lock(&lock_mu);
  if (held(b, id)) {
    pthread_mutex_unlock(&lock_mu);
    tp_scopy(tp_lock_busy_id, sizeof tp_lock_busy_id, id);
    return false;
  }
  struct lock_ent *e = calloc(1, sizeof *e);
  if (!e) {
    pthread_mutex_unlock(&lock_mu);
    return false;
  }
  tp_scopy(e->id, sizeof e->id, id);
  tp_scopy(e->merchant, sizeof e->merchant, lock_owner);
  e->next = locks[b];
  locks[b] = e;
  pthread_mutex_unlock(&lock_mu);
  return true;
}

/* Requests waiting for a lock (tp_lock_wait): woken by the release of
 * their id, or by the timer thread at their deadline. Few at any time (one
 * per request that found its object busy), so one list. */
struct lock_waiter {
  struct lock_waiter *next;
  char id[TP_ID_MAX];
  int64_t deadline_ms;
  void (*wake)(void *arg);
  void *arg;
};
static struct lock_waiter *waiters;
static pthread_cond_t waiter_cv;
static pthread_once_t waiter_once = PTHREAD_ONCE_INIT;
static bool waiter_ok; /* the timer thread runs (else no waiting) */
static pthread_t waiter_thread;
static bool waiter_stop; /* under lock_mu: tp_lock_wait_stop asked */

/* Unlink the waiters for id (or, id NULL, those due by now_ms) into *out. */
static void take_waiters(const char *id, int64_t now_ms, struct lock_waiter **out)
{
  for (struct lock_waiter **pp = &waiters; *pp;) {
    struct lock_waiter *w = *pp;
    if (id ? strcmp(w->id, id) == 0 : w->deadline_ms <= now_ms) {
      *pp = w->next;
      w->next = *out;
      *out = w;
    } else
      pp = &w->next;
  }
}

static void wake_all(struct lock_waiter *w)
{
  while (w) {
    struct lock_waiter *next = w->next;
    w->wake(w->arg);
    free(w);
    w = next;
  }
}

static void *waiter_main(void *arg)
{
  (void)arg;
  pthread_mutex_lock(&lock_mu);
  while (!waiter_stop) {
    int64_t soonest = INT64_MAX;
    for (struct lock_waiter *w = waiters; w; w = w->next)
      if (w->deadline_ms < soonest)
        soonest = w->deadline_ms;
    if (soonest == INT64_MAX) {
      pthread_cond_wait(&waiter_cv, &lock_mu);
      continue;
    }
    int64_t now = tp_mono_ms();
    if (soonest > now) {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      int64_t ns = (int64_t)ts.tv_nsec + (soonest - now) * 1000000;
      ts.tv_sec += (time_t)(ns / 1000000000);
      ts.tv_nsec = (long)(ns % 1000000000);
      pthread_cond_timedwait(&waiter_cv, &lock_mu, &ts);
      continue;
    }
    struct lock_waiter *due = NULL;
    take_waiters(NULL, now, &due);
    pthread_mutex_unlock(&lock_mu);
    wake_all(due);
    pthread_mutex_lock(&lock_mu);
  }
  pthread_mutex_unlock(&lock_mu);
  return NULL;
}

static void waiter_start(void)
{
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&waiter_cv, &a);
  pthread_condattr_destroy(&a);
  if (pthread_create(&waiter_thread, NULL, waiter_main, NULL) != 0)
    tp_log(TP_LOG_ERROR, "lock_waiter_start_failed", NULL);
  else {
    pthread_setname_np(waiter_thread, "tp-lockwait");
    waiter_ok = true;
  }
}

void tp_lock_wait_stop(void)
{
  /* After the HTTP server stopped: every waiter's request has ended (it
   * counts as in flight until then), so the list is empty. */
  pthread_mutex_lock(&lock_mu);
  bool running = waiter_ok;
  waiter_ok = false;
  waiter_stop = true;
  if (running)
    pthread_cond_signal(&waiter_cv);
  pthread_mutex_unlock(&lock_mu);
  if (running)
    pthread_join(waiter_thread, NULL);
}

int tp_lock_wait(const char *whole, int64_t deadline_ms, void (*wake)(void *arg), void *arg)
{
  LOCK_KEY(id, whole);
  pthread_once(&waiter_once, waiter_start);
  struct lock_waiter *w = waiter_ok ? calloc(1, sizeof *w) : NULL;
  if (!w)
    return -1;
  tp_scopy(w->id, sizeof w->id, id);
  w->deadline_ms = deadline_ms;
  w->wake = wake;
  w->arg = arg;
  pthread_mutex_lock(&lock_mu);
  if (!held(lock_hash(id), id)) { /* released since the try: go again now */
    pthread_mutex_unlock(&lock_mu);
    free(w);
    return 0;
  }
  w->next = waiters;
  waiters = w;
  pthread_cond_signal(&waiter_cv);
  pthread_mutex_unlock(&lock_mu);
  return 1;
}

void tp_lock_release(const char *whole)
{
  LOCK_KEY(id, whole);
  if (lock_pretend[0] && strcmp(id, lock_pretend) == 0)
    return;
  unsigned b = lock_hash(id);
  struct lock_waiter *woken = NULL;
  pthread_mutex_lock(&lock_mu);
  for (struct lock_ent **pp = &locks[b]; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->id, id) == 0) {
      struct lock_ent *e = *pp;
      *pp = e->next;
      free(e);
      break;
    }
  if (waiters)
    take_waiters(id, 0, &woken);
  pthread_mutex_unlock(&lock_mu);
  wake_all(woken);
}

bool tp_unset(const json_t *v)
{
  return json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0);
}

bool tp_metadata_update(struct tp_req *r, json_t *obj, const json_t *v)
{
  tp_metadata_apply(obj, v);
  if (json_object_size(json_object_get(obj, "metadata")) <= TP_METADATA_MAX_KEYS)
    return true;
  char msg[128];
  snprintf(msg, sizeof msg, "Metadata can have up to %d keys, but you've set %zu.", TP_METADATA_MAX_KEYS,
           json_object_size(json_object_get(obj, "metadata")));
  tp_reply_error(r, TP_ERR_METADATA_TOO_MANY_KEYS, "metadata", msg);
  return false;
}

void tp_metadata_apply(json_t *obj, const json_t *v)
{
  json_t *md = json_object_get(obj, "metadata");
  if (!json_is_object(md)) {
    md = json_object();
    json_object_set_new(obj, "metadata", md);
  }
  if (tp_unset(v)) {
    json_object_clear(md);
    return;
  }
  const char *k;
  json_t *mv;
  json_object_foreach((json_t *)(uintptr_t)v, k, mv) {
    if (tp_unset(mv))
      json_object_del(md, k);
    else
      json_object_set_new(md, k, json_string(json_string_value(mv)));
  }
}

/* The metadata index keeps an object's keys while it has some (cs.c,
 * meta_pairs: a put without metadata writes nothing there); an update that
 * empties metadata which had keys_before keys drops the object's rows. */
void tp_metadata_index_emptied(struct tp_cs *cs, enum tp_kind kind, const char *merchant, size_t keys_before,
                               const json_t *after)
{
  if (!tp_kind_meta_indexed(kind) || keys_before == 0 || json_object_size(json_object_get(after, "metadata")) > 0)
    return;
  json_t *args = tp_pack("[s, s, s]", merchant, tp_kinds[kind].prefix, json_string_value(json_object_get(after, "id")));
  tp_cs_sql(cs, "DELETE FROM metadata_index WHERE merchant = ?1 AND kind = ?2 AND id = ?3", args, 0);
  json_decref(args);
}

/* The three-decimal currencies' last digit (tp_amount_card_check); reply
 * and return false when it is not 0. PaymentIntents (amount, amount_to_capture) and refunds. */
bool tp_check_card_amount(struct tp_req *r, int64_t amount, const struct tp_currency *cur, const char *param)
{
  if (tp_amount_card_check(amount, cur) == 0)
    return true;
  char msg[200];
  snprintf(msg, sizeof msg,
           "Amounts in %s must be a multiple of 10 for card payments: card networks carry %s with two decimals, "
           "so the last of the three digits must be 0.",
           cur->code, cur->code);
  tp_reply_error(r, TP_ERR_INVALID_CHARGE_AMOUNT, param, msg);
  return false;
}
