/* One timer thread for the simulator's delayed work (latency, held timeouts):
 * a binary min-heap by due time, so a delayed answer costs a heap slot, not a
 * sleeping thread. Callbacks run on the timer thread and must be short. */
#include "sim/sim.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#define TIMER_MAX 1000000 /* pending timers; past this a callback runs at once */

struct timer {
  int64_t due_ms;
  uint64_t seq; /* FIFO among equal due times */
  void (*fn)(void *arg);
  void *arg;
};

static struct timer *heap;
static size_t n, cap;
static uint64_t seq;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static pthread_t thread;
static bool running, stopping;

static bool before(const struct timer *a, const struct timer *b)
{
  return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

static void swap(size_t i, size_t j)
{
  struct timer t = heap[i];
  heap[i] = heap[j];
  heap[j] = t;
}

static void push(struct timer t)
{
  size_t i = n++;
  heap[i] = t;
  while (i > 0 && before(&heap[i], &heap[(i - 1) / 2])) {
    swap(i, (i - 1) / 2);
    i = (i - 1) / 2;
  }
}

static struct timer pop(void)
{
  struct timer top = heap[0];
  heap[0] = heap[--n];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && before(&heap[l], &heap[m]))
      m = l;
    if (r < n && before(&heap[r], &heap[m]))
      m = r;
    if (m == i)
      break;
    swap(i, m);
    i = m;
  }
  return top;
}

static void *timer_main(void *arg)
{
  (void)arg;
  pthread_mutex_lock(&mu);
  for (;;) {
    if (n == 0) {
      if (stopping)
        break;
      pthread_cond_wait(&cv, &mu);
      continue;
    }
    int64_t now = tp_mono_ms();
    if (!stopping && heap[0].due_ms > now) {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      int64_t wait = heap[0].due_ms - now;
      ts.tv_sec += wait / 1000;
      ts.tv_nsec += (long)(wait % 1000) * 1000000L;
      if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
      }
      pthread_cond_timedwait(&cv, &mu, &ts);
      continue;
    }
    struct timer t = pop();
    pthread_mutex_unlock(&mu);
    t.fn(t.arg);
    pthread_mutex_lock(&mu);
  }
  pthread_mutex_unlock(&mu);
  return NULL;
}

int tp_sim_timer_start(void)
{
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&cv, &ca);
  pthread_condattr_destroy(&ca);
  stopping = false;
  if (pthread_create(&thread, NULL, timer_main, NULL) != 0)
    return -1;
  running = true;
  return 0;
}

void tp_sim_timer_add(int64_t delay_ms, void (*fn)(void *arg), void *arg)
{
  pthread_mutex_lock(&mu);
  if (stopping || n >= TIMER_MAX) {
    pthread_mutex_unlock(&mu);
    fn(arg);
    return;
  }
  if (n == cap) {
    size_t ncap = cap ? cap * 2 : 1024;
    struct timer *nh = realloc(heap, ncap * sizeof *nh);
    if (!nh) {
      pthread_mutex_unlock(&mu);
      fn(arg);
      return;
    }
    heap = nh;
    cap = ncap;
  }
  push((struct timer){tp_mono_ms() + delay_ms, seq++, fn, arg});
  pthread_cond_signal(&cv);
  pthread_mutex_unlock(&mu);
}

void tp_sim_timer_stop(void)
{
  if (!running)
    return;
  pthread_mutex_lock(&mu);
  stopping = true; /* everything pending fires now, in order */
  pthread_cond_signal(&cv);
  pthread_mutex_unlock(&mu);
  pthread_join(thread, NULL);
  running = false;
  free(heap);
  heap = NULL;
  n = cap = 0;
}
