/* Housekeeping: balance transactions past their available_on made
 * available (the balance sweep), expired Idempotency-Keys, the cards of card tokens left
 * unused past [tokens] ttl_seconds, and events past their retention
 * with the webhook delivery records about them, are deleted in small
 * batches through the writer, so the tables stay bounded without long write
 * transactions. Every tick also commits the store heartbeat and measures the
 * free space of the data directory (the space guard, below). */
#include "api/http.h"
#include "api/objects.h"
#include "config.h"
#include "core/payflow.h"
#include "jpack.h"
#include "log.h"
#include "main/features.h"
#include "metrics.h"
#include "store/store.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#define PURGE_BATCH 5000 /* keys deleted per purge at most: 5000/s at the default interval */
#define PURGE_WINDOW (2 * PURGE_BATCH) /* oldest rows looked at per purge */

static struct {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool running, stop;
  int64_t interval_ms, ttl;
  int64_t token_ttl;               /* [tokens] ttl_seconds */
  int64_t event_retention_s, event_interval_ms;
  char merchant_cursor[TP_ID_MAX]; /* where the event purge goes on next time */
  int64_t expiry_interval_ms;
  int64_t expiry_created;          /* where the scan for lapsed authorizations goes on */
  char expiry_id[TP_ID_MAX];
  _Atomic int64_t heartbeat_ms; /* monotonic time of the last committed heartbeat */
  int64_t min_free;             /* [store] min_free_mb in bytes; 0: no guard */
  _Atomic bool space_low;       /* free space under min_free: new work is refused */
  char sweep_merchant[TP_ID_MAX]; /* where the balance sweep goes on next time */
  bool sweep_wrap;                /* the last tick ran out on a merchant: the next goes round past the end */
} H = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* Hand a change set to the writer; 0, or -1 (and cs freed) if it refused. */
static int submit(struct tp_cs *cs)
{
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    return -1;
  }
  return 0;
}

/* Queue the deletion of up to PURGE_BATCH expired, answered keys (pending
 * marks stay: recovery resolves them). */
int tp_idem_purge(int64_t now, int64_t ttl)
{
  struct tp_cs *cs = tp_cs_new();
  json_t *args = tp_pack("[I, i, i]", (json_int_t)(now - ttl), PURGE_BATCH, PURGE_WINDOW);
  /* Keys are inserted in time order, so the expired ones are the oldest
   * rowids: look at the oldest PURGE_WINDOW rows only (no index on created;
   * migration 0007). A key reused after expiry keeps its old rowid with a
   * new time, and a pending mark stays until recovery answers it: both are
   * skipped here and go once they expire or are answered. */
  tp_cs_sql(cs,
            "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM (SELECT rowid, created, status "
            "FROM idempotency ORDER BY rowid LIMIT ?3) WHERE created <= ?1 AND status != 0 LIMIT ?2)",
            args, 0);
  json_decref(args);
  return submit(cs);
}

/* Queue the deletion of up to PURGE_BATCH cards of card tokens made more
 * than ttl seconds ago (api/tokens.c) and never used (a used token's went
 * in the commit that spent it): the vault keeps no card nobody will charge.
 * Token ids begin with their creation time, so this is a range of the
 * vault's key below tp_id_floor; the token then answers token_expired. */
int tp_token_purge(int64_t now_ms, int64_t ttl)
{
  char floor[TP_ID_MAX];
  tp_id_floor(floor, "tok", now_ms - ttl * 1000);
  struct tp_cs *cs = tp_cs_new();
  json_t *args = tp_pack("[s, i]", floor, PURGE_BATCH);
  tp_cs_sql(cs, "DELETE FROM vault WHERE token IN (SELECT token FROM vault WHERE token >= 'tok_' AND token < ?1 "
            "LIMIT ?2)", args, 0);
  json_decref(args);
  return submit(cs);
}

