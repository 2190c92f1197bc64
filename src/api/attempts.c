/* GET /v1/payment_intents/{id}/attempts (Turnpike extension): every processor
 * call made for a PaymentIntent, oldest first, with the router's reason for
 * choosing the processor (attempts.route, compact JSON). */
#include "api/handlers.h"
#include "api/objects.h"
#include "core/payflow.h"
#include "jpack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ATTEMPTS_LIST_MAX 100 /* also the default page: calls per payment are few (deadline x backoff) */

static const struct tp_pspec spec_attempts[] = {
  {"limit", TP_P_INT, NULL, NULL},
  {"starting_after", TP_P_STRING, NULL, NULL},
  {"ending_before", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

/* Pages as every list does (limit 1..100, one cursor, an attempt of this
 * PaymentIntent), oldest first; has_more says whether a page follows in
 * the direction read (after the last for starting_after, before the first
 * for ending_before). */
void tp_h_pi_attempts(struct tp_req *r)
{
  if (!tp_check_params(r, spec_attempts))
    return;
  int64_t limit = ATTEMPTS_LIST_MAX;
  const char *after, *before;
  if (!tp_param_limit(r, &limit) || !tp_param_cursors(r, &after, &before))
    return;
  json_t *pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, r->path_id);
  if (!pi) {
    tp_reply_missing(r, "payment_intent", r->path_id, "intent");
    return;
  }
  json_decref(pi);
  const char *cursor = after ? after : before;
  json_int_t at = 0;
  if (cursor) { /* the cursor's place in (created, id) order */
    json_t *args = tp_pack("[s, s, s]", r->merchant.id, r->path_id, cursor);
    json_t *rows = tp_store_query(&tp_app.store,
                                  "SELECT created FROM attempts WHERE merchant = ?1 AND payment_intent = ?2 AND id = ?3",
                                  args);
    json_decref(args);
    if (!rows) {
      tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
      return;
    }
    bool found = json_array_size(rows) == 1;
    at = json_integer_value(json_object_get(json_array_get(rows, 0), "created"));
    json_decref(rows);
    if (!found) {
      char msg[200];
      snprintf(msg, sizeof msg, "No such turnpike.attempt: '%.64s'", cursor);
      tp_reply_error(r, TP_ERR_PAGINATION_CURSOR_INVALID, after ? "starting_after" : "ending_before", msg);
      return;
    }
  }
  json_t *args = cursor ? tp_pack("[s, s, I, I, s]", r->merchant.id, r->path_id, (json_int_t)limit + 1, at, cursor)
                        : tp_pack("[s, s, I]", r->merchant.id, r->path_id, (json_int_t)limit + 1);
  const char *sql =
    before ? "SELECT id, processor, kind, state, result_code, processor_ref, route, amount, currency, created FROM attempts "
             "WHERE merchant = ?1 AND payment_intent = ?2 AND (created < ?4 OR (created = ?4 AND id < ?5)) "
             "ORDER BY created DESC, id DESC LIMIT ?3"
    : after ? "SELECT id, processor, kind, state, result_code, processor_ref, route, amount, currency, created FROM attempts "
              "WHERE merchant = ?1 AND payment_intent = ?2 AND (created > ?4 OR (created = ?4 AND id > ?5)) "
              "ORDER BY created, id LIMIT ?3"
            : "SELECT id, processor, kind, state, result_code, processor_ref, route, amount, currency, created FROM attempts "
              "WHERE merchant = ?1 AND payment_intent = ?2 ORDER BY created, id LIMIT ?3";
  json_t *rows = tp_store_query(&tp_app.store, sql, args);
  json_decref(args);
  if (!rows) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return;
  }
  bool more = json_array_size(rows) > (size_t)limit;
  if (more)
    json_array_remove(rows, (size_t)limit);
  json_t *data = json_array();
  size_t n = json_array_size(rows);
  for (size_t k = 0; k < n; k++) {
    json_t *row = json_array_get(rows, before ? n - 1 - k : k); /* oldest first either way */
    /* route is stored as JSON text; hand it out as an object. */
    const char *rt = json_string_value(json_object_get(row, "route"));
    json_t *route = rt ? json_loads(rt, 0, NULL) : NULL;
    /* processor_reference: what the processor knows the call by (an ISO
     * 8583 RRN, a REST processor's id), to find it in its records */
    const json_t *pref = json_object_get(row, "processor_ref");
    json_t *a = tp_pack("{s:O, s:s, s:O, s:O, s:O, s:O, s:O, s:o, s:O, s:O, s:O}", "id", json_object_get(row, "id"),
                        "object", "turnpike.attempt", "processor", json_object_get(row, "processor"), "kind",
                        json_object_get(row, "kind"), "state", json_object_get(row, "state"), "result_code",
                        json_object_get(row, "result_code"), "processor_reference",
                        json_is_string(pref) && json_string_length(pref) ? pref : json_null(), "route",
                        route ? route : json_null(), "amount", json_object_get(row, "amount"), "currency",
                        json_object_get(row, "currency"), "created", json_object_get(row, "created"));
    if (a)
      json_array_append_new(data, a);
  }
  json_decref(rows);
  char url[160];
  snprintf(url, sizeof url, "/v1/payment_intents/%.64s/attempts", r->path_id);
  tp_reply_json(r, 200, tp_pack("{s:s, s:s, s:b, s:o}", "object", "list", "url", url, "has_more", more, "data", data));
}

