/* ES256 JWTs with OpenSSL 3 and jansson. JOSE wants the ECDSA signature as
 * the raw 64 bytes r||s (RFC 7518 §3.4), OpenSSL speaks DER: we convert both
 * ways. */
#include "sec/jwt.h"
#include "jpack.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t tp_b64url_encode(const void *in, size_t n, char *out, size_t cap)
{
  const uint8_t *p = in;
  size_t need = (n / 3) * 4 + (n % 3 ? n % 3 + 1 : 0);
  if (need + 1 > cap)
    return 0;
  size_t o = 0, i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    out[o++] = b64url[v >> 18];
    out[o++] = b64url[(v >> 12) & 63];
    out[o++] = b64url[(v >> 6) & 63];
    out[o++] = b64url[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)p[i] << 16;
    out[o++] = b64url[v >> 18];
    out[o++] = b64url[(v >> 12) & 63];
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
    out[o++] = b64url[v >> 18];
    out[o++] = b64url[(v >> 12) & 63];
    out[o++] = b64url[(v >> 6) & 63];
  }
  out[o] = '\0';
  return o;
}

long tp_b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap)
{
  if (n % 4 == 1)
    return -1;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    int v = tp_b64_digit(in[i], true);
    if (v < 0)
      return -1;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (o >= cap)
        return -1;
      out[o++] = (uint8_t)((acc >> bits) & 0xff);
    }
  }
  /* Leftover bits must be zero: one encoding per byte string. */
  if (bits && (acc & ((1u << bits) - 1)))
    return -1;
  return (long)o;
}

/* ---- keys ------------------------------------------------------------------ */
static int pub_xy(const struct tp_jwt_key *k, uint8_t x[32], uint8_t y[32])
{
  BIGNUM *bx = NULL, *by = NULL;
  int rc = -1;
  if (EVP_PKEY_get_bn_param(k->pkey, OSSL_PKEY_PARAM_EC_PUB_X, &bx) == 1 &&
      EVP_PKEY_get_bn_param(k->pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &by) == 1 && BN_bn2binpad(bx, x, 32) == 32 &&
      BN_bn2binpad(by, y, 32) == 32)
    rc = 0;
  BN_free(bx);
  BN_free(by);
  return rc;
}

/* RFC 7638: SHA-256 over the required members in lexicographic order. */
static int set_kid(struct tp_jwt_key *k)
{
  uint8_t x[32], y[32];
  if (pub_xy(k, x, y) != 0)
    return -1;
  char xs[48], ys[48], canon[200];
  tp_b64url_encode(x, 32, xs, sizeof xs);
  tp_b64url_encode(y, 32, ys, sizeof ys);
  int n = snprintf(canon, sizeof canon, "{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"%s\",\"y\":\"%s\"}", xs, ys);
  uint8_t h[32];
  tp_sha256(canon, (size_t)n, h);
  tp_b64url_encode(h, 32, k->kid, sizeof k->kid);
  return 0;
}

static bool is_p256(EVP_PKEY *p)
{
  char name[32];
  return EVP_PKEY_base_id(p) == EVP_PKEY_EC &&
         EVP_PKEY_get_utf8_string_param(p, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof name, NULL) == 1 &&
         strcmp(name, "prime256v1") == 0;
}

int tp_jwt_key_generate(struct tp_jwt_key *k)
{
  memset(k, 0, sizeof *k);
  k->pkey = EVP_EC_gen("P-256");
  if (!k->pkey || set_kid(k) != 0) {
    tp_jwt_key_free(k);
    return -1;
  }
  return 0;
}

int tp_jwt_key_load_or_create(const char *path, struct tp_jwt_key *k)
{
  memset(k, 0, sizeof *k);
  FILE *f = tp_secret_fopen(path);
  if (f) {
    k->pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!k->pkey || !is_p256(k->pkey) || set_kid(k) != 0) {
      tp_jwt_key_free(k);
      return -1;
    }
    return 0;
  }
  if (errno != ENOENT)
    return -1;
  if (tp_jwt_key_generate(k) != 0)
    return -1;
  /* O_EXCL: two processes starting at once must not overwrite each other. */
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    tp_jwt_key_free(k);
    return errno == EEXIST ? tp_jwt_key_load_or_create(path, k) : -1;
  }
  f = fdopen(fd, "w");
  if (!f) {
    close(fd);
    tp_jwt_key_free(k);
    return -1;
  }
  int ok = PEM_write_PrivateKey(f, k->pkey, NULL, NULL, 0, NULL, NULL) == 1;
  ok = (fflush(f) == 0 && fsync(fileno(f)) == 0 && tp_fsync_dir_of(path) == 0) && ok;
  ok = fclose(f) == 0 && ok;
  if (!ok) {
    unlink(path);
    tp_jwt_key_free(k);
    return -1;
  }
  return 0;
}

void tp_jwt_key_free(struct tp_jwt_key *k)
{
  EVP_PKEY_free(k->pkey);
  k->pkey = NULL;
}

json_t *tp_jwt_key_jwk(const struct tp_jwt_key *k)
{
  uint8_t x[32], y[32];
  if (pub_xy(k, x, y) != 0)
    return NULL;
  char xs[48], ys[48];
  tp_b64url_encode(x, 32, xs, sizeof xs);
  tp_b64url_encode(y, 32, ys, sizeof ys);
  return tp_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256", "x", xs, "y", ys, "kid",
                 k->kid, "alg", "ES256", "use", "sig");
}