#define SWEEP_MERCHANTS 16    /* merchants looked at per sweep */
#define SWEEP_BATCH 500       /* balance transactions per merchant per sweep */
#define SWEEP_CURRENCIES 8    /* (transaction, currency) ledger pairs per change set, under the store's 16 */
#define SWEEP_SETS 64         /* change sets per sweep, each committed before the next */
#define SWEEP_TIME_MS 500     /* and no longer than this */

/* The currencies a sweep's change set moves, and how much of each. */
struct sweep_sums {
  struct {
    char cur[4];
    int64_t sum;
  } c[SWEEP_CURRENCIES];
  int n;
};

/* bt (pending, due) shown available into cs, its amount counted in s;
 * false when s has no room for its currency (the rest next time). */
static bool sweep_take(struct tp_cs *cs, const char *merchant, json_t *bt, struct sweep_sums *s, int ncur)
{
  const char *cur = json_string_value(json_object_get(bt, "currency"));
  int k = 0;
  while (k < s->n && strcmp(s->c[k].cur, cur) != 0)
    k++;
  if (k == s->n) {
    if (ncur + s->n >= SWEEP_CURRENCIES)
      return false;
    memcpy(s->c[s->n].cur, cur, 4);
    s->c[s->n++].sum = 0;
  }
  /* the net, as ledger_post put it into merchant:pending (a fee stays with
   * whoever kept it; charges have none today, so net is the amount) */
  const json_t *net = json_object_get(bt, "net");
  s->c[k].sum += json_integer_value(net ? net : json_object_get(bt, "amount"));
  json_object_set_new(bt, "status", json_string("available"));
  tp_cs_put(cs, TP_K_BALANCE_TXN, merchant, bt);
  return true;
}

#define SWEEP_AHEAD_PREFIX "sweep_ahead:"

/* Transactions the cursor passed while they were pending and made ahead
 * of the clock (meta rows sweep_ahead:<id>, the merchant as value): each
 * that has come due is taken, each no longer pending forgotten. */
static int sweep_ahead(struct tp_cs *cs, const char *merchant, int64_t now_s, struct sweep_sums *s, int ncur)
{
  json_t *rows = tp_store_query_take(&tp_app.store,
                                     "SELECT key FROM meta WHERE key > '" SWEEP_AHEAD_PREFIX "' AND key < "
                                     "'sweep_ahead;' AND value = ?1 ORDER BY key LIMIT 64",
                                     tp_pack("[s]", merchant));
  if (!rows)
    return -1;
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row)
  {
    const char *key = json_string_value(json_object_get(row, "key"));
    if (!key)
      continue;
    json_t *bt = tp_store_get_json(&tp_app.store, TP_K_BALANCE_TXN, merchant, key + strlen(SWEEP_AHEAD_PREFIX));
    const char *st = json_string_value(json_object_get(bt, "status"));
    bool pending = st && strcmp(st, "pending") == 0;
    bool due = pending && json_integer_value(json_object_get(bt, "available_on")) <= now_s;
    if (due && !sweep_take(cs, merchant, bt, s, ncur)) {
      json_decref(bt);
      break;
    }
    if (!pending || due) {
      json_t *args = tp_pack("[s]", key);
      tp_cs_sql(cs, "DELETE FROM meta WHERE key = ?1", args, 0);
      json_decref(args);
    }
    json_decref(bt);
  }
  json_decref(rows);
  return 0;
}

/* One merchant's balance transactions after cursor into cs: each pending
 * one whose available_on has come shown available, and their amounts moved
 * from merchant:pending to merchant:available by one balanced ledger
 * transaction. The cursor (moved in the same commit) passes only what is
 * done and was made at least guard_s ago: a transaction with an earlier id
 * may still be on its way to the store until then. The walk goes by
 * available_on, not by the time in the ids: after a wall clock stepped
 * back, ids run ahead of the clock (they keep sorting above the stored
 * ones), and a floor made from the clock held such transactions pending
 * for as long as that lasted. A pending row made "in the future" (before
 * such a step) is passed and kept on a list of its own (sweep_ahead), so
 * it holds up neither the cursor nor the rows after it. *ncur counts the
 * currencies posted in cs so far. Returns -1 on a store error. */
