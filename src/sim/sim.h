/* The processor simulator (`turnpike sim`): shared declarations of its parts.
 * procs.c   per-processor behaviour (config, run-time faults, randomness)
 * journal.c the durable SQLite journal with a group-commit writer thread
 * state.c   the in-memory ledger of authorizations, rebuilt from the journal
 * timer.c   one timer thread for delayed answers (latency, held timeouts)
 * rest.c    the REST/JSON processor API and the /_sim controls (libmicrohttpd)
 * iso.c     the ISO 8583 acquirer host (2-byte length framed TCP)
 * sim.c     the command line, start-up and shutdown. */
#ifndef TP_SIM_H
#define TP_SIM_H
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define TP_SIM_NAME_MAX 64
#define TP_SIM_REF_MAX 64      /* references are at most 64 bytes */
#define TP_SIM_MAX_PROCS 256   /* distinct processor names; more share one default */
#define TP_SIM_MAX_OVERRIDES 16
#define TP_SIM_HOLD_MAX_MS 600000
#define TP_SIM_LATENCY_MAX_MS 60000

/* ---- processors (procs.c) -------------------------------------------------- */
struct tp_sim_override {
  char key[16]; /* brand ("visa") or currency ("usd"), lower case */
  double rate;
};

/* One processor's behaviour; copied out under a lock for each request. */
struct tp_sim_behaviour {
  bool iso;                 /* protocol = iso */
  bool outage;
  double decline_rate, error_rate, timeout_rate, reset_rate;
  int64_t latency_ms_min, latency_ms_max; /* uniform when p50 is 0 */
  int64_t latency_p50_ms, latency_p99_ms; /* log-normal when p50 > 0 */
  int64_t timeout_hold_ms;
  bool timeout_before;      /* timeout_mode = before: hold, then close unprocessed */
  unsigned timeout_ops;     /* timeout_operations: 1 << enum tp_sim_op of the REST operations timeout_rate applies to */
  char api_key[128];
  struct tp_sim_override overrides[TP_SIM_MAX_OVERRIDES];
  unsigned n_overrides;
};

/* Read every [sim.NAME] section of the loaded config. */
void tp_sim_procs_load(void);
/* True if name is a valid processor name ([A-Za-z0-9_.-], 1..63). */
bool tp_sim_name_ok(const char *name);
/* The behaviour of a processor (defaults for a name never configured). */
void tp_sim_behaviour(const char *name, struct tp_sim_behaviour *out);
/* Apply a /_sim/faults object; 0, or -1 with a message in err. */
int tp_sim_faults_apply(json_t *o, char *err, size_t errlen);
/* Every known processor's settings as a JSON object keyed by name. */
json_t *tp_sim_faults_dump(void);
/* Uniform double in [0,1) from a per-thread generator. */
double tp_sim_rand(void);
/* One latency sample in ms for this behaviour. */
int64_t tp_sim_latency(const struct tp_sim_behaviour *b);
/* Decline rate for a card brand and currency (the larger override wins). */
double tp_sim_decline_rate(const struct tp_sim_behaviour *b, const char *brand, const char *currency);
/* Brand name of a PAN ("visa", ...). */
const char *tp_sim_brand(const char *pan);

/* ---- journal (journal.c) --------------------------------------------------- */
struct tp_sim_entry {
  struct tp_sim_entry *next;
  char processor[TP_SIM_NAME_MAX];
  char protocol[8];     /* rest | iso */
  char operation[12];   /* authorize | capture | void | refund | reversal */
  char reference[TP_SIM_REF_MAX + 1];
  char terminal[16];    /* ISO field 41 */
  char payment[TP_SIM_REF_MAX + 1];
  char target[TP_SIM_REF_MAX + 1]; /* the authorization's reference (capture/void/refund/reversal) */
  char txn_id[TP_SIM_REF_MAX + 1]; /* auth_..., cap_..., rf_... */
  int64_t amount;
  char currency[4];
  char status[24];     /* approved, captured, reversed, capture_reversed ... */
  char decline_code[48];
  char *response;       /* the answer as stored (JSON text, or ISO summary) — owned */
  int64_t created_ms;
  void (*done)(void *arg, bool ok); /* on the writer thread after commit */
  void *arg;
};

