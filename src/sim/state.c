/* The simulator's in-memory ledger: every reference it has answered, and the
 * state of each authorization (captured, refunded, voided, reversed). Built
 * from the journal at start-up, so idempotency by reference survives a
 * restart. Decisions are made under one lock (they are short); the answer is
 * released to callers only once its journal row is committed. */
#include "connectors/connector.h"
#include "jpack.h"
#include "log.h"
#include "sim/sim.h"
#include "util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define INITIAL_BUCKETS (1u << 14)
#define KEY_MAX (TP_SIM_NAME_MAX + TP_SIM_REF_MAX + 32)

struct rec {
  struct rec *next_ref, *next_id;
  char key[KEY_MAX];    /* processor, scope, reference, terminal */
  char id_key[KEY_MAX]; /* processor, txn id */
  enum tp_sim_op op;
  char reference[TP_SIM_REF_MAX + 1];
  /* authorizations */
  char id[TP_SIM_REF_MAX + 1];
  char payment[TP_SIM_REF_MAX + 1];
  int64_t amount, captured, refunded;
  char currency[4];
  bool approved, voided, reversed;
  /* ISO captures and refunds: the authorization they belong to (records live
   * until shutdown), their amount, approved = captured / refund succeeded,
   * undone = taken back by a 0400 naming their own RRN. */
  struct rec *parent;
  bool undone;
  char *response; /* immutable once set */
  bool committed;
  struct tp_sim_waiter *waiters;
};

