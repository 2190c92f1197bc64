/* Reading the TLS certificate and key and choosing the protocol versions.
 * The handshake itself is libmicrohttpd's (GnuTLS). */
#include "sec/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/http.h"
#include "config.h"
#include "util.h"
#include "log.h"

const char *tp_tls_priorities(const char *min_version)
{
  /* TLS 1.0 and 1.1 are never offered; SSL 3 is gone from GnuTLS anyway.
   * Nor, in TLS 1.2, what RFC 9325 (BCP 195) says not to negotiate: static
   * RSA key exchange (no forward secrecy), CBC suites (AEAD ones are what it
   * recommends; SHA-1 MACs go too) and SHA-1 handshake signatures (RFC
   * 9155): ECDHE with AES-GCM, ChaCha20-Poly1305 or AES-CCM stays. */
#define TP_TLS_WEAK_OFF ":-RSA:-AES-128-CBC:-AES-256-CBC:-CAMELLIA-128-CBC:-CAMELLIA-256-CBC:-3DES-CBC:-SHA1" \
                        ":-SIGN-RSA-SHA1:-SIGN-ECDSA-SHA1:-SIGN-DSA-SHA1"
  if (!min_version || strcmp(min_version, "1.2") == 0)
    return "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2" TP_TLS_WEAK_OFF;
  if (strcmp(min_version, "1.3") == 0)
    return "NORMAL:-VERS-ALL:+VERS-TLS1.3" TP_TLS_WEAK_OFF;
  return NULL;
}

/* The whole file as a NUL-terminated string (bounded), NULL on error. */
static char *slurp(const char *path)
{
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  char *buf = malloc(TP_TLS_MAX_PEM + 1);
  size_t n = buf ? fread(buf, 1, TP_TLS_MAX_PEM + 1, f) : 0;
  bool err = ferror(f) != 0;
  fclose(f);
  if (!buf || err || n == 0 || n > TP_TLS_MAX_PEM) {
    free(buf);
    return NULL;
  }
  buf[n] = '\0';
  return buf;
}

static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
  (void)buf, (void)size, (void)rwflag, (void)u;
  return -1; /* an encrypted key cannot be served: nobody is there to type it */
}

/* Why a certificate and key (PEM texts) cannot be served together, or NULL:
 * checked here so that the error names the file and the reason (GnuTLS,
 * inside libmicrohttpd, only fails the start). */
static const char *pair_problem(const char *cert_pem, const char *key_pem, bool *in_key)
{
  const char *why = NULL;
  *in_key = false;
  BIO *cb = BIO_new_mem_buf(cert_pem, -1), *kb = BIO_new_mem_buf(key_pem, -1);
  X509 *x = cb ? PEM_read_bio_X509(cb, NULL, no_passphrase, NULL) : NULL;
  EVP_PKEY *k = kb ? PEM_read_bio_PrivateKey(kb, NULL, no_passphrase, NULL) : NULL;
  if (!x)
    why = "the certificate file holds no PEM certificate";
  else if (!k) {
    *in_key = true;
    why = strstr(key_pem, "ENCRYPTED") ? "the private key is encrypted (a passphrase cannot be given)"
                                       : "the key file holds no PEM private key";
  } else if (X509_check_private_key(x, k) != 1) {
    *in_key = true;
    why = "the private key does not match the certificate";
  }
  ERR_clear_error();
  X509_free(x);
  EVP_PKEY_free(k);
  BIO_free(cb);
  BIO_free(kb);
  return why;
}

int tp_tls_configure(const char *cert_file, const char *key_file, const char *min_version)
{
  if (!cert_file)
    cert_file = tp_config_get("tls", "cert");
  if (!key_file)
    key_file = tp_config_get("tls", "key");
  if (!min_version)
    min_version = tp_config_get("tls", "min_version");
  /* No TLS only when neither is given: a cert or key given empty (an unset
   * variable in TURNPIKE_TLS_CERT=...) or a min_version without them is a
   * mistake that would serve plain HTTP. */
  if (!cert_file && !key_file && !min_version)
    return 0;
  if (!cert_file || !*cert_file || !key_file || !*key_file) {
    tp_log(TP_LOG_ERROR, "tls_config", "{s:s}", "reason", "both a certificate and a key are needed");
    return -1;
  }
  const char *prio = tp_tls_priorities(min_version);
  if (!prio) {
    tp_log(TP_LOG_ERROR, "tls_config", "{s:s, s:s}", "reason", "min_version must be 1.2 or 1.3", "min_version",
           min_version);
    return -1;
  }
  const char *exposed = tp_key_file_exposed(key_file);
  if (exposed) {
    tp_log(TP_LOG_ERROR, "tls_config", "{s:s, s:s}", "reason", exposed, "file", key_file);
    return -1;
  }
  char *cert = slurp(cert_file), *key = slurp(key_file);
  int rc = -1;
  const char *why = NULL;
  bool in_key = false;
  if (!cert || !key)
    tp_log(TP_LOG_ERROR, "tls_config", "{s:s, s:s}", "reason", "cannot read certificate or key", "file",
           !cert ? cert_file : key_file);
  else if ((why = pair_problem(cert, key, &in_key)) != NULL)
    tp_log(TP_LOG_ERROR, "tls_config", "{s:s, s:s}", "reason", why, "file", in_key ? key_file : cert_file);
  else if (tp_http_set_tls(cert, key, prio) == 0)
    rc = 1;
  if (key) /* the private key does not stay in freed heap memory */
    memset(key, 0, strlen(key));
  free(cert);
  free(key);
  if (rc == 1)
    tp_log(TP_LOG_INFO, "tls_enabled", "{s:s, s:s}", "cert", cert_file, "min_version",
           min_version && *min_version ? min_version : "1.2");
  return rc;
}
