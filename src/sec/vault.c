/* Envelope encryption of card data with OpenSSL AES-256-GCM.
 * Blob: ver(1) | wrap_nonce(12) | wrapped_dek(32) | wrap_tag(16) | nonce(12) | tag(16) | ciphertext. */
#include "sec/vault.h"
#include "sec/kek.h"
#include "core/card.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define VAULT_VERSION 1
#define HDR (1 + 12 + 32 + 16 + 12 + 16)

/* Format 1 records (written before KEK providers existed) were wrapped by
 * DATA/vault.key: kept to read them and to upgrade them in the re-wrap job. */
static uint8_t legacy_kek[32];
static bool have_legacy;

int tp_vault_init(const char *dir, uint8_t kek[32])
{
  char path[1200];
  snprintf(path, sizeof path, "%s/vault.key", dir);
  int fd = tp_secret_open(path);
  if (fd >= 0) {
    ssize_t n = read(fd, kek, 32);
    close(fd);
    if (n != 32) {
      tp_log(TP_LOG_ERROR, "vault_key_bad", "{s:s}", "path", path);
      return -1;
    }
  } else if (errno != ENOENT) {
    tp_log(TP_LOG_ERROR, "vault_key_bad", "{s:s, s:s}", "path", path, "error", strerror(errno));
    return -1;
  } else {
    tp_random(kek, 32);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    /* The directory too: a new file's name is durable only once it is. */
    if (fd < 0 || write(fd, kek, 32) != 32 || fsync(fd) != 0 || tp_fsync_dir_of(path) != 0) {
      int e = errno;
      if (fd >= 0) {
        close(fd);
        /* ours and unusable (a full disk): left, every later start refused
         * it as vault_key_bad (review, session 39) */
        unlink(path);
      }
      tp_log(TP_LOG_ERROR, "vault_key_create", "{s:s, s:s}", "path", path, "error", strerror(e));
      return -1;
    }
    close(fd);
  }
  memcpy(legacy_kek, kek, 32);
  have_legacy = true;
  return 0;
}

/* AES-256-GCM fetched from the provider once: EVP_aes_256_gcm() makes every
 * init look it up again, which cost more than sealing a card. */
static EVP_CIPHER *gcm_cipher;
static pthread_once_t gcm_once = PTHREAD_ONCE_INIT;

static void gcm_fetch(void)
{
  gcm_cipher = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

int tp_vault_gcm(int enc, const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aadlen,
               const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16])
{
  pthread_once(&gcm_once, gcm_fetch);
  if (!gcm_cipher)
    return -1;
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  int ok = 0, n = 0;
  if (!c)
    return -1;
  if (EVP_CipherInit_ex2(c, gcm_cipher, key, nonce, enc, NULL) != 1)
    goto out;
  if (!enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) != 1)
    goto out;
  if (aadlen && EVP_CipherUpdate(c, NULL, &n, aad, (int)aadlen) != 1)
    goto out;
  if (len && EVP_CipherUpdate(c, out, &n, in, (int)len) != 1)
    goto out;
  if (EVP_CipherFinal_ex(c, out + n, &n) != 1)
    goto out;
  if (enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1)
    goto out;
  ok = 1;
out:
  EVP_CIPHER_CTX_free(c);
  return ok ? 0 : -1;
}

/* A sealed card's plaintext, "PAN|month|year" (tp_vault_seal), n bytes of
 * plain (which has room for a terminator) into its parts. */
static int plain_card(char *plain, size_t n, char *pan, int *exp_month, int *exp_year)
{
  plain[n] = '\0';
  char *p1 = strchr(plain, '|');
  char *p2 = p1 ? strchr(p1 + 1, '|') : NULL;
  if (!p1 || !p2 || p1 - plain > 19)
    return -1;
  memcpy(pan, plain, (size_t)(p1 - plain));
  pan[p1 - plain] = '\0';
  *exp_month = atoi(p1 + 1);
  *exp_year = atoi(p2 + 1);
  return 0;
}

int tp_vault_seal(const uint8_t kek[32], const char *merchant, const char *token, const char *pan, int exp_month,
                  int exp_year, uint8_t *out, size_t *outlen)
{
  char plain[64], aad[160];
  int pl = snprintf(plain, sizeof plain, "%s|%d|%d", pan, exp_month, exp_year);
  int al = snprintf(aad, sizeof aad, "%s|%s", merchant, token);
  if (pl <= 0 || (size_t)pl >= sizeof plain || al <= 0 || (size_t)al >= sizeof aad ||
      HDR + (size_t)pl > TP_VAULT_MAX_BLOB)
    return -1;
  uint8_t dek[32];
  tp_random(dek, 32);
  out[0] = VAULT_VERSION;
  tp_random(out + 1, 12);
  tp_random(out + 61, 12);
  int rc = tp_vault_gcm(1, kek, out + 1, (const uint8_t *)aad, (size_t)al, dek, 32, out + 13, out + 45);
  if (rc == 0)
    rc = tp_vault_gcm(1, dek, out + 61, (const uint8_t *)aad, (size_t)al, (const uint8_t *)plain, (size_t)pl, out + HDR,
             out + 73);
  tp_card_wipe(dek, sizeof dek);
  tp_card_wipe(plain, sizeof plain);
  *outlen = HDR + (size_t)pl;
  return rc;
}

