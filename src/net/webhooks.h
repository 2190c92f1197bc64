/* Webhooks: delivery of committed events to merchants' endpoints, signed the
 * way Stripe signs them. The endpoints API (src/api/webhook_endpoints.c)
 * writes the tables; the delivery thread (src/net/webhooks.c) reads them and
 * is told about changes through the functions below. */
#ifndef TP_WEBHOOKS_H
#define TP_WEBHOOKS_H
#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#define TP_WH_URL_MAX 2048        /* bytes in an endpoint URL */
#define TP_WH_SECRET_MAX 64       /* bytes in a whsec_ secret, with NUL */
#define TP_WH_SEALED_MAX 256      /* hex chars of a sealed secret, with NUL */
#define TP_WH_MAX_PER_MERCHANT 16 /* endpoints a merchant may have (Stripe's limit) */
#define TP_WH_DISABLED_EVENT "turnpike.webhook_endpoint.disabled"

/* With [webhooks] private_networks = deny: whether an endpoint URL's host
 * (as libcurl's URL parser gives it) is refused when the endpoint is
 * created or updated: "localhost", "*.localhost" (RFC 6761) and address
 * literals that are not public (tp_addr_text_is_public). Other names are
 * resolved at delivery, where every address connected to is checked. */
bool tp_webhooks_host_denied(const char *host);
/* True when type is an event type an endpoint may subscribe to. */
bool tp_webhooks_event_type_known(const char *type);
/* An event type about the account's balance (balance.*, payout.*): read
 * only by a key with reports:read, as /v1/balance is. */
bool tp_event_type_reports(const char *type);
/* True when pattern ("*" or an exact type) selects type. */
bool tp_webhooks_event_matches(const char *pattern, const char *type);
/* Whether an endpoint (its id and enabled_events array) is owed event_id of
 * type: the event is newer than the endpoint and one pattern selects it. */
bool tp_webhooks_endpoint_wants(const char *endpoint_id, const json_t *enabled_events, const char *event_id,
                                const char *type);
/* Whether an endpoint still owes event_id (of type) a successful delivery,
 * Stripe's pending_webhooks: its delivery row is pending, or it has no row
 * yet and is enabled and wants the event (the webhook thread commits rows
 * just after the event). One store read. */
bool tp_webhooks_owed(const char *endpoint_id, bool enabled, const json_t *enabled_events, const char *event_id,
                      const char *type);
/* A new random "whsec_..." secret. */
void tp_webhooks_new_secret(char out[TP_WH_SECRET_MAX]);
/* Seal a secret for storage, bound to the endpoint id (hex out). 0 on success. */
int tp_webhooks_seal_secret(const char *endpoint_id, const char *secret, char out[TP_WH_SEALED_MAX]);
/* Open a sealed secret. 0 on success. */
int tp_webhooks_open_secret(const char *endpoint_id, const char *sealed, char out[TP_WH_SECRET_MAX]);
/* An endpoint create's reply as an Idempotency-Key keeps it: the secret
 * sealed (malloc'd; NULL when body holds none), and opened for a replay
 * (malloc'd; NULL when body holds no sealed one). */
char *tp_webhooks_idem_seal(const char *body);
char *tp_webhooks_idem_open(const char *body);
/* Endpoint endpoint (NULL: a new one) or its deliveries changed in the store
 * (after the commit): reload the endpoints and look for its due deliveries
 * now. Any thread. */
void tp_webhooks_changed(const char *endpoint);
#endif
