/* Request parameters: form and JSON bodies into one jansson tree, and the
 * declarative checks every endpoint runs on that tree. Nothing here ever puts a
 * parameter *value* into an error unless it is short, harmless and not under a
 * card field, because errors end up in responses and logs. */
#include "params.h"
#include "util.h"
#include "tp_errors.h"

#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Stripe's metadata limits. */
#define TP_META_MAX_KEYS   50
#define TP_META_MAX_KEYLEN 40
#define TP_META_MAX_VALLEN 500

/* Values longer than this are never quoted back in an error. */
#define TP_ECHO_MAX 40
/* A value with this many digits may be a card number: never quote it. */
#define TP_ECHO_MAX_DIGITS 12

/* Marks an object that stands for an index-form array (e[0]=..) until the
 * whole body is read. No decoded form key can contain '[' in a name, so the
 * marker cannot collide with a real key. */
static const char tp_idx_marker[] = "[i]";

/* Room for a bracket path of a full-depth JSON tree; longer paths truncate,
 * which only affects the text of errors. */
#define TP_PATH_MAX 512

static void set_err(struct tp_params_error *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(struct tp_params_error *err, const char *param, const char *fmt, ...) {
  if (!err) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  tp_scopy(err->param, sizeof err->param, param ? param : "");
  err->code = 0;
}

/* The registry row of the error just set (tp_reply_params_error answers
 * with it). */
static void set_code(struct tp_params_error *err, int code) {
  if (err) err->code = code;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when it is
 * invalid: overlong forms, surrogates and code points past U+10FFFF fail. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0; /* continuation byte or overlong 2-byte lead */
  if (c < 0xE0) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
  if (c < 0xF0) {
    if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && s[1] < 0xA0) return 0;  /* overlong */
    if (c == 0xED && s[1] >= 0xA0) return 0; /* UTF-16 surrogates */
    return 3;
  }
  if (c < 0xF5) {
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
      return 0;
    if (c == 0xF0 && s[1] < 0x90) return 0;  /* overlong */
    if (c == 0xF4 && s[1] >= 0x90) return 0; /* past U+10FFFF */
    return 4;
  }
  return 0;
}

static bool utf8_valid(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    size_t k = utf8_seq(p + i, n - i);
    if (k == 0) return false;
    i += k;
  }
  return true;
}

/* Characters (code points) in a valid UTF-8 string. */
static size_t utf8_chars(const char *s, size_t n) {
  size_t count = 0;
  for (size_t i = 0; i < n; i++)
    if (((unsigned char)s[i] & 0xC0) != 0x80) count++;
  return count;
}

enum decode_rc { DEC_OK, DEC_BAD_ESCAPE, DEC_TOO_LONG, DEC_NUL };

/* Decode one form component starting at *pp, stopping before '&' (and before
 * '=' when stop_at_eq), into out[cap+1]; *pp is left on the terminator. */
static enum decode_rc decode_part(const char **pp, const char *end, bool stop_at_eq,
                                  char *out, size_t cap, size_t *outlen) {
  const char *p = *pp;
  size_t n = 0;
  enum decode_rc rc = DEC_OK;
  while (p < end && *p != '&' && !(stop_at_eq && *p == '=')) {
    char c = *p;
    if (c == '%') {
      if (end - p < 3) { rc = DEC_BAD_ESCAPE; break; }
      int hi = tp_hex_digit(p[1]), lo = tp_hex_digit(p[2]);
      if (hi < 0 || lo < 0) { rc = DEC_BAD_ESCAPE; break; }
      c = (char)(hi << 4 | lo);
      p += 3;
    } else {
      if (c == '+') c = ' ';
      p++;
    }
    if (c == '\0') { rc = DEC_NUL; break; }
    if (n == cap) { rc = DEC_TOO_LONG; break; }
    out[n++] = c;
  }
  out[n] = '\0';
  *outlen = n;
  *pp = p;
  return rc;
}

/* ---- form keys --------------------------------------------------------- */

enum seg_kind { SEG_NAME, SEG_INDEX, SEG_APPEND };

struct seg {
  const char *s;     /* NUL-terminated inside the key buffer */
  enum seg_kind kind;
};

