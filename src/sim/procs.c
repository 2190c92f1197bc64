/* Per-processor behaviour of the simulator: [sim.NAME] settings from the INI
 * file, changed at run time by POST /_sim/faults, and the random draws
 * (latency, declines, faults) made against them. */
#include "config.h"
#include "core/card.h"
#include "jpack.h"
#include "log.h"
#include "sim/sim.h"
#include "util.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_HOLD_MS 30000

struct proc {
  char name[TP_SIM_NAME_MAX];
  struct tp_sim_behaviour b;
  bool configured; /* by [sim.NAME] or /_sim/faults, not only seen */
};

static struct proc procs[TP_SIM_MAX_PROCS];
static unsigned n_procs;
static struct tp_sim_behaviour overflow_default; /* names past TP_SIM_MAX_PROCS */
static pthread_rwlock_t procs_mu = PTHREAD_RWLOCK_INITIALIZER;

#define TIMEOUT_OPS_ALL ((1u << TP_SIM_AUTHORIZE) | (1u << TP_SIM_CAPTURE) | (1u << TP_SIM_VOID) | (1u << TP_SIM_REFUND))

static void defaults(struct tp_sim_behaviour *b)
{
  memset(b, 0, sizeof *b);
  b->timeout_hold_ms = DEFAULT_HOLD_MS;
  b->timeout_ops = TIMEOUT_OPS_ALL;
}

/* "all", or a comma-separated list of authorize, capture, void, refund. */
static bool parse_ops(const char *value, unsigned *out)
{
  if (!strcasecmp(value, "all")) {
    *out = TIMEOUT_OPS_ALL;
    return true;
  }
  unsigned m = 0;
  const char *s = value;
  while (*s) {
    size_t n = strcspn(s, ",");
    bool found = false;
    for (unsigned i = TP_SIM_AUTHORIZE; i <= TP_SIM_REFUND; i++)
      if (n == strlen(tp_sim_op_name(i)) && !strncasecmp(s, tp_sim_op_name(i), n)) {
        m |= 1u << i;
        found = true;
      }
    if (!found)
      return false;
    s += n;
    if (*s == ',')
      s++;
  }
  if (!m)
    return false;
  *out = m;
  return true;
}

static void ops_text(unsigned m, char *out, size_t cap)
{
  size_t n = 0;
  out[0] = '\0';
  for (unsigned i = TP_SIM_AUTHORIZE; i <= TP_SIM_REFUND; i++)
    if (m & (1u << i)) {
      int w = snprintf(out + n, cap - n, "%s%s", n ? "," : "", tp_sim_op_name(i));
      if (w < 0 || (size_t)w >= cap - n)
        break;
      n += (size_t)w;
    }
}

bool tp_sim_name_ok(const char *name)
{
  size_t n = strlen(name);
  if (n == 0 || n >= TP_SIM_NAME_MAX)
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)name[i];
    if (!isalnum(c) && c != '_' && c != '-' && c != '.')
      return false;
  }
  return true;
}

/* Caller holds the write lock. NULL when the table is full. A name only
 * seen (its defaults remembered for the listing) gives its place to one
 * being configured: 256 names only seen refused every configuration. */
static struct proc *find_or_add(const char *name, bool configure)
{
  for (unsigned i = 0; i < n_procs; i++)
    if (strcmp(procs[i].name, name) == 0) {
      procs[i].configured |= configure;
      return &procs[i];
    }
  struct proc *p = NULL;
  if (n_procs < TP_SIM_MAX_PROCS)
    p = &procs[n_procs++];
  for (unsigned i = 0; !p && configure && i < n_procs; i++)
    if (!procs[i].configured)
      p = &procs[i];
  if (!p)
    return NULL;
  tp_scopy(p->name, sizeof p->name, name);
  defaults(&p->b);
  p->configured = configure;
  return p;
}

static bool parse_rate(const char *s, double *out)
{
  char *end;
  double d = strtod(s, &end);
  if (end == s || *end || !(d >= 0.0 && d <= 1.0))
    return false;
  *out = d;
  return true;
}

static bool parse_ms(const char *s, int64_t max, int64_t *out)
{
  char *end;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end || v < 0 || v > max)
    return false;
  *out = v;
  return true;
}

