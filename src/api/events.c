/* /v1/events: retrieve and list.
 *
 * An exact `type` filter is an indexed store query (events_t: merchant,
 * type, id). A wildcard type ("payment_intent.*") or a `types[]` list is
 * the merchant's event types that match it (found on that index, one seek
 * per distinct type), each listed the same way from the cursor, the pages
 * merged by id: the cost is that of the page, however rare the match. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"
#include "jpack.h"
#include "jparse.h"
#include "net/webhooks.h"
#include "sec/scopes.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Distinct event types of one merchant looked at for a wildcard or types[]
 * (Turnpike sends under fifty). */
#define EVENTS_MAX_KINDS 256
/* Events read per store page when a page is filtered in memory. */
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
  bool hide_reports; /* the key may not read the balance: its events are left out */
  size_t n;
  struct {
    char id[TP_ID_MAX];
    bool enabled;
    json_t *events;        /* enabled_events */
  } e[TP_WH_MAX_PER_MERCHANT];
};

static bool hides_reports(const struct tp_req *r);

static void eps_load(const struct tp_req *r, struct wh_eps *w)
{
  const char *merchant = r->merchant.id;
  w->n = 0;
  w->hide_reports = hides_reports(r);
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

/* Balance and payout events show the account's balance, which a key needs
 * reports:read for (/v1/balance): a restricted key or token without it
 * (payments:read reads events) does not see them. */
static bool hides_reports(const struct tp_req *r)
{
  return r->authed && !r->publishable && !(r->scopes & TP_SCOPE_REPORTS_READ);
}

static bool reports_type(const char *t)
{
  return tp_event_type_reports(t);
}

static bool reports_event(const json_t *ev)
{
  return reports_type(json_string_value(json_object_get(ev, "type")));
}

static void set_pending_all(json_t *events, void *arg)
{
  const struct wh_eps *w = arg;
  if (w->hide_reports)
    for (size_t i = json_array_size(events); i-- > 0;)
      if (reports_event(json_array_get(events, i)))
        json_array_remove(events, i);
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
  eps_load(r, &w);
  if (w.n == 0 && !hides_reports(r)) { /* nothing pending: the stored text as it is */
    tp_retrieve(r, TP_K_EVENT, "event");
    return;
  }
  json_t *ev = tp_check_params(r, tp_spec_expand_only) ? tp_load_path(r, TP_K_EVENT, "event") : NULL;
  if (ev && hides_reports(r) && reports_event(ev)) {
    json_decref(ev);
    ev = NULL;
    tp_reply_error(r, TP_ERR_PERMISSION_DENIED, NULL,
                   "The provided key does not have the required permissions to read this event (the account's "
                   "balance): it needs the `reports:read` scope.");
  }
  if (ev) {
    set_pending(ev, &w);
    if (tp_expand(r, ev, NULL))
      tp_reply_json(r, 200, ev);
    else
      json_decref(ev);
  }
  eps_free(&w);
}

/* "*" matches any run of characters (Stripe uses it as "charge.*").
 * Greedy with one backtrack point (the last star): at most len(pat) *
 * len(s) steps. A recursive matcher took C(len+k, k) steps for k stars
 * before a character that never matches: "type=" with fifteen stars held
 * every HTTP thread for minutes. */
static bool glob_match(const char *pat, const char *s)
{
  const char *star = NULL, *from = NULL;
  while (*s) {
    if (*pat == '*') {
      star = pat++;
      from = s;
    } else if (*pat == *s) {
      pat++;
      s++;
    } else if (star) {
      pat = star + 1;
      s = ++from;
    } else
      return false;
  }
  while (*pat == '*')
    pat++;
  return *pat == '\0';
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

/* The merchant's event types that type (a pattern) or types (patterns)
 * match, found on the index events_t by seeking past each in turn. NULL on
 * a store error. */
static json_t *matching_types(const char *merchant, const char *type, const json_t *types, bool hide_reports)
{
  json_t *out = json_array();
  char last[128] = "";
  for (int n = 0; n < EVENTS_MAX_KINDS; n++) {
    json_t *rows = tp_store_query_take(&tp_app.store,
                                       "SELECT type FROM events INDEXED BY events_t WHERE merchant=?1 AND type>?2 "
                                       "ORDER BY type LIMIT 1",
                                       tp_pack("[s, s]", merchant, last));
    if (!rows) {
      json_decref(out);
      return NULL;
    }
    const char *t = json_string_value(json_object_get(json_array_get(rows, 0), "type"));
    if (!t || strlen(t) >= sizeof last) {
      json_decref(rows);
      break;
    }
    tp_scopy(last, sizeof last, t);
    json_decref(rows);
    json_t *ev = tp_pack("{s:s}", "type", last);
    if (type_wanted(ev, type, types) && !(hide_reports && reports_event(ev)))
      json_array_append_new(out, json_string(last));
    json_decref(ev);
  }
  return out;
}

static int by_id_desc(const void *a, const void *b)
{
  const char *x = json_string_value(json_object_get(*(json_t *const *)a, "id"));
  const char *y = json_string_value(json_object_get(*(json_t *const *)b, "id"));
  return -strcmp(x ? x : "", y ? y : "");
}

/* The page of events of the matching types: each type's page from the
 * cursor (indexed), merged. A page is newest first; with ending_before it
 * holds the `limit` events just newer than the cursor, so the merge keeps
 * the oldest of them. *more when another match lies past the page. */
static json_t *filtered(struct tp_req *r, const struct tp_list_query *q0, int limit, const char *type,
                        const json_t *types, bool *more)
{
  *more = false;
  json_t *kinds = matching_types(q0->merchant, type, types, hides_reports(r));
  if (!kinds) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return NULL;
  }
  bool ascending = q0->ending_before != NULL;
  size_t n = 0, cap = 0, i;
  json_t **all = NULL;
  const json_t *k;
  json_array_foreach(kinds, i, k) {
    struct tp_list_query q = *q0;
    q.col_name = "type";
    q.col_value = json_string_value(k);
    q.limit = limit;
    bool page_more = false;
    json_t *page = tp_app.store.ops->list(tp_app.store.cls, &q, &page_more);
    if (!page) {
      for (size_t j = 0; j < n; j++)
        json_decref(all[j]);
      free(all);
      json_decref(kinds);
      tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
      return NULL;
    }
    *more = *more || page_more;
    size_t j;
    json_t *ev;
    json_array_foreach(page, j, ev) {
      if (n == cap) {
        cap = cap ? cap * 2 : 64;
        all = realloc(all, cap * sizeof *all);
        if (!all)
          abort();
      }
      all[n++] = json_incref(ev);
    }
    json_decref(page);
  }
  json_decref(kinds);
  if (n > 1)
    qsort(all, n, sizeof *all, by_id_desc);
  /* Newest first; ending_before keeps the last `limit` (nearest the cursor). */
  size_t from = ascending && n > (size_t)limit ? n - (size_t)limit : 0;
  size_t to = ascending || n <= (size_t)limit ? n : (size_t)limit;
  if (n > (size_t)limit)
    *more = true;
  json_t *out = json_array();
  for (size_t j = 0; j < n; j++) {
    if (j >= from && j < to)
      json_array_append(out, all[j]);
    json_decref(all[j]);
  }
  free(all);
  return out;
}

/* ---- delivery_success ---------------------------------------------------------
 * Stripe: false lists the events still pending or failed at some webhook
 * endpoint, true the others. The undelivered ones are read from the
 * endpoints' delivery rows, newest first from the cursor (the key
 * (endpoint, event) walked backwards): of each endpoint's
 * EVENTS_SCAN_DELIVERIES newest rows past the cursor, the pending or failed
 * ones, at most EVENTS_MAX_UNDELIVERED (the earliest-due rows of a backlog
 * were taken before, so the newest failures were the ones left out). An
 * event whose row the webhook thread has not yet written (it writes it
 * just after the event's commit) counts as delivered to false and as
 * pending to true (pending_webhooks). true reads the list's own pages, at
 * most EVENTS_DS_PAGES of them per request: with every event owed to a
 * dead endpoint it walked the whole history (8 s on 27,000 events, a whole
 * HTTP thread); past the budget (1,000 events) the page ends there (has_more if it holds
 * any event, to go on from its last). */
#define EVENTS_MAX_UNDELIVERED 10000
#define EVENTS_SCAN_DELIVERIES 20000
#define EVENTS_DS_PAGES 10

static int by_str_desc(const void *a, const void *b)
{
  return -strcmp(*(char *const *)a, *(char *const *)b);
}

/* How far down the walk of one endpoint's delivery rows went: all of them
 * below the cursor, or down to lo. */
struct ds_floor {
  bool all;
  char lo[TP_ID_MAX];
};

/* The merchant's undelivered event ids, newest first and distinct, in
 * *ids (n of them; the caller frees each and the array), and with floors
 * (one per endpoint) how far down each endpoint's rows were read. false on
 * a store error. */
static bool undelivered(const struct wh_eps *w, const char *before, json_int_t per_endpoint, json_int_t scan,
                        char ***ids, size_t *n, struct ds_floor *floors)
{
  *ids = NULL;
  *n = 0;
  size_t cap = 0;
  for (size_t k = 0; k < w->n; k++) {
    json_t *rows;
    if (floors) {
      /* The window and what is owed in it from one read (two reads saw
       * two windows when a delivery row came between them, and an event
       * at the first one's bottom was in neither). */
      rows = tp_store_query_take(&tp_app.store,
                                 "SELECT event, state FROM webhook_deliveries WHERE endpoint=?1 AND event < ?2 "
                                 "ORDER BY event DESC LIMIT ?3",
                                 tp_pack("[s, s, I]", w->e[k].id, before && *before ? before : "evt_~", scan));
      if (!rows)
        return false;
      size_t m = json_array_size(rows);
      floors[k].all = (json_int_t)m < scan;
      tp_scopy(floors[k].lo, sizeof floors[k].lo,
               m ? json_string_value(json_object_get(json_array_get(rows, m - 1), "event")) ?: "" : "");
      json_t *owed = json_array(); /* at most per_endpoint, newest first */
      for (size_t i = 0; i < m && (json_int_t)json_array_size(owed) < per_endpoint; i++) {
        json_t *row = json_array_get(rows, i);
        const char *st = json_string_value(json_object_get(row, "state"));
        if (st && (strcmp(st, "pending") == 0 || strcmp(st, "failed") == 0))
          json_array_append(owed, row);
      }
      json_decref(rows);
      rows = owed;
    } else {
      rows = tp_store_query_take(&tp_app.store,
                                 "SELECT event FROM (SELECT event, state FROM webhook_deliveries "
                                 "WHERE endpoint=?1 AND event < ?3 ORDER BY event DESC LIMIT ?4) "
                                 "WHERE state IN ('pending', 'failed') LIMIT ?2",
                                 tp_pack("[s, I, s, I]", w->e[k].id, per_endpoint,
                                         before && *before ? before : "evt_~", scan));
    }
    if (!rows)
      return false;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
      const char *ev = json_string_value(json_object_get(row, "event"));
      if (!ev)
        continue;
      if (*n == cap) {
        cap = cap ? cap * 2 : 64;
        *ids = realloc(*ids, cap * sizeof **ids);
        if (!*ids)
          abort();
      }
      (*ids)[(*n)++] = strdup(ev);
    }
    json_decref(rows);
  }
  if (*n > 1)
    qsort(*ids, *n, sizeof **ids, by_str_desc);
  size_t out = 0;
  for (size_t i = 0; i < *n; i++) {
    if (out > 0 && strcmp((*ids)[out - 1], (*ids)[i]) == 0) {
      free((*ids)[i]);
      continue;
    }
    (*ids)[out++] = (*ids)[i];
  }
  *n = out;
  return true;
}