struct table {
  struct rec **b;
  size_t n, cap;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct table by_ref, by_id;

static uint64_t hash(const char *s)
{
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

static struct rec **link_of(struct rec *r, bool id)
{
  return id ? &r->next_id : &r->next_ref;
}

static const char *key_of(struct rec *r, bool id)
{
  return id ? r->id_key : r->key;
}

static void table_grow(struct table *t, bool id)
{
  size_t ncap = t->cap ? t->cap * 2 : INITIAL_BUCKETS;
  struct rec **nb = calloc(ncap, sizeof *nb);
  if (!nb)
    return; /* keep the longer chains */
  for (size_t i = 0; i < t->cap; i++) {
    struct rec *r = t->b[i];
    while (r) {
      struct rec *next = *link_of(r, id);
      size_t h = hash(key_of(r, id)) & (ncap - 1);
      *link_of(r, id) = nb[h];
      nb[h] = r;
      r = next;
    }
  }
  free(t->b);
  t->b = nb;
  t->cap = ncap;
}

static struct rec *table_get(struct table *t, bool id, const char *key)
{
  if (!t->cap)
    return NULL;
  for (struct rec *r = t->b[hash(key) & (t->cap - 1)]; r; r = *link_of(r, id))
    if (strcmp(key_of(r, id), key) == 0)
      return r;
  return NULL;
}

static void table_put(struct table *t, bool id, struct rec *r)
{
  if (t->n + 1 > t->cap * 2 || !t->cap)
    table_grow(t, id);
  size_t h = hash(key_of(r, id)) & (t->cap - 1);
  *link_of(r, id) = t->b[h];
  t->b[h] = r;
  t->n++;
}

/* REST shares one reference namespace for all operations; ISO keys an
 * authorization and its reversal apart (both carry the same RRN). */
static void make_key(char out[KEY_MAX], const char *processor, bool iso, enum tp_sim_op op, const char *ref,
                     const char *terminal)
{
  char scope = !iso ? 'x' : (op == TP_SIM_REVERSAL ? 'r' : 'a');
  snprintf(out, KEY_MAX, "%s\x1f%c\x1f%s\x1f%s", processor, scope, ref, terminal ? terminal : "");
}

static void make_id_key(char out[KEY_MAX], const char *processor, const char *id)
{
  snprintf(out, KEY_MAX, "%s\x1f%s", processor, id);
}

const char *tp_sim_op_name(enum tp_sim_op op)
{
  static const char *const names[] = {"authorize", "capture", "void", "refund", "reversal"};
  return names[op];
}

/* The authorization a capture/void/refund names: by reference or by id. */
static struct rec *find_auth(const char *processor, bool iso, const char *target, const char *terminal)
{
  char k[KEY_MAX];
  make_key(k, processor, iso, TP_SIM_AUTHORIZE, target, terminal);
  struct rec *r = table_get(&by_ref, false, k);
  if (!r && !iso) {
    /* By id: a REST call names a REST authorization only (one reached an
     * ISO authorization, which a restart did not rebuild so: captured
     * twice). ISO messages name theirs by RRN. */
    make_id_key(k, processor, target);
    r = table_get(&by_id, true, k);
    const char *scope = r ? strchr(r->key, '\x1f') : NULL;
    if (r && (!scope || scope[1] != 'x'))
      r = NULL;
  }
  return r && r->op == TP_SIM_AUTHORIZE ? r : NULL;
}

/* An ISO capture (0220) or refund that a reversal names by its own RRN: the
 * gateway reverses any request that timed out, not only authorizations. */
static struct rec *find_txn(const char *processor, const char *rrn, const char *terminal)
{
  char k[KEY_MAX];
  make_key(k, processor, true, TP_SIM_CAPTURE, rrn, terminal);
  struct rec *r = table_get(&by_ref, false, k);
  return r && (r->op == TP_SIM_CAPTURE || r->op == TP_SIM_REFUND) && r->parent ? r : NULL;
}

/* Take a capture or a succeeded refund back from its authorization. */
static void undo_txn(struct rec *t)
{
  if (t->undone)
    return;
  t->undone = true;
  if (!t->approved)
    return; /* a failed refund moved nothing */
  if (t->op == TP_SIM_CAPTURE)
    t->parent->captured = 0; /* one capture per authorization */
  else
    t->parent->refunded -= t->amount;
}

static char *dump(json_t *o)
{
  char *s = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (!s)
    abort(); /* out of memory building a few hundred bytes */
  return s;
}

static void on_commit(void *arg, bool ok)
{
  struct rec *r = arg;
  if (!ok) {
    /* The answer could not be made durable: stop rather than answer (or
     * later replay) something a restarted sim would not know. */
    tp_log(TP_LOG_ERROR, "sim_journal_lost", "{s:s}", "reference", r->reference);
    _exit(3);
  }
  pthread_mutex_lock(&mu);
  r->committed = true;
  struct tp_sim_waiter *w = r->waiters;
  r->waiters = NULL;
  /* A REST void that fenced an unseen reference, or an ISO reversal of an
   * unseen RRN, makes its tombstone durable too
   * (an authorization arriving late waits on it). */
  struct rec *t = (r->op == TP_SIM_VOID || r->op == TP_SIM_REVERSAL) && r->parent && !r->parent->committed
                      ? r->parent
                      : NULL;
  struct tp_sim_waiter *tw = NULL;
  if (t) {
    t->committed = true;
    tw = t->waiters;
    t->waiters = NULL;
  }
  pthread_mutex_unlock(&mu);
  while (w) {
    struct tp_sim_waiter *next = w->next;
    w->fn(w, r->response, true);
    w = next;
  }
  while (tw) {
    struct tp_sim_waiter *next = tw->next;
    tw->fn(tw, t->response, true);
    tw = next;
  }
}

/* A REST void naming a reference never seen (not an authorization id): the
 * caller lost the answer to a call with that reference (an authorization,
 * a capture, a refund) that may still be on its way (held in a socket
 * buffer, a stalled process), and fences it before going on. Record the reference as an authorization that was voided
 * before it arrived: an authorization arriving later with it gets this
 * answer and charges nothing. Under mu. */
static struct rec *alloc_rec(const char *key, enum tp_sim_op op, const char *reference)
{
  struct rec *r = calloc(1, sizeof *r);
  if (!r)
    abort();
  tp_scopy(r->key, sizeof r->key, key);
  r->op = op;
  tp_scopy(r->reference, sizeof r->reference, reference);
  return r;
}

static struct rec *tombstone(const struct tp_sim_request *q)
{
  char key[KEY_MAX];
  make_key(key, q->processor, false, TP_SIM_AUTHORIZE, q->target, q->terminal);
  struct rec *t = alloc_rec(key, TP_SIM_AUTHORIZE, q->target);
  t->voided = true;
  t->response = dump(tp_pack("{s:n, s:s, s:s, s:s, s:s, s:I, s:n, s:b, s:s, s:n}", "id", "operation", "authorize",
                             "reference", q->target, "status", "voided", "payment", "", "amount", (json_int_t)0,
                             "currency", "captured", 0, "decline_code", "voided_before_authorization",
                             "auth_code"));
  table_put(&by_ref, false, t);
  return t;
}

/* An ISO reversal naming an RRN the host never saw (answered 25): the
 * original may still be on its way (buffered on a connection the gateway
 * has given up on, overtaken by the reversal on a new one). Record the RRN
 * as an authorization reversed before it arrived, so that a late original
 * is declined and charges nothing, as a REST fence does; repeats of the
 * reversal go on answering 25, which stays true. Under mu. */
static struct rec *iso_tombstone(const char *processor, const char *rrn, const char *terminal)
{
  char key[KEY_MAX];
  make_key(key, processor, true, TP_SIM_AUTHORIZE, rrn, terminal);
  struct rec *t = alloc_rec(key, TP_SIM_AUTHORIZE, rrn);
  t->reversed = true;
  t->response = dump(tp_pack("{s:n, s:s, s:s, s:s, s:s, s:I, s:n, s:b, s:s, s:n}", "id", "operation", "authorize",
                             "reference", rrn, "status", "reversed", "payment", "", "amount", (json_int_t)0,
                             "currency", "captured", 0, "decline_code", "reversed_before_authorization",
                             "auth_code"));
  table_put(&by_ref, false, t);
  return t;
}

static struct rec *new_rec(const struct tp_sim_request *q, const char *key)
{
  return alloc_rec(key, q->op, q->reference);
}

static struct tp_sim_entry *new_entry(const struct tp_sim_request *q, struct rec *r)
{
  struct tp_sim_entry *e = calloc(1, sizeof *e);
  if (!e)
    abort();
  tp_scopy(e->processor, sizeof e->processor, q->processor);
  tp_scopy(e->protocol, sizeof e->protocol, q->iso ? "iso" : "rest");
  tp_scopy(e->operation, sizeof e->operation, tp_sim_op_name(q->op));
  tp_scopy(e->reference, sizeof e->reference, q->reference);
  tp_scopy(e->terminal, sizeof e->terminal, q->terminal ? q->terminal : "");
  tp_scopy(e->payment, sizeof e->payment, q->payment ? q->payment : "");
  e->done = on_commit;
  e->arg = r;
  return e;
}

static void decide_authorization(const struct tp_sim_request *q, char decline[48])
{
  decline[0] = '\0';
  const char *d = tp_test_card_decline(q->pan, !q->no_cvc);
  if (tp_card_lapsed(q->exp_month, q->exp_year, time(NULL)))
    d = "expired_card";
  if (*d) {
    snprintf(decline, 48, "%s", d);
    return;
  }
  if (tp_test_card_requires_3ds(q->pan, false, false))
    return; /* 3DS was done at the gateway: the issuer approves */
  double rate = tp_sim_decline_rate(q->b, tp_sim_brand(q->pan), q->currency);
  if (rate > 0 && tp_sim_rand() < rate)
    snprintf(decline, 48, "%s", tp_sim_rand() < 0.5 ? "generic_decline" : "do_not_honor");
}

enum tp_sim_result tp_sim_process(const struct tp_sim_request *q, struct tp_sim_waiter *w, char **response,
                                  bool *replayed)
{
  char key[KEY_MAX];
  make_key(key, q->processor, q->iso, q->op, q->reference, q->terminal);
  *response = NULL;
  *replayed = false;
  pthread_mutex_lock(&mu);
  struct rec *r = table_get(&by_ref, false, key);
  if (r) {
    *replayed = true;
    if (r->op != q->op) {
      pthread_mutex_unlock(&mu);
      char msg[160];
      snprintf(msg, sizeof msg, "reference already used for a %s", tp_sim_op_name(r->op));
      *response = strdup(msg);
      return TP_SIM_CONFLICT;
    }
    if (r->committed) {
      *response = strdup(r->response);
      pthread_mutex_unlock(&mu);
      if (!*response)
        abort();
      return TP_SIM_DONE;
    }
    w->next = r->waiters;
    r->waiters = w;
    pthread_mutex_unlock(&mu);
    return TP_SIM_WAIT;
  }

  struct rec *auth = NULL, *txn = NULL;
  if (q->op != TP_SIM_AUTHORIZE) {
    auth = find_auth(q->processor, q->iso, q->target, q->terminal);
    if (!auth && q->op == TP_SIM_REVERSAL && q->iso) {
      txn = find_txn(q->processor, q->target, q->terminal);
      if (txn)
        auth = txn->parent;
    }
    if (!auth && q->op == TP_SIM_VOID && !q->iso && strncmp(q->target, "auth_", 5) != 0) {
      /* Only a reference nothing used yet: one a capture or refund already
       * used cannot be fenced (that call happened). */
      char tk[KEY_MAX];
      make_key(tk, q->processor, false, TP_SIM_AUTHORIZE, q->target, q->terminal);
      struct rec *used = table_get(&by_ref, false, tk);
      if (used) {
        pthread_mutex_unlock(&mu);
        char msg[160];
        snprintf(msg, sizeof msg, "reference already used for a %s", tp_sim_op_name(used->op));
        *response = strdup(msg);
        return TP_SIM_CONFLICT;
      }
      auth = tombstone(q);
    }
    if (!auth && q->op != TP_SIM_REVERSAL) {
      pthread_mutex_unlock(&mu);
      return TP_SIM_NOT_FOUND;
    }
  }
  const char *conflict = NULL;
  int64_t amount = q->amount;
  switch (q->op) {
  case TP_SIM_CAPTURE:
    if (amount < 0)
      amount = auth->amount;
    if (!auth->approved)
      conflict = "the authorization was declined";
    else if (auth->voided || auth->reversed)
      conflict = "the authorization was voided";
    else if (auth->captured > 0)
      conflict = "the authorization is already captured";
    else if (q->currency[0] && strcmp(q->currency, auth->currency) != 0)
      conflict = "the currency differs from the authorization's";
    else if (amount > auth->amount) {
      pthread_mutex_unlock(&mu);
      return TP_SIM_TOO_LARGE;
    }
    break;
  case TP_SIM_VOID:
    if (!auth->approved && !auth->voided)
      conflict = "the authorization was declined";
    else if (auth->captured > 0)
      conflict = "the authorization is captured: refund it instead";
    break;
  case TP_SIM_REFUND:
    if (q->currency[0] && strcmp(q->currency, auth->currency) != 0)
      conflict = "the currency differs from the authorization's";
    break;
  case TP_SIM_REVERSAL:
    /* Reversing a capture (or the whole authorization) after part of it was
     * refunded would give that part back twice. */
    if (txn && txn->op == TP_SIM_CAPTURE && !txn->undone && auth->refunded > 0)
      conflict = "the capture is partly refunded: refund the rest instead";
    else if (!txn && auth && !auth->reversed && auth->refunded > 0)
      conflict = "the authorization is partly refunded: refund the rest instead";
    break;
  default:
    break;
  }
  if (conflict) {
    pthread_mutex_unlock(&mu);
    *response = strdup(conflict);
    return TP_SIM_CONFLICT;
  }

  r = new_rec(q, key);
  struct tp_sim_entry *e = new_entry(q, r);
  json_t *o = NULL;
  char id[TP_ID_MAX];
  switch (q->op) {
  case TP_SIM_AUTHORIZE: {
    char decline[48], code[7] = "";
    decide_authorization(q, decline);
    r->approved = decline[0] == '\0';
    if (r->approved)
      tp_sim_auth_code(code);
    tp_id_new(id, "auth");
    tp_scopy(r->id, sizeof r->id, id);
    tp_scopy(r->payment, sizeof r->payment, q->payment ? q->payment : "");
    r->amount = q->amount;
    tp_scopy(r->currency, sizeof r->currency, q->currency);
    r->captured = r->approved && q->capture ? q->amount : 0;
    o = tp_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:b}", "id", id, "operation", "authorize", "reference",
                q->reference, "status", r->approved ? "approved" : "declined", "payment",
                q->payment ? q->payment : "", "amount", (json_int_t)q->amount, "currency", q->currency,
                "captured", (int)(r->captured > 0));
    json_object_set_new(o, "decline_code", r->approved ? json_null() : json_string(decline));
    json_object_set_new(o, "auth_code", r->approved ? json_string(code) : json_null());
    if (q->iso && q->terminal)
      json_object_set_new(o, "terminal", json_string(q->terminal));
    tp_scopy(e->txn_id, sizeof e->txn_id, id);
    e->amount = q->amount;
    tp_scopy(e->status, sizeof e->status, r->approved ? "approved" : "declined");
    tp_scopy(e->decline_code, sizeof e->decline_code, decline);
    make_id_key(r->id_key, q->processor, id);
    table_put(&by_id, true, r);
    break;
  }
  case TP_SIM_CAPTURE:
    auth->captured = amount;
    r->parent = auth;
    r->amount = amount;
    r->approved = true;
    tp_id_new(id, "cap");
    o = tp_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:s}", "id", id, "operation", "capture", "reference",
                q->reference, "authorization", auth->id, "status", "captured", "amount", (json_int_t)amount,
                "currency", auth->currency);
    e->amount = amount;
    snprintf(e->status, sizeof e->status, "captured");
    break;
  case TP_SIM_VOID:
    auth->voided = true;
    if (!auth->committed)
      r->parent = auth; /* its tombstone, committed with this row */
    tp_id_new(id, "void");
    o = tp_pack("{s:s, s:s, s:s, s:o, s:s, s:I, s:s}", "id", id, "operation", "void", "reference",
                q->reference, "authorization", auth->id[0] ? json_string(auth->id) : json_null(), "status",
                "voided", "amount", (json_int_t)auth->amount, "currency", auth->currency);
    if (!auth->id[0])
      json_object_set_new(o, "before_authorization", json_true());
    e->amount = auth->amount;
    snprintf(e->status, sizeof e->status, "voided");
    break;
  case TP_SIM_REFUND: {
    int64_t left = auth->captured - auth->refunded;
    if (amount < 0)
      amount = left;
    bool ok = auth->approved && !auth->voided && !auth->reversed && amount > 0 && amount <= left;
    if (ok)
      auth->refunded += amount;
    r->parent = auth;
    r->amount = amount;
    r->approved = ok;
    tp_id_new(id, "rf");
    o = tp_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:s}", "id", id, "operation", "refund", "reference",
                q->reference, "authorization", auth->id, "status", ok ? "succeeded" : "failed", "amount",
                (json_int_t)amount, "currency", auth->currency);
    json_object_set_new(o, "failure_reason", ok ? json_null() : json_string("amount_exceeds_captured"));
    e->amount = amount;
    tp_scopy(e->status, sizeof e->status, ok ? "succeeded" : "failed");
    break;
  }
  case TP_SIM_REVERSAL: {
    /* Of an authorization (captured or not: its capture goes with it), or of
     * a capture or refund named by its own RRN (only that one is undone). */
    const char *st = txn ? (txn->op == TP_SIM_CAPTURE ? "capture_reversed" : "refund_reversed")
                         : auth ? "reversed" : "not_found";
    int64_t amt = txn ? txn->amount : auth ? auth->amount : q->amount;
    if (txn)
      undo_txn(txn);
    else if (auth)
      auth->reversed = true;
    else if (q->iso)
      r->parent = iso_tombstone(q->processor, q->target, q->terminal); /* committed with this row */
    tp_id_new(id, "rev");
    o = tp_pack("{s:s, s:s, s:s, s:s, s:I}", "id", id, "operation", "reversal", "reference", q->reference,
                "status", st, "amount", (json_int_t)amt);
    if (q->terminal)
      json_object_set_new(o, "terminal", json_string(q->terminal));
    e->amount = amt;
    tp_scopy(e->status, sizeof e->status, st);
    break;
  }
  }
  if (auth) {
    tp_scopy(e->target, sizeof e->target, auth->reference);
    snprintf(e->payment, sizeof e->payment, "%s", auth->payment); /* the journal groups by payment */
    tp_scopy(e->currency, sizeof e->currency, auth->currency);
  } else
    tp_scopy(e->currency, sizeof e->currency, q->currency);
  tp_scopy(e->txn_id, sizeof e->txn_id, id);
  r->response = dump(o);
  e->response = strdup(r->response);
  if (!e->response)
    abort();
  w->next = NULL;
  r->waiters = w;
  table_put(&by_ref, false, r);
  /* Queued under the lock, so rows reach the FIFO writer in decision order:
   * an authorization's row is never committed after a capture, void or
   * refund that depended on it (the start-up replay relies on that). */
  tp_sim_journal_submit(e);
  pthread_mutex_unlock(&mu);
  return TP_SIM_WAIT;
}

