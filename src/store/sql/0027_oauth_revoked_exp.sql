-- The purge of revocations past their tokens' expiry (src/sec/oauth.c
-- tp_h_oauth_revoke) finds them by exp: without this index each revocation
-- scanned the whole table in the writer every merchant's commits wait on.
CREATE INDEX IF NOT EXISTS oauth_revoked_exp ON oauth_revoked(exp);
