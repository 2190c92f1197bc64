/* JWE decryption for client-side card encryption (see sec/jwe.h). */
#include "sec/jwe.h"
#include "jpack.h"
#include "log.h"
#include "sec/jwt.h"
#include "sec/vault.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static EVP_PKEY *rsa_key, *ec_key;
static char rsa_kid[40], ec_kid[40];

/* ---- base64url: the JWT module's codec (sec/jwt.h) ---------------------------- */
/* Decode n chars into out (at most cap bytes); 0 and the length in *outlen,
 * or -1 on a bad character, a non-canonical tail or overflow. */
static int b64u_dec(const char *s, size_t n, uint8_t *out, size_t cap, size_t *outlen)
{
  long l = tp_b64url_decode(s, n, out, cap);
  if (l < 0)
    return -1;
  *outlen = (size_t)l;
  return 0;
}

/* ---- keys ----------------------------------------------------------------- */
static EVP_PKEY *load_or_create(const char *dir, const char *name, const char *type, const char *param)
{
  char path[1200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = tp_secret_fopen(path);
  EVP_PKEY *k = NULL;
  if (!f && errno != ENOENT) {
    tp_log(TP_LOG_ERROR, "jwe_key_bad", "{s:s, s:s}", "path", path, "error", strerror(errno));
    return NULL;
  }
  if (f) {
    k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!k)
      tp_log(TP_LOG_ERROR, "jwe_key_bad", "{s:s}", "path", path);
    return k;
  }
  k = strcmp(type, "RSA") == 0 ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072) : EVP_PKEY_Q_keygen(NULL, NULL, "EC", param);
  int fd = k ? open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : -1;
  FILE *w = fd >= 0 ? fdopen(fd, "w") : NULL;
  bool ok = w && PEM_write_PrivateKey(w, k, NULL, NULL, 0, NULL, NULL) == 1 && fflush(w) == 0 && fsync(fd) == 0 &&
            tp_fsync_dir_of(path) == 0;
  if (w)
    fclose(w);
  else if (fd >= 0)
    close(fd);
  if (!ok) {
    int e = errno;
    if (fd >= 0)
      unlink(path); /* a part-written key refused every later start (jwe_key_bad) */
    tp_log(TP_LOG_ERROR, "jwe_key_create", "{s:s, s:s}", "path", path, "error", strerror(e));
    EVP_PKEY_free(k);
    return NULL;
  }
  return k;
}

/* kid = prefix + base64url of the first 12 bytes of SHA-256(public key DER):
 * a new key pair gets a new kid. */
static void make_kid(EVP_PKEY *k, const char *prefix, char *kid, size_t cap)
{
  uint8_t *der = NULL, md[32];
  int n = i2d_PUBKEY(k, &der);
  char b[32];
  if (n <= 0) {
    snprintf(kid, cap, "%s", prefix);
    return;
  }
  EVP_Digest(der, (size_t)n, md, NULL, EVP_sha256(), NULL);
  OPENSSL_free(der);
  tp_b64url_encode(md, 12, b, sizeof b);
  snprintf(kid, cap, "%s%s", prefix, b);
}

int tp_jwe_init(const char *dir)
{
  tp_jwe_free();
  rsa_key = load_or_create(dir, "jwe-rsa.pem", "RSA", NULL);
  ec_key = load_or_create(dir, "jwe-ec.pem", "EC", "P-256");
  if (!rsa_key || !ec_key)
    return -1;
  make_kid(rsa_key, "rsa-", rsa_kid, sizeof rsa_kid);
  make_kid(ec_key, "ec-", ec_kid, sizeof ec_kid);
  return 0;
}

void tp_jwe_free(void)
{
  EVP_PKEY_free(rsa_key);
  EVP_PKEY_free(ec_key);
  rsa_key = ec_key = NULL;
}

static json_t *bn_param(EVP_PKEY *k, const char *name)
{
  BIGNUM *bn = NULL;
  if (EVP_PKEY_get_bn_param(k, name, &bn) != 1)
    return NULL;
  uint8_t buf[1024];
  char s[1400];
  int n = BN_num_bytes(bn);
  json_t *r = NULL;
  if (n > 0 && (size_t)n <= sizeof buf) {
    BN_bn2bin(bn, buf);
    tp_b64url_encode(buf, (size_t)n, s, sizeof s);
    r = json_string(s);
  }
  BN_free(bn);
  return r;
}

