-- Uncaptured authorizations lapse (src/core/housekeeping.c, Stripe: after
-- 7 days the PaymentIntent is canceled). A partial index holds only the
-- PaymentIntents in requires_capture, so the scan for lapsed ones reads
-- those alone, and a payment captured at once (the hot path: processing,
-- then succeeded) never touches it.
CREATE INDEX payment_intents_capturable ON payment_intents(created, id) WHERE status = 'requires_capture';
