/* Building the Stripe objects every resource shares: events, payment
 * methods, expansion, list envelopes, per-object locks. */
#ifndef TP_OBJECTS_H
#define TP_OBJECTS_H
#include <jansson.h>
#include <stdbool.h>

#include "api/http.h"
#include "api/params.h"
#include "core/card.h"
#include "store/store.h"

/* The API version whose shapes Turnpike's objects have (stripe-node 23.1's
 * pin): events say it, unless a webhook endpoint asked for its own. */
#define TP_API_VERSION "2026-10-28.endive"

/* Add an event of `type` about `object` (copied) to the change set. */
void tp_emit(struct tp_cs *cs, const struct tp_req *r, const char *merchant, const char *type, const json_t *object);
/* A *.updated event: tp_emit with data.previous_attributes, the old values
 * of what changed from before to object (Stripe); none when nothing did. */
/* data.previous_attributes of a change from before to after: the keys that
 * changed with their old values, inside objects only what changed there,
 * keys added as null. */
json_t *tp_prev_attrs(const json_t *before, const json_t *after);
/* An event about object with data.previous_attributes = prev (as given:
 * the top-level values before, for an event that is not an update). */
void tp_emit_prev(struct tp_cs *cs, const struct tp_req *r, const char *merchant, const char *type,
                  const json_t *object, const json_t *prev);
void tp_emit_update(struct tp_cs *cs, const struct tp_req *r, const char *merchant, const char *type,
                    const json_t *before, const json_t *object);
/* tp_cs_put of object (kind) and tp_emit about it, serialising it once. */
void tp_put_emit(struct tp_cs *cs, const struct tp_req *r, const char *merchant, enum tp_kind kind, const char *type,
                 const json_t *object);
/* tp_put_emit that also hands back a copy of object's compact JSON text
 * (malloc'ed, NUL-terminated) in *text, for a reply of the same object. */
void tp_put_emit_text(struct tp_cs *cs, const struct tp_req *r, const char *merchant, enum tp_kind kind,
                      const char *type, const json_t *object, char **text);

/* Card fingerprint: HMAC(merchant key, PAN), 16 base62-ish chars. Same card
 * and merchant give the same fingerprint; it reveals nothing of the number. */
void tp_card_fingerprint(const struct tp_merchant *m, const char *pan, char out[17]);
/* Mask the fingerprint keys of merchants stored before migration 0024,
 * keeping the key (and so every fingerprint) what it was; through the
 * store's writer connection: call before the writer thread starts. */
int tp_fp_keys_mask(struct tp_store *st);
/* Refuse (-1, logged) a vault.key other than the one the store was used
 * with (a check value in meta, written at the first start that has none). */
int tp_vault_key_check(struct tp_store *st);
/* disputes.c: open the dispute a captured charge ch was marked for (its
 * turnpike.dispute, from the test card), into cs: the dispute, its events,
 * a chargeback's ledger adjustment, ch disputed (put again); or, for
 * "early_fraud_warning", the issuer's early fraud warning. No-op for an
 * unmarked charge. The network opens them, not the request that made the
 * charge: their events' request is null (a handler that skips events of its
 * own Idempotency-Keys must not skip a chargeback). */
void tp_dispute_open(struct tp_cs *cs, const char *merchant, json_t *ch);
/* [disputes] fee and fee.CUR are amounts of their currencies (fee: of every
 * one); false after logging the first that is not. */
bool tp_disputes_config_ok(void);
/* A charge refunded in full: its early fraud warning (turnpike.efw), if
 * any, is no longer actionable (radar.early_fraud_warning.updated). */
void tp_efw_settle(struct tp_cs *cs, const struct tp_req *r, const char *merchant, const json_t *ch);
/* Does a dispute on this charge forbid refunding it (a chargeback)? */
bool tp_charge_dispute_blocks_refund(const char *merchant, const char *charge_id);

/* A new card PaymentMethod object for validated card data; adds the vault
 * record (sealed PAN) and the object to cs. Returns the object (owned). */
/* A new Refund of amount on charge ch (id, currency, payment_intent taken
 * from it), with reason (NULL: none), metadata (copied; NULL: {}) and status. */
