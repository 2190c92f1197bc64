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
#include "jparse.h"
#include "net/webhooks.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

/* Events read per request when filtering in memory; past it a page that
 * has a match ends early with has_more = true so the client can go on from
 * the last item (one without reads on). */
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

/* ---- pending_webhooks ---------------------------------------------------------
 * Stripe's count of the webhook endpoints that have not yet received an
 * event successfully. Stored events say 0 (the count changes after the
 * event is written); it is worked out when an event is read: an endpoint
 * counts when it has a pending delivery row for the event, or when it has
 * no row yet but is enabled, wants the event's type and is older than the
 * event (the webhook thread commits the row just after the event, see
 * src/net/webhooks.c). */
struct wh_eps {
  size_t n;
  struct {
    char id[TP_ID_MAX];
    bool enabled;
    json_t *events;        /* enabled_events */
  } e[TP_WH_MAX_PER_MERCHANT];
};

static void eps_load(const char *merchant, struct wh_eps *w)
{
  w->n = 0;
  json_t *rows = tp_store_query_take(&tp_app.store,
                                     "SELECT id, status, data FROM webhook_endpoints WHERE merchant=?1 "
                                     "ORDER BY id LIMIT ?2",
                                     tp_pack("[s, I]", merchant, (json_int_t)TP_WH_MAX_PER_MERCHANT));
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row) {
    const char *id = json_string_value(json_object_get(row, "id"));
    json_t *data = tp_json_loads(json_string_value(json_object_get(row, "data")) ?: "");
    json_t *events = json_object_get(data, "enabled_events");
    if (id && json_is_array(events) && w->n < TP_WH_MAX_PER_MERCHANT) {
      tp_scopy(w->e[w->n].id, TP_ID_MAX, id);
      const char *status = json_string_value(json_object_get(row, "status"));
      w->e[w->n].enabled = status && strcmp(status, "enabled") == 0;
      w->e[w->n].events = json_incref(events);
      w->n++;
    }
    json_decref(data);
  }
  json_decref(rows);
}

static void eps_free(struct wh_eps *w)
{
  for (size_t i = 0; i < w->n; i++)
    json_decref(w->e[i].events);
  w->n = 0;
}

static void set_pending(json_t *ev, const struct wh_eps *w)
{
  const char *id = json_string_value(json_object_get(ev, "id"));
  const char *type = json_string_value(json_object_get(ev, "type"));
  if (!id || !type)
    return;
  json_int_t pending = 0;
  for (size_t k = 0; k < w->n; k++)
    pending += tp_webhooks_owed(w->e[k].id, w->e[k].enabled, w->e[k].events, id, type);
  json_object_set_new(ev, "pending_webhooks", json_integer(pending));
}

static void set_pending_all(json_t *events, void *arg)
{
  const struct wh_eps *w = arg;
  size_t i;
  json_t *ev;
  if (w->n == 0)
    return;
  json_array_foreach(events, i, ev)
    set_pending(ev, w);
}

/* GET /v1/events/{id} */
void tp_h_event_retrieve(struct tp_req *r)
{
  struct wh_eps w;
  eps_load(r->merchant.id, &w);
  if (w.n == 0) { /* nothing pending: the stored text as it is */
    tp_retrieve(r, TP_K_EVENT, "event");
    return;
  }
  json_t *ev = tp_check_params(r, tp_spec_expand_only) ? tp_load_path(r, TP_K_EVENT, "event") : NULL;
  if (ev) {
    set_pending(ev, &w);
    tp_reply_json(r, 200, ev);
  }
  eps_free(&w);
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
    /* Past the bound the page ends early, but only on a match: an empty
     * page with has_more gives a client no item to go on from (stripe-node's
     * auto-paging throws on one), so a filter that has matched nothing
     * reads on. */
    if (scanned >= EVENTS_MAX_SCAN && json_array_size(out) > 0) {
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
    struct wh_eps w;
    eps_load(r->merchant.id, &w);
    tp_reply_list_fixed(r, &q, "/v1/events", set_pending_all, &w);
    eps_free(&w);
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
  struct wh_eps w;
  eps_load(r->merchant.id, &w);
  set_pending_all(data, &w);
  eps_free(&w);
  json_t *env = tp_pack("{s:s, s:o, s:b, s:s}", "object", "list", "data", data, "has_more", more, "url",
                        "/v1/events");
  const json_t *ex = json_object_get(r->params, "expand");
  if (json_is_array(ex) && json_array_size(ex) > 0 && !tp_expand(r, env, NULL)) {
    json_decref(env);
    return;
  }
  tp_reply_json(r, 200, env);
}
