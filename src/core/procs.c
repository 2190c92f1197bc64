/* The processor registry (see procs.h): config parsing, connectors, circuit
 * breakers, rolling statistics and the active health-check thread. */
#include "core/procs.h"
#include "cli.h"
#include "config.h"
#include "core/alerts.h"
#include "core/card.h"
#include "core/currency.h"
#include "core/payflow.h"
#include "jpack.h"
#include "log.h"
#include "main/features.h"
#include "metrics.h"
#include "util.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define PROC_BRANDS_MAX 16
#define PROC_CURRENCIES_MAX 64
#define PROC_FIXED_MAX 64         /* per-currency fixed fees */
#define PROC_RING 1024            /* calls in the rolling statistics */
#define PROC_PCT_CACHE_MS 100     /* recompute percentiles at most this often */
#define PROC_CALLBACKS_MAX 8
#define HEALTH_TICK_MS 20         /* breaker timers and health scheduling */
#define FEE_SCALE 1000000         /* fee_percent is kept in parts per million */

enum proc_health { HEALTH_UNKNOWN, HEALTH_UP, HEALTH_DOWN };
struct health_xfer;

#define PROC_SOFT_CARDS 64
#define TP_PROC_SOFT_CARD_MS 60000

struct tp_proc_state {
  pthread_mutex_t mu;
  struct tp_breaker br;
  struct {
    uint64_t key;
    int64_t at_ms;
  } soft_card[PROC_SOFT_CARDS]; /* the cards whose soft decline was counted lately */
  int soft_pos;
  char endpoint[512];
  char api_key[256];
  char ca_file[512], client_cert[512], client_key[512]; /* restjson TLS, "" = unset */
  char terminal_id[16];
  char merchant_id[16];
  char brands[PROC_BRANDS_MAX][16];
  int nbrands;
  char currencies[PROC_CURRENCIES_MAX][4];
  int ncurrencies;
  int64_t fee_ppm;              /* 2.9% -> 29000 */
  int64_t fee_fixed;
  struct {
    char currency[4];
    int64_t amount;
  } fixed[PROC_FIXED_MAX];
  int nfixed;
  int health_interval_ms;
  int64_t next_health_ms;
  struct health_xfer *health_x;  /* health thread only: the check in flight */
  enum proc_health health;
  int64_t health_changed_ms;
  uint64_t calls, failures, approved, declined, errors;
  int64_t lat[PROC_RING];
  uint8_t ok[PROC_RING];
  unsigned ring_pos, ring_n;
  int64_t pct[3];
  int64_t pct_at_ms;
  bool pct_dirty;
  char labels[96];              /* processor="NAME" */
  bool running;                 /* connector started */
};

static struct tp_proc procs[TP_PROCS_MAX];
static size_t nprocs;
static int64_t (*clock_fn)(void);

static struct {
  void (*fn)(struct tp_proc *p, enum tp_breaker_state from, enum tp_breaker_state to, void *arg);
  void *arg;
} callbacks[PROC_CALLBACKS_MAX];
static int ncallbacks;

static int64_t now_ms(void)
{
  return clock_fn ? clock_fn() : tp_mono_ms();
}

void tp_procs_set_clock(int64_t (*fn)(void))
{
  clock_fn = fn;
}

size_t tp_procs_count(void)
{
  return nprocs;
}

struct tp_proc *tp_proc_at(size_t i)
{
  return i < nprocs ? &procs[i] : NULL;
}

bool tp_proc_known(const char *name)
{
  for (size_t i = 0; name && i < nprocs; i++)
    if (strcasecmp(procs[i].name, name) == 0) /* sections are case-insensitive */
      return true;
  return false;
}

struct tp_proc *tp_proc_find(const char *name)
{
  for (size_t i = 0; name && i < nprocs; i++)
    if (strcmp(procs[i].name, name) == 0)
      return &procs[i];
  return NULL;
}

void tp_procs_on_breaker(void (*fn)(struct tp_proc *p, enum tp_breaker_state from, enum tp_breaker_state to,
                                    void *arg),
                         void *arg)
{
  if (ncallbacks == PROC_CALLBACKS_MAX) {
    tp_log(TP_LOG_ERROR, "breaker_callbacks_full", "{s:i}", "max", PROC_CALLBACKS_MAX);
    return;
  }
  callbacks[ncallbacks].fn = fn;
  callbacks[ncallbacks].arg = arg;
  ncallbacks++;
}

/* A breaker's state and count of openings, taken under the lock before and
 * after a call's accounting. */
struct br_mark {
  enum tp_breaker_state state;
  uint64_t opens;
};

static struct br_mark br_mark(const struct tp_breaker *b)
{
  return (struct br_mark){b->state, b->opens};
}

/* One transition: log, gauge, callbacks. Outside the lock. */
static void breaker_moved(struct tp_proc *p, enum tp_breaker_state from, enum tp_breaker_state to)
{
  tp_log(to == TP_BREAKER_OPEN ? TP_LOG_WARN : TP_LOG_INFO, "processor_breaker", "{s:s, s:s, s:s}", "processor",
         p->name, "from", tp_breaker_state_name(from), "to", tp_breaker_state_name(to));
  tp_metric_set("turnpike_processor_breaker_state", p->st->labels, (int64_t)to);
  if (to == TP_BREAKER_OPEN)
    tp_metric_inc("turnpike_processor_breaker_opens_total", p->st->labels, 1);
  tp_alert_scope_down(p->name, to == TP_BREAKER_OPEN);
  for (int i = 0; i < ncallbacks; i++)
    callbacks[i].fn(p, from, to, callbacks[i].arg);
}

/* A breaker changed state between two marks. Open at both ends with an
 * opening between means its open period ended inside the call (half-open)
 * and the call's failure opened it again: two transitions, so the log and
 * turnpike_processor_breaker_opens_total agree with the API's
 * breaker_opens. */
static void breaker_changed(struct tp_proc *p, struct br_mark a, struct br_mark b)
{
  if (a.state == b.state && a.opens == b.opens)
    return;
  if (a.state == b.state) {
    breaker_moved(p, a.state, TP_BREAKER_HALF_OPEN);
    breaker_moved(p, TP_BREAKER_HALF_OPEN, b.state);
    return;
  }
  breaker_moved(p, a.state, b.state);
}

/* ---- queries ------------------------------------------------------------ */