json_t *tp_jwe_jwks(void)
{
  json_t *keys = json_array();
  if (rsa_key) {
    json_t *n = bn_param(rsa_key, OSSL_PKEY_PARAM_RSA_N), *e = bn_param(rsa_key, OSSL_PKEY_PARAM_RSA_E);
    if (n && e)
      json_array_append_new(keys, tp_pack("{s:s, s:s, s:s, s:s, s:o, s:o}", "kty", "RSA", "kid", rsa_kid, "use",
                                          "enc", "alg", "RSA-OAEP-256", "n", n, "e", e));
  }
  if (ec_key) {
    uint8_t pt[65];
    size_t pl = 0;
    if (EVP_PKEY_get_octet_string_param(ec_key, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt, &pl) == 1 && pl == 65 &&
        pt[0] == 4) {
      char x[48], y[48];
      tp_b64url_encode(pt + 1, 32, x, sizeof x);
      tp_b64url_encode(pt + 33, 32, y, sizeof y);
      json_array_append_new(keys, tp_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "EC", "kid", ec_kid, "use",
                                          "enc", "alg", "ECDH-ES", "crv", "P-256", "x", x, "y", y));
    }
  }
  return tp_pack("{s:o}", "keys", keys);
}

/* ---- decryption ------------------------------------------------------------- */
static int rsa_cek(const uint8_t *ek, size_t ekl, uint8_t cek[32])
{
  uint8_t buf[512];
  size_t n = sizeof buf;
  EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(rsa_key, NULL);
  int ok = c && EVP_PKEY_decrypt_init(c) == 1 && EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) == 1 &&
           EVP_PKEY_CTX_set_rsa_oaep_md(c, EVP_sha256()) == 1 && EVP_PKEY_CTX_set_rsa_mgf1_md(c, EVP_sha256()) == 1 &&
           EVP_PKEY_decrypt(c, buf, &n, ek, ekl) == 1 && n == 32;
  EVP_PKEY_CTX_free(c);
  if (ok)
    memcpy(cek, buf, 32);
  OPENSSL_cleanse(buf, sizeof buf);
  return ok ? 0 : -1;
}

static void be32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* ECDH-ES direct: Z = ECDH(our key, epk), CEK = Concat KDF (NIST SP 800-56A
 * single-step, SHA-256) with AlgorithmID = enc, apu, apv, keydatalen 256. */
static int ecdh_cek(const json_t *epk, const char *enc, const json_t *hdr, uint8_t cek[32])
{
  const char *kty = json_string_value(json_object_get(epk, "kty"));
  const char *crv = json_string_value(json_object_get(epk, "crv"));
  const char *xs = json_string_value(json_object_get(epk, "x"));
  const char *ys = json_string_value(json_object_get(epk, "y"));
  uint8_t pt[65], apu[256], apv[256];
  size_t xl = 0, yl = 0, apul = 0, apvl = 0;
  if (!kty || !crv || !xs || !ys || strcmp(kty, "EC") != 0 || strcmp(crv, "P-256") != 0 ||
      b64u_dec(xs, strlen(xs), pt + 1, 32, &xl) != 0 || b64u_dec(ys, strlen(ys), pt + 33, 32, &yl) != 0 || xl != 32 ||
      yl != 32)
    return -1;
  const char *apus = json_string_value(json_object_get(hdr, "apu"));
  const char *apvs = json_string_value(json_object_get(hdr, "apv"));
  if ((apus && b64u_dec(apus, strlen(apus), apu, sizeof apu, &apul) != 0) ||
      (apvs && b64u_dec(apvs, strlen(apvs), apv, sizeof apv, &apvl) != 0))
    return -1;
  pt[0] = 4;
  OSSL_PARAM prm[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)(uintptr_t)"prime256v1", 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt),
    OSSL_PARAM_END,
  };
  EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
  EVP_PKEY *peer = NULL;
  EVP_PKEY_CTX *dc = NULL;
  uint8_t z[64];
  size_t zl = sizeof z;
  /* set_peer_ex(validate = 1) checks the point is on the curve (invalid-curve attacks). */
  int ok = pc && EVP_PKEY_fromdata_init(pc) == 1 && EVP_PKEY_fromdata(pc, &peer, EVP_PKEY_PUBLIC_KEY, prm) == 1 &&
           (dc = EVP_PKEY_CTX_new(ec_key, NULL)) && EVP_PKEY_derive_init(dc) == 1 &&
           EVP_PKEY_derive_set_peer_ex(dc, peer, 1) == 1 && EVP_PKEY_derive(dc, z, &zl) == 1 && zl == 32;
  EVP_PKEY_CTX_free(dc);
  EVP_PKEY_free(peer);
  EVP_PKEY_CTX_free(pc);
  if (!ok) {
    OPENSSL_cleanse(z, sizeof z);
    return -1;
  }
  uint8_t ctr[4], l[4], kdl[4];
  size_t el = strlen(enc);
  be32(ctr, 1);
  be32(kdl, 256);
  EVP_MD_CTX *m = EVP_MD_CTX_new();
  ok = m && EVP_DigestInit_ex(m, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(m, ctr, 4) == 1 &&
       EVP_DigestUpdate(m, z, zl) == 1;
  be32(l, (uint32_t)el);
  ok = ok && EVP_DigestUpdate(m, l, 4) == 1 && EVP_DigestUpdate(m, enc, el) == 1;
  be32(l, (uint32_t)apul);
  ok = ok && EVP_DigestUpdate(m, l, 4) == 1 && (!apul || EVP_DigestUpdate(m, apu, apul) == 1);
  be32(l, (uint32_t)apvl);
  ok = ok && EVP_DigestUpdate(m, l, 4) == 1 && (!apvl || EVP_DigestUpdate(m, apv, apvl) == 1);
  ok = ok && EVP_DigestUpdate(m, kdl, 4) == 1 && EVP_DigestFinal_ex(m, cek, NULL) == 1;
  EVP_MD_CTX_free(m);
  OPENSSL_cleanse(z, sizeof z);
  return ok ? 0 : -1;
}

