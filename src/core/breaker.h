/* Circuit breaker for one processor: pure logic, no locking, no clock of its
 * own (every call takes the time in milliseconds, so tests drive it).
 *
 *   closed --(failure rate over the window >= threshold with >= min_calls,
 *             or `consecutive` failures in a row)--> open
 *   open --(open_ms elapsed, or a passing health check)--> half_open
 *   half_open --(`probes` admitted calls all succeed)--> closed
 *   half_open --(any failure)--> open
 *
 * The caller serialises access (procs.c holds a mutex per processor). */
#ifndef TP_BREAKER_H
#define TP_BREAKER_H
#include <stdbool.h>
#include <stdint.h>

enum tp_breaker_state { TP_BREAKER_CLOSED, TP_BREAKER_OPEN, TP_BREAKER_HALF_OPEN };

/* The failure-rate window: TP_BREAKER_BUCKETS buckets of bucket_ms each. */
#define TP_BREAKER_BUCKETS 10

struct tp_breaker_cfg {
  double failure_rate;   /* open when failures/calls >= this (0 < r <= 1) */
  int min_calls;         /* ... and the window holds at least this many calls */
  int consecutive;       /* or this many failures in a row */
  int64_t open_ms;       /* stay open this long before probing */
  int probes;            /* calls admitted while half-open */
  int64_t bucket_ms;     /* window = TP_BREAKER_BUCKETS * bucket_ms */
  int64_t probe_stale_ms; /* a probe not reported by then never will (0: open_ms) */
};

struct tp_breaker {
  struct tp_breaker_cfg cfg;
  enum tp_breaker_state state;
  int64_t since_ms;      /* when the current state began */
  int consec;            /* failures in a row */
  int health_consec;     /* failed health checks in a row */
  /* rolling window: bucket i covers [epoch*bucket_ms, ...) for its epoch */
  int64_t b_epoch[TP_BREAKER_BUCKETS];
  int b_calls[TP_BREAKER_BUCKETS], b_fail[TP_BREAKER_BUCKETS];
  /* half-open bookkeeping */
  int admitted, succeeded;
  int soft_half; /* soft declines of distinct cards while half-open */
  int64_t last_admit_ms;
  uint64_t opens;        /* times it opened (for the API) */
  uint64_t period;       /* states entered: a probe slot belongs to one half-open period */
  /* opened by payment calls failing (not by failed health checks): then a
   * passing health check neither ends the open period nor passes a probe,
   * only calls do (a processor that answered its health check and failed
   * every payment was back in rotation each health_interval_ms) */
  bool opened_by_calls;
  /* when it left closed: failed health checks hold it open (no payment
   * probes) for at most TP_BREAKER_HEALTH_HOLD open periods from then, after
   * which calls decide (a processor whose health endpoint fails while it
   * takes payments was held out for good) */
  int64_t down_since_ms;
};
#define TP_BREAKER_HEALTH_HOLD 10

/* Fill cfg with the documented defaults (0.5, 20, 5, 5000 ms, 3, 1000 ms). */
void tp_breaker_defaults(struct tp_breaker_cfg *cfg);
/* Start closed at now_ms. */
void tp_breaker_init(struct tp_breaker *b, const struct tp_breaker_cfg *cfg, int64_t now_ms);
/* Advance time-driven transitions (open -> half_open after open_ms); returns
 * the state now. */
enum tp_breaker_state tp_breaker_tick(struct tp_breaker *b, int64_t now_ms);
/* May a call go out now? Closed: yes. Open: no. Half-open: yes for up to
 * `probes` calls (a probe that never reports frees its slot after the
 * longer of open_ms and probe_stale_ms: a slow one still holds it). */
bool tp_breaker_allow(struct tp_breaker *b, int64_t now_ms);
/* Would tp_breaker_allow admit a call now (open: no; half-open: a probe
 * slot free)? Takes none. */
bool tp_breaker_would_allow(struct tp_breaker *b, int64_t now_ms);
/* Give back the probe slot tp_breaker_allow took (half-open; otherwise
 * nothing): for a call that never went, or one whose answer says nothing
 * of the processor (a card's repeated soft decline). */
void tp_breaker_release(struct tp_breaker *b, int64_t now_ms);
/* A probe slot taken for a call to send later (0: none): its half-open
 * period, so that it is given back, or used, only in that period (a slot
 * reserved before the breaker reopened and half-opened again was given back
 * out of the new period's count, admitting one probe too many). */
uint64_t tp_breaker_slot(const struct tp_breaker *b);
/* Does the slot still hold a place (half-open, in the period it was taken)? */
bool tp_breaker_slot_live(struct tp_breaker *b, uint64_t slot, int64_t now_ms);
/* A finished call: failure = transport error, timeout, 5xx. Issuer declines
 * are successes here. */
void tp_breaker_record(struct tp_breaker *b, bool failure, int64_t now_ms);
/* A finished call answered with a soft decline (processing_error, ISO 8583
 * 96 or 91): a failure for the failure-rate window, but it neither counts
 * toward nor clears `consecutive` (one customer retrying one card must not
 * open the breaker for everyone); half-open, it passes no probe and gives
 * its probe slot back, and `probes` of them (from distinct cards: the
 * caller gives a card's repeats their slot back only, tp_breaker_release) reopen it. */
void tp_breaker_record_soft(struct tp_breaker *b, int64_t now_ms);
/* Was a call sent at sent_ms (ms, the breaker's clock) sent before the
 * breaker went half-open, so that its answer is no probe's? Such answers
 * say how the processor was, not how it is: counted as probes, two slow
 * answers from before an outage closed the breaker on a processor still
 * down (session 36's review). A few ms of slack: the send time is taken
 * just before the breaker is asked. */
#define TP_BREAKER_SENT_SLACK_MS 5
bool tp_breaker_before_probes(struct tp_breaker *b, int64_t sent_ms, int64_t now_ms);
/* An active health check result. `consecutive` failed checks in a row
 * open it (a pass or a successful call ends the run; checks and real
 * calls are counted apart, and a pass never clears the calls' run); a
 * failure sends half_open back
 * to open, or keeps open open for another open_ms; a pass moves open to
 * half_open early and counts as a passing probe while half_open. */
void tp_breaker_health(struct tp_breaker *b, bool ok, int64_t now_ms);
/* Calls and failures in the rolling window. */
void tp_breaker_window(const struct tp_breaker *b, int64_t now_ms, int *calls, int *failures);
/* "closed", "open", "half_open". */
const char *tp_breaker_state_name(enum tp_breaker_state s);
#endif
