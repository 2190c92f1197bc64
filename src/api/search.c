/* The search query language and GET /v1/.../search (see search.h). */
#include "api/search.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"
#include "config.h"
#include "jpack.h"
#include "jparse.h"
#include "metrics.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The query fields Stripe documents for each resource that we hold. */
const struct tp_search_field tp_search_fields_payment_intents[] = {
  {"amount", TP_SF_NUMBER},  {"created", TP_SF_NUMBER}, {"currency", TP_SF_ENUM},
  {"customer", TP_SF_ID},    {"metadata", TP_SF_METADATA}, {"status", TP_SF_ENUM},
  {NULL, TP_SF_ID},
};
const struct tp_search_field tp_search_fields_charges[] = {
  {"amount", TP_SF_NUMBER},
  {"billing_details.address.postal_code", TP_SF_ENUM},
  {"created", TP_SF_NUMBER},
  {"currency", TP_SF_ENUM},
  {"customer", TP_SF_ID},
  {"disputed", TP_SF_BOOL},
  {"metadata", TP_SF_METADATA},
  {"payment_intent", TP_SF_ID},
  {"payment_method_details.card.brand", TP_SF_ENUM},
  {"payment_method_details.card.exp_month", TP_SF_NUMBER},
  {"payment_method_details.card.exp_year", TP_SF_NUMBER},
  {"payment_method_details.card.fingerprint", TP_SF_ID},
  {"payment_method_details.card.last4", TP_SF_ENUM},
  {"refunded", TP_SF_REFUNDED},
  {"status", TP_SF_ENUM},
  {NULL, TP_SF_ID},
};
const struct tp_search_field tp_search_fields_customers[] = {
  {"created", TP_SF_NUMBER}, {"email", TP_SF_STRING}, {"metadata", TP_SF_METADATA},
  {"name", TP_SF_STRING},    {"phone", TP_SF_STRING}, {NULL, TP_SF_ID},
};

/* ---- parser ----------------------------------------------------------------- */
struct lexer {
  const char *s;
  size_t i;
  char *err;
  size_t errlen;
};

