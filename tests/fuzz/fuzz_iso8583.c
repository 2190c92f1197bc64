/* libFuzzer target: the ISO 8583 codec. Input is a message body as a peer
 * would send it. Any crash or sanitizer report is a bug; so is a message that
 * unpacks but does not survive pack -> unpack unchanged, or a summary line
 * that shows a whole PAN. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/iso8583.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static uint8_t out1[TP_ISO_MAX_MSG], out2[TP_ISO_MAX_MSG];
  char err[256];
  struct tp_iso_msg a, b;
  if (tp_iso_unpack(&a, data, size, err, sizeof err) != 0)
    return 0;
  char line[1024];
  tp_iso_describe(&a, line, sizeof line);
  /* Field 2 is shown as its last 4 digits only (other fields may hold the
   * same digits by chance, so look at field 2's slot). */
  const char *pan = tp_iso_get(&a, 2);
  const char *slot = strstr(line, " 2=");
  if (pan && slot && strlen(pan) > 4 && strncmp(slot + 3, pan, strlen(pan)) == 0)
    abort();
  /* Re-packing drops an empty secondary bitmap, so it may be shorter, never
   * longer; then it must be a fixed point. */
  int n1 = tp_iso_pack(&a, out1, sizeof out1);
  if (n1 < 0 || (size_t)n1 > size)
    abort();
  if (tp_iso_unpack(&b, out1, (size_t)n1, err, sizeof err) != 0)
    abort();
  if (strcmp(a.mti, b.mti) != 0)
    abort();
  for (int i = 2; i <= TP_ISO_FIELDS; i++) {
    const char *x = tp_iso_get(&a, i), *y = tp_iso_get(&b, i);
    if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0))
      abort();
  }
  int n2 = tp_iso_pack(&b, out2, sizeof out2);
  if (n2 != n1 || memcmp(out1, out2, (size_t)n1) != 0)
    abort();
  for (int i = 2; i <= TP_ISO_FIELDS; i++)
    if (tp_iso_get(&a, i) && tp_iso_set(&b, i, tp_iso_get(&a, i)) != 0)
      abort(); /* what we accept on the wire we accept from code */
  (void)tp_iso_decline_code(tp_iso_get(&a, 39));
  (void)tp_iso_f39_transient(tp_iso_get(&a, 39));
  (void)tp_iso_currency_alpha(tp_iso_get(&a, 49));
  tp_iso_free(&a);
  tp_iso_free(&b);
  return 0;
}