/* Status query (REST): DONE with a copy, WAIT until the row is durable, or NOT_FOUND. */
enum tp_sim_result tp_sim_status(const char *processor, const char *reference, struct tp_sim_waiter *w,
                                 char **response)
{
  char key[KEY_MAX];
  make_key(key, processor, false, TP_SIM_AUTHORIZE, reference, "");
  *response = NULL;
  pthread_mutex_lock(&mu);
  struct rec *r = table_get(&by_ref, false, key);
  if (!r) {
    pthread_mutex_unlock(&mu);
    return TP_SIM_NOT_FOUND;
  }
  if (!r->committed) {
    w->next = r->waiters;
    r->waiters = w;
    pthread_mutex_unlock(&mu);
    return TP_SIM_WAIT;
  }
  /* An authorization voided since (a fence reaching it after it arrived, or
   * a cancel) answers as it stands now, "voided": it holds nothing. A
   * tombstone's answer already says so. */
  bool voided = r->op == TP_SIM_AUTHORIZE && r->voided && r->approved;
  *response = strdup(r->response);
  pthread_mutex_unlock(&mu);
  if (!*response)
    abort();
  if (voided) {
    json_t *o = json_loads(*response, 0, NULL);
    if (o) {
      json_object_set_new(o, "status", json_string("voided"));
      json_object_set_new(o, "voided_after_authorization", json_true());
      char *s = json_dumps(o, JSON_COMPACT);
      json_decref(o);
      if (s) {
        free(*response);
        *response = s;
      }
    }
  }
  return TP_SIM_DONE;
}

