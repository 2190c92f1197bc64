/* Envelope encryption of card data with OpenSSL AES-256-GCM.
 * Blob: ver(1) | wrap_nonce(12) | wrapped_dek(32) | wrap_tag(16) | nonce(12) | tag(16) | ciphertext. */
#include "sec/vault.h"
#include "core/card.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define VAULT_VERSION 1
#define HDR (1 + 12 + 32 + 16 + 12 + 16)

int tp_vault_init(const char *dir, uint8_t kek[32])
{
  char path[1200];
  snprintf(path, sizeof path, "%s/vault.key", dir);
  int fd = open(path, O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, kek, 32);
    close(fd);
    if (n != 32) {
      tp_log(TP_LOG_ERROR, "vault_key_bad", "{s:s}", "path", path);
      return -1;
    }
  } else {
    tp_random(kek, 32);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write(fd, kek, 32) != 32 || fsync(fd) != 0) {
      tp_log(TP_LOG_ERROR, "vault_key_create", "{s:s, s:s}", "path", path, "error", strerror(errno));
      if (fd >= 0)
        close(fd);
      return -1;
    }
    close(fd);
  }
  tp_log(TP_LOG_WARN, "vault_file_kek",
         "{s:s}", "message", "card vault key-encryption key is a file in the data dir; use an HSM in production");
  return 0;
}

static int gcm(int enc, const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aadlen,
               const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16])
{
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  int ok = 0, n = 0;
  if (!c)
    return -1;
  if (EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce, enc) != 1)
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
  int rc = gcm(1, kek, out + 1, (const uint8_t *)aad, (size_t)al, dek, 32, out + 13, out + 45);
  if (rc == 0)
    rc = gcm(1, dek, out + 61, (const uint8_t *)aad, (size_t)al, (const uint8_t *)plain, (size_t)pl, out + HDR,
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
  int rc = gcm(0, kek, blob + 1, (const uint8_t *)aad, (size_t)al, blob + 13, 32, dek, tag);
  if (rc == 0) {
    memcpy(tag, blob + 73, 16);
    rc = gcm(0, dek, blob + 61, (const uint8_t *)aad, (size_t)al, blob + HDR, len - HDR, (uint8_t *)plain, tag);
  }
  tp_card_wipe(dek, sizeof dek);
  if (rc == 0) {
    plain[len - HDR] = '\0';
    char *p1 = strchr(plain, '|');
    char *p2 = p1 ? strchr(p1 + 1, '|') : NULL;
    if (!p1 || !p2 || p1 - plain > 19) {
      rc = -1;
    } else {
      memcpy(pan, plain, (size_t)(p1 - plain));
      pan[p1 - plain] = '\0';
      *exp_month = atoi(p1 + 1);
      *exp_year = atoi(p2 + 1);
    }
  }
  tp_card_wipe(plain, sizeof plain);
  return rc;
}