/* Split key (modified in place) into base name and bracket segments. */
static int split_key(char *key, size_t klen, const char *name, struct seg *segs,
                     size_t *nsegs, struct tp_params_error *err) {
  size_t i = 0;
  while (i < klen && key[i] != '[') {
    if (key[i] == ']') {
      set_err(err, name, "Invalid parameter name: %s", name);
      return -1;
    }
    i++;
  }
  if (i == 0) {
    set_err(err, name, "Invalid parameter name: a parameter name is empty");
    return -1;
  }
  size_t n = 0;
  segs[n++] = (struct seg){key, SEG_NAME};
  size_t first_bracket = i;
  while (i < klen) {
    if (key[i] != '[') goto malformed;
    size_t start = ++i;
    while (i < klen && key[i] != ']' && key[i] != '[') i++;
    if (i == klen || key[i] != ']') goto malformed;
    if (n > TP_PARAMS_MAX_DEPTH) {
      set_err(err, name, "Parameter nested too deeply (limit %d levels): %s",
              TP_PARAMS_MAX_DEPTH, name);
      set_code(err, TP_ERR_PARAMETER_NESTING_TOO_DEEP);
      return -1;
    }
    key[i] = '\0';
    segs[n++] = (struct seg){key + start, SEG_NAME};
    i++;
  }
  key[first_bracket] = '\0';
  /* Children of metadata are always names: merchants use numeric keys. */
  for (size_t k = 1; k < n; k++) {
    const char *s = segs[k].s;
    if (strcmp(segs[k - 1].s, "metadata") == 0) continue;
    if (s[0] == '\0') {
      segs[k].kind = SEG_APPEND;
    } else if (strspn(s, "0123456789") == strlen(s)) {
      if ((s[0] == '0' && s[1] != '\0') || strlen(s) > 3 || atoi(s) >= TP_PARAMS_MAX_ARRAY) {
        set_err(err, name, "Invalid array index in %s (arrays hold at most %d elements)",
                name, TP_PARAMS_MAX_ARRAY);
        return -1;
      }
      segs[k].kind = SEG_INDEX;
    }
  }
  *nsegs = n;
  return 0;
malformed:
  set_err(err, name, "Invalid parameter name: %s", name);
  return -1;
}

static bool is_index_obj(const json_t *j) {
  return json_is_object(j) && json_object_get(j, tp_idx_marker) != NULL;
}

/* The kind of child segment a container accepts. */
static enum seg_kind container_kind(const json_t *j) {
  if (json_is_array(j)) return SEG_APPEND;
  return is_index_obj(j) ? SEG_INDEX : SEG_NAME;
}

static json_t *new_container(enum seg_kind kind) {
  if (kind == SEG_APPEND) return json_array();
  json_t *o = json_object();
  if (o && kind == SEG_INDEX) json_object_set_new_nocheck(o, tp_idx_marker, json_null());
  return o;
}

/* Insert value at the path described by segs into root. */
static int insert_pair(json_t *root, const struct seg *segs, size_t n, const char *name,
                       const char *val, size_t vlen, struct tp_params_error *err) {
  json_t *cur = root;
  for (size_t i = 0; i < n; i++) {
    bool last = (i + 1 == n);
    const char *k = segs[i].s;
    if (json_is_array(cur)) {
      size_t sz = json_array_size(cur);
      if (last) {
        if (sz >= TP_PARAMS_MAX_ARRAY) goto too_many;
        json_array_append_new(cur, json_stringn_nocheck(val, vlen));
        return 0;
      }
      /* d[][a]=1&d[][b]=2 build one object, a repeated name starts the next. */
      if (segs[i + 1].kind != SEG_NAME) goto conflict;
      json_t *lastel = sz ? json_array_get(cur, sz - 1) : NULL;
      if (lastel && json_is_object(lastel) && !is_index_obj(lastel) &&
          !json_object_get(lastel, segs[i + 1].s)) {
        cur = lastel;
        continue;
      }
      if (sz >= TP_PARAMS_MAX_ARRAY) goto too_many;
      json_t *child = json_object();
      json_array_append_new(cur, child);
      cur = child;
      continue;
    }
    json_t *existing = json_object_get(cur, k);
    if (last) {
      if (existing && !json_is_string(existing)) goto conflict;
      json_object_set_new_nocheck(cur, k, json_stringn_nocheck(val, vlen));
      return 0;
    }
    enum seg_kind want = segs[i + 1].kind;
    if (existing) {
      if (json_is_string(existing) || container_kind(existing) != want) goto conflict;
      cur = existing;
      continue;
    }
    json_t *child = new_container(want);
    json_object_set_new_nocheck(cur, k, child);
    cur = child;
  }
  return 0;
conflict:
  set_err(err, name, "Conflicting types for parameter %s", name);
  return -1;
too_many:
  set_err(err, name, "Too many elements in array %s (limit %d)", name, TP_PARAMS_MAX_ARRAY);
  return -1;
}

/* Append "[key]" (or key at the top) to a path, truncating if needed. */
static size_t path_push(char *path, size_t len, const char *key) {
  int w = snprintf(path + len, TP_PATH_MAX - len, len ? "[%s]" : "%s", key);
  if (w < 0) return len;
  size_t nl = len + (size_t)w;
  return nl >= TP_PATH_MAX ? TP_PATH_MAX - 1 : nl;
}

/* The final form of v (a new reference): index objects below it, and v itself,
 * become real arrays, which must be dense 0..n-1. NULL + err when sparse. */
