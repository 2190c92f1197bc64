/* Request parameters: form (bracket nesting) or JSON bodies into one jansson
 * tree, plus declarative validation of the allowed parameters. */
#ifndef TP_PARAMS_H
#define TP_PARAMS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/* Limits on what a request may carry. */
#define TP_PARAMS_MAX_BODY      (256 * 1024) /* bytes; larger bodies get 413 before parsing */
#define TP_PARAMS_MAX_COUNT     512          /* key=value pairs */
#define TP_PARAMS_MAX_DEPTH     8            /* nesting: a[b][c]... or JSON */
#define TP_PARAMS_MAX_KEY       200          /* bytes in one decoded key */
#define TP_PARAMS_MAX_ARRAY     100          /* elements in one array (expand[] etc.) */
#define TP_PARAMS_MAX_VALUE     20000        /* bytes in one decoded value: 5,000 characters of any UTF-8 */
#define TP_PARAMS_MAX_CHARS     5000         /* characters in a string parameter (Stripe's longest limit) */
#define TP_PARAMS_MAX_TEXT      80000        /* bytes in a long text (evidence[...]: 20,000 characters of any UTF-8) */

struct tp_params_error {
  char message[256];   /* human message, never contains parameter *values* */
  char param[128];     /* offending parameter in Stripe bracket form, "" if none */
  int code;            /* its errors/registry.tsv number (enum tp_err), 0 when the reply picks it */
};

/* Parse application/x-www-form-urlencoded with Stripe bracket nesting:
 *   a=1&b[c]=2&d[]=x&d[]=y&e[0]=p&e[1]=q&metadata[k]=v   (also %5B %5D)
 * into a JSON object; all leaves are JSON strings; "d[]"/"e[0]" make arrays
 * (index form must be dense 0..n-1, in any order); "a[0][b]=x" makes arrays of
 * objects. '+' decodes to space. A key repeated without [] : last one wins.
 * An empty body gives an empty object. Invalid percent-encoding, invalid UTF-8,
 * NUL bytes, conflicting shapes (a=1&a[b]=2), past-limit counts/depth -> NULL
 * and err filled. Returned object is owned by the caller. */
json_t *tp_params_parse_form(const char *body, size_t len, struct tp_params_error *err);
/* The longest value key (a form key or a JSON path) may have, in bytes. */
int tp_params_max_value(const char *key);
/* Zero the card fields (number, cvc, encrypted) of a parameter tree before
 * it is freed: request parameters may hold a card number. */
void tp_params_wipe(json_t *params);

/* Parse a JSON body (must be an object; depth/size limits above; integers
 * outside int64 are rejected, floats are kept as reals). NULL + err on error. */
json_t *tp_params_parse_json(const char *body, size_t len, struct tp_params_error *err);

/* Parse a query string (GET parameters) - same grammar as form. */
#define tp_params_parse_query tp_params_parse_form

/* ---- declarative validation ------------------------------------------- */
enum tp_ptype {
  TP_P_STRING,     /* JSON string (max TP_PARAMS_MAX_VALUE) */
  TP_P_TEXT,       /* a long JSON string (max TP_PARAMS_MAX_TEXT; only under "evidence") */
  TP_P_INT,        /* integer, or a string of an optional '-' and digits fitting int64 */
  TP_P_BOOL,       /* true/false, the strings "true"/"false", or one of spec->choices (read as true) */
  TP_P_ENUM,       /* string, one of spec->choices (NULL-terminated list) */
  TP_P_METADATA,   /* object of string->string, <= 50 keys, key <= 40, value <= 500;
                      "" as the whole value (metadata=) means "unset all"; a key
                      with value "" means unset that key. Ints/bools in JSON are
                      accepted and converted to strings by normalization. */
  TP_P_OBJECT,     /* nested object validated with spec->children */
  TP_P_STRLIST,    /* array of strings (expand[]) */
  TP_P_RANGE,      /* integer, or object with gt/gte/lt/lte integers (created[gte]) */
  TP_P_ANY,        /* anything (rarely used) */
  TP_P_URL,        /* a URL a customer is sent back to (tp_return_url_ok); else
                      "Not a valid URL" (url_invalid); "" unsets */
  TP_P_UNSUPPORTED /* a Stripe parameter of a feature Turnpike does not have
                      (Connect, mandates, Stripe Tax ...): refused with
                      "Parameter not supported by Turnpike: <name> (<why>)",
                      why = spec->choices[0] when given; "" or null (unset)
                      passes. Not "unknown": the SDKs send it, and the client
                      should learn why, not look for a typo. */
};

struct tp_pspec {
  const char *name;
  enum tp_ptype type;
  const struct tp_pspec *children;  /* for TP_P_OBJECT; terminated by {NULL} */
  const char *const *choices;       /* for TP_P_ENUM */
};

/* Check that every key of obj is in spec (terminated by a {NULL} entry) and
 * has the right type, recursively; normalizes in place: TP_P_INT strings
 * become JSON integers, TP_P_BOOL strings become JSON booleans, metadata
 * values become strings, TP_P_RANGE ints/strings become integers.
 * Empty string for a TP_P_STRING/INT/ENUM... is left as "" (means "unset" on
 * update endpoints; callers decide). Returns 0, or -1 with err filled:
 * unknown key -> message "Received unknown parameter: <name>" and param set
 * to the full bracket name (e.g. "payment_method_data[card][foo]");
 * wrong type -> "Invalid integer: <param>" / "Invalid boolean: ..." /
 * "Invalid <param>: must be one of a, b, c" etc. Never echoes values longer
 * than 40 bytes and never echoes anything under a key named "number" or "cvc". */
int tp_params_check(json_t *obj, const struct tp_pspec *spec, struct tp_params_error *err);

/* Typed getters on a checked tree (path is a top-level key; use json_object_get
 * for nested objects). Return true when present and of the right type. */
bool tp_param_str(const json_t *obj, const char *key, const char **out);
bool tp_param_int(const json_t *obj, const char *key, int64_t *out);
bool tp_param_bool(const json_t *obj, const char *key, bool *out);
/* A Stripe API version: YYYY-MM-DD, then optionally "." and a release name
 * of lowercase letters ("2026-10-28.endive"), at most TP_API_VERSION_MAX
 * bytes (the Stripe-Version header, a webhook endpoint's api_version). */
#define TP_API_VERSION_MAX 47
bool tp_api_version_ok(const char *v);
/* A return_url (TP_P_URL): an absolute URL of at most TP_RETURN_URL_MAX
 * bytes, no spaces or controls, a scheme that is not javascript:, data: and
 * the like; http(s) with a host. App schemes (myapp://done) pass, as
 * Stripe allows them. */
#define TP_RETURN_URL_MAX 2048
bool tp_return_url_ok(const char *url);
/* A Stripe-Version header: a version (tp_api_version_ok), then any number
 * of "; beta_name=vN" (the SDKs' beta opt-ins); the version into base. */
bool tp_api_version_header(const char *v, char base[TP_API_VERSION_MAX + 1]);
#endif
