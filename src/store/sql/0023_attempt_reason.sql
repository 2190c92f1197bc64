-- A void's cancellation_reason (a cancel's, or "expired"), kept with the
-- attempt: a void that a crash leaves in flight is finished by recovery,
-- which has only the attempt to say why the PaymentIntent was canceled
-- (src/core/payflow.c recovery_pay). Empty for the other kinds.
ALTER TABLE attempts ADD COLUMN reason TEXT NOT NULL DEFAULT '';
