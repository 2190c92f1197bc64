/* The `pkcs11` KEK provider: any PKCS#11 module (SoftHSM2 in the tests).
 *
 * KEK version v is an AES-256 secret key on the token labelled
 * [vault] pkcs11_key_label (v = 1) or "<label>-vN"; it is generated on the
 * token (sensitive, not extractable) and never leaves it: data keys are
 * wrapped with C_Encrypt under CKM_AES_GCM (wrapped = iv(12) | ct(32) |
 * tag(16), the record's AAD bound). The audit checkpoint key is an EC P-256
 * pair on the token ([vault] pkcs11_audit_label), used with C_Sign/CKM_ECDSA.
 * One session, guarded by a mutex: PKCS#11 sessions are not for concurrent use. */
#include "sec/kek.h"
#include "config.h"
#include "log.h"
#include "util.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <p11-kit-1/p11-kit/pkcs11.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define P11_CACHE 64

struct p11 {
  void *dl;
  CK_FUNCTION_LIST *f;
  CK_SESSION_HANDLE s;
  pthread_mutex_t mu;
  char label[96];
  char audit_label[96];
  struct {
    uint32_t v;
    CK_OBJECT_HANDLE h;
  } cache[P11_CACHE];
  size_t ncache;
  CK_OBJECT_HANDLE sign_priv, sign_pub;
  /* for opening the session again after the token dropped it */
  char token[64];
  const char *pin;
  int64_t reopened_ms;
  bool pin_refused; /* a login answered that the PIN is wrong, locked or expired: no more tries */
};

static CK_BBOOL ck_true = CK_TRUE, ck_false = CK_FALSE;
static atomic_bool g_pin_refused; /* opening: the token refused the PIN */

bool tp_kek_pin_refused(void)
{
  return atomic_load(&g_pin_refused);
}

/* The token's answer to a login says the PIN itself is refused: trying it
 * again (a real token locks after a few wrong PINs) must not happen. */
static bool pin_refused_rv(CK_RV r)
{
  return r == CKR_PIN_INCORRECT || r == CKR_PIN_LOCKED || r == CKR_PIN_EXPIRED || r == CKR_PIN_INVALID ||
         r == CKR_PIN_LEN_RANGE;
}

static void key_label(const struct p11 *p, uint32_t v, char *out, size_t cap)
{
  if (v == 1)
    snprintf(out, cap, "%s", p->label);
  else
    snprintf(out, cap, "%s-v%u", p->label, v);
}

/* The first object of class cls with this label, or 0; *rv (may be NULL)
 * the token's answer, so that "not there" and "the token did not answer"
 * are told apart. Caller holds mu. */
static CK_OBJECT_HANDLE find_rv(struct p11 *p, CK_OBJECT_CLASS cls, const char *label, CK_RV *rv)
{
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)(uintptr_t)label, strlen(label)}};
  CK_OBJECT_HANDLE h = 0;
  CK_ULONG n = 0;
  CK_RV r = p->f->C_FindObjectsInit(p->s, t, 2);
  if (r == CKR_OK) {
    r = p->f->C_FindObjects(p->s, &h, 1, &n);
    if (r != CKR_OK || n != 1)
      h = 0;
    p->f->C_FindObjectsFinal(p->s);
  }
  if (rv)
    *rv = r;
  return h;
}

static CK_OBJECT_HANDLE find(struct p11 *p, CK_OBJECT_CLASS cls, const char *label)
{
  return find_rv(p, cls, label, NULL);
}