int tp_vault_open(const uint8_t kek[32], const char *merchant, const char *token, const uint8_t *blob, size_t len,
                  char *pan, int *exp_month, int *exp_year)
{
  char aad[160];
  int al = snprintf(aad, sizeof aad, "%s|%s", merchant, token);
  if (len <= HDR || len > TP_VAULT_MAX_BLOB || blob[0] != VAULT_VERSION || al <= 0 || (size_t)al >= sizeof aad)
    return -1;
  uint8_t dek[32], tag[16];
  char plain[TP_VAULT_MAX_BLOB];
  memcpy(tag, blob + 45, 16);
  int rc = tp_vault_gcm(0, kek, blob + 1, (const uint8_t *)aad, (size_t)al, blob + 13, 32, dek, tag);
  if (rc == 0) {
    memcpy(tag, blob + 73, 16);
    rc = tp_vault_gcm(0, dek, blob + 61, (const uint8_t *)aad, (size_t)al, blob + HDR, len - HDR, (uint8_t *)plain, tag);
  }
  tp_card_wipe(dek, sizeof dek);
  if (rc == 0)
    rc = plain_card(plain, len - HDR, pan, exp_month, exp_year);
  tp_card_wipe(plain, sizeof plain);
  return rc;
}

/* ---- format 2: provider KEK, versioned ------------------------------------ */
#define REC_VERSION 2
#define REC_FIXED (1 + 4 + 1 + 12 + 16)

static int rec_aad(char *aad, size_t cap, const char *merchant, const char *token, uint32_t v)
{
  int n = v ? snprintf(aad, cap, "%s|%s|%u", merchant, token, v) : snprintf(aad, cap, "%s|%s", merchant, token);
  return n <= 0 || (size_t)n >= cap ? -1 : n;
}

uint32_t tp_vault_rec_version(const uint8_t *blob, size_t len)
{
  if (len <= REC_FIXED || blob[0] != REC_VERSION)
    return 0;
  return (uint32_t)blob[1] << 24 | (uint32_t)blob[2] << 16 | (uint32_t)blob[3] << 8 | blob[4];
}

/* Split a record: wrapped key, nonce, tag, ciphertext. */
static int rec_parse(const uint8_t *blob, size_t len, uint32_t *v, const uint8_t **w, size_t *wl,
                     const uint8_t **rest)
{
  *v = tp_vault_rec_version(blob, len);
  if (!*v || len > TP_VAULT_MAX_BLOB)
    return -1;
  *wl = blob[5];
  if (*wl == 0 || *wl > TP_KEK_WRAP_MAX || REC_FIXED + *wl >= len)
    return -1;
  *w = blob + 6;
  *rest = blob + 6 + *wl;
  return 0;
}

static int rec_header(uint8_t *out, uint32_t v, const uint8_t *w, size_t wl)
{
  out[0] = REC_VERSION;
  out[1] = (uint8_t)(v >> 24);
  out[2] = (uint8_t)(v >> 16);
  out[3] = (uint8_t)(v >> 8);
  out[4] = (uint8_t)v;
  out[5] = (uint8_t)wl;
  memcpy(out + 6, w, wl);
  return 6 + (int)wl;
}

int tp_vault_seal_rec(const char *merchant, const char *token, const char *pan, int exp_month, int exp_year,
                      uint8_t *out, size_t *outlen)
{
  struct tp_kek_provider *p = tp_kek();
  uint32_t v = tp_kek_current();
  char plain[64], aad[200], waad[200];
  int pl = snprintf(plain, sizeof plain, "%s|%d|%d", pan, exp_month, exp_year);
  int al = rec_aad(aad, sizeof aad, merchant, token, 0), wal = rec_aad(waad, sizeof waad, merchant, token, v);
  if (!p || !v || pl <= 0 || (size_t)pl >= sizeof plain || al < 0 || wal < 0) {
    tp_card_wipe(plain, sizeof plain);
    return -1;
  }
  uint8_t dek[32], w[TP_KEK_WRAP_MAX];
  size_t wl = sizeof w;
  tp_random(dek, sizeof dek);
  int rc = p->wrap(p->cls, v, dek, (const uint8_t *)waad, (size_t)wal, w, &wl);
  if (rc == 0 && (wl == 0 || wl > TP_KEK_WRAP_MAX || REC_FIXED + wl + (size_t)pl > TP_VAULT_MAX_BLOB))
    rc = -1;
  if (rc == 0) {
    int h = rec_header(out, v, w, wl);
    uint8_t *nonce = out + h, *tag = out + h + 12;
    tp_random(nonce, 12);
    rc = tp_vault_gcm(1, dek, nonce, (const uint8_t *)aad, (size_t)al, (const uint8_t *)plain, (size_t)pl, tag + 16, tag);
    *outlen = (size_t)h + 28 + (size_t)pl;
  }
  tp_card_wipe(dek, sizeof dek);
  tp_card_wipe(plain, sizeof plain);
  return rc;
}

