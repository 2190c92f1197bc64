-- Turnpike schema, version 1. API objects are kept as their Stripe JSON
-- in ordinary rowid tables (rows are about 1 KB; WITHOUT ROWID suits small
-- rows only and left pages a quarter full)
-- (`data`) with the columns lists filter on; ids are time-ordered so
-- "ORDER BY id DESC" is newest first and stable under concurrent inserts.
CREATE TABLE merchants (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  created INTEGER NOT NULL,
  fp_key BLOB NOT NULL            -- HMAC key for card fingerprints
);
CREATE TABLE api_keys (
  hash BLOB PRIMARY KEY,          -- SHA-256 of the key; the key itself is never stored
  merchant TEXT NOT NULL REFERENCES merchants(id),
  kind TEXT NOT NULL,             -- secret | publishable | restricted
  hint TEXT NOT NULL,             -- "sk_test_...abcd" for display
  created INTEGER NOT NULL,
  expires INTEGER
) WITHOUT ROWID;

CREATE TABLE payment_intents (id TEXT PRIMARY KEY, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  customer TEXT, status TEXT, data TEXT NOT NULL);
CREATE INDEX payment_intents_m ON payment_intents(merchant, id);
CREATE INDEX payment_intents_c ON payment_intents(merchant, customer, id) WHERE customer IS NOT NULL;

CREATE TABLE charges (id TEXT PRIMARY KEY, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  payment_intent TEXT, customer TEXT, data TEXT NOT NULL);
CREATE INDEX charges_m ON charges(merchant, id);
CREATE INDEX charges_pi ON charges(merchant, payment_intent, id);
CREATE INDEX charges_c ON charges(merchant, customer, id) WHERE customer IS NOT NULL;

CREATE TABLE refunds (id TEXT PRIMARY KEY, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  payment_intent TEXT, charge TEXT, data TEXT NOT NULL);
CREATE INDEX refunds_m ON refunds(merchant, id);
CREATE INDEX refunds_pi ON refunds(merchant, payment_intent, id);
CREATE INDEX refunds_ch ON refunds(merchant, charge, id);

CREATE TABLE customers (id TEXT PRIMARY KEY, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  email TEXT, deleted TEXT, data TEXT NOT NULL);
CREATE INDEX customers_m ON customers(merchant, id);
CREATE INDEX customers_e ON customers(merchant, email, id) WHERE email IS NOT NULL;

CREATE TABLE payment_methods (id TEXT PRIMARY KEY, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  customer TEXT, type TEXT, data TEXT NOT NULL);
CREATE INDEX payment_methods_m ON payment_methods(merchant, id);
CREATE INDEX payment_methods_c ON payment_methods(merchant, customer, id) WHERE customer IS NOT NULL;

CREATE TABLE events (id TEXT PRIMARY KEY, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  type TEXT, object_id TEXT, data TEXT NOT NULL);
CREATE INDEX events_m ON events(merchant, id);
CREATE INDEX events_t ON events(merchant, type, id);

CREATE TABLE balance_transactions (id TEXT PRIMARY KEY, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  source TEXT, type TEXT, data TEXT NOT NULL);
CREATE INDEX balance_transactions_m ON balance_transactions(merchant, id);

-- Double-entry ledger: every transaction's entries sum to zero per currency
-- (checked by the store before commit). Debits positive, credits negative.
CREATE TABLE ledger_entries (
  txn_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  merchant TEXT NOT NULL,
  account TEXT NOT NULL,
  currency TEXT NOT NULL,
  amount INTEGER NOT NULL,
  created INTEGER NOT NULL,
  PRIMARY KEY (txn_id, seq)
) WITHOUT ROWID;
-- Running balances, updated in the same transaction as the entries.
CREATE TABLE ledger_balances (
  merchant TEXT NOT NULL, account TEXT NOT NULL, currency TEXT NOT NULL, amount INTEGER NOT NULL,
  PRIMARY KEY (merchant, account, currency)
) WITHOUT ROWID;

-- Write-ahead record of every processor call: committed before the call.
CREATE TABLE attempts (
  id TEXT PRIMARY KEY,
  merchant TEXT NOT NULL,
  payment_intent TEXT,
  processor TEXT NOT NULL,
  idem_ref TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  state TEXT NOT NULL,
  currency TEXT NOT NULL,
  amount INTEGER NOT NULL,
  vault_token TEXT,
  refund TEXT,
  result_code TEXT,
  auth_code TEXT,
  processor_ref TEXT,
  route TEXT,
  client_idem_key TEXT,           -- the merchant's Idempotency-Key, to finish it on recovery
  client_req_hash TEXT,
  capture INTEGER NOT NULL DEFAULT 1,
  created INTEGER NOT NULL,
  updated INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX attempts_sent ON attempts(state) WHERE state = 'sent';
CREATE INDEX attempts_pi ON attempts(payment_intent);

CREATE TABLE idempotency (
  merchant TEXT NOT NULL,
  key TEXT NOT NULL,
  req_hash TEXT NOT NULL,
  status INTEGER NOT NULL,        -- 0 while in flight
  body TEXT,
  created INTEGER NOT NULL,
  PRIMARY KEY (merchant, key)
);
CREATE INDEX idempotency_created ON idempotency(created);

-- The card vault: AES-256-GCM ciphertexts only.
CREATE TABLE vault (
  token TEXT PRIMARY KEY,
  merchant TEXT NOT NULL,
  blob BLOB NOT NULL,
  created INTEGER NOT NULL
);