static CK_OBJECT_HANDLE kek_handle(struct p11 *p, uint32_t v)
{
  for (size_t i = 0; i < p->ncache; i++)
    if (p->cache[i].v == v)
      return p->cache[i].h;
  char label[128];
  key_label(p, v, label, sizeof label);
  CK_RV rv = CKR_OK;
  CK_OBJECT_HANDLE h = find_rv(p, CKO_SECRET_KEY, label, &rv);
  if (!h) {
    if (rv != CKR_OK) /* the token did not answer (removed, session lost): not a missing key */
      tp_log(TP_LOG_ERROR, "kek_pkcs11_unavailable", "{s:s, s:I}", "label", label, "ckr", (json_int_t)rv);
    else
      tp_log(TP_LOG_ERROR, "kek_pkcs11_missing", "{s:s}", "label", label);
    return 0;
  }
  /* A KEK someone created by hand must still be one that cannot leave the token. */
  CK_BBOOL extractable = CK_TRUE, sensitive = CK_FALSE;
  CK_ATTRIBUTE a[] = {{CKA_EXTRACTABLE, &extractable, 1}, {CKA_SENSITIVE, &sensitive, 1}};
  if (p->f->C_GetAttributeValue(p->s, h, a, 2) != CKR_OK || extractable || !sensitive) {
    tp_log(TP_LOG_ERROR, "kek_pkcs11_exportable", "{s:s}", "label", label);
    return 0;
  }
  size_t slot = p->ncache < P11_CACHE ? p->ncache++ : v % P11_CACHE;
  p->cache[slot].v = v;
  p->cache[slot].h = h;
  return h;
}

static int p11_create(void *cls, uint32_t v)
{
  struct p11 *p = cls;
  char label[128];
  key_label(p, v, label, sizeof label);
  pthread_mutex_lock(&p->mu);
  int rc = 0;
  if (find(p, CKO_SECRET_KEY, label)) {
    /* Left by an earlier store on this token: still a good key. */
    tp_log(TP_LOG_WARN, "kek_pkcs11_exists", "{s:s}", "label", label);
  } else {
    CK_OBJECT_CLASS cls_ = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = 32;
    CK_ATTRIBUTE t[] = {
      {CKA_CLASS, &cls_, sizeof cls_},          {CKA_KEY_TYPE, &kt, sizeof kt},
      {CKA_VALUE_LEN, &len, sizeof len},        {CKA_TOKEN, &ck_true, 1},
      {CKA_PRIVATE, &ck_true, 1},               {CKA_SENSITIVE, &ck_true, 1},
      {CKA_EXTRACTABLE, &ck_false, 1},          {CKA_ENCRYPT, &ck_true, 1},
      {CKA_DECRYPT, &ck_true, 1},               {CKA_LABEL, label, strlen(label)},
    };
    CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE h;
    CK_RV r = p->f->C_GenerateKey(p->s, &m, t, sizeof t / sizeof t[0], &h);
    if (r != CKR_OK) {
      tp_log(TP_LOG_ERROR, "kek_pkcs11_generate", "{s:s, s:I}", "label", label, "ckr", (json_int_t)r);
      rc = -1;
    }
  }
  pthread_mutex_unlock(&p->mu);
  return rc;
}

static int find_slot(CK_FUNCTION_LIST *f, const char *want, CK_SLOT_ID *out);

/* Session and login again, after the token dropped them (a USB token
 * pulled and put back, a network HSM restarted): at most once a second.
 * Caller holds mu. Key handles are per session: the cache goes. */