json_t *tp_refund_object(int64_t amount, const json_t *ch, const char *reason, const json_t *metadata,
                         const char *status);
/* The part of a charge's amount_refunded that is the uncaptured rest of a
 * partial capture (released, not refunded money; 0 when none). */
int64_t tp_charge_released(const json_t *ch);

/* allow_redisplay: always, limited or unspecified (NULL: unspecified). */
/* made_for: the PaymentIntent whose request makes it ("" or NULL none), which
 * alone may pay with it once it has (tp_pm_usable). */
json_t *tp_pm_create_card(struct tp_cs *cs, const struct tp_merchant *m, const struct tp_card_info *ci,
                          const json_t *billing_details, const json_t *metadata, const char *allow_redisplay,
                          const char *made_for);
/* A PaymentMethod's allow_redisplay values (Stripe's). */
extern const char *const tp_allow_redisplay[];

/* Read card data from a params object {number, exp_month, exp_year, cvc},
 * {encrypted} (a JWE of those) or {token} (a Stripe test token, tok_visa
 * ..., alone) (already type-checked) and validate it; on failure replies with the Stripe
 * card error (param "payment_method_data[card][number]" style, using prefix)
 * and returns false. cvc_out (>= 5 bytes) gets the CVC or "". */
bool tp_card_from_params(struct tp_req *r, const json_t *card, const char *param_prefix, struct tp_card_info *ci,
                         char *cvc_out);

/* True when this merchant has object id of kind (a deleted customer does
 * not count); else replies 404 "No such WHAT: 'id'" naming param (or 503
 * when the store cannot say) and returns false. */
bool tp_live_or_missing(struct tp_req *r, enum tp_kind kind, const char *id, const char *what, const char *param);
/* 404 resource_missing "No such WHAT: 'ID'" naming param. */
void tp_reply_missing(struct tp_req *r, const char *what, const char *id, const char *param);
/* tp_reply_missing for the request's path id. */
void tp_reply_no_such(struct tp_req *r, const char *what, const char *param);
/* Is pm_id one of the merchant's PaymentMethods (or a pm_card_* test id)?
 * Otherwise replies resource_missing and returns false. */
bool tp_pm_exists(struct tp_req *r, const char *pm_id, const char *param);
/* Is id one of Stripe's test PaymentMethods (pm_card_visa ...)? */
bool tp_pm_test_id(const char *id);
/* A test token (pm_card_visa ...) in pi's payment_method becomes a new
 * PaymentMethod in cs, as Stripe creates one when the token is set: false
 * after an error reply. */
bool tp_pm_materialize(struct tp_req *r, struct tp_cs *cs, json_t *pi);
/* Resolve a payment method id for a merchant: a stored pm_..., or a test id
 * (Stripe's pm_card_visa, pm_card_gb, pm_card_chargeDeclined..., the table
 * in objects.c) which creates a new PM like Stripe does. On
 * success returns the PM object and fills ci with the card from the vault
 * (PAN in memory only). On failure replies 404/400 and returns NULL. */
json_t *tp_pm_resolve(struct tp_req *r, struct tp_cs *cs, const char *pm_id, struct tp_card_info *ci);
/* A card PaymentMethod about to be attached to a customer passes its
 * issuer's check: Stripe's decline test cards (all but
 * 4000000000000341) and a card expired since it was saved are refused with
 * their card_error, as a card source is. Replies and returns false if not.
 * made: the card of a PaymentMethod made by this request (not in the vault
 * yet), or NULL to read the stored one's. */
bool tp_pm_attach_check(struct tp_req *r, const json_t *pm, const struct tp_card_info *made);
/* Whether a CVC came with PaymentMethod pm's card (its card.checks.cvc_check
 * is set), so that an issuer has one to check. */
bool tp_pm_has_cvc(const json_t *pm);
/* A card PaymentMethod's address checks as Stripe shows them: "unchecked"
 * for the billing address's line1 / postal_code when given (a verdict
 * already there is kept), null when not. */
