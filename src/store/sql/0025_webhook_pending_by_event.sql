-- The oldest event an endpoint still owes a delivery for: the events purge
-- keeps every event at or above it, and asked once a second per merchant.
-- Read through the due index it walked every pending row (0.25 s of CPU at
-- 277,000, 1.6 s at 5.4 million, an endpoint down for days): the
-- housekeeping loop, and the heartbeat /readyz reads, slowed with the
-- backlog. This index holds the pending rows only, so the minimum is one
-- lookup; a delivery leaves it when it succeeds or fails for good.
CREATE INDEX IF NOT EXISTS webhook_deliveries_pending ON webhook_deliveries(endpoint, event) WHERE state = 'pending';
