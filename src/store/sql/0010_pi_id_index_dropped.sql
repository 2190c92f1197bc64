-- The unique index on payment_intents(id) served one query: the 3-D Secure
-- page finding a PaymentIntent's merchant by id alone. Every PaymentIntent
-- created wrote it (2-3 of a group commit's ~60 WAL pages, see
-- bench/walpages.sh). The page's link now names the merchant (account=), so
-- the lookup uses the primary key (merchant, id); a link without it probes
-- the primary key once per merchant.
DROP INDEX IF EXISTS payment_intents_id;
