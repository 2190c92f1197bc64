/* Alerting with dynamic baselines, and the payment metrics read from the
 * committed events.
 *
 * Feeds: tp_alert_observe (the processor registry, one call per processor
 * call: scope = processor name, and the scope "processors" for all of them)
 * and the committed charge events (scope "payments": what merchants saw,
 * whichever processor served them; this is what the sandbox drives).
 * Every [alerts] bucket_ms the alerts thread closes each scope's bucket and,
 * when it holds at least min_samples outcomes, steps one detector per signal
 * (error_rate, decline_rate, latency_ms). An opened or resolved alert is
 * logged, sets turnpike_alert_open{scope,signal} and is committed as an event
 * turnpike.alert.opened / turnpike.alert.resolved (so it reaches /v1/events,
 * webhooks and the stream). Alerts are operator-level, but events belong to
 * a merchant: the event goes to each merchant listed in [alerts] merchants,
 * or by default to every merchant with payments in the last hour (at most
 * TP_ALERT_MAX_MERCHANTS). */
#include "core/alerts.h"
#include "jpack.h"

#include "api/objects.h"
#include "config.h"
#include "log.h"
#include "main/features.h"
#include "metrics.h"
#include "store/store.h"
#include "util.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TP_ALERT_MAX_SCOPES 64
#define TP_ALERT_MAX_MERCHANTS 256
#define TP_ALERT_MERCHANT_TTL_S 3600
#define TP_ALERT_QUEUE_MAX 65536
#define TP_ALERT_EVENT_MAX (256 * 1024)

enum { SIG_ERROR, SIG_DECLINE, SIG_LATENCY, SIG__N };
static const char *const sig_names[SIG__N] = {"error_rate", "decline_rate", "latency_ms"};

/* ---- the detector ---------------------------------------------------------------- */
static void learn(struct tp_detector *d, const struct tp_detector_cfg *c, double v)
{
  if (d->seen == 0) {
    d->mean = v;
    d->dev = 0;
  } else {
    d->dev = (1 - c->alpha) * d->dev + c->alpha * fabs(v - d->mean);
    d->mean = (1 - c->alpha) * d->mean + c->alpha * v;
  }
  d->seen++;
}

static enum tp_detect normal(struct tp_detector *d, const struct tp_detector_cfg *c)
{
  d->high_run = 0;
  d->quiet_run = 0;
  if (!d->open)
    return TP_DETECT_NONE;
  if (++d->normal_run < c->resolve_after)
    return TP_DETECT_NONE;
  d->open = false;
  return TP_DETECT_RESOLVED;
}

enum tp_detect tp_detector_quiet(struct tp_detector *d, const struct tp_detector_cfg *c)
{
  if (!d->open || ++d->quiet_run < TP_ALERT_QUIET_FACTOR * c->resolve_after)
    return TP_DETECT_NONE;
  d->open = false;
  d->high_run = d->normal_run = d->quiet_run = 0;
  return TP_DETECT_RESOLVED;
}

enum tp_detect tp_detector_down(struct tp_detector *d, const struct tp_detector_cfg *c)
{
  d->quiet_run = 0;
  if (d->open) {
    d->normal_run = 0;
    return TP_DETECT_NONE;
  }
  if (d->seen >= c->warmup && d->mean >= 1.0)
    return TP_DETECT_NONE; /* a scope that always errs: nothing new */
  if (++d->high_run < c->open_after)
    return TP_DETECT_NONE;
  d->open = true;
  d->normal_run = 0;
  return TP_DETECT_OPENED;
}