static int sweep_merchant(struct tp_cs *cs, const char *merchant, const char *cursor, int64_t now_ms, int *ncur)
{
  int64_t now_s = now_ms / 1000, guard_s = tp_balance_available_after();
  if (guard_s < 2)
    guard_s = 2;
  struct sweep_sums sums;
  sums.n = 0;
  if (sweep_ahead(cs, merchant, now_s, &sums, *ncur) != 0)
    return -1;
  json_t *ids = tp_store_query_take(&tp_app.store,
                                    "SELECT id FROM balance_transactions WHERE merchant = ?1 AND id > ?2 "
                                    "ORDER BY id LIMIT ?3",
                                    tp_pack("[s, s, i]", merchant, cursor, SWEEP_BATCH));
  if (!ids)
    return -1;
  char last[TP_ID_MAX] = "";
  size_t i;
  json_t *row;
  json_array_foreach(ids, i, row)
  {
    const char *id = json_string_value(json_object_get(row, "id"));
    json_t *bt = id ? tp_store_get_json(&tp_app.store, TP_K_BALANCE_TXN, merchant, id) : NULL;
    if (!bt) {
      json_decref(ids);
      return -1;
    }
    const char *st = json_string_value(json_object_get(bt, "status"));
    const char *cur = json_string_value(json_object_get(bt, "currency"));
    int64_t created = json_integer_value(json_object_get(bt, "created"));
    bool pending = st && strcmp(st, "pending") == 0 && cur && strlen(cur) == 3;
    int64_t available_on = json_integer_value(json_object_get(bt, "available_on"));
    bool ahead = created > now_s; /* made while the clock was ahead of this one */
    /* Nothing before it is still on its way: the delay it was made under
     * if shorter than today's (a row made before the delay was raised is
     * not held past its own available_on for the new delay: funds due
     * stayed pending for up to the new delay, two days after a test
     * value); a row available when made (a refund, a dispute's debit)
     * keeps a minute of it; never under 2 s. */
    int64_t own = available_on - created;
    int64_t row_guard = own > 0 ? own : 60;
    if (row_guard > guard_s)
      row_guard = guard_s;
    if (row_guard < 2)
      row_guard = 2;
    bool settled = created <= now_s - row_guard;
    bool due = pending && settled && available_on <= now_s;
    /* Out of order: made ahead of this clock (a clock stepped back since):
     * later rows may come due before it. (A row made under a longer
     * [balance] available_after_seconds than today's also comes due after
     * rows made now; it is waited for: after lowering the delay, every
     * pending row of the old delay would go on the list.) */
    if (ahead && pending) {
      json_t *args = tp_pack("[s, s]", id, merchant);
      tp_cs_sql(cs, "INSERT INTO meta(key, value) VALUES('" SWEEP_AHEAD_PREFIX "' || ?1, ?2) "
                    "ON CONFLICT(key) DO NOTHING", args, 0);
      json_decref(args);
    } else if (!ahead && ((pending && !due) || !settled)) {
      json_decref(bt);
      break; /* in order from here: nothing later is due either */
    }
    if (due && !sweep_take(cs, merchant, bt, &sums, *ncur)) {
      json_decref(bt); /* this change set is full: the rest next time */
      break;
    }
    json_decref(bt);
    tp_scopy(last, sizeof last, id);
  }
  json_decref(ids);
  if (!last[0] && sums.n == 0)
    return 0; /* (meta rows of sweep_ahead may be in cs: the caller commits them) */
  char txn[TP_ID_MAX];
  tp_id_new(txn, "avl");
  struct tp_balance_move moves[SWEEP_CURRENCIES];
  size_t nmoves = 0, gained = 0;
  for (int k = 0; k < sums.n; k++) {
    if (sums.c[k].sum == 0)
      continue;
    /* credit accounts: the merchant's pending balance falls, its available one grows */
    tp_cs_ledger(cs, txn, merchant, "merchant:pending", sums.c[k].cur, sums.c[k].sum);
    tp_cs_ledger(cs, txn, merchant, "merchant:available", sums.c[k].cur, -sums.c[k].sum);
    memcpy(moves[nmoves].currency, sums.c[k].cur, 4);
    moves[nmoves++].amount = sums.c[k].sum;
    gained += sums.c[k].sum > 0;
  }
  /* Stripe's balance.available: funds became available (not fired for
   * negative moves alone), with the Balance as this commit leaves it. */
  if (gained) {
    json_t *bal = tp_balance_object(merchant, moves, nmoves);
    if (bal)
      tp_emit(cs, NULL, merchant, "balance.available", bal);
    json_decref(bal);
  }
  *ncur += sums.n;
  if (last[0]) {
    json_t *args = tp_pack("[s, s]", merchant, last);
    tp_cs_sql(cs, "INSERT INTO balance_sweep(merchant, cursor) VALUES(?1, ?2) "
              "ON CONFLICT(merchant) DO UPDATE SET cursor = excluded.cursor", args, 1);
    json_decref(args);
  }
  return 0;
}