static bool in_desc(char *const *ids, size_t n, const char *id)
{
  return id && n && bsearch(&id, ids, n, sizeof *ids, by_str_desc) != NULL;
}

/* Does ev (of this merchant) pass the list's filters: type or types, created? */
static bool event_in_list(const json_t *ev, const struct tp_list_query *q, const char *type, const json_t *types)
{
  json_int_t created = json_integer_value(json_object_get(ev, "created"));
  if (created < q->created_gte || created > q->created_lte)
    return false;
  return (!type && !types) || type_wanted(ev, type, types);
}

/* Whether event id, below what the walk of some endpoint's rows read (a
 * page of one type, an upper created bound or ending_before reach past the
 * newest rows), is still pending or failed there: looked up by the key.
 * Without it a delivery given up on (failed: not in pending_webhooks) was
 * listed as delivered. -1 on a store error. */
static int owed_below(const struct wh_eps *w, const struct ds_floor *floors, const char *id)
{
  for (size_t k = 0; k < w->n; k++) {
    if (floors[k].all || strcmp(id, floors[k].lo) >= 0)
      continue;
    json_t *rows = tp_store_query_take(&tp_app.store,
                                       "SELECT 1 AS owed FROM webhook_deliveries WHERE endpoint=?1 AND event=?2 "
                                       "AND state IN ('pending', 'failed')",
                                       tp_pack("[s, s]", w->e[k].id, id));
    if (!rows)
      return -1;
    size_t got = json_array_size(rows);
    json_decref(rows);
    if (got)
      return 1;
  }
  return 0;
}

