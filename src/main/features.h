/* Start/stop hooks of the features `turnpike serve` runs besides the HTTP
 * front and the writer. Start order: store, vault, processors, recovery,
 * webhooks, stream, alerts, HTTP. Each start returns 0 or -1 (serve exits). */
#ifndef TP_FEATURES_H
#define TP_FEATURES_H
#include <stdbool.h>
#include <stdint.h>
int tp_procs_start(void);     /* src/core/procs.c: [processor.*] sections, connectors, health checks */
void tp_procs_stop(void);
int tp_webhooks_start(void);  /* src/net/webhooks.c: outbox delivery */
void tp_webhooks_stop(void);
int tp_stream_start(void);    /* src/net/stream.c: WebSocket fan-out */
void tp_stream_stop(void);
int tp_alerts_start(void);    /* src/core/alerts.c: dynamic baselines */
void tp_alerts_stop(void);
int tp_housekeeping_start(void); /* src/core/housekeeping.c: expired idempotency keys */
void tp_housekeeping_stop(void);
/* Is the data directory short of space ([store] min_free_mb)? New work is
 * refused while it is (src/core/housekeeping.c). */
bool tp_store_space_low(void);
/* Milliseconds since the last committed store heartbeat (INT64_MAX: none yet). */
int64_t tp_store_heartbeat_age_ms(void);
/* Queue one batch of expired idempotency keys for deletion. */
int tp_idem_purge(int64_t now, int64_t ttl);
/* Delete (through the writer) the cards of card tokens unused for ttl seconds. */
int tp_token_purge(int64_t now_ms, int64_t ttl);
/* Make available (through the writer) the balance transactions past
 * [balance] available_after_seconds: 1 when a sweep was queued, 0 for
 * nothing to do, -1 on a store error. */
int tp_balance_sweep(int64_t now_ms);
/* Delete events (and finished webhook deliveries) older than retention_s, a
 * bounded batch per call (src/core/housekeeping.c). */
int tp_event_purge(int64_t now_ms, int64_t retention_s);
/* Void and cancel uncaptured authorizations past their capture_before, a
 * page per call; the number started, -1 if the store could not be read. */
int tp_authorization_expiry_scan(int64_t now);
#endif
