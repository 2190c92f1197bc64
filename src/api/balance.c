/* /v1/balance and /v1/balance_transactions.
 *
 * The balance is read from the ledger's running sums: the merchant's
 * "merchant:pending" and "merchant:available" accounts are credit accounts
 * (negative when the merchant is owed money), so the amounts shown are their
 * negations. */
#include "api/commit.h"
#include "api/handlers.h"
#include "api/objects.h"
#include "api/params.h"
#include "core/currency.h"
#include "jpack.h"

#include <stdio.h>
#include <string.h>

#define ACCOUNT_PENDING "merchant:pending"
#define ACCOUNT_AVAILABLE "merchant:available"
static const struct tp_pspec spec_balance[] = {
  {"expand", TP_P_STRLIST, NULL, NULL},
  {NULL, TP_P_ANY, NULL, NULL},
};

/* Stripe's BalanceTransaction types, the values its list's type filter takes. */
static const char *const txn_types[] = {
  "adjustment", "advance", "advance_funding", "anticipation_repayment", "application_fee",
  "application_fee_refund", "charge", "climate_order_purchase", "climate_order_refund",
  "connect_collection_transfer", "contribution", "issuing_authorization_hold", "issuing_authorization_release",
  "issuing_dispute", "issuing_transaction", "obligation_outbound", "obligation_reversal_inbound", "payment",
  "payment_failure_refund", "payment_network_reserve_hold", "payment_network_reserve_release", "payment_refund",
  "payment_reversal", "payment_unreconciled", "payout", "payout_cancel", "payout_failure",
  "payout_minimum_balance_hold", "payout_minimum_balance_release", "refund", "refund_failure",
  "reserve_transaction", "reserved_funds", "stripe_balance_payment_debit", "stripe_balance_payment_debit_reversal",
  "stripe_fee", "stripe_fx_fee", "tax_fee", "topup", "topup_reversal", "transfer", "transfer_cancel",
  "transfer_failure", "transfer_refund", NULL};

static const struct tp_pspec spec_txn_list[] = {
  {"created", TP_P_RANGE, NULL, NULL},
  {"currency", TP_P_STRING, NULL, NULL},
  {"payout", TP_P_STRING, NULL, NULL},
  {"ending_before", TP_P_STRING, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  {"source", TP_P_STRING, NULL, NULL},
  {"starting_after", TP_P_STRING, NULL, NULL},
  {"type", TP_P_ENUM, NULL, txn_types},
  {NULL, TP_P_ANY, NULL, NULL},
};

struct cur_sum {
  char currency[4];
  int64_t available, pending;
};

static json_t *fund(const char *currency, int64_t amount)
{
  return tp_pack("{s:I, s:s, s:{s:I}}", "amount", (json_int_t)amount, "currency", currency, "source_types",
                 "card", (json_int_t)amount);
}

/* GET /v1/balance */
json_t *tp_balance_object(const char *merchant, const struct tp_balance_move *moves, size_t nmoves)
{
  json_t *rows = tp_app.store.ops->balance(tp_app.store.cls, merchant);
  if (!json_is_array(rows)) {
    json_decref(rows);
    return NULL;
  }
  /* One entry per currency held (each has at most two rows), and per moved. */
  struct cur_sum *sums = calloc(json_array_size(rows) + nmoves + 1, sizeof *sums);
  if (!sums) {
    json_decref(rows);
    return NULL;
  }
  size_t n = 0;
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row) {
    const char *account = json_string_value(json_object_get(row, "account"));
    const char *currency = json_string_value(json_object_get(row, "currency"));
    int64_t amount = json_integer_value(json_object_get(row, "amount"));
    if (!account || !currency || strlen(currency) != 3)
      continue;
    bool avail = strcmp(account, ACCOUNT_AVAILABLE) == 0;
    if (!avail && strcmp(account, ACCOUNT_PENDING) != 0)
      continue;
    size_t k;
    for (k = 0; k < n; k++)
      if (strcmp(sums[k].currency, currency) == 0)
        break;
    if (k == n) {
      memcpy(sums[k].currency, currency, 4);
      sums[k].available = sums[k].pending = 0;
      n++;
    }
    if (avail)
      sums[k].available = -amount;
    else
      sums[k].pending = -amount;
  }
  json_decref(rows);
  for (size_t m = 0; m < nmoves; m++) { /* pending made available by a commit not made yet */
    size_t k;
    for (k = 0; k < n; k++)
      if (strcmp(sums[k].currency, moves[m].currency) == 0)
        break;
    if (k == n) {
      memcpy(sums[k].currency, moves[m].currency, 4);
      sums[k].available = sums[k].pending = 0;
      n++;
    }
    sums[k].available += moves[m].amount;
    sums[k].pending -= moves[m].amount;
  }
  if (n == 0) {
    memcpy(sums[0].currency, "usd", 4);
    sums[0].available = sums[0].pending = 0;
    n = 1;
  }
  json_t *available = json_array(), *pending = json_array();
  for (size_t k = 0; k < n; k++) {
    json_array_append_new(available, fund(sums[k].currency, sums[k].available));
    json_array_append_new(pending, fund(sums[k].currency, sums[k].pending));
  }
  free(sums);
  return tp_pack("{s:s, s:o, s:b, s:o}", "object", "balance", "available", available, "livemode", 0, "pending",
                 pending);
}

