/* The simulated 3-D Secure challenge: a page with Approve and Fail buttons
 * standing in for the issuer's ACS. For a PaymentIntent, Approve continues
 * to authorization; for a SetupIntent, to the card's verification
 * (tp_si_finish). Fail returns either to requires_payment_method. Either way
 * the customer is sent back to return_url, as Stripe does. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "core/payflow.h"
#include "jpack.h"

#include <ctype.h>
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>

static const struct tp_pspec spec_page[] = {
  {"token", TP_P_STRING, NULL, NULL},
  {"result", TP_P_STRING, NULL, NULL},
  {"account", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

static void html(struct tp_req *r, unsigned status, const char *body)
{
  char *s = strdup(body);
  if (!s)
    abort();
  tp_reply_raw(r, status, s, strlen(s), "text/html; charset=utf-8");
}

/* Check the token's MAC against the intent id (tp_3ds_token); constant time. */
static bool token_ok(const char *pi_id, const char *token)
{
  char mac[17];
  if (!token || strlen(token) != 32)
    return false;
  tp_3ds_token_mac(pi_id, token, mac);
  return tp_ct_equal(mac, token + 16, 16);
}

/* Is token the one of the intent's current challenge (its next_action's link)? */
static bool token_current(const json_t *intent, const char *token)
{
  const char *url = json_string_value(
    json_object_get(json_object_get(json_object_get(intent, "next_action"), "redirect_to_url"), "url"));
  const char *at = url ? strstr(url, "token=") : NULL;
  return at && strlen(at + 6) >= 32 && tp_ct_equal(at + 6, token, 32);
}

/* An id as a link carries it: prefix then base62 and '_', shorter than
 * TP_ID_MAX (ids are written back into the page, so nothing else passes). */
static bool valid_ref(const char *id, const char *prefix)
{
  size_t n = 0;
  for (const char *p = id; *p; p++, n++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_'))
      return false;
  return n < TP_ID_MAX && strncmp(id, prefix, strlen(prefix)) == 0;
}

static bool valid_id(const char *id)
{
  return valid_ref(id, "pi_") || valid_ref(id, "seti_");
}

static bool is_setup(const char *id)
{
  return strncmp(id, "seti_", 5) == 0;
}

static bool valid_account(const char *id)
{
  return valid_ref(id, "acct_");
}

/* The origin (scheme://host[:port]) of intent's return_url into
 * r->frame_origin, when it is an http(s) URL whose host is plain enough to
 * stand in a CSP source list; else left empty (the page is not framed). */
static void frame_origin_of(struct tp_req *r, const json_t *intent)
{
  const char *ret = json_string_value(
    json_object_get(json_object_get(json_object_get(intent, "next_action"), "redirect_to_url"), "return_url"));
  if (!ret)
    return;
  /* scheme and host in any case (RFC 3986 3.1, 3.2.2), written lower
   * case as an origin is; userinfo is not part of the origin */
  const char *scheme = strncasecmp(ret, "https://", 8) == 0 ? "https://" : strncasecmp(ret, "http://", 7) == 0 ? "http://"
                                                                                                                : NULL;
  if (!scheme)
    return;
  const char *host = ret + strlen(scheme), *end = host;
  /* a backslash ends it too, as browsers read a special scheme's URL
   * (WHATWG): https://a\@b/ is host a */
  while (*end && *end != '/' && *end != '?' && *end != '#' && *end != '\\')
    end++;
  const char *at = memrchr(host, '@', (size_t)(end - host));
  if (at)
    host = at + 1;
  size_t sl = strlen(scheme), hl = (size_t)(end - host);
  if (hl == 0 || sl + hl >= sizeof r->frame_origin)
    return;
  for (const char *c = host; c < end; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.' ||
          *c == '-' || *c == ':' || *c == '[' || *c == ']'))
      return; /* percent-escapes, an IDN, anything a CSP would read otherwise */
  memcpy(r->frame_origin, scheme, sl);
  for (size_t i = 0; i < hl; i++)
    r->frame_origin[sl + i] = (char)tolower((unsigned char)host[i]);
  r->frame_origin[sl + hl] = '\0';
}

/* The intent a challenge link names, read for its return_url (NULL: none
 * found; the page is served all the same, unframed). */
static json_t *page_intent(struct tp_req *r, const char *acct)
{
  if (!tp_app.store.ops->merchant_of ||
      tp_app.store.ops->merchant_of(tp_app.store.cls, r->path_id, acct, &r->merchant) != 1)
    return NULL;
  return tp_store_get_json(&tp_app.store, is_setup(r->path_id) ? TP_K_SETUP_INTENT : TP_K_PAYMENT_INTENT,
                           r->merchant.id, r->path_id);
}