bool tp_proc_supports(const struct tp_proc *p, const char *brand, const char *currency)
{
  const struct tp_proc_state *s = p->st;
  if (brand && *brand && s->nbrands > 0) {
    bool ok = false;
    for (int i = 0; i < s->nbrands && !ok; i++)
      ok = strcasecmp(s->brands[i], brand) == 0;
    if (!ok)
      return false;
  }
  if (currency && *currency && s->ncurrencies > 0) {
    bool ok = false;
    for (int i = 0; i < s->ncurrencies && !ok; i++)
      ok = strcasecmp(s->currencies[i], currency) == 0;
    if (!ok)
      return false;
  }
  return true;
}

static int64_t fixed_fee(const struct tp_proc_state *s, const char *currency)
{
  for (int i = 0; currency && i < s->nfixed; i++)
    if (strcasecmp(s->fixed[i].currency, currency) == 0)
      return s->fixed[i].amount;
  return s->fee_fixed;
}

int64_t tp_proc_fee(const struct tp_proc *p, const char *currency, int64_t amount)
{
  const struct tp_proc_state *s = p->st;
  int64_t pct = 0;
  /* The fixed part is whole minor units, so rounding the percent part is
   * the one and only rounding. Amounts are bounded (TP_AMOUNT_MAX), so the
   * product cannot overflow the 128-bit intermediate. */
  if (tp_amount_muldiv(amount, s->fee_ppm, FEE_SCALE, &pct) != 0)
    pct = 0;
  return pct + fixed_fee(s, currency);
}

/* Ask the breaker whether a call may go (take: and admit it, a probe slot
 * in half-open, *slot), under the processor's lock. */
static bool breaker_ask(const struct tp_proc *p, bool take, uint64_t *slot)
{
  struct tp_proc_state *s = p->st;
  pthread_mutex_lock(&s->mu);
  struct br_mark from = br_mark(&s->br);
  bool ok = take ? tp_breaker_allow(&s->br, now_ms()) : tp_breaker_would_allow(&s->br, now_ms());
  if (slot)
    *slot = ok && take ? tp_breaker_slot(&s->br) : 0;
  struct br_mark to = br_mark(&s->br);
  pthread_mutex_unlock(&s->mu);
  /* The callbacks get a mutable processor: it is ours (the registry). */
  breaker_changed(&procs[p - procs], from, to);
  return ok;
}

bool tp_proc_allow(struct tp_proc *p, uint64_t *slot)
{
  return breaker_ask(p, true, slot);
}

bool tp_proc_may_call(const struct tp_proc *p)
{
  return breaker_ask(p, false, NULL);
}

bool tp_proc_reserve(struct tp_proc *p, uint64_t *slot)
{
  struct tp_proc_state *s = p->st;
  pthread_mutex_lock(&s->mu);
  struct br_mark from = br_mark(&s->br);
  enum tp_breaker_state st = tp_breaker_tick(&s->br, now_ms());
  /* closed: nothing to hold (send_call asks again: it may open meanwhile) */
  bool ok = st == TP_BREAKER_CLOSED || (st == TP_BREAKER_HALF_OPEN && tp_breaker_allow(&s->br, now_ms()));
  *slot = ok ? tp_breaker_slot(&s->br) : 0;
  struct br_mark to = br_mark(&s->br);
  pthread_mutex_unlock(&s->mu);
  breaker_changed(p, from, to);
  return ok;
}

/* Is slot still live (half-open, its period)? And, release, give it back. */
static bool slot_live(struct tp_proc *p, uint64_t slot, bool release)
{
  struct tp_proc_state *s = p->st;
  pthread_mutex_lock(&s->mu);
  struct br_mark from = br_mark(&s->br);
  bool live = tp_breaker_slot_live(&s->br, slot, now_ms());
  if (live && release)
    tp_breaker_release(&s->br, now_ms());
  struct br_mark to = br_mark(&s->br);
  pthread_mutex_unlock(&s->mu);
  breaker_changed(p, from, to);
  return live;
}

bool tp_proc_slot_live(struct tp_proc *p, uint64_t slot)
{
  return slot_live(p, slot, false);
}

void tp_proc_release(struct tp_proc *p, uint64_t slot)
{
  (void)slot_live(p, slot, true);
}

enum tp_breaker_state tp_proc_breaker(const struct tp_proc *p)
{
  struct tp_proc_state *s = p->st;
  pthread_mutex_lock(&s->mu);
  struct br_mark from = br_mark(&s->br);
  tp_breaker_tick(&s->br, now_ms());
  struct br_mark to = br_mark(&s->br);
  pthread_mutex_unlock(&s->mu);
  /* The callbacks get a mutable processor: it is ours (the registry). */
  breaker_changed(&procs[p - procs], from, to);
  return to.state;
}

static const char *outcome_name(enum tp_proc_outcome o)
{
  switch (o) {
  case TP_OUT_APPROVED:
    return "approved";
  case TP_OUT_DECLINED:
    return "declined";
  case TP_OUT_ERROR:
    return "error";
  case TP_OUT_NOT_FOUND:
    return "not_found";
  }
  return "error";
}

