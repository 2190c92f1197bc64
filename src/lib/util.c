/* Ids, hashes, randomness and clocks. */
#include "util.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

void tp_random(void *buf, size_t n)
{
  if (RAND_bytes(buf, (int)n) != 1) {
    fprintf(stderr, "{\"level\":\"error\",\"event\":\"rng_failed\"}\n");
    abort();
  }
}

void tp_random_b62(char *out, size_t n)
{
  /* Ids and request ids take a few random bytes each, several times per
   * request: draw them from a per-thread pool refilled from RAND_bytes 512
   * bytes at a time (each call costs far more than the bytes it returns).
   * Bytes are wiped as they are consumed. */
  static __thread uint8_t pool[512];
  static __thread size_t left;
  size_t i = 0;
  while (i < n) {
    if (left == 0) {
      tp_random(pool, sizeof pool);
      left = sizeof pool;
    }
    uint8_t v = pool[sizeof pool - left];
    pool[sizeof pool - left] = 0;
    left--;
    if (v < 248) /* 248 = 4*62: reject to keep the draw uniform */
      out[i++] = b62[v % 62];
  }
  out[n] = '\0';
}

static void b62_fixed(char *out, uint64_t v, int width)
{
  for (int i = width - 1; i >= 0; i--) {
    out[i] = b62[v % 62];
    v /= 62;
  }
}

void tp_id_new(char out[TP_ID_MAX], const char *prefix)
{
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  static uint64_t last_ms, seq;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  uint64_t ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
  pthread_mutex_lock(&mu);
  if (ms <= last_ms) {
    ms = last_ms; /* clock stepped back or same ms: keep order by sequence */
    if (++seq >= 62 * 62 * 62) {
      seq = 0;
      ms = ++last_ms;
    }
  } else {
    last_ms = ms;
    seq = 0;
  }
  uint64_t s = seq;
  pthread_mutex_unlock(&mu);
  size_t p = strlen(prefix);
  if (p > TP_ID_MAX - 26)
    p = TP_ID_MAX - 26;
  memcpy(out, prefix, p);
  out[p++] = '_';
  b62_fixed(out + p, ms, 8);
  b62_fixed(out + p + 8, s, 3);
  tp_random_b62(out + p + 11, 13);
}

void tp_hex(const uint8_t *in, size_t n, char *out)
{
  static const char hx[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = hx[in[i] >> 4];
    out[2 * i + 1] = hx[in[i] & 15];
  }
  out[2 * n] = '\0';
}

void tp_sha256(const void *data, size_t len, uint8_t out[32])
{
  SHA256(data, len, out);
}

void tp_sha256_hex(const void *data, size_t len, char out[65])
{
  uint8_t h[32];
  SHA256(data, len, h);
  tp_hex(h, 32, out);
}

void tp_hmac_sha256_hex(const void *key, size_t keylen, const void *data, size_t len, char out[65])
{
  uint8_t h[32];
  unsigned hl = 32;
  HMAC(EVP_sha256(), key, (int)keylen, data, len, h, &hl);
  tp_hex(h, 32, out);
}

int64_t tp_now(void)
{
  return (int64_t)time(NULL);
}

int64_t tp_mono_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t tp_mono_ms(void)
{
  return tp_mono_ns() / 1000000LL;
}

int tp_ct_equal(const void *a, const void *b, size_t n)
{
  const volatile uint8_t *x = a, *y = b;
  uint8_t d = 0;
  for (size_t i = 0; i < n; i++)
    d |= (uint8_t)(x[i] ^ y[i]);
  return d == 0;
}

int tp_body_append(char **buf, size_t *len, size_t *cap, bool *too_large, const char *data, size_t n, size_t max)
{
  if (*too_large || *len + n > max) {
    *too_large = true;
    return 0;
  }
  if (*len + n + 1 > *cap) {
    size_t c = *cap ? *cap : 1024;
    while (c < *len + n + 1)
      c *= 2;
    /* Not realloc: the old buffer must be wiped before it is freed. */
    char *nb = malloc(c);
    if (!nb)
      return -1;
    if (*buf) {
      memcpy(nb, *buf, *len);
      explicit_bzero(*buf, *cap);
      free(*buf);
    }
    *buf = nb;
    *cap = c;
  }
  memcpy(*buf + *len, data, n);
  *len += n;
  (*buf)[*len] = '\0';
  return 0;
}

void tp_body_free(char *buf, size_t cap)
{
  if (buf)
    explicit_bzero(buf, cap);
  free(buf);
}
