/* SQLite's page cache, spared a scan of itself at every commit.
 *
 * When a b-tree page splits, SQLite (balance_nonroot) may swap the page
 * numbers of two new pages, and it does so through a third number: the
 * locking page (PENDING_BYTE / page size + 1, page 262,145 of a 4 KiB
 * database), which no database below 1 GiB reaches. The default cache
 * (pcache1) then takes that number for the highest key it holds. At the
 * end of the transaction the pager truncates the cache to the database's
 * size, and pcache1, seeing a key above it further than its hash table is
 * wide, walks every bucket and every cached page to find pages that are not
 * there: ~8,000 pages for the writer's 32 MB cache, one cache miss each, at
 * every commit that split a page (most of them under load; 10% of the
 * writer's time in a perf profile of bench/run.sh).
 *
 * This cache is pcache1 with a tighter bound: it knows the highest key a
 * page can have apart from the locking page's loan, and lets a truncation
 * through only when a page can be at or above its limit. Everything else is
 * pcache1's own code. tp_pcache_install() must run before SQLite
 * initialises (sqlite3_config); it is process-wide. */
#ifndef TP_STORE_PCACHE_H
#define TP_STORE_PCACHE_H

#include <sqlite3.h>

/* 0, or an SQLite error code when SQLite was already initialised. */
int tp_pcache_install(void);

/* The methods (tests), once installed; NULL before. */
const sqlite3_pcache_methods2 *tp_pcache_methods(void);

/* Since the start of the process: truncations passed to pcache1, spared
 * where pcache1 would have found nothing either, and spared where pcache1
 * would have scanned its whole table for nothing (a loan had raised its
 * bound). */
struct tp_pcache_counts {
  unsigned long long passed, spared, scans_saved;
};
void tp_pcache_counts(struct tp_pcache_counts *out);

#endif