/* A label value we trust: lower-case letters, digits, '_' (else "other"). */
static const char *label_value(const char *s)
{
  if (!s || !*s || strlen(s) > 24)
    return "none";
  for (const char *c = s; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_'))
      return "other";
  return s;
}

/* Whether the card's soft decline was counted within TP_PROC_SOFT_CARD_MS
 * (noted now if not). Caller holds s->mu. */
static bool soft_card_seen(struct tp_proc_state *s, uint64_t card, int64_t now)
{
  for (int i = 0; i < PROC_SOFT_CARDS; i++)
    if (s->soft_card[i].key == card && now - s->soft_card[i].at_ms < TP_PROC_SOFT_CARD_MS)
      return true;
  s->soft_card[s->soft_pos].key = card;
  s->soft_card[s->soft_pos].at_ms = now;
  s->soft_pos = (s->soft_pos + 1) % PROC_SOFT_CARDS;
  return false;
}

void tp_proc_record(struct tp_proc *p, const char *brand, const char *currency, enum tp_proc_outcome o,
                    const char *decline_code, bool transient, int64_t latency_us, uint64_t card, bool probe)
{
  struct tp_proc_state *s = p->st;
  /* A soft decline from a networked processor (ISO 96/91, processing_error)
   * may say it is struggling: it counts toward the failure rate, not the
   * consecutive rule (tp_breaker_record_soft). From the in-process sandbox
   * it is only the test card 4000000000000119 answering, as in Stripe's
   * test mode: not a failure at all. */
  bool error = o == TP_OUT_ERROR;
  bool soft = !error && transient && strcmp(p->type, "sandbox") != 0;
  bool failure = error || soft;
  if (latency_us < 0)
    latency_us = 0;
  pthread_mutex_lock(&s->mu);
  struct br_mark from = br_mark(&s->br);
  int64_t now = now_ms();
  if (tp_breaker_before_probes(&s->br, now - latency_us / 1000, now)) {
    /* sent before the half-open began: no probe, and says nothing of now */
  } else if (soft && !probe && s->br.state == TP_BREAKER_HALF_OPEN) {
    /* a capture's, refund's or void's: it took no probe slot, so gives
     * none back (an authorization probe's, still out) and reopens nothing */
  } else if (soft) {
    /* One card's soft declines count once a while: one customer (or one
     * fraudster) retrying one card opened every merchant's breaker. */
    if (!card || !soft_card_seen(s, card, now))
      tp_breaker_record_soft(&s->br, now);
    else
      tp_breaker_release(&s->br, now);
  } else
    tp_breaker_record(&s->br, error, now);
  struct br_mark to = br_mark(&s->br);
  s->calls++;
  s->failures += failure;
  s->approved += o == TP_OUT_APPROVED;
  s->declined += o == TP_OUT_DECLINED;
  s->errors += o == TP_OUT_ERROR;
  s->lat[s->ring_pos] = latency_us;
  s->ok[s->ring_pos] = o == TP_OUT_APPROVED;
  s->ring_pos = (s->ring_pos + 1) % PROC_RING;
  if (s->ring_n < PROC_RING)
    s->ring_n++;
  s->pct_dirty = true;
  pthread_mutex_unlock(&s->mu);
  breaker_changed(p, from, to);

  char labels[256];
  snprintf(labels, sizeof labels, "%s,outcome=\"%s\",brand=\"%s\",currency=\"%s\"", s->labels, outcome_name(o),
           label_value(brand), label_value(currency));
  tp_metric_inc("turnpike_processor_calls_total", labels, 1);
  if (failure) {
    snprintf(labels, sizeof labels, "%s,code=\"%s\"", s->labels, label_value(decline_code));
    tp_metric_inc("turnpike_processor_failures_total", labels, 1);
  }
  tp_metric_observe_us("turnpike_processor_call_duration_seconds", s->labels, latency_us);
  tp_alert_observe(p->name, o == TP_OUT_ERROR, o == TP_OUT_DECLINED, latency_us);
}

static int cmp_i64(const void *a, const void *b)
{
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Refresh the cached percentiles; caller holds the lock. */
static void percentiles(struct tp_proc_state *s)
{
  int64_t t = now_ms();
  if (!s->pct_dirty || (s->pct_at_ms && t - s->pct_at_ms < PROC_PCT_CACHE_MS && s->pct_at_ms <= t))
    return;
  static const int want[3] = {50, 90, 99};
  int64_t v[PROC_RING];
  unsigned n = s->ring_n;
  memcpy(v, s->lat, n * sizeof v[0]);
  qsort(v, n, sizeof v[0], cmp_i64);
  for (int i = 0; i < 3; i++) {
    if (n == 0) {
      s->pct[i] = 0;
      continue;
    }
    /* nearest rank */
    unsigned rank = (unsigned)((want[i] * (uint64_t)n + 99) / 100);
    s->pct[i] = v[rank ? rank - 1 : 0];
  }
  s->pct_dirty = false;
  s->pct_at_ms = t;
}

int64_t tp_proc_latency_us(const struct tp_proc *p, int percentile)
{
  struct tp_proc_state *s = p->st;
  int i = percentile <= 50 ? 0 : percentile <= 90 ? 1 : 2;
  pthread_mutex_lock(&s->mu);
  percentiles(s);
  int64_t v = s->pct[i];
  pthread_mutex_unlock(&s->mu);
  return v;
}

static double success_rate_locked(const struct tp_proc_state *s)
{
  if (s->ring_n == 0)
    return 1.0;
  unsigned ok = 0;
  for (unsigned i = 0; i < s->ring_n; i++)
    ok += s->ok[i];
  return (double)ok / (double)s->ring_n;
}

double tp_proc_success_rate(const struct tp_proc *p)
{
  struct tp_proc_state *s = p->st;
  pthread_mutex_lock(&s->mu);
  double r = success_rate_locked(s);
  pthread_mutex_unlock(&s->mu);
  return r;
}

static const char *health_name(enum proc_health h)
{
  return h == HEALTH_UP ? "up" : h == HEALTH_DOWN ? "down" : "unknown";
}

/* "2.9" from 29000 parts per million of the amount (percent with up to 4 decimals). */
static void format_percent(char *out, size_t cap, int64_t ppm)
{
  int64_t whole = ppm / 10000, frac = ppm % 10000;
  if (frac == 0) {
    snprintf(out, cap, "%lld", (long long)whole);
    return;
  }
  char f[8];
  snprintf(f, sizeof f, "%04lld", (long long)frac);
  for (int i = 3; i > 0 && f[i] == '0'; i--)
    f[i] = 0;
  snprintf(out, cap, "%lld.%s", (long long)whole, f);
}

json_t *tp_proc_json(const struct tp_proc *p)
{
  struct tp_proc_state *s = p->st;
  enum tp_breaker_state br = tp_proc_breaker(p);
  json_t *brands = json_array(), *currencies = json_array(), *fixed = json_object();
  for (int i = 0; i < s->nbrands; i++)
    json_array_append_new(brands, json_string(s->brands[i]));
  for (int i = 0; i < s->ncurrencies; i++)
    json_array_append_new(currencies, json_string(s->currencies[i]));
  for (int i = 0; i < s->nfixed; i++)
    json_object_set_new(fixed, s->fixed[i].currency, json_integer(s->fixed[i].amount));
  char pct[32];
  format_percent(pct, sizeof pct, s->fee_ppm);

  pthread_mutex_lock(&s->mu);
  percentiles(s);
  int calls_w = 0, fails_w = 0;
  tp_breaker_window(&s->br, now_ms(), &calls_w, &fails_w);
  json_t *o = json_object();
  json_object_set_new(o, "object", json_string("processor"));
  json_object_set_new(o, "name", json_string(p->name));
  json_object_set_new(o, "type", json_string(p->type));
  json_object_set_new(o, "endpoint", json_string(s->endpoint));
  json_object_set_new(o, "health", json_string(health_name(s->health)));
  json_object_set_new(o, "breaker", json_string(tp_breaker_state_name(br)));
  json_object_set_new(o, "breaker_opens", json_integer((json_int_t)s->br.opens));
  json_object_set_new(o, "success_rate", s->ring_n ? json_real(success_rate_locked(s)) : json_null());
  json_object_set_new(o, "calls", json_integer((json_int_t)s->calls));
  json_object_set_new(o, "failures", json_integer((json_int_t)s->failures));
  json_object_set_new(o, "approved", json_integer((json_int_t)s->approved));
  json_object_set_new(o, "declined", json_integer((json_int_t)s->declined));
  json_object_set_new(o, "errors", json_integer((json_int_t)s->errors));
  json_object_set_new(o, "latency_ms", tp_pack("{s:f, s:f, s:f, s:I}", "p50", (double)s->pct[0] / 1000.0, "p90",
                                               (double)s->pct[1] / 1000.0, "p99", (double)s->pct[2] / 1000.0,
                                               "samples", (json_int_t)s->ring_n));
  json_object_set_new(o, "window", tp_pack("{s:i, s:i}", "calls", calls_w, "failures", fails_w));
  pthread_mutex_unlock(&s->mu);
  json_object_set_new(o, "brands", brands);
  json_object_set_new(o, "currencies", currencies);
  json_object_set_new(o, "fees", tp_pack("{s:s, s:I, s:o}", "percent", pct, "fixed", (json_int_t)s->fee_fixed,
                                         "fixed_by_currency", fixed));
  json_object_set_new(o, "weight", json_integer(p->weight));
  json_object_set_new(o, "priority", json_integer(p->priority));
  json_object_set_new(o, "timeout_ms", json_integer(p->timeout_ms));
  json_object_set_new(o, "can_query_status", json_boolean(p->can_query_status));
  if (strcmp(p->type, "iso8583") == 0 && s->running) {
    json_t *link = json_object();
    tp_iso8583_stats(&p->conn, link);
    json_object_set_new(o, "link", link);
  }
  if (strcmp(p->type, "iso8583") == 0) /* owed durably, as of the last recovery scan */
    json_object_set_new(o, "reversals_pending", json_integer((json_int_t)tp_payflow_reversals_pending(p->name)));
  return o;
}

bool tp_procs_any_usable(void)
{
  for (size_t i = 0; i < nprocs; i++) {
    struct tp_proc *p = &procs[i];
    if (tp_proc_breaker(p) == TP_BREAKER_OPEN)
      continue;
    pthread_mutex_lock(&p->st->mu);
    bool down = p->st->health == HEALTH_DOWN;
    pthread_mutex_unlock(&p->st->mu);
    if (!down)
      return true;
  }
  return false;
}

void tp_proc_health(struct tp_proc *p, bool ok)
{
  struct tp_proc_state *s = p->st;
  pthread_mutex_lock(&s->mu);
  enum proc_health was = s->health;
  s->health = ok ? HEALTH_UP : HEALTH_DOWN;
  struct br_mark from = br_mark(&s->br);
  tp_breaker_health(&s->br, ok, now_ms());
  struct br_mark to = br_mark(&s->br);
  pthread_mutex_unlock(&s->mu);
  if (was != s->health) {
    tp_log(ok ? TP_LOG_INFO : TP_LOG_WARN, "processor_health", "{s:s, s:s}", "processor", p->name, "health",
           health_name(s->health));
    tp_metric_set("turnpike_processor_up", s->labels, ok ? 1 : 0);
  }
  breaker_changed(p, from, to);
}

/* ---- configuration ------------------------------------------------------ */

struct cfg_ctx {
  int failed;
};

static int cfg_error(const char *section, const char *key, const char *msg)
{
  tp_log(TP_LOG_ERROR, "processor_config_invalid", "{s:s, s:s, s:s}", "section", section, "key", key ? key : "",
         "error", msg);
  return -1;
}

static int get_int(const char *sec, const char *key, int64_t def, int64_t min, int64_t max, int64_t *out)
{
  const char *v = tp_config_get(sec, key);
  if (!v || !*v) {
    *out = def;
    return 0;
  }
  char *end;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  while (*end == ' ' || *end == '\t')
    end++;
  if (errno || end == v || *end || n < min || n > max) {
    char msg[128];
    snprintf(msg, sizeof msg, "must be an integer from %lld to %lld", (long long)min, (long long)max);
    return cfg_error(sec, key, msg);
  }
  *out = n;
  return 0;
}

/* Parse a non-negative decimal with up to `decimals` fractional digits into
 * an integer scaled by 10^decimals, exactly (no floating point: fees are money). */
static int parse_decimal(const char *v, int decimals, int64_t max_scaled, int64_t *out)
{
  int64_t whole = 0, frac = 0;
  int nd = 0, nf = 0;
  const char *s = v;
  while (*s == ' ')
    s++;
  for (; *s >= '0' && *s <= '9'; s++, nd++) {
    if (whole > max_scaled)
      return -1;
    whole = whole * 10 + (*s - '0');
  }
  if (*s == '.') {
    s++;
    for (; *s >= '0' && *s <= '9'; s++, nf++) {
      if (nf >= decimals)
        return -1;
      frac = frac * 10 + (*s - '0');
    }
    if (nf == 0)
      return -1;
  }
  while (*s == ' ')
    s++;
  if (*s || nd == 0)
    return -1;
  for (int i = nf; i < decimals; i++)
    frac *= 10;
  int64_t scale = 1;
  for (int i = 0; i < decimals; i++)
    scale *= 10;
  if (whole > max_scaled / scale)
    return -1;
  int64_t r = whole * scale + frac;
  if (r > max_scaled)
    return -1;
  *out = r;
  return 0;
}

/* Split a comma-separated list into lower-case items, each checked by ok(). */
static int parse_list(const char *sec, const char *key, char *items, size_t item_len, int max, int *n,
                      bool (*ok)(const char *))
{
  const char *v = tp_config_get(sec, key);
  *n = 0;
  if (!v)
    return 0;
  const char *s = v;
  while (*s) {
    while (*s == ' ' || *s == ',' || *s == '\t')
      s++;
    if (!*s)
      break;
    size_t len = 0;
    char item[32];
    while (s[len] && s[len] != ',' && s[len] != ' ' && s[len] != '\t')
      len++;
    if (len >= item_len || len >= sizeof item) {
      return cfg_error(sec, key, "item too long");
    }
    for (size_t i = 0; i < len; i++)
      item[i] = (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i]);
    item[len] = 0;
    s += len;
    if (!ok(item)) {
      char msg[96];
      snprintf(msg, sizeof msg, "unknown value \"%.40s\"", item);
      return cfg_error(sec, key, msg);
    }
    bool dup = false;
    for (int i = 0; i < *n && !dup; i++)
      dup = strcmp(items + (size_t)i * item_len, item) == 0;
    if (dup)
      continue;
    if (*n == max)
      return cfg_error(sec, key, "too many items");
    memcpy(items + (size_t)(*n) * item_len, item, len + 1);
    (*n)++;
  }
  return 0;
}

static bool brand_ok(const char *s)
{
  return tp_brand_from_name(s) != TP_BRAND_UNKNOWN;
}

static bool currency_ok(const char *s)
{
  return tp_currency_find(s) != NULL;
}

static bool name_ok(const char *s)
{
  size_t n = strlen(s);
  if (n == 0 || n >= 64)
    return false;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
          *s == '-'))
      return false;
  return true;
}

