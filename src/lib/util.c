/* Ids, hashes, randomness and clocks. */
#include "util.h"
#include "log.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <limits.h>
#include <locale.h>
#include <wctype.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
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

static pthread_mutex_t id_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t id_last_ms, id_seq;
static atomic_bool ids_ahead;

bool tp_ids_ran_ahead(void)
{
  return atomic_load(&ids_ahead);
}

void tp_ids_ran_ahead_set(void)
{
  atomic_store(&ids_ahead, true);
}

void tp_id_seed(int64_t ms)
{
  pthread_mutex_lock(&id_mu);
  if (ms > 0 && (uint64_t)ms >= id_last_ms) {
    id_last_ms = (uint64_t)ms + 1; /* strictly above every id made at ms */
    id_seq = 0;
  }
  pthread_mutex_unlock(&id_mu);
}

int64_t tp_id_ms(const char *id)
{
  const char *u = id ? strrchr(id, '_') : NULL;
  if (!u || strlen(u + 1) != 24)
    return -1;
  int64_t v = 0;
  for (int i = 1; i <= 8; i++) {
    const char *p = strchr(b62, u[i]);
    if (!u[i] || !p)
      return -1;
    v = v * 62 + (p - b62);
  }
  return v;
}

void tp_id_new(char out[TP_ID_MAX], const char *prefix)
{
  struct timeval tv;
  gettimeofday(&tv, NULL);
  uint64_t ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000, now = ms;
  pthread_mutex_lock(&id_mu);
  if (ms <= id_last_ms) {
    ms = id_last_ms; /* clock stepped back or same ms: keep order by sequence */
    if (++id_seq >= 62 * 62 * 62) {
      id_seq = 0;
      ms = ++id_last_ms;
    }
  } else {
    id_last_ms = ms;
    id_seq = 0;
  }
  uint64_t s = id_seq;
  pthread_mutex_unlock(&id_mu);
  /* Before the id is handed out: the writer persists the mark with the
   * first batch that can hold it (store/sqlite/sqlite.c, save_ahead). */
  if (ms > now + TP_ID_AHEAD_MS && !atomic_load(&ids_ahead))
    atomic_store(&ids_ahead, true);
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

void tp_vault_key_check_value(const uint8_t key[32], char out[65])
{
  static const char label[] = "turnpike vault key check v1";
  tp_hmac_sha256_hex(key, 32, label, sizeof label - 1, out);
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

void tp_cond_init_mono(void *cond)
{
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init((pthread_cond_t *)cond, &a);
  pthread_condattr_destroy(&a);
}

void tp_mono_deadline(struct timespec *ts, int64_t ms)
{
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += (time_t)(ms / 1000);
  ts->tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

int64_t tp_mono_ms(void)
{
  return tp_mono_ns() / 1000000LL;
}

int tp_scopy(char *dst, size_t cap, const char *src)
{
  if (!src)
    src = ""; /* a missing value copies as empty, never a crash */
  size_t n = strlen(src);
  if (cap > 0) {
    size_t k = n < cap ? n : cap - 1;
    memmove(dst, src, k);
    dst[k] = '\0';
  }
  return n > INT_MAX ? INT_MAX : (int)n;
}

bool tp_token_ok(const char *s, size_t max)
{
  size_t n = 0;
  for (; s[n]; n++)
    if (n >= max || !((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
                      (s[n] >= '0' && s[n] <= '9') || s[n] == '_' || s[n] == '-'))
      return false;
  return true;
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

/* ---- addresses ------------------------------------------------------------ */
static bool v4_public(uint32_t a)
{
  static const struct {
    uint32_t net, mask;
  } deny[] = {
    {0x00000000, 0xff000000}, /* 0.0.0.0/8 this network */
    {0x0a000000, 0xff000000}, /* 10/8 private */
    {0x64400000, 0xffc00000}, /* 100.64/10 shared (CGN) */
    {0x7f000000, 0xff000000}, /* 127/8 loopback */
    {0xa9fe0000, 0xffff0000}, /* 169.254/16 link-local, cloud metadata */
    {0xac100000, 0xfff00000}, /* 172.16/12 private */
    {0xc0000000, 0xffffff00}, /* 192.0.0/24 IETF protocol assignments */
    {0xc0000200, 0xffffff00}, /* 192.0.2/24 TEST-NET-1 */
    {0xc0586300, 0xffffff00}, /* 192.88.99/24 6to4 relay anycast */
    {0xc0a80000, 0xffff0000}, /* 192.168/16 private */
    {0xc6120000, 0xfffe0000}, /* 198.18/15 benchmarking */
    {0xc6336400, 0xffffff00}, /* 198.51.100/24 TEST-NET-2 */
    {0xcb007100, 0xffffff00}, /* 203.0.113/24 TEST-NET-3 */
    {0xe0000000, 0xf0000000}, /* 224/4 multicast */
    {0xf0000000, 0xf0000000}, /* 240/4 reserved, broadcast */
  };
  for (size_t i = 0; i < sizeof deny / sizeof deny[0]; i++)
    if ((a & deny[i].mask) == deny[i].net)
      return false;
  return true;
}

static uint32_t be32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool v6_public(const uint8_t *b)
{
  static const uint8_t zero[12] = {0};
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  /* ::/96 (unspecified, loopback, IPv4-compatible), ::ffff:0:0/96, 64:ff9b::/96:
   * the last 32 bits are an IPv4 address, judged as one. */
  if (memcmp(b, zero, 12) == 0 || memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0)
    return v4_public(be32(b + 12));
  if (b[0] == 0x20 && b[1] == 0x02) /* 2002::/16 6to4: bits 16-47 */
    return v4_public(be32(b + 2));
  if (b[0] == 0xff)                               /* ff00::/8 multicast */
    return false;
  if ((b[0] & 0xfe) == 0xfc)                      /* fc00::/7 unique local */
    return false;
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)      /* fe80::/10 link-local */
    return false;
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0)      /* fec0::/10 site-local */
    return false;
  if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) /* 2001:db8::/32 documentation */
    return false;
  if (b[0] == 0x01 && b[1] == 0 && memcmp(b + 2, zero, 6) == 0) /* 100::/64 discard */
    return false;
  if (b[0] == 0x20 && b[1] == 0x01 && (b[2] & 0xfe) == 0) /* 2001::/23 IETF (Teredo, ORCHID...) */
    return false;
  return true;
}

bool tp_addr_is_public(const struct sockaddr *sa)
{
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
    return v4_public(ntohl(in->sin_addr.s_addr));
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
    return v6_public(in6->sin6_addr.s6_addr);
  }
  return false;
}

int tp_addr_text_is_public(const char *host)
{
  char buf[INET6_ADDRSTRLEN + 2];
  size_t n = strlen(host);
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
    if (n - 2 >= sizeof buf)
      return -1;
    memcpy(buf, host + 1, n - 2);
    buf[n - 2] = '\0';
  } else {
    if (n >= sizeof buf)
      return -1;
    memcpy(buf, host, n + 1);
  }
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, buf, &a4) == 1)
    return v4_public(ntohl(a4.s_addr)) ? 1 : 0;
  if (inet_pton(AF_INET6, buf, &a6) == 1)
    return v6_public(a6.s6_addr) ? 1 : 0;
  return -1;
}

