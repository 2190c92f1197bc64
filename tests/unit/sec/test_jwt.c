/* ES256 JWTs: base64url, signing and verification, and the refusals that
 * matter (alg none / HS256 swaps, tampered payloads, foreign keys). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "sec/jwt.h"

static void test_b64url_matches_rfc4648_vectors(void **state)
{
  (void)state;
  static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
  static const char *const out[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
  for (size_t i = 0; i < 7; i++) {
    char buf[16];
    size_t n = tp_b64url_encode(in[i], strlen(in[i]), buf, sizeof buf);
    assert_int_equal(n, strlen(out[i]));
    assert_string_equal(buf, out[i]);
    uint8_t dec[16];
    long d = tp_b64url_decode(out[i], strlen(out[i]), dec, sizeof dec);
    assert_int_equal(d, (long)strlen(in[i]));
    assert_memory_equal(dec, in[i], strlen(in[i]));
  }
  /* The URL-safe alphabet: 0xfb 0xff -> "-_8". */
  char buf[8];
  const uint8_t b[] = {0xfb, 0xff};
  tp_b64url_encode(b, 2, buf, sizeof buf);
  assert_string_equal(buf, "-_8");
}

static void test_b64url_decode_refuses_bad_input(void **state)
{
  (void)state;
  uint8_t out[16];
  assert_int_equal(tp_b64url_decode("Zm9v+", 5, out, sizeof out), -1);  /* '+' is not base64url */
  assert_int_equal(tp_b64url_decode("Zm9v=", 5, out, sizeof out), -1);  /* no padding in JOSE */
  assert_int_equal(tp_b64url_decode("Z", 1, out, sizeof out), -1);      /* impossible length */
  assert_int_equal(tp_b64url_decode("Zh", 2, out, sizeof out), -1);     /* non-zero leftover bits */
  assert_int_equal(tp_b64url_decode("Zm9vYmFy", 8, out, 3), -1);        /* overflow */
  char small[3];
  assert_int_equal(tp_b64url_encode("foobar", 6, small, sizeof small), 0);
}

static char *sign_sample(const struct tp_jwt_key *k)
{
  json_t *c = json_pack("{s:s, s:I, s:s}", "sub", "oc_1", "exp", (json_int_t)4102444800, "scope", "payments:read");
  char *t = tp_jwt_sign(k, "at+jwt", c);
  json_decref(c);
  return t;
}

static void test_signed_token_verifies_and_has_es256_header(void **state)
{
  (void)state;
  struct tp_jwt_key k;
  assert_int_equal(tp_jwt_key_generate(&k), 0);
  char *t = sign_sample(&k);
  assert_non_null(t);
  /* Header: typ, alg, kid. */
  const char *dot = strchr(t, '.');
  uint8_t hdr[256];
  long n = tp_b64url_decode(t, (size_t)(dot - t), hdr, sizeof hdr - 1);
  assert_true(n > 0);
  hdr[n] = 0;
  json_t *h = json_loads((char *)hdr, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(h, "alg")), "ES256");
  assert_string_equal(json_string_value(json_object_get(h, "typ")), "at+jwt");
  assert_string_equal(json_string_value(json_object_get(h, "kid")), k.kid);
  json_decref(h);
  /* Signature: raw r||s, 64 bytes = 86 base64url chars. */
  assert_int_equal(strlen(strrchr(t, '.') + 1), 86);
  json_t *claims = NULL;
  assert_int_equal(tp_jwt_verify(&k, 1, t, "at+jwt", &claims), TP_JWT_OK);
  assert_string_equal(json_string_value(json_object_get(claims, "sub")), "oc_1");
  json_decref(claims);
  free(t);
  tp_jwt_key_free(&k);
}

static void test_tampered_payload_or_signature_is_refused(void **state)
{
  (void)state;
  struct tp_jwt_key k;
  assert_int_equal(tp_jwt_key_generate(&k), 0);
  char *t = sign_sample(&k);
  json_t *claims = NULL;
  /* Flip one payload character (keeping it base64url). */
  char *p = strchr(t, '.') + 5;
  *p = *p == 'A' ? 'B' : 'A';
  enum tp_jwt_result r = tp_jwt_verify(&k, 1, t, "at+jwt", &claims);
  assert_true(r == TP_JWT_BAD_SIGNATURE || r == TP_JWT_MALFORMED);
  assert_null(claims);
  free(t);
  t = sign_sample(&k);
  char *s = strrchr(t, '.') + 10;
  *s = *s == 'A' ? 'B' : 'A';
  assert_int_equal(tp_jwt_verify(&k, 1, t, "at+jwt", &claims), TP_JWT_BAD_SIGNATURE);
  free(t);
  tp_jwt_key_free(&k);
}

