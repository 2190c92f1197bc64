/* libFuzzer target: a REST/JSON processor's answer, as the connector reads
 * it (tp_restjson_interpret). Input: byte 0 picks the call's kind, bytes 1-2
 * the HTTP status (100-599), the rest is the body as the processor sent it.
 * Any crash or sanitizer report is a bug; so is an outcome outside the
 * enum, a decline code that is not lower-case words, a reference or
 * authorisation code with a byte that is not printable ASCII, a decline
 * without a code, anything but an error for a status outside 2xx (a status
 * query's 404 aside), or an approval of an authorisation, a capture or a
 * refund for another amount or currency than asked, or a status query
 * approved with a word that is not its operation's (a capture's or
 * refund's reference fenced, `voided`, was read as the capture or refund
 * done). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "connectors/connector.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_word(const char *s, size_t cap, bool words)
{
  size_t n = strnlen(s, cap);
  if (n == cap)
    abort(); /* not terminated */
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    bool ok = words ? ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_') : (ch > 0x20 && ch < 0x7f);
    if (!ok)
      abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 3)
    return 0;
  struct tp_proc_call c;
  memset(&c, 0, sizeof c);
  c.kind = (enum tp_proc_kind)(data[0] % 5);
  c.status_of = (enum tp_proc_kind)(data[0] / 5 % 4); /* what a status query asks about */
  long http = 100 + (long)(((unsigned)data[1] << 8 | data[2]) % 500);
  c.amount = 1999;
  memcpy(c.currency, "usd", 4);
  /* Whatever was there before must not leak through. */
  memset(c.decline_code, 'X', sizeof c.decline_code - 1);
  tp_restjson_interpret(&c, http, (const char *)data + 3, size - 3);
  if (c.outcome != TP_OUT_APPROVED && c.outcome != TP_OUT_DECLINED && c.outcome != TP_OUT_ERROR &&
      c.outcome != TP_OUT_NOT_FOUND)
    abort();
  check_word(c.decline_code, sizeof c.decline_code, true);
  check_word(c.auth_code, sizeof c.auth_code, false);
  check_word(c.processor_ref, sizeof c.processor_ref, false);
  if ((c.outcome == TP_OUT_DECLINED || c.outcome == TP_OUT_ERROR) && !c.decline_code[0])
    abort();
  if (c.outcome == TP_OUT_APPROVED && c.decline_code[0])
    abort();
  bool not_found = c.kind == TP_PROC_STATUS && http == 404;
  if ((http < 200 || http >= 300) && !not_found && c.outcome != TP_OUT_ERROR)
    abort();
  if (c.outcome == TP_OUT_NOT_FOUND && c.kind != TP_PROC_STATUS)
    abort();
  if (c.outcome == TP_OUT_APPROVED && c.kind == TP_PROC_STATUS) {
    json_t *js = json_loadb((const char *)data + 3, size - 3, JSON_REJECT_DUPLICATES, NULL);
    const char *st = json_string_value(json_object_get(js, "status"));
    const char *op = json_string_value(json_object_get(js, "operation"));
    if (!st || (!op && c.status_of != TP_PROC_VOID && strcmp(st, "voided") == 0) ||
        (!op && c.status_of == TP_PROC_VOID))
      abort();
    json_decref(js);
  }
  /* An approved authorisation, capture or refund names no other amount or
   * currency (each moved or held money). */
  if (c.outcome == TP_OUT_APPROVED &&
      (c.kind == TP_PROC_AUTHORIZE || c.kind == TP_PROC_CAPTURE || c.kind == TP_PROC_REFUND)) {
    json_t *js = json_loadb((const char *)data + 3, size - 3, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(js))
      abort(); /* approved without a JSON object to say so */
    json_t *amt = json_object_get(js, "amount");
    const char *cur = json_string_value(json_object_get(js, "currency"));
    if ((amt && json_integer_value(amt) != 1999) || (amt && !json_is_integer(amt)) ||
        (cur && strcasecmp(cur, "usd") != 0))
      abort();
    json_decref(js);
  }
  return 0;
}
