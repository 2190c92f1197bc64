/* /v1/webhook_endpoints: create, retrieve, update, delete, list (Stripe's
 * API), plus Turnpike's delivery attempts list and manual resend.
 *
 * The endpoint object is stored without its secret (data column); the
 * whsec_ secret is stored sealed and shown once, in the create response.
 * The status column is the truth for "status" (the delivery thread may
 * disable an endpoint without touching data). Every commit tells the
 * delivery thread to reload (tp_webhooks_changed). */
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"
#include "jpack.h"
#include "jparse.h"
#include "net/webhooks.h"
#include "sec/scopes.h"
#include "util.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define WE_DESCRIPTION_MAX 5000
#define WE_LIST_URL "/v1/webhook_endpoints"

#define S(n) {n, TP_P_STRING, NULL, NULL}
#define END {NULL, TP_P_ANY, NULL, NULL}

static const struct tp_pspec spec_create[] = {
  S("api_version"),
  {"connect", TP_P_BOOL, NULL, NULL},
  S("description"),
  {"enabled_events", TP_P_STRLIST, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  S("url"),
  END,
};

static const struct tp_pspec spec_update[] = {
  S("description"),
  {"disabled", TP_P_BOOL, NULL, NULL},
  {"enabled_events", TP_P_STRLIST, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"metadata", TP_P_METADATA, NULL, NULL},
  S("url"),
  END,
};

static const struct tp_pspec spec_list[] = {
  S("ending_before"),
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  S("starting_after"),
  END,
};

static const struct tp_pspec spec_deliveries[] = {
  S("ending_before"),
  S("event"),
  {"limit", TP_P_INT, NULL, NULL},
  S("starting_after"),
  END,
};

/* ---- helpers ------------------------------------------------------------ */
static json_t *query(const char *sql, json_t *args)
{
  json_t *rows = tp_store_query(&tp_app.store, sql, args);
  json_decref(args);
  return rows;
}

static void cs_sql(struct tp_cs *cs, const char *sql, json_t *args, int min_changes)
{
  tp_cs_sql(cs, sql, args, min_changes);
  json_decref(args);
}

/* Absent, null or "": not given, or given to clear. */
static bool absent_or_unset(const json_t *v)
{
  return !v || tp_unset(v);
}

/* The endpoint object of a stored row, status from its column. */
static json_t *endpoint_of_row(const json_t *row)
{
  json_t *o = json_loads(json_string_value(json_object_get(row, "data")) ?: "", 0, NULL);
  if (o)
    json_object_set(o, "status", json_object_get(row, "status"));
  return o;
}

/* Load an endpoint of this merchant; replies 404 and returns NULL if none. */
static json_t *endpoint_load(struct tp_req *r, const char *id)
{
  json_t *rows = query("SELECT data, status FROM webhook_endpoints WHERE id=?1 AND merchant=?2",
                       tp_pack("[s, s]", id, r->merchant.id));
  if (!rows) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return NULL;
  }
  json_t *o = json_array_size(rows) ? endpoint_of_row(json_array_get(rows, 0)) : NULL;
  json_decref(rows);
  if (!o) {
    tp_reply_missing(r, "webhook endpoint", id, "id");
  }
  return o;
}

/* An absolute http(s) URL with a host, no whitespace or control bytes,
 * that libcurl's own parser accepts; *denied when private_networks = deny
 * refuses its host (tp_webhooks_host_denied). */