enum tp_detect tp_detector_step(struct tp_detector *d, const struct tp_detector_cfg *c, double v)
{
  d->quiet_run = 0;
  if (d->seen < c->warmup) {
    /* Learning; an alert opened meanwhile (a scope down) resolves on
     * resolve_after buckets that are not down. */
    enum tp_detect w = d->open ? normal(d, c) : TP_DETECT_NONE;
    if (!d->open)
      learn(d, c, v);
    return w;
  }
  double band = c->k * (d->dev > c->dev_floor ? d->dev : c->dev_floor);
  bool high = v > d->mean + band && v - d->mean >= c->min_abs;
  if (!d->open) {
    if (!high) {
      d->high_run = 0;
      learn(d, c, v);
      return TP_DETECT_NONE;
    }
    if (++d->high_run >= c->open_after) {
      d->open = true;
      d->normal_run = 0;
      return TP_DETECT_OPENED;
    }
    return TP_DETECT_NONE;
  }
  if (high) {
    d->normal_run = 0;
    return TP_DETECT_NONE;
  }
  if (++d->normal_run >= c->resolve_after) {
    d->open = false;
    d->high_run = 0;
    learn(d, c, v);
    return TP_DETECT_RESOLVED;
  }
  return TP_DETECT_NONE;
}

/* ---- scopes ------------------------------------------------------------------------ */
struct scope {
  char name[64];
  uint64_t n, errors, declines, lat_n;
  int64_t lat_sum_us;
  struct tp_detector det[SIG__N];
  char alert_id[SIG__N][TP_ID_MAX];
  int64_t opened_at[SIG__N];
  bool down; /* a processor whose breaker is open: no calls, every bucket all errors */
};

struct pev {
  struct pev *next;
  char merchant[64];
  bool charge_ok;
  size_t len;
  char json[];
};

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct scope scopes[TP_ALERT_MAX_SCOPES];
  int nscopes;
  struct pev *head, *tail;
  size_t qlen;
  struct { char id[64]; int64_t seen; } merchants[TP_ALERT_MAX_MERCHANTS];
  int nmerchants;
  bool running, stopping;
  bool detect; /* [alerts] enabled: the detectors run (charges are counted either way) */
  pthread_t thread;
  int64_t bucket_ms;
  int64_t min_samples;
  struct tp_detector_cfg rate_cfg, lat_cfg;
  char fixed_merchants[1024];
} A = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .bucket_ms = 1000, .min_samples = 10};

/* Caller holds A.mu. NULL when the table is full. */
static struct scope *scope_get(const char *name)
{
  for (int i = 0; i < A.nscopes; i++)
    if (strcmp(A.scopes[i].name, name) == 0)
      return &A.scopes[i];
  if (A.nscopes == TP_ALERT_MAX_SCOPES || strlen(name) >= sizeof A.scopes[0].name)
    return NULL;
  struct scope *s = &A.scopes[A.nscopes++];
  memset(s, 0, sizeof *s);
  tp_scopy(s->name, sizeof s->name, name);
  return s;
}

static void add(const char *name, bool error, bool declined, int64_t latency_us)
{
  struct scope *s = scope_get(name);
  if (!s)
    return;
  s->n++;
  s->errors += error;
  s->declines += declined;
  if (latency_us >= 0) {
    s->lat_n++;
    s->lat_sum_us += latency_us;
  }
}

void tp_alert_scope_down(const char *scope, bool down)
{
  if (!scope || !*scope)
    return;
  pthread_mutex_lock(&A.mu);
  struct scope *s = scope_get(scope);
  if (s)
    s->down = down;
  pthread_mutex_unlock(&A.mu);
}

void tp_alert_observe(const char *scope, bool error, bool declined, int64_t latency_us)
{
  if (!scope || !*scope)
    return;
  pthread_mutex_lock(&A.mu);
  add(scope, error, declined, latency_us);
  if (strcmp(scope, "processors") != 0 && strcmp(scope, "payments") != 0)
    add("processors", error, declined, latency_us);
  pthread_mutex_unlock(&A.mu);
}

/* ---- committed events -------------------------------------------------------------- */
/* Writer thread: keep charge outcomes only, copied; parsing waits for the
 * alerts thread. */
