-- What else shaped the reply a request keyed by the client's Idempotency-Key
-- would have had: its expand[] and a pinned Stripe-Version that shows the
-- legacy lists ({"expand":[...],"v":"2020-08-27"}; '' none). Recovery settles
-- such a request after a crash or a lost answer and stores its reply under
-- the key; it was the bare object (latest_charge an id where the live reply
-- had the charge), so a retry broke code that read the expanded shape.
ALTER TABLE attempts ADD COLUMN reply_opts TEXT NOT NULL DEFAULT '';