static json_t *finalize(json_t *v, char *path, size_t plen, struct tp_params_error *err) {
  if (json_is_array(v)) {
    for (size_t i = 0; i < json_array_size(v); i++) {
      json_t *el = json_array_get(v, i);
      if (!json_is_object(el)) continue;
      char idx[24];
      snprintf(idx, sizeof idx, "%zu", i);
      json_t *fixed = finalize(el, path, path_push(path, plen, idx), err);
      path[plen] = '\0';
      if (!fixed) return NULL;
      json_array_set_new(v, i, fixed);
    }
    return json_incref(v);
  }
  if (!json_is_object(v)) return json_incref(v);
  if (!is_index_obj(v)) {
    const char *k;
    json_t *child;
    json_object_foreach(v, k, child) {
      if (!json_is_object(child) && !json_is_array(child)) continue;
      json_t *fixed = finalize(child, path, path_push(path, plen, k), err);
      path[plen] = '\0';
      if (!fixed) return NULL;
      /* Replacing the value of an existing key keeps the iteration valid. */
      json_object_set_new_nocheck(v, k, fixed);
    }
    return json_incref(v);
  }
  json_t *slots[TP_PARAMS_MAX_ARRAY] = {0};
  json_object_del(v, tp_idx_marker);
  size_t n = json_object_size(v);
  const char *k;
  json_t *child;
  json_object_foreach(v, k, child) {
    size_t idx = (size_t)atoi(k); /* split_key vetted it: 0..MAX_ARRAY-1 */
    if (idx >= n) {
      set_err(err, path, "Invalid array %s: indexes must run from 0 without gaps", path);
      return NULL;
    }
    slots[idx] = child;
  }
  json_t *arr = json_array();
  for (size_t i = 0; i < n; i++) {
    char idx[24];
    snprintf(idx, sizeof idx, "%zu", i);
    json_t *fixed = finalize(slots[i], path, path_push(path, plen, idx), err);
    path[plen] = '\0';
    if (!fixed) {
      json_decref(arr);
      return NULL;
    }
    json_array_append_new(arr, fixed);
  }
  return arr;
}

/* The longest value a parameter may have: a dispute's evidence texts take
 * 20,000 characters (Stripe), every other value TP_PARAMS_MAX_VALUE bytes.
 * The spec of the endpoint then says which keys are texts (TP_P_TEXT). */
int tp_params_max_value(const char *key)
{
  return strncmp(key, "evidence[", 9) == 0 ? TP_PARAMS_MAX_TEXT : TP_PARAMS_MAX_VALUE;
}

/* Parse application/x-www-form-urlencoded with Stripe bracket nesting. */
json_t *tp_params_parse_form(const char *body, size_t len, struct tp_params_error *err) {
  if (err) err->message[0] = err->param[0] = '\0';
  if (len > TP_PARAMS_MAX_BODY) {
    set_err(err, NULL, "Request body too large (limit %d bytes)", TP_PARAMS_MAX_BODY);
    return NULL;
  }
  json_t *root = json_object();
  if (!root) {
    set_err(err, NULL, "Out of memory");
    return NULL;
  }
  char key[TP_PARAMS_MAX_KEY + 1];
  char *val = malloc(TP_PARAMS_MAX_TEXT + 1);
  size_t used = 0; /* the most of val any value filled: what is wiped (not all 80 KB per request) */
  if (!val) {
    json_decref(root);
    set_err(err, NULL, "Out of memory");
    return NULL;
  }
  struct seg segs[TP_PARAMS_MAX_DEPTH + 1];
  char name[TP_PARAMS_MAX_KEY + 1];
  size_t count = 0;
  const char *p = body, *end = body ? body + len : NULL;
  while (p < end) {
    if (*p == '&') { p++; continue; } /* empty pair, as in a=1&&b=2 */
    if (++count > TP_PARAMS_MAX_COUNT) {
      set_err(err, NULL, "Too many parameters (limit %d)", TP_PARAMS_MAX_COUNT);
      set_code(err, TP_ERR_PARAMETER_COUNT_EXCEEDED);
      goto fail;
    }
    size_t klen, vlen = 0;
    switch (decode_part(&p, end, true, key, TP_PARAMS_MAX_KEY, &klen)) {
    case DEC_OK: break;
    case DEC_BAD_ESCAPE:
      set_err(err, NULL, "Invalid percent-encoding in a parameter name");
      goto fail;
    case DEC_TOO_LONG:
      set_err(err, NULL, "Parameter name too long (limit %d bytes)", TP_PARAMS_MAX_KEY);
      goto fail;
    case DEC_NUL:
      set_err(err, NULL, "NUL byte in a parameter name");
      goto fail;
    }
    if (!utf8_valid(key, klen)) {
      set_err(err, NULL, "Invalid UTF-8 in a parameter name");
      goto fail;
    }
    val[0] = '\0';
    if (p < end && *p == '=') {
      p++;
      int max = tp_params_max_value(key);
      switch (decode_part(&p, end, false, val, (size_t)max, &vlen)) {
      case DEC_OK: break;
      case DEC_BAD_ESCAPE:
        set_err(err, key, "Invalid percent-encoding in the value of %s", key);
        used = (size_t)max + 1; /* partly decoded: wipe all it may have written */
        goto fail;
      case DEC_TOO_LONG:
        if (max == TP_PARAMS_MAX_VALUE) /* 4 bytes a character at most: past it, past 5,000 characters */
          set_err(err, key, "Value of %s too long (limit %d characters)", key, TP_PARAMS_MAX_CHARS);
        else
          set_err(err, key, "Value of %s too long (limit %d bytes)", key, max);
        set_code(err, TP_ERR_PARAMETER_TOO_LONG);
        used = (size_t)max + 1;
        goto fail;
      case DEC_NUL:
        set_err(err, key, "NUL byte in the value of %s", key);
        used = (size_t)max + 1;
        goto fail;
      }
      if (vlen + 1 > used)
        used = vlen + 1;
      if (!utf8_valid(val, vlen)) {
        set_err(err, key, "Invalid UTF-8 in the value of %s", key);
        goto fail;
      }
    }
    if (p < end && *p == '&') p++;
    memcpy(name, key, klen + 1);
    size_t nsegs;
    if (split_key(key, klen, name, segs, &nsegs, err) < 0) goto fail;
    if (insert_pair(root, segs, nsegs, name, val, vlen, err) < 0) goto fail;
  }
  explicit_bzero(val, used);
  free(val);
  char path[TP_PATH_MAX];
  path[0] = '\0';
  json_t *done = finalize(root, path, 0, err);
  json_decref(root);
  return done;
fail:
  explicit_bzero(val, used > 0 ? used : 1);
  free(val);
  json_decref(root);
  return NULL;
}

