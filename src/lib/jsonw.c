/* A compact JSON writer for jansson trees on the hot path (stored objects,
 * events, replies). json_dumps spends most of its time outside the bytes it
 * writes: a hashtable of visited containers keyed by snprintf'ed pointers
 * (loop detection), one callback per fragment, snprintf for integers and a
 * UTF-8 decode per character. Here strings are copied in runs and integers
 * formatted by hand; the output is byte for byte what
 * json_dumps(v, JSON_COMPACT) gives (insertion order, which jansson 2.14
 * always keeps), so stored JSON and replies do not change. */
#include "jsonw.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TP_JSONW_MAX_DEPTH 512 /* deeper means a cycle or abuse: give up like json_dumps */


static bool reserve(struct tp_jbuf *b, size_t n)
{
  if (b->failed)
    return false;
  if (b->len + n + 1 <= b->cap)
    return true;
  size_t cap = b->cap ? b->cap : 1024;
  while (cap < b->len + n + 1)
    cap *= 2;
  char *np = realloc(b->p, cap);
  if (!np) {
    b->failed = true;
    return false;
  }
  b->p = np;
  b->cap = cap;
  return true;
}

static void put(struct tp_jbuf *b, const char *s, size_t n)
{
  if (!reserve(b, n))
    return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void putc1(struct tp_jbuf *b, char c)
{
  if (!reserve(b, 1))
    return;
  b->p[b->len++] = c;
}

/* 1 for bytes json_dumps escapes without JSON_ESCAPE_SLASH/ENSURE_ASCII. */
static const unsigned char needs_escape[256] = {
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  0, 0, 1 /* " */, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 /* \ */, 0, 0, 0,
};

/* Whether any of the 8 bytes in w is < 0x20, '"' or '\\' (the bytes
 * needs_escape marks): the classic "has zero byte" test on w, on w with
 * every '"' and on w with every '\\' cleared. */
static inline bool word_needs_escape(uint64_t w)
{
  const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  uint64_t q = w ^ (ones * '"'), bs = w ^ (ones * '\\');
  uint64_t lt = (w - ones * 0x20) & ~w;        /* high bit set where a byte < 0x20 */
  uint64_t zq = (q - ones) & ~q, zb = (bs - ones) & ~bs;
  return ((lt | zq | zb) & highs) != 0;
}

static void put_string(struct tp_jbuf *b, const char *s, size_t n)
{
  static const char hex[] = "0123456789ABCDEF";
  putc1(b, '"');
  size_t i = 0;
  while (i < n) {
    size_t run = i;
    /* Eight bytes at a time while none needs escaping (most strings). */
    while (run + 8 <= n) {
      uint64_t w;
      memcpy(&w, s + run, 8);
      if (word_needs_escape(w))
        break;
      run += 8;
    }
    while (run < n && !needs_escape[(unsigned char)s[run]])
      run++;
    put(b, s + i, run - i);
    if (run == n)
      break;
    unsigned char c = (unsigned char)s[run];
    char esc[6] = {'\\', 0, 0, 0, 0, 0};
    size_t el = 2;
    switch (c) {
    case '"': esc[1] = '"'; break;
    case '\\': esc[1] = '\\'; break;
    case '\b': esc[1] = 'b'; break;
    case '\f': esc[1] = 'f'; break;
    case '\n': esc[1] = 'n'; break;
    case '\r': esc[1] = 'r'; break;
    case '\t': esc[1] = 't'; break;
    default:
      esc[1] = 'u';
      esc[2] = '0';
      esc[3] = '0';
      esc[4] = hex[c >> 4];
      esc[5] = hex[c & 15];
      el = 6;
      break;
    }
    put(b, esc, el);
    i = run + 1;
  }
  putc1(b, '"');
}

static void put_int(struct tp_jbuf *b, json_int_t v)
{
  char tmp[24];
  size_t i = sizeof tmp;
  /* Work on the magnitude as unsigned so INT64_MIN needs no special case. */
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  do {
    tmp[--i] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0)
    tmp[--i] = '-';
  put(b, tmp + i, sizeof tmp - i);
}

static void put_value(struct tp_jbuf *b, const json_t *v, int depth)
{
  if (b->failed)
    return;
  if (depth > TP_JSONW_MAX_DEPTH) {
    b->failed = true;
    return;
  }
  switch (json_typeof(v)) {
  case JSON_OBJECT: {
    putc1(b, '{');
    bool first = true;
    for (void *it = json_object_iter((json_t *)(uintptr_t)v); it;
         it = json_object_iter_next((json_t *)(uintptr_t)v, it)) {
      if (!first)
        putc1(b, ',');
      first = false;
      put_string(b, json_object_iter_key(it), json_object_iter_key_len(it));
      putc1(b, ':');
      put_value(b, json_object_iter_value(it), depth + 1);
    }
    putc1(b, '}');
    break;
  }
  case JSON_ARRAY: {
    putc1(b, '[');
    size_t n = json_array_size(v);
    for (size_t i = 0; i < n; i++) {
      if (i)
        putc1(b, ',');
      put_value(b, json_array_get(v, i), depth + 1);
    }
    putc1(b, ']');
    break;
  }
  case JSON_STRING:
    put_string(b, json_string_value(v), json_string_length(v));
    break;
  case JSON_INTEGER:
    put_int(b, json_integer_value(v));
    break;
  case JSON_TRUE:
    put(b, "true", 4);
    break;
  case JSON_FALSE:
    put(b, "false", 5);
    break;
  case JSON_NULL:
    put(b, "null", 4);
    break;
  default: {
    /* Reals are rare here (money is integers): jansson's own formatting. */
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) {
      b->failed = true;
      return;
    }
    put(b, s, strlen(s));
    free(s);
    break;
  }
  }
}

char *tp_json_dump(const json_t *v, size_t *len_out)
{
  struct tp_jbuf b = {NULL, 0, 0, false};
  if (!v || !(json_is_object(v) || json_is_array(v)))
    return NULL; /* like json_dumps without JSON_ENCODE_ANY */
  put_value(&b, v, 0);
  if (b.failed || !reserve(&b, 0)) {
    free(b.p);
    return NULL;
  }
  b.p[b.len] = '\0';
  if (len_out)
    *len_out = b.len;
  return b.p;
}

/* ---- hand-built JSON (jsonw.h) --------------------------------------------- */
void tp_jbuf_raw(struct tp_jbuf *b, const char *s, size_t n)
{
  put(b, s, n);
}

void tp_jbuf_str(struct tp_jbuf *b, const char *s)
{
  if (s)
    put_string(b, s, strlen(s));
  else
    put(b, "null", 4);
}

void tp_jbuf_int(struct tp_jbuf *b, int64_t v)
{
  put_int(b, (json_int_t)v);
}

char *tp_jbuf_finish(struct tp_jbuf *b, size_t *len_out)
{
  if (b->failed || !reserve(b, 0)) {
    free(b->p);
    b->p = NULL;
    return NULL;
  }
  b->p[b->len] = '\0';
  if (len_out)
    *len_out = b->len;
  char *out = b->p;
  b->p = NULL;
  return out;
}
