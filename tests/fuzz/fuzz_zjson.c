/* libFuzzer target: expanding a stored value (src/store/zjson.h). Stored
 * frames come from our own writer, but a damaged or tampered database must
 * only ever give NULL, never a crash, an overread or an allocation past
 * TP_ZJSON_MAX. The input is used as a frame as is, and also spliced into a
 * real frame's header so the dictionary and size paths see garbage, and
 * after a whole real frame (frames in a row, as events are stored). A value
 * that compresses and expands must come back byte for byte. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/zjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  size_t n = 0;
  char *out = tp_zjson_unpack(data, size, &n);
  if (out && (n > TP_ZJSON_MAX || strlen(out) > n))
    abort();
  free(out);

  /* The input behind a genuine frame header of ours. */
  size_t zl = 0;
  uint8_t *z = tp_zjson_pack("{\"id\":\"pi_x\"}", 13, &zl);
  if (z && zl > 6) {
    uint8_t *mix = malloc(6 + size);
    memcpy(mix, z, 6);
    memcpy(mix + 6, data, size);
    out = tp_zjson_unpack(mix, 6 + size, &n);
    free(out);
    free(mix);
    /* The input as the frames after a whole genuine one (an event is its
     * envelope's frames around its object's). */
    mix = malloc(zl + size);
    memcpy(mix, z, zl);
    memcpy(mix + zl, data, size);
    out = tp_zjson_unpack(mix, zl + size, &n);
    if (out && (n > TP_ZJSON_MAX || strlen(out) > n))
      abort();
    free(out);
    free(mix);
  }
  free(z);

  /* Round trip of the input as text (bounded). */
  if (size < 65536) {
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    z = tp_zjson_pack(text, size, &zl);
    if (z) {
      out = tp_zjson_unpack(z, zl, &n);
      if (!out || n != size || memcmp(out, text, size) != 0)
        abort();
      free(out);
      free(z);
    }
    free(text);
  }
  return 0;
}
