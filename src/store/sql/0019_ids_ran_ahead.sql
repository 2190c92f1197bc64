-- Ids bound a list's created range from above only in a store whose ids
-- never ran ahead of the clock (src/lib/util.h, tp_ids_ran_ahead). The
-- server keeps that mark here from now on; a store written before it may
-- hold such ids unmarked, so one that already has events is marked.
INSERT OR REPLACE INTO meta(key, value) SELECT 'ids_ran_ahead', '1' WHERE EXISTS (SELECT 1 FROM events);