static bool parse_bool(const char *s, bool *out)
{
  if (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on") || !strcmp(s, "1"))
    *out = true;
  else if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off") || !strcmp(s, "0"))
    *out = false;
  else
    return false;
  return true;
}

/* The brands and currencies a decline_rate.X override may name (docs/simulator.md). */
static const char *const override_names[] = {"visa", "mastercard", "amex", "discover", "diners", "jcb",
                                             "unionpay", "maestro", "usd", "eur", "gbp", "jpy", "cad", "aud",
                                             "chf", "sek", "nok", "dkk", "pln", "brl", "mxn", "inr", NULL};

static int set_override(struct tp_sim_behaviour *b, const char *key, double rate)
{
  if (strlen(key) == 0 || strlen(key) >= sizeof b->overrides[0].key)
    return -1;
  char low[16];
  size_t i = 0;
  for (; key[i]; i++)
    low[i] = (char)tolower((unsigned char)key[i]);
  low[i] = '\0';
  bool known = false;
  for (int k = 0; override_names[k] && !known; k++)
    known = strcmp(override_names[k], low) == 0;
  if (!known) /* a misspelt brand would be taken and do nothing */
    return -1;
  for (unsigned j = 0; j < b->n_overrides; j++)
    if (strcmp(b->overrides[j].key, low) == 0) {
      b->overrides[j].rate = rate;
      return 0;
    }
  if (b->n_overrides >= TP_SIM_MAX_OVERRIDES)
    return -1;
  tp_scopy(b->overrides[b->n_overrides].key, sizeof b->overrides[0].key, low);
  b->overrides[b->n_overrides++].rate = rate;
  return 0;
}

/* One key = value for a processor; 0 or -1 (unknown key or bad value). */
static int set_key(struct tp_sim_behaviour *b, const char *key, const char *value)
{
  double d;
  int64_t ms;
  bool f;
  if (!strcasecmp(key, "protocol")) {
    if (!strcasecmp(value, "iso"))
      b->iso = true;
    else if (!strcasecmp(value, "rest"))
      b->iso = false;
    else
      return -1;
  } else if (!strcasecmp(key, "outage")) {
    if (!parse_bool(value, &f))
      return -1;
    b->outage = f;
  } else if (!strcasecmp(key, "decline_rate") || !strcasecmp(key, "error_rate") ||
             !strcasecmp(key, "timeout_rate") || !strcasecmp(key, "reset_rate")) {
    if (!parse_rate(value, &d))
      return -1;
    double *dst = !strcasecmp(key, "decline_rate") ? &b->decline_rate
                  : !strcasecmp(key, "error_rate") ? &b->error_rate
                  : !strcasecmp(key, "timeout_rate") ? &b->timeout_rate
                                                      : &b->reset_rate;
    *dst = d;
  } else if (!strncasecmp(key, "decline_rate.", 13)) {
    if (!parse_rate(value, &d) || set_override(b, key + 13, d) != 0)
      return -1;
  } else if (!strcasecmp(key, "latency_ms_min") || !strcasecmp(key, "latency_ms_max") ||
             !strcasecmp(key, "latency_p50_ms") || !strcasecmp(key, "latency_p99_ms")) {
    if (!parse_ms(value, TP_SIM_LATENCY_MAX_MS, &ms))
      return -1;
    int64_t *dst = !strcasecmp(key, "latency_ms_min")   ? &b->latency_ms_min
                   : !strcasecmp(key, "latency_ms_max") ? &b->latency_ms_max
                   : !strcasecmp(key, "latency_p50_ms") ? &b->latency_p50_ms
                                                         : &b->latency_p99_ms;
    *dst = ms;
  } else if (!strcasecmp(key, "timeout_hold_ms")) {
    if (!parse_ms(value, TP_SIM_HOLD_MAX_MS, &ms))
      return -1;
    b->timeout_hold_ms = ms;
  } else if (!strcasecmp(key, "timeout_mode")) {
    if (!strcasecmp(value, "before"))
      b->timeout_before = true;
    else if (!strcasecmp(value, "after"))
      b->timeout_before = false;
    else
      return -1;
  } else if (!strcasecmp(key, "timeout_operations")) {
    if (!parse_ops(value, &b->timeout_ops))
      return -1;
  } else if (!strcasecmp(key, "api_key")) {
    if (strlen(value) >= sizeof b->api_key)
      return -1;
    tp_scopy(b->api_key, sizeof b->api_key, value);
  } else
    return -1;
  return 0;
}

static const char *const known_keys[] = {
    "protocol",       "outage",         "decline_rate",   "error_rate",      "timeout_rate",
    "reset_rate",     "latency_ms_min", "latency_ms_max", "latency_p50_ms",  "latency_p99_ms",
    "timeout_hold_ms", "timeout_mode",  "timeout_operations", "api_key",
};

static void load_section(const char *section, void *arg)
{
  (void)arg;
  const char *name = section + 4; /* "sim." */
  if (!tp_sim_name_ok(name)) {
    tp_log(TP_LOG_WARN, "sim_config_bad_name", "{s:s}", "section", section);
    return;
  }
  pthread_rwlock_wrlock(&procs_mu);
  struct proc *p = find_or_add(name, true);
  if (p) {
    for (size_t i = 0; i < sizeof known_keys / sizeof known_keys[0]; i++) {
      const char *v = tp_config_get(section, known_keys[i]);
      if (v && set_key(&p->b, known_keys[i], v) != 0)
        tp_log(TP_LOG_WARN, "sim_config_bad_value", "{s:s, s:s}", "section", section, "key", known_keys[i]);
    }
    /* Per-brand and per-currency decline overrides. */
    for (size_t i = 0; override_names[i]; i++) {
      char k[40];
      snprintf(k, sizeof k, "decline_rate.%s", override_names[i]);
      const char *v = tp_config_get(section, k);
      if (v && set_key(&p->b, k, v) != 0)
        tp_log(TP_LOG_WARN, "sim_config_bad_value", "{s:s, s:s}", "section", section, "key", k);
    }
  }
  pthread_rwlock_unlock(&procs_mu);
}

void tp_sim_procs_load(void)
{
  defaults(&overflow_default);
  tp_config_sections("sim.", load_section, NULL);
}

void tp_sim_behaviour(const char *name, struct tp_sim_behaviour *out)
{
  pthread_rwlock_rdlock(&procs_mu);
  for (unsigned i = 0; i < n_procs; i++)
    if (strcmp(procs[i].name, name) == 0) {
      *out = procs[i].b;
      pthread_rwlock_unlock(&procs_mu);
      return;
    }
  pthread_rwlock_unlock(&procs_mu);
  /* Not configured: remember it with defaults so /_sim/faults lists it. */
  pthread_rwlock_wrlock(&procs_mu);
  struct proc *p = find_or_add(name, false);
  *out = p ? p->b : overflow_default;
  pthread_rwlock_unlock(&procs_mu);
}

int tp_sim_faults_apply(json_t *o, char *err, size_t errlen)
{
  if (!json_is_object(o)) {
    snprintf(err, errlen, "the body must be a JSON object");
    return -1;
  }
  const char *name = json_string_value(json_object_get(o, "processor"));
  if (!name || !tp_sim_name_ok(name)) {
    snprintf(err, errlen, "processor must be a valid processor name");
    return -1;
  }
  pthread_rwlock_wrlock(&procs_mu);
  /* Validate everything on a copy so a bad key changes nothing (and names
   * no new processor). */
  struct proc *p = NULL;
  for (unsigned i = 0; i < n_procs && !p; i++)
    if (strcmp(procs[i].name, name) == 0)
      p = &procs[i];
  struct tp_sim_behaviour b;
  if (p)
    b = p->b;
  else
    defaults(&b);
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v)
  {
    if (!strcmp(key, "processor"))
      continue;
    char buf[160];
    if (json_is_boolean(v))
      tp_scopy(buf, sizeof buf, json_is_true(v) ? "true" : "false");
    else if (json_is_integer(v))
      snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
      snprintf(buf, sizeof buf, "%.17g", json_real_value(v));
    else if (json_is_string(v) && strlen(json_string_value(v)) < sizeof buf)
      tp_scopy(buf, sizeof buf, json_string_value(v));
    else {
      pthread_rwlock_unlock(&procs_mu);
      snprintf(err, errlen, "%.64s: unsupported value", key);
      return -1;
    }
    if (set_key(&b, key, buf) != 0) {
      pthread_rwlock_unlock(&procs_mu);
      snprintf(err, errlen, "%.64s: unknown key or invalid value", key);
      return -1;
    }
  }
  if (!p || !p->configured)
    p = find_or_add(name, true);
  if (!p) {
    pthread_rwlock_unlock(&procs_mu);
    snprintf(err, errlen, "too many processors");
    return -1;
  }
  p->b = b;
  pthread_rwlock_unlock(&procs_mu);
  tp_log(TP_LOG_INFO, "sim_faults", "{s:s, s:b, s:f, s:f}", "processor", name, "outage", (int)b.outage,
         "error_rate", b.error_rate, "decline_rate", b.decline_rate);
  return 0;
}

