-- Webhooks: endpoints, the outbox of deliveries (one row per endpoint and
-- event, the source of truth for what is still to be delivered) and every
-- delivery attempt (shown by GET /v1/webhook_endpoints/{id}/deliveries).

-- data: the Stripe webhook_endpoint object without its secret. secret: the
-- whsec_ string sealed with AES-256-GCM under a key derived from the vault
-- key (hex). failing_since: unix ms of the first failure of the current run
-- of failures, NULL while healthy. scan_floor: every event of the merchant
-- with an id at or below it already has its delivery row (or did not match).
CREATE TABLE webhook_endpoints (id TEXT PRIMARY KEY, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  status TEXT NOT NULL, secret TEXT NOT NULL, failing_since INTEGER, scan_floor TEXT NOT NULL,
  data TEXT NOT NULL);
CREATE INDEX webhook_endpoints_m ON webhook_endpoints(merchant, id);

-- state: pending (to deliver at next_at, unix ms) | succeeded | failed (gave
-- up after the retry window). created: unix ms of the first time it was due.
CREATE TABLE webhook_deliveries (endpoint TEXT NOT NULL, event TEXT NOT NULL, merchant TEXT NOT NULL,
  state TEXT NOT NULL, attempts INTEGER NOT NULL, next_at INTEGER NOT NULL, created INTEGER NOT NULL,
  PRIMARY KEY (endpoint, event));
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(endpoint, state, next_at);

CREATE TABLE webhook_attempts (id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, event TEXT NOT NULL,
  merchant TEXT NOT NULL, attempt INTEGER NOT NULL, status_code INTEGER, outcome TEXT NOT NULL,
  error TEXT, duration_ms INTEGER NOT NULL, created INTEGER NOT NULL, next_retry_at INTEGER);
CREATE INDEX webhook_attempts_e ON webhook_attempts(endpoint, id);