/* ---- JSON bodies ------------------------------------------------------- */

/* Enforce the same limits a form body has; depth counts containers below root. */
static int json_limits(json_t *j, int depth, size_t *leaves, char *path, size_t plen,
                       struct tp_params_error *err) {
  if (json_is_object(j) || json_is_array(j)) {
    if (depth > TP_PARAMS_MAX_DEPTH) {
      set_err(err, path, "JSON nested too deeply (limit %d levels)", TP_PARAMS_MAX_DEPTH);
      set_code(err, TP_ERR_PARAMETER_NESTING_TOO_DEEP);
      return -1;
    }
  } else {
    if (++*leaves > TP_PARAMS_MAX_COUNT) {
      set_err(err, NULL, "Too many parameters (limit %d)", TP_PARAMS_MAX_COUNT);
      set_code(err, TP_ERR_PARAMETER_COUNT_EXCEEDED);
      return -1;
    }
    if (json_is_string(j) && json_string_length(j) > (size_t)tp_params_max_value(path)) {
      set_err(err, path, "Value of %s too long (limit %d bytes)", path, tp_params_max_value(path));
      set_code(err, TP_ERR_PARAMETER_TOO_LONG);
      return -1;
    }
    return 0;
  }
  if (json_is_array(j)) {
    if (json_array_size(j) > TP_PARAMS_MAX_ARRAY) {
      set_err(err, path, "Too many elements in array %s (limit %d)", path, TP_PARAMS_MAX_ARRAY);
      return -1;
    }
    for (size_t i = 0; i < json_array_size(j); i++) {
      char idx[24];
      snprintf(idx, sizeof idx, "%zu", i);
      size_t l = path_push(path, plen, idx);
      int rc = json_limits(json_array_get(j, i), depth + 1, leaves, path, l, err);
      path[plen] = '\0';
      if (rc < 0) return -1;
    }
    return 0;
  }
  const char *k;
  json_t *v;
  json_object_foreach(j, k, v) {
    if (strlen(k) > TP_PARAMS_MAX_KEY) {
      set_err(err, NULL, "Parameter name too long (limit %d bytes)", TP_PARAMS_MAX_KEY);
      return -1;
    }
    size_t l = path_push(path, plen, k);
    int rc = json_limits(v, depth + 1, leaves, path, l, err);
    path[plen] = '\0';
    if (rc < 0) return -1;
  }
  return 0;
}

/* Parse a JSON body into the same kind of tree as a form body. */
json_t *tp_params_parse_json(const char *body, size_t len, struct tp_params_error *err) {
  if (err) err->message[0] = err->param[0] = '\0';
  if (len > TP_PARAMS_MAX_BODY) {
    set_err(err, NULL, "Request body too large (limit %d bytes)", TP_PARAMS_MAX_BODY);
    return NULL;
  }
  if (len == 0) return json_object();
  json_error_t je;
  json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    /* jansson's own text quotes the offending token, which may be a card
     * number: only its position is passed on. */
    switch (json_error_code(&je)) {
    case json_error_numeric_overflow:
      set_err(err, NULL, "Invalid JSON: integer too large (must fit in 64 bits) at line %d column %d", je.line, je.column);
      set_code(err, TP_ERR_JSON_INVALID);
      break;
    case json_error_duplicate_key:
      set_err(err, NULL, "Invalid JSON: duplicate key at line %d column %d", je.line, je.column);
      set_code(err, TP_ERR_JSON_INVALID);
      break;
    case json_error_stack_overflow:
      set_err(err, NULL, "JSON nested too deeply (limit %d levels)", TP_PARAMS_MAX_DEPTH);
      set_code(err, TP_ERR_PARAMETER_NESTING_TOO_DEEP);
      break;
    case json_error_null_character:
    case json_error_null_byte_in_key:
      set_err(err, NULL, "Invalid JSON: NUL character at line %d column %d", je.line, je.column);
      set_code(err, TP_ERR_JSON_INVALID);
      break;
    case json_error_invalid_utf8:
      set_err(err, NULL, "Invalid JSON: invalid UTF-8 at line %d column %d", je.line, je.column);
      set_code(err, TP_ERR_JSON_INVALID);
      break;
    default:
      set_err(err, NULL, "Invalid JSON: syntax error at line %d column %d", je.line, je.column);
      set_code(err, TP_ERR_JSON_INVALID);
      break;
    }
    return NULL;
  }
  if (!json_is_object(root)) {
    set_err(err, NULL, "Invalid JSON: the body must be a JSON object");
    set_code(err, TP_ERR_JSON_INVALID);
    json_decref(root);
    return NULL;
  }
  size_t leaves = 0;
  char path[TP_PATH_MAX];
  path[0] = '\0';
  if (json_limits(root, 0, &leaves, path, 0, err) < 0) {
    json_decref(root);
    return NULL;
  }
  return root;
}

