/* Prometheus metrics: any thread may count or observe; /metrics renders the
 * text exposition format. Names follow Prometheus conventions
 * (turnpike_<thing>_<unit>[_total]); labels are given pre-formatted, e.g.
 * "processor=\"sim_a\",outcome=\"approved\"" (NULL or "" for none). Values of
 * label strings must not contain card data; escape free text with
 * tp_metric_label_escape. A name keeps the type of its first use (a call of
 * another type on it is ignored). At most TP_METRICS_MAX_SERIES series exist;
 * new ones past that are dropped and counted. */
#ifndef TP_METRICS_H
#define TP_METRICS_H
#include <stddef.h>
#include <stdint.h>

#define TP_METRICS_MAX_SERIES 8192
#define TP_METRICS_NAME_MAX 96
#define TP_METRICS_LABELS_MAX 384

/* Add v to a counter. */
void tp_metric_inc(const char *name, const char *labels, uint64_t v);
/* Set a gauge. */
void tp_metric_set(const char *name, const char *labels, int64_t v);
/* Add delta (may be negative) to a gauge. */
void tp_metric_add(const char *name, const char *labels, int64_t delta);
/* Observe a duration in microseconds in a histogram (seconds buckets
 * .0005 .001 .0025 .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10). */
void tp_metric_observe_us(const char *name, const char *labels, int64_t usec);
/* Observe a count (batch sizes, queue lengths) in a histogram with buckets
 * 1 2 5 10 20 50 100 200 500 1000 2000 5000. */
void tp_metric_observe_n(const char *name, const char *labels, uint64_t n);
/* HELP text for a metric name (once, at start-up; optional). */
void tp_metric_help(const char *name, const char *help);
/* Render all metrics in the text format; malloc'ed, caller frees. */
char *tp_metrics_render(void);
/* Escape a label value (\\, \", \n) into dst (NUL-terminated, truncated to cap). */
void tp_metric_label_escape(char *dst, size_t cap, const char *value);
/* Current value of a counter or gauge (0 when absent); for tests. */
int64_t tp_metric_value(const char *name, const char *labels);
/* Forget every series (tests). */
void tp_metrics_reset(void);
#endif