void tp_pm_address_checks(json_t *pm);
/* A customer's card source (the legacy Cards API, api/sources.c) from a
 * card token source (one of POST /v1/tokens, spent here, or a test token
 * tok_visa ...): a card PaymentMethod whose id begins "card_", attached to
 * customer, with turnpike.source "card", put in cs. NULL after replying
 * (param names the parameter in errors). */
json_t *tp_card_source_create(struct tp_req *r, struct tp_cs *cs, const char *source, const char *param,
                              const char *customer, const json_t *metadata);
/* obj.turnpike[key] = value (taken), the turnpike object made if missing:
 * Turnpike's own marks on an object, kept together. */
void tp_mark(json_t *obj, const char *key, json_t *value);
/* ci's expiry from the PaymentMethod pm (which an update may have changed since the card was vaulted). */
void tp_card_exp_of(struct tp_card_info *ci, const json_t *pm);
/* A PaymentMethod detached from its customer, or one that paid without
 * being attached to one, is used up, as on Stripe: not to pay or be
 * attached again. tp_pm_spent says so; tp_pm_usable returns false after
 * replying 400 payment_method_consumed. */
bool tp_pm_spent(const struct tp_req *r, const json_t *pm);
/* Reply 400 payment_method_consumed (naming source on the Charges API). */
void tp_reply_pm_consumed(struct tp_req *r);
bool tp_pm_usable(struct tp_req *r, const json_t *pm);
/* The cardholder's fields of a Card object (name, address_line1 ...) in obj
 * at most TP_ADDRESS_FIELD_MAX; false after replying 400 naming
 * prefix[field] (prefix NULL: the field alone). */
bool tp_card_holder_ok(struct tp_req *r, const json_t *obj, const char *prefix);
/* A brand as Stripe's Card object spells it ("Visa", "American Express"
 * ...) from its PaymentMethod spelling ("visa", "amex" ...). */
const char *tp_card_object_brand(const char *brand);
/* A card PaymentMethod as Stripe's Card object (a customer's source). */
json_t *tp_card_view(const json_t *pm);
/* A list of customer's card sources, newest first (no paging set yet). */
void tp_card_sources_query(struct tp_list_query *q, const char *merchant, const char *customer);
/* pm is a card source (sources.c) of customer (NULL: of anyone). */
bool tp_is_card_source(const json_t *pm, const char *customer);
/* Detach pm from its customer within cs, for good (tp_pm_usable refuses it
 * after), and emit payment_method.detached; the customer's defaults are the
 * caller's. */
void tp_pm_detach(struct tp_cs *cs, const struct tp_req *r, json_t *pm);
/* Delete card source pm within cs (its PaymentMethod row and vault record)
 * and emit customer.source.deleted; the customer's default is the caller's. */
void tp_card_source_delete(struct tp_cs *cs, const struct tp_req *r, const json_t *pm);
/* The id of the customer's newest legacy card other than except, into out (TP_ID_MAX)
 * ("" when it has none): the default_source after a default card goes, as
 * Stripe's "delete a card" documents. */
void tp_newest_other_card(const char *merchant, const char *customer, const char *except, char *out);

/* Load a vaulted card for a PM id. 0 on success. */
int tp_vault_load(const char *merchant, const char *pm_id, struct tp_card_info *ci);

/* Expand fields listed in params "expand" (array of strings) on obj, in
 * place: "latest_charge", "customer", "payment_method", "payment_intent",
 * "charge", "data.object" are looked up by id (first in `known`, an array of
 * objects just built, then in the store). Unknown fields -> false and a 400
 * reply. Nested "data.x" paths apply to list items. */
bool tp_expand(struct tp_req *r, json_t *obj, const json_t *known);

/* Reply with a list envelope for a store query built from params limit,
 * starting_after, ending_before, created (range) and the optional filter
 * column; validates limit 1..100. url is like "/v1/customers". */
void tp_reply_list(struct tp_req *r, struct tp_list_query *q, const char *url);
/* A list endpoint whole: params checked against spec, paging, and the
 * kind's two indexed columns (tp_kinds[kind].col) as filters named alike. */
void tp_reply_list_by(struct tp_req *r, const struct tp_pspec *spec, enum tp_kind kind, const char *url);
/* tp_reply_list, with fix(data, arg) run on the page's items (a JSON
 * array) before expansion. */
