-- The reply a recovered attempt stores under the client's Idempotency-Key
-- is the shape the request had: a charge for the Charges API
-- (POST /v1/charges, /v1/charges/{id}/capture), else the PaymentIntent.
-- Kept with the attempt, because after a crash only the attempt is left
-- to say which (src/core/payflow.c attempt_pay).
ALTER TABLE attempts ADD COLUMN reply_charge INTEGER NOT NULL DEFAULT 0;
