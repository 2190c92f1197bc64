/* Every endpoint handler, one family per file. */
#ifndef TP_HANDLERS_H
#define TP_HANDLERS_H
#include "api/http.h"
#include "api/params.h"
#include "util.h"

/* payment_intents.c */
void tp_h_pi_create(struct tp_req *r);
void tp_h_pi_retrieve(struct tp_req *r);
void tp_h_pi_update(struct tp_req *r);
void tp_h_pi_confirm(struct tp_req *r);
void tp_h_pi_capture(struct tp_req *r);
void tp_h_pi_cancel(struct tp_req *r);
void tp_h_pi_list(struct tp_req *r);
void tp_h_pi_search(struct tp_req *r);
void tp_h_pi_increment(struct tp_req *r);
void tp_h_pi_attempts(struct tp_req *r); /* attempts.c: processor calls of a PaymentIntent */
void tp_h_attempts_unsettled(struct tp_req *r); /* attempts.c: operator, unknown outcomes */
void tp_h_attempt_resolve(struct tp_req *r);
void tp_h_request_retrieve(struct tp_req *r); /* requests.c: a recent request (request_log_url) */
/* The 3-D Secure challenge token for a PaymentIntent or SetupIntent (32 hex
 * chars). */
void tp_3ds_token(const char *pi_id, char out[65]);
void tp_3ds_token_mac(const char *pi_id, const char *nonce16, char mac16[17]);
/* intent (a PaymentIntent or SetupIntent) waits for its customer's 3-D
 * Secure challenge: requires_action, next_action redirecting to the
 * challenge page and back to the request's return_url. */
void tp_await_3ds(struct tp_req *r, json_t *intent);
/* pm may be used with intent: attached to no customer or to intent's
 * (what names the intent in the error); false after replying 400. */
bool tp_pm_belongs(struct tp_req *r, const json_t *pm, const json_t *intent, const char *what);
/* What payment_intents.c shares with setup_intents.c. */
struct tp_cs;
struct tp_card_info;
extern const struct tp_pspec tp_spec_pmd[]; /* payment_method_data */
/* The PaymentMethod payment_method_data describes, created in cs (with its
 * vault record); its card in ci and cvc. NULL after replying. */
json_t *tp_pm_from_data(struct tp_req *r, struct tp_cs *cs, const json_t *pmd, struct tp_card_info *ci,
                        char cvc[8]);
/* Which PaymentMethod a confirmation of intent uses: payment_method_data
 * makes one in cs (its card in ci and cvc) and returns it in *made;
 * otherwise *pm_id names the payment_method parameter, else the intent's
 * own, else NULL, for the caller to resolve. False after replying (both
 * given, or the data refused). */
bool tp_confirm_pm_choice(struct tp_req *r, struct tp_cs *cs, const json_t *intent, json_t **made,
                          const char **pm_id, struct tp_card_info *ci, char cvc[8]);
/* An intent open to every automatic payment method names a return_url for
 * its confirmation unless redirects are off, the customer is away or a
 * Stripe SDK handles the action. False after replying. */
bool tp_redirect_allowed(struct tp_req *r, const json_t *intent);
/* automatic_payment_methods[enabled] (required in the hash) and
 * [allow_redirects] into intent, refused beside payment_method_types. */
/* Take the lock of si's customer (if any) into out (TP_ID_MAX; "" none):
 * false after replying 429 lock_timeout, which the dispatcher waits out. */
bool tp_si_customer_lock(struct tp_req *r, const json_t *si, char *out);
bool tp_apply_apm(struct tp_req *r, json_t *intent, const json_t *params);
/* Without confirm=true, none of only (NULL-terminated) may be sent:
 * Stripe's "can only be used with confirm=true". */
bool tp_confirm_only_ok(struct tp_req *r, const char *const *only);
/* Does this confirmation of intent (a PaymentIntent or SetupIntent) with
 * card pan and PaymentMethod pm need 3-D Secure: the issuer asks (test
 * cards, connectors/sandbox.c) or the intent's request_three_d_secure does. */
