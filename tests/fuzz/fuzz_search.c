/* libFuzzer target: the search query parser and matcher. Any crash, leak or
 * sanitizer report is a bug; so is an accepted query that does not evaluate. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/search.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size > 4096)
    return 0;
  char *q = malloc(size + 1);
  if (!q)
    return 0;
  memcpy(q, data, size);
  q[size] = '\0';
  static struct tp_search s;
  char err[200];
  static const struct tp_search_field *const tables[] = {tp_search_fields_payment_intents, tp_search_fields_charges,
                                                         tp_search_fields_customers};
  json_t *obj = json_loads("{\"amount\":1000,\"currency\":\"usd\",\"status\":\"succeeded\",\"customer\":null,"
                           "\"metadata\":{\"order_id\":\"6735\"},\"email\":\"amy@example.com\",\"refunded\":false,"
                           "\"payment_method_details\":{\"card\":{\"last4\":\"4242\",\"exp_month\":12}}}",
                           0, NULL);
  for (size_t t = 0; t < 3; t++) {
    err[0] = '\0';
    if (tp_search_parse(q, tables[t], &s, err, sizeof err)) {
      if (s.n == 0 || s.n > TP_SEARCH_MAX_CLAUSES)
        abort();
      (void)tp_search_match(&s, obj);
    } else if (!err[0] || strlen(err) >= sizeof err) {
      abort(); /* every refusal says why */
    }
  }
  json_decref(obj);
  free(q);
  return 0;
}
