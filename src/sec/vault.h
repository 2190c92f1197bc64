/* The card vault: card numbers sealed with AES-256-GCM under a per-record
 * data key, itself wrapped by the key-encryption key (KEK). */
#ifndef TP_VAULT_H
#define TP_VAULT_H
#include <stddef.h>
#include <stdint.h>

#define TP_VAULT_MAX_BLOB 256

/* Load DIR/vault.key (0600, created on first use): the process secret used
 * for keyed request hashes (and the raw-key record format below). */
int tp_vault_init(const char *dir, uint8_t kek[32]);
/* Seal "pan|mm|yyyy" bound to (merchant, token) as associated data. */
int tp_vault_seal(const uint8_t kek[32], const char *merchant, const char *token, const char *pan, int exp_month,
                  int exp_year, uint8_t *out, size_t *outlen);
/* Open a sealed record; pan (>= 20 bytes) is filled. -1 on any mismatch. */
int tp_vault_open(const uint8_t kek[32], const char *merchant, const char *token, const uint8_t *blob, size_t len,
                  char *pan, int *exp_month, int *exp_year);

/* AES-256-GCM in one call (enc 1 / dec 0); tag is written (enc) or checked. */
int tp_vault_gcm(int enc, const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aadlen,
                 const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16]);

/* Records of format 2: the data key is wrapped by the KEK provider (see
 * sec/kek.h) under a KEK version, with AAD "merchant|token|version".
 * Blob: 2 | version(4, big endian) | wlen(1) | wrapped(wlen) | nonce(12) |
 * tag(16) | ciphertext of "pan|mm|yyyy" (AAD "merchant|token"). */
int tp_vault_seal_rec(const char *merchant, const char *token, const char *pan, int exp_month, int exp_year,
                      uint8_t *out, size_t *outlen);
/* Open a format-2 record with the KEK version it names; pan >= 20 bytes. */
int tp_vault_open_rec(const char *merchant, const char *token, const uint8_t *blob, size_t len, char *pan,
                      int *exp_month, int *exp_year);
/* The KEK version of a format-2 record, 0 when not one. */
uint32_t tp_vault_rec_version(const uint8_t *blob, size_t len);
/* Re-wrap the record's data key under KEK version v; the card data stays
 * encrypted (only the 32-byte data key is in memory, then wiped). */
int tp_vault_rewrap(const char *merchant, const char *token, const uint8_t *blob, size_t len, uint32_t v,
                    uint8_t *out, size_t *outlen);
#endif
