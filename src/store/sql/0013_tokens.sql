-- Card tokens (src/api/tokens.c): POST /v1/tokens, as Stripe's legacy
-- Tokens API. Keyed by (merchant, id) as the other objects (0007). The card
-- itself is in the vault under the token's id until the token is used.
CREATE TABLE tokens (id TEXT NOT NULL, merchant TEXT NOT NULL, created INTEGER NOT NULL,
  type TEXT, client_ip TEXT, data TEXT NOT NULL, PRIMARY KEY (merchant, id)) WITHOUT ROWID;
-- A token is used once: the change set that uses it inserts its row here,
-- so of two requests racing with one token only one commits.
CREATE TABLE token_redemptions (merchant TEXT NOT NULL, token TEXT NOT NULL, payment_method TEXT NOT NULL,
  created INTEGER NOT NULL, PRIMARY KEY (merchant, token)) WITHOUT ROWID;
