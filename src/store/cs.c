/* Change sets: an ordered list of store operations applied atomically. */
#include "store.h"
#include "jparse.h"
#include "jsonw.h"
#include "store/zjson.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

const struct tp_kind_info tp_kinds[TP_K__COUNT] = {
  [TP_K_PAYMENT_INTENT] = {"payment_intents", "payment_intent", "pi", {"customer", "status"},
                           {"payment_intents_c", NULL}, {NULL, NULL}},
  [TP_K_CHARGE] = {"charges", "charge", "ch", {"payment_intent", "customer"}, {"charges_pi", "charges_c"},
                   {NULL, NULL}},
  [TP_K_REFUND] = {"refunds", "refund", "re", {"payment_intent", "charge"}, {"refunds_pi", "refunds_ch"},
                   {NULL, NULL}},
  [TP_K_CUSTOMER] = {"customers", "customer", "cus", {"email", "deleted"}, {"customers_e", NULL}, {NULL, NULL}},
  [TP_K_PAYMENT_METHOD] = {"payment_methods", "payment_method", "pm", {"customer", "type"},
                           {"payment_methods_c", NULL}, {NULL, NULL}},
  [TP_K_EVENT] = {"events", "event", "evt", {"type", "object_id"}, {"events_t", NULL}, {NULL, NULL}},
  /* by type: refunds, failures and adjustments; nearly every row is a charge */
  [TP_K_BALANCE_TXN] = {"balance_transactions", "balance_transaction", "txn", {"source", "type"},
                        {NULL, "balance_transactions_t"}, {NULL, "charge"}},
  [TP_K_SETUP_INTENT] = {"setup_intents", "setup_intent", "seti", {"customer", "payment_method"},
                         {"setup_intents_c", "setup_intents_pm"}, {NULL, NULL}},
  [TP_K_DISPUTE] = {"disputes", "dispute", "dp", {"charge", "payment_intent"}, {"disputes_ch", "disputes_pi"},
                    {NULL, NULL}},
  [TP_K_TOKEN] = {"tokens", "token", "tok", {"type", "client_ip"}, {NULL, NULL}, {NULL, NULL}},
  [TP_K_SETUP_ATTEMPT] = {"setup_attempts", "setup_attempt", "setatt", {"setup_intent", "payment_method"},
                          {"setup_attempts_si", NULL}, {NULL, NULL}},
  [TP_K_EARLY_FRAUD_WARNING] = {"early_fraud_warnings", "radar.early_fraud_warning", "issfr",
                                {"charge", "payment_intent"}, {"early_fraud_warnings_ch", "early_fraud_warnings_pi"},
                                {NULL, NULL}},
};

int tp_kind_index(enum tp_kind kind, const char *col, const char *value)
{
  const struct tp_kind_info *ki = &tp_kinds[kind];
  for (int i = 0; i < 2 && col; i++)
    if (ki->index[i] && strcmp(col, ki->col[i]) == 0)
      return ki->except[i] && value && strcmp(value, ki->except[i]) == 0 ? -1 : i;
  return -1;
}

struct tp_cs {
  struct tp_cs_op *ops;
  size_t n, cap;
  tp_cs_done_fn done;
  void *done_arg;
};

struct tp_cs *tp_cs_new(void)
{
  struct tp_cs *cs = calloc(1, sizeof *cs);
  if (!cs)
    abort();
  return cs;
}

static char *dup_or_null(const char *s)
{
  if (!s)
    return NULL;
  char *d = strdup(s);
  if (!d)
    abort();
  return d;
}

static struct tp_cs_op *push(struct tp_cs *cs, enum tp_cs_op_type t)
{
  if (cs->n == cs->cap) {
    cs->cap = cs->cap ? cs->cap * 2 : 8;
    cs->ops = realloc(cs->ops, cs->cap * sizeof *cs->ops);
    if (!cs->ops)
      abort();
  }
  struct tp_cs_op *op = &cs->ops[cs->n++];
  memset(op, 0, sizeof *op);
  op->type = t;
  return op;
}

