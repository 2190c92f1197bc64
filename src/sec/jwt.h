/* JSON Web Tokens signed ES256 (RFC 7515/7518/7519), the JOSE base64url
 * encoding and the signing keys behind them (P-256, published as JWKs).
 *
 * Only ES256 exists here: a token whose header names any other algorithm
 * ("none", "HS256" ...) is refused before any signature work. */
#ifndef TP_JWT_H
#define TP_JWT_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TP_JWT_MAX_LEN 4096   /* longest compact token accepted */
#define TP_JWT_KID_LEN 44     /* base64url of a SHA-256 thumbprint + NUL */

/* An ES256 key pair (or a public key only) with its key id. */
struct tp_jwt_key {
  void *pkey;                 /* EVP_PKEY */
  char kid[TP_JWT_KID_LEN];   /* RFC 7638 JWK thumbprint */
};

/* base64url without padding; returns the length written (out gets a NUL),
 * or 0 if out (cap bytes) is too small. */
size_t tp_b64url_encode(const void *in, size_t n, char *out, size_t cap);
/* Decode base64url (no padding, no whitespace); -1 on a bad character, a bad
 * length or overflow of cap; else the decoded length. */
long tp_b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap);

/* A fresh P-256 key pair. */
int tp_jwt_key_generate(struct tp_jwt_key *k);
/* Load a PEM private key from path, or create one there (mode 0600) when the
 * file does not exist. */
int tp_jwt_key_load_or_create(const char *path, struct tp_jwt_key *k);
void tp_jwt_key_free(struct tp_jwt_key *k);
/* The public key as a JWK {kty,crv,x,y,kid,alg,use} (new reference). */
json_t *tp_jwt_key_jwk(const struct tp_jwt_key *k);

/* Sign claims with header {"typ":typ,"alg":"ES256","kid"}; malloc'ed compact
 * JWS, NULL on failure. */
char *tp_jwt_sign(const struct tp_jwt_key *k, const char *typ, const json_t *claims);

enum tp_jwt_result {
  TP_JWT_OK = 0,
  TP_JWT_MALFORMED,    /* not three base64url parts of JSON, too long */
  TP_JWT_BAD_HEADER,   /* alg is not ES256, typ differs, unknown kid */
  TP_JWT_BAD_SIGNATURE,
};
/* Check the structure, header (alg ES256, typ when typ != NULL, kid among
 * keys) and signature. On TP_JWT_OK *claims is the payload (new reference).
 * Claims (exp, iss, aud ...) are the caller's to check. */
enum tp_jwt_result tp_jwt_verify(const struct tp_jwt_key *keys, size_t nkeys, const char *token, const char *typ,
                                 json_t **claims);
#endif
