/* JSON-lines logging on stderr. Never pass card data to these functions. */
#ifndef TP_LOG_H
#define TP_LOG_H
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum tp_log_level { TP_LOG_DEBUG = 0, TP_LOG_INFO, TP_LOG_WARN, TP_LOG_ERROR };

/* Current threshold; messages below it are dropped (cheap check first). */
extern _Atomic int tp_log_threshold;

/* Log one line: {"ts":..., "level":..., "event":EVENT, ...fields}. `fmt` is a
 * jansson json_pack format describing an object ("{s:s, s:I}") or NULL. */
void tp_log(enum tp_log_level lvl, const char *event, const char *fmt, ...);
/* Parse "debug"/"info"/"warn"/"error"; -1 when unknown. */
int tp_log_level_parse(const char *s);
/* A log line whose fields are already JSON members ("k":v,... without the
 * braces, len bytes): for the per-request line, built without a tree.
 * `later`: a debug or info line may wait in the buffer (below). */
void tp_log_fields(enum tp_log_level lvl, const char *event, const char *fields, size_t len, bool later);
/* From now on lines logged `later` are written by a thread every every_ms
 * (at most 64 KiB wait; any other line writes them first, and so do
 * tp_log_flush, tp_log_buffer_stop and exit). 0 = off; -1 if the thread
 * cannot start (lines are then written at once). */
int tp_log_buffer_start(int every_ms);
void tp_log_buffer_stop(void);
void tp_log_flush(void);

#define TP_LOG_ON(lvl) ((int)(lvl) >= tp_log_threshold)
#endif