static void on_event(const char *merchant, const char *event_id, const char *type, const char *json, size_t len,
                     void *arg)
{
  (void)arg;
  (void)event_id;
  if (!type || !merchant || len > TP_ALERT_EVENT_MAX)
    return;
  bool ok = strcmp(type, "charge.succeeded") == 0;
  if (!ok && strcmp(type, "charge.failed") != 0)
    return;
  struct pev *e = malloc(sizeof *e + len + 1);
  if (!e)
    return;
  e->next = NULL;
  tp_scopy(e->merchant, sizeof e->merchant, merchant);
  e->charge_ok = ok;
  e->len = len;
  memcpy(e->json, json, len);
  e->json[len] = '\0';
  pthread_mutex_lock(&A.mu);
  if (A.qlen >= TP_ALERT_QUEUE_MAX) {
    pthread_mutex_unlock(&A.mu);
    free(e);
    tp_metric_inc("turnpike_alert_events_dropped_total", NULL, 1);
    return;
  }
  if (A.tail)
    A.tail->next = e;
  else
    A.head = e;
  A.tail = e;
  A.qlen++;
  pthread_mutex_unlock(&A.mu);
}

static void merchant_seen(const char *m, int64_t now)
{
  int oldest = 0;
  for (int i = 0; i < A.nmerchants; i++) {
    if (strcmp(A.merchants[i].id, m) == 0) {
      A.merchants[i].seen = now;
      return;
    }
    if (A.merchants[i].seen < A.merchants[oldest].seen)
      oldest = i;
  }
  int i = A.nmerchants < TP_ALERT_MAX_MERCHANTS ? A.nmerchants++ : oldest;
  tp_scopy(A.merchants[i].id, sizeof A.merchants[i].id, m);
  A.merchants[i].seen = now;
}

static void label_of(const char *v, char *out, size_t cap)
{
  tp_metric_label_escape(out, cap, v && *v ? v : "unknown");
}

/* ---- reading a committed charge event without building a tree ----------------
 * Every payment's charge event passes here; parsing it whole with jansson
 * cost more than the rest of the alerts thread. The event is our own compact
 * JSON, so a scan that walks it once, skipping every value it does not need,
 * is enough. A string with an escape is not decoded: the caller falls back to
 * the parser. */
enum { CF_CURRENCY, CF_BRAND, CF_PROCESSOR, CF_FAILURE, CF_AMOUNT, CF__N };
#define CF_PATH(s) {s, sizeof s - 1}
static const struct {
  const char *s;
  size_t n;
} cf_paths[CF__N] = {CF_PATH("data.object.currency"), CF_PATH("data.object.payment_method_details.card.brand"),
                     CF_PATH("data.object.turnpike.processor"), CF_PATH("data.object.failure_code"),
                     CF_PATH("data.object.amount")};

struct cspan {
  const char *p;
  size_t n;
  bool str, esc;
};

static const char *skip_ws(const char *p, const char *end)
{
  while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'))
    p++;
  return p;
}

/* p at '"': the end of the string (past the closing quote), NULL if cut. */
static const char *skip_str(const char *p, const char *end, bool *esc)
{
  /* memchr for the closing quote, then for a backslash before it: two
   * vectorised scans for the usual string without escapes. */
  for (p++; p < end;) {
    const char *q = memchr(p, '"', (size_t)(end - p));
    if (!q)
      return NULL;
    const char *b = memchr(p, '\\', (size_t)(q - p));
    if (!b)
      return q + 1;
    *esc = true;
    p = b + 2; /* past the escaped character, which may be that quote */
  }
  return NULL;
}

/* Scan one value at p (path: its dotted path, plen used); record wanted
 * fields in out. Returns the end of the value, NULL if malformed. */
