/* libFuzzer target: JWE compact decryption on hostile input (the
 * card[encrypted] parameter any client may send). Each input is tried three
 * ways, so every stage sees garbage:
 *  - as a compact JWE, as is;
 *  - its first bytes as the protected header of a well-formed five-part
 *    token (base64url and JSON header parsing);
 *  - as HEADER|EK|IV|CT|TAG, each part base64url-encoded in turn, with "@R"
 *    and "@E" in HEADER replaced by the kid of this process's RSA and EC key:
 *    only a header naming a real key reaches the key agreement (ECDH-ES with
 *    an attacker's epk, its apu/apv), the RSA-OAEP unwrap and the AES-GCM tag
 *    check; the kids change with the keys, so no corpus could hold them
 *    (until session 33 those stages were never reached).
 * Any crash, leak or sanitizer report, a message that is not one of the
 * fixed ones, or a successful decryption (the fuzzer cannot know the keys,
 * nor compute a GCM tag) is a bug.
 *
 * The keys are made once per process (LLVMFuzzerInitialize, which the
 * replay runner calls too), in one directory reused across runs: an RSA key
 * made inside the first input took longer than a fuzzer's -timeout. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sec/jwe.h"
#include "sec/jwt.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char rsa_kid[128], ec_kid[128];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc, (void)argv;
  char dir[64];
  snprintf(dir, sizeof dir, "/tmp/tp-fuzz-jwe-keys-%u", (unsigned)getuid());
  if ((mkdir(dir, 0700) != 0 && access(dir, W_OK) != 0) || tp_jwe_init(dir) != 0)
    abort();
  json_t *jwks = tp_jwe_jwks();
  size_t i;
  json_t *k;
  json_array_foreach(json_object_get(jwks, "keys"), i, k)
  {
    const char *kty = json_string_value(json_object_get(k, "kty"));
    const char *kid = json_string_value(json_object_get(k, "kid"));
    if (kty && kid)
      snprintf(strcmp(kty, "RSA") == 0 ? rsa_kid : ec_kid, sizeof rsa_kid, "%s", kid);
  }
  json_decref(jwks);
  if (!rsa_kid[0] || !ec_kid[0])
    abort();
  return 0;
}

static void try_one(const char *tok)
{
  uint8_t out[TP_JWE_MAX_PLAIN + 1];
  size_t n = 0;
  const char *why = NULL;
  if (tp_jwe_decrypt(tok, out, sizeof out, &n, &why) == 0)
    abort(); /* decrypted without the key: impossible unless broken */
  if (!why || strlen(why) > 200)
    abort();
}

/* HEADER|EK|IV|CT|TAG, the kids spliced into HEADER. */
static void try_parts(const uint8_t *data, size_t size)
{
  const uint8_t *part[5] = {0};
  size_t len[5] = {0};
  int np = 0;
  size_t start = 0;
  for (size_t i = 0; i <= size && np < 5; i++)
    if (i == size || (data[i] == '|' && np < 4)) {
      part[np] = data + start;
      len[np++] = i - start;
      start = i + 1;
    }
  char hdr[4096 + 256];
  size_t hn = 0;
  for (size_t i = 0; i < len[0] && hn < 4096; i++) {
    if (i + 1 < len[0] && part[0][i] == '@' && (part[0][i + 1] == 'R' || part[0][i + 1] == 'E')) {
      const char *kid = part[0][i + 1] == 'R' ? rsa_kid : ec_kid;
      size_t kl = strlen(kid);
      memcpy(hdr + hn, kid, kl);
      hn += kl;
      i++;
    } else
      hdr[hn++] = (char)part[0][i];
  }
  size_t cap = 2 * (hn + size) + 16;
  char *tok = malloc(cap);
  if (!tok)
    abort();
  size_t o = tp_b64url_encode(hdr, hn, tok, cap);
  for (int p = 1; p < 5; p++) {
    tok[o++] = '.';
    if (p < np)
      o += tp_b64url_encode(part[p], len[p], tok + o, cap - o);
  }
  tok[o] = '\0';
  try_one(tok);
  free(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (!rsa_kid[0])
    LLVMFuzzerInitialize(NULL, NULL);
  if (size > TP_JWE_MAX_COMPACT)
    return 0;
  char *tok = malloc(size + 1);
  if (!tok)
    abort();
  memcpy(tok, data, size);
  tok[size] = '\0';
  try_one(tok);
  free(tok);
  /* The input as the protected header of an otherwise plausible token. */
  size_t hn = size > 1024 ? 1024 : size;
  char *t2 = malloc(2 * hn + 128);
  if (!t2)
    abort();
  size_t o = tp_b64url_encode(data, hn, t2, 2 * hn + 8);
  snprintf(t2 + o, 128, ".AAAA.AAAAAAAAAAAAAAAA.AAAA.AAAAAAAAAAAAAAAAAAAAAA");
  try_one(t2);
  free(t2);
  try_parts(data, size);
  return 0;
}