static bool url_ok(const char *url, bool *denied)
{
  *denied = false;
  size_t n = strlen(url);
  if (n == 0 || n > TP_WH_URL_MAX)
    return false;
  if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
    return false;
  /* nor a backslash: a browser (WHATWG) reads http://a\@b/ as host a,
   * libcurl as host b, so the URL shown would not be the one called */
  for (const char *p = url; *p; p++)
    if ((unsigned char)*p <= ' ' || (unsigned char)*p == 0x7f || *p == '\\')
      return false;
  /* libcurl forgives "https:///path"; an endpoint needs an authority. */
  const char *auth = strstr(url, "://") + 3;
  if (*auth == '\0' || strchr("/?#@:", *auth))
    return false;
  CURLU *h = curl_url();
  if (!h)
    return false;
  bool ok = curl_url_set(h, CURLUPART_URL, url, 0) == CURLUE_OK;
  char *host = NULL;
  ok = ok && curl_url_get(h, CURLUPART_HOST, &host, 0) == CURLUE_OK && host && *host;
  /* The deliveries' libcurl has no IDN: a host of other than ASCII was
   * taken here and failed every delivery ("bad/illegal format") until the
   * endpoint was disabled (review, session 39); its punycode (xn--) form is
   * the one to give. */
  for (const char *p = host; ok && *p; p++)
    if ((unsigned char)*p >= 0x80)
      ok = false;
  char *port = NULL; /* port 0 names no endpoint */
  if (ok && curl_url_get(h, CURLUPART_PORT, &port, 0) == CURLUE_OK && port && strtol(port, NULL, 10) == 0)
    ok = false;
  curl_free(port);
  *denied = ok && tp_webhooks_host_denied(host);
  curl_free(host);
  curl_url_cleanup(h);
  return ok;
}

static bool check_url(struct tp_req *r, const json_t *v)
{
  const char *url = json_string_value(v);
  bool denied = false;
  if (!url || !url_ok(url, &denied)) {
    tp_reply_error(r, TP_ERR_WEBHOOK_ENDPOINT_URL_INVALID, "url",
                   "Invalid URL: must be an absolute http or https URL with a host (an internationalised one in "
                   "its xn-- form), at most 2048 characters");
    return false;
  }
  if (denied) {
    tp_reply_error(r, TP_ERR_WEBHOOK_ENDPOINT_URL_INVALID, "url",
                   "Invalid URL: webhook endpoints must be publicly accessible; this host is a local, private or "
                   "reserved address");
    return false;
  }
  return true;
}

/* The balance's events go only where a key that may read the balance
 * sends them: an endpoint is the key's own reading of events (as the
 * stream and /v1/events are). So enabled_events with "*", balance.* or
 * payout.*, and any change to or reading of the deliveries of an endpoint
 * that has them, need reports:read (false, answered, when the key lacks it). */
static bool reports_fit(struct tp_req *r, const json_t *events)
{
  size_t i;
  const json_t *e;
  json_array_foreach(events, i, e)
  {
    const char *t = json_string_value(e);
    if (t && (strcmp(t, "*") == 0 || tp_event_type_reports(t)))
      return tp_req_require_scope(r, TP_SCOPE_REPORTS_READ);
  }
  return true;
}

/* enabled_events: a non-empty list of known types or "*". */
static bool check_events(struct tp_req *r, const json_t *v)
{
  if (!json_is_array(v) || json_array_size(v) == 0) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "enabled_events", NULL);
    return false;
  }
  size_t i;
  const json_t *e;
  json_array_foreach(v, i, e)
  {
    const char *t = json_string_value(e);
    if (!t || (strcmp(t, "*") != 0 && !tp_webhooks_event_type_known(t))) {
      char param[40], msg[200];
      snprintf(param, sizeof param, "enabled_events[%zu]", i);
      snprintf(msg, sizeof msg, "Invalid enabled_events[%zu]: unknown event type '%.60s'", i, t ? t : "");
      tp_reply_error(r, TP_ERR_EVENT_TYPE_UNKNOWN, param, msg);
      return false;
    }
  }
  return reports_fit(r, v);
}

static bool check_description(struct tp_req *r, const json_t *v)
{
  if (v && tp_utf8_chars(json_string_value(v)) > WE_DESCRIPTION_MAX) {
    tp_reply_error(r, TP_ERR_PARAMETER_TOO_LONG, "description", NULL);
    return false;
  }
  return true;
}

/* The object lock a write holds: the endpoint, or for a create the
 * merchant's endpoint set (so the per-merchant limit holds). */
static void lock_key(const struct tp_req *r, char out[TP_ID_MAX + 16])
{
  if (r->path_id[0])
    snprintf(out, TP_ID_MAX + 16, "%s", r->path_id);
  else
    snprintf(out, TP_ID_MAX + 16, "we_create:%s", r->merchant.id);
}

static void unlock(const struct tp_req *r)
{
  char key[TP_ID_MAX + 16];
  lock_key(r, key);
  tp_lock_release(key);
}

