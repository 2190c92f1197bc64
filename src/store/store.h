/* The durable store: a table of functions implemented per backend (SQLite
 * now, PostgreSQL later), the change sets the engine hands to the writer, and
 * the group-commit writer itself.
 *
 * Handlers never hold SQL: they build a change set (objects to put, ledger
 * entries, attempt rows, idempotency records) and submit it; the writer
 * thread applies queued change sets in one transaction per batch, fsyncs, and
 * then calls every change set's completion. */
#ifndef TP_STORE_H
#define TP_STORE_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Kinds of API objects, each stored as its Stripe JSON plus indexed columns. */
enum tp_kind {
  TP_K_PAYMENT_INTENT,
  TP_K_CHARGE,
  TP_K_REFUND,
  TP_K_CUSTOMER,
  TP_K_PAYMENT_METHOD,
  TP_K_EVENT,
  TP_K_BALANCE_TXN,
  TP_K_SETUP_INTENT,
  TP_K_DISPUTE,
  TP_K_TOKEN,
  TP_K_SETUP_ATTEMPT,
  TP_K_EARLY_FRAUD_WARNING,
  TP_K__COUNT
};

struct tp_kind_info {
  const char *table;   /* SQL table */
  const char *object;  /* Stripe "object" value */
  const char *prefix;  /* id prefix */
  const char *col[2];  /* extra indexed columns, taken from the JSON field of the same name */
  /* The index of (merchant, col[i], id) lists filtered on col[i] read, or
   * NULL for none (the list walks the merchant's rows). A partial index
   * WHERE col[i] != except[i] leaves out the value most rows have (a list
   * of it walks the merchant's rows, where nearly every row matches). */
  const char *index[2];
  const char *except[2];
};
extern const struct tp_kind_info tp_kinds[TP_K__COUNT];
/* The slot (0 or 1) of kind's indexed column col whose index a filter
 * col = value can read (value NULL: any value but the partial index's
 * except), or -1: no such index, or value is the one it leaves out. */
int tp_kind_index(enum tp_kind kind, const char *col, const char *value);

/* Processor attempt: the write-ahead record of one outbound call. */
/* An idempotent request's fingerprint as stored: 64 hex digits of the whole
 * request (method, path, parameters), '/', and 16 of its endpoint (method and
 * path), so a key reused elsewhere is told apart from changed parameters.
 * Records written before the endpoint part have the 64 digits alone. */
#define TP_REQ_HASH_LEN (64 + 1 + 16 + 1)

struct tp_attempt {
  char id[64];
  char merchant[64];
  char payment_intent[64];
  char processor[64];
  char idem_ref[64];    /* the idempotency reference sent to the processor */
  char kind[16];        /* authorize | capture | void | refund */
  char state[24];       /* sent | succeeded | declined | failed | reversal_pending | reversed */
  char currency[4];
  int64_t amount;
  char vault_token[64]; /* card in the vault, for recovery status queries */
  char refund[64];      /* re_ id for refunds */
  char result_code[48]; /* decline code or "" */
  char auth_code[16];
  char processor_ref[64];
  char route[256];      /* why this processor was chosen */
  char client_idem_key[264]; /* the request's Idempotency-Key as stored (tp_req.idem_slot), if any */
  char client_req_hash[TP_REQ_HASH_LEN];
  int capture;          /* authorize: capture in the same call */
  int reply_charge;     /* the Charges API's request: its (recovered) reply is the charge */
  char reason[32];      /* void: the cancellation_reason (a cancel's, or "expired"), else "" */
  /* ISO 8583, reversal_pending: the original data elements (MTI, STAN,
   * field 7) of the message it reverses, when the link knew them; "" else */
  char orig_data[24];
  /* the request's expand[] and legacy Stripe-Version, for the reply recovery
   * stores under the client's key: {"expand":[...],"v":"..."}; "" none */
  char reply_opts[512];
  int64_t created, updated;
};

/* ---- change sets ---------------------------------------------------------- */
struct tp_cs;
/* A change set's completion: rc 0 committed; TP_STORE_ERR_FULL not
 * committed because the disk is full; any other non-zero not committed. */
typedef void (*tp_cs_done_fn)(struct tp_cs *cs, int rc, void *arg);
#define TP_STORE_ERR_FULL (-28) /* -ENOSPC */
/* A change set's compare-and-set (tp_cs_sql with min_changes) changed fewer
 * rows than it needed: another change got there first. */
#define TP_STORE_ERR_CONFLICT (-17) /* -EEXIST */

struct tp_cs *tp_cs_new(void);
void tp_cs_free(struct tp_cs *cs);
/* Put (insert or replace) an object; id and created are read from obj. */
void tp_cs_put(struct tp_cs *cs, enum tp_kind kind, const char *merchant, const json_t *obj);
/* tp_cs_put of an object already serialised: data (malloc'ed, len bytes,
 * NUL-terminated) is its compact JSON and now belongs to the change set;
 * the indexed columns are still read from obj. */