/* A page of the events with delivery_success = ds. */
static json_t *by_delivery(struct tp_req *r, const struct tp_list_query *q0, int limit, const char *type,
                           const json_t *types, bool ds, const struct wh_eps *w, bool *more)
{
  char **ids = NULL;
  size_t n = 0;
  *more = false;
  bool ascending = q0->ending_before != NULL;
  /* false needs the newest limit + 1 of each endpoint past the cursor (their
   * merge is the page); true those among the events its pages can cover. */
  bool narrowed = type || types || json_object_get(r->params, "created"); /* some may not pass */
  json_int_t per = ds ? EVENTS_DS_PAGES * EVENTS_PAGE
                      : ascending || narrowed ? EVENTS_MAX_UNDELIVERED : limit + 1;
  json_int_t scan = ds ? EVENTS_DS_PAGES * EVENTS_PAGE : EVENTS_SCAN_DELIVERIES;
  struct ds_floor floors[TP_WH_MAX_PER_MERCHANT];
  if (!undelivered(w, ascending ? NULL : q0->starting_after, per, scan, &ids, &n, ds ? floors : NULL)) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return NULL;
  }
  json_t *out = json_array();
  if (!ds) {
    /* the undelivered ids, from the cursor outward */
    const char *cur = ascending ? q0->ending_before : q0->starting_after;
    for (size_t k = 0; k < n && !*more; k++) {
      const char *id = ids[ascending ? n - 1 - k : k];
      if (cur && (ascending ? strcmp(id, cur) <= 0 : strcmp(id, cur) >= 0))
        continue;
      json_t *ev = tp_store_get_json(&tp_app.store, TP_K_EVENT, q0->merchant, id);
      if (ev && event_in_list(ev, q0, type, types) && !(w->hide_reports && reports_event(ev))) {
        if (json_array_size(out) == (size_t)limit)
          *more = true;
        else
          json_array_append(out, ev);
      }
      json_decref(ev);
    }
  } else {
    /* the list's own pages, less the undelivered and the still pending */
    struct tp_list_query q = *q0;
    char cursor[TP_ID_MAX] = "";
    for (int pages = 0;; pages++) {
      if (pages == EVENTS_DS_PAGES) { /* the budget: the page ends here */
        *more = json_array_size(out) > 0;
        break;
      }
      bool page_more = false;
      json_t *page;
      if (type && !types && !strchr(type, '*')) {
        q.col_name = "type";
        q.col_value = type;
      }
      q.limit = EVENTS_PAGE;
      if (type && (types || strchr(type, '*')))
        page = filtered(r, &q, EVENTS_PAGE, type, NULL, &page_more);
      else if (types)
        page = filtered(r, &q, EVENTS_PAGE, NULL, types, &page_more);
      else
        page = tp_app.store.ops->list(tp_app.store.cls, &q, &page_more);
      if (!page) {
        json_decref(out);
        out = NULL;
        if (!types && !(type && strchr(type, '*')))
          tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
        break; /* filtered() replied */
      }
      set_pending_all(page, (void *)(uintptr_t)w);
      size_t m = json_array_size(page);
      for (size_t k = 0; k < m && !*more; k++) {
        json_t *ev = json_array_get(page, ascending ? m - 1 - k : k);
        const char *id = json_string_value(json_object_get(ev, "id"));
        if (in_desc(ids, n, id) || json_integer_value(json_object_get(ev, "pending_webhooks")) > 0)
          continue;
        int owed = owed_below(w, floors, id);
        if (owed < 0) {
          json_decref(page);
          json_decref(out);
          out = NULL;
          tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
          goto done;
        }
        if (owed)
          continue;
        if (json_array_size(out) == (size_t)limit)
          *more = true;
        else
          json_array_append(out, ev);
      }
      if (m > 0) {
        const json_t *edge = json_array_get(page, ascending ? 0 : m - 1);
        tp_scopy(cursor, sizeof cursor, json_string_value(json_object_get(edge, "id")));
        if (ascending)
          q.ending_before = cursor;
        else
          q.starting_after = cursor;
      }
      json_decref(page);
      if (*more || !page_more || m == 0)
        break;
    }
  }