static void test_alg_none_and_hs256_and_foreign_keys_are_refused(void **state)
{
  (void)state;
  struct tp_jwt_key k, other;
  assert_int_equal(tp_jwt_key_generate(&k), 0);
  assert_int_equal(tp_jwt_key_generate(&other), 0);
  char hdr[256], tok[1024], hb[256], pb[256];
  const char *payload = "{\"sub\":\"oc_1\"}";
  tp_b64url_encode(payload, strlen(payload), pb, sizeof pb);
  json_t *claims = NULL;
  /* alg none with an empty signature. */
  snprintf(hdr, sizeof hdr, "{\"typ\":\"at+jwt\",\"alg\":\"none\",\"kid\":\"%s\"}", k.kid);
  tp_b64url_encode(hdr, strlen(hdr), hb, sizeof hb);
  snprintf(tok, sizeof tok, "%s.%s.", hb, pb);
  assert_int_equal(tp_jwt_verify(&k, 1, tok, "at+jwt", &claims), TP_JWT_BAD_HEADER);
  /* HS256 "signed" with anything. */
  snprintf(hdr, sizeof hdr, "{\"typ\":\"at+jwt\",\"alg\":\"HS256\",\"kid\":\"%s\"}", k.kid);
  tp_b64url_encode(hdr, strlen(hdr), hb, sizeof hb);
  snprintf(tok, sizeof tok, "%s.%s.AAAA", hb, pb);
  assert_int_equal(tp_jwt_verify(&k, 1, tok, "at+jwt", &claims), TP_JWT_BAD_HEADER);
  /* Signed by another key: unknown kid. */
  char *t = sign_sample(&other);
  assert_int_equal(tp_jwt_verify(&k, 1, t, "at+jwt", &claims), TP_JWT_BAD_HEADER);
  /* ... accepted once that key is in the set (rotation). */
  struct tp_jwt_key both[2] = {k, other};
  assert_int_equal(tp_jwt_verify(both, 2, t, "at+jwt", &claims), TP_JWT_OK);
  json_decref(claims);
  /* Wrong typ. */
  assert_int_equal(tp_jwt_verify(&other, 1, t, "JWT", &claims), TP_JWT_BAD_HEADER);
  /* Structure. */
  assert_int_equal(tp_jwt_verify(&k, 1, "a.b", NULL, &claims), TP_JWT_MALFORMED);
  assert_int_equal(tp_jwt_verify(&k, 1, "a.b.c.d", NULL, &claims), TP_JWT_MALFORMED);
  free(t);
  tp_jwt_key_free(&k);
  tp_jwt_key_free(&other);
}

static void test_key_file_is_created_0600_and_reloaded_with_same_kid(void **state)
{
  (void)state;
  char dir[] = "/tmp/tp-jwt-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/key.pem", dir);
  struct tp_jwt_key a, b;
  assert_int_equal(tp_jwt_key_load_or_create(path, &a), 0);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(tp_jwt_key_load_or_create(path, &b), 0);
  assert_string_equal(a.kid, b.kid);
  char *t = sign_sample(&a);
  json_t *claims = NULL;
  assert_int_equal(tp_jwt_verify(&b, 1, t, "at+jwt", &claims), TP_JWT_OK);
  json_decref(claims);
  json_t *jwk = tp_jwt_key_jwk(&b);
  assert_string_equal(json_string_value(json_object_get(jwk, "crv")), "P-256");
  assert_int_equal(strlen(json_string_value(json_object_get(jwk, "x"))), 43);
  assert_null(json_object_get(jwk, "d")); /* never the private part */
  json_decref(jwk);
  free(t);
  tp_jwt_key_free(&a);
  tp_jwt_key_free(&b);
  unlink(path);
  rmdir(dir);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_b64url_matches_rfc4648_vectors),
    cmocka_unit_test(test_b64url_decode_refuses_bad_input),
    cmocka_unit_test(test_signed_token_verifies_and_has_es256_header),
    cmocka_unit_test(test_tampered_payload_or_signature_is_refused),
    cmocka_unit_test(test_alg_none_and_hs256_and_foreign_keys_are_refused),
    cmocka_unit_test(test_key_file_is_created_0600_and_reloaded_with_same_kid),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