bool tp_wants_3ds(const json_t *intent, const char *pan, bool off_session, const json_t *pm);
/* A PaymentMethod attached to no customer (nor a card source, nor being
 * saved by pi's payment) pays once (consume_unattached): a payment holds
 * its lock from now to the outcome's commit, read afresh under it, so two
 * at once cannot both pay with it. FREE: nothing to hold; HELD: lock taken,
 * its id in lock; BUSY: another request holds it; SPENT, GONE: refused
 * (lock not kept). */
enum tp_pm_hold { TP_PM_FREE, TP_PM_HELD, TP_PM_BUSY, TP_PM_SPENT, TP_PM_GONE, TP_PM_ATTACHED };
enum tp_pm_hold tp_pm_hold(const struct tp_req *r, const json_t *pi, const json_t *pm, char lock[TP_ID_MAX]);
/* A manually confirmed PaymentIntent's passed challenge (turnpike.authenticated). */
bool tp_pi_authenticated(const json_t *pi, const json_t *pm);
void tp_pi_authenticated_drop(json_t *pi);
/* disputes.c */
void tp_h_dispute_retrieve(struct tp_req *r);
void tp_h_dispute_list(struct tp_req *r);
void tp_h_dispute_update(struct tp_req *r);
void tp_h_dispute_close(struct tp_req *r);
void tp_h_efw_list(struct tp_req *r);
void tp_h_efw_retrieve(struct tp_req *r);
/* A request made with a publishable key must name the intent's (a
 * PaymentIntent's or SetupIntent's) client_secret; replies and returns
 * false when it does not. */
bool tp_client_secret_ok(struct tp_req *r, const json_t *intent);
/* A publishable key's confirm changes nothing only the merchant decides
 * (off_session, capture_method, a lower request_three_d_secure); false
 * after replying. */
bool tp_publishable_confirm_ok(struct tp_req *r, const json_t *intent);
/* setup_intents.c */
void tp_h_si_create(struct tp_req *r);
void tp_h_si_retrieve(struct tp_req *r);
void tp_h_si_update(struct tp_req *r);
void tp_h_si_confirm(struct tp_req *r);
void tp_h_si_cancel(struct tp_req *r);
void tp_h_si_list(struct tp_req *r);
void tp_h_si_verify_microdeposits(struct tp_req *r);
/* PaymentIntent actions of payment methods other than cards
 * (verify_microdeposits, apply_customer_balance): 404 or 400. */
void tp_h_pi_not_card(struct tp_req *r);
/* The end of a SetupIntent's confirmation once its card is known (and, from
 * the 3-D Secure page, authenticated): the issuer's verification (the
 * test-card table), then si succeeded (pm saved to its customer, marked
 * authenticated) or back to requires_payment_method with last_setup_error.
 * Puts and events go into cs; returns the error object (owned) for a
 * failure, NULL on success. */
json_t *tp_si_finish(struct tp_req *r, struct tp_cs *cs, json_t *si, json_t *pm, const char *pan,
                     bool authenticated, json_t **attempt);
/* Put si's latest SetupAttempt (the id in its latest_attempt) in cs as it
 * stands: status, pm's card, the 3-D Secure result when authenticated, the
 * error (err, may be NULL). Returns it (owned; NULL without an attempt).
 * tp_si_finish hands its attempt out in *attempt the same way. */
json_t *tp_si_attempt(struct tp_req *r, struct tp_cs *cs, const json_t *si, const json_t *pm, const char *status,
                      const json_t *err, bool authenticated);
