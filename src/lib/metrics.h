/* Prometheus metrics: any thread may count or observe; /metrics renders the
 * text exposition format. Names follow Prometheus conventions
 * (turnpike_<thing>_<unit>[_total]); labels are given pre-formatted, e.g.
 * "processor=\"sim_a\",outcome=\"approved\"" (NULL or "" for none). Values of
 * label strings must not contain card data. */
#ifndef TP_METRICS_H
#define TP_METRICS_H
#include <stdint.h>

/* Add v to a counter. */
void tp_metric_inc(const char *name, const char *labels, uint64_t v);
/* Set a gauge. */
void tp_metric_set(const char *name, const char *labels, int64_t v);
/* Observe a duration in microseconds in a histogram (seconds buckets). */
void tp_metric_observe_us(const char *name, const char *labels, int64_t usec);
/* HELP text for a metric name (once, at start-up; optional). */
void tp_metric_help(const char *name, const char *help);
/* Render all metrics in the text format; malloc'ed, caller frees. */
char *tp_metrics_render(void);
#endif