static bool reopen(struct p11 *p)
{
  int64_t now = tp_mono_ms();
  if (p->pin_refused || now - p->reopened_ms < 1000)
    return false;
  p->reopened_ms = now;
  p->f->C_CloseSession(p->s);
  p->ncache = 0;
  CK_SLOT_ID slot;
  CK_RV r = CKR_TOKEN_NOT_PRESENT;
  if (find_slot(p->f, p->token, &slot) == 0 &&
      (r = p->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &p->s)) == CKR_OK) {
    r = p->f->C_Login(p->s, CKU_USER, (CK_UTF8CHAR *)(uintptr_t)p->pin, strlen(p->pin));
    if (r == CKR_USER_ALREADY_LOGGED_IN)
      r = CKR_OK;
  }
  if (pin_refused_rv(r)) {
    /* The PIN changed on the token (or was locked) while the session was
     * down: a login a second would lock a real token after its few tries,
     * for the security officer to unlock, and every other application on
     * its partition with it. No more logins until a restart. */
    p->pin_refused = true;
    p->f->C_CloseSession(p->s);
    tp_log(TP_LOG_ERROR, "kek_pkcs11_pin_refused", "{s:s, s:I, s:s}", "token", p->token, "ckr", (json_int_t)r,
           "message", "the token refused the PIN: no more logins; restart with the right [vault] pkcs11_pin");
    return false;
  }
  if (r != CKR_OK) {
    tp_log(TP_LOG_ERROR, "kek_pkcs11_reopen_failed", "{s:s, s:I}", "token", p->token, "ckr", (json_int_t)r);
    return false;
  }
  p->sign_priv = p->sign_pub = 0; /* found again, on the new session */
  tp_log(TP_LOG_WARN, "kek_pkcs11_reopened", "{s:s}", "token", p->token);
  return true;
}

static CK_RV crypt_once(struct p11 *p, int enc, uint32_t v, CK_MECHANISM *m, const uint8_t *in, size_t inlen,
                        uint8_t *out, CK_ULONG *outlen)
{
  CK_OBJECT_HANDLE h = kek_handle(p, v);
  if (!h)
    return CKR_KEY_HANDLE_INVALID;
  CK_ULONG cap = *outlen;
  CK_RV r = enc ? p->f->C_EncryptInit(p->s, m, h) : p->f->C_DecryptInit(p->s, m, h);
  if (r == CKR_OK)
    r = enc ? p->f->C_Encrypt(p->s, (CK_BYTE *)(uintptr_t)in, inlen, out, outlen)
            : p->f->C_Decrypt(p->s, (CK_BYTE *)(uintptr_t)in, inlen, out, outlen);
  if (r != CKR_OK)
    *outlen = cap;
  return r;
}

static int p11_crypt(struct p11 *p, int enc, uint32_t v, const uint8_t iv[12], const uint8_t *aad, size_t aadlen,
                     const uint8_t *in, size_t inlen, uint8_t *out, CK_ULONG *outlen)
{
  CK_GCM_PARAMS g = {(CK_BYTE *)(uintptr_t)iv, 12, 96, (CK_BYTE *)(uintptr_t)aad, aadlen, 128};
  CK_MECHANISM m = {CKM_AES_GCM, &g, sizeof g};
  pthread_mutex_lock(&p->mu);
  CK_RV r = crypt_once(p, enc, v, &m, in, inlen, out, outlen);
  /* Anything but a refused tag may be the session gone: open it again and
   * try once more. (A wrong tag, CKR_ENCRYPTED_DATA_INVALID, is the record's.) */
  if (r != CKR_OK && r != CKR_ENCRYPTED_DATA_INVALID && r != CKR_ENCRYPTED_DATA_LEN_RANGE) {
    tp_log(TP_LOG_ERROR, "kek_pkcs11_error", "{s:s, s:I, s:I}", "op", enc ? "wrap" : "unwrap", "version",
           (json_int_t)v, "ckr", (json_int_t)r);
    if (reopen(p))
      r = crypt_once(p, enc, v, &m, in, inlen, out, outlen);
  }
  pthread_mutex_unlock(&p->mu);
  return r == CKR_OK ? 0 : -1;
}

static int p11_wrap(void *cls, uint32_t v, const uint8_t dek[32], const uint8_t *aad, size_t aadlen, uint8_t *out,
                    size_t *outlen)
{
  if (*outlen < 60)
    return -1;
  tp_random(out, 12);
  CK_ULONG n = 48;
  if (p11_crypt(cls, 1, v, out, aad, aadlen, dek, 32, out + 12, &n) != 0 || n != 48)
    return -1;
  *outlen = 60;
  return 0;
}

