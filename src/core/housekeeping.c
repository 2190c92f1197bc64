/* Housekeeping: expired Idempotency-Keys are deleted in small batches through
 * the writer, so the table stays bounded without long write transactions. */
#include "config.h"
#include "log.h"
#include "main/features.h"
#include "store/store.h"
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

#define PURGE_BATCH 5000 /* keys deleted per purge at most: 5000/s at the default interval */
#define PURGE_WINDOW (2 * PURGE_BATCH) /* oldest rows looked at per purge */

static struct {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool running, stop;
  int64_t interval_ms, ttl;
  _Atomic int64_t heartbeat_ms; /* monotonic time of the last committed heartbeat */
} H = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* Queue the deletion of up to PURGE_BATCH expired, answered keys (pending
 * marks stay: recovery resolves them). */
int tp_idem_purge(int64_t now, int64_t ttl)
{
  struct tp_cs *cs = tp_cs_new();
  json_t *args = json_pack("[I, i, i]", (json_int_t)(now - ttl), PURGE_BATCH, PURGE_WINDOW);
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
  if (tp_writer_submit(cs) != 0) {
    tp_cs_free(cs);
    return -1;
  }
  return 0;
}

static void heartbeat_done(struct tp_cs *cs, int rc, void *arg)
{
  (void)cs;
  (void)arg;
  if (rc == 0)
    atomic_store(&H.heartbeat_ms, tp_mono_ms());
}

/* Prove the store takes writes: one tiny committed row per tick. */
static void heartbeat(void)
{
  struct tp_cs *cs = tp_cs_new();
  json_t *args = json_pack("[I]", (json_int_t)tp_now());
  tp_cs_sql(cs, "INSERT OR REPLACE INTO heartbeat(id, at) VALUES(1, ?1)", args, 1);
  json_decref(args);
  tp_cs_on_done(cs, heartbeat_done, NULL);
  if (tp_writer_submit(cs) != 0)
    tp_cs_free(cs);
}

int64_t tp_store_heartbeat_age_ms(void)
{
  int64_t at = atomic_load(&H.heartbeat_ms);
  return at ? tp_mono_ms() - at : INT64_MAX;
}

static void *housekeeping_main(void *arg)
{
  (void)arg;
  int64_t next_purge = tp_mono_ms() + H.interval_ms;
  pthread_mutex_lock(&H.mu);
  while (!H.stop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1; /* the heartbeat's tick */
    pthread_cond_timedwait(&H.cv, &H.mu, &ts);
    if (H.stop)
      break;
    pthread_mutex_unlock(&H.mu);
    heartbeat();
    if (tp_mono_ms() >= next_purge) {
      next_purge = tp_mono_ms() + H.interval_ms;
      if (tp_idem_purge(tp_now(), H.ttl) != 0)
        tp_log(TP_LOG_WARN, "idempotency_purge_skipped", NULL);
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
  H.stop = false;
  heartbeat();
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
