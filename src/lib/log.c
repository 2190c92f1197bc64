/* JSON-lines logger: one write(2) per line so lines from threads never mix. */
#include "log.h"
#include "jsonw.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

volatile int tp_log_threshold = TP_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int tp_log_level_parse(const char *s)
{
  for (int i = 0; i < 4; i++)
    if (strcmp(s, level_names[i]) == 0)
      return i;
  return -1;
}

void tp_log(enum tp_log_level lvl, const char *event, const char *fmt, ...)
{
  if (!TP_LOG_ON(lvl))
    return;
  json_t *o = NULL;
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    json_error_t jerr;
    o = json_vpack_ex(&jerr, 0, fmt, ap);
    va_end(ap);
  }
  if (!o || !json_is_object(o)) {
    json_decref(o);
    o = json_object();
  }
  struct timeval tv;
  gettimeofday(&tv, NULL);
  char ts[32];
  snprintf(ts, sizeof ts, "%lld.%03d", (long long)tv.tv_sec, (int)(tv.tv_usec / 1000));
  json_t *line = json_object();
  json_object_set_new(line, "ts", json_string(ts));
  json_object_set_new(line, "level", json_string(level_names[lvl]));
  json_object_set_new(line, "event", json_string(event));
  json_object_update(line, o);
  json_decref(o);
  size_t n = 0;
  char *s = tp_json_dump(line, &n); /* one log line per request: the fast writer */
  json_decref(line);
  if (!s)
    return;
  s[n] = '\n'; /* the NUL's byte is ours: overwrite it and write n+1 */
  ssize_t w = write(STDERR_FILENO, s, n + 1);
  (void)w;
  free(s);
}

void tp_log_fields(enum tp_log_level lvl, const char *event, const char *fields, size_t len)
{
  if (!TP_LOG_ON(lvl))
    return;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  char head[128];
  int hl = snprintf(head, sizeof head, "{\"ts\":\"%lld.%03d\",\"level\":\"%s\",\"event\":",
                    (long long)tv.tv_sec, (int)(tv.tv_usec / 1000), level_names[lvl]);
  if (hl <= 0 || (size_t)hl >= sizeof head)
    return;
  struct tp_jbuf b = {0};
  tp_jbuf_raw(&b, head, (size_t)hl);
  tp_jbuf_str(&b, event);
  if (len) {
    TP_JBUF_LIT(&b, ",");
    tp_jbuf_raw(&b, fields, len);
  }
  TP_JBUF_LIT(&b, "}\n");
  size_t n = 0;
  char *line = tp_jbuf_finish(&b, &n);
  if (!line)
    return;
  ssize_t w = write(STDERR_FILENO, line, n);
  (void)w;
  free(line);
}