/* One change set of a sweep, committed before it returns: merchants after
 * H.sweep_merchant until the set holds SWEEP_CURRENCIES currencies. 1: it
 * filled up at merchant *at (more may be due there), 0: it went round every
 * merchant, -1: a store error. */
static int sweep_once(int64_t now_ms, char at[TP_ID_MAX])
{
  json_t *ms = tp_store_query_take(&tp_app.store,
                                   "SELECT m.id AS id, coalesce(s.cursor, 'txn_') AS cursor FROM merchants m "
                                   "LEFT JOIN balance_sweep s ON s.merchant = m.id WHERE m.id > ?1 ORDER BY m.id "
                                   "LIMIT ?2",
                                   tp_pack("[s, i]", H.sweep_merchant, SWEEP_MERCHANTS));
  if (!ms)
    return -1;
  if (json_array_size(ms) == 0 && H.sweep_merchant[0]) {
    json_decref(ms);
    H.sweep_merchant[0] = '\0';
    /* Past the last merchant. A round that went there is done (with 16·k
     * merchants its last set read 16 and could not tell); one this tick
     * began after the merchant a full tick ended on goes on from the
     * first, now rather than a tick later. */
    bool wrap = H.sweep_wrap;
    H.sweep_wrap = false;
    return wrap ? 1 : 0;
  }
  struct tp_cs *cs = tp_cs_new();
  int ncur = 0, rc = 0;
  size_t n = json_array_size(ms), i;
  for (i = 0; i < n && ncur < SWEEP_CURRENCIES; i++) {
    json_t *row = json_array_get(ms, i);
    const char *m = json_string_value(json_object_get(row, "id"));
    const char *cursor = json_string_value(json_object_get(row, "cursor"));
    if (!m || !cursor)
      continue;
    if (sweep_merchant(cs, m, cursor, now_ms, &ncur) != 0) {
      rc = -1;
      break;
    }
    if (ncur < SWEEP_CURRENCIES)
      tp_scopy(H.sweep_merchant, sizeof H.sweep_merchant, m);
    else
      tp_scopy(at, TP_ID_MAX, m);
  }
  bool round = rc == 0 && i == n && n < SWEEP_MERCHANTS && ncur < SWEEP_CURRENCIES;
  json_decref(ms);
  if (rc != 0 || tp_cs_count(cs) == 0) {
    tp_cs_free(cs);
    if (round) {
      H.sweep_merchant[0] = '\0';
      H.sweep_wrap = false;
    }
    return rc != 0 ? -1 : round ? 0 : 1;
  }
  /* Committed before the next set is built: the next one reads the cursors
   * this one moves, and a set that failed must not be passed by a later
   * one's cursor (its rows would stay pending behind it). */
  if (tp_writer_submit_wait(cs) != 0) {
    tp_log(TP_LOG_WARN, "balance_sweep_not_committed", NULL);
    return -1;
  }
  if (round) {
    H.sweep_merchant[0] = '\0'; /* went round every merchant */
    H.sweep_wrap = false;
  }
  return round ? 0 : 1;
}

