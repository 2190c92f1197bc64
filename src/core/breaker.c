/* Circuit breaker state machine (see breaker.h). */
#include "core/breaker.h"

#include <string.h>

void tp_breaker_defaults(struct tp_breaker_cfg *cfg)
{
  cfg->failure_rate = 0.5;
  cfg->min_calls = 20;
  cfg->consecutive = 5;
  cfg->open_ms = 5000;
  cfg->probes = 3;
  cfg->bucket_ms = 1000;
  cfg->probe_stale_ms = 0;
}

static void window_clear(struct tp_breaker *b)
{
  memset(b->b_epoch, 0, sizeof b->b_epoch);
  memset(b->b_calls, 0, sizeof b->b_calls);
  memset(b->b_fail, 0, sizeof b->b_fail);
}

static void enter(struct tp_breaker *b, enum tp_breaker_state s, int64_t now_ms)
{
  if (s == TP_BREAKER_OPEN && b->state != TP_BREAKER_OPEN)
    b->opens++;
  if (s == TP_BREAKER_OPEN && b->state == TP_BREAKER_CLOSED)
    b->down_since_ms = now_ms;
  if (s == TP_BREAKER_OPEN)
    b->opened_by_calls = true; /* tp_breaker_health clears it for its own */
  b->state = s;
  b->period++;
  b->since_ms = now_ms;
  b->admitted = 0;
  b->succeeded = 0;
  b->soft_half = 0;
  b->last_admit_ms = now_ms;
  /* A fresh start in every state: the failures that opened the breaker must
   * not re-open it the moment it closes. */
  b->consec = 0;
  b->health_consec = 0;
  window_clear(b);
}

void tp_breaker_init(struct tp_breaker *b, const struct tp_breaker_cfg *cfg, int64_t now_ms)
{
  memset(b, 0, sizeof *b);
  b->cfg = *cfg;
  if (b->cfg.bucket_ms <= 0)
    b->cfg.bucket_ms = 1000;
  if (b->cfg.probes < 1)
    b->cfg.probes = 1;
  if (b->cfg.consecutive < 1)
    b->cfg.consecutive = 1;
  if (b->cfg.min_calls < 1)
    b->cfg.min_calls = 1;
  enter(b, TP_BREAKER_CLOSED, now_ms);
}

enum tp_breaker_state tp_breaker_tick(struct tp_breaker *b, int64_t now_ms)
{
  if (b->state == TP_BREAKER_OPEN && now_ms - b->since_ms >= b->cfg.open_ms)
    enter(b, TP_BREAKER_HALF_OPEN, now_ms);
  return b->state;
}

/* A probe admitted but never reported (its caller chose another processor,
 * or crashed) must not wedge the breaker half-open: past the longer of
 * open_ms and probe_stale_ms since the last admission, the slots free. */
static bool probes_stale(const struct tp_breaker *b, int64_t now_ms)
{
  return now_ms - b->last_admit_ms >= (b->cfg.probe_stale_ms > b->cfg.open_ms ? b->cfg.probe_stale_ms : b->cfg.open_ms);
}

/* Would tp_breaker_allow say yes now? (Changes nothing but the time-driven
 * transition.) */
bool tp_breaker_would_allow(struct tp_breaker *b, int64_t now_ms)
{
  switch (tp_breaker_tick(b, now_ms)) {
  case TP_BREAKER_CLOSED:
    return true;
  case TP_BREAKER_OPEN:
    return false;
  case TP_BREAKER_HALF_OPEN:
    return b->admitted < b->cfg.probes || probes_stale(b, now_ms);
  }
  return false;
}

bool tp_breaker_allow(struct tp_breaker *b, int64_t now_ms)
{
  if (!tp_breaker_would_allow(b, now_ms))
    return false;
  if (b->state == TP_BREAKER_HALF_OPEN) {
    if (b->admitted >= b->cfg.probes) /* stale */
      b->admitted = b->succeeded;
    b->admitted++;
    b->last_admit_ms = now_ms;
  }
  return true;
}

void tp_breaker_release(struct tp_breaker *b, int64_t now_ms)
{
  if (tp_breaker_tick(b, now_ms) == TP_BREAKER_HALF_OPEN && b->admitted > b->succeeded)
    b->admitted--;
}

uint64_t tp_breaker_slot(const struct tp_breaker *b)
{
  return b->state == TP_BREAKER_HALF_OPEN ? b->period : 0;
}

bool tp_breaker_slot_live(struct tp_breaker *b, uint64_t slot, int64_t now_ms)
{
  return slot && tp_breaker_tick(b, now_ms) == TP_BREAKER_HALF_OPEN && b->period == slot;
}

void tp_breaker_window(const struct tp_breaker *b, int64_t now_ms, int *calls, int *failures)
{
  int64_t epoch = now_ms / b->cfg.bucket_ms;
  int c = 0, f = 0;
  for (int i = 0; i < TP_BREAKER_BUCKETS; i++)
    if (b->b_epoch[i] > epoch - TP_BREAKER_BUCKETS && b->b_epoch[i] <= epoch) {
      c += b->b_calls[i];
      f += b->b_fail[i];
    }
  *calls = c;
  *failures = f;
}