void tp_h_setup_attempt_list(struct tp_req *r);
/* encryption_key.c: public keys for client-side card encryption (JWE) */
void tp_h_encryption_key(struct tp_req *r);
/* three_ds.c: the simulated 3-D Secure challenge page */
void tp_h_3ds_page(struct tp_req *r);
void tp_h_3ds_submit(struct tp_req *r);
/* refunds.c */
void tp_h_refund_create(struct tp_req *r);
void tp_h_refund_retrieve(struct tp_req *r);
void tp_h_refund_update(struct tp_req *r);
void tp_h_refund_cancel(struct tp_req *r);
void tp_h_refund_list(struct tp_req *r);
void tp_h_charge_refund_list(struct tp_req *r);
void tp_h_charge_refund_retrieve(struct tp_req *r);
void tp_h_charge_refund_create(struct tp_req *r);
void tp_h_charge_refund(struct tp_req *r);
void tp_h_charge_refund_update(struct tp_req *r);
/* charges.c */
void tp_h_charge_retrieve(struct tp_req *r);
void tp_h_charge_update(struct tp_req *r);
void tp_h_charge_list(struct tp_req *r);
void tp_h_charge_search(struct tp_req *r);
void tp_h_charge_capture(struct tp_req *r);
void tp_h_charge_create(struct tp_req *r);
/* customers.c */
void tp_h_customer_create(struct tp_req *r);
void tp_h_customer_retrieve(struct tp_req *r);
void tp_h_customer_update(struct tp_req *r);
void tp_h_customer_delete(struct tp_req *r);
void tp_h_customer_list(struct tp_req *r);
void tp_h_customer_search(struct tp_req *r);
/* payment_methods.c */
void tp_h_pm_create(struct tp_req *r);
/* account.c */
void tp_h_account_retrieve(struct tp_req *r);
void tp_h_accounts_retrieve(struct tp_req *r);
/* sources.c */
void tp_h_source_create(struct tp_req *r);
void tp_h_source_list(struct tp_req *r);
void tp_h_source_retrieve(struct tp_req *r);
void tp_h_source_update(struct tp_req *r);
void tp_h_source_delete(struct tp_req *r);
/* tokens.c */
void tp_h_token_create(struct tp_req *r);
void tp_h_token_retrieve(struct tp_req *r);
void tp_h_pm_retrieve(struct tp_req *r);
void tp_h_pm_update(struct tp_req *r);
void tp_h_pm_attach(struct tp_req *r);
void tp_h_pm_detach(struct tp_req *r);
void tp_h_pm_list(struct tp_req *r);
void tp_h_customer_pm_list(struct tp_req *r);
void tp_h_customer_pm_retrieve(struct tp_req *r);
/* events.c */
void tp_h_event_retrieve(struct tp_req *r);
void tp_h_event_list(struct tp_req *r);
/* balance.c */
void tp_h_balance(struct tp_req *r);
void tp_h_balance_txn_retrieve(struct tp_req *r);
void tp_h_payout_list(struct tp_req *r);
void tp_h_payout_missing(struct tp_req *r);
void tp_h_payout_create(struct tp_req *r);
void tp_h_balance_txn_list(struct tp_req *r);
/* net/stream.c: the WebSocket event stream and its browser tokens */
void tp_h_stream(struct tp_req *r);
void tp_h_stream_token(struct tp_req *r);
/* metrics.c: Prometheus exposition and the run-time log level */
void tp_h_metrics(struct tp_req *r);
void tp_h_log_level(struct tp_req *r);
/* sec/oauth.c: OAuth 2.0 token, revocation, introspection, JWKS, metadata */
void tp_h_oauth_token(struct tp_req *r);
void tp_h_oauth_revoke(struct tp_req *r);
void tp_h_oauth_introspect(struct tp_req *r);
void tp_h_oauth_jwks(struct tp_req *r);
void tp_h_oauth_metadata(struct tp_req *r);
/* webhook_endpoints.c: Stripe's endpoints API plus delivery attempts and resend */
void tp_h_we_create(struct tp_req *r);
void tp_h_we_retrieve(struct tp_req *r);
void tp_h_we_update(struct tp_req *r);
void tp_h_we_delete(struct tp_req *r);
void tp_h_we_list(struct tp_req *r);
void tp_h_we_deliveries(struct tp_req *r);
void tp_h_we_resend(struct tp_req *r);
/* processors.c */
void tp_h_processors_list(struct tp_req *r);
/* health.c */
void tp_h_healthz(struct tp_req *r);
void tp_h_readyz(struct tp_req *r);
#endif