/* Up to SWEEP_SETS change sets a tick, each of at most SWEEP_CURRENCIES
 * currencies (one merchant's payments in many currencies filled one set
 * with a handful of rows: it made ~8 rows available a second, and held up
 * every merchant after it). A merchant still not done when the tick's sets
 * run out is left for the next tick after the others had theirs: the next
 * tick starts after it. */
int tp_balance_sweep(int64_t now_ms)
{
  char at[TP_ID_MAX] = "";
  int r = 1;
  int64_t t0 = tp_mono_ms();
  /* and at most SWEEP_TIME_MS: the same thread writes the heartbeat
   * /readyz reads, and a slow disk makes each commit slow */
  for (int k = 0; k < SWEEP_SETS && r == 1 && !atomic_load(&tp_app.shutting_down) &&
                  tp_mono_ms() - t0 < SWEEP_TIME_MS;
       k++) {
    at[0] = '\0'; /* the merchant this set filled up at, if it did */
    r = sweep_once(now_ms, at);
  }
  H.sweep_wrap = r == 1 && at[0];
  if (H.sweep_wrap)
    tp_scopy(H.sweep_merchant, sizeof H.sweep_merchant, at);
  return r < 0 ? -1 : 0;
}

/* One merchant's events older than floor (an id floor, tp_id_floor), at most
 * budget of them, with the finished webhook deliveries and attempts of that
 * age; events a delivery to an enabled endpoint is still pending for stay
 * (the outbox needs them; it gives up after [webhooks] max_age_s, 3 days),
 * and so does everything after them. A disabled endpoint holds nothing: its
 * rows for purged events fail when it is enabled again. Returns the rows queued for deletion. */
static int64_t purge_merchant_events(const char *merchant, const char *floor_evt, const char *floor_wda,
                                     int64_t budget)
{
  char floor[TP_ID_MAX];
  tp_scopy(floor, sizeof floor, floor_evt);
  json_t *rows = tp_store_query_take(&tp_app.store,
                                /* per endpoint, one lookup in the pending index (0025) */
                                "SELECT MIN((SELECT MIN(d.event) FROM webhook_deliveries d WHERE d.endpoint = w.id "
                                "AND d.state = 'pending')) AS e, (SELECT COUNT(*) FROM webhook_endpoints WHERE "
                                "merchant = ?1) AS eps FROM webhook_endpoints w WHERE w.merchant = ?1 AND "
                                "w.status = 'enabled'",
                                tp_pack("[s]", merchant));
  const char *pending = json_string_value(json_object_get(json_array_get(rows, 0), "e"));
  if (!rows) /* cannot tell what is still owed: skip this merchant this time */
    return 0;
  if (pending && strcmp(pending, floor) < 0)
    tp_scopy(floor, sizeof floor, pending);
  bool endpoints = json_integer_value(json_object_get(json_array_get(rows, 0), "eps")) > 0;
  json_decref(rows);
  rows = tp_store_query_take(&tp_app.store,
                        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE merchant = ?1 AND id < ?2 "
                        "LIMIT ?3)) AS n",
                        tp_pack("[s, s, I]", merchant, floor, (json_int_t)budget));
  int64_t n = rows ? json_integer_value(json_object_get(json_array_get(rows, 0), "n")) : 0;
  json_decref(rows);
  if (n == 0 && !endpoints)
    return 0; /* nothing to delete: no write */
  struct tp_cs *cs = tp_cs_new();
  json_t *args = tp_pack("[s, s, I]", merchant, floor, (json_int_t)budget);
  if (n > 0)
    tp_cs_sql(cs,
              "DELETE FROM events WHERE merchant = ?1 AND id IN (SELECT id FROM events WHERE merchant = ?1 "
              "AND id < ?2 ORDER BY id LIMIT ?3)",
              args, 0);
  /* Delivery rows of old events that are finished (pending ones stay), and
   * the log of attempts of the same age. */
  tp_cs_sql(cs,
            "DELETE FROM webhook_deliveries WHERE rowid IN (SELECT d.rowid FROM webhook_endpoints w JOIN "
            "webhook_deliveries d ON d.endpoint = w.id WHERE w.merchant = ?1 AND d.event < ?2 AND "
            "d.state != 'pending' LIMIT ?3)",
            args, 0);
  json_decref(args);
  args = tp_pack("[s, s, I]", merchant, floor_wda, (json_int_t)budget);
  tp_cs_sql(cs,
            "DELETE FROM webhook_attempts WHERE id IN (SELECT a.id FROM webhook_endpoints w JOIN "
            "webhook_attempts a ON a.endpoint = w.id WHERE w.merchant = ?1 AND a.id < ?2 LIMIT ?3)",
            args, 0);
  json_decref(args);
  return submit(cs) != 0 ? -1 : n;
}

