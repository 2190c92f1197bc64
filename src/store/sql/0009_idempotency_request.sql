-- Stripe answers an idempotent replay with Original-Request: the id of the
-- request whose reply is replayed. The pending mark already carries it, the
-- final reply keeps it (a reply written by recovery has no request of its
-- own). NULL on rows written before this migration: no header then.
ALTER TABLE idempotency ADD COLUMN request_id TEXT;