void tp_h_3ds_page(struct tp_req *r)
{
  struct tp_params_error pe;
  const char *acct_p = tp_pstr(r->params, "account");
  if (tp_params_check(r->params, spec_page, &pe) != 0 || !valid_id(r->path_id) ||
      !token_ok(r->path_id, tp_pstr(r->params, "token")) || (acct_p && !valid_account(acct_p))) {
    html(r, 404, "<!doctype html><title>Not found</title><p>This authentication link is not valid.</p>");
    return;
  }
  json_t *intent = page_intent(r, acct_p);
  frame_origin_of(r, intent);
  json_decref(intent);
  char buf[4096];
  const char *tok = tp_pstr(r->params, "token");
  /* The forms post to the page's own path (a relative action): behind a
   * proxy that serves the gateway under a prefix ([server] public_url
   * https://shop.example/pay), an absolute /v1/... missed it. */
  char acct_field[160] = "";
  if (acct_p)
    snprintf(acct_field, sizeof acct_field, "<input type=\"hidden\" name=\"account\" value=\"%s\">", acct_p);
  snprintf(buf, sizeof buf,
           "<!doctype html><html><head><meta charset=\"utf-8\"><title>3-D Secure authentication</title>"
           "<style>body{font-family:sans-serif;max-width:32em;margin:3em auto}button{font-size:1.1em;margin:.5em;"
           "padding:.5em 1.5em}</style></head><body><h1>Turnpike test 3-D Secure</h1>"
           "<p>Simulated issuer challenge for %s <code>%s</code>.</p>"
           "<form method=\"post\" action=\"%s\"><input type=\"hidden\" name=\"token\" value=\"%s\">%s"
           "<button type=\"submit\" name=\"result\" value=\"approve\" id=\"approve\">Complete authentication</button></form>"
           "<form method=\"post\" action=\"%s\"><input type=\"hidden\" name=\"token\" value=\"%s\">%s"
           "<button type=\"submit\" name=\"result\" value=\"fail\" id=\"fail\">Fail authentication</button></form>"
           "</body></html>",
           is_setup(r->path_id) ? "saving a card," : "payment", r->path_id, r->path_id, tok, acct_field, r->path_id,
           tok, acct_field);
  html(r, 200, buf);
}

/* Build the redirect back to the merchant, or a plain page without one. */
static void back_to_merchant(struct tp_req *r, const json_t *pi, bool ok)
{
  const json_t *na = json_object_get(json_object_get(pi, "next_action"), "redirect_to_url");
  const char *ret = json_string_value(json_object_get(na, "return_url"));
  if (ret && *ret) {
    const char *kind = is_setup(json_string_value(json_object_get(pi, "id"))) ? "setup_intent" : "payment_intent";
    free(r->location);
    r->location = tp_return_location(ret, kind, json_string_value(json_object_get(pi, "id")),
                                     json_string_value(json_object_get(pi, "client_secret")), ok ? "succeeded" : "failed");
    html(r, 303, "<!doctype html><title>Redirecting</title>");
  } else
    html(r, 200, ok ? "<!doctype html><title>Done</title><p id=\"result\">Authentication complete.</p>"
                    : "<!doctype html><title>Done</title><p id=\"result\">Authentication failed.</p>");
}

/* Whether the card an intent's challenge was for is still the intent's to
 * use at its approval: detached meanwhile (for good, whatever
 * setup_future_usage says: payment_method_consumed), or attached to a
 * customer the intent is not for, one made with it while the challenge was
 * out (payment_method_unexpected_state); TP_ERR_OK when it still is. */
static enum tp_err card_moved(const json_t *pm, const json_t *intent)
{
  if (json_is_true(json_object_get(json_object_get(pm, "turnpike"), "detached")))
    return TP_ERR_PAYMENT_METHOD_CONSUMED;
  const char *owner = json_string_value(json_object_get(pm, "customer"));
  const char *cus = json_string_value(json_object_get(intent, "customer"));
  return owner && !(cus && strcmp(owner, cus) == 0) ? TP_ERR_PAYMENT_METHOD_UNEXPECTED_STATE : TP_ERR_OK;
}

/* A SetupIntent's challenge answered (si owned, its lock held): verify
 * and save the card, or fail, then send the customer back. */
