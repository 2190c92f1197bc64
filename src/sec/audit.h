/* The tamper-evident audit log: append-only, hash-chained, with signed
 * checkpoints. */
#ifndef TP_AUDIT_H
#define TP_AUDIT_H
#include <jansson.h>

struct tp_cs;
struct tp_store;

/* Record an action in the same change set as the change it describes (so the
 * entry commits with it). actor: "key:sk_…last4", "oauth:client_id", "cli",
 * "system"; action: "api_key.created", "refund.created", "kek.rotated" ...;
 * details: extra JSON (borrowed, may be NULL), never card data. */
void tp_audit_append(struct tp_cs *cs, const char *merchant, const char *actor, const char *action,
                     const char *object_id, const json_t *details);

/* Daemon maintenance (called by the kek thread): write a signed checkpoint of
 * the chain head when [audit] checkpoint_seconds or checkpoint_entries have
 * passed; _final forces one (shutdown, before the writer stops). */
void tp_audit_tick(void);
void tp_audit_tick_final(void);
#endif
