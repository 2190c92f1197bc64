/* Ids, hashes, randomness and clocks. */
#include "util.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* Every draw comes from a per-thread pool refilled from RAND_bytes 1 KiB at
 * a time: each RAND_bytes call costs far more (DRBG locking, reseed checks)
 * than the bytes it returns, and a payment takes a few dozen bytes for ids,
 * nonces and keys. Bytes are wiped from the pool as they are handed out, so
 * a key drawn here exists in one place only. Large draws bypass the pool. */
static __thread uint8_t rnd_pool[1024];
static __thread size_t rnd_left;

static void rng_fill(void *buf, size_t n)
{
  if (RAND_bytes(buf, (int)n) != 1) {
    fprintf(stderr, "{\"level\":\"error\",\"event\":\"rng_failed\"}\n");
    abort();
  }
}

void tp_random(void *buf, size_t n)
{
  if (n > sizeof rnd_pool / 4) {
    rng_fill(buf, n);
    return;
  }
  uint8_t *out = buf;
  while (n > 0) {
    if (rnd_left == 0) {
      rng_fill(rnd_pool, sizeof rnd_pool);
      rnd_left = sizeof rnd_pool;
    }
    size_t take = n < rnd_left ? n : rnd_left;
    uint8_t *src = rnd_pool + sizeof rnd_pool - rnd_left;
    memcpy(out, src, take);
    memset(src, 0, take);
    rnd_left -= take;
    out += take;
    n -= take;
  }
}

void tp_random_b62(char *out, size_t n)
{
  size_t i = 0;
  uint8_t v[32];
  while (i < n) {
    size_t want = n - i < sizeof v ? n - i : sizeof v;
    tp_random(v, want);
    for (size_t k = 0; k < want; k++)
      if (v[k] < 248) /* 248 = 4*62: reject to keep the draw uniform */
        out[i++] = b62[v[k] % 62];
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

void tp_id_floor(char out[TP_ID_MAX], const char *prefix, int64_t ms)
{
  size_t p = strlen(prefix);
  if (p > TP_ID_MAX - 26)
    p = TP_ID_MAX - 26;
  memcpy(out, prefix, p);
  out[p++] = '_';
  b62_fixed(out + p, ms > 0 ? (uint64_t)ms : 0, 8);
  out[p + 8] = '\0';
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

/* SHA-256 and HMAC-SHA-256 on the request path (API keys, request hashes,
 * card fingerprints): OpenSSL 3's one-shot SHA256() and HMAC() look the
 * algorithm up in the provider store on every call, which costs more than
 * hashing a short message. Fetch it once and keep one digest context per
 * thread; HMAC is RFC 2104 over it. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static pthread_key_t sha_key; /* the thread's EVP_MD_CTX, freed when it exits */

static void sha_ctx_free(void *c)
{
  EVP_MD_CTX_free(c);
}

static void sha256_fetch(void)
{
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
  if (pthread_key_create(&sha_key, sha_ctx_free) != 0)
    abort();
}

static EVP_MD_CTX *sha_begin(void)
{
  pthread_once(&sha256_once, sha256_fetch);
  EVP_MD_CTX *c = pthread_getspecific(sha_key);
  if (!c && (c = EVP_MD_CTX_new()) != NULL)
    pthread_setspecific(sha_key, c);
  if (!sha256_md || !c || EVP_DigestInit_ex2(c, sha256_md, NULL) != 1)
    abort();
  return c;
}

static void sha_end(EVP_MD_CTX *c, uint8_t out[32])
{
  unsigned n = 32;
  if (EVP_DigestFinal_ex(c, out, &n) != 1)
    abort();
}

void tp_sha256(const void *data, size_t len, uint8_t out[32])
{
  EVP_MD_CTX *c = sha_begin();
  EVP_DigestUpdate(c, data, len);
  sha_end(c, out);
}

void tp_sha256_hex(const void *data, size_t len, char out[65])
{
  uint8_t h[32];
  tp_sha256(data, len, h);
  tp_hex(h, 32, out);
}

void tp_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len, uint8_t out[32])
{
  uint8_t k[64] = {0}, pad[64];
  if (keylen > sizeof k)
    tp_sha256(key, keylen, k);
  else
    memcpy(k, key, keylen);
  for (size_t i = 0; i < 64; i++)
    pad[i] = k[i] ^ 0x36;
  EVP_MD_CTX *c = sha_begin();
  EVP_DigestUpdate(c, pad, 64);
  EVP_DigestUpdate(c, data, len);
  sha_end(c, out);
  for (size_t i = 0; i < 64; i++)
    pad[i] = k[i] ^ 0x5c;
  c = sha_begin();
  EVP_DigestUpdate(c, pad, 64);
  EVP_DigestUpdate(c, out, 32);
  sha_end(c, out);
  OPENSSL_cleanse(k, sizeof k);
  OPENSSL_cleanse(pad, sizeof pad);
}

void tp_hmac_sha256_hex(const void *key, size_t keylen, const void *data, size_t len, char out[65])
{
  uint8_t h[32];
  tp_hmac_sha256(key, keylen, data, len, h);
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

int tp_scopy(char *dst, size_t cap, const char *src)
{
  size_t n = strlen(src);
  if (cap > 0) {
    size_t k = n < cap ? n : cap - 1;
    memmove(dst, src, k);
    dst[k] = '\0';
  }
  return n > INT_MAX ? INT_MAX : (int)n;
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
