/* The metrics registry: series keyed by name + label string in a hash table
 * split into shards, each with its own mutex, so threads counting different
 * series rarely meet. An update is one hash, one uncontended lock and an
 * add; rendering copies every shard under its lock, sorts and prints. */
#include "metrics.h"
#include "util.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHARDS 16
#define SLOTS_PER_SHARD 512
#define HELP_MAX 256
#define NBUCKETS 14

enum mtype { M_COUNTER, M_GAUGE, M_HIST_US, M_HIST_N };

/* Bucket bounds: microseconds for durations (printed as seconds), plain
 * counts for sizes. */
static const int64_t us_bounds[NBUCKETS] = {500, 1000, 2500, 5000, 10000, 25000, 50000,
                                            100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};
static const char *const us_names[NBUCKETS] = {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                                               "0.1", "0.25", "0.5", "1", "2.5", "5", "10"};
#define NBUCKETS_N 12
static const int64_t n_bounds[NBUCKETS_N] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000};

struct series {
  struct series *next;
  uint64_t hash;
  enum mtype type;
  char name[TP_METRICS_NAME_MAX];
  char labels[TP_METRICS_LABELS_MAX];
  int64_t value;                  /* counter, gauge; histogram sum (us or n) */
  uint64_t count;                 /* histogram observations */
  uint64_t buckets[NBUCKETS];     /* histogram, not cumulative */
};

struct shard {
  pthread_mutex_t mu;
  struct series *slots[SLOTS_PER_SHARD];
};

static struct shard shards[SHARDS];
static pthread_once_t once = PTHREAD_ONCE_INIT;
static atomic_int nseries;
static atomic_ullong dropped;

struct help {
  char name[TP_METRICS_NAME_MAX];
  char text[HELP_MAX];
};
#define HELPS_MAX 256
static struct help helps[HELPS_MAX];
static int nhelps;
static pthread_mutex_t help_mu = PTHREAD_MUTEX_INITIALIZER;

static void init(void)
{
  for (int i = 0; i < SHARDS; i++)
    pthread_mutex_init(&shards[i].mu, NULL);
}

/* FNV-1a over name, a separator and the labels. */
static uint64_t hash2(const char *a, const char *b)
{
  uint64_t h = 1469598103934665603ULL;
  for (; *a; a++)
    h = (h ^ (unsigned char)*a) * 1099511628211ULL;
  h = (h ^ 0xff) * 1099511628211ULL;
  for (; *b; b++)
    h = (h ^ (unsigned char)*b) * 1099511628211ULL;
  return h;
}

static bool valid_name(const char *n)
{
  if (!n || !*n || strlen(n) >= TP_METRICS_NAME_MAX)
    return false;
  for (const char *p = n; *p; p++) {
    char c = *p;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
              (p != n && c >= '0' && c <= '9');
    if (!ok)
      return false;
  }
  return true;
}

/* Find or create the series; returns it with its shard locked, or NULL
 * (nothing locked) when invalid, of another type, or past the bound. */
static struct series *get(const char *name, const char *labels, enum mtype type, struct shard **out)
{
  pthread_once(&once, init);
  if (!labels)
    labels = "";
  if (!valid_name(name) || strlen(labels) >= TP_METRICS_LABELS_MAX)
    return NULL;
  uint64_t h = hash2(name, labels);
  struct shard *sh = &shards[h % SHARDS];
  unsigned slot = (unsigned)((h / SHARDS) % SLOTS_PER_SHARD);
  pthread_mutex_lock(&sh->mu);
  for (struct series *s = sh->slots[slot]; s; s = s->next) {
    if (s->hash == h && strcmp(s->name, name) == 0 && strcmp(s->labels, labels) == 0) {
      if (s->type != type) {
        pthread_mutex_unlock(&sh->mu);
        return NULL;
      }
      *out = sh;
      return s;
    }
  }
  if (atomic_fetch_add(&nseries, 1) >= TP_METRICS_MAX_SERIES) {
    atomic_fetch_sub(&nseries, 1);
    atomic_fetch_add(&dropped, 1);
    pthread_mutex_unlock(&sh->mu);
    return NULL;
  }
  struct series *s = calloc(1, sizeof *s);
  if (!s) {
    atomic_fetch_sub(&nseries, 1);
    pthread_mutex_unlock(&sh->mu);
    return NULL;
  }
  s->hash = h;
  s->type = type;
  tp_scopy(s->name, sizeof s->name, name);
  tp_scopy(s->labels, sizeof s->labels, labels);
  s->next = sh->slots[slot];
  sh->slots[slot] = s;
  *out = sh;
  return s;
}

void tp_metric_inc(const char *name, const char *labels, uint64_t v)
{
  struct shard *sh;
  struct series *s = get(name, labels, M_COUNTER, &sh);
  if (!s)
    return;
  s->value += (int64_t)v;
  pthread_mutex_unlock(&sh->mu);
}