/* restjson: an http(s) URL without credentials, query or fragment. */
static int check_url(const char *sec, const char *v)
{
  CURLU *u = curl_url();
  if (!u)
    return cfg_error(sec, "endpoint", "out of memory");
  int rc = -1;
  char *scheme = NULL, *user = NULL, *pass = NULL, *query = NULL, *frag = NULL, *host = NULL;
  if (strlen(v) >= 480 || curl_url_set(u, CURLUPART_URL, v, 0) != CURLUE_OK)
    cfg_error(sec, "endpoint", "not a URL (expected http://HOST:PORT/PATH or https://...)");
  else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
           (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
    cfg_error(sec, "endpoint", "scheme must be http or https");
  else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host)
    cfg_error(sec, "endpoint", "no host");
  else if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
           curl_url_get(u, CURLUPART_PASSWORD, &pass, 0) == CURLUE_OK)
    cfg_error(sec, "endpoint", "credentials in the URL: use api_key");
  else if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK ||
           curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0) == CURLUE_OK)
    cfg_error(sec, "endpoint", "no query or fragment allowed");
  else {
    rc = 0;
    /* Card numbers go in the request body: in clear text only to this
     * host (turnpike sim, a local proxy that adds TLS). */
    if (strcmp(scheme, "http") == 0 && strcmp(host, "localhost") != 0 && strncmp(host, "127.", 4) != 0 &&
        strcmp(host, "[::1]") != 0 && strcmp(host, "::1") != 0)
      tp_log(TP_LOG_WARN, "processor_plaintext_endpoint", "{s:s, s:s, s:s}", "section", sec, "host", host, "why",
             "card numbers would cross the network unencrypted: use https");
  }
  curl_free(scheme);
  curl_free(user);
  curl_free(pass);
  curl_free(query);
  curl_free(frag);
  curl_free(host);
  curl_url_cleanup(u);
  return rc;
}