/* Commit, tell the delivery thread, then send the reply already set. */
static void commit_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct tp_req *r = arg;
  if (rc != 0)
    tp_reply_commit_failed(r, rc);
  else
    tp_webhooks_changed(r->path_id);
  unlock(r);
  tp_req_resume(r);
}

/* The lock (the endpoint id, or the merchant for create) is held by the caller. */
static void commit(struct tp_req *r, struct tp_cs *cs)
{
  tp_idem_record(r, cs);
  tp_cs_on_done(cs, commit_done, r);
  tp_req_suspend(r);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    tp_reply_error(r, TP_ERR_OVERLOADED, NULL, NULL);
    unlock(r);
    tp_req_resume(r);
  }
}

static bool lock(struct tp_req *r)
{
  char key[TP_ID_MAX + 16];
  lock_key(r, key);
  if (tp_lock_try(key))
    return true;
  tp_reply_error(r, TP_ERR_LOCK_TIMEOUT, NULL, NULL);
  return false;
}

/* ---- endpoints ------------------------------------------------------------ */
/* POST /v1/webhook_endpoints */
void tp_h_we_create(struct tp_req *r)
{
  if (!tp_check_params(r, spec_create))
    return;
  const json_t *p = r->params;
  /* connect=true: events of connected accounts, which Turnpike has none of;
   * accepted, the endpoint would get this account's own events instead. */
  bool connect = false;
  if (tp_param_bool(p, "connect", &connect) && connect) {
    char msg[200];
    snprintf(msg, sizeof msg, "Parameter not supported by Turnpike: connect (%s)", tp_why_connect[0]);
    tp_reply_error(r, TP_ERR_PARAMETER_UNSUPPORTED, "connect", msg);
    return;
  }
  if (absent_or_unset(json_object_get(p, "url"))) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "url", NULL);
    return;
  }
  if (!check_url(r, json_object_get(p, "url")) || !check_events(r, json_object_get(p, "enabled_events")) ||
      !check_description(r, json_object_get(p, "description")))
    return;
  const char *api_version = tp_pstr(p, "api_version");
  if (api_version && !tp_api_version_ok(api_version)) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "api_version", NULL);
    return;
  }
  /* Serialize creates per merchant so the limit holds. */
  if (!lock(r))
    return;
  json_t *cnt = query("SELECT COUNT(*) AS n FROM webhook_endpoints WHERE merchant=?1",
                      tp_pack("[s]", r->merchant.id));
  json_int_t n = json_integer_value(json_object_get(json_array_get(cnt, 0), "n"));
  json_decref(cnt);
  if (!cnt || n >= TP_WH_MAX_PER_MERCHANT) {
    unlock(r);
    tp_reply_error(r, cnt ? TP_ERR_WEBHOOK_ENDPOINT_LIMIT_REACHED : TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return;
  }

  char id[TP_ID_MAX], secret[TP_WH_SECRET_MAX], sealed[TP_WH_SEALED_MAX];
  tp_id_new(id, "we");
  tp_webhooks_new_secret(secret);
  if (tp_webhooks_seal_secret(id, secret, sealed) != 0) {
    unlock(r);
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  int64_t created = tp_now();
  const json_t *desc = json_object_get(p, "description");
  json_t *ep = tp_pack("{s:s, s:s, s:o, s:n, s:I, s:o, s:O, s:b, s:{}, s:s, s:s}", "id", id, "object",
                       "webhook_endpoint", "api_version", api_version ? json_string(api_version) : json_null(),
                       "application", "created", (json_int_t)created, "description",
                       absent_or_unset(desc) ? json_null() : json_string(json_string_value(desc)), "enabled_events",
                       json_object_get(p, "enabled_events"), "livemode", 0, "metadata", "status", "enabled",
                       "url", json_string_value(json_object_get(p, "url")));
  if (!ep)
    abort();
  tp_metadata_apply(ep, json_object_get(p, "metadata") ? json_object_get(p, "metadata") : json_null());
  char *data = json_dumps(ep, JSON_COMPACT);
  struct tp_cs *cs = tp_cs_new();
  char floor[TP_ID_MAX + 8];
  snprintf(floor, sizeof floor, "evt_%s", id + 3);
  cs_sql(cs,
         "INSERT INTO webhook_endpoints(id, merchant, created, status, secret, failing_since, scan_floor, data) "
         "VALUES(?1, ?2, ?3, 'enabled', ?4, NULL, ?5, ?6)",
         tp_pack("[s, s, I, s, s, s]", id, r->merchant.id, (json_int_t)created, sealed, floor, data), 1);
  free(data);
  /* Only this response ever shows the secret. */
  json_object_set_new(ep, "secret", json_string(secret));
  tp_reply_json(r, 200, ep);
  commit(r, cs);
}

/* GET /v1/webhook_endpoints/{id} */
void tp_h_we_retrieve(struct tp_req *r)
{
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  json_t *o = endpoint_load(r, r->path_id);
  if (o)
    tp_reply_json(r, 200, o);
}

/* Rows for the endpoint's events that have none yet, from its creation on
 * (all that committed before this change set: it runs in the writer, in
 * order), of the types events (a JSON array, "*" for all) wants: the
 * webhooks thread adds each event's rows a few ms after its commit, and
 * the scan only above the endpoint's floor and only while it is enabled,
 * so a change of filter or status in between would lose them. Runs only
 * while the endpoint is enabled (put it before a status change in cs). */
static void catch_up(struct tp_cs *cs, const struct tp_req *r, const json_t *events)
{
  char floor0[TP_ID_MAX];
  const char *dash = strchr(r->path_id, '_');
  snprintf(floor0, sizeof floor0, "evt_%s", dash ? dash + 1 : "");
  char *ev = json_dumps(events, JSON_COMPACT);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  json_int_t t = (json_int_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  cs_sql(cs,
         "INSERT INTO webhook_deliveries(endpoint, event, merchant, state, attempts, next_at, created) "
         "SELECT ?1, e.id, e.merchant, 'pending', 0, ?4, ?4 FROM events e WHERE e.merchant = ?2 AND "
         "e.id > max(?3, coalesce((SELECT scan_floor FROM webhook_endpoints WHERE id = ?1), '')) "
         "AND EXISTS (SELECT 1 FROM json_each(?5) j WHERE j.value = '*' OR j.value = e.type) AND "
         "EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.id = ?1 AND w.status = 'enabled') "
         "ON CONFLICT(endpoint, event) DO NOTHING",
         tp_pack("[s, s, s, I, s]", r->path_id, r->merchant.id, floor0, t, ev ? ev : "[]"), 0);
  free(ev);
}

/* POST /v1/webhook_endpoints/{id} */
void tp_h_we_update(struct tp_req *r)
{
  if (!tp_check_params(r, spec_update))
    return;
  const json_t *p = r->params;
  const json_t *v;
  if ((v = json_object_get(p, "url")) && !check_url(r, v))
    return;
  if ((v = json_object_get(p, "enabled_events")) && !check_events(r, v))
    return;
  if (!check_description(r, json_object_get(p, "description")))
    return;
  if (!lock(r))
    return;
  json_t *ep = endpoint_load(r, r->path_id);
  if (!ep) {
    unlock(r);
    return;
  }
  /* Pointing such an endpoint elsewhere, enabling it again or changing
   * what it takes is reading its events (a key without reports:read
   * redirected a "*" endpoint; narrowed first, its pending deliveries of
   * the old list still went to the new URL). Pausing it, its description
   * and metadata are not, and a key that may delete it may do those
   * (every update was refused: such a key could only delete it). */
  bool enables = json_object_get(p, "disabled") && !json_is_true(json_object_get(p, "disabled")) &&
                 strcmp(json_string_value(json_object_get(ep, "status")) ?: "", "enabled") != 0;
  if ((json_object_get(p, "url") || enables || json_object_get(p, "enabled_events")) &&
      !reports_fit(r, json_object_get(ep, "enabled_events"))) {
    json_decref(ep);
    unlock(r);
    return;
  }
  bool floor_now = false;
  json_t *events_before = json_deep_copy(json_object_get(ep, "enabled_events"));
  if ((v = json_object_get(p, "url")))
    json_object_set_new(ep, "url", json_string(json_string_value(v)));
  if ((v = json_object_get(p, "enabled_events")))
    json_object_set(ep, "enabled_events", (json_t *)(uintptr_t)v);
  if ((v = json_object_get(p, "description")))
    json_object_set_new(ep, "description", absent_or_unset(v) ? json_null() : json_string(json_string_value(v)));
  if ((v = json_object_get(p, "metadata")) && !tp_metadata_update(r, ep, v)) {
    json_decref(events_before);
    json_decref(ep);
    unlock(r);
    return;
  }
  struct tp_cs *cs = tp_cs_new();
  bool was_enabled = strcmp(json_string_value(json_object_get(ep, "status")) ?: "", "enabled") == 0;
  bool disabling = was_enabled && json_is_true(json_object_get(p, "disabled"));
  if (disabling) {
    /* The events committed while it was enabled keep their deliveries
     * (retried once it is enabled again, as Stripe does): those with no row
     * yet get one now, before the status changes in this commit, or they
     * were never delivered (the scan skips a disabled endpoint, and its
     * floor moves when it is enabled again). */
    catch_up(cs, r, events_before);
  }
  if ((v = json_object_get(p, "disabled"))) {
    const char *st = json_is_true(v) ? "disabled" : "enabled";
    bool was_disabled = strcmp(json_string_value(json_object_get(ep, "status")) ?: "", "disabled") == 0;
    json_object_set_new(ep, "status", json_string(st));
    /* Enabling starts a fresh failure window. */
    cs_sql(cs, "UPDATE webhook_endpoints SET status=?2, failing_since=NULL WHERE id=?1",
           tp_pack("[s, s]", r->path_id, st), 1);
    if (was_disabled && !json_is_true(v)) {
      floor_now = true; /* like Stripe, events of the disabled period are not delivered */
      /* Stripe: "If your endpoint has been disabled or deleted when we
       * attempt a retry, future retries of that event are prevented";
       * only a retry not yet due when it is enabled again goes on. A
       * delivery never tried (attempts 0: an event committed just before
       * the disable) is not a retry, and is still made. */
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      int64_t now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
      /* their last attempts no longer name a retry (next_retry_at: null
       * after the last attempt, docs/webhooks.md) */
      cs_sql(cs,
             "UPDATE webhook_attempts SET next_retry_at=NULL WHERE endpoint=?1 AND next_retry_at IS NOT NULL AND "
             "event IN (SELECT event FROM webhook_deliveries WHERE endpoint=?1 AND state='pending' AND attempts > 0 "
             "AND next_at <= ?2) AND attempt = (SELECT max(a.attempt) FROM webhook_attempts a WHERE "
             "a.endpoint=?1 AND a.event=webhook_attempts.event)",
             tp_pack("[s, I]", r->path_id, (json_int_t)now_ms), 0);
      cs_sql(cs,
             "UPDATE webhook_deliveries SET state='failed' WHERE endpoint=?1 AND state='pending' AND attempts > 0 "
             "AND next_at <= ?2",
             tp_pack("[s, I]", r->path_id, (json_int_t)now_ms), 0);
    }
  }
  /* A new enabled_events applies to events from now on: the scan, which
   * reads events since the floor with the endpoint's current filter, would
   * otherwise deliver the last minute's events of a newly wanted type. */
  bool refilter = (v = json_object_get(p, "enabled_events")) && !json_equal(v, events_before);
  if (refilter)
    floor_now = true;
  if (floor_now) {
    char now_id[TP_ID_MAX], floor[TP_ID_MAX + 8];
    tp_id_new(now_id, "evt");
    tp_scopy(floor, sizeof floor, now_id);
    if (refilter && was_enabled && !disabling)
      catch_up(cs, r, events_before);
    cs_sql(cs, "UPDATE webhook_endpoints SET scan_floor=?2 WHERE id=?1", tp_pack("[s, s]", r->path_id, floor), 1);
  }
  json_decref(events_before);
  char *data = json_dumps(ep, JSON_COMPACT);
  cs_sql(cs, "UPDATE webhook_endpoints SET data=?2 WHERE id=?1", tp_pack("[s, s]", r->path_id, data), 1);
  free(data);
  tp_reply_json(r, 200, ep);
  commit(r, cs);
}

/* DELETE /v1/webhook_endpoints/{id} */
void tp_h_we_delete(struct tp_req *r)
{
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  if (!lock(r))
    return;
  json_t *ep = endpoint_load(r, r->path_id);
  if (!ep) {
    unlock(r);
    return;
  }
  json_decref(ep);
  struct tp_cs *cs = tp_cs_new();
  cs_sql(cs, "DELETE FROM webhook_endpoints WHERE id=?1 AND merchant=?2", tp_pack("[s, s]", r->path_id,
                                                                                     r->merchant.id), 1);
  cs_sql(cs, "DELETE FROM webhook_deliveries WHERE endpoint=?1", tp_pack("[s]", r->path_id), 0);
  cs_sql(cs, "DELETE FROM webhook_attempts WHERE endpoint=?1", tp_pack("[s]", r->path_id), 0);
  tp_reply_json(r, 200, tp_pack("{s:s, s:s, s:b}", "id", r->path_id, "object", "webhook_endpoint", "deleted", 1));
  commit(r, cs);
}

/* One page of a table keyed by time-ordered ids, Stripe cursor semantics:
 * newest first; starting_after walks older, ending_before newer. `where`
 * holds ?1..?nargs; the cursor binds next. Replies and returns. */
static void reply_page(struct tp_req *r, const char *table, const char *cols, const char *where, json_t *args,
                       const char *url, const char *what, json_t *(*row_fn)(const json_t *row))
{
  int64_t limit = 10;
  const char *after, *before;
  if (!tp_param_limit(r, &limit) || !tp_param_cursors(r, &after, &before)) {
    json_decref(args);
    return;
  }
  const char *cursor = after ? after : before;
  size_t nargs = json_array_size(args);
  char sql[768];
  if (cursor) {
    snprintf(sql, sizeof sql, "SELECT 1 AS x FROM %s WHERE %s AND id=?%zu", table, where, nargs + 1);
    json_array_append_new(args, json_string(cursor));
    json_t *rows = tp_store_query(&tp_app.store, sql, args);
    bool found = json_array_size(rows) > 0;
    json_decref(rows);
    if (!found) {
      json_decref(args);
      char msg[200];
      snprintf(msg, sizeof msg, "No such %s: '%.64s'", what, cursor);
      tp_reply_error(r, TP_ERR_PAGINATION_CURSOR_INVALID, after ? "starting_after" : "ending_before", msg);
      return;
    }
  }
  json_array_append_new(args, json_integer(limit + 1));
  if (cursor)
    snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE %s AND id %s ?%zu ORDER BY id %s LIMIT ?%zu", cols, table,
             where, after ? "<" : ">", nargs + 1, after ? "DESC" : "ASC", nargs + 2);
  else
    snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE %s ORDER BY id DESC LIMIT ?%zu", cols, table, where,
             nargs + 1);
  json_t *rows = tp_store_query(&tp_app.store, sql, args);
  json_decref(args);
  if (!rows) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return;
  }
  size_t n = json_array_size(rows);
  bool more = n > (size_t)limit;
  if (more)
    n = (size_t)limit;
  json_t *data = json_array();
  for (size_t k = 0; k < n; k++) {
    /* ending_before reads oldest first; lists are newest first. */
    size_t idx = before ? n - 1 - k : k;
    json_t *o = row_fn(json_array_get(rows, idx));
    if (o)
      json_array_append_new(data, o);
  }
  json_decref(rows);
  tp_reply_json(r, 200, tp_pack("{s:s, s:s, s:b, s:o}", "object", "list", "url", url, "has_more", more, "data",
                                data));
}

