/* Alerting with dynamic baselines. */
#ifndef TP_ALERTS_H
#define TP_ALERTS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One finished processor call for the baselines of scope (a processor name;
 * the overall baseline is fed too). error: transport/processor failure;
 * declined: the issuer declined. latency_us < 0: unknown. */
void tp_alert_observe(const char *scope, bool error, bool declined, int64_t latency_us);
/* A processor's breaker opened (down) or left open: while down its buckets count as all errors. */
void tp_alert_scope_down(const char *scope, bool down);

/* The detector for one signal, fed one value per bucket: an exponentially
 * weighted mean and mean absolute deviation form the baseline; a value above
 * mean + k * max(dev, dev_floor) and at least min_abs above the mean is
 * "high". open_after high buckets in a row open an alert; resolve_after
 * normal ones close it. The baseline learns only from normal buckets, so a
 * sustained spike does not become the new normal while it lasts, but a slow
 * drift does (it never leaves the band). Pure: unit-tested with synthetic
 * series. */
struct tp_detector_cfg {
  double alpha;       /* EWMA weight of the newest bucket, (0, 1] */
  double k;           /* deviations above the mean that count as high */
  double min_abs;     /* least absolute rise that counts as high */
  double dev_floor;   /* least deviation used (a perfectly flat series) */
  int warmup;         /* buckets learned before any alert */
  int open_after;     /* high buckets in a row to open */
  int resolve_after;  /* normal buckets in a row to resolve */
};
struct tp_detector {
  double mean, dev;
  int seen, high_run, normal_run, quiet_run;
  bool open;
};
enum tp_detect { TP_DETECT_NONE, TP_DETECT_OPENED, TP_DETECT_RESOLVED };
enum tp_detect tp_detector_step(struct tp_detector *d, const struct tp_detector_cfg *c, double value);
/* A bucket with too few samples to judge, or one where the scope is down
 * (its breaker open: an outage whatever the baseline). Quiet buckets
 * neither open nor reset anything, but an open alert resolves after
 * TP_ALERT_QUIET_FACTOR x resolve_after of them in a row (a processor that
 * gets calls only while another is in trouble went quiet with its alert
 * open for good); a down bucket breaks that run. A down bucket is never
 * learned (an outage from the start became the baseline, and no alert ever
 * opened) but counts toward opening, across the quiet buckets of a breaker
 * that half-opens between its open spells. */
#define TP_ALERT_QUIET_FACTOR 10
enum tp_detect tp_detector_quiet(struct tp_detector *d, const struct tp_detector_cfg *c);
enum tp_detect tp_detector_down(struct tp_detector *d, const struct tp_detector_cfg *c);

/* The fields the payment metrics read from a committed charge event (its
 * JSON, len bytes): found by a one-pass scanner that skips everything else,
 * or by the JSON parser when a wanted value has an escape or the scan
 * fails. "" for a string that is absent or not a string; amount 0 if absent. */
struct tp_charge_fields {
  char currency[16], brand[48], processor[96], failure[64];
  int64_t amount;
  bool parsed; /* the parser was needed */
};
void tp_alerts_charge_fields(const char *json, size_t len, struct tp_charge_fields *out);
#endif
