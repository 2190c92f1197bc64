/* OAuth scopes and restricted-key permissions: which scope each route needs.
 *
 * The mapping is a function of method and path (not a column of the route
 * table), so routes added later get a safe default without anyone touching
 * this file. The table is in docs/security.md ("Authentication and access
 * control"). Scopes are independent: payments:write does not imply
 * payments:read. */
#ifndef TP_SCOPES_H
#define TP_SCOPES_H
#include <stdbool.h>
#include <stddef.h>

enum tp_scope {
  TP_SCOPE_PAYMENTS_READ = 1 << 0,
  TP_SCOPE_PAYMENTS_WRITE = 1 << 1,
  TP_SCOPE_REFUNDS_WRITE = 1 << 2,
  TP_SCOPE_CUSTOMERS_WRITE = 1 << 3,
  TP_SCOPE_REPORTS_READ = 1 << 4,
  TP_SCOPE_ADMIN = 1 << 5,
  TP_SCOPE_ALL = (1 << 6) - 1,
};

/* Parse a space-separated scope list ("payments:read refunds:write") into a
 * mask. Unknown names make *ok false (the mask then holds the known ones). */
unsigned tp_scopes_parse(const char *s, bool *ok);
/* Space-separated names of mask in canonical order into out. */
void tp_scopes_format(unsigned mask, char *out, size_t cap);
/* The name of one scope bit ("payments:read"), NULL if not exactly one. */
const char *tp_scope_name(unsigned bit);
/* The one scope a request needs: method ("GET"...) and the route pattern or
 * path ("/v1/refunds", "/v1/payment_intents/{id}/capture"). */
unsigned tp_scope_required(const char *method, const char *path);
#endif