/* ---- validation -------------------------------------------------------- */

struct check_ctx {
  char path[TP_PATH_MAX];
  struct tp_params_error *err;
};

/* Whether a value may be quoted back in an error message. */
static bool echoable(const json_t *v, const char *key) {
  if (!json_is_string(v)) return false;
  if (strcmp(key, "number") == 0 || strcmp(key, "cvc") == 0) return false;
  const char *s = json_string_value(v);
  size_t n = json_string_length(v), digits = 0;
  if (n == 0 || n > TP_ECHO_MAX) return false;
  for (size_t i = 0; i < n; i++) {
    if (s[i] >= '0' && s[i] <= '9') digits++;
    if ((unsigned char)s[i] < 0x20) return false;
  }
  return digits < TP_ECHO_MAX_DIGITS;
}

/* "Invalid integer: abc" when the value is safe to show, else name the param. */
static int type_error(struct check_ctx *c, const char *key, const json_t *v, const char *what) {
  if (echoable(v, key))
    set_err(c->err, c->path, "Invalid %s: %s", what, json_string_value(v));
  else if (strcmp(what, "integer") == 0) /* a 20-digit number, 1000.0 in JSON: parameter_invalid_integer too */
    set_err(c->err, c->path, "Invalid integer for %s: not a whole number within 64 bits", c->path);
  else
    set_err(c->err, c->path, "Invalid value for %s", c->path);
  /* the registry's row for the type (an integer's is told by its message) */
  set_code(c->err, strcmp(what, "boolean") == 0 ? TP_ERR_PARAMETER_INVALID_BOOLEAN
                   : strcmp(what, "array") == 0 ? TP_ERR_PARAMETER_INVALID_ARRAY
                   : strcmp(what, "object") == 0 ? TP_ERR_PARAMETER_INVALID_HASH
                                                 : 0);
  return -1;
}

/* Strict int64 from "-?[0-9]+". */
static bool parse_int64(const char *s, size_t n, int64_t *out) {
  size_t i = 0;
  bool neg = false;
  if (n > 0 && s[0] == '-') { neg = true; i = 1; }
  if (i == n) return false;
  /* Accumulate negatively so INT64_MIN fits. */
  int64_t acc = 0;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    int d = s[i] - '0';
    if (acc < (INT64_MIN + d) / 10) return false;
    acc = acc * 10 - d;
  }
  if (!neg) {
    if (acc == INT64_MIN) return false;
    acc = -acc;
  }
  *out = acc;
  return true;
}

static bool is_unset(const json_t *v) {
  return json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0);
}

/* Normalize v into an integer; *repl receives a new value when converted. */
static int check_int(struct check_ctx *c, const char *key, json_t *v, json_t **repl) {
  if (json_is_integer(v)) return 0;
  int64_t x;
  if (json_is_string(v) && parse_int64(json_string_value(v), json_string_length(v), &x)) {
    *repl = json_integer((json_int_t)x);
    return 0;
  }
  return type_error(c, key, v, "integer");
}

static int check_obj(struct check_ctx *c, size_t plen, json_t *obj, const struct tp_pspec *spec);

static int check_metadata(struct check_ctx *c, size_t plen, json_t *v, const char *key) {
  if (!json_is_object(v)) return type_error(c, key, v, "object");
  /* Keys set, not keys unset ("" or null): 50 new ones and a deletion may
   * leave 50. The object's own total is checked when they are merged
   * (tp_metadata_update). */
  size_t set = 0;
  const char *sk;
  json_t *sv;
  json_object_foreach(v, sk, sv) set += !(json_is_null(sv) || (json_is_string(sv) && json_string_length(sv) == 0));
  if (set > TP_META_MAX_KEYS) { /* Stripe's words */
    set_err(c->err, c->path, "Metadata can have up to %d keys, but you've set %zu.", TP_META_MAX_KEYS, set);
    set_code(c->err, TP_ERR_METADATA_TOO_MANY_KEYS);
    return -1;
  }
  if (json_object_size(v) > 2 * TP_META_MAX_KEYS) {
    set_err(c->err, c->path, "Invalid %s: a request may name at most %d keys, to set or to unset", c->path,
            2 * TP_META_MAX_KEYS);
    set_code(c->err, TP_ERR_METADATA_TOO_MANY_KEYS);
    return -1;
  }
  const char *k;
  json_t *mv;
  json_object_foreach(v, k, mv) {
    path_push(c->path, plen, k);
    size_t kl = strlen(k);
    if (kl == 0) {
      set_err(c->err, c->path, "Invalid %s: keys must not be empty", c->path);
      return -1;
    }
    if (utf8_chars(k, kl) > TP_META_MAX_KEYLEN) {
      set_err(c->err, c->path, "Invalid metadata key %s: keys can be at most %d characters",
              c->path, TP_META_MAX_KEYLEN);
      set_code(c->err, TP_ERR_METADATA_KEY_TOO_LONG);
      return -1;
    }
    if (strpbrk(k, "[]")) {
      set_err(c->err, c->path, "Invalid metadata key %s: keys must not contain '[' or ']'",
              c->path);
      return -1;
    }
    json_t *s = NULL;
    if (json_is_string(mv)) {
      if (utf8_chars(json_string_value(mv), json_string_length(mv)) > TP_META_MAX_VALLEN) {
        set_err(c->err, c->path, "Invalid %s: values can be at most %d characters",
                c->path, TP_META_MAX_VALLEN);
        set_code(c->err, TP_ERR_METADATA_VALUE_TOO_LONG);
        return -1;
      }
    } else if (json_is_integer(mv)) {
      s = json_sprintf("%" JSON_INTEGER_FORMAT, json_integer_value(mv));
    } else if (json_is_boolean(mv)) {
      s = json_string(json_is_true(mv) ? "true" : "false");
    } else if (json_is_null(mv)) {
      s = json_string(""); /* JSON null unsets the key, as "" does in a form */
    } else {
      set_err(c->err, c->path, "Invalid %s: metadata values must be strings", c->path);
      return -1;
    }
    if (s) json_object_set_new_nocheck(v, k, s);
    c->path[plen] = '\0';
  }
  return 0;
}

