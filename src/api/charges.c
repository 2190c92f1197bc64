/* /v1/charges: retrieve and list. Charges are written by the payment flow
 * (payment_intents.c); this file only reads them. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"

#include <string.h>

static const struct tp_pspec spec_list[] = {
  {"created", TP_P_RANGE, NULL, NULL},
  {"customer", TP_P_STRING, NULL, NULL},
  {"ending_before", TP_P_STRING, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  {"payment_intent", TP_P_STRING, NULL, NULL},
  {"starting_after", TP_P_STRING, NULL, NULL},
  {NULL, TP_P_ANY, NULL, NULL},
};

/* GET /v1/charges/{id} */
void tp_h_charge_retrieve(struct tp_req *r)
{
  tp_retrieve(r, TP_K_CHARGE, "charge");
}

/* GET /v1/charges */
void tp_h_charge_list(struct tp_req *r)
{
  struct tp_params_error pe;
  if (tp_params_check(r->params, spec_list, &pe) != 0) {
    tp_reply_params_error(r, &pe, false);
    return;
  }
  struct tp_list_query q;
  memset(&q, 0, sizeof q);
  q.kind = TP_K_CHARGE;
  q.merchant = r->merchant.id;
  q.created_gte = INT64_MIN;
  q.created_lte = INT64_MAX;
  const char *pi = tp_pstr(r->params, "payment_intent");
  const char *cus = tp_pstr(r->params, "customer");
  if (pi && *pi) {
    q.col_name = "payment_intent";
    q.col_value = pi;
  }
  if (cus && *cus) {
    q.col2_name = "customer";
    q.col2_value = cus;
  }
  if (!tp_list_params(r, &q))
    return;
  tp_reply_list(r, &q, "/v1/charges");
}