/* GET /v1/webhook_endpoints */
void tp_h_we_list(struct tp_req *r)
{
  if (!tp_check_params(r, spec_list))
    return;
  reply_page(r, "webhook_endpoints", "data, status", "merchant=?1", tp_pack("[s]", r->merchant.id), WE_LIST_URL,
             "webhook_endpoint", endpoint_of_row);
}

/* ---- deliveries (Turnpike) ---------------------------------------------- */
static json_t *attempt_of_row(const json_t *row)
{
  json_t *o = json_deep_copy(row);
  json_object_set_new(o, "object", json_string("webhook_delivery_attempt"));
  json_object_set(o, "webhook_endpoint", json_object_get(row, "endpoint"));
  json_object_del(o, "endpoint");
  return o;
}

/* GET /v1/webhook_endpoints/{id}/deliveries */
void tp_h_we_deliveries(struct tp_req *r)
{
  if (!tp_check_params(r, spec_deliveries))
    return;
  json_t *ep = endpoint_load(r, r->path_id);
  if (!ep)
    return;
  bool fit = reports_fit(r, json_object_get(ep, "enabled_events"));
  json_decref(ep);
  if (!fit)
    return;
  char url[160];
  snprintf(url, sizeof url, WE_LIST_URL "/%s/deliveries", r->path_id);
  const char *event = tp_pstr(r->params, "event");
  const char *cols = "id, endpoint, event, attempt, status_code, outcome, error, duration_ms, created, next_retry_at";
  if (event && *event) /* named: SQLite would take (endpoint, id) for the ORDER BY and walk */
    reply_page(r, "webhook_attempts INDEXED BY webhook_attempts_ev", cols, "endpoint=?1 AND event=?2",
               tp_pack("[s, s]", r->path_id, event), url, "webhook_delivery_attempt", attempt_of_row);
  else
    reply_page(r, "webhook_attempts", cols, "endpoint=?1", tp_pack("[s]", r->path_id), url,
               "webhook_delivery_attempt", attempt_of_row);
}

