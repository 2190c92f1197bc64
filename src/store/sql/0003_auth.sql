-- Authentication and access control (src/sec/apikey.c, src/sec/oauth.c).

-- Restricted keys (kind 'restricted', rk_...) carry their scopes, space
-- separated; NULL for secret keys, which have every scope. api_keys.expires
-- (from 0001) is the expiry: set by `api-key create --expires-in` and by
-- `api-key roll`, which ends the old secret keys after the overlap.
ALTER TABLE api_keys ADD COLUMN scopes TEXT;

-- OAuth 2.0 clients (client credentials grant). The secret is stored only as
-- its SHA-256 (hex): it is 40+ random base62 characters, so a slow hash adds
-- nothing.
CREATE TABLE oauth_clients (
  client_id TEXT PRIMARY KEY,
  merchant TEXT NOT NULL REFERENCES merchants(id),
  secret_hash TEXT NOT NULL,
  scopes TEXT NOT NULL,
  created INTEGER NOT NULL,
  revoked INTEGER                  -- unix time the client was disabled, or NULL
);
CREATE INDEX oauth_clients_m ON oauth_clients(merchant);

-- Access tokens revoked before their expiry (RFC 7009), by JWT id. Rows past
-- exp are useless and may be deleted.
CREATE TABLE oauth_revoked (
  jti TEXT PRIMARY KEY,
  client_id TEXT NOT NULL,
  exp INTEGER NOT NULL,
  revoked INTEGER NOT NULL
);