void tp_cs_put_dumped(struct tp_cs *cs, enum tp_kind kind, const char *merchant, const json_t *obj, char *data,
                      size_t len);
/* tp_cs_put_dumped with data's stored frame given: z (malloc'ed, zlen bytes)
 * is tp_zjson_pack(data, len) and now belongs to the change set; NULL
 * compresses here as tp_cs_put_dumped does. */
void tp_cs_put_framed(struct tp_cs *cs, enum tp_kind kind, const char *merchant, const json_t *obj, char *data,
                      size_t len, uint8_t *z, size_t zlen);
/* An event whose text (data, len bytes, taken over) is head bytes, then an
 * object's text of olen bytes, then the rest, where oz (ozlen bytes,
 * borrowed) is that object's stored frame: the event is stored as the head
 * in a raw frame (it holds the id, see tp_cs_number_events), a copy of oz,
 * and the rest compressed alone (zstd reads frames in a row as one text),
 * so the object is compressed once for its row and its event. oz NULL: the
 * raw head, then everything after it compressed. data must start with
 * {"id":"<id>". */
void tp_cs_put_event_around(struct tp_cs *cs, const char *merchant, const char *id, int64_t created,
                            const char *type, const char *object_id, char *data, size_t len, size_t head,
                            size_t olen, const uint8_t *oz, size_t ozlen);
/* The group-commit writer calls this for each change set, in the order it
 * applies them: every event of cs gets a new id (same prefix and length,
 * tp_id_new), so event ids sort in commit order and a reader that goes on
 * from the last event id it saw misses nothing committed after it. */
void tp_cs_number_events(struct tp_cs *cs);
/* tp_cs_put_dumped with the indexed columns given directly (no object tree):
 * id, created, col1, col2 (NULL for SQL NULL); data as there. */
void tp_cs_put_row(struct tp_cs *cs, enum tp_kind kind, const char *merchant, const char *id, int64_t created,
                   const char *col1, const char *col2, char *data, size_t len);
/* One ledger entry (debit > 0, credit < 0); all entries of a txn must sum
 * to zero per currency or the whole change set is refused. */
void tp_cs_ledger(struct tp_cs *cs, const char *txn_id, const char *merchant, const char *account,
                  const char *currency, int64_t amount);
void tp_cs_attempt(struct tp_cs *cs, const struct tp_attempt *a);
/* Record an idempotency key: status 0 = in flight (no body yet). request_id
 * is the request that used the key (replays name it in Original-Request);
 * NULL keeps the one already recorded. */
void tp_cs_idem(struct tp_cs *cs, const char *merchant, const char *key, const char *req_hash,
                const char *request_id, int status, const char *body);
void tp_cs_vault(struct tp_cs *cs, const char *token, const char *merchant, const void *blob, size_t len);
/* A feature's own SQL statement (its tables come from its migration file),
 * applied in the same transaction as the rest of the change set. args is a
 * JSON array bound to ?1..?N: strings as text, integers as int64, booleans as
 * 0/1, null as NULL. Keep to portable SQL: PostgreSQL will run it too.
 * If min_changes > 0 and the statement changed fewer rows, the whole change
 * set fails (a compare-and-set). */
void tp_cs_sql(struct tp_cs *cs, const char *sql, const json_t *args, int min_changes);
/* Called on the completion thread (one, in commit order) after commit (rc 0) or failure (rc < 0). Keep it short. */
void tp_cs_on_done(struct tp_cs *cs, tp_cs_done_fn fn, void *arg);

/* Iteration, for backends. */
enum tp_cs_op_type { TP_OP_PUT, TP_OP_LEDGER, TP_OP_ATTEMPT, TP_OP_IDEM, TP_OP_VAULT, TP_OP_SQL };
struct tp_cs_op {
  enum tp_cs_op_type type;
  enum tp_kind kind;
  char *merchant, *id, *s1, *s2, *s3, *s4; /* meaning depends on type */
  char *data;       /* JSON text / body / blob */
  size_t data_len;
  uint8_t *zdata;   /* data compressed for storage (zjson.h), or NULL: store data */
  size_t zdata_len;
  int64_t n1, n2;   /* created, amount, status ... */
  struct tp_attempt *attempt;
};
/* A put of a kind whose search takes metadata['key'] (tp_kind_meta_indexed)
 * carries the object's metadata in s3 when it has any: key, NUL, value,
 * NUL, ..., n2 bytes in all (0: none), and in s4 its keys as a JSON array
 * of strings. The backend makes the metadata index
 * hold exactly those keys for the object (new and changed values written,
 * lost keys deleted). A put without metadata leaves the index alone, so an
 * object whose metadata was cleared keeps its last keys there: a search
 * tests each object it reads through the index against the whole query. */
