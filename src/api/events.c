/* /v1/events: retrieve and list.
 *
 * An exact `type` filter is an indexed store query. A wildcard type
 * ("payment_intent.*") or a `types[]` list is filtered in memory over pages
 * of the plain list, scanning at most EVENTS_MAX_SCAN events per request. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"
#include "jpack.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

/* Events read per request when filtering in memory; past it the page ends
 * early with has_more = true so the client can go on from the last item. */
#define EVENTS_MAX_SCAN 10000
#define EVENTS_PAGE 100
/* Stripe's cap on types[]. */
#define EVENTS_MAX_TYPES 20
#define LIST_DEFAULT_LIMIT 10

static const struct tp_pspec spec_list[] = {
  {"created", TP_P_RANGE, NULL, NULL},
  {"delivery_success", TP_P_BOOL, NULL, NULL},
  {"ending_before", TP_P_STRING, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  {"starting_after", TP_P_STRING, NULL, NULL},
  {"type", TP_P_STRING, NULL, NULL},
  {"types", TP_P_STRLIST, NULL, NULL},
  {NULL, TP_P_ANY, NULL, NULL},
};

/* GET /v1/events/{id} */
void tp_h_event_retrieve(struct tp_req *r)
{
  tp_retrieve(r, TP_K_EVENT, "event");
}

/* "*" matches any run of characters (Stripe uses it as "charge.*"). */
static bool glob_match(const char *pat, const char *s)
{
  for (; *pat; pat++, s++) {
    if (*pat == '*') {
      for (const char *t = s;; t++) {
        if (glob_match(pat + 1, t))
          return true;
        if (!*t)
          return false;
      }
    }
    if (*pat != *s)
      return false;
  }
  return *s == '\0';
}

static bool type_wanted(const json_t *ev, const char *type, const json_t *types)
{
  const char *t = json_string_value(json_object_get(ev, "type"));
  if (!t)
    return false;
  if (type)
    return glob_match(type, t);
  size_t i;
  const json_t *v;
  json_array_foreach(types, i, v) {
    if (glob_match(json_string_value(v), t))
      return true;
  }
  return false;
}

/* Walk the list from the cursor outward, page by page, keeping the first
 * `limit` matches; *more is set when another match (or unscanned rows) exist. */
static json_t *filtered(struct tp_req *r, const struct tp_list_query *q0, int limit, const char *type,
                        const json_t *types, bool *more)
{
  struct tp_list_query q = *q0;
  bool ascending = q.ending_before != NULL; /* ending_before walks toward newer events */
  char cursor[TP_ID_MAX];
  tp_scopy(cursor, sizeof cursor, ascending ? q.ending_before : (q.starting_after ? q.starting_after : ""));
  json_t *out = json_array();
  size_t scanned = 0;
  *more = false;
  for (;;) {
    q.limit = EVENTS_PAGE;
    q.starting_after = (!ascending && cursor[0]) ? cursor : NULL;
    q.ending_before = ascending ? cursor : NULL;
    bool page_more = false;
    json_t *page = tp_app.store.ops->list(tp_app.store.cls, &q, &page_more);
    if (!page) {
      json_decref(out);
      tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
      return NULL;
    }
    size_t n = json_array_size(page);
    /* Pages come newest first either way; ascending walks read them backwards. */
    for (size_t k = 0; k < n; k++) {
      json_t *ev = json_array_get(page, ascending ? n - 1 - k : k);
      if (!type_wanted(ev, type, types))
        continue;
      if (json_array_size(out) == (size_t)limit) {
        *more = true;
        break;
      }
      json_array_append(out, ev);
    }
    scanned += n;
    if (n > 0) {
      const json_t *edge = json_array_get(page, ascending ? 0 : n - 1);
      tp_scopy(cursor, sizeof cursor, json_string_value(json_object_get(edge, "id")));
    }
    json_decref(page);
    if (*more || !page_more || n == 0)
      break;
    if (scanned >= EVENTS_MAX_SCAN) {
      *more = true;
      break;
    }
  }
  if (ascending) {
    /* Collected oldest first; lists are newest first. */
    size_t n = json_array_size(out);
    json_t *rev = json_array();
    for (size_t k = 0; k < n; k++)
      json_array_append(rev, json_array_get(out, n - 1 - k));
    json_decref(out);
    out = rev;
  }
  return out;
}

/* GET /v1/events (type with "*" wildcards, or types[]; created; paging). */
void tp_h_event_list(struct tp_req *r)
{
  struct tp_params_error pe;
  if (tp_params_check(r->params, spec_list, &pe) != 0) {
    tp_reply_params_error(r, &pe, false);
    return;
  }
  const char *type = tp_pstr(r->params, "type");
  if (type && !*type)
    type = NULL;
  const json_t *types = json_object_get(r->params, "types");
  if (!json_is_array(types) || json_array_size(types) == 0)
    types = NULL;
  if (type && types) {
    tp_reply_error(r, TP_ERR_PARAMETERS_EXCLUSIVE, "types",
                   "You may only specify one of these parameters: type, types.");
    return;
  }
  if (types && json_array_size(types) > EVENTS_MAX_TYPES) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "types", "You may pass at most 20 types.");
    return;
  }
  struct tp_list_query q;
  memset(&q, 0, sizeof q);
  q.kind = TP_K_EVENT;
  q.merchant = r->merchant.id;
  q.created_gte = INT64_MIN;
  q.created_lte = INT64_MAX;
  if (!types && (!type || !strchr(type, '*'))) {
    if (type) {
      q.col_name = "type";
      q.col_value = type;
    }
    if (!tp_list_params(r, &q))
      return;
    tp_reply_list(r, &q, "/v1/events");
    return;
  }

  if (!tp_list_params(r, &q))
    return;
  int64_t limit = LIST_DEFAULT_LIMIT;
  if (tp_param_int(r->params, "limit", &limit) && (limit < 1 || limit > 100)) {
    tp_reply_error(r, TP_ERR_LIST_LIMIT_INVALID, "limit", NULL);
    return;
  }
  bool more = false;
  json_t *data = filtered(r, &q, (int)limit, type, types, &more);
  if (!data)
    return;
  json_t *env = tp_pack("{s:s, s:o, s:b, s:s}", "object", "list", "data", data, "has_more", more, "url",
                        "/v1/events");
  const json_t *ex = json_object_get(r->params, "expand");
  if (json_is_array(ex) && json_array_size(ex) > 0 && !tp_expand(r, env, NULL)) {
    json_decref(env);
    return;
  }
  tp_reply_json(r, 200, env);
}
