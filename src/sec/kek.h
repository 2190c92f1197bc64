/* Key-encryption keys (KEK) for the card vault, behind one provider
 * interface: `file` (key files in the data dir, the embedded default) or
 * `pkcs11` (keys generated on an HSM token; they never leave it).
 *
 * KEKs are versioned: the store's kek_versions table names the current
 * version; `turnpike kek rotate` adds one. The daemon polls it, seals new
 * records with the current version, and a background job re-wraps the data
 * keys of older records (the card data itself is not decrypted for that). */
#ifndef TP_KEK_H
#define TP_KEK_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tp_store;

#define TP_KEK_WRAP_MAX 80   /* bytes of a wrapped 32-byte data key */
#define TP_KEK_MAX_VERSIONS 4096

struct tp_kek_provider {
  const char *name;
  void *cls;
  /* Generate key version v (fails if it exists). */
  int (*create)(void *cls, uint32_t v);
  /* Wrap a 32-byte data key under version v, binding aad. */
  int (*wrap)(void *cls, uint32_t v, const uint8_t dek[32], const uint8_t *aad, size_t aadlen, uint8_t *out,
              size_t *outlen);
  int (*unwrap)(void *cls, uint32_t v, const uint8_t *in, size_t inlen, const uint8_t *aad, size_t aadlen,
                uint8_t dek[32]);
  /* ECDSA P-256 over a SHA-256 digest with the audit checkpoint key (created
   * on first use); sig is DER, *siglen in/out. */
  int (*sign)(void *cls, const uint8_t digest[32], uint8_t *sig, size_t *siglen);
  /* The audit checkpoint public key as PEM (SubjectPublicKeyInfo). */
  int (*pubkey_pem)(void *cls, char *pem, size_t cap);
  void (*close)(void *cls);
  /* Whether the keys can be used now (the token is there and its session
   * logged in, opened again if it was dropped); NULL: always. */
  int (*check)(void *cls);
};

/* Open the provider named by [vault] kek (file | pkcs11) for data dir dir. */
int tp_kek_open(const char *dir, struct tp_kek_provider *p);
int tp_kek_open_file(const char *dir, struct tp_kek_provider *p);
int tp_kek_open_pkcs11(struct tp_kek_provider *p);

/* serve: open the provider, create version 1 when the store has none, load
 * the current version and record the configuration hash in the audit log.
 * Runs before the writer starts (applies its change set directly). */
int tp_kek_init(struct tp_store *st, const char *dir, const char *config_path);
/* The token refused the configured PIN (wrong, locked, expired) when it was
 * opened: serve exits TP_EXIT_PIN_REFUSED, which a supervisor must not
 * restart on (each start is another wrong login; a real token locks after
 * a few). */
bool tp_kek_pin_refused(void);
#define TP_EXIT_PIN_REFUSED 78 /* EX_CONFIG */
/* serve: start/stop the maintenance thread (current-version poll, re-wrap,
 * audit checkpoints). */
int tp_kek_start(void);
void tp_kek_stop(void);

/* Look for a new KEK version now (SIGHUP) instead of at the next poll. */
void tp_kek_poke(void);
/* The process-wide provider opened by tp_kek_init (NULL before). */
struct tp_kek_provider *tp_kek(void);
/* The version new records are sealed with. */
uint32_t tp_kek_current(void);
/* Set the current version (tests, and the poller). */
void tp_kek_set_current(uint32_t v);
/* Use p as the process-wide provider (tests; tp_kek_init does it in serve). */
void tp_kek_use(struct tp_kek_provider *p, uint32_t current);

/* Whether the provider answered its last check (every [vault]
 * kek_poll_seconds, on the maintenance thread): /readyz says not ready
 * while it does not, since no card can be sealed or read. */
bool tp_kek_ready(void);

/* Re-wrap up to max records of older versions; returns how many were
 * rewritten, 0 when none are left, -1 on error. Needs the writer. */
int tp_kek_rewrap_batch(int max);
#endif