static const char *scan_val(const char *p, const char *end, char *path, size_t plen, int depth, struct cspan *out)
{
  p = skip_ws(p, end);
  if (p >= end || depth > 16)
    return NULL;
  /* A leaf may be wanted; an object may lead to wanted leaves. */
  int want = -1;
  bool prefix = false;
  /* Lengths first: most keys of the charge match no wanted path. */
  for (int i = 0; i < CF__N; i++) {
    if (*p == '{') {
      if (cf_paths[i].n > plen && memcmp(cf_paths[i].s, path, plen) == 0 && (plen == 0 || cf_paths[i].s[plen] == '.')) {
        prefix = true;
        break;
      }
    } else if (*p != '[' && cf_paths[i].n == plen && memcmp(cf_paths[i].s, path, plen) == 0) {
      want = i;
      break;
    }
  }
  const char *start = p;
  if (*p == '"') {
    bool esc = false;
    p = skip_str(p, end, &esc);
    if (p && want >= 0)
      out[want] = (struct cspan){start + 1, (size_t)(p - start - 2), true, esc};
    return p;
  }
  if (*p == '{' && prefix) {
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}')
      return p + 1;
    for (;;) {
      p = skip_ws(p, end);
      if (p >= end || *p != '"')
        return NULL;
      bool esc = false;
      const char *k = p + 1;
      p = skip_str(p, end, &esc);
      if (!p)
        return NULL;
      size_t kl = (size_t)(p - k - 1);
      p = skip_ws(p, end);
      if (p >= end || *p != ':')
        return NULL;
      /* Keys with escapes or too long for the path never match a wanted one. */
      size_t nl = plen + (plen ? 1 : 0) + kl;
      if (!esc && nl < 96) {
        if (plen)
          path[plen] = '.';
        memcpy(path + plen + (plen ? 1 : 0), k, kl);
        path[nl] = '\0';
        p = scan_val(p + 1, end, path, nl, depth + 1, out);
        path[plen] = '\0';
      } else {
        char none[2] = "\x01"; /* a path no wanted one starts with */
        p = scan_val(p + 1, end, none, 1, depth + 1, out);
      }
      if (!p)
        return NULL;
      p = skip_ws(p, end);
      if (p < end && *p == ',') {
        p++;
        continue;
      }
      return p < end && *p == '}' ? p + 1 : NULL;
    }
  }
  if (*p == '{' || *p == '[') {
    /* Not needed: skip it, strings included, by bracket depth. */
    int d = 0;
    while (p < end) {
      if (*p == '"') {
        bool esc = false;
        p = skip_str(p, end, &esc);
        if (!p)
          return NULL;
        continue;
      }
      if (*p == '{' || *p == '[')
        d++;
      else if ((*p == '}' || *p == ']') && --d == 0)
        return p + 1;
      p++;
    }
    return NULL;
  }
  /* number, true, false, null */
  while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n')
    p++;
  if (want >= 0)
    out[want] = (struct cspan){start, (size_t)(p - start), false, false};
  return p;
}

/* A wanted string field as a C string in buf ("" if absent or not a string). */
static const char *cspan_str(const struct cspan *c, char *buf, size_t cap)
{
  if (!c->p || !c->str || c->n >= cap)
    return NULL;
  memcpy(buf, c->p, c->n);
  buf[c->n] = '\0';
  return buf;
}

/* One committed charge outcome: payment metrics and the "payments" scope. */
static void copy_str(char *dst, size_t cap, const char *src)
{
  size_t n = src ? strlen(src) : cap;
  if (n < cap)
    memcpy(dst, src, n + 1);
  else
    dst[0] = '\0';
}

void tp_alerts_charge_fields(const char *json, size_t len, struct tp_charge_fields *out)
{
  memset(out, 0, sizeof *out);
  struct cspan f[CF__N] = {{0}};
  char path[128] = "";
  bool scanned = scan_val(json, json + len, path, 0, 0, f) != NULL;
  for (int i = 0; i < CF__N; i++)
    scanned = scanned && !f[i].esc;
  if (scanned) {
    /* out is zeroed: a field cspan_str cannot give stays "". */
    (void)cspan_str(&f[CF_CURRENCY], out->currency, sizeof out->currency);
    (void)cspan_str(&f[CF_BRAND], out->brand, sizeof out->brand);
    (void)cspan_str(&f[CF_PROCESSOR], out->processor, sizeof out->processor);
    (void)cspan_str(&f[CF_FAILURE], out->failure, sizeof out->failure);
    if (f[CF_AMOUNT].p && !f[CF_AMOUNT].str && f[CF_AMOUNT].n < 24) {
      char ab[24];
      memcpy(ab, f[CF_AMOUNT].p, f[CF_AMOUNT].n);
      ab[f[CF_AMOUNT].n] = '\0';
      out->amount = strtoll(ab, NULL, 10);
    }
    return;
  }
  out->parsed = true;
  json_t *ev = json_loadb(json, len, 0, NULL);
  json_t *ch = json_object_get(json_object_get(ev, "data"), "object");
  copy_str(out->currency, sizeof out->currency, json_string_value(json_object_get(ch, "currency")));
  copy_str(out->brand, sizeof out->brand,
           json_string_value(json_object_get(
               json_object_get(json_object_get(ch, "payment_method_details"), "card"), "brand")));
  copy_str(out->processor, sizeof out->processor,
           json_string_value(json_object_get(json_object_get(ch, "turnpike"), "processor")));
  copy_str(out->failure, sizeof out->failure, json_string_value(json_object_get(ch, "failure_code")));
  out->amount = json_integer_value(json_object_get(ch, "amount"));
  json_decref(ev);
}

