/* Who is calling: API keys (secret sk_, restricted rk_) and OAuth 2.0 access
 * tokens (ES256 JWTs), both resolved to a merchant and a set of scopes
 * through caches that respect expiry and revocation. */
#ifndef TP_AUTH_H
#define TP_AUTH_H
#include <stddef.h>

#include "api/http.h"

struct tp_auth {
  struct tp_merchant merchant;
  char kind[16];     /* secret | restricted | publishable | oauth */
  unsigned scopes;   /* TP_SCOPE_* mask */
  char actor[80];    /* for logs and the audit log: "key:sk_test_...abcd", "oauth:cli_..." */
  char rl_id[80];    /* rate-limit bucket identity */
};

/* apikey.c: an API key to its merchant and scopes (cached 30 s; the cache
 * keeps the expiry, so an expired key fails at once). TP_ERR_OK, or
 * auth_invalid_key / api_key_expired / publishable_key_forbidden /
 * store_unavailable. */
enum tp_err tp_apikey_authenticate(const char *key, struct tp_auth *a);

/* oauth.c: load or create the token signing key in data_dir (0600). */
int tp_oauth_init(const char *data_dir);
/* A Bearer JWT access token to its merchant and scopes (verifications cached
 * until a revocation or the token's expiry). */
enum tp_err tp_oauth_authenticate(const char *token, struct tp_auth *a);
/* The client address of the request: the peer's, or with [server]
 * trusted_proxies the one a trusted proxy forwards (src/lib/proxies.h);
 * worked out once and kept in r->client_addr, r->client_addr_known false
 * when a proxy did not disclose the client. */
const char *tp_req_client_addr(struct tp_req *r);
/* Read a merchant row by id into m: 1 found, 0 not, -1 store error. */
int tp_auth_merchant(struct tp_store *st, const char *id, struct tp_merchant *m);
/* For admin commands: open the store in dir and read merchant id into m.
 * 0; or 1 (the store is closed and the reason printed as "turnpike CMD: …"). */
int tp_auth_open_merchant(const char *dir, const char *id, const char *cmd, struct tp_store *st,
                          struct tp_merchant *m);
#endif
