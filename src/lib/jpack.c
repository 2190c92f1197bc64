/* tp_pack: json_pack's format language read in one pass (see jpack.h). */
#include "jpack.h"
#include "util.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct pk {
  const char *f;
  va_list ap;
  bool err;    /* a NULL or invalid argument: keep reading to release 'o's */
  bool broken; /* the format itself is wrong: stop */
  bool scrub;  /* a string that is not UTF-8 is copied and scrubbed, not an error (a log line's) */
};

/* Whitespace, ':' and ',' separate tokens and mean nothing (as in jansson). */
static char peek(struct pk *s)
{
  while (*s->f == ' ' || *s->f == '\t' || *s->f == '\n' || *s->f == '\r' || *s->f == ',' || *s->f == ':')
    s->f++;
  return *s->f;
}

static char take(struct pk *s)
{
  char c = peek(s);
  if (c)
    s->f++;
  return c;
}

/* RFC 3629 UTF-8: no overlongs, no surrogates, nothing past U+10FFFF. */
static bool utf8_ok(const char *p, size_t n)
{
  const unsigned char *s = (const unsigned char *)p, *e = s + n;
  while (s < e) {
    /* ASCII, eight bytes at a time. */
    while (e - s >= 8) {
      uint64_t w;
      memcpy(&w, s, 8);
      if (w & 0x8080808080808080ull)
        break;
      s += 8;
    }
    if (s >= e)
      break;
    unsigned c = *s;
    if (c < 0x80) {
      s++;
      continue;
    }
    size_t l = tp_utf8_char_len(s, e);
    if (!l)
      return false;
    s += l;
  }
  return true;
}

/* The string(s) of an 's' whose letter (and '?'/'*') was read: a plain
 * argument is borrowed; '#' (int length), '%' (size_t length) and '+'
 * (concatenation) build a copy in *own. NULL when absent or invalid; a NULL
 * argument is an error unless optional. */
static const char *read_str(struct pk *s, bool optional, size_t *len, char **own)
{
  *own = NULL;
  char t = peek(s);
  if (t != '#' && t != '%' && t != '+') {
    const char *str = va_arg(s->ap, const char *);
    if (!str) {
      if (!optional)
        s->err = true;
      return NULL;
    }
    *len = strlen(str);
    if (!utf8_ok(str, *len)) {
      if (s->scrub && (*own = strdup(str)) != NULL) {
        tp_utf8_scrub(*own);
        *len = strlen(*own);
        return *own;
      }
      s->err = true;
      return NULL;
    }
    return str;
  }
  if (optional) { /* jansson: "Cannot use '#' on optional strings" */
    s->broken = true;
    return NULL;
  }
  char *buf = NULL;
  size_t n = 0;
  bool bad = false;
  for (;;) {
    const char *str = va_arg(s->ap, const char *);
    size_t l = 0;
    t = peek(s);
    if (t == '#') {
      s->f++;
      int il = va_arg(s->ap, int);
      l = il < 0 ? 0 : (size_t)il;
    } else if (t == '%') {
      s->f++;
      l = va_arg(s->ap, size_t);
    } else if (str) {
      l = strlen(str);
    }
    if (!str) {
      bad = true;
    } else if (!bad) {
      char *nb = realloc(buf, n + l + 1);
      if (!nb) {
        bad = true;
      } else {
        buf = nb;
        memcpy(buf + n, str, l);
        n += l;
        buf[n] = '\0';
      }
    }
    if (peek(s) != '+')
      break;
    s->f++;
  }
  if (!bad && !buf) {
    buf = malloc(1);
    if (buf)
      buf[0] = '\0';
    else
      bad = true;
  }
  if (!bad && s->scrub && buf && !utf8_ok(buf, n) && strlen(buf) == n) {
    tp_utf8_scrub(buf);
    n = strlen(buf);
  }
  if (bad || !utf8_ok(buf, n)) {
    free(buf);
    s->err = true;
    return NULL;
  }
  *own = buf;
  *len = n;
  return buf;
}