static int rec_unwrap(const char *merchant, const char *token, const uint8_t *blob, size_t len, uint8_t dek[32],
                      const uint8_t **rest)
{
  struct tp_kek_provider *p = tp_kek();
  uint32_t v;
  const uint8_t *w;
  size_t wl;
  char waad[200];
  if (!p || rec_parse(blob, len, &v, &w, &wl, rest) != 0)
    return -1;
  int wal = rec_aad(waad, sizeof waad, merchant, token, v);
  if (wal < 0)
    return -1;
  return p->unwrap(p->cls, v, w, wl, (const uint8_t *)waad, (size_t)wal, dek);
}

int tp_vault_open_rec(const char *merchant, const char *token, const uint8_t *blob, size_t len, char *pan,
                      int *exp_month, int *exp_year)
{
  uint8_t dek[32], tag[16];
  const uint8_t *rest;
  char aad[200], plain[TP_VAULT_MAX_BLOB];
  if (len > 0 && blob[0] == VAULT_VERSION)
    return have_legacy ? tp_vault_open(legacy_kek, merchant, token, blob, len, pan, exp_month, exp_year) : -1;
  int al = rec_aad(aad, sizeof aad, merchant, token, 0);
  if (al < 0 || rec_unwrap(merchant, token, blob, len, dek, &rest) != 0)
    return -1;
  size_t cl = len - (size_t)(rest + 28 - blob);
  memcpy(tag, rest + 12, 16);
  int rc = tp_vault_gcm(0, dek, rest, (const uint8_t *)aad, (size_t)al, rest + 28, cl, (uint8_t *)plain, tag);
  tp_card_wipe(dek, sizeof dek);
  if (rc == 0)
    rc = plain_card(plain, cl, pan, exp_month, exp_year);
  tp_card_wipe(plain, sizeof plain);
  return rc;
}

int tp_vault_rewrap(const char *merchant, const char *token, const uint8_t *blob, size_t len, uint32_t v,
                    uint8_t *out, size_t *outlen)
{
  struct tp_kek_provider *p = tp_kek();
  uint8_t dek[32], w[TP_KEK_WRAP_MAX];
  size_t wl = sizeof w;
  const uint8_t *rest;
  char waad[200];
  int wal = rec_aad(waad, sizeof waad, merchant, token, v);
  if (!p || wal < 0)
    return -1;
  if (len > HDR && blob[0] == VAULT_VERSION) {
    /* Format 1 → 2: unwrap the data key with the legacy key; the card's
     * nonce, tag and ciphertext (AAD merchant|token) carry over unchanged. */
    char aad[200];
    uint8_t tag[16];
    int al = rec_aad(aad, sizeof aad, merchant, token, 0);
    memcpy(tag, blob + 45, 16);
    if (!have_legacy || al < 0 ||
        tp_vault_gcm(0, legacy_kek, blob + 1, (const uint8_t *)aad, (size_t)al, blob + 13, 32, dek, tag) != 0) {
      tp_card_wipe(dek, sizeof dek); /* a failed decryption may have written part of it */
      return -1;
    }
    rest = blob + 61;
  } else if (rec_unwrap(merchant, token, blob, len, dek, &rest) != 0) {
    tp_card_wipe(dek, sizeof dek);
    return -1;
  }
  int rc = p->wrap(p->cls, v, dek, (const uint8_t *)waad, (size_t)wal, w, &wl);
  tp_card_wipe(dek, sizeof dek);
  size_t tail = len - (size_t)(rest - blob);
  if (rc != 0 || wl == 0 || wl > TP_KEK_WRAP_MAX || 6 + wl + tail > TP_VAULT_MAX_BLOB)
    return -1;
  int h = rec_header(out, v, w, wl);
  memcpy(out + h, rest, tail);
  *outlen = (size_t)h + tail;
  return 0;
}