bool tp_kind_meta_indexed(enum tp_kind kind);
size_t tp_cs_count(const struct tp_cs *cs);
const struct tp_cs_op *tp_cs_op_at(const struct tp_cs *cs, size_t i);

/* ---- queries ---------------------------------------------------------------- */
/* Rows a JSON-field list filter reads per page. */
#define TP_LIST_FIELD_MAX_SCAN 10000

struct tp_list_query {
  enum tp_kind kind;
  const char *merchant;
  const char *col_name;  /* filter on one indexed column, or NULL */
  const char *col_value;
  const char *col2_name; /* second filter, or NULL */
  const char *col2_value;
  /* a filter on the object's JSON (json_extract path, e.g. "$.currency"),
   * or NULL: not indexed, read row by row within the other filters; once a
   * page has a row it reads at most TP_LIST_FIELD_MAX_SCAN rows (past them
   * it ends early with has_more), and a page is never empty with has_more;
   * field_default stands for an absent value */
  const char *field, *field_value, *field_default;
  int64_t created_gte, created_lte; /* INT64_MIN / INT64_MAX when absent */
  /* the matching rows' ids lie within [id_min, id_max] (each NULL: no
   * bound), known by the caller: the walk reads only rows in between (a
   * balance transaction's source names its transactions' ids) */
  const char *id_min, *id_max;
  const char *starting_after;       /* id, or NULL */
  const char *ending_before;        /* id, or NULL */
  int limit;                        /* 1..100 */
};

/* A query for a merchant's rows of one kind: no filter, no created bound
 * (tp_list_params then reads a request's). */
static inline void tp_list_query_init(struct tp_list_query *q, enum tp_kind kind, const char *merchant)
{
  memset(q, 0, sizeof *q);
  q->kind = kind;
  q->merchant = merchant;
  q->created_gte = INT64_MIN;
  q->created_lte = INT64_MAX;
  q->limit = 10;
}

struct tp_merchant {
  char id[64];
  char name[128];
  uint8_t fp_key[32];  /* key for card fingerprints, as stored: masked (tp_card_fingerprint) */
};

struct tp_idem_rec {
  char req_hash[TP_REQ_HASH_LEN];
  int status;          /* 0 = in flight */
  char *body;          /* malloc'ed, caller frees */
  char request_id[40]; /* the request that used the key, or "" */
};

/* The backend's table of functions. Every function takes the backend's cls. */
struct tp_store_ops {
  const char *name;
  /* writer side: apply a batch of change sets in one transaction, rc[i] per set */
  int (*apply_batch)(void *cls, struct tp_cs **sets, size_t n, int *rc);
  /* reader side (any thread) */
  char *(*get)(void *cls, enum tp_kind kind, const char *merchant, const char *id);
  /* whether the object exists without reading it (a customer: and is not
   * deleted); 1 yes, 0 no, -1 error */
  int (*live)(void *cls, enum tp_kind kind, const char *merchant, const char *id);
  json_t *(*list)(void *cls, const struct tp_list_query *q, bool *has_more);
  int (*idem_get)(void *cls, const char *merchant, const char *key, struct tp_idem_rec *out);
  int (*apikey_lookup)(void *cls, const uint8_t hash[32], struct tp_merchant *m, char kind[16]);
  int (*merchant_create)(void *cls, const char *name, char *id_out, char *sk_out, char *pk_out);
  int (*merchant_count)(void *cls);
  json_t *(*balance)(void *cls, const char *merchant);
  int (*vault_get)(void *cls, const char *merchant, const char *token, void **blob, size_t *len);
  int (*attempts_in_state)(void *cls, const char *state, struct tp_attempt **out, size_t *n);
  int (*attempt_get)(void *cls, const char *id, struct tp_attempt *out);
  /* the merchant owning a PaymentIntent (for unauthenticated browser pages) */
  /* account: the merchant the caller was told (the page link's account=),
   * or NULL to look at every merchant; 1 found, 0 not, -1 error */
  int (*merchant_of)(void *cls, const char *pi_id, const char *account, struct tp_merchant *m);
  /* a feature's own read query: rows as an array of {column: value}, NULL on error */
  json_t *(*query)(void *cls, const char *sql, const json_t *args);
  /* Optional ([store] commit_sync = pipelined): from now on apply_batch
   * commits without waiting for the disk; the writer calls sync, which makes
   * every commit so far durable, before it runs any completion. 0 = on. */
  int (*pipeline)(void *cls);
  int (*sync)(void *cls);
  void (*close)(void *cls);
};