/* iso8583: HOST:PORT or [IPV6]:PORT. */
static int check_hostport(const char *sec, const char *v)
{
  char host[256];
  uint16_t port;
  if (tp_cli_hostport(v, host, sizeof host, &port) != 0 || port == 0)
    return cfg_error(sec, "endpoint", "expected HOST:PORT");
  for (const char *s = host; *s; s++)
    if (*s == ' ' || *s == '/' || *s == '@')
      return cfg_error(sec, "endpoint", "expected HOST:PORT");
  return 0;
}

struct fixed_ctx {
  const char *sec;
  struct tp_proc_state *s;
  int failed;
};

static void fixed_key(const char *key, const char *value, void *arg)
{
  (void)value;
  struct fixed_ctx *f = arg;
  if (f->failed)
    return;
  const char *cur = key + strlen("fee_fixed.");
  const struct tp_currency *c = tp_currency_find(cur);
  if (!c) {
    f->failed = cfg_error(f->sec, key, "unknown currency");
    return;
  }
  for (int i = 0; i < f->s->nfixed; i++)
    if (strcmp(f->s->fixed[i].currency, c->code) == 0)
      return; /* later duplicate: tp_config_get already gives the last one */
  if (f->s->nfixed == PROC_FIXED_MAX) {
    f->failed = cfg_error(f->sec, key, "too many per-currency fees");
    return;
  }
  int64_t amt;
  if (get_int(f->sec, key, 0, 0, TP_AMOUNT_MAX, &amt) != 0) {
    f->failed = -1;
    return;
  }
  tp_scopy(f->s->fixed[f->s->nfixed].currency, sizeof f->s->fixed[0].currency, c->code);
  f->s->fixed[f->s->nfixed].amount = amt;
  f->s->nfixed++;
}

static const char *const known_keys[] = {
  "type", "endpoint", "api_key", "terminal_id", "merchant_id", "timeout_ms", "brands", "currencies",
  "fee_percent", "fee_fixed", "weight", "priority", "health_interval_ms", "breaker_failure_rate",
  "breaker_min_calls", "breaker_consecutive", "breaker_open_ms", "breaker_half_open_probes",
  "breaker_window_ms", "ca_file", "client_cert", "client_key",
  "echo_interval_ms", "reversal_tries", /* the last two: iso8583.c */
};

struct keys_ctx {
  const char *sec;
  int failed;
};

static void unknown_key(const char *key, const char *value, void *arg)
{
  (void)value;
  struct keys_ctx *k = arg;
  const char *sec = k->sec;
  if (strncasecmp(key, "fee_fixed.", 10) == 0)
    return;
  for (size_t i = 0; i < sizeof known_keys / sizeof known_keys[0]; i++)
    if (strcasecmp(key, known_keys[i]) == 0)
      return;
  tp_log(TP_LOG_ERROR, "processor_config_invalid", "{s:s, s:s, s:s}", "section", sec, "key", key, "error",
         "unknown key (docs/processors.md lists them)");
  k->failed = -1;
}