/* ---- UTF-8 ---------------------------------------------------------------- */
size_t tp_utf8_char_len(const unsigned char *p, const unsigned char *end)
{
  unsigned c = p[0];
  size_t n;
  uint32_t v;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    v = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    v = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    v = c & 0x07;
  } else
    return 0;
  if ((size_t)(end - p) < n)
    return 0;
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80)
      return 0;
    v = (v << 6) | (p[i] & 0x3f);
  }
  if ((n == 3 && v < 0x800) || (v >= 0xd800 && v <= 0xdfff) || (n == 4 && (v < 0x10000 || v > 0x10ffff)))
    return 0;
  return n;
}

bool tp_utf8_valid(const void *s, size_t n)
{
  const unsigned char *p = s, *end = p + n;
  while (p < end) {
    if (*p < 0x80) {
      p++;
      continue;
    }
    size_t l = tp_utf8_char_len(p, end);
    if (l == 0)
      return false;
    p += l;
  }
  return true;
}

static locale_t utf8_loc;
static void utf8_loc_make(void)
{
  utf8_loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
}

static size_t utf8_put(unsigned char *o, uint32_t v)
{
  if (v < 0x80) {
    o[0] = (unsigned char)v;
    return 1;
  }
  if (v < 0x800) {
    o[0] = (unsigned char)(0xc0 | (v >> 6));
    o[1] = (unsigned char)(0x80 | (v & 0x3f));
    return 2;
  }
  if (v < 0x10000) {
    o[0] = (unsigned char)(0xe0 | (v >> 12));
    o[1] = (unsigned char)(0x80 | ((v >> 6) & 0x3f));
    o[2] = (unsigned char)(0x80 | (v & 0x3f));
    return 3;
  }
  o[0] = (unsigned char)(0xf0 | (v >> 18));
  o[1] = (unsigned char)(0x80 | ((v >> 12) & 0x3f));
  o[2] = (unsigned char)(0x80 | ((v >> 6) & 0x3f));
  o[3] = (unsigned char)(0x80 | (v & 0x3f));
  return 4;
}