static void window_add(struct tp_breaker *b, bool failure, int64_t now_ms)
{
  int64_t epoch = now_ms / b->cfg.bucket_ms;
  int i = (int)(epoch % TP_BREAKER_BUCKETS);
  if (i < 0)
    i += TP_BREAKER_BUCKETS;
  if (b->b_epoch[i] != epoch) {
    b->b_epoch[i] = epoch;
    b->b_calls[i] = 0;
    b->b_fail[i] = 0;
  }
  b->b_calls[i]++;
  if (failure)
    b->b_fail[i]++;
}

static void closed_failure_check(struct tp_breaker *b, int64_t now_ms)
{
  if (b->consec >= b->cfg.consecutive) {
    enter(b, TP_BREAKER_OPEN, now_ms);
    return;
  }
  int calls, fails;
  tp_breaker_window(b, now_ms, &calls, &fails);
  if (calls >= b->cfg.min_calls && (double)fails >= b->cfg.failure_rate * (double)calls)
    enter(b, TP_BREAKER_OPEN, now_ms);
}

void tp_breaker_record(struct tp_breaker *b, bool failure, int64_t now_ms)
{
  switch (tp_breaker_tick(b, now_ms)) {
  case TP_BREAKER_CLOSED:
    window_add(b, failure, now_ms);
    if (!failure) {
      /* A call that worked outweighs failed health checks (a processor
       * whose health endpoint is missing but that takes payments). */
      b->consec = 0;
      b->health_consec = 0;
      return;
    }
    b->consec++;
    closed_failure_check(b, now_ms);
    return;
  case TP_BREAKER_OPEN:
    /* Answers to calls admitted before it opened: already decided. */
    return;
  case TP_BREAKER_HALF_OPEN:
    if (failure) {
      enter(b, TP_BREAKER_OPEN, now_ms);
      return;
    }
    if (++b->succeeded >= b->cfg.probes)
      enter(b, TP_BREAKER_CLOSED, now_ms);
    return;
  }
}

void tp_breaker_record_soft(struct tp_breaker *b, int64_t now_ms)
{
  switch (tp_breaker_tick(b, now_ms)) {
  case TP_BREAKER_CLOSED:
    window_add(b, true, now_ms);
    closed_failure_check(b, now_ms); /* the rate rule; consec is unchanged */
    return;
  case TP_BREAKER_OPEN:
    return;
  case TP_BREAKER_HALF_OPEN:
    /* Its probe slot is given back: held until the staleness limit, each
     * soft answer refused every merchant's payments for open_ms (session
     * 36's review). One card's soft answer says nothing of the processor
     * (it reopened, so one customer's card kept every merchant's breaker
     * open; session 33's): only `probes` of them from distinct cards (the
     * caller tells repeats apart and only gives their slot back, tp_breaker_release) reopen it, as a
     * processor answering 96 to everything does. */
    if (b->admitted > b->succeeded)
      b->admitted--;
    if (++b->soft_half >= b->cfg.probes)
      enter(b, TP_BREAKER_OPEN, now_ms);
    return;
  }
}

static bool health_hold_over(const struct tp_breaker *b, int64_t now_ms)
{
  return now_ms - b->down_since_ms >= (int64_t)TP_BREAKER_HEALTH_HOLD * b->cfg.open_ms;
}

void tp_breaker_health(struct tp_breaker *b, bool ok, int64_t now_ms)
{
  switch (tp_breaker_tick(b, now_ms)) {
  case TP_BREAKER_CLOSED:
    if (ok)
      b->health_consec = 0;
    else if (++b->health_consec >= b->cfg.consecutive) {
      enter(b, TP_BREAKER_OPEN, now_ms);
      b->opened_by_calls = false;
    }
    return;
  case TP_BREAKER_OPEN:
    if (ok && !b->opened_by_calls)
      enter(b, TP_BREAKER_HALF_OPEN, now_ms);
    else if (!ok && !health_hold_over(b, now_ms))
      b->since_ms = now_ms; /* still down: do not let payments probe it */
    return;
  case TP_BREAKER_HALF_OPEN:
    if (!ok && health_hold_over(b, now_ms))
      return; /* checks failing this long: the payment probes decide */
    if (!ok) {
      bool by_calls = b->opened_by_calls;
      enter(b, TP_BREAKER_OPEN, now_ms);
      b->opened_by_calls = by_calls;
      return;
    }
    if (!b->opened_by_calls && ++b->succeeded >= b->cfg.probes)
      enter(b, TP_BREAKER_CLOSED, now_ms);
    return;
  }
}

bool tp_breaker_before_probes(struct tp_breaker *b, int64_t sent_ms, int64_t now_ms)
{
  return tp_breaker_tick(b, now_ms) == TP_BREAKER_HALF_OPEN && sent_ms + TP_BREAKER_SENT_SLACK_MS < b->since_ms;
}

const char *tp_breaker_state_name(enum tp_breaker_state s)
{
  switch (s) {
  case TP_BREAKER_CLOSED:
    return "closed";
  case TP_BREAKER_OPEN:
    return "open";
  case TP_BREAKER_HALF_OPEN:
    return "half_open";
  }
  return "unknown";
}
