/* A JSON reader with jansson's acceptance rules (see jparse.h). */
#include "jparse.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define JP_MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH */

struct jp {
  const unsigned char *p, *end;
  int depth;
  char *buf; /* scratch for strings with escapes and long numbers */
  size_t cap;
};

static void ws(struct jp *j)
{
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
    j->p++;
}

static bool reserve(struct jp *j, size_t n)
{
  if (n <= j->cap)
    return true;
  size_t cap = j->cap ? j->cap : 256;
  while (cap < n)
    cap *= 2;
  char *b = realloc(j->buf, cap);
  if (!b)
    return false;
  j->buf = b;
  j->cap = cap;
  return true;
}

static int hex4(const unsigned char *p, const unsigned char *end)
{
  if (end - p < 4)
    return -1;
  int v = 0;
  for (int i = 0; i < 4; i++) {
    unsigned c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (int)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (int)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (int)(c - 'A' + 10);
    else
      return -1;
  }
  return v;
}

static size_t put_utf8(char *o, uint32_t v)
{
  if (v < 0x80) {
    o[0] = (char)v;
    return 1;
  }
  if (v < 0x800) {
    o[0] = (char)(0xc0 | (v >> 6));
    o[1] = (char)(0x80 | (v & 0x3f));
    return 2;
  }
  if (v < 0x10000) {
    o[0] = (char)(0xe0 | (v >> 12));
    o[1] = (char)(0x80 | ((v >> 6) & 0x3f));
    o[2] = (char)(0x80 | (v & 0x3f));
    return 3;
  }
  o[0] = (char)(0xf0 | (v >> 18));
  o[1] = (char)(0x80 | ((v >> 12) & 0x3f));
  o[2] = (char)(0x80 | ((v >> 6) & 0x3f));
  o[3] = (char)(0x80 | (v & 0x3f));
  return 4;
}

/* A string at j->p (just past the opening quote). On success *s and *n
 * give its decoded bytes: in the input when it has no escape, else in
 * j->buf; j->p is past the closing quote. */
