/* The page cache wrapper: see pcache.h. */
#include "store/sqlite/pcache.h"

#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

/* SQLite's PENDING_BYTE: the first byte of the locking range, 1 GiB. */
#define PENDING_BYTE 0x40000000u

static sqlite3_pcache_methods2 inner; /* pcache1 */
static atomic_ullong n_passed, n_spared, n_scans_saved;

struct pc {
  sqlite3_pcache *in;
  unsigned max_key; /* every cached page's key is <= this, but a loan of lock_pg */
  unsigned lock_pg; /* the page number SQLite lends out while swapping two pages */
  unsigned lent;    /* pages keyed lock_pg now (a swap in progress: 0 or 1) */
  bool loaned;      /* lock_pg was lent since pcache1 last truncated: its bound is stale */
  bool unsure;      /* lock_pg was fetched (a corrupt database): spare nothing */
};

static int pc_init(void *arg)
{
  (void)arg;
  return inner.xInit ? inner.xInit(inner.pArg) : SQLITE_OK;
}

static void pc_shutdown(void *arg)
{
  (void)arg;
  if (inner.xShutdown)
    inner.xShutdown(inner.pArg);
}

static sqlite3_pcache *pc_create(int page_size, int extra, int purgeable)
{
  struct pc *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->in = inner.xCreate(page_size, extra, purgeable);
  if (!c->in) {
    free(c);
    return NULL;
  }
  c->lock_pg = page_size > 0 ? PENDING_BYTE / (unsigned)page_size + 1 : 0;
  return (sqlite3_pcache *)c;
}

static void pc_cachesize(sqlite3_pcache *p, int n)
{
  inner.xCachesize(((struct pc *)p)->in, n);
}

static int pc_pagecount(sqlite3_pcache *p)
{
  return inner.xPagecount(((struct pc *)p)->in);
}

/* A key is noted before pcache1 sees it: a bound too high only lets a
 * truncation through that was not needed. */
static void note_key(struct pc *c, unsigned key)
{
  if (key == c->lock_pg)
    c->unsure = true;
  else if (key > c->max_key)
    c->max_key = key;
}

static sqlite3_pcache_page *pc_fetch(sqlite3_pcache *p, unsigned key, int create)
{
  struct pc *c = (struct pc *)p;
  if (create)
    note_key(c, key);
  return inner.xFetch(c->in, key, create);
}

static void pc_unpin(sqlite3_pcache *p, sqlite3_pcache_page *pg, int discard)
{
  inner.xUnpin(((struct pc *)p)->in, pg, discard);
}

static void pc_rekey(sqlite3_pcache *p, sqlite3_pcache_page *pg, unsigned old_key, unsigned new_key)
{
  struct pc *c = (struct pc *)p;
  if (new_key == c->lock_pg && c->lock_pg != 0) {
    c->lent++;
    c->loaned = true;
  }
  else
    note_key(c, new_key);
  if (old_key == c->lock_pg && c->lent > 0)
    c->lent--;
  inner.xRekey(c->in, pg, old_key, new_key);
}

static void pc_truncate(sqlite3_pcache *p, unsigned limit)
{
  struct pc *c = (struct pc *)p;
  /* Pages at or above limit can only be those up to max_key and, while
   * lent or unsure, the one keyed lock_pg. */
  bool loan = (c->lent > 0 || c->unsure) && c->lock_pg >= limit;
  if (limit > c->max_key && !loan) {
    /* pcache1 would have scanned its whole table if a loan raised its bound */
    atomic_fetch_add_explicit(c->loaned ? &n_scans_saved : &n_spared, 1, memory_order_relaxed);
    return;
  }
  atomic_fetch_add_explicit(&n_passed, 1, memory_order_relaxed);
  inner.xTruncate(c->in, limit);
  c->loaned = false; /* pcache1's bound is now limit - 1 */
  if (limit > 0 && c->max_key >= limit)
    c->max_key = limit - 1;
  if (c->lock_pg >= limit) { /* the loan, if any, went with the rest */
    c->lent = 0;
    c->unsure = false;
  }
}

static void pc_destroy(sqlite3_pcache *p)
{
  struct pc *c = (struct pc *)p;
  inner.xDestroy(c->in);
  free(c);
}

static void pc_shrink(sqlite3_pcache *p)
{
  inner.xShrink(((struct pc *)p)->in);
}

static const sqlite3_pcache_methods2 ours = {
  .iVersion = 1,
  .pArg = NULL,
  .xInit = pc_init,
  .xShutdown = pc_shutdown,
  .xCreate = pc_create,
  .xCachesize = pc_cachesize,
  .xPagecount = pc_pagecount,
  .xFetch = pc_fetch,
  .xUnpin = pc_unpin,
  .xRekey = pc_rekey,
  .xTruncate = pc_truncate,
  .xDestroy = pc_destroy,
  .xShrink = pc_shrink,
};

int tp_pcache_install(void)
{
  sqlite3_pcache_methods2 cur;
  int rc = sqlite3_config(SQLITE_CONFIG_GETPCACHE2, &cur);
  if (rc != SQLITE_OK)
    return rc;
  if (cur.xCreate == pc_create)
    return SQLITE_OK; /* already ours */
  inner = cur;
  return sqlite3_config(SQLITE_CONFIG_PCACHE2, &ours);
}

const sqlite3_pcache_methods2 *tp_pcache_methods(void)
{
  return inner.xCreate ? &ours : NULL;
}

void tp_pcache_counts(struct tp_pcache_counts *out)
{
  out->passed = atomic_load_explicit(&n_passed, memory_order_relaxed);
  out->spared = atomic_load_explicit(&n_spared, memory_order_relaxed);
  out->scans_saved = atomic_load_explicit(&n_scans_saved, memory_order_relaxed);
}
