/* Vault records under versioned provider KEKs, re-wrap, the audit chain and
 * its verifier, and JWE decryption against an independent OpenSSL encryption. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <sqlite3.h>

#include "main/commands.h"
#include "sec/audit.h"
#include "sec/jwe.h"
#include "sec/kek.h"
#include "sec/vault.h"
#include "store/store.h"
#include "util.h"

#define PAN "4242424242424242"

static char dir[64];
static struct tp_kek_provider prov;

static int setup(void **state)
{
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/tp_sec_XXXXXX");
  assert_non_null(mkdtemp(dir));
  /* the store first, as a first start makes it: keys with no store beside
   * them are refused (store_missing) */
  struct tp_store st;
  assert_int_equal(tp_store_open_sqlite(&st, dir), 0);
  st.ops->close(st.cls);
  assert_int_equal(tp_kek_open_file(dir, &prov), 0);
  assert_int_equal(prov.create(prov.cls, 1), 0);
  tp_kek_use(&prov, 1);
  return 0;
}

static int teardown(void **state)
{
  (void)state;
  prov.close(prov.cls);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_record_opens_with_its_version_after_rotation_and_rewrap(void **state)
{
  (void)state;
  uint8_t blob[TP_VAULT_MAX_BLOB], re[TP_VAULT_MAX_BLOB];
  size_t len = 0, rl = 0;
  char pan[24];
  int m, y;
  tp_kek_set_current(1);
  assert_int_equal(tp_vault_seal_rec("acct_1", "pm_1", PAN, 12, 2034, blob, &len), 0);
  assert_int_equal(tp_vault_rec_version(blob, len), 1);
  assert_null(memmem(blob, len, PAN, strlen(PAN)));

  assert_int_equal(prov.create(prov.cls, 2), 0);
  /* a version's key is made once: a second create uses the file there (a
   * rotation killed after it, a newer backup sealed with it) */
  uint8_t k1[32], k2[32];
  char kp[128];
  snprintf(kp, sizeof kp, "%s/kek-v2.key", dir);
  FILE *kf = fopen(kp, "rb");
  assert_non_null(kf);
  assert_int_equal(fread(k1, 1, 32, kf), 32);
  fclose(kf);
  assert_int_equal(prov.create(prov.cls, 2), 0);
  kf = fopen(kp, "rb");
  assert_non_null(kf);
  assert_int_equal(fread(k2, 1, 32, kf), 32);
  fclose(kf);
  assert_memory_equal(k1, k2, 32);
  tp_kek_set_current(2);
  /* an old record still opens (reads work throughout a rotation) */
  assert_int_equal(tp_vault_open_rec("acct_1", "pm_1", blob, len, pan, &m, &y), 0);
  assert_string_equal(pan, PAN);
  assert_int_equal(tp_vault_rewrap("acct_1", "pm_1", blob, len, 2, re, &rl), 0);
  assert_int_equal(tp_vault_rec_version(re, rl), 2);
  assert_int_equal(rl, len);
  /* only the wrapped data key changed: the card ciphertext is the same bytes */
  assert_memory_equal(re + rl - 44, blob + len - 44, 44);
  memset(pan, 0, sizeof pan);
  assert_int_equal(tp_vault_open_rec("acct_1", "pm_1", re, rl, pan, &m, &y), 0);
  assert_string_equal(pan, PAN);
  assert_int_equal(m, 12);
  assert_int_equal(y, 2034);

  /* the version in the header is bound: claiming v1 for a v2 record fails */
  uint8_t forged[TP_VAULT_MAX_BLOB];
  memcpy(forged, re, rl);
  forged[4] = 1;
  assert_int_not_equal(tp_vault_open_rec("acct_1", "pm_1", forged, rl, pan, &m, &y), 0);
  /* bound to merchant and token */
  assert_int_not_equal(tp_vault_open_rec("acct_2", "pm_1", re, rl, pan, &m, &y), 0);
  assert_int_not_equal(tp_vault_open_rec("acct_1", "pm_2", re, rl, pan, &m, &y), 0);
  /* any flipped byte is refused */
  for (size_t i = 0; i < rl; i++) {
    memcpy(forged, re, rl);
    forged[i] ^= 0x01;
    assert_int_not_equal(tp_vault_open_rec("acct_1", "pm_1", forged, rl, pan, &m, &y), 0);
  }
  /* new records use the current version */
  assert_int_equal(tp_vault_seal_rec("acct_1", "pm_3", PAN, 1, 2030, blob, &len), 0);
  assert_int_equal(tp_vault_rec_version(blob, len), 2);
}

/* Records sealed before KEK providers existed (format 1, DATA/vault.key)
 * still open, and the re-wrap job upgrades them to the current version. */
static void test_format1_record_opens_and_is_upgraded(void **state)
{
  (void)state;
  uint8_t key[32], blob[TP_VAULT_MAX_BLOB], re[TP_VAULT_MAX_BLOB];
  size_t len = 0, rl = 0;
  char pan[24];
  int m, y;
  assert_int_equal(tp_vault_init(dir, key), 0); /* creates DATA/vault.key */
  assert_int_equal(tp_vault_seal(key, "acct_1", "pm_old", PAN, 7, 2033, blob, &len), 0);
  assert_int_equal(blob[0], 1);
  assert_int_equal(tp_vault_open_rec("acct_1", "pm_old", blob, len, pan, &m, &y), 0);
  assert_string_equal(pan, PAN);
  assert_int_not_equal(tp_vault_open_rec("acct_1", "pm_other", blob, len, pan, &m, &y), 0);
  tp_kek_set_current(1);
  assert_int_equal(tp_vault_rewrap("acct_1", "pm_old", blob, len, 1, re, &rl), 0);
  assert_int_equal(tp_vault_rec_version(re, rl), 1);
  assert_null(memmem(re, rl, PAN, strlen(PAN)));
  memset(pan, 0, sizeof pan);
  assert_int_equal(tp_vault_open_rec("acct_1", "pm_old", re, rl, pan, &m, &y), 0);
  assert_string_equal(pan, PAN);
  assert_int_equal(m, 7);
  assert_int_equal(y, 2033);
  /* a format-1 record with a flipped byte is refused, not upgraded */
  blob[20] ^= 1;
  assert_int_not_equal(tp_vault_rewrap("acct_1", "pm_old", blob, len, 1, re, &rl), 0);
}

static void test_kek_files_are_private(void **state)
{
  (void)state;
  char p[128];
  struct stat st;
  snprintf(p, sizeof p, "%s/kek-v1.key", dir);
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(st.st_size, 32);
}

static void test_audit_chain_verifies_and_detects_an_edit(void **state)
{
  (void)state;
  struct tp_store st;
  assert_int_equal(tp_store_open_sqlite(&st, dir), 0);
  struct tp_cs *cs = tp_cs_new();
  for (int i = 0; i < 5; i++) {
    json_t *d = json_pack("{s:i}", "n", i);
    tp_audit_append(cs, "acct_1", "cli", "test.action", "obj", d);
    json_decref(d);
  }
  int rc = -1;
  assert_int_equal(st.ops->apply_batch(st.cls, &cs, 1, &rc), 0);
  assert_int_equal(rc, 0);
  tp_cs_free(cs);
  json_t *rows = tp_store_query(&st, "SELECT seq, prev_hash, hash FROM audit_log ORDER BY seq", NULL);
  assert_int_equal(json_array_size(rows), 5);
  for (size_t i = 1; i < 5; i++)
    assert_string_equal(json_string_value(json_object_get(json_array_get(rows, i), "prev_hash")),
                        json_string_value(json_object_get(json_array_get(rows, i - 1), "hash")));
  json_decref(rows);
  st.ops->close(st.cls);

  char *argv[] = {"verify", "--data", dir, NULL};
  assert_int_equal(tp_cmd_audit(3, argv), 0);
  char db[128];
  snprintf(db, sizeof db, "%s/turnpike.db", dir);
  sqlite3 *h;
  assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
  assert_int_equal(sqlite3_exec(h, "UPDATE audit_log SET details = '{\"n\":7}' WHERE seq = 3", NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(h);
  assert_int_equal(tp_cmd_audit(3, argv), 1);
}

/* Compact JWE with RSA-OAEP-256 + A256GCM, built here with plain OpenSSL. */
static char *b64u(const uint8_t *in, size_t n)
{
  char *s = malloc(4 * n / 3 + 8);
  int l = EVP_EncodeBlock((unsigned char *)s, in, (int)n);
  while (l > 0 && s[l - 1] == '=')
    l--;
  s[l] = '\0';
  for (char *p = s; *p; p++)
    *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
  return s;
}

static void test_jwe_rsa_oaep_roundtrip_and_tamper(void **state)
{
  (void)state;
  assert_int_equal(tp_jwe_init(dir), 0);
  json_t *k = tp_jwe_jwks();
  json_t *rsa = NULL;
  size_t i;
  json_t *v;
  json_array_foreach(json_object_get(k, "keys"), i, v) if (strcmp(json_string_value(json_object_get(v, "kty")), "RSA") == 0) rsa = v;
  assert_non_null(rsa);
  char hdr[256];
  snprintf(hdr, sizeof hdr, "{\"alg\":\"RSA-OAEP-256\",\"enc\":\"A256GCM\",\"kid\":\"%s\"}",
           json_string_value(json_object_get(rsa, "kid")));
  char path[128];
  snprintf(path, sizeof path, "%s/jwe-rsa.pem", dir);
  FILE *f = fopen(path, "r");
  EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  fclose(f);
  uint8_t cek[32], iv[12], ek[512], ct[256], tag[16];
  size_t ekl = sizeof ek;
  tp_random(cek, 32);
  tp_random(iv, 12);
  EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(key, NULL);
  assert_int_equal(EVP_PKEY_encrypt_init(c), 1);
  EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING);
  EVP_PKEY_CTX_set_rsa_oaep_md(c, EVP_sha256());
  EVP_PKEY_CTX_set_rsa_mgf1_md(c, EVP_sha256());
  assert_int_equal(EVP_PKEY_encrypt(c, ek, &ekl, cek, 32), 1);
  EVP_PKEY_CTX_free(c);
  EVP_PKEY_free(key);
  const char *plain = "{\"number\":\"" PAN "\",\"exp_month\":12,\"exp_year\":2034,\"cvc\":\"123\"}";
  char *h64 = b64u((const uint8_t *)hdr, strlen(hdr));
  assert_int_equal(tp_vault_gcm(1, cek, iv, (const uint8_t *)h64, strlen(h64), (const uint8_t *)plain, strlen(plain),
                                ct, tag),
                   0);
  char *e64 = b64u(ek, ekl), *i64 = b64u(iv, 12), *c64 = b64u(ct, strlen(plain)), *t64 = b64u(tag, 16);
  char jwe[4096];
  snprintf(jwe, sizeof jwe, "%s.%s.%s.%s.%s", h64, e64, i64, c64, t64);
  uint8_t out[TP_JWE_MAX_PLAIN + 1];
  size_t ol = 0;
  const char *why = NULL;
  assert_int_equal(tp_jwe_decrypt(jwe, out, sizeof out, &ol, &why), 0);
  assert_int_equal(ol, strlen(plain));
  assert_memory_equal(out, plain, ol);
  /* a flipped ciphertext character is refused, and the reason names nothing of the input */
  char *p = jwe + strlen(h64) + strlen(e64) + strlen(i64) + 3;
  *p = *p == 'A' ? 'B' : 'A';
  assert_int_not_equal(tp_jwe_decrypt(jwe, out, sizeof out, &ol, &why), 0);
  assert_non_null(why);
  assert_null(strstr(why, h64));
  assert_int_not_equal(tp_jwe_decrypt("a.b.c", out, sizeof out, &ol, &why), 0);
  free(h64), free(e64), free(i64), free(c64), free(t64);
  json_decref(k);
  tp_jwe_free();
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_record_opens_with_its_version_after_rotation_and_rewrap),
    cmocka_unit_test(test_format1_record_opens_and_is_upgraded),
    cmocka_unit_test(test_kek_files_are_private),
    cmocka_unit_test(test_audit_chain_verifies_and_detects_an_edit),
    cmocka_unit_test(test_jwe_rsa_oaep_roundtrip_and_tamper),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