/* Delete events older than retention_s (Stripe keeps 30 days), merchant by
 * merchant from where the last run stopped, at most PURGE_BATCH events per
 * run. */
int tp_event_purge(int64_t now_ms, int64_t retention_s)
{
  char floor_evt[TP_ID_MAX], floor_wda[TP_ID_MAX];
  tp_id_floor(floor_evt, "evt", now_ms - retention_s * 1000);
  tp_id_floor(floor_wda, "wda", now_ms - retention_s * 1000);
  json_t *ms = tp_store_query_take(&tp_app.store, "SELECT id FROM merchants WHERE id > ?1 ORDER BY id LIMIT 64",
                              tp_pack("[s]", H.merchant_cursor));
  if (!ms)
    return -1;
  int64_t budget = PURGE_BATCH;
  size_t n = json_array_size(ms);
  for (size_t i = 0; i < n && budget > 0; i++) {
    const char *m = json_string_value(json_object_get(json_array_get(ms, i), "id"));
    if (!m)
      continue;
    int64_t done = purge_merchant_events(m, floor_evt, floor_wda, budget);
    if (done < 0) {
      json_decref(ms);
      return -1;
    }
    budget -= done;
    if (budget > 0) /* this merchant is done for now; next run starts after it */
      tp_scopy(H.merchant_cursor, sizeof H.merchant_cursor, m);
  }
  if (n < 64 && budget > 0)
    H.merchant_cursor[0] = '\0'; /* went round every merchant: start again */
  json_decref(ms);
  return 0;
}

#define EXPIRY_PAGE 100

/* Start the void of uncaptured authorizations past their capture_before.
 * Candidates come from the partial index of PaymentIntents in
 * requires_capture, created before now - ttl (the authorization is never
 * older than its PaymentIntent); tp_pi_expire checks the charge's own
 * capture_before. A cursor walks them page by page, so a candidate that is
 * not due yet never hides the ones after it. Returns the voids started. */
