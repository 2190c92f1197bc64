-- The metadata index: GET /v1/{payment_intents,charges,customers}/search
-- with an exact metadata['key']:'value' clause reads the matching objects
-- here, newest first, instead of walking every object within the scan
-- budget. kind is the object's id prefix (pi, ch, cus). A pair is added
-- when an object is put with it (INSERT OR IGNORE: an object put again
-- with the same metadata writes nothing); a pair the object later loses
-- stays, and the search tests each object against the whole query.
CREATE TABLE IF NOT EXISTS metadata_index (
  merchant TEXT NOT NULL,
  kind TEXT NOT NULL,
  k TEXT NOT NULL,
  v TEXT NOT NULL,
  id TEXT NOT NULL,
  PRIMARY KEY (merchant, kind, k, v, id)
) WITHOUT ROWID;
-- The objects stored before it.
INSERT OR IGNORE INTO metadata_index(merchant, kind, k, v, id)
  SELECT o.merchant, 'pi', j.key, j.value, o.id FROM payment_intents o, json_each(tp_json(o.data), '$.metadata') j
  WHERE j.type = 'text' AND j.key <> '';
INSERT OR IGNORE INTO metadata_index(merchant, kind, k, v, id)
  SELECT o.merchant, 'ch', j.key, j.value, o.id FROM charges o, json_each(tp_json(o.data), '$.metadata') j
  WHERE j.type = 'text' AND j.key <> '';
INSERT OR IGNORE INTO metadata_index(merchant, kind, k, v, id)
  SELECT o.merchant, 'cus', j.key, j.value, o.id FROM customers o, json_each(tp_json(o.data), '$.metadata') j
  WHERE j.type = 'text' AND j.key <> '';
