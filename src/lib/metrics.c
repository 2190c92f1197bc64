/* Placeholder so every feature can count from the start; the metrics owner
 * replaces this with the real registry. */
#include "metrics.h"

#include <stdlib.h>
#include <string.h>

void tp_metric_inc(const char *name, const char *labels, uint64_t v) { (void)name; (void)labels; (void)v; }
void tp_metric_set(const char *name, const char *labels, int64_t v) { (void)name; (void)labels; (void)v; }
void tp_metric_observe_us(const char *name, const char *labels, int64_t usec) { (void)name; (void)labels; (void)usec; }
void tp_metric_help(const char *name, const char *help) { (void)name; (void)help; }
char *tp_metrics_render(void) { return strdup(""); }
