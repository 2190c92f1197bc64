/* JSON-lines logger: whole lines only, so lines from threads never mix.
 * Every line but the per-request ones is written at once (write(2) per
 * line); request lines collect in a buffer that a thread writes out every
 * `buffer_ms` (see tp_log_buffer_start), as nginx's buffered access_log
 * does. A line written at once writes the buffer out first: order is kept. */
#include "log.h"
#include "util.h"
#include "jpack.h"
#include "jsonw.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

_Atomic int tp_log_threshold = TP_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

#define LOG_BUF_BYTES 65536

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  bool on, stop;
  int every_ms;
  size_t len;
  char buf[LOG_BUF_BYTES];
} B = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void write_all(const char *p, size_t n)
{
  while (n > 0) {
    ssize_t w = write(STDERR_FILENO, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return; /* nowhere to report it */
    p += w;
    n -= (size_t)w;
  }
}

static void flush_locked(void)
{
  write_all(B.buf, B.len);
  B.len = 0;
}

/* One whole line (ending in '\n'): into the buffer if `later` and buffering
 * is on, else written now after anything buffered. */
static void emit(const char *line, size_t n, bool later)
{
  pthread_mutex_lock(&B.mu);
  if (later && B.on && n <= sizeof B.buf) {
    if (B.len + n > sizeof B.buf)
      flush_locked();
    memcpy(B.buf + B.len, line, n);
    B.len += n;
  } else {
    flush_locked();
    write_all(line, n);
  }
  pthread_mutex_unlock(&B.mu);
}

void tp_log_flush(void)
{
  pthread_mutex_lock(&B.mu);
  flush_locked();
  pthread_mutex_unlock(&B.mu);
}

static void *buffer_main(void *arg)
{
  (void)arg;
  pthread_mutex_lock(&B.mu);
  while (!B.stop) {
    struct timespec until;
    tp_mono_deadline(&until, B.every_ms);
    pthread_cond_timedwait(&B.cv, &B.mu, &until);
    flush_locked();
  }
  pthread_mutex_unlock(&B.mu);
  return NULL;
}

int tp_log_buffer_start(int every_ms)
{
  if (every_ms <= 0)
    return 0;
  pthread_mutex_lock(&B.mu);
  if (B.on) {
    pthread_mutex_unlock(&B.mu);
    return 0;
  }
  B.every_ms = every_ms;
  B.stop = false;
  tp_cond_init_mono(&B.cv);
  B.on = pthread_create(&B.thread, NULL, buffer_main, NULL) == 0;
  pthread_mutex_unlock(&B.mu);
  if (!B.on)
    return -1;
  pthread_setname_np(B.thread, "tp-log");
  atexit(tp_log_flush);
  return 0;
}

void tp_log_buffer_stop(void)
{
  pthread_mutex_lock(&B.mu);
  bool was = B.on;
  B.on = false;
  B.stop = true;
  flush_locked();
  pthread_cond_signal(&B.cv);
  pthread_mutex_unlock(&B.mu);
  if (was)
    pthread_join(B.thread, NULL);
}

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
    o = tp_vpack_scrub(fmt, ap);
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
  emit(s, n + 1, false);
  free(s);
}

void tp_log_fields(enum tp_log_level lvl, const char *event, const char *fields, size_t len, bool later)
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
  emit(line, n, later && lvl < TP_LOG_WARN);
  free(line);
}
