/* Placeholder: being written. */
#include "core/alerts.h"
#include "main/features.h"

void tp_alert_observe(const char *scope, bool error, bool declined, int64_t latency_us)
{
  (void)scope; (void)error; (void)declined; (void)latency_us;
}
int tp_alerts_start(void) { return 0; }
void tp_alerts_stop(void) {}