static json_t *behaviour_json(const struct tp_sim_behaviour *b)
{
  json_t *o = tp_pack("{s:s, s:b, s:f, s:f, s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:s, s:b}", "protocol",
                      b->iso ? "iso" : "rest", "outage", (int)b->outage, "decline_rate", b->decline_rate,
                      "error_rate", b->error_rate, "timeout_rate", b->timeout_rate, "reset_rate",
                      b->reset_rate, "latency_ms_min", (json_int_t)b->latency_ms_min, "latency_ms_max",
                      (json_int_t)b->latency_ms_max, "latency_p50_ms", (json_int_t)b->latency_p50_ms,
                      "latency_p99_ms", (json_int_t)b->latency_p99_ms, "timeout_hold_ms",
                      (json_int_t)b->timeout_hold_ms, "timeout_mode", b->timeout_before ? "before" : "after",
                      "api_key_set", (int)(b->api_key[0] != '\0'));
  char ops[64];
  ops_text(b->timeout_ops, ops, sizeof ops);
  json_object_set_new(o, "timeout_operations", json_string(ops));
  for (unsigned i = 0; i < b->n_overrides; i++) {
    char k[40];
    snprintf(k, sizeof k, "decline_rate.%s", b->overrides[i].key);
    json_object_set_new(o, k, json_real(b->overrides[i].rate));
  }
  return o;
}