static bool string(struct jp *j, const char **s, size_t *n)
{
  const unsigned char *p = j->p, *start = p;
  /* plain run: no escape, quote, control byte or invalid UTF-8 */
  for (;;) {
    if (p >= j->end)
      return false;
    unsigned c = *p;
    if (c == '"') {
      *s = (const char *)start;
      *n = (size_t)(p - start);
      j->p = p + 1;
      return true;
    }
    if (c == '\\')
      break;
    if (c < 0x20)
      return false;
    if (c < 0x80) {
      p++;
      continue;
    }
    size_t l = tp_utf8_char_len(p, j->end);
    if (!l)
      return false;
    p += l;
  }
  /* escapes: decode into the scratch buffer (never longer than the input) */
  if (!reserve(j, (size_t)(j->end - start) + 4))
    return false;
  char *o = j->buf;
  size_t on = (size_t)(p - start);
  memcpy(o, start, on);
  for (;;) {
    if (p >= j->end)
      return false;
    unsigned c = *p;
    if (c == '"') {
      *s = o;
      *n = on;
      j->p = p + 1;
      return true;
    }
    if (c < 0x20)
      return false;
    if (c >= 0x80) {
      size_t l = tp_utf8_char_len(p, j->end);
      if (!l)
        return false;
      memcpy(o + on, p, l);
      on += l;
      p += l;
      continue;
    }
    if (c != '\\') {
      o[on++] = (char)c;
      p++;
      continue;
    }
    if (++p >= j->end)
      return false;
    switch (*p) {
    case '"': o[on++] = '"'; break;
    case '\\': o[on++] = '\\'; break;
    case '/': o[on++] = '/'; break;
    case 'b': o[on++] = '\b'; break;
    case 'f': o[on++] = '\f'; break;
    case 'n': o[on++] = '\n'; break;
    case 'r': o[on++] = '\r'; break;
    case 't': o[on++] = '\t'; break;
    case 'u': {
      int v = hex4(p + 1, j->end);
      if (v < 0)
        return false;
      p += 4;
      uint32_t cp = (uint32_t)v;
      if (cp >= 0xd800 && cp <= 0xdbff) { /* a high surrogate needs its low half */
        if (j->end - p < 7 || p[1] != '\\' || p[2] != 'u')
          return false;
        int lo = hex4(p + 3, j->end);
        if (lo < 0xdc00 || lo > 0xdfff)
          return false;
        cp = 0x10000 + ((cp - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
        p += 6;
      } else if (cp >= 0xdc00 && cp <= 0xdfff)
        return false;
      else if (cp == 0) /* jansson without JSON_ALLOW_NUL */
        return false;
      on += put_utf8(o + on, cp);
      break;
    }
    default:
      return false;
    }
    p++;
  }
}

static bool digit(const unsigned char *p, const unsigned char *end)
{
  return p < end && *p >= '0' && *p <= '9';
}

static json_t *number(struct jp *j)
{
  const unsigned char *p = j->p, *start = p;
  if (*p == '-')
    p++;
  if (!digit(p, j->end))
    return NULL;
  if (*p == '0') {
    p++;
    if (digit(p, j->end))
      return NULL;
  } else
    while (digit(p, j->end))
      p++;
  bool real = false;
  if (p < j->end && *p == '.') {
    p++;
    if (!digit(p, j->end))
      return NULL;
    while (digit(p, j->end))
      p++;
    real = true;
  }
  if (p < j->end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < j->end && (*p == '+' || *p == '-'))
      p++;
    if (!digit(p, j->end))
      return NULL;
    while (digit(p, j->end))
      p++;
    real = true;
  }
  size_t n = (size_t)(p - start);
  char small[32];
  char *t = small;
  if (n >= sizeof small) {
    if (!reserve(j, n + 1))
      return NULL;
    t = j->buf;
  }
  memcpy(t, start, n);
  t[n] = '\0';
  j->p = p;
  errno = 0;
  if (!real) {
    long long v = strtoll(t, NULL, 10);
    if (errno == ERANGE)
      return NULL;
    return json_integer((json_int_t)v);
  }
  double d = strtod(t, NULL);
  if (errno == ERANGE && (d == HUGE_VAL || d == -HUGE_VAL))
    return NULL;
  return json_real(d);
}

static bool literal(struct jp *j, const char *word, size_t n)
{
  if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
    return false;
  j->p += n;
  return true;
}

static json_t *value(struct jp *j);

/* After a member of an object or array: 1 on ',' (another follows), 0 on
 * the closing bracket, -1 on anything else; consumes what it read. */
static int after_member(struct jp *j, char close)
{
  ws(j);
  if (j->p < j->end && (*j->p == ',' || *j->p == close))
    return *j->p++ == ',';
  return -1;
}

static json_t *object(struct jp *j)
{
  json_t *o = json_object();
  if (!o)
    return NULL;
  ws(j);
  if (j->p < j->end && *j->p == '}') {
    j->p++;
    return o;
  }
  for (;;) {
    if (j->p >= j->end || *j->p != '"')
      goto fail;
    j->p++;
    const char *k;
    size_t kn;
    if (!string(j, &k, &kn))
      goto fail;
    /* a key with escapes sits in the scratch buffer, which the value may
     * reuse: copy it out; a plain key stays where it is in the input */
    char kbuf[128];
    char *key = (char *)(uintptr_t)k;
    if (j->buf && k >= j->buf && k < j->buf + j->cap) {
      key = kn < sizeof kbuf ? kbuf : malloc(kn + 1);
      if (!key)
        goto fail;
      memcpy(key, k, kn);
      key[kn] = '\0';
    }
    ws(j);
    json_t *v = NULL;
    if (j->p < j->end && *j->p == ':') {
      j->p++;
      v = value(j);
    }
    int rc = v ? json_object_setn_new_nocheck(o, key, kn, v) : -1;
    if (key != kbuf && key != k)
      free(key);
    if (rc != 0)
      goto fail;
    int sep = after_member(j, '}');
    if (sep == 0)
      return o;
    if (sep < 0)
      goto fail;
    ws(j);
  }
fail:
  json_decref(o);
  return NULL;
}

static json_t *array(struct jp *j)
{
  json_t *a = json_array();
  if (!a)
    return NULL;
  ws(j);
  if (j->p < j->end && *j->p == ']') {
    j->p++;
    return a;
  }
  for (;;) {
    json_t *v = value(j);
    if (!v || json_array_append_new(a, v) != 0)
      goto fail;
    int sep = after_member(j, ']');
    if (sep == 0)
      return a;
    if (sep < 0)
      goto fail;
  }
fail:
  json_decref(a);
  return NULL;
}

/* jansson counts every value, not only containers, against its depth limit */
static json_t *value1(struct jp *j)
{
  ws(j);
  if (j->p >= j->end)
    return NULL;
  switch (*j->p) {
  case '{':
    j->p++;
    return object(j);
  case '[':
    j->p++;
    return array(j);
  case '"': {
    j->p++;
    const char *s;
    size_t n;
    if (!string(j, &s, &n))
      return NULL;
    return json_stringn_nocheck(s, n);
  }
  case 't':
    return literal(j, "true", 4) ? json_true() : NULL;
  case 'f':
    return literal(j, "false", 5) ? json_false() : NULL;
  case 'n':
    return literal(j, "null", 4) ? json_null() : NULL;
  default:
    return *j->p == '-' || (*j->p >= '0' && *j->p <= '9') ? number(j) : NULL;
  }
}

static json_t *value(struct jp *j)
{
  if (++j->depth > JP_MAX_DEPTH) {
    j->depth--;
    return NULL;
  }
  json_t *v = value1(j);
  j->depth--;
  return v;
}

json_t *tp_json_loadb(const char *buf, size_t len)
{
  struct jp j = {(const unsigned char *)buf, (const unsigned char *)buf + len, 0, NULL, 0};
  ws(&j);
  json_t *v = NULL;
  if (j.p < j.end && (*j.p == '{' || *j.p == '['))
    v = value(&j);
  if (v) {
    ws(&j);
    if (j.p != j.end) {
      json_decref(v);
      v = NULL;
    }
  }
  free(j.buf);
  return v;
}

json_t *tp_json_loads(const char *s)
{
  return tp_json_loadb(s, strlen(s));
}
