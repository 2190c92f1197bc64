/* The tamper-evident audit log: append-only, hash-chained, with signed
 * checkpoints. */
#ifndef TP_AUDIT_H
#define TP_AUDIT_H
#include <jansson.h>
#include <stdint.h>

struct tp_cs;
struct tp_store;

/* Record an action in the same change set as the change it describes (so the
 * entry commits with it). actor: "key:sk_…last4", "oauth:client_id", "cli",
 * "system"; action: "api_key.created", "refund.created", "kek.rotated" ...;
 * details: extra JSON (borrowed, may be NULL), never card data. */
void tp_audit_append(struct tp_cs *cs, const char *merchant, const char *actor, const char *action,
                     const char *object_id, const json_t *details);

/* An admin command's change set committed with its audit entry (actor
 * "cli"; details stolen, may be NULL), then cs freed and the store closed;
 * 0, or 1 after saying "turnpike CMD: store write failed". */
int tp_audit_cli_commit(struct tp_store *st, struct tp_cs *cs, const char *merchant, const char *action,
                        const char *object_id, json_t *details, const char *cmd);

/* Daemon maintenance (called by the kek thread): write a signed checkpoint of
 * the chain head when [audit] checkpoint_seconds or checkpoint_entries have
 * passed; _final forces one (shutdown, before the writer stops). */
void tp_audit_tick(void);
void tp_audit_tick_final(void);

/* At start, before anything is appended: the store must still hold the
 * checkpoint DIR/audit-sealed names (the last one this gateway signed);
 * else the chain is logged as tampered and no checkpoint is signed over it
 * while the process runs. */
void tp_audit_start_check(struct tp_store *st, const char *dir);
/* Write DIR/audit-sealed naming the checkpoint (seq, hash), durably; seq 0
 * removes it (restore: the restored store's own last checkpoint). 0 or -1. */
int tp_audit_sealed_set(const char *dir, int64_t seq, const char *hash);
/* `audit verify` of a store file (a backup a restore would put in place),
 * without --sealed or pins: 0 intact, 1 broken (summary says where), -1
 * unreadable. */
int tp_audit_verify_copy(const char *db_path, json_t *summary);
#endif