void tp_reply_list_fixed(struct tp_req *r, struct tp_list_query *q, const char *url, void (*fix)(json_t *, void *),
                         void *arg);

/* limit (1..100) into *limit when given; false after replying 400. */
bool tp_param_limit(struct tp_req *r, int64_t *limit);
/* starting_after and ending_before (before NULL: the list takes only the
 * first), "" as not given, not both; false after replying 400. */
bool tp_param_cursors(struct tp_req *r, const char **after, const char **before);
/* Fill q->created_gte/lte and paging from r->params; false after replying 400. */
bool tp_list_params(struct tp_req *r, struct tp_list_query *q);

/* A processor attempt as the operator API shows it (turnpike.attempt). */
struct tp_attempt;
json_t *tp_attempt_json(const struct tp_attempt *a);
/* Has PaymentIntent pi_id a call whose outcome is unknown (attempt "sent")?
 * 1 / 0, -1 on a store error. Then no capture, void or refund may start. */
int tp_pi_unsettled(const char *merchant, const char *pi_id);
/* tp_pi_unsettled for a request: replies 409 attempt_in_flight (or 503)
 * and returns true when there is one (or on error). */
bool tp_refuse_unsettled(struct tp_req *r, const char *pi_id);

/* The return_url with kind=id, kind_client_secret and redirect_status=status
 * added to its query (before a #fragment, RFC 3986 3.5), percent-encoded
 * where a URI may not hold it: malloc'd, NULL without memory. */
char *tp_return_location(const char *return_url, const char *kind, const char *id, const char *secret,
                         const char *status);
/* redirect_status for an intent after its challenge was approved and its
 * authorization sent: succeeded (it paid, or holds the amount), processing
 * (the processor's outcome is not known yet), else failed (declined, or
 * every processor failed: back to requires_confirmation). */
const char *tp_redirect_status(const json_t *intent);

/* The merchant's Balance object (GET /v1/balance) from the ledger, with
 * moves (pending amounts made available by a change set not committed yet)
 * applied; NULL when the store cannot say. */
struct tp_balance_move {
  char currency[4];
  int64_t amount;
};
json_t *tp_balance_object(const char *merchant, const struct tp_balance_move *moves, size_t nmoves);

/* Per-object locks so two requests never change one object at once.
 * Try returns false (and the caller replies 429 lock_timeout) if held, and
 * names the id in tp_lock_busy_id (this thread's last refusal): the
 * dispatcher (server.c run_handler) then waits for it, as Stripe does, and
 * runs the handler again; the 429 reaches the client only when the wait
 * (TP_LOCK_WAIT_MS) ends with the object still busy. */
bool tp_lock_try(const char *id);
void tp_lock_release(const char *id);
extern _Thread_local char tp_lock_busy_id[64]; /* TP_ID_MAX */
/* Locks are by id, for the whole gateway. Id is held by another merchant's
 * request (tp_lock_owner): nothing for this merchant's request to wait
 * for, since no object of the other merchant's is this one's. */
bool tp_lock_foreign(const char *merchant, const char *id);
/* The merchant whose request this thread's tp_lock_try calls are for
 * (run_handler sets it around a handler; "" elsewhere: not known). */
void tp_lock_owner(const char *merchant);
/* Until tp_lock_pretend(NULL), this thread's tp_lock_try(id) succeeds and
 * tp_lock_release(id) does nothing, the lock left to whoever holds it: a
 * request run again past a foreign id (run_handler), whose reads under its
 * merchant find nothing there and answer as for an id that never existed,
 * at once (a wait, then 429, told another merchant the id exists and is
 * busy). */
void tp_lock_pretend(const char *id);
/* Call wake(arg) once, from another thread, when id is released or at
 * deadline_ms (tp_mono_ms), whichever is first: 1. 0 (and no call) if id
 * is not held any more; -1 if it cannot wait (no memory, no timer thread).
 * wake must not take a lock of this module. */
int tp_lock_wait(const char *id, int64_t deadline_ms, void (*wake)(void *arg), void *arg);
/* Stop and join the waiters' timer thread, if it was started (at exit). */
void tp_lock_wait_stop(void);

