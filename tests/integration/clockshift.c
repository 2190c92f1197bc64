/* clockshift.so: a wall clock stepped back, for test_clock_step.py only.
 * LD_PRELOADed into `turnpike serve`, it moves CLOCK_REALTIME (time,
 * gettimeofday, clock_gettime) by TP_CLOCK_SHIFT_S seconds (negative: into
 * the past), as after an NTP step or a restored VM snapshot. Monotonic
 * clocks are left alone. Not part of the product: built only for the
 * integration tests. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

typedef int (*gettimeofday_fn)(struct timeval *, void *);
typedef time_t (*time_fn)(time_t *);
typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static long shift(void)
{
  const char *v = getenv("TP_CLOCK_SHIFT_S");
  return v ? strtol(v, NULL, 10) : 0;
}

int gettimeofday(struct timeval *tv, void *tz)
{
  static gettimeofday_fn real;
  if (!real)
    real = (gettimeofday_fn)dlsym(RTLD_NEXT, "gettimeofday");
  int rc = real(tv, tz);
  if (rc == 0)
    tv->tv_sec += shift();
  return rc;
}

time_t time(time_t *out)
{
  struct timeval tv;
  gettimeofday(&tv, NULL);
  if (out)
    *out = tv.tv_sec;
  return tv.tv_sec;
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
  static clock_gettime_fn real;
  if (!real)
    real = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
  int rc = real(id, ts);
  if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE))
    ts->tv_sec += shift();
  return rc;
}