static void state_free(struct tp_proc_state *s)
{
  if (!s)
    return;
  pthread_mutex_destroy(&s->mu);
  OPENSSL_cleanse(s->api_key, sizeof s->api_key);
  free(s);
}

/* An optional TLS file of a restjson processor: it must be readable now,
 * so a typo stops serve instead of failing every payment later. */
static int tls_path(const char *sec, const char *type, const char *key, char *out, size_t cap)
{
  const char *v = tp_config_get(sec, key);
  out[0] = 0;
  if (!v || !*v)
    return 0;
  if (strcmp(type, "restjson") != 0)
    return cfg_error(sec, key, "only for type = restjson");
  if (strlen(v) >= cap || strpbrk(v, "\r\n"))
    return cfg_error(sec, key, "path too long or has a line break");
  if (access(v, R_OK) != 0)
    return cfg_error(sec, key, "file not readable");
  const char *exposed = strcmp(key, "client_key") == 0 ? tp_key_file_exposed(v) : NULL;
  if (exposed)
    return cfg_error(sec, key, exposed);
  snprintf(out, cap, "%s", v);
  return 0;
}

/* One [processor.NAME] section into the next registry slot. */
static int configure_one(const char *sec)
{
  const char *name = sec + strlen("processor.");
  if (!name_ok(name))
    return cfg_error(sec, NULL, "processor names are 1-63 letters, digits, '_' or '-'");
  if (tp_proc_find(name))
    return cfg_error(sec, NULL, "duplicate processor name");
  if (nprocs == TP_PROCS_MAX)
    return cfg_error(sec, NULL, "too many processors");
  struct keys_ctx kc = {sec, 0};
  tp_config_keys(sec, "", unknown_key, &kc);
  if (kc.failed)
    return -1;

  struct tp_proc *p = &procs[nprocs];
  memset(p, 0, sizeof *p);
  struct tp_proc_state *s = calloc(1, sizeof *s);
  if (!s)
    return cfg_error(sec, NULL, "out of memory");
  pthread_mutex_init(&s->mu, NULL);
  p->st = s;
  tp_scopy(p->name, sizeof p->name, name);
  snprintf(s->labels, sizeof s->labels, "processor=\"%s\"", name);

  const char *type = tp_config_get(sec, "type");
  /* No type is the sandbox, but not for a section that names a real
   * processor (an endpoint, a key, a terminal): a missing or misspelt type
   * there made the in-process sandbox approve every payment. */
  static const char *const remote_keys[] = {"endpoint", "api_key", "terminal_id", "merchant_id",
                                            "ca_file", "client_cert", "client_key", NULL};
  const char *remote = NULL;
  for (int i = 0; remote_keys[i] && !remote; i++)
    if (tp_config_get(sec, remote_keys[i]))
      remote = remote_keys[i];
  if (type && !*type) {
    state_free(s);
    return cfg_error(sec, "type", "empty: sandbox, restjson or iso8583");
  }
  if (!type && remote) {
    state_free(s);
    return cfg_error(sec, "type", "missing, while the section names a remote processor (restjson or iso8583)");
  }
  if (!type)
    type = "sandbox";
  if (strcmp(type, "sandbox") != 0 && strcmp(type, "restjson") != 0 && strcmp(type, "iso8583") != 0) {
    state_free(s);
    return cfg_error(sec, "type", "unknown type (sandbox, restjson or iso8583)");
  }
  if (strcmp(type, "sandbox") == 0 && remote) {
    state_free(s);
    return cfg_error(sec, remote, "a sandbox is in-process: this key is for restjson or iso8583");
  }
  tp_scopy(p->type, sizeof p->type, type);
  p->can_query_status = strcmp(type, "iso8583") != 0;

  const char *ep = tp_config_get(sec, "endpoint");
  int rc = 0;
  if (strcmp(type, "sandbox") == 0) {
    snprintf(s->endpoint, sizeof s->endpoint, "in-process");
    s->health = HEALTH_UP;
  } else if (!ep || !*ep) {
    rc = cfg_error(sec, "endpoint", "required for this type");
  } else if (strcmp(type, "restjson") == 0 ? check_url(sec, ep) : check_hostport(sec, ep)) {
    rc = -1;
  } else {
    tp_scopy(s->endpoint, sizeof s->endpoint, ep);
  }
  const char *v;
  if (rc == 0 && (v = tp_config_get(sec, "api_key")) != NULL) {
    if (strlen(v) >= sizeof s->api_key || strpbrk(v, "\r\n"))
      rc = cfg_error(sec, "api_key", "too long or has a line break");
    else
      tp_scopy(s->api_key, sizeof s->api_key, v);
  }
  if (rc == 0 && (v = tp_config_get(sec, "terminal_id")) != NULL) {
    if (strlen(v) != 8)
      rc = cfg_error(sec, "terminal_id", "must be 8 characters (ISO 8583 field 41)");
    else
      tp_scopy(s->terminal_id, sizeof s->terminal_id, v);
  }
  if (rc == 0 && (v = tp_config_get(sec, "merchant_id")) != NULL) {
    if (strlen(v) == 0 || strlen(v) > 15)
      rc = cfg_error(sec, "merchant_id", "must be 1-15 characters (ISO 8583 field 42)");
    else
      tp_scopy(s->merchant_id, sizeof s->merchant_id, v);
  }

  rc = rc == 0 ? tls_path(sec, type, "ca_file", s->ca_file, sizeof s->ca_file) : rc;
  rc = rc == 0 ? tls_path(sec, type, "client_cert", s->client_cert, sizeof s->client_cert) : rc;
  rc = rc == 0 ? tls_path(sec, type, "client_key", s->client_key, sizeof s->client_key) : rc;
  if (rc == 0 && !s->client_cert[0] != !s->client_key[0])
    rc = cfg_error(sec, s->client_cert[0] ? "client_key" : "client_cert",
                   "client_cert and client_key go together");

  int64_t timeout, weight, priority, health, min_calls, consec, open_ms, probes, window_ms;
  if (rc == 0)
    rc = get_int(sec, "timeout_ms", 2000, 1, 600000, &timeout);
  if (rc == 0)
    rc = get_int(sec, "weight", 1, 0, 1000000, &weight);
  if (rc == 0)
    rc = get_int(sec, "priority", 1, 0, 1000000, &priority);
  if (rc == 0)
    rc = get_int(sec, "health_interval_ms", 1000, 0, 3600000, &health);
  if (rc == 0 && health > 0 && health < 10)
    rc = cfg_error(sec, "health_interval_ms", "0 (off) or at least 10");
  if (rc == 0)
    rc = get_int(sec, "breaker_min_calls", 20, 1, 1000000, &min_calls);
  if (rc == 0)
    rc = get_int(sec, "breaker_consecutive", 5, 1, 1000000, &consec);
  if (rc == 0)
    rc = get_int(sec, "breaker_open_ms", 5000, 1, 3600000, &open_ms);
  if (rc == 0)
    rc = get_int(sec, "breaker_half_open_probes", 3, 1, 1000, &probes);
  if (rc == 0)
    rc = get_int(sec, "breaker_window_ms", 10000, 10, 3600000, &window_ms);
  if (rc == 0)
    rc = parse_list(sec, "brands", &s->brands[0][0], sizeof s->brands[0], PROC_BRANDS_MAX, &s->nbrands, brand_ok);
  if (rc == 0)
    rc = parse_list(sec, "currencies", &s->currencies[0][0], sizeof s->currencies[0], PROC_CURRENCIES_MAX,
                    &s->ncurrencies, currency_ok);
  if (rc == 0 && (v = tp_config_get(sec, "fee_percent")) != NULL &&
      parse_decimal(v, 4, 100 * 10000, &s->fee_ppm) != 0)
    rc = cfg_error(sec, "fee_percent", "a percentage from 0 to 100 with at most 4 decimals, like 2.9");
  if (rc == 0)
    rc = get_int(sec, "fee_fixed", 0, 0, TP_AMOUNT_MAX, &s->fee_fixed);
  if (rc == 0) {
    struct fixed_ctx f = {sec, s, 0};
    tp_config_keys(sec, "fee_fixed.", fixed_key, &f);
    rc = f.failed;
  }
  struct tp_breaker_cfg bc;
  tp_breaker_defaults(&bc);
  if (rc == 0 && (v = tp_config_get(sec, "breaker_failure_rate")) != NULL) {
    /* A rate, not money: a double is fine. */
    char *end;
    double r = strtod(v, &end);
    while (*end == ' ')
      end++;
    if (end == v || *end || !(r > 0.0 && r <= 1.0))
      rc = cfg_error(sec, "breaker_failure_rate", "a rate in (0, 1], like 0.5");
    else
      bc.failure_rate = r;
  }
  if (rc != 0) {
    state_free(s);
    p->st = NULL;
    return -1;
  }
  p->timeout_ms = (int)timeout;
  p->weight = (int)weight;
  p->priority = (int)priority;
  s->health_interval_ms = (int)health;
  bc.min_calls = (int)min_calls;
  bc.consecutive = (int)consec;
  bc.open_ms = open_ms;
  bc.probes = (int)probes;
  bc.bucket_ms = window_ms / TP_BREAKER_BUCKETS > 0 ? window_ms / TP_BREAKER_BUCKETS : 1;
  bc.probe_stale_ms = timeout + 1000; /* a probe reports by its call's timeout */
  tp_breaker_init(&s->br, &bc, now_ms());
  nprocs++;
  return 0;
}

