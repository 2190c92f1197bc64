/* The router (see router.h and docs/routing.md). */
#include "core/router.h"
#include "core/card.h"
#include "core/currency.h"
#include "config.h"
#include "log.h"
#include "util.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- rules ------------------------------------------------------------------ */
struct rule {
  char name[64];
  char merchant[64];       /* "" or "*": any */
  char currency[4], brand[32], country[4];
  int64_t amount_min, amount_max; /* -1: no bound */
  size_t nmd;
  char md_key[TP_ROUTE_MD_MAX][41];
  char md_val[TP_ROUTE_MD_MAX][128];
  size_t nprocs;           /* 0: every processor */
  char procs[TP_ROUTE_MAX][64];
  size_t nsplit;
  char split_name[TP_ROUTE_MAX][64];
  unsigned split_pct[TP_ROUTE_MAX];
  bool ordered;            /* strategy = ordered: the merchant's order, no scoring */
};

static struct rule rules[TP_ROUTE_RULES_MAX];
static size_t nrules;
static double decay = 1.0 - 1.0 / 200.0;

static void copy_lower(char *dst, size_t cap, const char *src)
{
  size_t i = 0;
  for (; src && src[i] && i + 1 < cap; i++)
    dst[i] = (char)((src[i] >= 'A' && src[i] <= 'Z') ? src[i] + 32 : src[i]);
  dst[i] = '\0';
}

/* Loading a rule: the first problem found, for the one error line that
 * stops `turnpike serve` (a rule that silently lost a condition matched
 * more payments than its author meant; one that lost its processors sent
 * every match to 503). */
struct load {
  const char *section;
  bool (*proc_known)(const char *name);
  const char *key, *why;
  char detail[96];
};

static bool bad(struct load *l, const char *key, const char *why)
{
  if (!l->why) {
    l->key = key;
    l->why = why;
  }
  return false;
}

/* Split "a,b, c" into names, each a configured processor (when
 * proc_known is given); false on an empty or over-long item or too many. */
static bool split_list(struct load *l, const char *key, const char *v, char out[][64], size_t max, size_t *n)
{
  *n = 0;
  while (v && *v) {
    while (*v == ' ' || *v == '\t')
      v++;
    size_t len = strcspn(v, ",");
    size_t item = len;
    while (item > 0 && (v[item - 1] == ' ' || v[item - 1] == '\t'))
      item--;
    if (item == 0)
      return bad(l, key, "an empty item in the list");
    if (item >= 64)
      return bad(l, key, "an item longer than 63 bytes");
    if (*n >= max)
      return bad(l, key, "too many items");
    memcpy(out[*n], v, item);
    out[*n][item] = '\0';
    (*n)++;
    v += len;
    if (*v == ',')
      v++;
  }
  return true;
}

static bool proc_names_ok(struct load *l, const char *key, char names[][64], size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (l->proc_known && !l->proc_known(names[i])) {
      snprintf(l->detail, sizeof l->detail, "%s", names[i]);
      return bad(l, key, "not a configured processor");
    }
  return true;
}

/* A whole decimal number of minor units, 0 .. 10^15; -1 when absent. */
static bool amount_bound(struct load *l, const char *key, int64_t *out)
{
  *out = -1;
  const char *v = tp_config_get(l->section, key);
  if (!v)
    return true;
  int64_t x = 0;
  size_t i = 0;
  for (; v[i] >= '0' && v[i] <= '9' && x <= 1000000000000000LL; i++)
    x = x * 10 + (v[i] - '0');
  if (i == 0 || v[i] || x > 1000000000000000LL)
    return bad(l, key, "not a whole number of minor units (e.g. 1000 for 10.00 usd)");
  *out = x;
  return true;
}

static void md_key(const char *key, const char *value, void *arg)
{
  struct load *l = ((void **)arg)[0];
  struct rule *ru = ((void **)arg)[1];
  const char *k = key + strlen("metadata.");
  if (!*k || strlen(k) > 40)
    bad(l, key, "a metadata key is 1 to 40 characters");
  else if (!*value)
    bad(l, key, "an empty metadata value never matches (an empty value unsets a key)");
  else if (strlen(value) >= sizeof ru->md_val[0])
    bad(l, key, "a metadata value is at most 127 bytes");
  else if (ru->nmd >= TP_ROUTE_MD_MAX)
    bad(l, key, "at most 8 metadata conditions per rule");
  else {
    tp_scopy(ru->md_key[ru->nmd], sizeof ru->md_key[0], k);
    tp_scopy(ru->md_val[ru->nmd], sizeof ru->md_val[0], value);
    ru->nmd++;
  }
}

