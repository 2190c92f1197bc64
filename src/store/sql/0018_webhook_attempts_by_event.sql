-- An endpoint's delivery attempts for one event
-- (GET /v1/webhook_endpoints/{id}/deliveries?event=) read this index
-- instead of walking every attempt of the endpoint newer than them (0.26 s
-- at 226,000 attempts, growing with the history). One entry per attempt,
-- written only when endpoints exist; the list names it (INDEXED BY).
CREATE INDEX webhook_attempts_ev ON webhook_attempts(endpoint, event);