static void section_cb(const char *section, void *arg)
{
  struct cfg_ctx *c = arg;
  if (configure_one(section) != 0)
    c->failed = 1;
}

void tp_procs_reset(void)
{
  for (size_t i = 0; i < nprocs; i++) {
    state_free(procs[i].st);
    memset(&procs[i], 0, sizeof procs[i]);
  }
  nprocs = 0;
  /* Callbacks stay: subsystems may register before the registry is built. */
}

int tp_procs_configure(void)
{
  tp_procs_reset();
  struct cfg_ctx c = {0};
  tp_config_sections("processor.", section_cb, &c);
  if (c.failed) {
    tp_procs_reset();
    return -1;
  }
  if (nprocs == 0) {
    /* No [processor.*] section: the embedded sandbox, as before. */
    struct tp_proc *p = &procs[0];
    memset(p, 0, sizeof *p);
    struct tp_proc_state *s = calloc(1, sizeof *s);
    if (!s)
      return -1;
    pthread_mutex_init(&s->mu, NULL);
    p->st = s;
    snprintf(p->name, sizeof p->name, "sandbox");
    snprintf(p->type, sizeof p->type, "sandbox");
    snprintf(s->endpoint, sizeof s->endpoint, "in-process");
    snprintf(s->labels, sizeof s->labels, "processor=\"sandbox\"");
    s->health = HEALTH_UP;
    p->timeout_ms = 2000;
    p->weight = 1;
    p->priority = 1;
    p->can_query_status = true;
    struct tp_breaker_cfg bc;
    tp_breaker_defaults(&bc);
    tp_breaker_init(&s->br, &bc, now_ms());
    nprocs = 1;
  }
  return 0;
}

/* ---- health checks ------------------------------------------------------ */

struct health_xfer {
  struct tp_proc *p;
  CURL *easy;
  struct curl_slist *headers;
  char url[600];
};

static struct {
  pthread_t thread;
  bool started;
  _Atomic bool stop; /* read by health_main */
  CURLM *multi;
} hc;

static size_t discard(char *d, size_t size, size_t nmemb, void *arg)
{
  (void)d;
  (void)arg;
  size_t n = size * nmemb;
  return n <= 4096 ? n : 0; /* a health answer is small; bigger fails the check */
}

static void health_start_check(struct tp_proc *p, int64_t t)
{
  struct tp_proc_state *s = p->st;
  struct health_xfer *x = calloc(1, sizeof *x);
  if (!x)
    return;
  x->p = p;
  x->easy = curl_easy_init();
  size_t el = strlen(s->endpoint);
  while (el > 0 && s->endpoint[el - 1] == '/')
    el--;
  snprintf(x->url, sizeof x->url, "%.*s/v1/health", (int)el, s->endpoint);
  if (s->api_key[0]) {
    char auth[320];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", s->api_key);
    x->headers = curl_slist_append(NULL, auth);
    OPENSSL_cleanse(auth, sizeof auth);
  }
  if (!x->easy) {
    curl_slist_free_all(x->headers);
    free(x);
    return;
  }
  long timeout = p->timeout_ms;
  if (s->health_interval_ms > 0 && timeout > s->health_interval_ms)
    timeout = s->health_interval_ms;
  curl_easy_setopt(x->easy, CURLOPT_URL, x->url);
  curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
  curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, timeout);
  curl_easy_setopt(x->easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, discard);
  struct tp_tls_opts tls = {s->ca_file, s->client_cert, s->client_key};
  tp_curl_tls_setup(x->easy, &tls);
  if (x->headers)
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers);
  if (curl_multi_add_handle(hc.multi, x->easy) != CURLM_OK) {
    curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    free(x);
    return;
  }
  s->health_x = x;
  s->next_health_ms = t + s->health_interval_ms;
}

