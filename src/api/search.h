/* Stripe's search query language, for GET /v1/{payment_intents,charges,
 * customers}/search (docs/api.md, "Search").
 *
 * A query is up to TP_SEARCH_MAX_CLAUSES clauses `field OP value`, joined by
 * spaces or AND (all must match) or by OR (any may match), never both. OP is
 * `:` (exact), `~` (substring, at least 3 characters, string fields only) or
 * `>` `<` `>=` `<=` (numeric fields only). A leading `-` negates a clause.
 * Values are quoted with "..." or '...' (a backslash escapes the quote or
 * itself); numbers, true, false and null may go bare. `field:null` matches
 * an absent or null field; metadata keys are written metadata["key"].
 *
 * The parser knows nothing of HTTP or the store: it checks a query against a
 * resource's field table and evaluates it on a decoded object. */
#ifndef TP_API_SEARCH_H
#define TP_API_SEARCH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TP_SEARCH_MAX_QUERY 1000 /* bytes */
#define TP_SEARCH_MAX_CLAUSES 10
#define TP_SEARCH_MAX_VALUE 500 /* bytes of one value, unescaped */

enum tp_sf_type {
  TP_SF_ID,       /* an object id: exact, case-sensitive */
  TP_SF_ENUM,     /* status, currency, brand: exact, case-insensitive */
  TP_SF_STRING,   /* free text (email, name): exact or ~substring, case-insensitive */
  TP_SF_NUMBER,   /* integer: exact or compared */
  TP_SF_BOOL,     /* true / false */
  TP_SF_METADATA, /* metadata["key"]: exact, case-sensitive */
  TP_SF_REFUNDED, /* a charge's refunded: true fully, false partly, null not at all (Stripe) */
};

struct tp_search_field {
  const char *name; /* as written in a query */
  enum tp_sf_type type;
};

enum tp_search_op { TP_SO_EQ, TP_SO_SUB, TP_SO_GT, TP_SO_LT, TP_SO_GE, TP_SO_LE };

struct tp_search_clause {
  const struct tp_search_field *field;
  char key[TP_SEARCH_MAX_VALUE + 1]; /* metadata key */
  enum tp_search_op op;
  bool negate;
  bool is_null;  /* value was bare null */
  int64_t num;   /* NUMBER fields */
  bool boolean;  /* BOOL fields */
  char value[TP_SEARCH_MAX_VALUE + 1];
};

struct tp_search {
  bool any; /* joined by OR */
  size_t n;
  struct tp_search_clause c[TP_SEARCH_MAX_CLAUSES];
};

/* Parse query against fields (terminated by a NULL name). On error returns
 * false with a message for the client in err (never longer than errlen). */
bool tp_search_parse(const char *query, const struct tp_search_field *fields, struct tp_search *out, char *err,
                     size_t errlen);

/* Whether obj (a stored Stripe object) matches. */
bool tp_search_match(const struct tp_search *s, const json_t *obj);

struct tp_req;
/* GET /v1/<resource>/search: parse query, limit and page, walk the merchant's
 * objects newest first and reply with a search_result. */
void tp_search_reply(struct tp_req *r, int kind, const char *url, const struct tp_search_field *fields);

extern const struct tp_search_field tp_search_fields_payment_intents[];
extern const struct tp_search_field tp_search_fields_charges[];
extern const struct tp_search_field tp_search_fields_customers[];

#endif