static int p11_unwrap(void *cls, uint32_t v, const uint8_t *in, size_t inlen, const uint8_t *aad, size_t aadlen,
                      uint8_t dek[32])
{
  uint8_t buf[64];
  CK_ULONG n = sizeof buf;
  if (inlen != 60 || p11_crypt(cls, 0, v, in, aad, aadlen, in + 12, 48, buf, &n) != 0 || n != 32) {
    OPENSSL_cleanse(buf, sizeof buf);
    return -1;
  }
  memcpy(dek, buf, 32);
  OPENSSL_cleanse(buf, sizeof buf);
  return 0;
}

/* DER of the P-256 curve OID, as CKA_EC_PARAMS wants it. */
static const uint8_t p256_oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

/* Find or generate the audit key pair. Caller holds mu. */
static int sign_keys(struct p11 *p)
{
  if (p->sign_priv && p->sign_pub)
    return 0;
  p->sign_priv = find(p, CKO_PRIVATE_KEY, p->audit_label);
  p->sign_pub = find(p, CKO_PUBLIC_KEY, p->audit_label);
  if (p->sign_priv && p->sign_pub)
    return 0;
  CK_ATTRIBUTE pub[] = {
    {CKA_TOKEN, &ck_true, 1},
    {CKA_VERIFY, &ck_true, 1},
    {CKA_EC_PARAMS, (void *)(uintptr_t)p256_oid, sizeof p256_oid},
    {CKA_LABEL, p->audit_label, strlen(p->audit_label)},
  };
  CK_ATTRIBUTE priv[] = {
    {CKA_TOKEN, &ck_true, 1},      {CKA_PRIVATE, &ck_true, 1},
    {CKA_SENSITIVE, &ck_true, 1},  {CKA_EXTRACTABLE, &ck_false, 1},
    {CKA_SIGN, &ck_true, 1},       {CKA_LABEL, p->audit_label, strlen(p->audit_label)},
  };
  CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
  CK_RV r = p->f->C_GenerateKeyPair(p->s, &m, pub, 4, priv, 6, &p->sign_pub, &p->sign_priv);
  if (r != CKR_OK) {
    tp_log(TP_LOG_ERROR, "audit_pkcs11_keygen", "{s:I}", "ckr", (json_int_t)r);
    p->sign_pub = p->sign_priv = 0;
    return -1;
  }
  return 0;
}

static int p11_sign(void *cls, const uint8_t digest[32], uint8_t *sig, size_t *siglen)
{
  struct p11 *p = cls;
  uint8_t rs[132];
  CK_ULONG n = sizeof rs;
  CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
  pthread_mutex_lock(&p->mu);
  CK_RV r = sign_keys(p) != 0 ? CKR_GENERAL_ERROR : p->f->C_SignInit(p->s, &m, p->sign_priv);
  if (r == CKR_OK)
    r = p->f->C_Sign(p->s, (CK_BYTE *)(uintptr_t)digest, 32, rs, &n);
  pthread_mutex_unlock(&p->mu);
  if (r != CKR_OK || n != 64)
    return -1;
  /* PKCS#11 gives r || s; OpenSSL verifies DER. */
  ECDSA_SIG *es = ECDSA_SIG_new();
  BIGNUM *br = BN_bin2bn(rs, 32, NULL), *bs = BN_bin2bn(rs + 32, 32, NULL);
  if (!es || !br || !bs || ECDSA_SIG_set0(es, br, bs) != 1) {
    BN_free(br);
    BN_free(bs);
    ECDSA_SIG_free(es);
    return -1;
  }
  int dl = i2d_ECDSA_SIG(es, NULL);
  int rc = -1;
  if (dl > 0 && (size_t)dl <= *siglen) {
    uint8_t *w = sig;
    i2d_ECDSA_SIG(es, &w);
    *siglen = (size_t)dl;
    rc = 0;
  }
  ECDSA_SIG_free(es);
  return rc;
}

