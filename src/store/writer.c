/* The group-commit writer: one thread owns the write connection, takes every
 * queued change set (up to TP_WRITER_MAX_BATCH), applies them in one
 * transaction, commits (fsync), then hands the batch to the completion
 * thread, which runs each completion in commit order. Under load a batch
 * fills while the previous one is being fsynced, so one fsync serves many
 * payments. */
#include "store.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

void tp_cs_run_done(struct tp_cs *cs, int rc);

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct tp_cs **q;
  size_t head, len;
  bool running, stopping;
  pthread_t thread;
  struct tp_store *st;
  struct tp_writer_stats stats;
  struct { tp_event_fn fn; void *arg; } subs[TP_WRITER_MAX_SUBSCRIBERS];
  _Atomic size_t nsubs;
  _Atomic bool last_batch_failed;
} W = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

int tp_writer_subscribe(tp_event_fn fn, void *arg)
{
  /* One registering thread at a time (start-up); the writer reads the count
   * atomically, so an entry is complete before it is seen. */
  size_t n = atomic_load(&W.nsubs);
  if (n == TP_WRITER_MAX_SUBSCRIBERS)
    return -1;
  W.subs[n].fn = fn;
  W.subs[n].arg = arg;
  atomic_store(&W.nsubs, n + 1);
  return 0;
}

/* Hand the committed events of one change set to every subscriber. */
static void publish_events(struct tp_cs *cs)
{
  size_t n = tp_cs_count(cs);
  for (size_t i = 0; i < n; i++) {
    const struct tp_cs_op *op = tp_cs_op_at(cs, i);
    if (op->type != TP_OP_PUT || op->kind != TP_K_EVENT)
      continue;
    size_t nsubs = atomic_load(&W.nsubs);
    for (size_t k = 0; k < nsubs; k++)
      W.subs[k].fn(op->merchant, op->id, op->s1, op->data, op->data_len, W.subs[k].arg);
  }
}

/* Hand the results of one committed (and synced) batch back: events to the
 * subscribers, then each change set's completion, in commit order. */
static void finish_batch(struct tp_cs **batch, const int *rc, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    if (rc[i] == 0 && W.nsubs > 0)
      publish_events(batch[i]);
    tp_cs_run_done(batch[i], rc[i]);
    tp_cs_free(batch[i]);
  }
}

#define TP_WRITER_MAX_UNSYNCED 64 /* committed batches waiting for the syncer */
struct unsynced {
  struct tp_cs **batch;
  int *rc;
  size_t n;
  char first_event[TP_ID_MAX]; /* its first event's id, "" for none */
  uint64_t seq;                /* its number (seq_committing) */
};
/* Batches numbered as the writer starts committing them, and the highest
 * number on disk: a reply made from reads is held until every batch begun
 * before it is synced (tp_writer_read_mark), or a reader was shown a
 * payment, a charge or an event that a power cut then erased. */
static atomic_ullong seq_committing, seq_synced;
typedef void (*synced_fn)(void);
static _Atomic(synced_fn) synced_cb;
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv, space;
  struct unsynced q[TP_WRITER_MAX_UNSYNCED];
  size_t head, len;
  bool on, sync, stopping;
  pthread_t thread;
  /* Events at or past these ids may be committed and not yet on disk:
   * the batch the writer is committing (before its COMMIT, so no reader
   * sees one of its events unbounded), and the oldest still unsynced. */
  char committing[TP_ID_MAX];
  char unsynced_from[TP_ID_MAX];
} S = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .space = PTHREAD_COND_INITIALIZER};

/* The first event id of a numbered batch into out ("" for none). */
static void batch_first_event(struct tp_cs **batch, size_t n, char out[TP_ID_MAX])
{
  out[0] = '\0';
  for (size_t i = 0; i < n && !out[0]; i++) {
    size_t c = tp_cs_count(batch[i]);
    for (size_t k = 0; k < c; k++) {
      const struct tp_cs_op *op = tp_cs_op_at(batch[i], k);
      if (op->type == TP_OP_PUT && op->kind == TP_K_EVENT && op->id) {
        tp_scopy(out, TP_ID_MAX, op->id);
        break;
      }
    }
  }
}

