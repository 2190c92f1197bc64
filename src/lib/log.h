/* JSON-lines logging on stderr. Never pass card data to these functions. */
#ifndef TP_LOG_H
#define TP_LOG_H
#include <stddef.h>
#include <stdarg.h>

enum tp_log_level { TP_LOG_DEBUG = 0, TP_LOG_INFO, TP_LOG_WARN, TP_LOG_ERROR };

/* Current threshold; messages below it are dropped (cheap check first). */
extern volatile int tp_log_threshold;

/* Log one line: {"ts":..., "level":..., "event":EVENT, ...fields}. `fmt` is a
 * jansson json_pack format describing an object ("{s:s, s:I}") or NULL. */
void tp_log(enum tp_log_level lvl, const char *event, const char *fmt, ...);
/* Parse "debug"/"info"/"warn"/"error"; -1 when unknown. */
int tp_log_level_parse(const char *s);
/* A log line whose fields are already JSON members ("k":v,... without the
 * braces, len bytes): for the per-request line, built without a tree. */
void tp_log_fields(enum tp_log_level lvl, const char *event, const char *fields, size_t len);

#define TP_LOG_ON(lvl) ((int)(lvl) >= tp_log_threshold)
#endif