/* The message is before, then arg (sanitized), then after. */
static bool fail3(struct lexer *lx, const char *before, const char *arg, const char *after)
{
  /* The message quotes at most 40 bytes of the query, printable ASCII only, */
  char safe[48];
  size_t k = 0;
  for (const char *p = arg ? arg : ""; *p && k < 40; p++)
    safe[k++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
  safe[k] = '\0';
  /* and never a long run of digits: it could be a card number */
  for (size_t i = 0; i < k;) {
    size_t j = i;
    while (j < k && isdigit((unsigned char)safe[j]))
      j++;
    if (j - i >= 8)
      memset(safe + i, '*', j - i);
    i = j > i ? j : i + 1;
  }
  snprintf(lx->err, lx->errlen, "%s%s%s", before, safe, after);
  return false;
}

static void skip_ws(struct lexer *lx)
{
  while (lx->s[lx->i] == ' ' || lx->s[lx->i] == '\t' || lx->s[lx->i] == '\n' || lx->s[lx->i] == '\r')
    lx->i++;
}

static bool is_ws_or_end(char c) { return c == '\0' || c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* A quoted string at lx->i (which holds the quote) into out. */
static bool read_quoted(struct lexer *lx, char *out, size_t cap)
{
  char q = lx->s[lx->i++];
  size_t n = 0;
  for (;;) {
    char c = lx->s[lx->i];
    if (c == '\0')
      return fail3(lx, "Unterminated string in the search query", NULL, "");
    lx->i++;
    if (c == q)
      break;
    if (c == '\\') {
      c = lx->s[lx->i];
      if (c != q && c != '\\')
        return fail3(lx, "A backslash in a search value may only escape a quote or a backslash", NULL, "");
      lx->i++;
    }
    if (n + 1 >= cap)
      return fail3(lx, "A search value is too long", NULL, "");
    out[n++] = c;
  }
  out[n] = '\0';
  return true;
}

/* The word at lx->i if it is AND or OR on its own: 1 or 2, and advances past it. */
static int conjunction(struct lexer *lx)
{
  const char *p = lx->s + lx->i;
  if (strncasecmp(p, "AND", 3) == 0 && is_ws_or_end(p[3])) {
    lx->i += 3;
    return 1;
  }
  if (strncasecmp(p, "OR", 2) == 0 && is_ws_or_end(p[2])) {
    lx->i += 2;
    return 2;
  }
  return 0;
}

static bool parse_int(const char *v, int64_t *out)
{
  if (!*v || strlen(v) > 20)
    return false;
  const char *p = v;
  if (*p == '-')
    p++;
  if (!*p)
    return false;
  for (; *p; p++)
    if (!isdigit((unsigned char)*p))
      return false;
  errno = 0;
  char *end;
  long long x = strtoll(v, &end, 10);
  if (errno || *end)
    return false;
  *out = x;
  return true;
}

static bool all_digits(const char *v)
{
  return *v && strspn(v, "0123456789") == strlen(v);
}

/* Characters, not bytes: "Él" is two. */
static size_t utf8_len(const char *v)
{
  size_t n = 0;
  for (; *v; v++)
    n += ((unsigned char)*v & 0xC0) != 0x80;
  return n;
}

static bool parse_clause(struct lexer *lx, const struct tp_search_field *fields, struct tp_search_clause *c)
{
  memset(c, 0, sizeof *c);
  if (lx->s[lx->i] == '-') {
    c->negate = true;
    lx->i++;
  }
  /* field: a dotted name, or metadata["key"] */
  char name[64];
  size_t n = 0;
  while (isalnum((unsigned char)lx->s[lx->i]) || lx->s[lx->i] == '_' || lx->s[lx->i] == '.') {
    if (n + 1 >= sizeof name)
      return fail3(lx, "A search field name is too long", NULL, "");
    name[n++] = (char)tolower((unsigned char)lx->s[lx->i++]);
  }
  name[n] = '\0';
  if (n == 0) {
    /* The position, not the text: a query is the client's, and may hold anything. */
    char pos[24];
    snprintf(pos, sizeof pos, "%zu", lx->i + 1);
    return fail3(lx, "Expected a search field at character ", pos, "");
  }
  bool meta_key = false;
  if (lx->s[lx->i] == '[') {
    if (strcmp(name, "metadata") != 0)
      return fail3(lx, "Only metadata takes a key in brackets, not '", name, "'");
    lx->i++;
    if (lx->s[lx->i] != '"' && lx->s[lx->i] != '\'')
      return fail3(lx, "A metadata key must be quoted: metadata[\"key\"]", NULL, "");
    if (!read_quoted(lx, c->key, sizeof c->key))
      return false;
    if (lx->s[lx->i] != ']')
      return fail3(lx, "Expected ']' after the metadata key", NULL, "");
    lx->i++;
    meta_key = true;
  }
  for (const struct tp_search_field *f = fields; f->name; f++)
    if (strcmp(f->name, name) == 0)
      c->field = f;
  if (!c->field)
    return fail3(lx, "Field '", name, "' is an unsupported search field for this resource");
  if ((c->field->type == TP_SF_METADATA) != meta_key)
    return meta_key ? fail3(lx, "Field '", name, "' takes no key") : fail3(lx, "Search metadata by key: ", name, "[\"key\"]");
  /* operator */
  const char *p = lx->s + lx->i;
  if (p[0] == ':')
    c->op = TP_SO_EQ, lx->i += 1;
  else if (p[0] == '~')
    c->op = TP_SO_SUB, lx->i += 1;
  else if (p[0] == '>' && p[1] == '=')
    c->op = TP_SO_GE, lx->i += 2;
  else if (p[0] == '<' && p[1] == '=')
    c->op = TP_SO_LE, lx->i += 2;
  else if (p[0] == '>')
    c->op = TP_SO_GT, lx->i += 1;
  else if (p[0] == '<')
    c->op = TP_SO_LT, lx->i += 1;
  else
    return fail3(lx, "Expected an operator (: ~ > < >= <=) after field '", name, "'");
  /* value */
  bool quoted = lx->s[lx->i] == '"' || lx->s[lx->i] == '\'';
  if (quoted) {
    if (!read_quoted(lx, c->value, sizeof c->value))
      return false;
  } else {
    size_t k = 0;
    while (!is_ws_or_end(lx->s[lx->i])) {
      if (k + 1 >= sizeof c->value)
        return fail3(lx, "A search value is too long", NULL, "");
      c->value[k++] = lx->s[lx->i++];
    }
    c->value[k] = '\0';
    if (k == 0)
      return fail3(lx, "Expected a value after field '", name, "'");
  }
  if (!is_ws_or_end(lx->s[lx->i]))
    return fail3(lx, "Expected a space after the value of field '", name, "'");
  c->is_null = !quoted && strcasecmp(c->value, "null") == 0; /* Stripe: case insensitive */
  if (c->is_null) {
    if (c->op != TP_SO_EQ)
      return fail3(lx, "null can only be matched with ':' (field '", name, "')");
    return true;
  }
  bool compare = c->op == TP_SO_GT || c->op == TP_SO_LT || c->op == TP_SO_GE || c->op == TP_SO_LE;
  switch (c->field->type) {
  case TP_SF_NUMBER:
    if (c->op == TP_SO_SUB)
      return fail3(lx, "Field '", name, "' does not support substring matching");
    if (!parse_int(c->value, &c->num))
      return fail3(lx, "Field '", name, "' takes an integer");
    break;
  case TP_SF_BOOL:
  case TP_SF_REFUNDED:
    if (c->op != TP_SO_EQ)
      return fail3(lx, "Field '", name, "' only supports exact matching with ':'");
    if (strcasecmp(c->value, "true") == 0)
      c->boolean = true;
    else if (strcasecmp(c->value, "false") != 0)
      return fail3(lx, "Field '", name, "' takes true or false");
    break;
  case TP_SF_STRING:
    if (compare)
      return fail3(lx, "Field '", name, "' does not support numeric comparison");
    if (c->op == TP_SO_SUB && utf8_len(c->value) < 3)
      return fail3(lx, "Substring matching needs at least 3 characters (field '", name, "')");
    if (!quoted && !all_digits(c->value)) /* Stripe: quotes are optional for numeric values */
      return fail3(lx, "String values must be quoted (field '", name, "')");
    break;
  default:
    if (c->op != TP_SO_EQ)
      return fail3(lx, "Field '", name, "' only supports exact matching with ':'");
    if (!quoted && !all_digits(c->value))
      return fail3(lx, "String values must be quoted (field '", name, "')");
  }
  return true;
}

bool tp_search_parse(const char *query, const struct tp_search_field *fields, struct tp_search *out, char *err,
                     size_t errlen)
{
  struct lexer lx = {query, 0, err, errlen};
  memset(out, 0, offsetof(struct tp_search, c));
  if (!query || strlen(query) > TP_SEARCH_MAX_QUERY)
    return fail3(&lx, "The search query must be at most 1000 characters", NULL, "");
  int joiner = 0; /* 0 unknown, 1 AND (or space), 2 OR */
  skip_ws(&lx);
  if (!query[lx.i])
    return fail3(&lx, "The search query is empty", NULL, "");
  while (query[lx.i]) {
    if (out->n > 0) {
      int j = conjunction(&lx);
      if (j == 0)
        j = 1; /* clauses separated by a space are ANDed */
      else
        skip_ws(&lx);
      if (joiner && j != joiner)
        return fail3(&lx, "A search query cannot combine AND and OR", NULL, "");
      joiner = j;
      if (!query[lx.i])
        return fail3(&lx, "The search query ends after a conjunction", NULL, "");
    }
    if (out->n == TP_SEARCH_MAX_CLAUSES)
      return fail3(&lx, "A search query has at most 10 clauses", NULL, "");
    if (!parse_clause(&lx, fields, &out->c[out->n]))
      return false;
    out->n++;
    skip_ws(&lx);
  }
  out->any = joiner == 2;
  return true;
}

/* ---- evaluation --------------------------------------------------------------- */
static const json_t *at_path(const json_t *obj, const char *path)
{
  char seg[64];
  while (obj && *path) {
    const char *dot = strchr(path, '.');
    size_t n = dot ? (size_t)(dot - path) : strlen(path);
    if (n >= sizeof seg)
      return NULL;
    memcpy(seg, path, n);
    seg[n] = '\0';
    obj = json_is_object(obj) ? json_object_get(obj, seg) : NULL;
    path += n + (dot ? 1 : 0);
  }
  return obj;
}

static bool ascii_only(const char *s)
{
  for (; *s; s++)
    if ((unsigned char)*s >= 0x80)
      return false;
  return true;
}

/* `~`: the value holds the query's text, case folded in Unicode (as `:`). */
static bool contains_ci(const char *hay, const char *needle)
{
  char *h = tp_utf8_lower(hay), *q = tp_utf8_lower(needle);
  bool ok = strstr(h, q) != NULL;
  free(h);
  free(q);
  return ok;
}

/* Lower-case words of s (Unicode simple case folding), one space between
 * them, into a new buffer. */
static char *words_of(const char *s)
{
  char *low = tp_utf8_lower(s);
  size_t n = strlen(low);
  char *out = malloc(n + 1), *o = out;
  if (!out)
    abort();
  for (const char *p = low; *p;) {
    while (*p && isspace((unsigned char)*p))
      p++;
    if (!*p)
      break;
    if (o != out)
      *o++ = ' ';
    while (*p && !isspace((unsigned char)*p))
      *o++ = *p++;
  }
  *o = '\0';
  free(low);
  return out;
}

/* Stripe's exact match on a string: the value holds all the query's words,
 * in the same order (name:"one two three" finds "One Two Three Four"). */
static bool words_match(const char *value, const char *query)
{
  char *h = words_of(value), *q = words_of(query);
  size_t ql = strlen(q);
  bool ok = false;
  for (const char *p = h; ql && !ok && (p = strstr(p, q)) != NULL; p++)
    ok = (p == h || p[-1] == ' ') && (p[ql] == '\0' || p[ql] == ' ');
  free(h);
  free(q);
  return ok;
}

static bool clause_match(const struct tp_search_clause *c, const json_t *obj)
{
  const json_t *v = c->field->type == TP_SF_METADATA ? json_object_get(json_object_get(obj, "metadata"), c->key)
                                                     : at_path(obj, c->field->name);
  if (c->field->type == TP_SF_REFUNDED) {
    json_int_t done = json_integer_value(json_object_get(obj, "amount_refunded"));
    if (c->is_null)
      return done == 0;
    return c->boolean ? json_is_true(v) : done > 0 && !json_is_true(v);
  }
  if (c->is_null)
    return v == NULL || json_is_null(v);
  /* an expanded field still matches by its id */
  if (json_is_object(v) && (c->field->type == TP_SF_ID))
    v = json_object_get(v, "id");
  switch (c->field->type) {
  case TP_SF_NUMBER: {
    if (!json_is_integer(v))
      return false;
    json_int_t x = json_integer_value(v);
    switch (c->op) {
    case TP_SO_EQ: return x == c->num;
    case TP_SO_GT: return x > c->num;
    case TP_SO_LT: return x < c->num;
    case TP_SO_GE: return x >= c->num;
    case TP_SO_LE: return x <= c->num;
    default: return false;
    }
  }
  case TP_SF_REFUNDED: /* decided above, with its null */
    return false;
  case TP_SF_BOOL: /* a flag a stored object does not carry (older rows) is false */
    return json_is_true(v) == c->boolean && (json_is_boolean(v) || v == NULL);
  case TP_SF_ID:
  case TP_SF_METADATA:
    return json_is_string(v) && strcmp(json_string_value(v), c->value) == 0;
  case TP_SF_ENUM:
    return json_is_string(v) && strcasecmp(json_string_value(v), c->value) == 0;
  case TP_SF_STRING:
    if (!json_is_string(v))
      return false;
    return c->op == TP_SO_SUB ? contains_ci(json_string_value(v), c->value)
                              : words_match(json_string_value(v), c->value);
  }
  return false;
}

bool tp_search_match(const struct tp_search *s, const json_t *obj)
{
  for (size_t i = 0; i < s->n; i++) {
    bool m = clause_match(&s->c[i], obj) != s->c[i].negate;
    if (s->any && m)
      return true;
    if (!s->any && !m)
      return false;
  }
  return !s->any;
}

/* ---- the endpoint ----------------------------------------------------------- */
/* Rows read per store query, and at most per request ([search]
 * max_scan_rows): a query that matches rarely returns a short (even empty)
 * page with has_more and next_page, as Stripe may; the client goes on from
 * there. */
#define SCAN_CHUNK 200
#define SCAN_MAX_DEFAULT 1000 /* about 16 ms of one HTTP thread (docs/search.md) */
#define SCAN_EMPTY_FACTOR 20   /* a page with no match yet reads on, to 20 budgets */
/* ... and within these times of the thread: rows are counted, not their
 * size, and 27 KB customers (50 metadata keys of 500 characters) made 20
 * budgets take seconds of a thread the payments share. */
#define SCAN_TIME_MS 25        /* a page that has a match */
#define SCAN_EMPTY_TIME_MS 1000 /* a page still empty: then it answers empty, with has_more (see search.md) */
#define PAGE_PREFIX "tps1_"

static const struct tp_pspec spec_search[] = {
  {"query", TP_P_STRING, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  {"page", TP_P_STRING, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

static bool id_chars_ok(const char *s)
{
  if (!*s || strlen(s) >= 64)
    return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && *s != '_')
      return false;
  return true;
}

/* The rows of one store read of a search: sql (built below) from cursor
 * down, want rows, bound as the SQL expects. NULL on a store error. */
struct search_read {
  const char *sql, *merchant, *val, *kind_prefix, *mkey;
  const char *top;   /* the walk starts below this id ("~": the newest) */
  const char *floor; /* and ends below this one ("": it does not) */
};

/* The ids a query's created bounds allow, as a list's (store/sqlite:
 * list_id_floor, list_id_ceil): an id begins with the time it was made,
 * never before its object's created less a margin, and, while ids never
 * ran ahead of the clock, at most TP_ID_AHEAD_MS after it. So "created up
 * to T" starts at T's ids rather than the newest (a walk from the top
 * answered empty pages with has_more for every older range, where
 * stripe-python's auto-paging stops), and "created from T" stops at T's.
 * Bounds under OR, negated or null decide nothing. */
#define CREATED_ID_MARGIN_S 5

static void created_id_bounds(const struct tp_search *s, int kind, char top[80], char floor[TP_ID_MAX])
{
  int64_t hi = INT64_MAX, lo = INT64_MIN;
  for (size_t i = 0; i < s->n && !(s->any && s->n > 1); i++) {
    const struct tp_search_clause *c = &s->c[i];
    if (c->negate || c->is_null || c->field->type != TP_SF_NUMBER || strcmp(c->field->name, "created") != 0)
      continue;
    int64_t v = c->num;
    if ((c->op == TP_SO_EQ || c->op == TP_SO_LE) && v < hi)
      hi = v;
    else if (c->op == TP_SO_LT && v != INT64_MIN && v - 1 < hi)
      hi = v - 1;
    if ((c->op == TP_SO_EQ || c->op == TP_SO_GE) && v > lo)
      lo = v;
    else if (c->op == TP_SO_GT && v != INT64_MAX && v + 1 > lo)
      lo = v + 1;
  }
  const int64_t max_s = TP_ID_TIME_LIMIT_S - 4 * CREATED_ID_MARGIN_S; /* past it an id bound would wrap */
  if (hi >= 0 && hi < max_s && !tp_ids_ran_ahead()) {
    char ceil[TP_ID_MAX];
    tp_id_floor(ceil, tp_kinds[kind].prefix, (hi + 1 + CREATED_ID_MARGIN_S) * 1000 + TP_ID_AHEAD_MS);
    if (strcmp(ceil, top) < 0)
      tp_scopy(top, 80, ceil);
  }
  floor[0] = '\0';
  if (lo > CREATED_ID_MARGIN_S && lo < max_s)
    tp_id_floor(floor, tp_kinds[kind].prefix, (lo - CREATED_ID_MARGIN_S) * 1000);
}

static json_t *search_rows(const struct search_read *q, const char *cursor, int64_t want)
{
  json_t *args = tp_pack("[s, s, I]", q->merchant, cursor, (json_int_t)want);
  if (q->val)
    json_array_append_new(args, json_string(q->val));
  if (q->mkey) {
    json_array_append_new(args, json_string(q->kind_prefix));
    json_array_append_new(args, json_string(q->mkey));
  }
  return tp_store_query_take(&tp_app.store, q->sql, args);
}

/* expand[]=total_count (Stripe: "only accurate up to 10,000"): the matches
 * counted from the newest object down, the same way the page is read, at
 * most SEARCH_COUNT_MAX of them and SEARCH_COUNT_SCAN rows read; -1 on a
 * store error. Past the scan the count is of the newest rows only. */
#define SEARCH_COUNT_MAX 10000
#define SEARCH_COUNT_SCAN 100000
#define SEARCH_COUNT_TIME_MS 1000 /* as an empty page's scan: 100,000 large customers held a thread 15-30 s */

static int64_t search_count(const struct search_read *q, const struct tp_search *s)
{
  char cursor[80];
  tp_scopy(cursor, sizeof cursor, q->top);
  int64_t n = 0, scanned = 0, t0 = tp_mono_ms();
  for (;;) {
    json_t *rows = search_rows(q, cursor, SCAN_CHUNK);
    if (!rows)
      return -1;
    size_t i, nrows = json_array_size(rows);
    json_t *row;
    json_array_foreach(rows, i, row)
    {
      const char *id = json_string_value(json_object_get(row, "id"));
      if (id && q->floor[0] && strcmp(id, q->floor) < 0) {
        nrows = 0; /* below the created bound: no more matches */
        break;
      }
      json_t *obj = tp_json_loads(json_string_value(json_object_get(row, "data")) ?: "");
      n += obj && tp_search_match(s, obj);
      json_decref(obj);
      if (id)
        tp_scopy(cursor, sizeof cursor, id);
    }
    json_decref(rows);
    scanned += (int64_t)nrows;
    if (nrows < SCAN_CHUNK || n >= SEARCH_COUNT_MAX || scanned >= SEARCH_COUNT_SCAN ||
        tp_mono_ms() - t0 >= SEARCH_COUNT_TIME_MS)
      return n < SEARCH_COUNT_MAX ? n : SEARCH_COUNT_MAX;
  }
}

/* Which index, if any, drives a search: a clause every match must meet
 * (not negated, not under OR, not null), in this order of preference:
 * `field:'id'` on a column with an index (a PaymentIntent's or charge's
 * customer, a charge's payment_intent), `metadata['key']:'value'` (the
 * metadata index, migration 0020), a customer's `email:'…'` (its
 * case-folded index, 0021). Only the rows it names are read, each still
 * tested against the whole query. */
struct search_path {
  const char *index, *col; /* the column's index, or NULL */
  const char *mkey;        /* the metadata key, or NULL */
  bool by_email;
  const char *val;         /* the clause's value */
};

/* How many rows path names, counted up to PATH_COUNT_CAP (an index-only
 * read); -1 on an error. */
#define PATH_COUNT_CAP 5000
#define PATH_CANDIDATES 8

static int64_t path_rows(const struct search_path *p, int kind, const char *merchant)
{
  char sql[400];
  json_t *args;
  if (p->by_email) {
    snprintf(sql, sizeof sql,
             "SELECT count(*) AS n FROM (SELECT 1 FROM customers INDEXED BY customers_email_ci WHERE merchant = ?1 "
             "AND lower(email) = lower(?2) AND email IS NOT NULL LIMIT %d)", PATH_COUNT_CAP); /* partial index */
    args = tp_pack("[s, s]", merchant, p->val);
  } else if (p->index) {
    snprintf(sql, sizeof sql,
             "SELECT count(*) AS n FROM (SELECT 1 FROM %s INDEXED BY %s WHERE merchant = ?1 AND %s = ?2 LIMIT %d)",
             tp_kinds[kind].table, p->index, p->col, PATH_COUNT_CAP);
    args = tp_pack("[s, s]", merchant, p->val);
  } else {
    snprintf(sql, sizeof sql,
             "SELECT count(*) AS n FROM (SELECT 1 FROM metadata_index INDEXED BY metadata_index_kv WHERE merchant = ?1 "
             "AND kind = ?2 AND k = ?3 AND v = ?4 LIMIT %d)", PATH_COUNT_CAP);
    args = tp_pack("[s, s, s, s]", merchant, tp_kinds[kind].prefix, p->mkey, p->val);
  }
  json_t *rows = tp_store_query_take(&tp_app.store, sql, args);
  int64_t n = rows ? json_integer_value(json_object_get(json_array_get(rows, 0), "n")) : -1;
  json_decref(rows);
  return n;
}

/* The read that names the fewest rows among the query's indexed clauses
 * (an id column's index, an exact metadata pair, a customer's email),
 * each exact, not negated, not under OR; none: the walk of every row.
 * Taking the first one found let the clause order decide, and a broad
 * one (metadata['batch']:'big' beside a unique metadata['i']) answered
 * empty pages with has_more, where stripe-python's auto-paging stops. */
static void pick_path(const struct tp_search *s, int kind, const char *merchant, struct search_path *out)
{
  struct search_path cand[PATH_CANDIDATES];
  size_t nc = 0;
  for (size_t i = 0; i < s->n && !(s->any && s->n > 1) && nc < PATH_CANDIDATES; i++) {
    const struct tp_search_clause *c = &s->c[i];
    if (c->op != TP_SO_EQ || c->negate || c->is_null)
      continue;
    struct search_path p;
    memset(&p, 0, sizeof p);
    if (c->field->type == TP_SF_ID) {
      int k = tp_kind_index((enum tp_kind)kind, c->field->name, c->value);
      if (k < 0 || tp_kinds[kind].except[k]) /* a partial index would need its condition */
        continue;
      p.index = tp_kinds[kind].index[k];
      p.col = tp_kinds[kind].col[k];
    } else if (c->field->type == TP_SF_METADATA && tp_kind_meta_indexed((enum tp_kind)kind)) {
      p.mkey = c->key;
    } else if (c->field->type == TP_SF_STRING && kind == TP_K_CUSTOMER && strcmp(c->field->name, "email") == 0 &&
               !strpbrk(c->value, " \t\r\n\v\f") && ascii_only(c->value)) {
      /* the index holds whole addresses: a one-word query matches only
       * one; it folds ASCII only, so an address with other letters is
       * matched by the walk, which folds them too */
      p.by_email = true;
    } else {
      continue;
    }
    p.val = c->value;
    cand[nc++] = p;
  }
  memset(out, 0, sizeof *out);
  if (nc == 0)
    return;
  *out = cand[0];
  if (nc == 1)
    return;
  int64_t best = -1;
  for (size_t i = 0; i < nc; i++) {
    int64_t n = path_rows(&cand[i], kind, merchant);
    if (n >= 0 && (best < 0 || n < best)) {
      best = n;
      *out = cand[i];
    }
  }
}

/* Takes "total_count" out of expand[] (a search result's own field, which
 * the objects' expansion does not know); whether it was there. */
static bool take_total_count(struct tp_req *r)
{
  json_t *ex = json_object_get(r->params, "expand");
  bool found = false;
  for (size_t i = json_array_size(ex); i-- > 0;)
    if (strcmp(json_string_value(json_array_get(ex, i)) ?: "", "total_count") == 0) {
      json_array_remove(ex, i);
      found = true;
    }
  return found;
}

/* Searches running at once, across merchants: each holds an HTTP thread
 * for up to SCAN_EMPTY_TIME_MS, so without a bound a few clients of one
 * merchant searching in a loop held every thread and every other
 * merchant's payments waited seconds behind them. [search] max_concurrent
 * (default: half the HTTP threads, at least one); beyond it a search is
 * answered 429 at once, which the SDKs retry. One merchant holds at most
 * half of them (rounded up), so another's searches still find a slot
 * while it searches in a loop. The running searches' merchants are a
 * small table under a mutex: a search costs milliseconds, this a scan of
 * at most max_concurrent entries. */
static struct {
  pthread_mutex_t mu;
  int cap, per_merchant, running;
  struct slot_holder {
    char merchant[TP_ID_MAX];
    int n;
  } *held; /* cap entries, n = 0 free */
} S = {.mu = PTHREAD_MUTEX_INITIALIZER};

static bool search_slot_take(const char *merchant)
{
  pthread_mutex_lock(&S.mu);
  if (S.cap == 0) {
    int def = (int)tp_http_threads() / 2;
    int c = (int)tp_config_int("search", "max_concurrent", def > 0 ? def : 1, 1, 1024);
    S.held = calloc((size_t)c, sizeof *S.held);
    if (!S.held)
      abort();
    S.cap = c;
    S.per_merchant = (c + 1) / 2;
  }
  bool ok = false;
  if (S.running < S.cap) {
    struct slot_holder *mine = NULL, *free_one = NULL;
    for (int i = 0; i < S.cap && !mine; i++) {
      if (S.held[i].n > 0 && strcmp(S.held[i].merchant, merchant) == 0)
        mine = &S.held[i];
      else if (S.held[i].n == 0 && !free_one)
        free_one = &S.held[i];
    }
    if (!mine && free_one) { /* fewer than cap running: a free entry exists */
      mine = free_one;
      tp_scopy(mine->merchant, sizeof mine->merchant, merchant);
    }
    if (mine && mine->n < S.per_merchant) {
      mine->n++;
      S.running++;
      ok = true;
    }
  }
  pthread_mutex_unlock(&S.mu);
  return ok;
}

static void search_slot_give(const char *merchant)
{
  pthread_mutex_lock(&S.mu);
  for (int i = 0; i < S.cap; i++)
    if (S.held[i].n > 0 && strcmp(S.held[i].merchant, merchant) == 0) {
      S.held[i].n--;
      S.running--;
      break;
    }
  pthread_mutex_unlock(&S.mu);
}

static void search_reply(struct tp_req *r, int kind, const char *url, const struct tp_search_field *fields);

void tp_search_reply(struct tp_req *r, int kind, const char *url, const struct tp_search_field *fields)
{
  /* Stripe: "The minimum supported API Version to use search is
   * 2020-08-27"; a request pinned before it is refused, not answered in
   * an older shape. */
  if (r->api_version[0] && strcmp(r->api_version, "2020-08-27") < 0) {
    tp_reply_error(r, TP_ERR_SEARCH_API_VERSION_UNSUPPORTED, NULL, NULL);
    return;
  }
  if (!search_slot_take(r->merchant.id)) {
    tp_metric_inc("turnpike_search_refused_total", NULL, 1);
    tp_reply_error(r, TP_ERR_SEARCH_CONCURRENCY_LIMITED, NULL, NULL);
    return;
  }
  search_reply(r, kind, url, fields);
  search_slot_give(r->merchant.id);
}

static void search_reply(struct tp_req *r, int kind, const char *url, const struct tp_search_field *fields)
{
  bool want_total = take_total_count(r);
  if (!tp_check_params(r, spec_search))
    return;
  const char *query = tp_pstr(r->params, "query");
  if (!query) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "query", NULL);
    return;
  }
  struct tp_search *s = malloc(sizeof *s);
  if (!s) {
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  char err[200];
  if (!tp_search_parse(query, fields, s, err, sizeof err)) {
    tp_reply_error(r, TP_ERR_SEARCH_QUERY_INVALID, "query", err);
    free(s);
    return;
  }
  int64_t limit = 10;
  if (!tp_param_limit(r, &limit)) {
    free(s);
    return;
  }
  char cursor[80] = "~"; /* above every id: ids are [A-Za-z0-9_] */
  const char *page = tp_pstr(r->params, "page");
  if (page && *page) {
    size_t pl = strlen(PAGE_PREFIX);
    /* The token is the last id of a page of this kind: another kind's (a
     * PaymentIntent search's token on /v1/customers/search) is not one. */
    const char *kp = tp_kinds[kind].prefix;
    if (strncmp(page, PAGE_PREFIX, pl) != 0 || !id_chars_ok(page + pl) || strncmp(page + pl, kp, strlen(kp)) != 0 ||
        page[pl + strlen(kp)] != '_') {
      tp_reply_error(r, TP_ERR_SEARCH_PAGE_INVALID, "page", NULL);
      free(s);
      return;
    }
    tp_scopy(cursor, sizeof cursor, page + pl);
  }
  char top[80] = "~", floor[TP_ID_MAX];
  created_id_bounds(s, kind, top, floor);
  if (strcmp(top, cursor) < 0)
    tp_scopy(cursor, sizeof cursor, top);
  const char *table = tp_kinds[kind].table;
  struct search_path sp;
  pick_path(s, kind, r->merchant.id, &sp);
  char sql[400];
  if (sp.by_email)
    snprintf(sql, sizeof sql,
             "SELECT id, tp_json(data) AS data FROM customers INDEXED BY customers_email_ci WHERE merchant = ?1 "
             "AND lower(email) = lower(?4) AND email IS NOT NULL AND id < ?2 AND deleted IS NULL "
             "ORDER BY id DESC LIMIT ?3");
  else if (sp.index)
    snprintf(sql, sizeof sql,
             "SELECT id, tp_json(data) AS data FROM %s INDEXED BY %s WHERE merchant = ?1 AND %s = ?4 AND id < ?2%s "
             "ORDER BY id DESC LIMIT ?3",
             table, sp.index, sp.col, kind == TP_K_CUSTOMER ? " AND deleted IS NULL" : "");
  else if (sp.mkey)
    snprintf(sql, sizeof sql,
             "SELECT o.id AS id, tp_json(o.data) AS data FROM metadata_index m INDEXED BY metadata_index_kv "
             "JOIN %s o ON o.merchant = m.merchant AND o.id = m.id WHERE m.merchant = ?1 AND m.kind = ?5 "
             "AND m.k = ?6 AND m.v = ?4 AND m.id < ?2%s ORDER BY m.id DESC LIMIT ?3",
             table, kind == TP_K_CUSTOMER ? " AND o.deleted IS NULL" : "");
  else
    snprintf(sql, sizeof sql,
             "SELECT id, tp_json(data) AS data FROM %s WHERE merchant = ?1 AND id < ?2%s ORDER BY id DESC LIMIT ?3",
             table, kind == TP_K_CUSTOMER ? " AND deleted IS NULL" : "");
  const struct search_read q = {sql, r->merchant.id, sp.val, tp_kinds[kind].prefix, sp.mkey, top, floor};
  json_t *data = json_array();
  bool has_more = false, end = false, failed = false, late = false;
  int64_t scanned = 0, budget = tp_config_int("search", "max_scan_rows", SCAN_MAX_DEFAULT, 10, 100000);
  int64_t t0 = tp_mono_ms();
  while (!end && !has_more && !late && !failed) {
    /* Past the budget only while the page is still empty: an empty page
     * with has_more ends the auto-paging of stripe-python and stripe-go
     * (they stop at the first empty page), so one is answered only when
     * even SCAN_EMPTY_FACTOR budgets found nothing. */
    int64_t cap = json_array_size(data) ? budget : budget * SCAN_EMPTY_FACTOR;
    if (scanned >= cap)
      break;
    int64_t want = cap - scanned < SCAN_CHUNK ? cap - scanned : SCAN_CHUNK;
    json_t *rows = search_rows(&q, cursor, want);
    if (!rows) {
      failed = true;
      break;
    }
    size_t nrows = json_array_size(rows);
    if (nrows < (size_t)want)
      end = true;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
      const char *id = json_string_value(json_object_get(row, "id"));
      const char *text = json_string_value(json_object_get(row, "data"));
      if (!id) { /* cannot be (a key), and could not be gone past */
        failed = true;
        break;
      }
      if (floor[0] && strcmp(id, floor) < 0) {
        end = true; /* below the created bound: nothing further matches */
        break;
      }
      json_t *obj = text ? tp_json_loads(text) : NULL;
      if (obj && tp_search_match(s, obj)) {
        if (json_array_size(data) == (size_t)limit) {
          /* one more match: this page is full, the next starts after its last */
          has_more = true;
          json_decref(obj);
          break;
        }
        json_array_append_new(data, obj);
      } else {
        json_decref(obj);
      }
      tp_scopy(cursor, sizeof cursor, id);
      scanned++;
      if (json_array_size(data) && scanned >= budget && i + 1 < nrows) {
        end = false; /* rows are left: the budget ends this page, which has a match */
        break;
      }
      if ((scanned & 31) == 0 &&
          tp_mono_ms() - t0 >= (json_array_size(data) ? SCAN_TIME_MS : SCAN_EMPTY_TIME_MS)) {
        late = true; /* out of time: the page ends here, the client goes on from the cursor */
        end = end && i + 1 == nrows;
        break;
      }
    }
    json_decref(rows);
  }
  int64_t total = want_total && !failed ? search_count(&q, s) : 0;
  if (total >= 0 && total < (int64_t)json_array_size(data))
    total = (int64_t)json_array_size(data); /* a count cut by its time bound: at least the page */
  free(s);
  if (failed || total < 0) {
    json_decref(data);
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  if (!end && !has_more)
    has_more = true; /* the scan budget ran out: the client goes on from the cursor */
  json_t *next = json_null();
  if (has_more) {
    char tok[96];
    snprintf(tok, sizeof tok, PAGE_PREFIX "%s", cursor);
    next = json_string(tok);
  }
  json_t *res = tp_pack("{s:s, s:s, s:b, s:o, s:o}", "object", "search_result", "url", url, "has_more", has_more,
                        "data", data, "next_page", next);
  if (want_total)
    json_object_set_new(res, "total_count", json_integer(total));
  const json_t *ex = json_object_get(r->params, "expand");
  if (json_is_array(ex) && json_array_size(ex) > 0 && !tp_expand(r, res, NULL)) {
    json_decref(res);
    return;
  }
  tp_reply_json(r, 200, res);
}

void tp_h_pi_search(struct tp_req *r)
{
  tp_search_reply(r, TP_K_PAYMENT_INTENT, "/v1/payment_intents/search", tp_search_fields_payment_intents);
}

void tp_h_charge_search(struct tp_req *r)
{
  tp_search_reply(r, TP_K_CHARGE, "/v1/charges/search", tp_search_fields_charges);
}

void tp_h_customer_search(struct tp_req *r)
{
  tp_search_reply(r, TP_K_CUSTOMER, "/v1/customers/search", tp_search_fields_customers);
}
