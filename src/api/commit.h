/* Commit a handler's change set and answer once it is durable.
 *
 * The handler sets its reply first; these helpers record it for
 * Idempotency-Key replays in the same change set (tp_idem_record), then
 * suspend the connection, queue the change set on the writer and resume it
 * from the writer's completion. A failed commit replaces the reply with 503
 * store_unavailable, a full queue with 503 overloaded, so a client never sees
 * a success that was not stored. Implemented in customers.c. */
#ifndef TP_COMMIT_H
#define TP_COMMIT_H
#include <stddef.h>

#include "api/http.h"
#include "store/store.h"

/* Submit cs (ownership passes) and send the reply already set once committed. */
void tp_commit_and_reply(struct tp_req *r, struct tp_cs *cs);
/* Same, then release the object lock lock_id (may be NULL) before answering. */
void tp_commit_and_reply_unlock(struct tp_req *r, struct tp_cs *cs, const char *lock_id);
/* Same with n lock ids (NULL and empty entries are skipped). */
void tp_commit_and_reply_locks(struct tp_req *r, struct tp_cs *cs, const char *const *lock_ids, size_t n);
/* Reply with obj (owned), expanded as the request asks, then commit cs and
 * release lock_id (NULL: none). When the expansion fails (it has replied)
 * nothing is committed: cs is freed and the lock released. */
struct json_t;
void tp_reply_expanded_unlock(struct tp_req *r, struct tp_cs *cs, struct json_t *obj, const char *lock_id);
/* Same with n lock ids (NULL and empty entries are skipped). */
void tp_reply_expanded_locks(struct tp_req *r, struct tp_cs *cs, struct json_t *obj, const char *const *lock_ids,
                             size_t n);

/* Reply 200 with a stored object's JSON text (takes it), expanding fields
 * when the request's "expand" asks for any. */
void tp_reply_stored(struct tp_req *r, char *text);
/* A GET /v1/<things>/{id} handler body: check that only "expand" was sent,
 * then reply with the stored object or 404 "No such <what>: '<id>'". */
void tp_retrieve(struct tp_req *r, enum tp_kind kind, const char *what);
/* The object of kind named by the {id} of the URL, or NULL after a 404. */
json_t *tp_load_path(struct tp_req *r, enum tp_kind kind, const char *what);
#endif