void tp_h_balance(struct tp_req *r)
{
  struct tp_params_error pe;
  if (tp_params_check(r->params, spec_balance, &pe) != 0) {
    tp_reply_params_error(r, &pe, false);
    return;
  }
  json_t *b = tp_balance_object(r->merchant.id, NULL, 0);
  if (!b) {
    tp_reply_error(r, TP_ERR_STORE_UNAVAILABLE, NULL, NULL);
    return;
  }
  tp_reply_json(r, 200, b);
}

/* GET /v1/balance_transactions/{id} */
void tp_h_balance_txn_retrieve(struct tp_req *r)
{
  tp_retrieve(r, TP_K_BALANCE_TXN, "balance transaction");
}

static void widen(const json_t *id, char min[TP_ID_MAX], char max[TP_ID_MAX])
{
  const char *s = json_string_value(json_is_object(id) ? json_object_get(id, "id") : id);
  if (!s || strlen(s) >= TP_ID_MAX)
    return;
  if (!*min || strcmp(s, min) < 0)
    tp_scopy(min, TP_ID_MAX, s);
  if (!*max || strcmp(s, max) > 0)
    tp_scopy(max, TP_ID_MAX, s);
}

/* The balance transactions whose source is a charge, a refund or a dispute
 * are the ones that object names (a charge's balance_transaction, a
 * refund's and its failure's, a dispute's balance_transactions): their ids
 * lie within [min, max], so the list reads those rows rather than every
 * transaction of the merchant (balance_transactions has no index on
 * source, which would cost every payment a b-tree). False for any other
 * source. When the object is missing or names none, min = max = the source
 * itself, the id of no transaction: an empty list after one seek. */
static bool source_txn_range(const char *merchant, const char *source, char min[TP_ID_MAX], char max[TP_ID_MAX])
{
  static const struct {
    const char *prefix;
    enum tp_kind kind;
  } sources[] = {{"ch_", TP_K_CHARGE}, {"re_", TP_K_REFUND}, {"dp_", TP_K_DISPUTE}};
  size_t i = 0;
  while (i < sizeof sources / sizeof sources[0] && strncmp(source, sources[i].prefix, 3) != 0)
    i++;
  if (i == sizeof sources / sizeof sources[0] || strlen(source) >= TP_ID_MAX)
    return false;
  min[0] = max[0] = '\0';
  json_t *o = tp_store_get_json(&tp_app.store, sources[i].kind, merchant, source);
  widen(json_object_get(o, "balance_transaction"), min, max);
  widen(json_object_get(o, "failure_balance_transaction"), min, max);
  size_t k;
  json_t *bt;
  json_array_foreach(json_object_get(o, "balance_transactions"), k, bt) widen(bt, min, max);
  json_decref(o);
  if (!*min) {
    tp_scopy(min, TP_ID_MAX, source);
    tp_scopy(max, TP_ID_MAX, source);
  }
  return true;
}