void tp_metric_set(const char *name, const char *labels, int64_t v)
{
  struct shard *sh;
  struct series *s = get(name, labels, M_GAUGE, &sh);
  if (!s)
    return;
  s->value = v;
  pthread_mutex_unlock(&sh->mu);
}

void tp_metric_add(const char *name, const char *labels, int64_t delta)
{
  struct shard *sh;
  struct series *s = get(name, labels, M_GAUGE, &sh);
  if (!s)
    return;
  s->value += delta;
  pthread_mutex_unlock(&sh->mu);
}

static void observe(const char *name, const char *labels, enum mtype type, int64_t v)
{
  const int64_t *bounds = type == M_HIST_US ? us_bounds : n_bounds;
  int nb = type == M_HIST_US ? NBUCKETS : NBUCKETS_N;
  if (v < 0)
    v = 0;
  int i = 0;
  while (i < nb && v > bounds[i])
    i++;
  struct shard *sh;
  struct series *s = get(name, labels, type, &sh);
  if (!s)
    return;
  if (i < nb)
    s->buckets[i]++;
  s->count++;
  s->value += v;
  pthread_mutex_unlock(&sh->mu);
}

void tp_metric_observe_us(const char *name, const char *labels, int64_t usec)
{
  observe(name, labels, M_HIST_US, usec);
}

void tp_metric_observe_n(const char *name, const char *labels, uint64_t n)
{
  observe(name, labels, M_HIST_N, n > INT64_MAX ? INT64_MAX : (int64_t)n);
}

void tp_metric_help(const char *name, const char *help)
{
  if (!valid_name(name) || !help)
    return;
  pthread_mutex_lock(&help_mu);
  int i = 0;
  while (i < nhelps && strcmp(helps[i].name, name) != 0)
    i++;
  if (i < HELPS_MAX) {
    tp_scopy(helps[i].name, sizeof helps[i].name, name);
    /* HELP text escapes only backslash and newline; we drop newlines. */
    size_t o = 0;
    for (const char *p = help; *p && o + 3 < sizeof helps[i].text; p++) {
      if (*p == '\n')
        continue;
      if (*p == '\\')
        helps[i].text[o++] = '\\';
      helps[i].text[o++] = *p;
    }
    helps[i].text[o] = '\0';
    if (i == nhelps)
      nhelps++;
  }
  pthread_mutex_unlock(&help_mu);
}

void tp_metric_label_escape(char *dst, size_t cap, const char *value)
{
  size_t o = 0;
  if (cap == 0)
    return;
  for (const char *p = value ? value : ""; *p; p++) {
    const char *rep = NULL;
    char one[2] = {*p, 0};
    if (*p == '\\')
      rep = "\\\\";
    else if (*p == '"')
      rep = "\\\"";
    else if (*p == '\n')
      rep = "\\n";
    else
      rep = one;
    size_t n = strlen(rep);
    if (o + n + 1 > cap)
      break;
    memcpy(dst + o, rep, n);
    o += n;
  }
  dst[o] = '\0';
}

int64_t tp_metric_value(const char *name, const char *labels)
{
  pthread_once(&once, init);
  if (!labels)
    labels = "";
  if (!valid_name(name))
    return 0;
  uint64_t h = hash2(name, labels);
  struct shard *sh = &shards[h % SHARDS];
  unsigned slot = (unsigned)((h / SHARDS) % SLOTS_PER_SHARD);
  int64_t v = 0;
  pthread_mutex_lock(&sh->mu);
  for (struct series *s = sh->slots[slot]; s; s = s->next)
    if (s->hash == h && strcmp(s->name, name) == 0 && strcmp(s->labels, labels) == 0) {
      v = s->type == M_COUNTER || s->type == M_GAUGE ? s->value : (int64_t)s->count;
      break;
    }
  pthread_mutex_unlock(&sh->mu);
  return v;
}

void tp_metrics_reset(void)
{
  pthread_once(&once, init);
  for (int i = 0; i < SHARDS; i++) {
    pthread_mutex_lock(&shards[i].mu);
    for (int k = 0; k < SLOTS_PER_SHARD; k++) {
      struct series *s = shards[i].slots[k];
      while (s) {
        struct series *n = s->next;
        free(s);
        s = n;
      }
      shards[i].slots[k] = NULL;
    }
    pthread_mutex_unlock(&shards[i].mu);
  }
  atomic_store(&nseries, 0);
  atomic_store(&dropped, 0);
}

/* ---- rendering ---------------------------------------------------------------- */
struct outbuf {
  char *p;
  size_t len, cap;
  bool oom;
};