char *tp_sim_lookup(const char *processor, bool iso, const char *reference, const char *terminal)
{
  char key[KEY_MAX];
  make_key(key, processor, iso, TP_SIM_AUTHORIZE, reference, terminal);
  pthread_mutex_lock(&mu);
  struct rec *r = table_get(&by_ref, false, key);
  char *s = r && r->committed ? strdup(r->response) : NULL;
  pthread_mutex_unlock(&mu);
  return s;
}

/* ---- start-up replay ------------------------------------------------------ */
static void replay_one(const struct tp_sim_entry *e, void *arg)
{
  long *n = arg;
  bool iso = strcmp(e->protocol, "iso") == 0;
  enum tp_sim_op op;
  if (!strcmp(e->operation, "authorize"))
    op = TP_SIM_AUTHORIZE;
  else if (!strcmp(e->operation, "capture"))
    op = TP_SIM_CAPTURE;
  else if (!strcmp(e->operation, "void"))
    op = TP_SIM_VOID;
  else if (!strcmp(e->operation, "refund"))
    op = TP_SIM_REFUND;
  else if (!strcmp(e->operation, "reversal"))
    op = TP_SIM_REVERSAL;
  else
    return;
  char key[KEY_MAX];
  make_key(key, e->processor, iso, op, e->reference, e->terminal);
  if (table_get(&by_ref, false, key))
    return; /* cannot happen: references are answered once */
  struct rec *r = alloc_rec(key, op, e->reference);
  r->response = strdup(e->response ? e->response : "{}");
  r->committed = true;
  struct rec *auth = e->target[0] ? find_auth(e->processor, iso, e->target, e->terminal) : NULL;
  switch (op) {
  case TP_SIM_AUTHORIZE:
    tp_scopy(r->id, sizeof r->id, e->txn_id);
    tp_scopy(r->payment, sizeof r->payment, e->payment);
    r->amount = e->amount;
    tp_scopy(r->currency, sizeof r->currency, e->currency);
    r->approved = strcmp(e->status, "approved") == 0;
    if (r->approved && strstr(r->response, "\"captured\":true"))
      r->captured = e->amount;
    make_id_key(r->id_key, e->processor, e->txn_id);
    table_put(&by_id, true, r);
    break;
  case TP_SIM_CAPTURE:
    if (auth) {
      auth->captured = e->amount;
      r->parent = auth;
      r->amount = e->amount;
      r->approved = true;
    }
    break;
  case TP_SIM_VOID:
    if (!auth && !iso && e->target[0]) {
      /* a fence of a reference never seen (tombstone) */
      struct tp_sim_request q = {.processor = e->processor, .target = e->target, .terminal = e->terminal};
      auth = tombstone(&q);
      auth->committed = true;
    }
    if (auth)
      auth->voided = true;
    break;
  case TP_SIM_REFUND:
    r->approved = !strcmp(e->status, "succeeded");
    if (auth && r->approved)
      auth->refunded += e->amount;
    if (auth) {
      r->parent = auth;
      r->amount = e->amount;
    }
    break;
  case TP_SIM_REVERSAL:
    if (iso && !auth && !strcmp(e->status, "not_found") &&
        !find_auth(e->processor, true, e->reference, e->terminal))
      iso_tombstone(e->processor, e->reference, e->terminal)->committed = true; /* as when it was answered */
    if (auth && !strcmp(e->status, "reversed"))
      auth->reversed = true;
    else if (iso && (!strcmp(e->status, "capture_reversed") || !strcmp(e->status, "refund_reversed"))) {
      /* The reversal's reference is the capture's or refund's own RRN. */
      struct rec *t = find_txn(e->processor, e->reference, e->terminal);
      if (t)
        undo_txn(t);
    }
    break;
  }
  table_put(&by_ref, false, r);
  (*n)++;
}

int tp_sim_state_load(void)
{
  long n = 0;
  pthread_mutex_lock(&mu);
  int rc = tp_sim_journal_replay(replay_one, &n);
  pthread_mutex_unlock(&mu);
  tp_log(TP_LOG_INFO, "sim_journal_loaded", "{s:I}", "entries", (json_int_t)n);
  return rc;
}

void tp_sim_state_free(void)
{
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < by_ref.cap; i++) {
    struct rec *r = by_ref.b[i];
    while (r) {
      struct rec *next = r->next_ref;
      free(r->response);
      free(r);
      r = next;
    }
  }
  free(by_ref.b);
  free(by_id.b);
  memset(&by_ref, 0, sizeof by_ref);
  memset(&by_id, 0, sizeof by_id);
  pthread_mutex_unlock(&mu);
}
