-- Balance transactions listed by type (GET /v1/balance_transactions?type=)
-- read an index of the rare types: refunds, their failures and dispute
-- adjustments. A charge's balance transaction, one per payment, is left out
-- (no index entry on the payment path; a list of charges walks the
-- merchant's rows, where nearly every one is a charge). The list names the
-- index (tp_kinds, src/store/cs.c) and adds type != 'charge' to its query.
CREATE INDEX balance_transactions_t ON balance_transactions(merchant, type, id) WHERE type != 'charge';
