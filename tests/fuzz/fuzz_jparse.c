/* libFuzzer target: tp_json_loads (src/lib/jparse.h) against jansson's
 * json_loads(s, 0, NULL) on the same C string (the input up to its first
 * NUL: stored text never holds one, and jansson's buffer reader skips a NUL
 * that follows a number). Both must refuse the same inputs, and where they
 * accept, give the same tree: the same values and the same key order
 * (compared as their serialisations). */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jparse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char *text = malloc(size + 1);
  if (!text)
    return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  json_t *want = json_loads(text, 0, NULL);
  json_t *got = tp_json_loads(text);
  free(text);
  if (!want != !got)
    abort();
  if (want) {
    char *a = json_dumps(want, JSON_COMPACT | JSON_ENCODE_ANY);
    char *b = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!a || !b || strcmp(a, b) != 0 || !json_equal(want, got))
      abort();
    free(a);
    free(b);
  }
  json_decref(want);
  json_decref(got);
  return 0;
}
