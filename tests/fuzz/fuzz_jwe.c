/* libFuzzer target: JWE compact decryption on hostile input (the
 * card[encrypted] parameter any client may send). The input is tried as a
 * compact JWE as is, and its first bytes also become the protected header of
 * a well-formed five-part token, so the base64url, JSON header, key
 * agreement / unwrap and AES-GCM paths all see garbage. Any crash, leak or
 * sanitizer report, a message that is not one of the fixed ones, or a
 * successful decryption (the fuzzer cannot know the keys) is a bug. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sec/jwe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int ready;

static void setup(void)
{
  char dir[] = "/tmp/tp-fuzz-jwe-XXXXXX";
  if (!mkdtemp(dir) || tp_jwe_init(dir) != 0)
    abort();
  ready = 1;
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

static void b64u(const uint8_t *in, size_t n, char *out)
{
  static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
    out[o++] = a[v >> 18 & 63];
    out[o++] = a[v >> 12 & 63];
    if (i + 1 < n)
      out[o++] = a[v >> 6 & 63];
    if (i + 2 < n)
      out[o++] = a[v & 63];
  }
  out[o] = '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (!ready)
    setup();
  if (size > TP_JWE_MAX_COMPACT)
    return 0;
  char *tok = malloc(size + 1);
  memcpy(tok, data, size);
  tok[size] = '\0';
  try_one(tok);
  free(tok);
  /* The input as the protected header of an otherwise plausible token. */
  size_t hn = size > 1024 ? 1024 : size;
  char *hdr = malloc(hn * 4 / 3 + 4);
  b64u(data, hn, hdr);
  char *t2 = malloc(strlen(hdr) + 128);
  sprintf(t2, "%s.AAAA.AAAAAAAAAAAAAAAA.AAAA.AAAAAAAAAAAAAAAAAAAAAA", hdr);
  try_one(t2);
  free(t2);
  free(hdr);
  return 0;
}