/* Under S.mu: the oldest event that may not be on disk: the first queued
 * batch's with events, else the one being committed. */
static void unsynced_recompute(void)
{
  S.unsynced_from[0] = '\0';
  for (size_t i = 0; i < S.len && !S.unsynced_from[0]; i++)
    tp_scopy(S.unsynced_from, sizeof S.unsynced_from, S.q[(S.head + i) % TP_WRITER_MAX_UNSYNCED].first_event);
  if (!S.unsynced_from[0])
    tp_scopy(S.unsynced_from, sizeof S.unsynced_from, S.committing);
}

void tp_writer_durable_bound(char out[TP_ID_MAX])
{
  out[0] = '\0';
  if (!S.sync)
    return;
  pthread_mutex_lock(&S.mu);
  tp_scopy(out, TP_ID_MAX, S.unsynced_from);
  pthread_mutex_unlock(&S.mu);
}

static void hand_to_syncer(struct tp_cs **batch, const int *rc, size_t n, uint64_t seq);

static void *writer_main(void *arg)
{
  (void)arg;
  struct tp_cs **batch = malloc(TP_WRITER_MAX_BATCH * sizeof *batch);
  int *rc = malloc(TP_WRITER_MAX_BATCH * sizeof *rc);
  if (!batch || !rc)
    abort();
  for (;;) {
    pthread_mutex_lock(&W.mu);
    while (W.len == 0 && !W.stopping)
      pthread_cond_wait(&W.cv, &W.mu);
    if (W.len == 0 && W.stopping) {
      pthread_mutex_unlock(&W.mu);
      break;
    }
    size_t n = 0;
    while (W.len > 0 && n < TP_WRITER_MAX_BATCH) {
      batch[n++] = W.q[W.head];
      W.head = (W.head + 1) % TP_WRITER_MAX_QUEUE;
      W.len--;
    }
    pthread_mutex_unlock(&W.mu);

    /* Event ids in commit order (tp_cs_number_events). */
    for (size_t i = 0; i < n; i++)
      tp_cs_number_events(batch[i]);
    uint64_t seq = 0;
    if (S.on) { /* pipelined: readers are bounded below this batch's events before they can see them */
      seq = atomic_fetch_add(&seq_committing, 1) + 1;
      char first[TP_ID_MAX];
      batch_first_event(batch, n, first);
      pthread_mutex_lock(&S.mu);
      tp_scopy(S.committing, sizeof S.committing, first);
      if (!S.unsynced_from[0])
        tp_scopy(S.unsynced_from, sizeof S.unsynced_from, first);
      pthread_mutex_unlock(&S.mu);
    }
    int64_t t0 = tp_mono_ns();
    int brc = W.st->ops->apply_batch(W.st->cls, batch, n, rc);
    int64_t dt = tp_mono_ns() - t0;
    atomic_store(&W.last_batch_failed, brc != 0);
    if (brc != 0) {
      tp_log(TP_LOG_ERROR, "store_commit_failed", "{s:i, s:I}", "rc", brc, "sets", (json_int_t)n);
      for (size_t i = 0; i < n; i++)
        rc[i] = brc == TP_STORE_ERR_FULL ? brc : -1;
    }
    pthread_mutex_lock(&W.mu);
    W.stats.batches++;
    W.stats.sets += n;
    W.stats.commit_ns_total += (uint64_t)dt;
    if (n > W.stats.max_batch)
      W.stats.max_batch = n;
    pthread_mutex_unlock(&W.mu);
    tp_metric_observe_n("turnpike_store_batch_size", NULL, n);
    tp_metric_observe_us("turnpike_store_commit_duration_seconds", NULL, dt / 1000);
    if (S.on)
      hand_to_syncer(batch, rc, n, seq);
    else
      finish_batch(batch, rc, n);
  }
  free(batch);
  free(rc);
  return NULL;
}

