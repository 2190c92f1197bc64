/* The processor registry: every [processor.NAME] section of the config (or
 * one built-in "sandbox" when there is none), its connector, circuit breaker,
 * active health checks and rolling statistics. Built once at start-up; the
 * public fields of struct tp_proc are read-only afterwards and the private
 * state is locked per processor, so any thread may call these functions. */
#ifndef TP_PROCS_H
#define TP_PROCS_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "connectors/connector.h"
#include "core/breaker.h"

/* Most processors one config may declare. */
#define TP_PROCS_MAX 64

struct tp_proc_state;

struct tp_proc {                 /* public, read-only after start */
  char name[64];
  char type[16];                 /* "sandbox", "restjson", "iso8583" */
  struct tp_connector conn;
  int timeout_ms, weight, priority;
  bool can_query_status;         /* restjson/sandbox: status query by reference; iso8583: no (recover by reversal) */
  struct tp_proc_state *st;      /* private */
};

/* Number of processors, the i-th (config order), or by name (NULL if none). */
size_t tp_procs_count(void);
struct tp_proc *tp_proc_at(size_t i);
struct tp_proc *tp_proc_find(const char *name);
/* Whether name (any case) is a configured processor (route rules). */
bool tp_proc_known(const char *name);
/* Does p take this brand ("visa") and currency ("usd")? Empty lists = all;
 * NULL or "" for either argument is not checked. */
bool tp_proc_supports(const struct tp_proc *p, const char *brand, const char *currency);
/* p's fee for amount (minor units of currency): percent part rounded half to
 * even once, plus the fixed fee for that currency. */
int64_t tp_proc_fee(const struct tp_proc *p, const char *currency, int64_t amount);
/* Does the breaker admit a call now? (half-open: a limited number of
 * probes). slot (may be NULL): the probe slot taken, 0 when none (closed),
 * to give back with tp_proc_release if the call does not go after all. */
bool tp_proc_allow(struct tp_proc *p, uint64_t *slot);
/* Would tp_proc_allow let a call through now? (Takes no probe slot.) */
bool tp_proc_may_call(const struct tp_proc *p);
/* For a call planned now and sent later: closed, true (nothing held, *slot
 * 0: the send asks tp_proc_allow); half-open, a probe slot taken for it
 * (*slot); open or no slot, false. */
bool tp_proc_reserve(struct tp_proc *p, uint64_t *slot);
/* Is a reserved slot still good at send (the breaker half-open in the
 * period it was taken)? If not, the send asks tp_proc_allow: the breaker
 * may have reopened meanwhile. */
bool tp_proc_slot_live(struct tp_proc *p, uint64_t slot);
/* Give back a slot tp_proc_reserve or tp_proc_allow took for a call that
 * never went (nothing when the breaker has left that half-open period). */
void tp_proc_release(struct tp_proc *p, uint64_t slot);
/* The breaker state now (time-driven transitions applied). */
enum tp_breaker_state tp_proc_breaker(const struct tp_proc *p);
/* Every finished call: feeds the breaker, rolling success rate, latency
 * percentiles, metrics and alerts. transient = timeout / connection error /
 * 5xx / soft decline; a call is a breaker failure when o == TP_OUT_ERROR or
 * transient is set (issuer declines such as insufficient_funds are not).
 * card: a key of the card (0 unknown); a card's soft decline counts toward
 * the failure rate once per TP_PROC_SOFT_CARD_MS, so one card retried
 * cannot open the breaker for every merchant.
 * probe: the call was admitted by tp_proc_allow (an authorization; a
 * capture, refund or void is not, and in half-open its soft decline neither
 * frees a probe slot nor counts toward reopening). */
void tp_proc_record(struct tp_proc *p, const char *brand, const char *currency, enum tp_proc_outcome o,
                    const char *decline_code, bool transient, int64_t latency_us, uint64_t card, bool probe);
/* Latency percentile (50, 90, 99) over the last calls, microseconds; 0 with no data. */
int64_t tp_proc_latency_us(const struct tp_proc *p, int percentile);
/* Approved share of the last calls (a rate, not money); 1.0 with no data. */
double tp_proc_success_rate(const struct tp_proc *p);
/* JSON for the API (no credentials). New reference. */
json_t *tp_proc_json(const struct tp_proc *p);
/* Register a callback for breaker state changes (up to 8; at start-up,
 * before or after tp_procs_start, not while calls run; called on the thread
 * that caused the change, outside the processor's lock). */
void tp_procs_on_breaker(void (*fn)(struct tp_proc *p, enum tp_breaker_state from, enum tp_breaker_state to,
                                    void *arg),
                         void *arg);
/* Is at least one processor usable (breaker not open, health not down)? */
bool tp_procs_any_usable(void);

/* Build the registry from the config without starting connectors (start-up
 * and tests). 0, or -1 with a log line naming the section and key. */
int tp_procs_configure(void);
/* Forget the registry (tests; connectors must not be running). */
void tp_procs_reset(void);
/* Testing: replace the millisecond clock the breakers use (NULL = monotonic). */
void tp_procs_set_clock(int64_t (*now_ms)(void));
/* Feed a health-check result as the health thread would (tests, and
 * connectors that learn link state on their own). */
void tp_proc_health(struct tp_proc *p, bool ok);
#endif