/* ---- sign / verify ------------------------------------------------------- */
static char *b64url_json(const json_t *j)
{
  char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!s)
    return NULL;
  size_t n = strlen(s), cap = n / 3 * 4 + 8;
  char *out = malloc(cap);
  if (out && !tp_b64url_encode(s, n, out, cap)) {
    free(out);
    out = NULL;
  }
  free(s);
  return out;
}

char *tp_jwt_sign(const struct tp_jwt_key *k, const char *typ, const json_t *claims)
{
  json_t *hdr = tp_pack("{s:s, s:s, s:s}", "typ", typ, "alg", "ES256", "kid", k->kid);
  char *h = b64url_json(hdr), *p = b64url_json(claims);
  json_decref(hdr);
  char *out = NULL;
  uint8_t der[80];
  size_t der_len = sizeof der;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (!h || !p || !md)
    goto done;
  size_t hl = strlen(h), pl = strlen(p);
  size_t cap = hl + pl + 2 + 90;
  out = malloc(cap);
  if (!out)
    goto done;
  memcpy(out, h, hl);
  out[hl] = '.';
  memcpy(out + hl + 1, p, pl);
  size_t signed_len = hl + 1 + pl;
  if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k->pkey) != 1 ||
      EVP_DigestSign(md, der, &der_len, (const uint8_t *)out, signed_len) != 1)
    goto fail;
  const uint8_t *dp = der;
  ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &dp, (long)der_len);
  if (!sig)
    goto fail;
  uint8_t raw[64];
  int okr = BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32) == 32 && BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32) == 32;
  ECDSA_SIG_free(sig);
  if (!okr)
    goto fail;
  out[signed_len] = '.';
  if (!tp_b64url_encode(raw, 64, out + signed_len + 1, cap - signed_len - 1))
    goto fail;
  goto done;
fail:
  free(out);
  out = NULL;
done:
  EVP_MD_CTX_free(md);
  free(h);
  free(p);
  return out;
}

static json_t *decode_json_part(const char *s, size_t n)
{
  uint8_t buf[TP_JWT_MAX_LEN];
  long len = tp_b64url_decode(s, n, buf, sizeof buf);
  if (len <= 0)
    return NULL;
  json_t *j = json_loadb((const char *)buf, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
  if (j && !json_is_object(j)) {
    json_decref(j);
    return NULL;
  }
  return j;
}

static bool typ_matches(const char *got, const char *want)
{
  if (strcasecmp(got, want) == 0)
    return true;
  /* RFC 7515 §4.1.9: "application/" may be left out, so accept it either way. */
  return strncasecmp(got, "application/", 12) == 0 && strcasecmp(got + 12, want) == 0;
}

static bool verify_sig(EVP_PKEY *pkey, const char *data, size_t n, const uint8_t raw[64])
{
  ECDSA_SIG *sig = ECDSA_SIG_new();
  BIGNUM *r = BN_bin2bn(raw, 32, NULL), *s = BN_bin2bn(raw + 32, 32, NULL);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    return false;
  }
  uint8_t *der = NULL;
  int der_len = i2d_ECDSA_SIG(sig, &der);
  ECDSA_SIG_free(sig);
  if (der_len <= 0)
    return false;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  bool ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pkey) == 1 &&
            EVP_DigestVerify(md, der, (size_t)der_len, (const uint8_t *)data, n) == 1;
  EVP_MD_CTX_free(md);
  OPENSSL_free(der);
  return ok;
}

enum tp_jwt_result tp_jwt_verify(const struct tp_jwt_key *keys, size_t nkeys, const char *token, const char *typ,
                                 json_t **claims)
{
  *claims = NULL;
  size_t len = strnlen(token, TP_JWT_MAX_LEN + 1);
  if (len > TP_JWT_MAX_LEN)
    return TP_JWT_MALFORMED;
  const char *d1 = strchr(token, '.');
  const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
  if (!d1 || !d2 || strchr(d2 + 1, '.'))
    return TP_JWT_MALFORMED;
  json_t *hdr = decode_json_part(token, (size_t)(d1 - token));
  if (!hdr)
    return TP_JWT_MALFORMED;
  const char *alg = json_string_value(json_object_get(hdr, "alg"));
  const char *htyp = json_string_value(json_object_get(hdr, "typ"));
  const char *kid = json_string_value(json_object_get(hdr, "kid"));
  const struct tp_jwt_key *key = NULL;
  for (size_t i = 0; kid && i < nkeys; i++)
    if (keys[i].pkey && strcmp(keys[i].kid, kid) == 0)
      key = &keys[i];
  /* No "crit" extensions are understood, so a token that has any is refused. */
  bool hdr_ok = alg && strcmp(alg, "ES256") == 0 && key && (!typ || (htyp && typ_matches(htyp, typ))) &&
                !json_object_get(hdr, "crit");
  json_decref(hdr);
  if (!hdr_ok)
    return TP_JWT_BAD_HEADER;
  uint8_t raw[66];
  if (tp_b64url_decode(d2 + 1, strlen(d2 + 1), raw, sizeof raw) != 64)
    return TP_JWT_BAD_SIGNATURE;
  if (!verify_sig(key->pkey, token, (size_t)(d2 - token), raw))
    return TP_JWT_BAD_SIGNATURE;
  json_t *c = decode_json_part(d1 + 1, (size_t)(d2 - d1 - 1));
  if (!c)
    return TP_JWT_MALFORMED;
  *claims = c;
  return TP_JWT_OK;
}
