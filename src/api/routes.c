/* The whole API in one table. Order matters only where patterns overlap:
 * more specific first. */
#include "api/handlers.h"

#define A TP_R_AUTH
#define P TP_R_PUBLIC
#define C (TP_R_AUTH | TP_R_CLIENT)
#define B (TP_R_AUTH | TP_R_PUBLISHABLE)

const struct tp_route tp_routes[] = {
  {"POST", "/v1/payment_intents", tp_h_pi_create, A},
  {"GET", "/v1/payment_intents", tp_h_pi_list, A},
  {"GET", "/v1/payment_intents/search", tp_h_pi_search, A},
  {"GET", "/v1/payment_intents/{id}", tp_h_pi_retrieve, C},
  {"POST", "/v1/payment_intents/{id}", tp_h_pi_update, A},
  {"POST", "/v1/payment_intents/{id}/confirm", tp_h_pi_confirm, C},
  {"POST", "/v1/payment_intents/{id}/capture", tp_h_pi_capture, A},
  {"POST", "/v1/payment_intents/{id}/cancel", tp_h_pi_cancel, A},
  {"POST", "/v1/payment_intents/{id}/increment_authorization", tp_h_pi_increment, A},
  {"GET", "/v1/payment_intents/{id}/attempts", tp_h_pi_attempts, A},
  {"GET", "/v1/disputes", tp_h_dispute_list, A},
  {"GET", "/v1/radar/early_fraud_warnings", tp_h_efw_list, A},
  {"GET", "/v1/radar/early_fraud_warnings/{id}", tp_h_efw_retrieve, A},
  {"GET", "/v1/disputes/{id}", tp_h_dispute_retrieve, A},
  {"POST", "/v1/disputes/{id}", tp_h_dispute_update, A},
  {"POST", "/v1/disputes/{id}/close", tp_h_dispute_close, A},
  {"POST", "/v1/setup_intents", tp_h_si_create, A},
  {"GET", "/v1/setup_intents", tp_h_si_list, A},
  {"GET", "/v1/setup_intents/{id}", tp_h_si_retrieve, C},
  {"POST", "/v1/setup_intents/{id}", tp_h_si_update, A},
  {"POST", "/v1/setup_intents/{id}/confirm", tp_h_si_confirm, C},
  {"POST", "/v1/setup_intents/{id}/cancel", tp_h_si_cancel, A},
  {"POST", "/v1/setup_intents/{id}/verify_microdeposits", tp_h_si_verify_microdeposits, A},
  {"POST", "/v1/payment_intents/{id}/verify_microdeposits", tp_h_pi_not_card, A},
  {"POST", "/v1/payment_intents/{id}/apply_customer_balance", tp_h_pi_not_card, A},
  {"GET", "/v1/setup_attempts", tp_h_setup_attempt_list, A},
  {"GET", "/v1/turnpike/requests/{id}", tp_h_request_retrieve, A},

  {"POST", "/v1/charges", tp_h_charge_create, A},
  {"GET", "/v1/charges", tp_h_charge_list, A},
  {"GET", "/v1/charges/search", tp_h_charge_search, A},
  {"GET", "/v1/charges/{id}", tp_h_charge_retrieve, A},
  {"POST", "/v1/charges/{id}", tp_h_charge_update, A},
  {"POST", "/v1/charges/{id}/capture", tp_h_charge_capture, A},
  {"GET", "/v1/charges/{id}/refunds", tp_h_charge_refund_list, A},
  {"GET", "/v1/charges/{id}/refunds/{refund}", tp_h_charge_refund_retrieve, A},
  {"POST", "/v1/charges/{id}/refunds", tp_h_charge_refund_create, A},
  {"POST", "/v1/charges/{id}/refunds/{refund}", tp_h_charge_refund_update, A},
  {"POST", "/v1/charges/{id}/refund", tp_h_charge_refund, A},

  {"POST", "/v1/refunds", tp_h_refund_create, A},
  {"GET", "/v1/refunds", tp_h_refund_list, A},
  {"GET", "/v1/refunds/{id}", tp_h_refund_retrieve, A},
  {"POST", "/v1/refunds/{id}", tp_h_refund_update, A},
  {"POST", "/v1/refunds/{id}/cancel", tp_h_refund_cancel, A},

  {"POST", "/v1/customers", tp_h_customer_create, A},
  {"GET", "/v1/customers", tp_h_customer_list, A},
  {"GET", "/v1/customers/search", tp_h_customer_search, A},
  {"GET", "/v1/customers/{id}", tp_h_customer_retrieve, A},
  {"POST", "/v1/customers/{id}", tp_h_customer_update, A},
  {"DELETE", "/v1/customers/{id}", tp_h_customer_delete, A},
  {"POST", "/v1/customers/{id}/sources", tp_h_source_create, A},
  {"GET", "/v1/customers/{id}/sources", tp_h_source_list, A},
  {"GET", "/v1/customers/{id}/sources/{source}", tp_h_source_retrieve, A},
  {"POST", "/v1/customers/{id}/sources/{source}", tp_h_source_update, A},
  {"DELETE", "/v1/customers/{id}/sources/{source}", tp_h_source_delete, A},
  /* the Cards API's paths for the same cards */
  {"POST", "/v1/customers/{id}/cards", tp_h_source_create, A},
  {"GET", "/v1/customers/{id}/cards", tp_h_source_list, A},
  {"GET", "/v1/customers/{id}/cards/{source}", tp_h_source_retrieve, A},
  {"POST", "/v1/customers/{id}/cards/{source}", tp_h_source_update, A},
  {"DELETE", "/v1/customers/{id}/cards/{source}", tp_h_source_delete, A},
  {"GET", "/v1/customers/{id}/payment_methods", tp_h_customer_pm_list, A},
  {"GET", "/v1/customers/{id}/payment_methods/{pm}", tp_h_customer_pm_retrieve, A},

  {"POST", "/v1/payment_methods", tp_h_pm_create, B}, /* Stripe.js tokenises a card with pk_ */
  {"GET", "/v1/account", tp_h_account_retrieve, A},
  {"GET", "/v1/accounts/{id}", tp_h_accounts_retrieve, A},
  {"POST", "/v1/tokens", tp_h_token_create, B}, /* Stripe.js's createToken, with pk_ */
  {"GET", "/v1/tokens/{id}", tp_h_token_retrieve, A},
  {"GET", "/v1/payment_methods", tp_h_pm_list, A},
  {"GET", "/v1/payment_methods/{id}", tp_h_pm_retrieve, A},
  {"POST", "/v1/payment_methods/{id}", tp_h_pm_update, A},
  {"POST", "/v1/payment_methods/{id}/attach", tp_h_pm_attach, A},
  {"POST", "/v1/payment_methods/{id}/detach", tp_h_pm_detach, A},

  {"GET", "/v1/events", tp_h_event_list, A},
  {"GET", "/v1/events/{id}", tp_h_event_retrieve, A},

  {"POST", "/v1/webhook_endpoints", tp_h_we_create, A | TP_R_SEALED_REPLY},
  {"GET", "/v1/webhook_endpoints", tp_h_we_list, A},
  {"GET", "/v1/webhook_endpoints/{id}", tp_h_we_retrieve, A},
  {"POST", "/v1/webhook_endpoints/{id}", tp_h_we_update, A},
  {"DELETE", "/v1/webhook_endpoints/{id}", tp_h_we_delete, A},
  {"GET", "/v1/webhook_endpoints/{id}/deliveries", tp_h_we_deliveries, A},
  {"POST", "/v1/webhook_endpoints/{id}/deliveries/{event}/resend", tp_h_we_resend, A},

  {"GET", "/v1/balance", tp_h_balance, A},
  {"GET", "/v1/balance_transactions", tp_h_balance_txn_list, A},
  {"GET", "/v1/balance_transactions/{id}", tp_h_balance_txn_retrieve, A},
  /* their older path, which stripe-php 6 and stripe-python 2 still build */
  {"GET", "/v1/balance/history", tp_h_balance_txn_list, A},
  {"GET", "/v1/balance/history/{id}", tp_h_balance_txn_retrieve, A},
  {"GET", "/v1/payouts", tp_h_payout_list, A},
  {"POST", "/v1/payouts", tp_h_payout_create, A},
  {"GET", "/v1/payouts/{id}", tp_h_payout_missing, A},
  {"POST", "/v1/payouts/{id}", tp_h_payout_missing, A},
  {"POST", "/v1/payouts/{id}/cancel", tp_h_payout_missing, A},
  {"POST", "/v1/payouts/{id}/reverse", tp_h_payout_missing, A},

  {"GET", "/v1/turnpike/3ds/{id}", tp_h_3ds_page, P},
  {"POST", "/v1/turnpike/3ds/{id}", tp_h_3ds_submit, P},
  {"GET", "/v1/turnpike/encryption_key", tp_h_encryption_key, P}, /* any key of a merchant, pk_ too */
  {"GET", "/v1/turnpike/processors", tp_h_processors_list, A},
  {"GET", "/v1/turnpike/attempts", tp_h_attempts_unsettled, A},
  {"POST", "/v1/turnpike/attempts/{id}/resolve", tp_h_attempt_resolve, A | TP_R_NO_NEW_WORK}, /* settles */

  {"GET", "/v1/turnpike/stream", tp_h_stream, P},          /* Bearer key or ?token= */
  {"POST", "/v1/turnpike/stream_tokens", tp_h_stream_token, A | TP_R_NO_NEW_WORK},
  {"POST", "/v1/turnpike/log_level", tp_h_log_level, A | TP_R_NO_NEW_WORK},
  {"GET", "/metrics", tp_h_metrics, P},                     /* loopback or [metrics] token */

  {"POST", "/oauth/token", tp_h_oauth_token, P},           /* client authentication in the handler */
  {"POST", "/oauth/revoke", tp_h_oauth_revoke, P},
  {"POST", "/oauth/introspect", tp_h_oauth_introspect, P},
  {"GET", "/.well-known/jwks.json", tp_h_oauth_jwks, P},
  {"GET", "/.well-known/oauth-authorization-server", tp_h_oauth_metadata, P},

  {"GET", "/healthz", tp_h_healthz, P},
  {"GET", "/readyz", tp_h_readyz, P},
};

const unsigned tp_routes_count = sizeof tp_routes / sizeof tp_routes[0];
