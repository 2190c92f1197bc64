/* GET /v1/payment_intents/{id}/attempts (Turnpike extension): every processor
 * call made for a PaymentIntent, oldest first, with the router's reason for
 * choosing the processor (attempts.route, compact JSON). */
#include "api/handlers.h"
#include "api/objects.h"
#include "jpack.h"

#include <stdio.h>
#include <string.h>

#define ATTEMPTS_LIST_MAX 100 /* calls per payment are few: deadline x backoff */

void tp_h_pi_attempts(struct tp_req *r)
{
  json_t *pi = tp_store_get_json(&tp_app.store, TP_K_PAYMENT_INTENT, r->merchant.id, r->path_id);
  if (!pi) {
    char msg[160];
    snprintf(msg, sizeof msg, "No such payment_intent: '%.64s'", r->path_id);
    tp_reply_error(r, TP_ERR_RESOURCE_MISSING, "intent", msg);
    return;
  }
  json_decref(pi);
  json_t *args = tp_pack("[s, s, i]", r->merchant.id, r->path_id, ATTEMPTS_LIST_MAX + 1);
  json_t *rows = tp_store_query(&tp_app.store,
                                "SELECT id, processor, kind, state, result_code, route, amount, currency, created "
                                "FROM attempts WHERE merchant = ?1 AND payment_intent = ?2 "
                                "ORDER BY created, id LIMIT ?3",
                                args);
  json_decref(args);
  if (!rows) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return;
  }
  bool more = json_array_size(rows) > ATTEMPTS_LIST_MAX;
  if (more)
    json_array_remove(rows, ATTEMPTS_LIST_MAX);
  json_t *data = json_array();
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row)
  {
    /* route is stored as JSON text; hand it out as an object. */
    const char *rt = json_string_value(json_object_get(row, "route"));
    json_t *route = rt ? json_loads(rt, 0, NULL) : NULL;
    json_t *a = tp_pack("{s:O, s:s, s:O, s:O, s:O, s:O, s:o, s:O, s:O, s:O}", "id", json_object_get(row, "id"),
                        "object", "turnpike.attempt", "processor", json_object_get(row, "processor"), "kind",
                        json_object_get(row, "kind"), "state", json_object_get(row, "state"), "result_code",
                        json_object_get(row, "result_code"), "route", route ? route : json_null(), "amount",
                        json_object_get(row, "amount"), "currency", json_object_get(row, "currency"), "created",
                        json_object_get(row, "created"));
    if (a)
      json_array_append_new(data, a);
  }
  json_decref(rows);
  char url[160];
  snprintf(url, sizeof url, "/v1/payment_intents/%.64s/attempts", r->path_id);
  tp_reply_json(r, 200, tp_pack("{s:s, s:s, s:b, s:o}", "object", "list", "url", url, "has_more", more, "data", data));
}