int tp_jwe_decrypt(const char *compact, uint8_t *out, size_t cap, size_t *outlen, const char **why)
{
  const char *part[5];
  size_t plen[5];
  size_t n = compact ? strnlen(compact, TP_JWE_MAX_COMPACT + 1) : 0;
  *why = "The encrypted card is not a valid JWE (compact serialization with 5 parts).";
  if (n == 0 || n > TP_JWE_MAX_COMPACT || !rsa_key || !ec_key)
    return -1;
  const char *p = compact;
  for (int i = 0; i < 5; i++) {
    const char *dot = i < 4 ? strchr(p, '.') : p + strlen(p);
    if (!dot || (i == 4 && strchr(p, '.')))
      return -1;
    part[i] = p;
    plen[i] = (size_t)(dot - p);
    p = dot + 1;
  }
  uint8_t hb[1024], ek[512], iv[16], tag[16];
  uint8_t *ct = malloc(TP_JWE_MAX_COMPACT);
  size_t hl, ekl, ivl, ctl, tl;
  if (!ct)
    return -1;
  int rc = -1;
  json_t *h = NULL;
  uint8_t cek[32];
  if (b64u_dec(part[0], plen[0], hb, sizeof hb - 1, &hl) != 0 || b64u_dec(part[1], plen[1], ek, sizeof ek, &ekl) != 0 ||
      b64u_dec(part[2], plen[2], iv, sizeof iv, &ivl) != 0 ||
      b64u_dec(part[3], plen[3], ct, TP_JWE_MAX_COMPACT, &ctl) != 0 || b64u_dec(part[4], plen[4], tag, sizeof tag, &tl) != 0)
    goto out;
  hb[hl] = '\0';
  h = json_loadb((const char *)hb, hl, JSON_REJECT_DUPLICATES, NULL);
  const char *alg = json_string_value(json_object_get(h, "alg"));
  const char *enc = json_string_value(json_object_get(h, "enc"));
  const char *kid = json_string_value(json_object_get(h, "kid"));
  *why = "The encrypted card's JWE header is invalid: alg must be RSA-OAEP-256 or ECDH-ES and enc A256GCM.";
  if (!json_is_object(h) || !alg || !enc || strcmp(enc, "A256GCM") != 0 || json_object_get(h, "zip") ||
      json_object_get(h, "crit"))
    goto out;
  if (ivl != 12 || tl != 16 || ctl > TP_JWE_MAX_PLAIN || ctl + 1 > cap) {
    *why = "The encrypted card's JWE has a bad IV, tag or length.";
    goto out;
  }
  bool is_rsa = strcmp(alg, "RSA-OAEP-256") == 0, is_ec = strcmp(alg, "ECDH-ES") == 0;
  if (!is_rsa && !is_ec)
    goto out;
  if (!kid || strcmp(kid, is_rsa ? rsa_kid : ec_kid) != 0) {
    *why = "The encrypted card names an unknown key (kid): fetch /v1/turnpike/encryption_key again.";
    goto out;
  }
  *why = "The encrypted card could not be decrypted.";
  if (is_rsa ? rsa_cek(ek, ekl, cek) != 0 : (ekl != 0 || ecdh_cek(json_object_get(h, "epk"), enc, h, cek) != 0))
    goto out;
  /* AAD is the ASCII of the encoded protected header (RFC 7516 §5.2 step 14). */
  if (tp_vault_gcm(0, cek, iv, (const uint8_t *)part[0], plen[0], ct, ctl, out, tag) != 0)
    goto out;
  out[ctl] = '\0';
  *outlen = ctl;
  *why = NULL;
  rc = 0;
out:
  OPENSSL_cleanse(cek, sizeof cek);
  OPENSSL_cleanse(ct, TP_JWE_MAX_COMPACT);
  free(ct);
  json_decref(h);
  return rc;
}
