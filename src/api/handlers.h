/* Every endpoint handler, one family per file. */
#ifndef TP_HANDLERS_H
#define TP_HANDLERS_H
#include "api/http.h"

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
/* The 3-D Secure challenge token for a PaymentIntent (32 hex chars). */
void tp_3ds_token(const char *pi_id, char out[65]);
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