static void put(struct outbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct outbuf *b, const char *fmt, ...)
{
  if (b->oom)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = true;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t ncap = b->cap * 2 + (size_t)n;
    char *np = realloc(b->p, ncap);
    if (!np) {
      b->oom = true;
      return;
    }
    b->p = np;
    b->cap = ncap;
  }
}

static int cmp_series(const void *a, const void *b)
{
  const struct series *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  return c ? c : strcmp(x->labels, y->labels);
}

static const char *type_name(enum mtype t)
{
  switch (t) {
  case M_COUNTER:
    return "counter";
  case M_GAUGE:
    return "gauge";
  default:
    return "histogram";
  }
}

static void help_of(const char *name, char *out, size_t cap)
{
  pthread_mutex_lock(&help_mu);
  for (int i = 0; i < nhelps; i++)
    if (strcmp(helps[i].name, name) == 0) {
      snprintf(out, cap, "%s", helps[i].text);
      pthread_mutex_unlock(&help_mu);
      return;
    }
  pthread_mutex_unlock(&help_mu);
  snprintf(out, cap, "Turnpike metric %s.", name);
}

/* One sample line: name{labels[,extra]} value. */
static void sample(struct outbuf *b, const char *name, const char *suffix, const char *labels, const char *extra,
                   const char *value)
{
  bool l = labels[0] != '\0', e = extra && extra[0];
  put(b, "%s%s%s%s%s%s%s %s\n", name, suffix, (l || e) ? "{" : "", labels, (l && e) ? "," : "", e ? extra : "",
      (l || e) ? "}" : "", value);
}

char *tp_metrics_render(void)
{
  pthread_once(&once, init);
  size_t cap = (size_t)atomic_load(&nseries) + 16, n = 0;
  struct series *snap = malloc(cap * sizeof *snap);
  if (!snap)
    return NULL;
  for (int i = 0; i < SHARDS; i++) {
    pthread_mutex_lock(&shards[i].mu);
    for (int k = 0; k < SLOTS_PER_SHARD; k++)
      for (struct series *s = shards[i].slots[k]; s; s = s->next) {
        if (n == cap) {
          size_t ncap = cap * 2;
          struct series *ns = realloc(snap, ncap * sizeof *snap);
          if (!ns)
            break;
          snap = ns;
          cap = ncap;
        }
        snap[n] = *s;
        snap[n].next = NULL;
        n++;
      }
    pthread_mutex_unlock(&shards[i].mu);
  }
  qsort(snap, n, sizeof *snap, cmp_series);

  struct outbuf b = {malloc(65536), 0, 65536, false};
  if (!b.p) {
    free(snap);
    return NULL;
  }
  b.p[0] = '\0';
  char help[HELP_MAX + 64], val[64], le[32];
  for (size_t i = 0; i < n; i++) {
    const struct series *s = &snap[i];
    if (i == 0 || strcmp(s->name, snap[i - 1].name) != 0) {
      help_of(s->name, help, sizeof help);
      put(&b, "# HELP %s %s\n# TYPE %s %s\n", s->name, help, s->name, type_name(s->type));
    }
    if (s->type == M_COUNTER || s->type == M_GAUGE) {
      snprintf(val, sizeof val, "%lld", (long long)s->value);
      sample(&b, s->name, "", s->labels, NULL, val);
      continue;
    }
    bool us = s->type == M_HIST_US;
    int nb = us ? NBUCKETS : NBUCKETS_N;
    uint64_t cum = 0;
    for (int k = 0; k < nb; k++) {
      cum += s->buckets[k];
      if (us)
        snprintf(le, sizeof le, "le=\"%s\"", us_names[k]);
      else
        snprintf(le, sizeof le, "le=\"%lld\"", (long long)n_bounds[k]);
      snprintf(val, sizeof val, "%llu", (unsigned long long)cum);
      sample(&b, s->name, "_bucket", s->labels, le, val);
    }
    snprintf(val, sizeof val, "%llu", (unsigned long long)s->count);
    sample(&b, s->name, "_bucket", s->labels, "le=\"+Inf\"", val);
    if (us) /* integer microseconds printed as exact decimal seconds */
      snprintf(val, sizeof val, "%lld.%06lld", (long long)(s->value / 1000000), (long long)(s->value % 1000000));
    else
      snprintf(val, sizeof val, "%lld", (long long)s->value);
    sample(&b, s->name, "_sum", s->labels, NULL, val);
    snprintf(val, sizeof val, "%llu", (unsigned long long)s->count);
    sample(&b, s->name, "_count", s->labels, NULL, val);
  }
  free(snap);
  put(&b, "# HELP turnpike_metrics_dropped_series_total Series not created because the registry was full.\n"
          "# TYPE turnpike_metrics_dropped_series_total counter\nturnpike_metrics_dropped_series_total %llu\n",
      (unsigned long long)atomic_load(&dropped));
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  return b.p;
}