static int p11_pubkey(void *cls, char *pem, size_t cap)
{
  struct p11 *p = cls;
  uint8_t pt[160];
  CK_ATTRIBUTE a = {CKA_EC_POINT, pt, sizeof pt};
  pthread_mutex_lock(&p->mu);
  CK_RV r = sign_keys(p) != 0 ? CKR_GENERAL_ERROR : p->f->C_GetAttributeValue(p->s, p->sign_pub, &a, 1);
  pthread_mutex_unlock(&p->mu);
  if (r != CKR_OK || a.ulValueLen < 65 || a.ulValueLen > sizeof pt)
    return -1;
  /* CKA_EC_POINT is a DER OCTET STRING around the uncompressed point. */
  const uint8_t *q = pt;
  size_t ql = a.ulValueLen;
  if (pt[0] == 0x04 && pt[1] == ql - 2 && pt[2] == 0x04) {
    q = pt + 2;
    ql -= 2;
  }
  OSSL_PARAM prm[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)(uintptr_t)"prime256v1", 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)(uintptr_t)q, ql),
    OSSL_PARAM_END,
  };
  EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
  EVP_PKEY *k = NULL;
  int rc = -1;
  if (c && EVP_PKEY_fromdata_init(c) == 1 && EVP_PKEY_fromdata(c, &k, EVP_PKEY_PUBLIC_KEY, prm) == 1) {
    BIO *b = BIO_new(BIO_s_mem());
    char *d;
    long n;
    if (b && PEM_write_bio_PUBKEY(b, k) == 1 && (n = BIO_get_mem_data(b, &d)) > 0 && (size_t)n < cap) {
      memcpy(pem, d, (size_t)n);
      pem[n] = '\0';
      rc = 0;
    }
    BIO_free(b);
  }
  EVP_PKEY_free(k);
  EVP_PKEY_CTX_free(c);
  return rc;
}

/* The session answers and is logged in; if not, opened again (reopen: at
 * most once a second) and asked once more. */
static int p11_check(void *cls)
{
  struct p11 *p = cls;
  /* A token that stopped answering holds the session's lock inside a
   * call: the check says not ready rather than wait with it (it waited,
   * and /readyz said ready while every card request hung). */
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += 2;
  if (pthread_mutex_clocklock(&p->mu, CLOCK_MONOTONIC, &until) != 0) {
    tp_log(TP_LOG_ERROR, "kek_pkcs11_unavailable", "{s:s, s:s}", "token", p->token, "why",
           "a call to the token has not returned for 2 s");
    return -1;
  }
  if (p->pin_refused) { /* said once (kek_pkcs11_pin_refused): not ready until a restart */
    pthread_mutex_unlock(&p->mu);
    return -1;
  }
  CK_SESSION_INFO info;
  CK_RV r = p->f->C_GetSessionInfo(p->s, &info);
  bool ok = r == CKR_OK && info.state == CKS_RW_USER_FUNCTIONS;
  if (!ok) {
    tp_log(TP_LOG_ERROR, "kek_pkcs11_unavailable", "{s:s, s:I}", "token", p->token, "ckr", (json_int_t)r);
    if (reopen(p)) {
      r = p->f->C_GetSessionInfo(p->s, &info);
      ok = r == CKR_OK && info.state == CKS_RW_USER_FUNCTIONS;
    }
  }
  pthread_mutex_unlock(&p->mu);
  return ok ? 0 : -1;
}