void tp_cs_free(struct tp_cs *cs)
{
  if (!cs)
    return;
  for (size_t i = 0; i < cs->n; i++) {
    struct tp_cs_op *op = &cs->ops[i];
    free(op->merchant);
    free(op->id);
    free(op->s1);
    free(op->s2);
    free(op->s3);
    free(op->s4);
    if (op->data && op->type == TP_OP_VAULT)
      memset(op->data, 0, op->data_len); /* ciphertext, but keep habits */
    free(op->data);
    free(op->zdata);
    free(op->attempt);
  }
  free(cs->ops);
  free(cs);
}

/* Compress an op's JSON for storage here, on the thread that builds the
 * change set, so the single writer thread only binds the smaller blob. The
 * text of an event is kept for the writer's subscribers (webhooks, the
 * stream); other texts are dropped at once. */
static void compress_op(struct tp_cs_op *op, bool keep_text)
{
  size_t zl = 0;
  uint8_t *z = tp_zjson_pack(op->data, op->data_len, &zl);
  if (!z)
    return;
  op->zdata = z;
  op->zdata_len = zl;
  if (!keep_text) {
    free(op->data);
    op->data = NULL;
    op->data_len = 0;
  }
}

/* Column value as text: strings as is, booleans "1"/"0", numbers in decimal,
 * objects by their "id" (an expanded customer), null/absent as SQL NULL. */
static char *col_text(const json_t *v)
{
  char buf[32];
  if (!v || json_is_null(v))
    return NULL;
  if (json_is_string(v))
    return dup_or_null(json_string_value(v));
  if (json_is_boolean(v))
    return dup_or_null(json_is_true(v) ? "1" : "0");
  if (json_is_integer(v)) {
    snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
    return dup_or_null(buf);
  }
  if (json_is_object(v))
    return col_text(json_object_get(v, "id"));
  return NULL;
}

static struct tp_cs_op *put_row_op(struct tp_cs *cs, enum tp_kind kind, const char *merchant, const char *id,
                                   int64_t created, const char *col1, const char *col2, char *data, size_t len)
{
  struct tp_cs_op *op = push(cs, TP_OP_PUT);
  op->kind = kind;
  op->merchant = dup_or_null(merchant);
  op->id = dup_or_null(id);
  op->n1 = created;
  op->s1 = dup_or_null(col1);
  op->s2 = dup_or_null(col2);
  if (!data)
    abort();
  op->data = data;
  op->data_len = len;
  return op;
}

void tp_cs_put_event_around(struct tp_cs *cs, const char *merchant, const char *id, int64_t created,
                            const char *type, const char *object_id, char *data, size_t len, size_t head,
                            size_t olen, const uint8_t *oz, size_t ozlen)
{
  struct tp_cs_op *op = put_row_op(cs, TP_K_EVENT, merchant, id, created, type, object_id, data, len);
  /* The envelope's head, which holds the event id, is stored raw: the
   * writer renumbers the event in place (tp_cs_number_events). The rest is
   * the object's own frame and the compressed tail, or, without an object
   * frame, the rest compressed. */
  size_t hl = 0, rl = 0, tl = 0;
  uint8_t *zh = head > 0 && head <= len ? tp_zjson_raw(data, head, &hl) : NULL;
  uint8_t *zr = NULL, *zt = NULL;
  if (zh && oz && head + olen < len) {
    zt = tp_zjson_pack(data + head + olen, len - head - olen, &tl);
  } else if (zh && head < len) {
    zr = tp_zjson_pack(data + head, len - head, &rl);
    oz = NULL;
    ozlen = 0;
  }
  uint8_t *z = zh && (zt || zr) ? malloc(hl + ozlen + rl + tl) : NULL;
  if (z) {
    memcpy(z, zh, hl);
    if (oz)
      memcpy(z + hl, oz, ozlen);
    if (zr)
      memcpy(z + hl, zr, rl);
    if (zt)
      memcpy(z + hl + ozlen, zt, tl);
    op->zdata = z;
    op->zdata_len = hl + ozlen + rl + tl;
  }
  free(zh);
  free(zr);
  free(zt);
  if (!z)
    compress_op(op, true);
}