char *tp_utf8_lower(const char *s)
{
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, utf8_loc_make);
  size_t n = strlen(s);
  /* a lower case is at most 4 bytes where its capital was 2 or more */
  unsigned char *out = malloc(2 * n + 4), *o = out;
  if (!out)
    abort();
  const unsigned char *p = (const unsigned char *)s, *end = p + n;
  while (p < end) {
    if (*p < 0x80) {
      *o++ = (unsigned char)((*p >= 'A' && *p <= 'Z') ? *p + ('a' - 'A') : *p);
      p++;
      continue;
    }
    size_t l = tp_utf8_char_len(p, end);
    if (l == 0) {
      *o++ = *p++;
      continue;
    }
    uint32_t v = p[0] & (l == 2 ? 0x1f : l == 3 ? 0x0f : 0x07);
    for (size_t i = 1; i < l; i++)
      v = (v << 6) | (p[i] & 0x3f);
    uint32_t lv = utf8_loc ? (uint32_t)towlower_l((wint_t)v, utf8_loc) : v;
    /* Kept when its lower case would be ASCII (U+0130 to "i", KELVIN SIGN
     * to "k"): ASCII folds only from ASCII, as SQLite's lower() folds the
     * index of customers' emails, so the index and the walk agree. */
    if (lv < 0x80 || lv > 0x10ffff || (lv >= 0xd800 && lv <= 0xdfff))
      lv = v;
    o += utf8_put(o, lv);
    p += l;
  }
  *o = '\0';
  return (char *)out;
}