static json_t *value(struct pk *s, int depth);

/* After '{' or '[': members until the closing bracket. A value written with
 * '*' that comes out NULL is left out; any other NULL is an error. */
static json_t *container(struct pk *s, bool obj, int depth)
{
  json_t *c = obj ? json_object() : json_array();
  if (!c)
    s->err = true;
  const char close = obj ? '}' : ']';
  for (;;) {
    char t = peek(s);
    if (t == close) {
      s->f++;
      break;
    }
    if (t == '\0') {
      s->broken = true;
      break;
    }
    char *kown = NULL;
    const char *key = NULL;
    size_t klen = 0;
    if (obj) {
      if (take(s) != 's') {
        s->broken = true;
        break;
      }
      key = read_str(s, false, &klen, &kown);
      if (s->broken)
        break;
    }
    /* the character after the value's letter: '*' lets a NULL be left out */
    char vt = peek(s);
    char after = (vt && vt != '{' && vt != '[') ? s->f[1] : '\0';
    json_t *v = value(s, depth + 1);
    if (s->broken) {
      json_decref(v);
      free(kown);
      break;
    }
    if (!v) {
      if (after != '*')
        s->err = true;
    } else if (s->err || !c || (obj && !key)) {
      json_decref(v); /* an earlier error: the reference is still released */
    } else if (obj ? json_object_setn_new_nocheck(c, key, klen, v) != 0 : json_array_append_new(c, v) != 0) {
      s->err = true;
    }
    free(kown);
  }
  if (s->err || s->broken) {
    json_decref(c);
    return NULL;
  }
  return c;
}

static json_t *value(struct pk *s, int depth)
{
  if (depth > 64) {
    s->broken = true;
    return NULL;
  }
  char t = take(s);
  switch (t) {
  case '{':
    return container(s, true, depth);
  case '[':
    return container(s, false, depth);
  case 's': {
    char m = peek(s);
    bool optional = m == '?' || m == '*';
    if (optional)
      s->f++;
    size_t len = 0;
    char *own = NULL;
    const char *str = read_str(s, optional, &len, &own);
    if (!str)
      return (m == '?' && !s->err && !s->broken) ? json_null() : NULL;
    json_t *v = json_stringn_nocheck(str, len);
    free(own);
    if (!v)
      s->err = true;
    return v;
  }
  case 'n':
    return json_null();
  case 'b':
    return va_arg(s->ap, int) ? json_true() : json_false();
  case 'i':
    return json_integer(va_arg(s->ap, int));
  case 'I':
    return json_integer(va_arg(s->ap, json_int_t));
  case 'f':
    return json_real(va_arg(s->ap, double));
  case 'o':
  case 'O': {
    char m = peek(s);
    if (m == '?' || m == '*')
      s->f++;
    json_t *v = va_arg(s->ap, json_t *);
    if (v)
      return t == 'O' ? json_incref(v) : v;
    if (m == '?')
      return json_null();
    if (m != '*')
      s->err = true;
    return NULL;
  }
  default:
    s->broken = true;
    return NULL;
  }
}

static json_t *vpack(const char *fmt, va_list ap, bool scrub)
{
  if (!fmt)
    return NULL;
  struct pk s = {.f = fmt, .scrub = scrub};
  va_copy(s.ap, ap);
  json_t *v = value(&s, 0);
  if (peek(&s) != '\0')
    s.broken = true; /* garbage after the format */
  va_end(s.ap);
  if (s.err || s.broken) {
    json_decref(v);
    return NULL;
  }
  return v;
}

json_t *tp_vpack(const char *fmt, va_list ap)
{
  return vpack(fmt, ap, false);
}

json_t *tp_vpack_scrub(const char *fmt, va_list ap)
{
  return vpack(fmt, ap, true);
}

json_t *tp_pack(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  json_t *v = tp_vpack(fmt, ap);
  va_end(ap);
  return v;
}