static void setup_done(struct tp_req *r, json_t *si, bool approved)
{
  const char *pm_id = json_string_value(json_object_get(si, "payment_method"));
  char pm_lock[TP_ID_MAX] = "";
  if (pm_id && !tp_lock_try(pm_id)) {
    /* The card busy a moment (another request on it): 429, which the
     * dispatcher waits out and runs again (run_handler), not a dead end. */
    json_decref(si);
    tp_lock_release(r->path_id);
    html(r, 429, "<!doctype html><title>Busy</title><p>Try again.</p>");
    return;
  }
  if (pm_id)
    tp_scopy(pm_lock, sizeof pm_lock, pm_id);
  /* And its customer's, which the card may be saved to (tp_si_finish). */
  char cus_lock[TP_ID_MAX] = "";
  if (approved && !tp_si_customer_lock(r, si, cus_lock)) {
    json_decref(si);
    if (pm_lock[0])
      tp_lock_release(pm_lock);
    tp_lock_release(r->path_id);
    html(r, 429, "<!doctype html><title>Busy</title><p>Try again.</p>");
    return;
  }
  json_t *pm = pm_lock[0] ? tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, pm_id) : NULL;
  /* The card deleted while the challenge was out (a card source removed, or
   * its customer deleted): the setup fails, as for a failed challenge, not
   * a 500 the customer meets at every try. */
  bool gone = pm_lock[0] && !pm && !tp_store_read_failed;
  if (gone) /* the attempt and the error still name it */
    pm = tp_pack("{s:s, s:s}", "id", pm_lock, "object", "payment_method");
  /* Or no longer this SetupIntent's to use: a setup that succeeded would
   * leave its customer a card it cannot use. */
  enum tp_err refuse = gone ? TP_ERR_PAYMENT_METHOD_CONSUMED : pm ? card_moved(pm, si) : TP_ERR_OK;
  /* Or its customer deleted meanwhile (under that customer's lock, taken
   * above): nothing to set the card up for, as its confirmation now says */
  bool cus_gone = !refuse && cus_lock[0] && tp_store_live(&tp_app.store, TP_K_CUSTOMER, r->merchant.id, cus_lock) == 0;
  if (cus_gone)
    refuse = TP_ERR_RESOURCE_MISSING;
  struct tp_card_info ci;
  memset(&ci, 0, sizeof ci);
  if (!refuse && (!pm || (approved && tp_vault_load(r->merchant.id, pm_id, &ci) != 0))) {
    json_decref(pm);
    json_decref(si);
    if (pm_lock[0])
      tp_lock_release(pm_lock);
    if (cus_lock[0])
      tp_lock_release(cus_lock);
    tp_lock_release(r->path_id);
    html(r, pm_lock[0] ? 500 : 409, "<!doctype html><title>Error</title><p>The card could not be loaded.</p>");
    return;
  }
  /* Where to send the customer, as the SetupIntent says before finishing. */
  json_t *back = tp_pack("{s:O, s:O, s:O}", "id", json_object_get(si, "id"), "client_secret",
                         json_object_get(si, "client_secret"), "next_action", json_object_get(si, "next_action"));
  struct tp_cs *cs = tp_cs_new();
  json_t *err;
  if (approved && !refuse) {
    json_t *attempt = NULL;
    err = tp_si_finish(r, cs, si, pm, ci.pan, true, &attempt);
    json_decref(attempt);
  } else {
    char msg[160];
    snprintf(msg, sizeof msg, "No such customer: '%.64s'", cus_lock);
    err = cus_gone ? tp_error_object(refuse, "customer", msg)
          : refuse ? tp_error_object(refuse, "payment_method", NULL)
                   : tp_error_object(TP_ERR_SETUP_INTENT_AUTHENTICATION_FAILURE, NULL, NULL);
    if (pm)
      json_object_set(err, "payment_method", pm);
    json_object_set(si, "last_setup_error", err);
    json_object_set_new(si, "status", json_string("requires_payment_method"));
    json_object_set_new(si, "next_action", json_null());
    json_object_set_new(si, "payment_method", json_null());
    json_decref(tp_si_attempt(r, cs, si, pm, "failed", err, false));
    tp_put_emit(cs, r, r->merchant.id, TP_K_SETUP_INTENT, "setup_intent.setup_failed", si);
  }
  tp_card_wipe(&ci, sizeof ci);
  back_to_merchant(r, back, err == NULL);
  json_decref(back);
  json_decref(err);
  json_decref(pm);
  json_decref(si);
  const char *locks[3] = {r->path_id, pm_lock, cus_lock};
  tp_commit_and_reply_locks(r, cs, locks, 3);
}

/* The payment fails at the page (the challenge failed, or its card was
 * spent meanwhile): back to requires_payment_method with the error e, the
 * customer sent back to the merchant. Owns pi; releases its lock. */