struct tp_store {
  const struct tp_store_ops *ops;
  void *cls;
};

/* Open the SQLite backend at DIR/turnpike.db, creating or migrating it. */
int tp_store_open_sqlite(struct tp_store *st, const char *dir);
/* The same for an admin command that works on a store already there: a
 * mistyped --data is refused ("turnpike CMD: no store in DIR" on stderr),
 * not made into a new store the command then changes. */
int tp_store_open_existing(struct tp_store *st, const char *dir, const char *cmd);

/* Convenience wrappers. */
/* Read rows with the store's query op (see tp_cs_sql for args); NULL on error. */
json_t *tp_store_query(struct tp_store *st, const char *sql, const json_t *args);
/* tp_store_query that takes args over (for tp_pack(...) in the call). */
json_t *tp_store_query_take(struct tp_store *st, const char *sql, json_t *args);
char *tp_store_get(struct tp_store *st, enum tp_kind kind, const char *merchant, const char *id);
json_t *tp_store_get_json(struct tp_store *st, enum tp_kind kind, const char *merchant, const char *id);
/* ops->live: 1 the object exists (a customer: not deleted), 0 not, -1 error. */
int tp_store_live(struct tp_store *st, enum tp_kind kind, const char *merchant, const char *id);
/* Set by a get on this thread that failed to read (a damaged page, an I/O
 * error) rather than finding nothing, cleared by the next tp_store_get*:
 * "no such object" is then 503 store_unavailable, not 404 (tp_reply_missing). */
extern _Thread_local bool tp_store_read_failed;
/* SQLite's error log (SQLITE_CONFIG_LOG, set before it initialises: the
 * audit constructor): notes a damaged store (SQLITE_CORRUPT, SQLITE_NOTADB)
 * once, logged as store_corrupt, after which /readyz answers 503
 * store_corrupt instead of ready while every read of a damaged page fails. */
void tp_sqlite_log(void *arg, int code, const char *msg);
bool tp_store_corrupt(void);
void tp_store_corrupt_watch(void); /* serve: from now on */

/* ---- the group-commit writer --------------------------------------------- */
#define TP_WRITER_MAX_BATCH 1024   /* change sets per transaction */
#define TP_WRITER_MAX_QUEUE 65536  /* queued change sets before submit refuses */

int tp_writer_start(struct tp_store *st);
/* [store] commit_sync = pipelined: readers may see a commit before its sync. */
bool tp_writer_pipelined(void);
/* With commit_sync = pipelined: the id of the oldest event that may be
 * committed but not yet on disk ("" when none is): a reader that sends
 * events on (the stream's resume, the webhooks' scan) reads only those
 * before it, or a power cut erased events already sent. "" always in full
 * mode (a commit is on disk before any reader sees it). */
void tp_writer_durable_bound(char out[64]);
/* With commit_sync = pipelined: the number of the last batch begun (0 in
 * full mode). A reply built from reads made before now shows nothing of a
 * later batch; held until tp_writer_synced(mark), it shows nothing a power
 * cut can take back. tp_writer_on_synced(cb): cb runs on the syncer thread
 * after each sync. */
uint64_t tp_writer_read_mark(void);
bool tp_writer_synced(uint64_t mark);
void tp_writer_on_synced(void (*cb)(void));
/* Queue a change set; ownership passes to the writer, which frees it after
 * the completion ran. Returns -1 (and frees nothing) if the queue is full or
 * the writer stopped; the caller then still owns cs. */
int tp_writer_submit(struct tp_cs *cs);
/* Queue cs (its completion replaced) and wait for its commit: the commit's
 * rc, or -1 if it could not be queued (cs freed either way). For
 * background threads, never a request's. */
int tp_writer_submit_wait(struct tp_cs *cs);
/* Apply everything queued, then stop the thread. */
void tp_writer_stop(void);
/* Figures for metrics. */
struct tp_writer_stats { uint64_t batches, sets, commit_ns_total, max_batch; size_t queued; };
void tp_writer_stats(struct tp_writer_stats *out);
/* Can the writer take work: running, the last batch committed, the queue
 * not nearly full. */
bool tp_writer_ok(void);

/* Committed events, in commit order, to every subscriber (webhook outbox,
 * WebSocket fan-out, alerting). Called on the completion thread right after
 * the commit: copy what you need and return quickly. event_json is the stored
 * Stripe event object. At most TP_WRITER_MAX_SUBSCRIBERS subscribers,
 * registered at start-up from one thread. */
#define TP_WRITER_MAX_SUBSCRIBERS 8
typedef void (*tp_event_fn)(const char *merchant, const char *event_id, const char *type, const char *event_json,
                            size_t len, void *arg);
int tp_writer_subscribe(tp_event_fn fn, void *arg);
#endif