static void count_charge(const struct pev *e, int64_t now)
{
  struct tp_charge_fields cf;
  tp_alerts_charge_fields(e->json, e->len, &cf);
  const char *currency = cf.currency[0] ? cf.currency : NULL, *brand = cf.brand[0] ? cf.brand : NULL,
             *processor = cf.processor[0] ? cf.processor : NULL, *failure = cf.failure[0] ? cf.failure : NULL;
  json_int_t amount = cf.amount;
  char cur[16], br[48], pr[96], labels[256];
  label_of(currency, cur, sizeof cur);
  label_of(brand, br, sizeof br);
  label_of(processor, pr, sizeof pr);
  snprintf(labels, sizeof labels, "status=\"%s\",processor=\"%s\",brand=\"%s\",currency=\"%s\"",
           e->charge_ok ? "succeeded" : "failed", pr, br, cur);
  tp_metric_inc("turnpike_payments_total", labels, 1);
  if (e->charge_ok) {
    snprintf(labels, sizeof labels, "currency=\"%s\"", cur);
    tp_metric_inc("turnpike_payments_amount_minor_total", labels, amount > 0 ? (uint64_t)amount : 0);
  }
  /* A processing error is the processor failing; anything else a decline. */
  bool error = !e->charge_ok && failure && strcmp(failure, "processing_error") == 0;
  bool declined = !e->charge_ok && !error;
  pthread_mutex_lock(&A.mu);
  add("payments", error, declined, -1);
  merchant_seen(e->merchant, now);
  pthread_mutex_unlock(&A.mu);
}

/* ---- alert events ---------------------------------------------------------------- */
static void alert_emit(const char *type, json_t *alert)
{
  char list[TP_ALERT_MAX_MERCHANTS][64];
  int n = 0;
  pthread_mutex_lock(&A.mu);
  if (A.fixed_merchants[0]) {
    char buf[sizeof A.fixed_merchants];
    tp_scopy(buf, sizeof buf, A.fixed_merchants);
    char *save = NULL;
    for (char *t = strtok_r(buf, ", ", &save); t && n < TP_ALERT_MAX_MERCHANTS; t = strtok_r(NULL, ", ", &save))
      snprintf(list[n++], 64, "%s", t);
  } else {
    int64_t cut = tp_now() - TP_ALERT_MERCHANT_TTL_S;
    for (int i = 0; i < A.nmerchants; i++)
      if (A.merchants[i].seen >= cut)
        snprintf(list[n++], 64, "%s", A.merchants[i].id);
  }
  pthread_mutex_unlock(&A.mu);
  if (n == 0)
    return;
  struct tp_cs *cs = tp_cs_new();
  for (int i = 0; i < n; i++)
    tp_emit(cs, NULL, list[i], type, alert);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    tp_log(TP_LOG_ERROR, "alert_event_not_committed", "{s:s}", "type", type);
  }
}

