/* Alerting with dynamic baselines. */
#ifndef TP_ALERTS_H
#define TP_ALERTS_H
#include <stdbool.h>
#include <stdint.h>

/* One finished processor call for the baselines of scope (a processor name;
 * the overall baseline is fed too). error: transport/processor failure;
 * declined: the issuer declined. */
void tp_alert_observe(const char *scope, bool error, bool declined, int64_t latency_us);
#endif