static int check_range(struct check_ctx *c, size_t plen, json_t *v, const char *key,
                       json_t **repl) {
  if (!json_is_object(v)) return check_int(c, key, v, repl);
  static const char *const ops[] = {"gt", "gte", "lt", "lte"};
  const char *k;
  json_t *rv;
  json_object_foreach(v, k, rv) {
    path_push(c->path, plen, k);
    bool known = false;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
      if (strcmp(k, ops[i]) == 0) known = true;
    if (!known) {
      set_err(c->err, c->path, "Received unknown parameter: %s", c->path);
      return -1;
    }
    json_t *r = NULL;
    if (check_int(c, k, rv, &r) < 0) return -1;
    if (r) json_object_set_new_nocheck(v, k, r);
    c->path[plen] = '\0';
  }
  return 0;
}

/* An enum that "" may unset, as Stripe's API has them (the SDKs' Emptyable
 * types): setup_future_usage, a customer's tax_exempt, a charge's
 * fraud_details[user_report], and anything nested in an options object
 * (payment_method_options[card][capture_method] ...). The others at the top
 * level (capture_method, confirmation_method, reasons, usage ...) cannot be. */
static bool enum_emptyable(const struct check_ctx *c, const struct tp_pspec *sp)
{
  static const char *const names[] = {"setup_future_usage", "tax_exempt", "user_report", NULL};
  /* Nested: those whose choices list "" (Stripe's Emptyable ones); the
   * others (request_three_d_secure, allow_redirects ...) would be left
   * without a value their object always has. */
  if (strchr(c->path, '[')) {
    for (const char *const *ch = sp->choices; ch && *ch; ch++)
      if (!**ch)
        return true;
    return false;
  }
  for (const char *const *n = names; *n; n++)
    if (strcmp(sp->name, *n) == 0)
      return true;
  return false;
}

bool tp_return_url_ok(const char *u)
{
  size_t n = strlen(u);
  if (n == 0 || n > TP_RETURN_URL_MAX || !isalpha((unsigned char)u[0]))
    return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)u[i] <= 0x20 || u[i] == 0x7f)
      return false; /* controls (a CR/LF would split the Location header) and spaces */
  size_t k = strspn(u, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.");
  if (u[k] != ':' || !u[k + 1])
    return false;
  /* Schemes that run or show something in place of a page of the merchant. */
  static const char *const refused[] = {"javascript", "data", "vbscript", "file", "blob", "about", NULL};
  for (int i = 0; refused[i]; i++)
    if (k == strlen(refused[i]) && strncasecmp(u, refused[i], k) == 0)
      return false;
  bool web = (k == 4 && strncasecmp(u, "http", 4) == 0) || (k == 5 && strncasecmp(u, "https", 5) == 0);
  if (web) { /* http(s)://host...: a host, not a path or another page's scheme */
    const char *h = u + k + 1;
    if (strncmp(h, "//", 2) != 0 || !h[2] || strchr("/?#", h[2]))
      return false;
  }
  return true;
}