/* An event's id, in its key, its text and its stored frame, made anew
 * here, in the order the writer applies change sets: ids made when events
 * are built sort by build time, and two payments finishing together can
 * commit in the other order, so a reader that goes on from the last id it
 * saw (the stream's last_event_id, the webhook outbox) could skip one.
 * The new id has the old one's length and replaces it in place; an event
 * not built by tp_cs_put_event_around keeps its id. */
static void number_event(struct tp_cs_op *op)
{
  static const char pre[] = "{\"id\":\"";
  const size_t pl = sizeof pre - 1;
  size_t il = op->id ? strlen(op->id) : 0;
  if (il == 0 || !op->data || op->data_len < pl + il + 1 || memcmp(op->data, pre, pl) != 0 ||
      memcmp(op->data + pl, op->id, il) != 0 || op->data[pl + il] != '"')
    return;
  uint8_t *zid = NULL;
  if (op->zdata) {
    if (!tp_zjson_is_raw(op->zdata, op->zdata_len) || op->zdata_len < TP_ZJSON_RAW_HEAD + pl + il + 1 ||
        memcmp(op->zdata + TP_ZJSON_RAW_HEAD, op->data, pl + il + 1) != 0)
      return;
    zid = op->zdata + TP_ZJSON_RAW_HEAD + pl;
  }
  char id[TP_ID_MAX];
  tp_id_new(id, "evt");
  if (strlen(id) != il || memcmp(id, op->id, 4) != 0)
    return;
  memcpy(op->id, id, il);
  memcpy(op->data + pl, id, il);
  if (zid)
    memcpy(zid, id, il);
  /* Its created too: taken when the event was built, it could run a second
   * against the commit order the ids now have, and a client polling
   * created[gt] the last it saw could miss one. The envelope's head (raw in
   * the frame as well) holds it as ten digits; the new value, taken now, in
   * commit order, has ten too. */
  static const char cpre[] = "\"created\":";
  size_t scan = op->data_len < 200 ? op->data_len : 200;
  const char *c = memmem(op->data, scan, cpre, sizeof cpre - 1);
  int64_t now = tp_now();
  if (!c || now < 1000000000 || now > 9999999999)
    return;
  size_t at = (size_t)(c - op->data) + sizeof cpre - 1;
  if (at + 11 > op->data_len || strspn(op->data + at, "0123456789") != 10)
    return;
  if (op->zdata && (op->zdata_len < TP_ZJSON_RAW_HEAD + at + 10 ||
                    memcmp(op->zdata + TP_ZJSON_RAW_HEAD + at, op->data + at, 10) != 0))
    return;
  char digits[12];
  snprintf(digits, sizeof digits, "%010lld", (long long)now);
  memcpy(op->data + at, digits, 10);
  if (op->zdata)
    memcpy(op->zdata + TP_ZJSON_RAW_HEAD + at, digits, 10);
  op->n1 = now;
}

void tp_cs_number_events(struct tp_cs *cs)
{
  for (size_t i = 0; i < cs->n; i++)
    if (cs->ops[i].type == TP_OP_PUT && cs->ops[i].kind == TP_K_EVENT)
      number_event(&cs->ops[i]);
}

void tp_cs_put_row(struct tp_cs *cs, enum tp_kind kind, const char *merchant, const char *id, int64_t created,
                   const char *col1, const char *col2, char *data, size_t len)
{
  struct tp_cs_op *op = put_row_op(cs, kind, merchant, id, created, col1, col2, data, len);
  /* The text stays until the set is freed: events go to subscribers as
   * text, and an idempotent reply equal to an object reuses its frame. */
  compress_op(op, true);
}

void tp_cs_put_dumped(struct tp_cs *cs, enum tp_kind kind, const char *merchant, const json_t *obj, char *data,
                      size_t len)
{
  tp_cs_put_framed(cs, kind, merchant, obj, data, len, NULL, 0);
}