static void report(struct scope *s, int sig, enum tp_detect what, double value)
{
  const struct tp_detector *d = &s->det[sig];
  char lbl[160], esc[128];
  tp_metric_label_escape(esc, sizeof esc, s->name);
  snprintf(lbl, sizeof lbl, "scope=\"%s\",signal=\"%s\"", esc, sig_names[sig]);
  int64_t now = tp_now();
  if (what == TP_DETECT_OPENED) {
    tp_id_new(s->alert_id[sig], "alrt");
    s->opened_at[sig] = now;
  }
  bool open = what == TP_DETECT_OPENED;
  tp_metric_set("turnpike_alert_open", lbl, open ? 1 : 0);
  tp_metric_inc(open ? "turnpike_alerts_opened_total" : "turnpike_alerts_resolved_total", lbl, 1);
  tp_log(TP_LOG_WARN, open ? "alert_opened" : "alert_resolved", "{s:s, s:s, s:s, s:f, s:f, s:f}", "alert",
         s->alert_id[sig], "scope", s->name, "signal", sig_names[sig], "value", value, "baseline", d->mean,
         "deviation", d->dev);
  json_t *a = tp_pack("{s:s, s:s, s:s, s:s, s:s, s:f, s:f, s:f, s:I, s:o}", "id", s->alert_id[sig], "object",
                      "turnpike.alert", "status", open ? "open" : "resolved", "scope", s->name, "signal",
                      sig_names[sig], "value", value, "baseline", d->mean, "deviation", d->dev, "opened_at",
                      (json_int_t)s->opened_at[sig], "resolved_at",
                      open ? json_null() : json_integer((json_int_t)now));
  if (a) {
    alert_emit(open ? "turnpike.alert.opened" : "turnpike.alert.resolved", a);
    json_decref(a);
  }
}

/* Close every scope's bucket and step its detectors. */
static void tick(void)
{
  struct {
    struct scope *s;
    int sig;
    enum tp_detect what;
    double v;
  } fired[TP_ALERT_MAX_SCOPES * SIG__N];
  int nf = 0;
  pthread_mutex_lock(&A.mu);
  for (int i = 0; i < A.nscopes; i++) {
    struct scope *s = &A.scopes[i];
    /* A processor whose breaker is open gets no calls, so no samples: the
     * worst outage was the one no alert saw. Its bucket counts as all errors
     * (tp_detector_down); one with too few samples is quiet. */
    bool judged = s->n >= (uint64_t)A.min_samples && !s->down;
    double v[SIG__N] = {judged ? (double)s->errors / (double)s->n : NAN,
                        judged ? (double)s->declines / (double)s->n : NAN,
                        judged && s->lat_n ? (double)s->lat_sum_us / (double)s->lat_n / 1000.0 : NAN};
    for (int k = 0; k < SIG__N; k++) {
      const struct tp_detector_cfg *cfg = k == SIG_LATENCY ? &A.lat_cfg : &A.rate_cfg;
      enum tp_detect w = s->down && k == SIG_ERROR ? tp_detector_down(&s->det[k], cfg)
                         : isnan(v[k])             ? tp_detector_quiet(&s->det[k], cfg)
                                                   : tp_detector_step(&s->det[k], cfg, v[k]);
      if (w != TP_DETECT_NONE) {
        fired[nf].s = s;
        fired[nf].sig = k;
        fired[nf].what = w;
        /* the bucket's value: 1 when down, 0 with no samples (JSON has no NaN) */
        fired[nf].v = s->down && k == SIG_ERROR ? 1.0 : isnan(v[k]) ? 0.0 : v[k];
        nf++;
      }
    }
    s->n = s->errors = s->declines = s->lat_n = 0;
    s->lat_sum_us = 0;
  }
  pthread_mutex_unlock(&A.mu);
  /* Scopes are never removed, so the pointers stay valid; only this thread
   * writes alert ids and detectors. */
  for (int i = 0; i < nf; i++)
    report(fired[i].s, fired[i].sig, fired[i].what, fired[i].v);
}

static void drain(void)
{
  pthread_mutex_lock(&A.mu);
  struct pev *e = A.head;
  A.head = A.tail = NULL;
  A.qlen = 0;
  pthread_mutex_unlock(&A.mu);
  int64_t now = tp_now();
  while (e) {
    struct pev *n = e->next;
    count_charge(e, now);
    free(e);
    e = n;
  }
}

