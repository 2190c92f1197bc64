/* Placeholder: being written. */
#include "main/features.h"

int tp_stream_start(void) { return 0; }
void tp_stream_stop(void) {}