/* ---- operator: attempts whose outcome is unknown ------------------------------
 * A call whose answer was lost stays "sent" until recovery learns from the
 * processor what became of it; a timed-out ISO 8583 call stays
 * "reversal_pending" until the host acknowledges its reversal. Both settle
 * by themselves while the processor answers. When it cannot (it refuses
 * the fence, a host never acknowledges, the processor is gone for good),
 * an operator who has learnt the outcome from the processor settles the
 * attempt here (docs/routing.md, "Settling by hand"). */

/* An empty field is null, as in a PaymentIntent's attempts list and the
 * docs ("null until it answered"): it was "". */
static json_t *text_or_null(const char *s)
{
  return s && *s ? json_string(s) : json_null();
}

json_t *tp_attempt_json(const struct tp_attempt *a)
{
  return tp_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:I, s:s, s:I, s:I}", "id", a->id, "object",
                 "turnpike.attempt", "payment_intent", a->payment_intent, "processor", a->processor, "kind", a->kind,
                 "state", a->state, "result_code", text_or_null(a->result_code), "authorization_code",
                 text_or_null(a->auth_code), "processor_reference", text_or_null(a->processor_ref), "refund",
                 text_or_null(a->refund), "amount", (json_int_t)a->amount, "currency", a->currency, "created",
                 (json_int_t)a->created, "updated", (json_int_t)a->updated);
}

#define UNSETTLED_LIST_MAX 100