bool tp_kind_meta_indexed(enum tp_kind kind)
{
  return kind == TP_K_PAYMENT_INTENT || kind == TP_K_CHARGE || kind == TP_K_CUSTOMER;
}

/* The object's metadata for the index (tp_cs_op, s3/n2 and s4): string
 * values only, and none holding a NUL (a query cannot name it). */
static void meta_pairs(struct tp_cs_op *op, const json_t *obj)
{
  const json_t *md = json_object_get(obj, "metadata");
  if (!json_is_object(md) || json_object_size(md) == 0)
    return;
  size_t cap = 0;
  const char *k;
  const json_t *v;
  json_object_foreach((json_t *)(uintptr_t)md, k, v)
    cap += strlen(k) + 1 + json_string_length(v) + 1;
  char *buf = malloc(cap), *p = buf;
  json_t *keys = json_array();
  if (!buf || !keys)
    abort();
  json_object_foreach((json_t *)(uintptr_t)md, k, v) {
    const char *sv = json_string_value(v);
    size_t kl = strlen(k), vl = json_string_length(v);
    if (!sv || strlen(sv) != vl || kl == 0)
      continue;
    memcpy(p, k, kl + 1);
    p += kl + 1;
    memcpy(p, sv, vl + 1);
    p += vl + 1;
    json_array_append_new(keys, json_string(k));
  }
  size_t n = 0;
  op->s4 = p > buf ? tp_json_dump(keys, &n) : NULL;
  json_decref(keys);
  if (p == buf) {
    free(buf);
    return;
  }
  if (!op->s4)
    abort();
  op->s3 = buf;
  op->n2 = p - buf;
}

void tp_cs_put_framed(struct tp_cs *cs, enum tp_kind kind, const char *merchant, const json_t *obj, char *data,
                      size_t len, uint8_t *z, size_t zlen)
{
  const struct tp_kind_info *ki = &tp_kinds[kind];
  char *c1, *c2;
  if (kind == TP_K_EVENT) {
    c1 = col_text(json_object_get(obj, "type"));
    c2 = col_text(json_object_get(json_object_get(json_object_get(obj, "data"), "object"), "id"));
  } else {
    c1 = col_text(json_object_get(obj, ki->col[0]));
    c2 = col_text(json_object_get(obj, ki->col[1]));
  }
  struct tp_cs_op *op = put_row_op(cs, kind, merchant, json_string_value(json_object_get(obj, "id")),
                                   json_integer_value(json_object_get(obj, "created")), c1, c2, data, len);
  free(c1);
  free(c2);
  if (tp_kind_meta_indexed(kind))
    meta_pairs(op, obj);
  if (z) { /* compressed by the caller (tp_zjson_pack of data) */
    op->zdata = z;
    op->zdata_len = zlen;
  } else {
    compress_op(op, true);
  }
}

void tp_cs_put(struct tp_cs *cs, enum tp_kind kind, const char *merchant, const json_t *obj)
{
  size_t len = 0;
  char *data = tp_json_dump(obj, &len);
  tp_cs_put_dumped(cs, kind, merchant, obj, data, len);
}

void tp_cs_ledger(struct tp_cs *cs, const char *txn_id, const char *merchant, const char *account,
                  const char *currency, int64_t amount)
{
  struct tp_cs_op *op = push(cs, TP_OP_LEDGER);
  op->id = dup_or_null(txn_id);
  op->merchant = dup_or_null(merchant);
  op->s1 = dup_or_null(account);
  op->s2 = dup_or_null(currency);
  op->n1 = amount;
}

void tp_cs_attempt(struct tp_cs *cs, const struct tp_attempt *a)
{
  struct tp_cs_op *op = push(cs, TP_OP_ATTEMPT);
  op->attempt = malloc(sizeof *a);
  if (!op->attempt)
    abort();
  memcpy(op->attempt, a, sizeof *a);
}