int tp_authorization_expiry_scan(int64_t now)
{
  json_t *rows = tp_store_query_take(&tp_app.store,
                                "SELECT merchant, id, created FROM payment_intents WHERE status = 'requires_capture' "
                                "AND created <= ?1 AND (created > ?2 OR (created = ?2 AND id > ?3)) "
                                "ORDER BY created, id LIMIT ?4",
                                tp_pack("[I, I, s, i]", (json_int_t)(now - tp_authorization_ttl()),
                                        (json_int_t)H.expiry_created, H.expiry_id, EXPIRY_PAGE));
  if (!rows)
    return -1;
  int started = 0;
  size_t n = json_array_size(rows), i;
  json_t *row;
  json_array_foreach(rows, i, row)
  {
    const char *m = json_string_value(json_object_get(row, "merchant"));
    const char *id = json_string_value(json_object_get(row, "id"));
    if (!m || !id)
      continue;
    if (atomic_load(&tp_app.shutting_down))
      break; /* no void outlives the stop (the next start scans again); the cursor stays */
    started += tp_pi_expire(m, id, now);
    H.expiry_created = json_integer_value(json_object_get(row, "created"));
    tp_scopy(H.expiry_id, sizeof H.expiry_id, id);
  }
  if (n < EXPIRY_PAGE && i == n) { /* the end: start from the oldest next time */
    H.expiry_created = INT64_MIN;
    H.expiry_id[0] = '\0';
  }
  json_decref(rows);
  return started;
}

static void heartbeat_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  (void)arg;
  if (rc == 0)
    atomic_store(&H.heartbeat_ms, tp_mono_ms());
}

/* Prove the store takes writes: one tiny committed row per tick. */
static struct tp_cs *heartbeat_cs(void)
{
  struct tp_cs *cs = tp_cs_new();
  json_t *args = tp_pack("[I]", (json_int_t)tp_now());
  tp_cs_sql(cs, "INSERT OR REPLACE INTO heartbeat(id, at) VALUES(1, ?1)", args, 1);
  json_decref(args);
  return cs;
}

static void heartbeat(void)
{
  struct tp_cs *cs = heartbeat_cs();
  tp_cs_on_done(cs, heartbeat_done, NULL);
  submit(cs);
}

int64_t tp_store_heartbeat_age_ms(void)
{
  int64_t at = atomic_load(&H.heartbeat_ms);
  return at ? tp_mono_ms() - at : INT64_MAX;
}

/* ---- the space guard ---------------------------------------------------------
 * A full disk fails every commit, and the commits a full disk fails worst are
 * the outcomes of processor calls already sent: the card is charged and the
 * gateway cannot record it until recovery settles the call once space is
 * back. So new work stops first: while the data directory's file system has
 * less than [store] min_free_mb available, requests that would start new
 * work (every POST and DELETE under /v1 but the operator's settlement) are
 * refused with 503 store_full before anything is written, and /readyz says
 * store_space_low; the outcomes, recovery, webhooks and reads go on in the
 * space kept free. Measured every housekeeping tick (1 s). */
static void space_check(void)
{
  if (H.min_free <= 0)
    return;
  struct statvfs v;
  if (statvfs(tp_app.data_dir, &v) != 0)
    return; /* keep the last verdict */
  int64_t avail = (int64_t)v.f_bavail * (int64_t)(v.f_frsize ? v.f_frsize : v.f_bsize);
  tp_metric_set("turnpike_store_free_bytes", NULL, avail);
  bool low = avail < H.min_free;
  if (atomic_exchange(&H.space_low, low) != low) {
    if (low)
      tp_log(TP_LOG_ERROR, "store_space_low", "{s:I, s:I, s:s}", "free_bytes", (json_int_t)avail,
             "min_free_bytes", (json_int_t)H.min_free, "action", "refusing new work with 503 store_full");
    else
      tp_log(TP_LOG_WARN, "store_space_ok", "{s:I, s:I}", "free_bytes", (json_int_t)avail, "min_free_bytes",
             (json_int_t)H.min_free);
  }
}

bool tp_store_space_low(void)
{
  return atomic_load(&H.space_low);
}