static void *alerts_main(void *arg)
{
  (void)arg;
  int64_t next = tp_mono_ms() + A.bucket_ms;
  for (;;) {
    pthread_mutex_lock(&A.mu);
    if (!A.stopping) {
      /* wake at least every 50 ms so the payment metrics stay fresh */
      struct timespec ts;
      tp_mono_deadline(&ts, 50);
      pthread_cond_timedwait(&A.cv, &A.mu, &ts);
    }
    bool stop = A.stopping;
    pthread_mutex_unlock(&A.mu);
    drain();
    if (stop)
      break;
    int64_t now = tp_mono_ms();
    if (now >= next) {
      if (A.detect)
        tick();
      next += A.bucket_ms;
      if (next <= now)
        next = now + A.bucket_ms; /* we were stalled: skip, do not burst */
    }
  }
  return NULL;
}

static double cfg_double(const char *key, double def, double min, double max)
{
  const char *v = tp_config_get("alerts", key);
  if (!v)
    return def;
  char *end;
  double d = strtod(v, &end);
  if (end == v || *end || !(d >= min && d <= max)) {
    tp_config_invalid("alerts", key, v); /* read before serve listens: it stops */
    return def;
  }
  return d;
}

int tp_alerts_start(void)
{
  /* Disabled, no detector runs, but the thread still counts charges into
   * turnpike_payments_total (observability.md §2 feeds it from every
   * committed charge event; without alerts it was never there). */
  A.detect = tp_config_bool("alerts", "enabled", true);
  A.bucket_ms = tp_config_int("alerts", "bucket_ms", 1000, 50, 3600000);
  A.min_samples = tp_config_int("alerts", "min_samples", 10, 1, 1000000);
  struct tp_detector_cfg c = {
      .alpha = cfg_double("alpha", 0.1, 0.001, 1),
      .k = cfg_double("k", 4, 0.5, 100),
      .min_abs = cfg_double("min_abs_rate", 0.1, 0, 1),
      .dev_floor = cfg_double("dev_floor_rate", 0.01, 0, 1),
      .warmup = (int)tp_config_int("alerts", "warmup_buckets", 10, 1, 100000),
      .open_after = (int)tp_config_int("alerts", "open_after", 3, 1, 1000),
      .resolve_after = (int)tp_config_int("alerts", "resolve_after", 5, 1, 1000),
  };
  A.rate_cfg = c;
  c.min_abs = cfg_double("min_abs_latency_ms", 50, 0, 1e6);
  c.dev_floor = cfg_double("dev_floor_latency_ms", 5, 0, 1e6);
  A.lat_cfg = c;
  const char *fm = tp_config_get("alerts", "merchants");
  tp_scopy(A.fixed_merchants, sizeof A.fixed_merchants, fm ? fm : "");
  { /* account ids, separated by commas or spaces */
    char buf[sizeof A.fixed_merchants], *save = NULL;
    tp_scopy(buf, sizeof buf, A.fixed_merchants);
    for (char *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
      if (strncmp(t, "acct_", 5) != 0 || strlen(t) >= 64) {
        tp_config_invalid("alerts", "merchants", fm);
        A.fixed_merchants[0] = '\0';
        break;
      }
  }
  tp_metric_help("turnpike_alert_open", "1 while an alert is open for the scope and signal.");
  tp_metric_help("turnpike_alerts_opened_total", "Alerts opened, by scope and signal.");
  tp_metric_help("turnpike_alerts_resolved_total", "Alerts resolved, by scope and signal.");
  tp_metric_help("turnpike_payments_total", "Charge outcomes by status, processor, card brand and currency "
                                            "(authorization rate: succeeded / all).");
  tp_metric_help("turnpike_payments_amount_minor_total", "Captured and authorized amounts in minor units.");
  if (tp_writer_subscribe(on_event, NULL) != 0)
    return -1;
  A.stopping = false;
  A.running = true;
  tp_cond_init_mono(&A.cv);
  if (pthread_create(&A.thread, NULL, alerts_main, NULL) != 0) {
    A.running = false;
    return -1;
  }
  pthread_setname_np(A.thread, "tp-alerts");
  return 0;
}

void tp_alerts_stop(void)
{
  if (!A.running)
    return;
  pthread_mutex_lock(&A.mu);
  A.stopping = true;
  pthread_cond_signal(&A.cv);
  pthread_mutex_unlock(&A.mu);
  pthread_join(A.thread, NULL);
  A.running = false;
}