/* Check one value against its spec entry; c->path already names it. */
static int check_value(struct check_ctx *c, size_t plen, json_t *v, const struct tp_pspec *sp,
                       json_t **repl) {
  /* Top-level money (amount, amount_to_capture ...) and currency cannot be
   * unset either: "" or a JSON null was ignored (an update kept the amount,
   * a capture or refund took the whole of it) or read as a currency "". */
  /* Nor a PaymentIntent's or SetupIntent's payment_method (not Emptyable
   * in Stripe's API: "" kept the old one and answered 200). */
  bool never_unset = !strchr(c->path, '[') && ((sp->type == TP_P_INT && strncmp(sp->name, "amount", 6) == 0) ||
                                               strcmp(sp->name, "currency") == 0 ||
                                               (sp->type == TP_P_STRING && strcmp(sp->name, "payment_method") == 0));
  if ((((sp->type == TP_P_ENUM && !enum_emptyable(c, sp)) || never_unset) && json_is_string(v) &&
       json_string_length(v) == 0) ||
      (never_unset && json_is_null(v))) {
    /* Stripe's answer to "" for what cannot be unset (capture_method,
     * confirmation_method, a cancellation reason ...): it was taken as
     * unset and left the object without one. */
    set_err(c->err, c->path,
            "You passed an empty string for '%s'. We assume empty values are an attempt to unset a parameter; "
            "however '%s' cannot be unset. You should remove '%s' from your request or supply a non-empty value.",
            c->path, c->path, c->path);
    return -1;
  }
  if (sp->type == TP_P_ANY || is_unset(v)) return 0;
  switch (sp->type) {
  case TP_P_STRING:
  case TP_P_TEXT: {
    if (!json_is_string(v)) return type_error(c, sp->name, v, "string");
    int max = sp->type == TP_P_TEXT ? TP_PARAMS_MAX_TEXT : TP_PARAMS_MAX_VALUE;
    if (sp->type == TP_P_TEXT && json_string_length(v) > (size_t)max) {
      set_err(c->err, c->path, "Value of %s too long (limit %d bytes)", c->path, max);
      set_code(c->err, TP_ERR_PARAMETER_TOO_LONG);
      return -1;
    }
    if (sp->type == TP_P_STRING && (json_string_length(v) > (size_t)max ||
                                    utf8_chars(json_string_value(v), json_string_length(v)) > TP_PARAMS_MAX_CHARS)) {
      set_err(c->err, c->path, "Value of %s too long (limit %d characters)", c->path, TP_PARAMS_MAX_CHARS);
      set_code(c->err, TP_ERR_PARAMETER_TOO_LONG);
      return -1;
    }
    return 0;
  }
  case TP_P_INT:
    return check_int(c, sp->name, v, repl);
  case TP_P_BOOL:
    if (json_is_boolean(v)) return 0;
    if (json_is_string(v)) {
      const char *s = json_string_value(v);
      /* Any case: stripe-python (through 5.x) sends Python's "True" / "False". */
      if (strcasecmp(s, "true") == 0) { *repl = json_true(); return 0; }
      if (strcasecmp(s, "false") == 0) { *repl = json_false(); return 0; }
      /* Strings that also mean true (off_session's one_off, recurring). */
      for (const char *const *ch = sp->choices; ch && *ch; ch++)
        if (strcmp(*ch, s) == 0) { *repl = json_true(); return 0; }
    }
    return type_error(c, sp->name, v, "boolean");
  case TP_P_ENUM: {
    if (json_is_string(v) && sp->choices) {
      for (const char *const *ch = sp->choices; *ch; ch++)
        if (strcmp(*ch, json_string_value(v)) == 0) return 0;
    }
    char list[200];
    size_t n = 0;
    list[0] = '\0';
    for (const char *const *ch = sp->choices; ch && *ch; ch++) {
      if (!**ch)
        continue; /* "" (may be unset) is not a value to list */
      /* room kept for ", ..." when the rest does not fit: no value cut short */
      int w = snprintf(list + n, sizeof list - n - 6, "%s%s", n ? ", " : "", *ch);
      if (w < 0 || (size_t)w >= sizeof list - n - 6) {
        list[n] = '\0';
        snprintf(list + n, sizeof list - n, ", ...");
        break;
      }
      n += (size_t)w;
    }
    set_err(c->err, c->path, "Invalid %s: must be one of %s", c->path, list);
    set_code(c->err, TP_ERR_PARAMETER_INVALID_ENUM);
    return -1;
  }
  case TP_P_METADATA:
    return check_metadata(c, plen, v, sp->name);
  case TP_P_OBJECT: {
    static const struct tp_pspec none[] = {{NULL, TP_P_ANY, NULL, NULL}};
    if (!json_is_object(v)) return type_error(c, sp->name, v, "object");
    return check_obj(c, plen, v, sp->children ? sp->children : none);
  }
  case TP_P_STRLIST:
    if (!json_is_array(v)) return type_error(c, sp->name, v, "array");
    if (json_array_size(v) > TP_PARAMS_MAX_ARRAY) {
      set_err(c->err, c->path, "Too many elements in array %s (limit %d)", c->path,
              TP_PARAMS_MAX_ARRAY);
      return -1;
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
      json_t *el = json_array_get(v, i);
      if (json_is_string(el) && json_string_length(el) <= TP_PARAMS_MAX_VALUE) continue;
      char idx[24];
      snprintf(idx, sizeof idx, "%zu", i);
      path_push(c->path, plen, idx);
      return type_error(c, sp->name, el, "string");
    }
    return 0;
  case TP_P_RANGE:
    return check_range(c, plen, v, sp->name, repl);
  case TP_P_UNSUPPORTED:
    set_err(c->err, c->path, "Parameter not supported by Turnpike: %s (%s)", c->path,
            sp->choices && sp->choices[0] ? sp->choices[0] : "not implemented");
    return -1;
  case TP_P_URL:
    if (!json_is_string(v)) return type_error(c, sp->name, v, "string");
    if (!tp_return_url_ok(json_string_value(v))) {
      set_err(c->err, c->path, "Not a valid URL");
      return -1;
    }
    return 0;
  case TP_P_ANY:
    return 0;
  }
  return 0;
}

