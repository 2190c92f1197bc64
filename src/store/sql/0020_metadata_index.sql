-- The metadata index: GET /v1/{payment_intents,charges,customers}/search
-- with an exact metadata['key']:'value' clause reads the matching objects
-- through metadata_index_kv, newest first, instead of walking every object
-- within the scan budget. kind is the object's id prefix (pi, ch, cus); one
-- row per key of an object's metadata, with its value. A put of an object
-- with metadata upserts its keys (an unchanged value writes nothing) and
-- deletes the keys it no longer has (src/store/sqlite/sqlite.c, put_meta).
CREATE TABLE IF NOT EXISTS metadata_index (
  merchant TEXT NOT NULL,
  kind TEXT NOT NULL,
  id TEXT NOT NULL,
  k TEXT NOT NULL,
  v TEXT NOT NULL,
  PRIMARY KEY (merchant, kind, id, k)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metadata_index_kv ON metadata_index(merchant, kind, k, v, id);
-- The objects stored before it.
INSERT OR IGNORE INTO metadata_index(merchant, kind, id, k, v)
  SELECT o.merchant, 'pi', o.id, j.key, j.value FROM payment_intents o, json_each(tp_json(o.data), '$.metadata') j
  WHERE j.type = 'text' AND j.key <> '';
INSERT OR IGNORE INTO metadata_index(merchant, kind, id, k, v)
  SELECT o.merchant, 'ch', o.id, j.key, j.value FROM charges o, json_each(tp_json(o.data), '$.metadata') j
  WHERE j.type = 'text' AND j.key <> '';
INSERT OR IGNORE INTO metadata_index(merchant, kind, id, k, v)
  SELECT o.merchant, 'cus', o.id, j.key, j.value FROM customers o, json_each(tp_json(o.data), '$.metadata') j
  WHERE j.type = 'text' AND j.key <> '';
