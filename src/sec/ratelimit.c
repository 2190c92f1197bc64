/* Token buckets and authentication-failure windows in two bounded tables. */
#include "sec/ratelimit.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "util.h"

#define RL_LOCKS 64

struct rl_entry {
  uint64_t h;          /* 0 = empty */
  int64_t last_ms;     /* last use, for eviction and refill */
  int64_t a;           /* bucket: milli-tokens; auth: failures in window */
  int64_t b;           /* auth: window start (ms) */
};

struct rl_table {
  struct rl_entry e[TP_RL_SETS][TP_RL_WAYS];
  pthread_mutex_t mu[RL_LOCKS];
};

static struct rl_table keys_, addrs_;
static int64_t rate_, burst_, auth_max_, auth_window_ms_;
static uint64_t seed_;
static pthread_once_t once_ = PTHREAD_ONCE_INIT;

static void init_locks(void)
{
  for (int i = 0; i < RL_LOCKS; i++) {
    pthread_mutex_init(&keys_.mu[i], NULL);
    pthread_mutex_init(&addrs_.mu[i], NULL);
  }
  tp_random(&seed_, sizeof seed_);
}

void tp_ratelimit_configure(int64_t rate, int64_t burst, int64_t auth_failures, int64_t auth_window_s)
{
  pthread_once(&once_, init_locks);
  rate_ = rate;
  burst_ = burst < 1 ? 1 : burst;
  auth_max_ = auth_failures;
  auth_window_ms_ = auth_window_s * 1000;
  for (int s = 0; s < TP_RL_SETS; s++) {
    memset(keys_.e[s], 0, sizeof keys_.e[s]);
    memset(addrs_.e[s], 0, sizeof addrs_.e[s]);
  }
}

void tp_ratelimit_init(void)
{
  /* Off unless configured: the shipped etc/turnpike.ini sets 100/s, burst 200. */
  int64_t rate = tp_config_int("ratelimit", "rate", 0, 0, 1000000);
  int64_t burst = tp_config_int("ratelimit", "burst", rate * 2, 1, 10000000);
  int64_t fails = tp_config_int("ratelimit", "auth_failures", 30, 0, 1000000);
  int64_t window = tp_config_int("ratelimit", "auth_window", 60, 1, 86400);
  tp_ratelimit_configure(rate, burst, fails, window);
}

/* FNV-1a with a per-process seed, so nobody can aim keys at one set. */
static uint64_t hash_id(const char *s)
{
  uint64_t h = 1469598103934665603ull ^ seed_;
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 1099511628211ull;
  }
  return h ? h : 1;
}

/* The entry for h in its set (locked by the caller); *fresh when it was
 * (re)claimed, evicting the least recently used way. */
static struct rl_entry *slot(struct rl_table *t, uint64_t h, bool *fresh)
{
  struct rl_entry *set = t->e[h % TP_RL_SETS], *victim = &set[0];
  for (int w = 0; w < TP_RL_WAYS; w++) {
    if (set[w].h == h) {
      *fresh = false;
      return &set[w];
    }
    if (set[w].h == 0 || (victim->h != 0 && set[w].last_ms < victim->last_ms))
      victim = &set[w];
  }
  memset(victim, 0, sizeof *victim);
  victim->h = h;
  *fresh = true;
  return victim;
}

int tp_ratelimit_take(const char *id, int64_t now_ms)
{
  if (rate_ <= 0)
    return 0;
  uint64_t h = hash_id(id);
  pthread_mutex_t *mu = &keys_.mu[h % RL_LOCKS];
  pthread_mutex_lock(mu);
  bool fresh;
  struct rl_entry *e = slot(&keys_, h, &fresh);
  int64_t cap = burst_ * 1000;
  if (fresh)
    e->a = cap;
  else if (now_ms > e->last_ms) {
    /* rate tokens/s is rate milli-tokens per ms. */
    int64_t add = (now_ms - e->last_ms) * rate_;
    e->a = (add >= cap - e->a) ? cap : e->a + add;
  }
  e->last_ms = now_ms > e->last_ms ? now_ms : e->last_ms;
  int wait = 0;
  if (e->a >= 1000)
    e->a -= 1000;
  else {
    int64_t ms = (1000 - e->a + rate_ - 1) / rate_;
    wait = (int)((ms + 999) / 1000);
    if (wait < 1)
      wait = 1;
  }
  pthread_mutex_unlock(mu);
  return wait;
}

void tp_ratelimit_addr_bucket(const char *addr, char *out, size_t n)
{
  struct in6_addr a;
  /* An IPv6 address's /64 is one subscriber (RFC 6177): every address of
   * it shares a bucket, or one client would have 2^64 of them. IPv4, and
   * IPv4 mapped into IPv6, stay whole. */
  if (addr && strchr(addr, ':') && inet_pton(AF_INET6, addr, &a) == 1 && !IN6_IS_ADDR_V4MAPPED(&a)) {
    memset(a.s6_addr + 8, 0, 8);
    char buf[INET6_ADDRSTRLEN];
    if (inet_ntop(AF_INET6, &a, buf, sizeof buf)) {
      snprintf(out, n, "%s/64", buf);
      return;
    }
  }
  snprintf(out, n, "%s", addr ? addr : "");
}

int tp_ratelimit_auth_blocked(const char *addr, int64_t now_ms)
{
  if (auth_max_ <= 0)
    return 0;
  char bucket[INET6_ADDRSTRLEN + 8];
  tp_ratelimit_addr_bucket(addr, bucket, sizeof bucket);
  uint64_t h = hash_id(bucket);
  pthread_mutex_t *mu = &addrs_.mu[h % RL_LOCKS];
  pthread_mutex_lock(mu);
  int wait = 0;
  struct rl_entry *set = addrs_.e[h % TP_RL_SETS];
  for (int w = 0; w < TP_RL_WAYS; w++) {
    struct rl_entry *e = &set[w];
    if (e->h == h && e->a >= auth_max_ && now_ms - e->b < auth_window_ms_) {
      wait = (int)((auth_window_ms_ - (now_ms - e->b) + 999) / 1000);
      if (wait < 1)
        wait = 1;
    }
  }
  pthread_mutex_unlock(mu);
  return wait;
}

void tp_ratelimit_auth_failed(const char *addr, int64_t now_ms)
{
  if (auth_max_ <= 0)
    return;
  char bucket[INET6_ADDRSTRLEN + 8];
  tp_ratelimit_addr_bucket(addr, bucket, sizeof bucket);
  uint64_t h = hash_id(bucket);
  pthread_mutex_t *mu = &addrs_.mu[h % RL_LOCKS];
  pthread_mutex_lock(mu);
  bool fresh;
  struct rl_entry *e = slot(&addrs_, h, &fresh);
  if (fresh || now_ms - e->b >= auth_window_ms_) {
    e->a = 0;
    e->b = now_ms;
  }
  e->a++;
  e->last_ms = now_ms;
  pthread_mutex_unlock(mu);
}