/* ---- pipelined commits ([store] commit_sync = pipelined) -------------------
 * The writer commits a batch without waiting for the disk and goes on with
 * the next one; this thread makes everything committed so far durable with
 * one fdatasync of the WAL and only then runs the completions (so nothing is
 * acknowledged, and no processor called for a write-ahead, before its commit
 * is on disk), in commit order. */
static void *syncer_main(void *arg)
{
  (void)arg;
  struct unsynced items[TP_WRITER_MAX_UNSYNCED];
  for (;;) {
    pthread_mutex_lock(&S.mu);
    while (S.len == 0 && !S.stopping)
      pthread_cond_wait(&S.cv, &S.mu);
    if (S.len == 0 && S.stopping) {
      pthread_mutex_unlock(&S.mu);
      break;
    }
    /* Every batch taken here was committed before the sync below starts. */
    size_t k = 0;
    while (S.len > 0) {
      items[k++] = S.q[S.head];
      S.head = (S.head + 1) % TP_WRITER_MAX_UNSYNCED;
      S.len--;
    }
    pthread_cond_signal(&S.space);
    pthread_mutex_unlock(&S.mu);
    int src = 0;
    if (S.sync) {
      int64_t t0 = tp_mono_ns();
      src = W.st->ops->sync(W.st->cls);
      tp_metric_observe_us("turnpike_store_sync_duration_seconds", NULL, (tp_mono_ns() - t0) / 1000);
    }
    if (src != 0) {
      /* A failed fdatasync is final: the kernel may have dropped the pages,
       * and readers have already seen these commits (a replay, a GET). Going
       * on would serve what the disk may not hold; stopping makes the next
       * start recover from what it does hold, as PostgreSQL does. Nothing
       * of these batches was acknowledged. */
      tp_log(TP_LOG_ERROR, "store_sync_failed_exiting", "{s:I}", "batches", (json_int_t)k);
      tp_log_flush();
      _exit(75);
    }
    /* On disk now: readers may see up to the oldest still unsynced. */
    pthread_mutex_lock(&S.mu);
    unsynced_recompute();
    pthread_mutex_unlock(&S.mu);
    uint64_t top = 0;
    for (size_t j = 0; j < k; j++)
      if (items[j].seq > top)
        top = items[j].seq;
    if (top > atomic_load(&seq_synced))
      atomic_store(&seq_synced, top);
    synced_fn cb = atomic_load(&synced_cb);
    if (cb)
      cb();
    for (size_t j = 0; j < k; j++) {
      finish_batch(items[j].batch, items[j].rc, items[j].n);
      free(items[j].batch);
      free(items[j].rc);
    }
  }
  return NULL;
}

/* Queue a committed batch (copied: the writer reuses its arrays) for the
 * syncer; waits while TP_WRITER_MAX_UNSYNCED batches are pending. */
static void hand_to_syncer(struct tp_cs **batch, const int *rc, size_t n, uint64_t seq)
{
  struct unsynced it = {malloc(n * sizeof *batch), malloc(n * sizeof *rc), n, "", seq};
  if (!it.batch || !it.rc)
    abort();
  memcpy(it.batch, batch, n * sizeof *batch);
  memcpy(it.rc, rc, n * sizeof *rc);
  pthread_mutex_lock(&S.mu);
  tp_scopy(it.first_event, sizeof it.first_event, S.committing); /* committed now: queued */
  while (S.len == TP_WRITER_MAX_UNSYNCED)
    pthread_cond_wait(&S.space, &S.mu);
  S.q[(S.head + S.len) % TP_WRITER_MAX_UNSYNCED] = it;
  S.len++;
  S.committing[0] = '\0';
  pthread_cond_signal(&S.cv);
  pthread_mutex_unlock(&S.mu);
}

bool tp_writer_pipelined(void)
{
  return S.sync;
}

uint64_t tp_writer_read_mark(void)
{
  return S.sync ? atomic_load(&seq_committing) : 0;
}

bool tp_writer_synced(uint64_t mark)
{
  return mark == 0 || atomic_load(&seq_synced) >= mark;
}

