-- Timed-out ISO 8583 authorizations whose reversal is still owed: recovery
-- reads them on every tick (payflow.c recover_reversals), like attempts_sent.
CREATE INDEX attempts_reversal ON attempts(state) WHERE state = 'reversal_pending';