int tp_fsync_dir_of(const char *path)
{
  char dir[4200];
  tp_scopy(dir, sizeof dir, path);
  char *slash = strrchr(dir, '/');
  if (slash == dir)
    dir[1] = '\0'; /* "/name": the root */
  else if (slash)
    *slash = '\0';
  int fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* The length in bytes of a separator a card number may be written with at
 * s, 0 if none: " -._/\t+,;:" and as UTF-8 a no-break, figure, narrow or
 * ideographic space or a Unicode hyphen or dash (copied from a formatted
 * page or document). */
static size_t card_sep_len(const char *s)
{
  const unsigned char *u = (const unsigned char *)s;
  if (*u && strchr(" -._/\t+,;:", *u))
    return 1;
  if (u[0] == 0xC2 && u[1] == 0xA0)
    return 2; /* U+00A0 */
  if (u[0] == 0xE2 && u[1] == 0x80 && ((u[2] >= 0x80 && u[2] <= 0x95) || u[2] == 0xAF))
    return 3; /* U+2000-U+2015 spaces, hyphens and dashes; U+202F */
  if (u[0] == 0xE3 && u[1] == 0x80 && u[2] == 0x80)
    return 3; /* U+3000 */
  return 0;
}

/* Whether [p, q) is a dotted IPv4 address (four groups of one to three
 * digits): a ':' after one starts its port, not another group. */
static bool dotted_quad(const char *p, const char *q)
{
  int groups = 1, len = 0;
  for (; p < q; p++) {
    if (*p == '.') {
      if (len == 0 || ++groups > 4)
        return false;
      len = 0;
    } else if (*p >= '0' && *p <= '9' && ++len <= 3) {
      continue;
    } else {
      return false;
    }
  }
  return groups == 4 && len > 0;
}

/* The byte length of a decimal digit at s, 0 if none: ASCII, and as UTF-8
 * the full-width digits an East Asian input method types (U+FF10-FF19),
 * Arabic-Indic (U+0660-0669, U+06F0-06F9) and Devanagari (U+0966-096F)
 * ones: a card number is one in any of them. */
static size_t card_digit_len(const char *s)
{
  const unsigned char *u = (const unsigned char *)s;
  if (u[0] >= '0' && u[0] <= '9')
    return 1;
  if ((u[0] == 0xD9 && u[1] >= 0xA0 && u[1] <= 0xA9) || (u[0] == 0xDB && u[1] >= 0xB0 && u[1] <= 0xB9))
    return 2;
  if ((u[0] == 0xEF && u[1] == 0xBC && u[2] >= 0x90 && u[2] <= 0x99) ||
      (u[0] == 0xE0 && u[1] == 0xA5 && u[2] >= 0xA6 && u[2] <= 0xAF))
    return 3;
  return 0;
}

/* Separators that may join two groups of a card number: a page may pad
 * them ("4242    4242    4242    4242"); a longer gap parts two numbers. */
#define CARD_SEP_MAX 8

int tp_mask_card_numbers(char *s)
{
  int masked = 0;
  for (char *p = s; *p;) {
    if (card_digit_len(p) == 0) {
      p++;
      continue;
    }
    /* A run: digits, with a space or dash between two digits, or up to
     * CARD_SEP_MAX separators (card_sep_len: 4242.4242..., 4242  4242...,
     * 4242+4242... as a form encodes spaces, 4242:4242..., 4242\u00a04242...
     * from a page). With the other separators it takes 13 digits, so that
     * an IPv4 address (at most 12) is left alone, and a ':' after one is
     * the start of its port. */
    char *q = p;
    int digits = 0;
    bool odd = false;
    for (;;) {
      size_t dl = card_digit_len(q);
      if (dl > 0) {
        digits++;
        q += dl;
        continue;
      }
      int sep = 0;
      size_t bytes = 0, l;
      while (sep < CARD_SEP_MAX && (l = card_sep_len(q + bytes)) > 0) {
        bytes += l;
        sep++;
      }
      if (sep == 0 || card_digit_len(q + bytes) == 0)
        break;
      if (*q == ':' && dotted_quad(p, q))
        break;
      odd |= sep > 1 || (*q != ' ' && *q != '-');
      q += bytes;
    }
    if (digits >= (odd ? 13 : 12)) {
      /* each digit one '*', a multibyte one's other bytes taken out */
      for (char *t = p; t < q; t++) {
        size_t dl = card_digit_len(t);
        if (dl == 0)
          continue;
        *t = '*';
        if (dl > 1) {
          memmove(t + 1, t + dl, strlen(t + dl) + 1);
          q -= dl - 1;
        }
      }
      masked++;
    }
    p = q;
  }
  return masked;
}

void tp_rtrim_ows(char *s)
{
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
    s[--n] = '\0';
}

int tp_b64_digit(char c, bool url)
{
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == (url ? '-' : '+'))
    return 62;
  return c == (url ? '_' : '/') ? 63 : -1;
}

