/* libFuzzer target for the trusted-proxy list and X-Forwarded-For reader
 * (src/lib/proxies.c). The input is "LIST\nHEADER": the first line is parsed
 * as a trusted_proxies setting (a fixed list when it does not parse), the
 * rest read as X-Forwarded-For, and as Forwarded (RFC 7239), from a trusted
 * peer. Checks: no crash, every output terminated, and the client is an
 * address text that parses back. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxies.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size > 4096)
    return 0;
  char *s = malloc(size + 1);
  if (!s)
    return 0;
  memcpy(s, data, size);
  s[size] = '\0';
  if (strlen(s) != size) { /* headers hold no NUL */
    free(s);
    return 0;
  }
  char *nl = strchr(s, '\n');
  const char *xff = "";
  if (nl) {
    *nl = '\0';
    xff = nl + 1;
  }
  struct tp_cidr list[TP_PROXIES_MAX];
  int n = tp_cidr_list_parse(s, list, TP_PROXIES_MAX, NULL, 0);
  if (n <= 0)
    n = tp_cidr_list_parse("10.0.0.0/8 ::1 192.168.0.0/16", list, TP_PROXIES_MAX, NULL, 0);
  /* The header as X-Forwarded-For, then as Forwarded (RFC 7239). */
  char *fl = tp_forwarded_for(xff);
  if (!fl || strlen(fl) > 8 * strlen(xff) + 7)
    abort();
  const char *lists[2] = {xff, fl};
  for (int k = 0; k < 2; k++) {
    char out[64];
    memset(out, 'x', sizeof out);
    tp_client_addr_of(list, (size_t)n, "10.0.0.1", lists[k], out, sizeof out);
    if (!memchr(out, '\0', sizeof out))
      abort();
    uint8_t buf[16];
    if (inet_pton(AF_INET, out, buf) != 1 && inet_pton(AF_INET6, out, buf) != 1)
      abort();
  }
  free(fl);
  free(s);
  return 0;
}