void tp_writer_on_synced(void (*cb)(void))
{
  atomic_store(&synced_cb, cb);
}

int tp_writer_start(struct tp_store *st)
{
  W.q = calloc(TP_WRITER_MAX_QUEUE, sizeof *W.q);
  if (!W.q)
    return -1;
  W.st = st;
  W.running = true;
  W.stopping = false;
  const char *mode = tp_config_get("store", "commit_sync");
  S.sync = false;
  if (mode && strcmp(mode, "pipelined") == 0) {
    if (!st->ops->pipeline || !st->ops->sync || st->ops->pipeline(st->cls) != 0) {
      tp_log(TP_LOG_ERROR, "store_pipeline_unavailable", "{s:s}", "backend", st->ops->name);
      return -1;
    }
    S.sync = true;
  } else if (mode && strcmp(mode, "full") != 0) {
    tp_log(TP_LOG_ERROR, "config_invalid", "{s:s, s:s}", "key", "store.commit_sync", "value", mode);
    return -1;
  }
  /* With commit_sync = full the commit already waited for the disk: the
   * same thread then only runs completions, so the writer goes on with the
   * next batch while replies, frees and subscribers of this one run. */
  S.on = true;
  S.stopping = false;
  if (pthread_create(&S.thread, NULL, syncer_main, NULL) != 0)
    return -1;
  pthread_setname_np(S.thread, S.sync ? "tp-syncer" : "tp-completer");
  if (pthread_create(&W.thread, NULL, writer_main, NULL) != 0)
    return -1;
  pthread_setname_np(W.thread, "tp-writer");
  return 0;
}

struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, rc;
};

static void waiter_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  struct waiter *w = arg;
  pthread_mutex_lock(&w->mu);
  w->done = 1;
  w->rc = rc;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

int tp_writer_submit_wait(struct tp_cs *cs)
{
  struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
  tp_cs_on_done(cs, waiter_done, &w);
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    return -1;
  }
  pthread_mutex_lock(&w.mu);
  while (!w.done)
    pthread_cond_wait(&w.cv, &w.mu);
  pthread_mutex_unlock(&w.mu);
  return w.rc;
}

int tp_writer_submit(struct tp_cs *cs)
{
  pthread_mutex_lock(&W.mu);
  if (!W.running || W.stopping || W.len >= TP_WRITER_MAX_QUEUE) {
    pthread_mutex_unlock(&W.mu);
    return -1;
  }
  W.q[(W.head + W.len) % TP_WRITER_MAX_QUEUE] = cs;
  W.len++;
  pthread_cond_signal(&W.cv);
  pthread_mutex_unlock(&W.mu);
  return 0;
}

void tp_writer_stop(void)
{
  pthread_mutex_lock(&W.mu);
  if (!W.running) {
    pthread_mutex_unlock(&W.mu);
    return;
  }
  W.stopping = true;
  pthread_cond_signal(&W.cv);
  pthread_mutex_unlock(&W.mu);
  pthread_join(W.thread, NULL);
  if (S.on) {
    /* The writer has handed over its last batch: drain and stop the syncer. */
    pthread_mutex_lock(&S.mu);
    S.stopping = true;
    pthread_cond_signal(&S.cv);
    pthread_mutex_unlock(&S.mu);
    pthread_join(S.thread, NULL);
    S.on = false;
  }
  pthread_mutex_lock(&W.mu);
  W.running = false;
  pthread_mutex_unlock(&W.mu);
  free(W.q);
  W.q = NULL;
}

void tp_writer_stats(struct tp_writer_stats *out)
{
  pthread_mutex_lock(&W.mu);
  *out = W.stats;
  out->queued = W.len;
  pthread_mutex_unlock(&W.mu);
}

bool tp_writer_ok(void)
{
  pthread_mutex_lock(&W.mu);
  bool ok = W.running && !W.stopping && W.len < TP_WRITER_MAX_QUEUE / 10 * 9;
  pthread_mutex_unlock(&W.mu);
  return ok && !atomic_load(&W.last_batch_failed);
}