void tp_cs_idem(struct tp_cs *cs, const char *merchant, const char *key, const char *req_hash,
                const char *request_id, int status, const char *body)
{
  struct tp_cs_op *op = push(cs, TP_OP_IDEM);
  op->merchant = dup_or_null(merchant);
  op->id = dup_or_null(key);
  op->s1 = dup_or_null(req_hash);
  op->s2 = request_id && *request_id ? dup_or_null(request_id) : NULL;
  op->n1 = status;
  op->data = dup_or_null(body);
  op->data_len = body ? strlen(body) : 0;
  if (!body)
    return;
  /* A reply is most often the object this set just wrote (the PaymentIntent
   * after a confirmation), byte for byte: its frame is reused instead of
   * compressing the same text again. */
  for (size_t i = 0; i + 1 < cs->n; i++) {
    const struct tp_cs_op *o = &cs->ops[i];
    if (o->type == TP_OP_PUT && o->zdata && o->data && o->data_len == op->data_len &&
        memcmp(o->data, op->data, op->data_len) == 0) {
      op->zdata = malloc(o->zdata_len);
      if (!op->zdata)
        abort();
      memcpy(op->zdata, o->zdata, o->zdata_len);
      op->zdata_len = o->zdata_len;
      free(op->data);
      op->data = NULL;
      op->data_len = 0;
      return;
    }
  }
  compress_op(op, false);
}

void tp_cs_vault(struct tp_cs *cs, const char *token, const char *merchant, const void *blob, size_t len)
{
  struct tp_cs_op *op = push(cs, TP_OP_VAULT);
  op->id = dup_or_null(token);
  op->merchant = dup_or_null(merchant);
  op->data = malloc(len ? len : 1);
  if (!op->data)
    abort();
  memcpy(op->data, blob, len);
  op->data_len = len;
}

void tp_cs_sql(struct tp_cs *cs, const char *sql, const json_t *args, int min_changes)
{
  struct tp_cs_op *op = push(cs, TP_OP_SQL);
  op->s1 = dup_or_null(sql);
  op->data = args ? tp_json_dump(args, &op->data_len) : NULL;
  if (args && !op->data)
    abort();
  op->n1 = min_changes;
}

void tp_cs_on_done(struct tp_cs *cs, tp_cs_done_fn fn, void *arg)
{
  cs->done = fn;
  cs->done_arg = arg;
}

size_t tp_cs_count(const struct tp_cs *cs)
{
  return cs->n;
}

const struct tp_cs_op *tp_cs_op_at(const struct tp_cs *cs, size_t i)
{
  return i < cs->n ? &cs->ops[i] : NULL;
}

/* Used by the writer only. */
void tp_cs_run_done(struct tp_cs *cs, int rc);
void tp_cs_run_done(struct tp_cs *cs, int rc)
{
  if (cs->done)
    cs->done(cs, rc, cs->done_arg);
}

_Thread_local bool tp_store_read_failed;

char *tp_store_get(struct tp_store *st, enum tp_kind kind, const char *merchant, const char *id)
{
  tp_store_read_failed = false;
  return st->ops->get(st->cls, kind, merchant, id);
}

int tp_store_live(struct tp_store *st, enum tp_kind kind, const char *merchant, const char *id)
{
  tp_store_read_failed = false;
  return st->ops->live(st->cls, kind, merchant, id);
}

json_t *tp_store_get_json(struct tp_store *st, enum tp_kind kind, const char *merchant, const char *id)
{
  tp_store_read_failed = false;
  char *s = st->ops->get(st->cls, kind, merchant, id);
  if (!s)
    return NULL;
  json_t *j = tp_json_loads(s);
  free(s);
  return j;
}

json_t *tp_store_query(struct tp_store *st, const char *sql, const json_t *args)
{
  return st->ops->query(st->cls, sql, args);
}

json_t *tp_store_query_take(struct tp_store *st, const char *sql, json_t *args)
{
  json_t *rows = st->ops->query(st->cls, sql, args);
  json_decref(args);
  return rows;
}
