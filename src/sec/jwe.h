/* Client-side card encryption: JWE compact serialization (RFC 7516) with
 * alg RSA-OAEP-256 or ECDH-ES (direct key agreement, Concat KDF of RFC 7518
 * §4.6) and enc A256GCM, decrypted with OpenSSL 3 EVP. The key pairs live in
 * the data dir (jwe-rsa.pem, jwe-ec.pem, 0600) and are published as a JWK set. */
#ifndef TP_JWE_H
#define TP_JWE_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TP_JWE_MAX_COMPACT 8192   /* bytes of a compact JWE we accept */
#define TP_JWE_MAX_PLAIN 1024     /* bytes of decrypted content */

/* Load or create the key pairs in dir. */
int tp_jwe_init(const char *dir);
/* The public keys as {"keys":[{kty,kid,use,alg,...}]} (new reference). */
json_t *tp_jwe_jwks(void);
/* Decrypt a compact JWE into out (cap >= TP_JWE_MAX_PLAIN + 1, NUL-terminated).
 * On failure returns -1 and *why is a fixed message that never contains any
 * part of the input. */
int tp_jwe_decrypt(const char *compact, uint8_t *out, size_t cap, size_t *outlen, const char **why);
/* Free the keys. */
void tp_jwe_free(void);

/* API glue (src/api/encryption_key.c): read card[encrypted] = JWE of
 * {"number","exp_month","exp_year","cvc"} and validate it like clear card
 * fields; replies 400 and returns false on failure. Plaintext is wiped. */
struct tp_req;
struct tp_card_info;
bool tp_card_from_jwe(struct tp_req *r, const char *jwe, const char *param_prefix, struct tp_card_info *ci,
                      char *cvc_out);
#endif