/* GET /v1/balance_transactions (filters type, source, created). */
void tp_h_balance_txn_list(struct tp_req *r)
{
  struct tp_params_error pe;
  if (tp_params_check(r->params, spec_txn_list, &pe) != 0) {
    tp_reply_params_error(r, &pe, false);
    return;
  }
  struct tp_list_query q;
  tp_list_query_init(&q, TP_K_BALANCE_TXN, r->merchant.id);
  const char *source = tp_pstr(r->params, "source");
  const char *type = tp_pstr(r->params, "type");
  char id_min[TP_ID_MAX], id_max[TP_ID_MAX];
  if (source && *source) {
    q.col_name = "source";
    q.col_value = source;
    if (source_txn_range(r->merchant.id, source, id_min, id_max)) {
      q.id_min = id_min;
      q.id_max = id_max;
    }
  }
  if (type && *type) {
    q.col2_name = "type";
    q.col2_value = type;
  }
  /* Turnpike makes no payouts, so no payout id names one. */
  const char *payout = tp_pstr(r->params, "payout");
  if (payout && *payout) {
    tp_reply_missing(r, "payout", payout, "payout");
    return;
  }
  const char *currency = tp_pstr(r->params, "currency");
  if (currency && *currency) {
    const struct tp_currency *cur = tp_currency_find(currency);
    if (!cur) {
      tp_reply_error(r, TP_ERR_CURRENCY_INVALID, "currency", NULL);
      return;
    }
    q.field = "$.currency";
    q.field_value = cur->code; /* lower case, as stored */
  }
  if (!tp_list_params(r, &q))
    return;
  /* the older name answers with its own url */
  tp_reply_list(r, &q, strncmp(r->url, "/v1/balance/history", 19) == 0 ? "/v1/balance/history" : "/v1/balance_transactions");
}

/* ---- payouts ----------------------------------------------------------------
 * Turnpike pays nothing out (the account says payouts_enabled: false): the
 * list is empty, an id names nothing, and a payout is refused as Stripe
 * refuses one on an account that may not make them. SDKs and dashboards
 * that list payouts get a list rather than "Unrecognized request URL". */
static const char *const payout_statuses[] = {"canceled", "failed", "in_transit", "paid", "pending", NULL};
static const struct tp_pspec spec_payout_list[] = {
  {"arrival_date", TP_P_RANGE, NULL, NULL},
  {"created", TP_P_RANGE, NULL, NULL},
  {"destination", TP_P_STRING, NULL, NULL},
  {"ending_before", TP_P_STRING, NULL, NULL},
  {"expand", TP_P_STRLIST, NULL, NULL},
  {"limit", TP_P_INT, NULL, NULL},
  {"starting_after", TP_P_STRING, NULL, NULL},
  {"status", TP_P_ENUM, NULL, payout_statuses},
  {NULL, TP_P_ANY, NULL, NULL},
};

void tp_h_payout_list(struct tp_req *r)
{
  if (!tp_check_params(r, spec_payout_list))
    return;
  int64_t lim = 10;
  const char *after, *before;
  if (!tp_param_limit(r, &lim) || !tp_param_cursors(r, &after, &before))
    return;
  const char *cursor = after ? after : before;
  if (cursor) {
    char msg[160];
    snprintf(msg, sizeof msg, "No such payout: '%.64s'", cursor);
    tp_reply_error(r, TP_ERR_PAGINATION_CURSOR_INVALID, after ? "starting_after" : "ending_before", msg);
    return;
  }
  tp_reply_json(r, 200, tp_pack("{s:s, s:[], s:b, s:s}", "object", "list", "data", "has_more", 0, "url", "/v1/payouts"));
}

void tp_h_payout_missing(struct tp_req *r)
{
  tp_reply_missing(r, "payout", r->path_id, "id");
}

void tp_h_payout_create(struct tp_req *r)
{
  tp_reply_error(r, TP_ERR_PAYOUTS_NOT_ALLOWED, NULL, NULL);
}