static void rule_key(const char *key, const char *value, void *arg)
{
  (void)value;
  static const char *const known[] = {"merchant", "currency", "brand", "country", "amount_min", "amount_max",
                                      "processors", "split", "strategy", NULL};
  if (strncasecmp(key, "metadata.", 9) == 0)
    return;
  for (int i = 0; known[i]; i++)
    if (strcasecmp(key, known[i]) == 0)
      return;
  bad(arg, key, "not a key of a [route.*] section (docs/routing.md §1)");
}

static bool load_rule(struct load *l, struct rule *ru)
{
  const char *section = l->section;
  memset(ru, 0, sizeof *ru);
  const char *name = section + strlen("route.");
  /* The name goes into the attempt's route JSON unescaped: kept plain. */
  if (strlen(name) >= sizeof ru->name || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                       "0123456789_-.") != strlen(name))
    return bad(l, NULL, "a rule's name is 1 to 63 letters, digits, '_', '-' or '.'");
  tp_scopy(ru->name, sizeof ru->name, name);
  tp_config_keys(section, "", rule_key, l);
  const char *v = tp_config_get(section, "merchant");
  if (v && strcmp(v, "*") != 0 &&
      (strncmp(v, "acct_", 5) != 0 || strlen(v) < 6 || strlen(v) >= sizeof ru->merchant ||
       strspn(v + 5, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") != strlen(v + 5)))
    return bad(l, "merchant", "an account id (acct_...) or *");
  tp_scopy(ru->merchant, sizeof ru->merchant, v && strcmp(v, "*") != 0 ? v : "");
  if ((v = tp_config_get(section, "currency")) != NULL) {
    if (!tp_currency_find(v))
      return bad(l, "currency", "not an ISO 4217 currency (one per rule)");
    copy_lower(ru->currency, sizeof ru->currency, v);
  }
  if ((v = tp_config_get(section, "brand")) != NULL) {
    if (tp_brand_from_name(v) == TP_BRAND_UNKNOWN)
      return bad(l, "brand", "not a card brand (visa, mastercard, amex ...; one per rule)");
    copy_lower(ru->brand, sizeof ru->brand, v);
  }
  if ((v = tp_config_get(section, "country")) != NULL) {
    bool two = strlen(v) == 2;
    for (int i = 0; two && i < 2; i++)
      two = (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z');
    if (!two)
      return bad(l, "country", "not a two-letter country code");
    copy_lower(ru->country, sizeof ru->country, v);
  }
  if (!amount_bound(l, "amount_min", &ru->amount_min) || !amount_bound(l, "amount_max", &ru->amount_max))
    return false;
  if (ru->amount_min >= 0 && ru->amount_max >= 0 && ru->amount_min > ru->amount_max)
    return bad(l, "amount_min", "greater than amount_max: the rule would never match");
  void *md_arg[2] = {l, ru};
  tp_config_keys(section, "metadata.", md_key, md_arg);
  const char *pl = tp_config_get(section, "processors");
  if (!split_list(l, "processors", pl, ru->procs, TP_ROUTE_MAX, &ru->nprocs) ||
      !proc_names_ok(l, "processors", ru->procs, ru->nprocs))
    return false;
  if (pl && !ru->nprocs)
    return bad(l, "processors", "empty: name one processor at least, or leave the key out for all");
  char parts[TP_ROUTE_MAX][64];
  size_t ns = 0;
  if (!split_list(l, "split", tp_config_get(section, "split"), parts, TP_ROUTE_MAX, &ns))
    return false;
  unsigned total = 0;
  for (size_t i = 0; i < ns; i++) {
    char *colon = strrchr(parts[i], ':');
    char *end = NULL;
    long pct = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || colon == parts[i] || end == colon + 1 || *end || pct <= 0 || pct > 100)
      return bad(l, "split", "each member is NAME:PERCENT, e.g. a:70,b:30");
    *colon = '\0';
    tp_scopy(ru->split_name[ru->nsplit], sizeof ru->split_name[0], parts[i]);
    ru->split_pct[ru->nsplit++] = (unsigned)pct;
    total += (unsigned)pct;
  }
  if (!proc_names_ok(l, "split", ru->split_name, ru->nsplit))
    return false;
  if (ns && total != 100)
    return bad(l, "split", "the percentages must add up to 100");
  /* A split member the rule's own processors leave out could never take
   * its share (it was accepted and silently ignored). */
  for (size_t i = 0; i < ru->nsplit && ru->nprocs; i++) {
    size_t k = 0;
    while (k < ru->nprocs && strcasecmp(ru->procs[k], ru->split_name[i]) != 0)
      k++;
    if (k == ru->nprocs)
      return bad(l, "split", "names a processor this rule's processors leave out");
  }
  const char *st = tp_config_get(section, "strategy");
  if (st && strcasecmp(st, "ordered") != 0 && strcasecmp(st, "score") != 0)
    return bad(l, "strategy", "either score or ordered");
  ru->ordered = st && strcasecmp(st, "ordered") == 0;
  return !l->why;
}

struct load_all {
  bool (*proc_known)(const char *name);
  int failed;
};

static void load_section(const char *section, void *arg)
{
  struct load_all *a = arg;
  if (a->failed)
    return;
  struct load l = {.section = section, .proc_known = a->proc_known};
  if (nrules >= TP_ROUTE_RULES_MAX)
    bad(&l, NULL, "more than 64 [route.*] sections");
  else if (load_rule(&l, &rules[nrules]))
    nrules++;
  if (l.why) {
    tp_log(TP_LOG_ERROR, "route_config_invalid", "{s:s, s:s, s:s, s:s}", "section", section, "key",
           l.key ? l.key : "", "error", l.why, "value", l.detail);
    a->failed = -1;
  }
}

int tp_router_load(bool (*proc_known)(const char *name))
{
  nrules = 0;
  struct load_all a = {proc_known, 0};
  tp_config_sections("route.", load_section, &a);
  int64_t window = tp_config_int("routing", "bandit_window", 200, 2, 1000000);
  decay = 1.0 - 1.0 / (double)window;
  return a.failed;
}

size_t tp_router_rules(void)
{
  return nrules;
}

static bool eq_ci(const char *rule_val, const char *v)
{
  return !rule_val[0] || (v && strcasecmp(rule_val, v) == 0);
}

static bool rule_matches(const struct rule *ru, const struct tp_route_pay *pay)
{
  if (ru->merchant[0] && (!pay->merchant || strcmp(ru->merchant, pay->merchant) != 0))
    return false;
  if (!eq_ci(ru->currency, pay->currency) || !eq_ci(ru->brand, pay->brand) || !eq_ci(ru->country, pay->country))
    return false;
  if (ru->amount_min >= 0 && pay->amount < ru->amount_min)
    return false;
  if (ru->amount_max >= 0 && pay->amount > ru->amount_max)
    return false;
  for (size_t i = 0; i < ru->nmd; i++) {
    const char *v = json_string_value(json_object_get(pay->metadata, ru->md_key[i]));
    if (!v || strcmp(v, ru->md_val[i]) != 0)
      return false;
  }
  return true;
}

/* ---- the bandit ----------------------------------------------------------------
 * One Beta(a, b) posterior per processor x brand x currency, starting at the
 * uniform prior Beta(1, 1). Each observation first discounts the old evidence
 * (a = 1 + d*(a-1), likewise b), so the posterior holds about 1/(1-d)
 * observations: a processor whose issuers start declining is noticed within a
 * window, and the posterior never gets so sharp that exploration stops. */
#define ARMS 4096
struct arm {
  char key[112];
  double a, b;
};
static struct arm arms[ARMS];
static pthread_mutex_t arms_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t rng_state;

static uint64_t fnv1a(const char *s)
{
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 1099511628211ULL;
  }
  return h;
}

/* Finds (or creates, when create) the arm; arms_mu held. */
static struct arm *arm_get(const char *proc, const char *brand, const char *currency, bool create)
{
  char key[112];
  snprintf(key, sizeof key, "%s|%s|%s", proc, brand ? brand : "", currency ? currency : "");
  uint64_t h = fnv1a(key);
  for (size_t i = 0; i < ARMS; i++) {
    struct arm *a = &arms[(h + i) % ARMS];
    if (!a->key[0]) {
      if (!create)
        return NULL;
      tp_scopy(a->key, sizeof a->key, key);
      a->a = a->b = 1.0;
      return a;
    }
    if (strcmp(a->key, key) == 0)
      return a;
  }
  return NULL; /* full: the arm stays at the prior */
}

/* xorshift64*: fast, good enough for sampling (not for secrets). */
static double rng_unit(void)
{
  if (!rng_state)
    tp_random(&rng_state, sizeof rng_state);
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  uint64_t x = rng_state * 2685821657736338717ULL;
  return ((double)(x >> 11) + 0.5) / 9007199254740992.0; /* (0, 1) */
}

static double rng_normal(void)
{
  double u1 = rng_unit(), u2 = rng_unit();
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Gamma(shape >= 1, 1) by Marsaglia and Tsang. */
static double rng_gamma(double shape)
{
  double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
  for (int i = 0; i < 1000; i++) {
    double x = rng_normal(), v = 1.0 + c * x;
    if (v <= 0)
      continue;
    v = v * v * v;
    double u = rng_unit();
    if (log(u) < 0.5 * x * x + d - d * v + d * log(v))
      return d * v;
  }
  return shape; /* practically unreachable; the mean is a fine answer */
}

static double rng_beta(double a, double b)
{
  double x = rng_gamma(a), y = rng_gamma(b);
  return x + y > 0 ? x / (x + y) : 0.5;
}

void tp_router_learn(const char *proc, const char *brand, const char *currency, bool approved)
{
  pthread_mutex_lock(&arms_mu);
  struct arm *a = arm_get(proc, brand, currency, true);
  if (a) {
    a->a = 1.0 + decay * (a->a - 1.0) + (approved ? 1.0 : 0.0);
    a->b = 1.0 + decay * (a->b - 1.0) + (approved ? 0.0 : 1.0);
  }
  pthread_mutex_unlock(&arms_mu);
}

double tp_router_p(const char *proc, const char *brand, const char *currency)
{
  pthread_mutex_lock(&arms_mu);
  const struct arm *a = arm_get(proc, brand, currency, false);
  double p = a ? a->a / (a->a + a->b) : 0.5;
  pthread_mutex_unlock(&arms_mu);
  return p;
}

void tp_router_reset(uint64_t seed)
{
  pthread_mutex_lock(&arms_mu);
  memset(arms, 0, sizeof arms);
  rng_state = seed;
  pthread_mutex_unlock(&arms_mu);
}

/* ---- routing ------------------------------------------------------------------ */
unsigned tp_route_bucket(const char *payment_id)
{
  /* Mix the FNV hash once more so ids that share a long prefix spread well. */
  uint64_t h = fnv1a(payment_id ? payment_id : "");
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return (unsigned)(h % 100);
}

struct scored {
  struct tp_route_entry e;
  int prio, weight;
  const char *name;
};

static int cmp_scored(const void *x, const void *y)
{
  const struct scored *a = x, *b = y;
  if (fabs(a->e.score - b->e.score) > 1e-9)
    return a->e.score > b->e.score ? -1 : 1;
  if (a->prio != b->prio)
    return a->prio < b->prio ? -1 : 1;
  if (a->weight != b->weight)
    return a->weight > b->weight ? -1 : 1;
  return strcmp(a->name, b->name);
}

static int rule_pos(const struct rule *ru, const char *name)
{
  for (size_t i = 0; i < ru->nprocs; i++)
    if (strcasecmp(ru->procs[i], name) == 0) /* as [processor.NAME] sections are */
      return (int)i;
  return -1;
}

size_t tp_router_route(const struct tp_route_pay *pay, const struct tp_route_cand *c, size_t nc, struct tp_route_plan *out)
{
  memset(out, 0, sizeof *out);
  const struct rule *ru = NULL;
  for (size_t i = 0; i < nrules && !ru; i++)
    if (rule_matches(&rules[i], pay))
      ru = &rules[i];
  if (ru)
    tp_scopy(out->rule, sizeof out->rule, ru->name);

  /* The split member this payment falls into, if the rule has a split. */
  const char *split_pick = NULL;
  if (ru && ru->nsplit) {
    unsigned total = 0;
    for (size_t i = 0; i < ru->nsplit; i++)
      total += ru->split_pct[i];
    unsigned b = tp_route_bucket(pay->payment_id) % (total ? total : 1), acc = 0;
    for (size_t i = 0; i < ru->nsplit && !split_pick; i++) {
      acc += ru->split_pct[i];
      if (b < acc)
        split_pick = ru->split_name[i];
    }
  }

  struct scored s[TP_ROUTE_CANDIDATES];
  size_t n = 0;
  pthread_mutex_lock(&arms_mu);
  for (size_t i = 0; i < nc && n < TP_ROUTE_CANDIDATES; i++) {
    const struct tp_route_cand *k = &c[i];
    if (!k->supports || k->open)
      continue;
    int pos = ru && ru->nprocs ? rule_pos(ru, k->name) : -1;
    if (ru && ru->nprocs && pos < 0)
      continue;
    const struct arm *a = arm_get(k->name, pay->brand, pay->currency, false);
    double aa = a ? a->a : 1.0, bb = a ? a->b : 1.0;
    double theta = rng_beta(aa, bb);
    double amount = (double)pay->amount;
    struct scored *x = &s[n++];
    x->e.cand = i;
    x->e.p = aa / (aa + bb);
    x->e.score = theta * amount - (double)k->fee - amount * ((double)k->p50_us / 1000.0) / TP_ROUTE_LATENCY_DIV;
    x->e.why = "bandit";
    x->prio = pos >= 0 ? pos : k->priority;
    x->weight = k->weight;
    x->name = k->name;
    if (ru && ru->ordered)
      x->e.score = 0; /* the merchant's order decides (prio) */
  }
  pthread_mutex_unlock(&arms_mu);
  qsort(s, n, sizeof s[0], cmp_scored);
  /* The split member goes first when it is eligible; the others stay behind
   * it as the cascade. */
  if (split_pick) {
    for (size_t i = 0; i < n; i++)
      if (strcasecmp(s[i].name, split_pick) == 0) {
        struct scored t = s[i];
        memmove(&s[1], &s[0], i * sizeof s[0]);
        s[0] = t;
        s[0].e.why = "split";
        break;
      }
  }
  if (n > TP_ROUTE_MAX)
    n = TP_ROUTE_MAX; /* the best ones; the rest would only lengthen the cascade */
  for (size_t i = 0; i < n; i++) {
    out->e[i] = s[i].e;
    if (ru && ru->ordered && s[i].e.why[0] == 'b')
      out->e[i].why = "rule";
  }
  if (n == 1 && strcmp(out->e[0].why, "bandit") == 0)
    out->e[0].why = "only";
  out->n = n;
  return n;
}

void tp_router_reason(const struct tp_route_plan *rt, size_t i, char *out, size_t cap)
{
  if (i >= rt->n) {
    snprintf(out, cap, "{}");
    return;
  }
  const struct tp_route_entry *e = &rt->e[i];
  int n = snprintf(out, cap, "{\"rule\":\"%.63s\",\"rank\":%zu,\"of\":%zu,\"score\":%.1f,\"p\":%.3f,\"why\":\"%s\"}",
                   rt->rule, i + 1, rt->n, e->score, e->p, e->why);
  if (n < 0 || (size_t)n >= cap)
    snprintf(out, cap, "{\"rank\":%zu,\"why\":\"%s\"}", i + 1, e->why);
}

/* ---- decline classes ------------------------------------------------------------ */
bool tp_decline_is_soft(const char *dc)
{
  static const char *const soft[] = {"processing_error", "issuer_not_available", "try_again_later",
                                     "reenter_transaction", NULL};
  if (!dc || !*dc)
    return false;
  for (int i = 0; soft[i]; i++)
    if (strcmp(dc, soft[i]) == 0)
      return true;
  return false;
}