done:
  for (size_t k = 0; k < n; k++)
    free(ids[k]);
  free(ids);
  if (out && ascending) {
    size_t m = json_array_size(out);
    json_t *rev = json_array();
    for (size_t k = 0; k < m; k++)
      json_array_append(rev, json_array_get(out, m - 1 - k));
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
  tp_list_query_init(&q, TP_K_EVENT, r->merchant.id);
  bool ds = false;
  bool by_ds = tp_param_bool(r->params, "delivery_success", &ds);
  /* A key that may not see the balance's events lists through the types it
   * may see (whole pages, as the SDKs' auto-pagination needs: a page
   * emptied after its read said has_more with no last id). */
  bool hide = hides_reports(r);
  if (hide && !type && !types)
    type = "*";
  if (!by_ds && !types && (!type || !strchr(type, '*')) && !(hide && type && reports_type(type))) {
    if (type) {
      q.col_name = "type";
      q.col_value = type;
    }
    if (!tp_list_params(r, &q))
      return;
    struct wh_eps w;
    eps_load(r, &w);
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
  struct wh_eps w;
  eps_load(r, &w);
  json_t *data = by_ds ? by_delivery(r, &q, (int)limit, type, types, ds, &w, &more)
                       : filtered(r, &q, (int)limit, type, types, &more);
  if (!data) {
    eps_free(&w);
    return;
  }
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