/* POST /v1/webhook_endpoints/{id}/deliveries/{event}/resend: deliver the
 * event again now (a new attempt, whatever happened before). */
void tp_h_we_resend(struct tp_req *r)
{
  if (!tp_check_params(r, tp_spec_expand_only))
    return;
  json_t *ep = endpoint_load(r, r->path_id);
  if (!ep)
    return;
  bool enabled = strcmp(json_string_value(json_object_get(ep, "status")) ?: "", "enabled") == 0;
  if (!enabled) {
    json_decref(ep);
    tp_reply_error(r, TP_ERR_WEBHOOK_ENDPOINT_DISABLED, "id", NULL);
    return;
  }
  char *ev = tp_store_get(&tp_app.store, TP_K_EVENT, r->merchant.id, r->path_sub);
  if (!ev) {
    json_decref(ep);
    tp_reply_missing(r, "event", r->path_sub, "event");
    return;
  }
  json_t *evj = tp_json_loadb(ev, strlen(ev));
  free(ev);
  const char *type = json_string_value(json_object_get(evj, "type"));
  bool reports = tp_event_type_reports(type);
  if (reports && !tp_req_require_scope(r, TP_SCOPE_REPORTS_READ)) {
    json_decref(evj);
    json_decref(ep);
    return;
  }
  /* Delivered again, it is one the endpoint was sent (a delivery row) or
   * would be now (newer than it, a type it selects): any other went out
   * signed to an endpoint that never asked for it (review, session 39). */
  bool its = type && tp_webhooks_endpoint_wants(r->path_id, json_object_get(ep, "enabled_events"), r->path_sub, type);
  json_decref(evj);
  json_decref(ep);
  if (!its) {
    json_t *rows = tp_store_query_take(&tp_app.store,
                                       "SELECT 1 AS x FROM webhook_deliveries WHERE endpoint = ?1 AND event = ?2",
                                       tp_pack("[s, s]", r->path_id, r->path_sub));
    its = json_array_size(rows) > 0;
    if (!rows) {
      tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
      return;
    }
    json_decref(rows);
  }
  if (!its) {
    tp_reply_error(r, TP_ERR_WEBHOOK_EVENT_NOT_FOR_ENDPOINT, "event", NULL);
    return;
  }
  if (!lock(r))
    return;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t t = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  struct tp_cs *cs = tp_cs_new();
  cs_sql(cs,
         "INSERT INTO webhook_deliveries(endpoint, event, merchant, state, attempts, next_at, created) "
         "VALUES(?1, ?2, ?3, 'pending', 0, ?4, ?4) ON CONFLICT(endpoint, event) DO UPDATE SET state='pending', "
         "next_at=excluded.next_at, created=excluded.created",
         tp_pack("[s, s, s, I]", r->path_id, r->path_sub, r->merchant.id, (json_int_t)t), 1);
  tp_reply_json(r, 200, tp_pack("{s:s, s:s, s:s, s:s, s:I}", "object", "webhook_delivery", "webhook_endpoint",
                                r->path_id, "event", r->path_sub, "status", "pending", "next_retry_at",
                                (json_int_t)(t / 1000)));
  commit(r, cs);
}