static void p11_close(void *cls)
{
  struct p11 *p = cls;
  if (p->f) {
    p->f->C_Logout(p->s);
    p->f->C_CloseSession(p->s);
    p->f->C_Finalize(NULL);
  }
  if (p->dl)
    dlclose(p->dl);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

/* The slot whose token label is `want` (labels are blank-padded to 32). */
static int find_slot(CK_FUNCTION_LIST *f, const char *want, CK_SLOT_ID *out)
{
  CK_SLOT_ID slots[64];
  CK_ULONG n = 64;
  if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
    return -1;
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
      continue;
    size_t l = sizeof ti.label;
    while (l > 0 && ti.label[l - 1] == ' ')
      l--;
    if (l == strlen(want) && memcmp(ti.label, want, l) == 0) {
      *out = slots[i];
      return 0;
    }
  }
  return -1;
}

int tp_kek_open_pkcs11(struct tp_kek_provider *out)
{
  const char *mod = tp_config_get("vault", "pkcs11_module");
  const char *tok = tp_config_get("vault", "pkcs11_token_label");
  const char *pin = tp_config_get("vault", "pkcs11_pin"); /* env TURNPIKE_VAULT_PKCS11_PIN first */
  const char *label = tp_config_get("vault", "pkcs11_key_label");
  const char *alabel = tp_config_get("vault", "pkcs11_audit_label");
  if (!mod || !*mod)
    mod = "/usr/lib/softhsm/libsofthsm2.so";
  if (!tok || !*tok || !pin) {
    tp_log(TP_LOG_ERROR, "kek_pkcs11_config", "{s:s}", "message",
           "[vault] kek = pkcs11 needs pkcs11_token_label and pkcs11_pin (or TURNPIKE_VAULT_PKCS11_PIN)");
    return -1;
  }
  struct p11 *p = calloc(1, sizeof *p);
  if (!p)
    return -1;
  pthread_mutex_init(&p->mu, NULL);
  tp_scopy(p->label, sizeof p->label, label && *label ? label : "turnpike-kek");
  tp_scopy(p->audit_label, sizeof p->audit_label, alabel && *alabel ? alabel : "turnpike-audit");
  const char *stage = "dlopen";
  CK_RV r = CKR_OK;
  p->dl = dlopen(mod, RTLD_NOW | RTLD_LOCAL);
  CK_C_GetFunctionList gfl = p->dl ? (CK_C_GetFunctionList)dlsym(p->dl, "C_GetFunctionList") : NULL;
  if (!gfl)
    goto fail;
  stage = "C_GetFunctionList";
  if ((r = gfl(&p->f)) != CKR_OK)
    goto fail;
  CK_C_INITIALIZE_ARGS ia;
  memset(&ia, 0, sizeof ia);
  ia.flags = CKF_OS_LOCKING_OK;
  stage = "C_Initialize";
  r = p->f->C_Initialize(&ia);
  if (r != CKR_OK && r != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    p->f = NULL;
    goto fail;
  }
  CK_SLOT_ID slot;
  stage = "token";
  if (find_slot(p->f, tok, &slot) != 0)
    goto fail;
  stage = "C_OpenSession";
  if ((r = p->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &p->s)) != CKR_OK)
    goto fail;
  stage = "C_Login";
  r = p->f->C_Login(p->s, CKU_USER, (CK_UTF8CHAR *)(uintptr_t)pin, strlen(pin));
  if (r != CKR_OK && r != CKR_USER_ALREADY_LOGGED_IN)
    goto fail;
  tp_scopy(p->token, sizeof p->token, tok);
  p->pin = pin;
  *out = (struct tp_kek_provider){"pkcs11", p,         p11_create, p11_wrap, p11_unwrap,
                                  p11_sign, p11_pubkey, p11_close,  p11_check};
  tp_log(TP_LOG_INFO, "kek_pkcs11_ready", "{s:s, s:s}", "module", mod, "token", tok);
  return 0;
fail:
  if (strcmp(stage, "C_Login") == 0 && pin_refused_rv(r))
    atomic_store(&g_pin_refused, true);
  tp_log(TP_LOG_ERROR, "kek_pkcs11_failed", "{s:s, s:s, s:I}", "stage", stage, "module", mod, "ckr", (json_int_t)r);
  p11_close(p);
  return -1;
}