int tp_basic_decode(const char *in, char *out, size_t cap)
{
  size_t o = 0;
  unsigned acc = 0;
  int bits = 0;
  while (*in == ' ')
    in++;
  for (; *in && *in != '=' && *in != ' ' && *in != '\t'; in++) {
    int v = tp_b64_digit(*in, false);
    if (v < 0)
      return -1;
    acc = (acc << 6) | (unsigned)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (o + 1 >= cap)
        return -1;
      unsigned char b = (unsigned char)((acc >> bits) & 0xff);
      if (b < 0x20 || b == 0x7f)
        return -1;
      out[o++] = (char)b;
    }
  }
  for (int pad = 0; *in == '='; in++)
    if (++pad > 2)
      return -1;
  while (*in == ' ' || *in == '\t')
    in++;
  if (*in || cap == 0)
    return -1;
  out[o] = '\0';
  return (int)o;
}

size_t tp_utf8_chars(const char *s)
{
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)s; p && *p; p++)
    n += (*p & 0xC0) != 0x80;
  return n;
}

void tp_utf8_scrub(char *s)
{
  unsigned char *p = (unsigned char *)s, *end = p + strlen(s);
  while (p < end) {
    if (*p < 0x80) {
      p++;
      continue;
    }
    size_t n = tp_utf8_char_len(p, end);
    if (n) {
      p += n;
    } else {
      *p++ = '?';
    }
  }
}

int tp_secret_open(const char *path)
{
  /* O_NONBLOCK: a FIFO planted there opens at once (and is refused below)
   * rather than hanging the start */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ELOOP) { /* a symbolic link */
      tp_log(TP_LOG_ERROR, "secret_file_unsafe", "{s:s, s:s}", "path", path, "why",
             "a symbolic link: put the file itself there");
      errno = EPERM;
    }
    return -1;
  }
  struct stat st;
  const char *why = NULL;
  if (fstat(fd, &st) != 0)
    why = "cannot be examined";
  else if (!S_ISREG(st.st_mode))
    why = "not a regular file";
  else if (st.st_uid != geteuid() && st.st_uid != 0) /* root's (0640 for the service's group) is as safe */
    why = "owned by another user: chown it to the user that runs turnpike";
  else if (st.st_mode & (S_IWGRP | S_IWOTH))
    why = "others than its owner may write it: check it is the key you made, then chmod 600 it";
  else if (st.st_uid != geteuid() && (st.st_mode & S_IROTH))
    why = "any user may read it: chmod 640 it (root owns it)";
  if (why) {
    tp_log(TP_LOG_ERROR, "secret_file_unsafe", "{s:s, s:s}", "path", path, "why", why);
    close(fd);
    errno = EPERM;
    return -1;
  }
  if (st.st_uid == geteuid() && (st.st_mode & 077)) {
    tp_log(TP_LOG_WARN, "secret_file_tightened", "{s:s, s:s}", "path", path, "why",
           "others than its owner could read it: now 0600");
    (void)fchmod(fd, S_IRUSR | S_IWUSR);
  }
  return fd;
}

FILE *tp_secret_fopen(const char *path)
{
  int fd = tp_secret_open(path);
  FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
  if (fd >= 0 && !f)
    close(fd);
  return f;
}

const char *tp_key_file_exposed(const char *path)
{
  struct stat st;
  if (stat(path, &st) != 0)
    return NULL; /* the read that follows names the file */
  if (st.st_mode & S_IRWXO)
    return "the private key file can be read by any user: chmod 600 it";
  if ((st.st_mode & (S_IWGRP | S_IXGRP)) || ((st.st_mode & S_IRGRP) && st.st_uid != 0))
    return "the private key file can be read by its group: chmod 600 it (0640 only when root owns it)";
  return NULL;
}

int tp_hex_digit(int c)
{
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

void tp_uuid4(char out[37])
{
  uint8_t b[16];
  tp_random(b, sizeof b);
  b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
  b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* variant 10 */
  snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3],
           b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}