static int check_obj(struct check_ctx *c, size_t plen, json_t *obj, const struct tp_pspec *spec) {
  const char *k;
  json_t *v;
  json_object_foreach(obj, k, v) {
    size_t l = path_push(c->path, plen, k);
    const struct tp_pspec *sp = spec;
    while (sp->name && strcmp(sp->name, k) != 0) sp++;
    if (!sp->name) {
      set_err(c->err, c->path, "Received unknown parameter: %s", c->path);
      return -1;
    }
    json_t *repl = NULL;
    if (check_value(c, l, v, sp, &repl) < 0) return -1;
    /* Same key, new value: jansson keeps the iterator valid. */
    if (repl) json_object_set_new_nocheck(obj, k, repl);
    c->path[plen] = '\0';
  }
  return 0;
}

/* Validate obj against spec recursively and normalize types in place. */
int tp_params_check(json_t *obj, const struct tp_pspec *spec, struct tp_params_error *err) {
  struct tp_params_error scratch;
  struct check_ctx c = {.err = err ? err : &scratch};
  c.err->message[0] = c.err->param[0] = '\0';
  c.path[0] = '\0';
  if (!json_is_object(obj)) {
    set_err(c.err, NULL, "Invalid request: parameters must be an object");
    return -1;
  }
  return check_obj(&c, 0, obj, spec);
}

/* String value of a top-level key. */
bool tp_param_str(const json_t *obj, const char *key, const char **out) {
  const json_t *v = json_object_get(obj, key);
  if (!json_is_string(v)) return false;
  if (out) *out = json_string_value(v);
  return true;
}

/* Integer value of a top-level key (after tp_params_check normalized it). */
bool tp_param_int(const json_t *obj, const char *key, int64_t *out) {
  const json_t *v = json_object_get(obj, key);
  if (!json_is_integer(v)) return false;
  if (out) *out = (int64_t)json_integer_value(v);
  return true;
}

/* Boolean value of a top-level key (after tp_params_check normalized it). */
bool tp_param_bool(const json_t *obj, const char *key, bool *out) {
  const json_t *v = json_object_get(obj, key);
  if (!json_is_boolean(v)) return false;
  if (out) *out = json_is_true(v);
  return true;
}

/* Only card fields are wiped: other strings may be shared (by reference)
 * with objects that outlive the request. */
static bool card_field(const char *k)
{
  return strcmp(k, "number") == 0 || strcmp(k, "cvc") == 0 || strcmp(k, "encrypted") == 0;
}

static void wipe_tree(json_t *params, bool wipe)
{
  if (json_is_string(params)) {
    if (wipe) {
      /* jansson owns the bytes; zeroing them in place is what we need here. */
      char *v = (char *)(uintptr_t)json_string_value(params);
      explicit_bzero(v, json_string_length(params));
    }
  } else if (json_is_object(params)) {
    const char *k;
    json_t *v;
    json_object_foreach(params, k, v)
      wipe_tree(v, card_field(k));
  } else if (json_is_array(params)) {
    size_t i;
    json_t *v;
    json_array_foreach(params, i, v)
      wipe_tree(v, false);
  }
}

void tp_params_wipe(json_t *params)
{
  wipe_tree(params, false);
}

bool tp_api_version_header(const char *v, char base[TP_API_VERSION_MAX + 1])
{
  if (strlen(v) > 512)
    return false;
  size_t n = strcspn(v, ";");
  while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
    n--;
  if (n > TP_API_VERSION_MAX)
    return false;
  memcpy(base, v, n);
  base[n] = '\0';
  if (!tp_api_version_ok(base))
    return false;
  /* Betas: "2024-06-20; feature_beta=v3; other_beta=v1" (the SDKs'
   * add_beta_version). Accepted, their syntax checked; the shape served is
   * the same. */
  for (const char *p = strchr(v, ';'); p; p = strchr(p, ';')) {
    p++;
    p += strspn(p, " \t");
    size_t name = strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_");
    if (name == 0 || p[name] != '=')
      return false;
    p += name + 1;
    size_t val = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-");
    if (val == 0)
      return false;
    p += val;
    p += strspn(p, " \t");
    if (*p && *p != ';')
      return false;
  }
  return true;
}

bool tp_api_version_ok(const char *v)
{
  static const char shape[] = "dddd-dd-dd";
  size_t n = strlen(v);
  if (n < 10 || n > TP_API_VERSION_MAX)
    return false;
  for (size_t i = 0; i < 10; i++)
    if (shape[i] == 'd' ? (v[i] < '0' || v[i] > '9') : v[i] != '-')
      return false;
  /* A date (Stripe's versions are release dates): 2011-01-01 or later,
   * a month 01-12, a day that month has. */
  int y = atoi(v), m = (v[5] - '0') * 10 + (v[6] - '0'), d = (v[8] - '0') * 10 + (v[9] - '0');
  static const int days[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (y < 2011 || m < 1 || m > 12 || d < 1 || d > days[m - 1] ||
      (m == 2 && d == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))))
    return false;
  if (n == 10)
    return true;
  if (v[10] != '.' || n == 11)
    return false;
  for (size_t i = 11; i < n; i++)
    if ((v[i] < 'a' || v[i] > 'z') && v[i] != '_')
      return false;
  return true;
}
