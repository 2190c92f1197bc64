/* Scope names and the route -> scope mapping. */
#include "sec/scopes.h"

#include <stdio.h>
#include <string.h>

static const char *const names[] = {"payments:read", "payments:write", "refunds:write",
                                    "customers:write", "reports:read", "admin"};
#define NSCOPES (sizeof names / sizeof names[0])

unsigned tp_scopes_parse(const char *s, bool *ok)
{
  unsigned mask = 0;
  *ok = true;
  while (s && *s) {
    while (*s == ' ' || *s == '+' || *s == ',')
      s++;
    if (!*s)
      break;
    size_t n = strcspn(s, " +,");
    size_t i;
    for (i = 0; i < NSCOPES; i++)
      if (strlen(names[i]) == n && strncmp(names[i], s, n) == 0)
        break;
    if (i < NSCOPES)
      mask |= 1u << i;
    else
      *ok = false;
    s += n;
  }
  /* Writing payments includes reading them, as Stripe's Write includes
   * Read: a payments:write key saw every PaymentIntent and charge anyway,
   * in the reply of an update that changed nothing (session 33's review). */
  if (mask & TP_SCOPE_PAYMENTS_WRITE)
    mask |= TP_SCOPE_PAYMENTS_READ;
  return mask;
}

void tp_scopes_format(unsigned mask, char *out, size_t cap)
{
  size_t o = 0;
  if (cap)
    out[0] = '\0';
  for (size_t i = 0; i < NSCOPES; i++) {
    if (!(mask & (1u << i)))
      continue;
    int n = snprintf(out + o, cap > o ? cap - o : 0, "%s%s", o ? " " : "", names[i]);
    if (n < 0 || o + (size_t)n >= cap)
      return;
    o += (size_t)n;
  }
}

const char *tp_scope_name(unsigned bit)
{
  for (size_t i = 0; i < NSCOPES; i++)
    if (bit == 1u << i)
      return names[i];
  return NULL;
}

/* path starts with the collection prefix (followed by end, '/' or '?'). */
static bool under(const char *path, const char *prefix)
{
  size_t n = strlen(prefix);
  return strncmp(path, prefix, n) == 0 && (path[n] == '\0' || path[n] == '/' || path[n] == '?');
}

unsigned tp_scope_required(const char *method, const char *path)
{
  bool read = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
  /* Operator endpoints and anything added under /v1/turnpike/ later. */
  if (strncmp(path, "/v1/turnpike/", 13) == 0)
    return TP_SCOPE_ADMIN;
  /* An endpoint reads the merchant's events: payments:read too, as the
   * stream and /v1/events (an admin-only key had every event delivered);
   * the balance's events also need reports:read (webhook_endpoints.c). */
  if (under(path, "/v1/webhook_endpoints"))
    return TP_SCOPE_ADMIN | TP_SCOPE_PAYMENTS_READ;
  if (under(path, "/v1/balance") || under(path, "/v1/balance_transactions") || under(path, "/v1/reports") ||
      under(path, "/v1/reporting") || under(path, "/v1/payouts"))
    return TP_SCOPE_REPORTS_READ;
  if (read)
    return TP_SCOPE_PAYMENTS_READ;
  /* The older refund of a charge answers the charge, all of it: reading
   * it takes payments:read too (a refunds:write key read any charge). */
  size_t pl = strlen(path);
  if (pl > 7 && strcmp(path + pl - 7, "/refund") == 0 && strncmp(path, "/v1/charges/", 12) == 0)
    return TP_SCOPE_REFUNDS_WRITE | TP_SCOPE_PAYMENTS_READ;
  if (under(path, "/v1/refunds") || strstr(path, "/refund"))
    return TP_SCOPE_REFUNDS_WRITE;
  if (under(path, "/v1/customers") || under(path, "/v1/payment_methods") || under(path, "/v1/tokens"))
    return TP_SCOPE_CUSTOMERS_WRITE;
  return TP_SCOPE_PAYMENTS_WRITE;
}