static const char *const unsettled_states[] = {"sent", "reversal_pending", NULL};
static const struct tp_pspec spec_unsettled[] = {
  {"state", TP_P_ENUM, NULL, unsettled_states},
  {"processor", TP_P_STRING, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  {"starting_after", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

/* GET /v1/turnpike/attempts[?state=sent|reversal_pending][&processor=][&limit=]
 * [&starting_after=]: the merchant's attempts whose outcome is not settled
 * yet, oldest first (both states when state is not given); the next page
 * starts after the last one shown, settled meanwhile or not. */
static int by_created_id(const void *a, const void *b)
{
  const struct tp_attempt *x = a, *y = b;
  return x->created != y->created ? (x->created < y->created ? -1 : 1) : strcmp(x->id, y->id);
}

void tp_h_attempts_unsettled(struct tp_req *r)
{
  if (!tp_check_params(r, spec_unsettled))
    return;
  const char *state = tp_pstr(r->params, "state");
  const char *proc = tp_pstr(r->params, "processor");
  int64_t limit = UNSETTLED_LIST_MAX;
  const char *after;
  if (!tp_param_limit(r, &limit) || !tp_param_cursors(r, &after, NULL))
    return;
  /* The cursor's place in (created, id) order, from the attempt itself:
   * it may have settled since the last page (under load they do within a
   * second), which moves nothing after it. */
  struct tp_attempt cur;
  bool paged = after != NULL;
  if (paged) {
    int found = strlen(after) < sizeof cur.id ? tp_app.store.ops->attempt_get(tp_app.store.cls, after, &cur) : 0;
    if (found < 0) {
      tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
      return;
    }
    if (found == 0 || strcmp(cur.merchant, r->merchant.id) != 0) {
      char msg[200];
      snprintf(msg, sizeof msg, "No such turnpike.attempt: '%.64s'", after);
      tp_reply_error(r, TP_ERR_PAGINATION_CURSOR_INVALID, "starting_after", msg);
      return;
    }
  }
  /* Both states in one order: an attempt moving from one to the other
   * between pages is neither shown twice nor lets another be skipped. */
  struct tp_attempt *all = NULL;
  size_t nall = 0;
  for (size_t st = 0; unsettled_states[st]; st++) {
    if (state && *state && strcmp(state, unsettled_states[st]) != 0)
      continue;
    struct tp_attempt *list = NULL;
    size_t n = 0;
    if (tp_app.store.ops->attempts_in_state(tp_app.store.cls, unsettled_states[st], &list, &n) != 0) {
      free(all);
      tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
      return;
    }
    size_t keep = 0;
    for (size_t i = 0; i < n; i++)
      if (strcmp(list[i].merchant, r->merchant.id) == 0 && !(proc && *proc && strcmp(list[i].processor, proc) != 0) &&
          !(paged && by_created_id(&list[i], &cur) <= 0))
        list[keep++] = list[i];
    struct tp_attempt *grown = keep ? realloc(all, (nall + keep) * sizeof *all) : all;
    if (keep && !grown)
      abort();
    all = grown;
    if (keep)
      memcpy(all + nall, list, keep * sizeof *list);
    nall += keep;
    free(list);
  }
  if (nall > 1)
    qsort(all, nall, sizeof *all, by_created_id);
  json_t *data = json_array();
  bool more = nall > (size_t)limit;
  for (size_t i = 0; i < nall && i < (size_t)limit; i++)
    json_array_append_new(data, tp_attempt_json(&all[i]));
  free(all);
  tp_reply_json(r, 200, tp_pack("{s:s, s:s, s:b, s:o}", "object", "list", "url", "/v1/turnpike/attempts", "has_more",
                                more, "data", data));
}

static const char *const resolve_outcomes[] = {"processed", "not_processed", NULL};
static const struct tp_pspec spec_resolve[] = {
  {"outcome", TP_P_ENUM, NULL, resolve_outcomes},
  {"reason", TP_P_STRING, NULL, NULL},
  {"authorization_code", TP_P_STRING, NULL, NULL},
  {"processor_reference", TP_P_STRING, NULL, NULL},
  {NULL, 0, NULL, NULL},
};

/* POST /v1/turnpike/attempts/{id}/resolve outcome=processed|not_processed,
 * reason (required, kept in the audit log), authorization_code and
 * processor_reference (what the processor reported, for a processed
 * authorization). Answers the attempt as settled, after the commit. */
void tp_h_attempt_resolve(struct tp_req *r)
{
  if (!tp_check_params(r, spec_resolve))
    return;
  const char *outcome = tp_pstr(r->params, "outcome");
  const char *reason = tp_pstr(r->params, "reason");
  const char *auth = tp_pstr(r->params, "authorization_code");
  const char *ref = tp_pstr(r->params, "processor_reference");
  /* Another merchant's attempt is not there at all, whatever was asked. */
  struct tp_attempt a;
  int found = tp_app.store.ops->attempt_get(tp_app.store.cls, r->path_id, &a);
  if (found < 0) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return;
  }
  if (found == 0 || strcmp(a.merchant, r->merchant.id) != 0) {
    tp_reply_missing(r, "attempt", r->path_id, "id");
    return;
  }
  if (!outcome || !*outcome) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "outcome", NULL);
    return;
  }
  if (!reason || !*reason) {
    tp_reply_error(r, TP_ERR_PARAMETER_MISSING, "reason", NULL);
    return;
  }
  if (strlen(reason) > 500) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "reason", "reason must be at most 500 characters.");
    return;
  }
  if (auth && !tp_token_ok(auth, 15)) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "authorization_code",
                   "authorization_code must be at most 15 letters, digits, '-' or '_'.");
    return;
  }
  if (ref && !tp_token_ok(ref, 63)) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, "processor_reference",
                   "processor_reference must be at most 63 letters, digits, '-' or '_'.");
    return;
  }
  bool processed = strcmp(outcome, "processed") == 0;
  if (!processed && ((auth && *auth) || (ref && *ref))) {
    tp_reply_error(r, TP_ERR_PARAMETER_INVALID, auth && *auth ? "authorization_code" : "processor_reference",
                   "authorization_code and processor_reference describe a processed call only.");
    return;
  }
  int e = tp_payflow_resolve(r, &a, processed, auth, ref, reason);
  if (e == 0)
    return;
  char msg[256];
  if (e == TP_ERR_ATTEMPT_UNEXPECTED_STATE)
    snprintf(msg, sizeof msg,
             strcmp(a.state, "reversal_pending") == 0
                 ? "The attempt %.64s owes a reversal: only outcome=not_processed (the host did not act on it, or "
                   "it was undone there) can settle it."
                 : "The attempt %.64s is %s: its outcome is known.",
             a.id, a.state);
  else
    snprintf(msg, sizeof msg, "The attempt %.64s or its payment is being worked on now; try again shortly.", a.id);
  tp_reply_error(r, (enum tp_err)e, NULL, msg);
}

/* A call for PaymentIntent pi_id whose outcome is unknown (state "sent":
 * its answer was lost, recovery or an operator settles it) decides what is
 * left to capture, void or refund: no other money-moving call may start on
 * the payment until it is settled. 1 when there is one, 0 when not, -1 on a
 * store error. */
int tp_pi_unsettled(const char *merchant, const char *pi_id)
{
  json_t *rows = tp_store_query_take(&tp_app.store,
                                     "SELECT id FROM attempts WHERE payment_intent = ?2 AND merchant = ?1 "
                                     "AND state = 'sent' LIMIT 1",
                                     tp_pack("[s, s]", merchant, pi_id));
  if (!rows)
    return -1;
  int n = json_array_size(rows) > 0;
  json_decref(rows);
  return n;
}

bool tp_refuse_unsettled(struct tp_req *r, const char *pi_id)
{
  int u = tp_pi_unsettled(r->merchant.id, pi_id);
  if (u == 0)
    return false;
  if (u < 0) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return true;
  }
  char msg[256];
  snprintf(msg, sizeof msg,
           "A processor call for PaymentIntent %.64s has an unknown outcome that is being settled; try again once it "
           "is settled (the request that made the call can be retried with its Idempotency-Key).",
           pi_id);
  tp_reply_error(r, TP_ERR_ATTEMPT_IN_FLIGHT, NULL, msg);
  return true;
}