/* Open (create) DIR/sim.db; 0 or -1. */
int tp_sim_journal_open(const char *dir);
/* Call fn for every row in commit order (start-up replay). */
int tp_sim_journal_replay(void (*fn)(const struct tp_sim_entry *e, void *arg), void *arg);
/* Start / stop (after draining) the group-commit writer thread. */
int tp_sim_journal_start(void);
void tp_sim_journal_stop(void);
void tp_sim_journal_close(void);
/* Queue one entry; e->done runs after its commit. Takes ownership of e. */
void tp_sim_journal_submit(struct tp_sim_entry *e);
/* The journal view of /_sim/journal and `turnpike sim journal`. */
json_t *tp_sim_journal_query(const char *processor, const char *reference, const char *payment, int64_t limit);
/* The same, for the CLI: opens DIR/sim.db read-only. */
json_t *tp_sim_journal_query_dir(const char *dir, const char *processor, const char *reference,
                                 const char *payment, int64_t limit, char *err, size_t errlen);

/* ---- state (state.c) ----------------------------------------------------- */
/* A completion waiting for an answer to become durable. */
struct tp_sim_waiter {
  struct tp_sim_waiter *next;
  void (*fn)(struct tp_sim_waiter *w, const char *response, bool ok);
};

enum tp_sim_op { TP_SIM_AUTHORIZE, TP_SIM_CAPTURE, TP_SIM_VOID, TP_SIM_REFUND, TP_SIM_REVERSAL };
/* "authorize", "capture", "void", "refund", "reversal" (the journal's operation). */
const char *tp_sim_op_name(enum tp_sim_op op);

/* A request to the ledger, parsed and validated by rest.c or iso.c. */
struct tp_sim_request {
  enum tp_sim_op op;
  const char *processor;
  bool iso;
  const char *reference;
  const char *terminal;        /* ISO only, "" for REST */
  const char *payment;
  const char *target;          /* auth id or reference (capture/void/refund/reversal) */
  int64_t amount;              /* -1 when absent (capture: the authorized amount) */
  char currency[4];
  bool capture;
  const char *pan;             /* authorize only; never stored */
  bool no_cvc;                 /* authorize only: the card has no CVC to check (REST "cvc": null) */
  int exp_month, exp_year;     /* authorize only: the card's expiry (0 0: not sent) */
  const struct tp_sim_behaviour *b;
};

enum tp_sim_result {
  TP_SIM_DONE,        /* *response is final and durable: answer now */
  TP_SIM_WAIT,        /* w->fn will be called once the answer is durable */
  TP_SIM_NOT_FOUND,   /* capture/void/refund: no such authorization */
  TP_SIM_CONFLICT,    /* the authorization's state forbids it (message in *response) */
  TP_SIM_TOO_LARGE,   /* capture amount over the authorized amount */
};

/* Process one operation idempotently by reference. On TP_SIM_DONE *response
 * is a malloc'ed copy of the answer and *replayed tells whether it was a repeat. */
enum tp_sim_result tp_sim_process(const struct tp_sim_request *q, struct tp_sim_waiter *w, char **response,
                                  bool *replayed);
/* Status query (REST): DONE with a malloc'ed copy of the stored answer, WAIT
 * (w->fn once the answer is durable) or NOT_FOUND. */
enum tp_sim_result tp_sim_status(const char *processor, const char *reference, struct tp_sim_waiter *w,
                                 char **response);
/* The durable stored answer for a reference, malloc'ed, or NULL. */
char *tp_sim_lookup(const char *processor, bool iso, const char *reference, const char *terminal);
/* Rebuild the ledger from the journal; 0 or -1. */
int tp_sim_state_load(void);
void tp_sim_state_free(void);

/* ---- timer (timer.c) ------------------------------------------------------- */
int tp_sim_timer_start(void);
/* Run fn(arg) on the timer thread after delay_ms. */
void tp_sim_timer_add(int64_t delay_ms, void (*fn)(void *arg), void *arg);
/* Fire every pending timer now (shutdown), then stop the thread. */
void tp_sim_timer_stop(void);

/* ---- servers ----------------------------------------------------------------- */
int tp_sim_rest_start(const char *host, uint16_t port, unsigned threads, uint16_t *bound);
/* Refuse new requests (503) and stop accepting connections. */
void tp_sim_rest_quiesce(void);
/* Wait for suspended requests to flush, then stop the daemon. */
void tp_sim_rest_stop(void);
int tp_sim_iso_start(const char *host, uint16_t port, const char *name, uint16_t *bound);
/* Close the listener and every connection, join the thread. */
void tp_sim_iso_stop(void);

/* Six characters [0-9A-Z] for an approval code. */
void tp_sim_auth_code(char out[7]);
#endif