static void fail_payment_why(struct tp_req *r, json_t *pi, enum tp_err e, const char *param, const char *msg)
{
  json_t *err = tp_error_object(e, param, msg);
  const char *pm_id = json_string_value(json_object_get(pi, "payment_method"));
  json_t *pm = pm_id ? tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, pm_id) : NULL;
  if (pm)
    json_object_set_new(err, "payment_method", pm);
  back_to_merchant(r, pi, false);
  json_object_set_new(pi, "last_payment_error", err);
  json_object_set_new(pi, "status", json_string("requires_payment_method"));
  json_object_set_new(pi, "next_action", json_null());
  json_object_set_new(pi, "payment_method", json_null());
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, r->merchant.id, pi);
  tp_emit(cs, r, r->merchant.id, "payment_intent.payment_failed", pi);
  json_decref(pi);
  tp_commit_and_reply_unlock(r, cs, r->path_id);
}

static void fail_payment(struct tp_req *r, json_t *pi, enum tp_err e)
{
  fail_payment_why(r, pi, e, e == TP_ERR_PAYMENT_METHOD_CONSUMED ? "payment_method" : NULL, NULL);
}

void tp_h_3ds_submit(struct tp_req *r)
{
  struct tp_params_error pe;
  const char *tok = tp_pstr(r->params, "token"), *result = tp_pstr(r->params, "result");
  const char *acct_p = tp_pstr(r->params, "account");
  if (tp_params_check(r->params, spec_page, &pe) != 0 || !valid_id(r->path_id) || !token_ok(r->path_id, tok) ||
      (acct_p && !valid_account(acct_p)) || !result ||
      (strcmp(result, "approve") != 0 && strcmp(result, "fail") != 0)) {
    html(r, 400, "<!doctype html><title>Bad request</title><p>This authentication request is not valid.</p>");
    return;
  }
  /* The page is not authenticated by API key: find the merchant from the PI. */
  if (!tp_lock_try(r->path_id)) {
    /* 429: the dispatcher waits for the lock (run_handler), as for the API */
    html(r, 429, "<!doctype html><title>Busy</title><p>Try again.</p>");
    return;
  }
  r->customer_page = true;
  json_t *pi = NULL;
  bool setup = is_setup(r->path_id);
  /* account= (in links since migration 0010) makes it one key lookup; a
   * link without it is looked up across merchants. */
  if (tp_app.store.ops->merchant_of &&
      tp_app.store.ops->merchant_of(tp_app.store.cls, r->path_id, acct_p, &r->merchant) == 1)
    pi = tp_store_get_json(&tp_app.store, setup ? TP_K_SETUP_INTENT : TP_K_PAYMENT_INTENT, r->merchant.id,
                           r->path_id);
  frame_origin_of(r, pi); /* its answer shows in the same frame as the page */
  if (!pi || strcmp(json_string_value(json_object_get(pi, "status")), "requires_action") != 0 ||
      !token_current(pi, tok)) {
    tp_lock_release(r->path_id);
    json_decref(pi);
    html(r, 409, "<!doctype html><title>Done</title><p>This payment no longer needs this authentication.</p>");
    return;
  }
  if (setup) {
    setup_done(r, pi, strcmp(result, "approve") == 0);
    return;
  }
  if (strcmp(result, "fail") == 0) {
    fail_payment(r, pi, TP_ERR_SCA_CHALLENGE_FAILED);
    return;
  }
  const char *pm_id = json_string_value(json_object_get(pi, "payment_method"));
  const char *method = json_string_value(json_object_get(pi, "confirmation_method"));
  if (method && strcmp(method, "manual") == 0) {
    /* Approved, confirmation_method manual: back to requires_confirmation
     * for the server to confirm (Stripe), which then authorizes without a
     * second challenge (tp_pi_authenticated). */
    back_to_merchant(r, pi, true);
    tp_mark(pi, "authenticated",
            tp_pack("{s:s?, s:O, s:O}", "payment_method", pm_id, "amount", json_object_get(pi, "amount"),
                    "currency", json_object_get(pi, "currency")));
    json_object_set_new(pi, "status", json_string("requires_confirmation"));
    json_object_set_new(pi, "next_action", json_null());
    struct tp_cs *cs = tp_cs_new();
    tp_cs_put(cs, TP_K_PAYMENT_INTENT, r->merchant.id, pi);
    json_decref(pi);
    tp_commit_and_reply_unlock(r, cs, r->path_id);
    return;
  }
  /* Approved: authorize now, through the normal pipeline. */
  struct tp_card_info ci;
  json_t *pm = pm_id ? tp_store_get_json(&tp_app.store, TP_K_PAYMENT_METHOD, r->merchant.id, pm_id) : NULL;
  if (pm_id && !pm && !tp_store_read_failed) {
    /* The card deleted while the challenge was out (a card source removed,
     * or its customer deleted): the payment fails and the customer goes
     * back, not a 500 at every try with the payment stuck. */
    fail_payment(r, pi, TP_ERR_PAYMENT_METHOD_CONSUMED);
    return;
  }
  if (!pm || tp_vault_load(r->merchant.id, pm_id, &ci) != 0) {
    json_decref(pm);
    json_decref(pi);
    tp_lock_release(r->path_id);
    html(r, 500, "<!doctype html><title>Error</title><p>The card could not be loaded.</p>");
    return;
  }
  tp_card_exp_of(&ci, pm);
  /* No longer this payment's to use: refused, as a confirmation would
   * refuse it now. */
  enum tp_err moved = card_moved(pm, pi);
  if (moved != TP_ERR_OK) {
    tp_card_wipe(&ci, sizeof ci);
    json_decref(pm);
    fail_payment(r, pi, moved);
    return;
  }
  /* A card to be saved to a customer deleted while the challenge was out:
   * failed, as a confirmation is refused now (it paid and saved nothing) */
  if (tp_pi_save_target_gone(r, pi)) {
    tp_card_wipe(&ci, sizeof ci);
    json_decref(pm);
    fail_payment_why(r, pi, TP_ERR_RESOURCE_MISSING, "customer", TP_PI_SAVE_TARGET_GONE);
    return;
  }
  /* A PaymentMethod attached to no customer pays once (consume_unattached),
   * here as in a confirmation: held from now to the outcome's commit, and
   * refused if another payment spent it while this challenge was out (two
   * PaymentIntents waiting on one card each paid when approved). */
  char pm_lock[TP_ID_MAX] = "";
  enum tp_pm_hold hold = tp_pm_hold(r, pi, pm, pm_lock);
  if (hold == TP_PM_BUSY || hold == TP_PM_SPENT || hold == TP_PM_GONE || hold == TP_PM_ATTACHED) {
    tp_card_wipe(&ci, sizeof ci);
    json_decref(pm);
    if (hold != TP_PM_BUSY) {
      fail_payment(r, pi,
                   hold == TP_PM_ATTACHED ? TP_ERR_PAYMENT_METHOD_UNEXPECTED_STATE : TP_ERR_PAYMENT_METHOD_CONSUMED);
      return;
    }
    json_decref(pi);
    tp_lock_release(r->path_id);
    html(r, 429, "<!doctype html><title>Busy</title><p>Try again.</p>");
    return;
  }
  back_to_merchant(r, pi, true);
  unsigned status = r->status;
  char *page = r->resp;
  size_t page_len = r->resp_len;
  r->resp = NULL;
  const char *ret = json_string_value(
    json_object_get(json_object_get(json_object_get(pi, "next_action"), "redirect_to_url"), "return_url"));
  char *return_url = ret && *ret ? strdup(ret) : NULL;
  json_object_set_new(pi, "status", json_string("processing"));
  json_object_set_new(pi, "next_action", json_null());
  struct tp_pay *p = tp_pay_new(NULL, &r->merchant);
  p->return_url = return_url;
  p->pi = pi;
  p->pm = pm;
  p->three_ds_done = true;
  p->outcome = tp_outcome_authorize;
  tp_scopy(p->lock_id, sizeof p->lock_id, r->path_id);
  if (pm_lock[0])
    tp_scopy(p->pm_lock_id, sizeof p->pm_lock_id, pm_lock);
  const char *cm = tp_pi_card_option(pi, "capture_method");
  tp_pay_attempt(p, "authorize", json_integer_value(json_object_get(pi, "amount")),
                 json_string_value(json_object_get(pi, "currency")));
  p->att.capture = !(cm && strcmp(cm, "manual") == 0);
  tp_scopy(p->att.vault_token, sizeof p->att.vault_token, pm_id);
  p->call.kind = TP_PROC_AUTHORIZE;
  tp_scopy(p->call.pan, sizeof p->call.pan, ci.pan);
  p->call.exp_month = ci.exp_month;
  p->call.exp_year = ci.exp_year;
  tp_card_wipe(&ci, sizeof ci);
  /* The browser gets the redirect once the outcome is committed. */
  p->r = r;
  p->params = NULL;
  p->redirect_status = status;
  p->redirect_body = page;
  p->redirect_len = page_len;
  struct tp_cs *cs = tp_cs_new();
  tp_cs_put(cs, TP_K_PAYMENT_INTENT, r->merchant.id, pi);
  tp_req_suspend(r);
  tp_pay_run(p, cs);
}
