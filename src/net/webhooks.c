/* Placeholder: being written. */
#include "main/features.h"

int tp_webhooks_start(void) { return 0; }
void tp_webhooks_stop(void) {}