static void health_free(struct health_xfer *x)
{
  x->p->st->health_x = NULL;
  curl_multi_remove_handle(hc.multi, x->easy);
  curl_easy_cleanup(x->easy);
  curl_slist_free_all(x->headers);
  free(x);
}

static void health_done(struct health_xfer *x, CURLcode rc)
{
  long http = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &http);
  tp_proc_health(x->p, rc == CURLE_OK && http == 200);
  health_free(x);
}

/* An ISO 8583 link is healthy when it is up and signed on (the connector
 * keeps it alive with 0800 echoes); a link still connecting says nothing. */
static void iso_health(struct tp_proc *p)
{
  json_t *st = json_object();
  tp_iso8583_stats(&p->conn, st);
  const char *link = json_string_value(json_object_get(st, "link"));
  bool signed_on = json_is_true(json_object_get(st, "signed_on"));
  if (link && strcmp(link, "up") == 0 && signed_on)
    tp_proc_health(p, true);
  else if (link && strcmp(link, "down") == 0)
    tp_proc_health(p, false);
  json_decref(st);
}

static void *health_main(void *arg)
{
  (void)arg;
  while (!hc.stop) {
    int64_t t = now_ms();
    for (size_t i = 0; i < nprocs; i++) {
      struct tp_proc *p = &procs[i];
      struct tp_proc_state *s = p->st;
      tp_proc_breaker(p); /* time-driven transitions fire their callbacks */
      if (strcmp(p->type, "restjson") == 0 && s->health_interval_ms > 0 && !s->health_x &&
          t >= s->next_health_ms)
        health_start_check(p, t);
      if (strcmp(p->type, "iso8583") == 0 && s->health_interval_ms > 0 && t >= s->next_health_ms) {
        s->next_health_ms = t + s->health_interval_ms;
        iso_health(p);
      }
    }
    int still = 0;
    curl_multi_perform(hc.multi, &still);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(hc.multi, &left)) != NULL) {
      if (m->msg != CURLMSG_DONE)
        continue;
      struct health_xfer *x = NULL;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
      health_done(x, m->data.result);
    }
    curl_multi_poll(hc.multi, NULL, 0, HEALTH_TICK_MS, NULL);
  }
  /* Checks still running are dropped. */
  for (size_t i = 0; i < nprocs; i++)
    if (procs[i].st->health_x)
      health_free(procs[i].st->health_x);
  return NULL;
}

/* ---- start / stop ------------------------------------------------------- */

static int start_connector(struct tp_proc *p)
{
  struct tp_proc_state *s = p->st;
  if (strcmp(p->type, "sandbox") == 0)
    return tp_sandbox_start(&p->conn, p->name);
  if (strcmp(p->type, "restjson") == 0) {
    struct tp_tls_opts tls = {s->ca_file, s->client_cert, s->client_key};
    return tp_restjson_start(&p->conn, p->name, s->endpoint, s->api_key, p->timeout_ms, &tls);
  }
  /* iso8583: checked by check_hostport */
  char host[256];
  uint16_t port;
  if (tp_cli_hostport(s->endpoint, host, sizeof host, &port) != 0)
    return -1;
  return tp_iso8583_start(&p->conn, p->name, host, port, p->timeout_ms, s->terminal_id, s->merchant_id);
}

static void stop_connectors(void)
{
  for (size_t i = 0; i < nprocs; i++)
    if (procs[i].st && procs[i].st->running) {
      procs[i].conn.ops->stop(procs[i].conn.cls);
      procs[i].st->running = false;
    }
}

int tp_procs_start(void)
{
  if (tp_procs_configure() != 0)
    return -1;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  tp_metric_help("turnpike_processor_calls_total", "Finished processor calls by outcome, brand and currency");
  tp_metric_help("turnpike_processor_failures_total", "Processor calls that count as breaker failures, by code");
  tp_metric_help("turnpike_processor_call_duration_seconds", "Processor call latency");
  tp_metric_help("turnpike_processor_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open");
  tp_metric_help("turnpike_processor_breaker_opens_total", "Times the circuit breaker opened");
  tp_metric_help("turnpike_processor_up", "Last active health check: 1 passed, 0 failed");
  for (size_t i = 0; i < nprocs; i++) {
    struct tp_proc *p = &procs[i];
    if (start_connector(p) != 0) {
      tp_log(TP_LOG_ERROR, "processor_start_failed", "{s:s, s:s}", "processor", p->name, "type", p->type);
      stop_connectors();
      tp_procs_reset();
      return -1;
    }
    p->st->running = true;
    tp_metric_set("turnpike_processor_breaker_state", p->st->labels, 0);
    tp_metric_inc("turnpike_processor_breaker_opens_total", p->st->labels, 0); /* at 0 from the start */
    tp_log(TP_LOG_INFO, "processor_started", "{s:s, s:s, s:s}", "processor", p->name, "type", p->type,
           "endpoint", p->st->endpoint);
  }
  tp_default_connector = &procs[0].conn;
  hc.stop = false;
  hc.multi = curl_multi_init();
  if (!hc.multi || pthread_create(&hc.thread, NULL, health_main, NULL) != 0) {
    tp_log(TP_LOG_ERROR, "health_thread_failed", NULL);
    if (hc.multi)
      curl_multi_cleanup(hc.multi);
    hc.multi = NULL;
    stop_connectors();
    tp_procs_reset();
    return -1;
  }
  hc.started = true;
  return 0;
}

void tp_procs_stop(void)
{
  if (hc.started) {
    hc.stop = true;
    curl_multi_wakeup(hc.multi);
    pthread_join(hc.thread, NULL);
    hc.started = false;
    curl_multi_cleanup(hc.multi);
    hc.multi = NULL;
  }
  stop_connectors();
  tp_procs_reset();
}
