/* libFuzzer target: JWT verification on hostile input (the Bearer header of
 * any request). The input is used as a compact token, and also spliced in as
 * the header and payload of a token around a real signature, so the JSON,
 * base64url and signature paths all see garbage. Any crash, leak, sanitizer
 * report or an accepted forged token is a bug. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sec/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tp_jwt_key key;
static char *good;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (!key.pkey) {
    if (tp_jwt_key_generate(&key) != 0)
      abort();
    json_t *c = json_pack("{s:s}", "sub", "fuzz");
    good = tp_jwt_sign(&key, "at+jwt", c);
    json_decref(c);
  }
  if (size > TP_JWT_MAX_LEN)
    return 0;
  char *tok = malloc(size + 1);
  memcpy(tok, data, size);
  tok[size] = '\0';
  json_t *claims = NULL;
  if (tp_jwt_verify(&key, 1, tok, "at+jwt", &claims) == TP_JWT_OK) {
    /* Only a token we signed can pass; the fuzzer cannot know the key. */
    if (strcmp(tok, good) != 0)
      abort();
    json_decref(claims);
  }
  /* base64url of the input as the header, then as the payload, of a token
   * with a real (but foreign to this content) signature. */
  char b64[TP_JWT_MAX_LEN * 2], forged[TP_JWT_MAX_LEN * 3];
  const char *sig = strrchr(good, '.');
  if (tp_b64url_encode(data, size, b64, sizeof b64)) {
    const char *dot = strchr(good, '.');
    snprintf(forged, sizeof forged, "%s%.*s%s", b64, (int)(sig - dot), dot, sig);
    if (tp_jwt_verify(&key, 1, forged, "at+jwt", &claims) == TP_JWT_OK && strcmp(forged, good) != 0)
      abort();
    snprintf(forged, sizeof forged, "%.*s.%s%s", (int)(dot - good), good, b64, sig);
    if (tp_jwt_verify(&key, 1, forged, "at+jwt", &claims) == TP_JWT_OK && strcmp(forged, good) != 0)
      abort();
  }
  uint8_t out[TP_JWT_MAX_LEN];
  tp_b64url_decode(tok, size, out, sizeof out);
  free(tok);
  return 0;
}