/* Current time in Unix seconds (one place to stub). */
#include "util.h"

/* Common parameter specs. */
extern const struct tp_pspec tp_spec_card[];
extern const struct tp_pspec tp_spec_billing_details[];
extern const struct tp_pspec tp_spec_range[];
extern const struct tp_pspec tp_spec_address[];
/* A PaymentIntent's or charge's shipping (with carrier and tracking_number). */
extern const struct tp_pspec tp_spec_shipping[];

/* Why a Stripe parameter is refused (TP_P_UNSUPPORTED specs' choices): the
 * feature Turnpike does not have, named in the 400. */
extern const char *const tp_why_connect[];         /* connected accounts, fees, transfers */
extern const char *const tp_why_customer_account[]; /* Accounts v2 */
extern const char *const tp_why_mandates[];
extern const char *const tp_why_hooks[];
extern const char *const tp_why_pm_configuration[];
extern const char *const tp_why_confirmation_token[];
extern const char *const tp_why_amount_details[];  /* Level 2/3 data, tips */
extern const char *const tp_why_tax[];
extern const char *const tp_why_test_clock[];
extern const char *const tp_why_customer_balance[];
extern const char *const tp_why_pm_type[];
extern const char *const tp_why_networks[];
extern const char *const tp_why_invoices[];
extern const char *const tp_why_card_option[];
/* Stripe's card networks (payment_method_options[card][network]). */
extern const char *const tp_card_networks[];
extern const char *const tp_why_external_3ds[];
/* The hashes of Stripe's other payment method types (PaymentMethod create,
 * payment_method_data): refused as unsupported, not unknown. */