json_t *tp_sim_faults_dump(void)
{
  json_t *all = json_object();
  pthread_rwlock_rdlock(&procs_mu);
  for (unsigned i = 0; i < n_procs; i++)
    json_object_set_new(all, procs[i].name, behaviour_json(&procs[i].b));
  pthread_rwlock_unlock(&procs_mu);
  return all;
}

/* xoshiro-style generator per thread: fast, seeded from the OS RNG. Not for
 * secrets; only for fault and latency draws. */
static __thread uint64_t rng_s[2];

static uint64_t rng_next(void)
{
  if (!rng_s[0] && !rng_s[1]) {
    tp_random(rng_s, sizeof rng_s);
    rng_s[0] |= 1;
  }
  uint64_t s1 = rng_s[0];
  const uint64_t s0 = rng_s[1];
  const uint64_t result = s0 + s1;
  rng_s[0] = s0;
  s1 ^= s1 << 23;
  rng_s[1] = s1 ^ s0 ^ (s1 >> 18) ^ (s0 >> 5);
  return result;
}

double tp_sim_rand(void)
{
  return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0);
}

int64_t tp_sim_latency(const struct tp_sim_behaviour *b)
{
  double ms;
  if (b->latency_p50_ms > 0) {
    /* Log-normal through p50 and p99: mu = ln p50, sigma from the 99th
     * percentile's z-score (2.3263). A p99 below p50 means no spread. */
    double p50 = (double)b->latency_p50_ms;
    double p99 = (double)(b->latency_p99_ms > b->latency_p50_ms ? b->latency_p99_ms : b->latency_p50_ms);
    double sigma = (log(p99) - log(p50)) / 2.3263;
    double u1 = tp_sim_rand(), u2 = tp_sim_rand();
    if (u1 < 1e-300)
      u1 = 1e-300;
    double z = sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
    ms = exp(log(p50) + sigma * z);
    if (b->latency_ms_max > 0 && ms > (double)b->latency_ms_max)
      ms = (double)b->latency_ms_max;
    if (ms < (double)b->latency_ms_min)
      ms = (double)b->latency_ms_min;
  } else {
    int64_t lo = b->latency_ms_min, hi = b->latency_ms_max < lo ? lo : b->latency_ms_max;
    ms = (double)lo + tp_sim_rand() * (double)(hi - lo + (hi > lo ? 1 : 0));
    if (ms > (double)hi)
      ms = (double)hi;
  }
  if (ms > TP_SIM_LATENCY_MAX_MS)
    ms = TP_SIM_LATENCY_MAX_MS;
  return (int64_t)ms;
}

double tp_sim_decline_rate(const struct tp_sim_behaviour *b, const char *brand, const char *currency)
{
  double rate = b->decline_rate;
  bool over = false;
  double best = 0.0;
  for (unsigned i = 0; i < b->n_overrides; i++)
    if ((brand && !strcmp(b->overrides[i].key, brand)) || (currency && !strcmp(b->overrides[i].key, currency))) {
      if (!over || b->overrides[i].rate > best)
        best = b->overrides[i].rate;
      over = true;
    }
  return over ? best : rate;
}

const char *tp_sim_brand(const char *pan)
{
  return tp_brand_name(tp_card_brand(pan, strlen(pan)));
}

void tp_sim_auth_code(char out[7])
{
  static const char alpha[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  uint64_t r = rng_next();
  for (int i = 0; i < 6; i++) {
    out[i] = alpha[r % 36];
    r /= 36;
  }
  out[6] = '\0';
}