static void *housekeeping_main(void *arg)
{
  (void)arg;
  int64_t next_purge = tp_mono_ms() + H.interval_ms;
  int64_t next_event_purge = tp_mono_ms() + H.event_interval_ms;
  int64_t next_expiry = tp_mono_ms() + H.expiry_interval_ms;
  pthread_mutex_lock(&H.mu);
  while (!H.stop) {
    struct timespec ts;
    tp_mono_deadline(&ts, 1000); /* the heartbeat's tick */
    pthread_cond_timedwait(&H.cv, &H.mu, &ts);
    if (H.stop)
      break;
    pthread_mutex_unlock(&H.mu);
    space_check();
    heartbeat();
    if (tp_mono_ms() >= next_purge) {
      next_purge = tp_mono_ms() + H.interval_ms;
      if (tp_idem_purge(tp_now(), H.ttl) != 0)
        tp_log(TP_LOG_WARN, "idempotency_purge_skipped", NULL);
      if (tp_token_purge(tp_now() * 1000, H.token_ttl) != 0)
        tp_log(TP_LOG_WARN, "token_purge_skipped", NULL);
      if (tp_balance_sweep(tp_now() * 1000) < 0)
        tp_log(TP_LOG_WARN, "balance_sweep_skipped", NULL);
    }
    if (tp_mono_ms() >= next_event_purge) {
      next_event_purge = tp_mono_ms() + H.event_interval_ms;
      struct timespec now;
      clock_gettime(CLOCK_REALTIME, &now);
      if (tp_event_purge((int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000, H.event_retention_s) != 0)
        tp_log(TP_LOG_WARN, "event_purge_skipped", NULL);
    }
    /* No new processor calls once the gateway is stopping: a void started
     * now would outlive the payflow timer and maybe the writer (left "sent"
     * for the next start's recovery); the next start scans again. */
    if (tp_mono_ms() >= next_expiry && !atomic_load(&tp_app.shutting_down)) {
      next_expiry = tp_mono_ms() + H.expiry_interval_ms;
      if (tp_authorization_expiry_scan(tp_now()) < 0)
        tp_log(TP_LOG_WARN, "authorization_expiry_scan_skipped", NULL);
    }
    pthread_mutex_lock(&H.mu);
  }
  pthread_mutex_unlock(&H.mu);
  return NULL;
}

int tp_housekeeping_start(void)
{
  H.ttl = tp_config_int("idempotency", "ttl_seconds", 86400, 1, 30 * 86400);
  H.interval_ms = tp_config_int("idempotency", "purge_interval_ms", 1000, 10, 86400000);
  H.token_ttl = tp_config_int("tokens", "ttl_seconds", 86400, 1, 30 * 86400);
  H.event_retention_s = tp_config_int("events", "retention_seconds", 30 * 86400, 1, 3650LL * 86400);
  H.event_interval_ms = tp_config_int("events", "purge_interval_ms", 1000, 10, 86400000);
  H.merchant_cursor[0] = '\0';
  H.expiry_interval_ms = tp_config_int("authorizations", "scan_interval_ms", 60000, 10, 86400000);
  H.expiry_created = INT64_MIN;
  H.expiry_id[0] = '\0';
  H.sweep_merchant[0] = '\0';
  H.min_free = tp_config_int("store", "min_free_mb", 64, 0, 1 << 20) * 1024 * 1024;
  tp_metric_help("turnpike_store_free_bytes", "Space available to the data directory's file system at the last look.");
  atomic_store(&H.space_low, false);
  space_check();
  H.stop = false;
  tp_cond_init_mono(&H.cv);
  /* The first heartbeat commits before the gateway listens: until it had,
   * /readyz answered 503 store_not_writable for the first milliseconds of
   * every start (a probe, or an alert on that reason, saw a store fault). */
  if (tp_writer_submit_wait(heartbeat_cs()) == 0)
    atomic_store(&H.heartbeat_ms, tp_mono_ms());
  if (pthread_create(&H.thread, NULL, housekeeping_main, NULL) != 0)
    return -1;
  pthread_setname_np(H.thread, "tp-housekeep");
  H.running = true;
  return 0;
}

void tp_housekeeping_stop(void)
{
  if (!H.running)
    return;
  pthread_mutex_lock(&H.mu);
  H.stop = true;
  pthread_cond_signal(&H.cv);
  pthread_mutex_unlock(&H.mu);
  pthread_join(H.thread, NULL);
  H.running = false;
}
