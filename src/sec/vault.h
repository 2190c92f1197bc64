/* The card vault: card numbers sealed with AES-256-GCM under a per-record
 * data key, itself wrapped by the key-encryption key (KEK). */
#ifndef TP_VAULT_H
#define TP_VAULT_H
#include <stddef.h>
#include <stdint.h>

#define TP_VAULT_MAX_BLOB 256

/* Load DIR/vault.key (0600, created on first use); logs a warning that the
 * file KEK is the embedded default and an HSM should be used in production. */
int tp_vault_init(const char *dir, uint8_t kek[32]);
/* Seal "pan|mm|yyyy" bound to (merchant, token) as associated data. */
int tp_vault_seal(const uint8_t kek[32], const char *merchant, const char *token, const char *pan, int exp_month,
                  int exp_year, uint8_t *out, size_t *outlen);
/* Open a sealed record; pan (>= 20 bytes) is filled. -1 on any mismatch. */
int tp_vault_open(const uint8_t kek[32], const char *merchant, const char *token, const uint8_t *blob, size_t len,
                  char *pan, int *exp_month, int *exp_year);
#endif