#define TP_SPEC_OTHER_PM_TYPES \
  {"acss_debit", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"affirm", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"afterpay_clearpay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"alipay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"alma", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"amazon_pay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"au_becs_debit", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"bacs_debit", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"bancontact", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"billie", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"bizum", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"blik", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"boleto", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"cashapp", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"crypto", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"custom", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"customer_balance", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"eps", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"fpx", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"giropay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"grabpay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"ideal", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"interac_present", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"kakao_pay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"klarna", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"konbini", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"kr_card", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"link", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"mb_way", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"mobilepay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"multibanco", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"naver_pay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"nz_bank_account", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"oxxo", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"p24", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"pay_by_bank", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"payco", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"paynow", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"paypal", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"paypay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"payto", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"pix", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"promptpay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"revolut_pay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"samsung_pay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"satispay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"scalapay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"sepa_debit", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"sequra", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"sofort", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"sunbit", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"swish", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"twint", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"upi", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"us_bank_account", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, \
  {"wechat_pay", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}, {"zip", TP_P_UNSUPPORTED, NULL, tp_why_pm_type}
/* radar_options[session]: taken and not used (no Radar sessions). */
extern const struct tp_pspec tp_spec_radar_options[];
/* What every list endpoint takes (tp_list_params). */
#define TP_SPEC_PAGING                                                                                  \
  {"limit", TP_P_INT, NULL, NULL}, {"starting_after", TP_P_STRING, NULL, NULL},                        \
  {"ending_before", TP_P_STRING, NULL, NULL}, {"created", TP_P_RANGE, NULL, NULL},                     \
  {"expand", TP_P_STRLIST, NULL, NULL}

/* Stripe's limits on names, phone numbers and address lines. */
#define TP_NAME_MAX 256
#define TP_PHONE_MAX 20
#define TP_ADDRESS_FIELD_MAX 500

/* billing_details params (param names them in errors) checked in place:
 * strings at most TP_ADDRESS_FIELD_MAX, email an address, address[country]
 * two letters (upper-cased here). False after replying. */
bool tp_billing_details_ok(struct tp_req *r, json_t *bd, const char *param);
/* params[key], when set, is an email address (param names it in the 400);
 * false after replying. */
bool tp_email_param_ok(struct tp_req *r, const json_t *params, const char *key, const char *param);
/* `card`, the older name of `source` (Stripe API versions before
 * 2015-02-18, which ActiveMerchant and omnipay still send): a card token or
 * card id given as `card` becomes `source` in r->params. False after
 * replying: both given, or a card hash (raw numbers are not a source here). */
bool tp_card_param_alias(struct tp_req *r);
/* A request pinned (Stripe-Version) to an API version before 2022-11-15,
 * whose objects carried lists since left to expand[]: a PaymentIntent its
 * `charges`, a charge its `refunds`, and before 2020-08-27 a customer its
 * `sources`. Libraries that pin such versions (ActiveMerchant, Laravel
 * Cashier) read them. */
bool tp_legacy_lists_wanted(const struct tp_req *r);
/* Add those lists to obj (or to each item of a list), as such a version
 * showed them; known: objects this request is writing, as they are now. */
void tp_legacy_lists(struct tp_req *r, json_t *obj, const json_t *known);
/* Set obj[key] from the string param p[key] (param names it in errors):
 * absent leaves it, unset ("") makes it null, longer than max is a 400.
 * false after replying. */
bool tp_set_string(struct tp_req *r, json_t *obj, const json_t *p, const char *key, const char *param, size_t max);
/* Stripe's address object (all six keys, country upper-cased) from address
 * params; NULL after replying. */
json_t *tp_address_build(struct tp_req *r, const json_t *p, const char *param);
/* Stripe's shipping object from shipping params: address and name required;
 * tracking adds carrier and tracking_number (a payment's shipping; a
 * customer's has neither). json null when unset; NULL after replying. */
json_t *tp_shipping_build(struct tp_req *r, const json_t *v, bool tracking);

/* Check r->params against spec; replies 400 and returns false on failure. */
bool tp_check_params(struct tp_req *r, const struct tp_pspec *spec);
/* The spec of a request that takes nothing but expand[]. */
extern const struct tp_pspec tp_spec_expand_only[];

/* Helpers to read checked params. */
const char *tp_pstr(const json_t *params, const char *key);   /* NULL when absent or not a string */
/* A parameter given as null or "": Stripe's way to clear a field. */
bool tp_unset(const json_t *v);
/* Metadata update semantics: "" for the whole value clears it, a key with
 * "" removes that key, other keys are set. */
void tp_metadata_apply(json_t *obj, const json_t *v);
/* tp_metadata_apply, then false (replied 400 on metadata) when the object
 * would have more than TP_METADATA_MAX_KEYS keys: each request may set 50,
 * the object may hold 50 (Stripe). The object is then not to be stored. */
#define TP_METADATA_MAX_KEYS 50
bool tp_metadata_update(struct tp_req *r, json_t *obj, const json_t *v);
void tp_metadata_index_emptied(struct tp_cs *cs, enum tp_kind kind, const char *merchant, size_t keys_before,
                               const json_t *after);
/* Stripe's card rule for the three-decimal currencies (BHD, JOD, KWD, OMR,
 * TND; tp_amount_card_check): an amount whose last digit is not 0 gets 400
 * invalid_charge_amount on param. true when amount is fine. */
struct tp_currency;
bool tp_check_card_amount(struct tp_req *r, int64_t amount, const struct tp_currency *cur, const char *param);
/* A card's new expiry from exp_month / exp_year in card (a PaymentMethod
 * update's card[...], nested, or a card source update's own parameters),
 * the other kept, checked against the current UTC month as Stripe does,
 * and set on pm's card; false, answered, when refused. */
bool tp_pm_expiry_apply(struct tp_req *r, json_t *pm, const json_t *card, bool nested);
/* An error about an intent's state, the intent (as it stands) in it under
 * key ("payment_intent", "setup_intent"), as Stripe sends it (a
 * publishable key's reply is cut to its view by the server). */
void tp_intent_error(struct tp_req *r, const char *key, const json_t *intent, enum tp_err e, const char *param,
                     const char *msg);
/* Does pi save its card (setup_future_usage) for a customer deleted
 * since? Such a payment is refused (at confirm, at the 3-D Secure
 * approval), with this message: not naming the customer, whom a
 * publishable key's view of the PaymentIntent hides. */
bool tp_pi_save_target_gone(const struct tp_req *r, const json_t *pi);
#define TP_PI_SAVE_TARGET_GONE "The customer this payment was to save the card to was deleted."
#endif
