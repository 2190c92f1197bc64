/* Trusted reverse proxies and the client's address ([server] trusted_proxies).
 *
 * Behind a load balancer or a TLS-terminating proxy every connection comes
 * from the proxy, so limits kept per client address (failed-authentication
 * lock-outs, publishable-key buckets) would treat every shopper as one.
 * When the connection comes from a listed proxy, the client is taken from
 * X-Forwarded-For, walking it from the right (the entry the nearest proxy
 * appended) past further trusted proxies; anything a client wrote itself
 * stays to the left of that and is never believed. Without the setting the
 * header is ignored. */
#ifndef TP_PROXIES_H
#define TP_PROXIES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TP_PROXIES_MAX 64        /* entries in trusted_proxies */
#define TP_XFF_MAX_HOPS 32       /* X-Forwarded-For entries examined */

struct tp_cidr {
  int family; /* AF_INET or AF_INET6 */
  uint8_t addr[16];
  unsigned bits;
};

/* Parse a list of addresses and prefixes ("10.0.0.0/8, 127.0.0.1 ::1",
 * commas or blanks between them) into out (up to cap). Returns the count,
 * or -1 with the offending entry copied to bad. IPv4-mapped IPv6 forms are
 * stored as IPv4. */
int tp_cidr_list_parse(const char *text, struct tp_cidr *out, size_t cap, char *bad, size_t badcap);

/* Whether the address text (IPv4 or IPv6, IPv4-mapped forms included) is
 * inside one of the prefixes. */
bool tp_cidr_list_has(const struct tp_cidr *list, size_t n, const char *addr);

/* The client's address for a request that came from peer (address text) and
 * carried the X-Forwarded-For values xff (NULL or "" when absent; several
 * headers joined with commas): peer itself unless peer is a trusted proxy;
 * then the rightmost entry that is not one (the leftmost if all are, the
 * nearest trusted hop if an entry is not an address). Written to out in
 * canonical text form (IPv4-mapped IPv6 as IPv4). Returns false only in
 * that last case, where the client was not disclosed: out is then the
 * nearest trusted hop, fine to count a rate limit against, not to grant
 * anything to. */
bool tp_client_addr_of(const struct tp_cidr *list, size_t n, const char *peer, const char *xff, char *out,
                       size_t cap);

/* The for= values of an RFC 7239 Forwarded header (several headers joined
 * with commas), in order, as an X-Forwarded-For style list for
 * tp_client_addr_of: quoted strings unquoted, an element without for= (or
 * that cannot be read) as "unknown", which stops the walk there. Malloc'ed
 * (the caller frees); NULL only when out of memory. */
char *tp_forwarded_for(const char *fwd);

/* [server] trusted_proxies and forwarded_header (X-Forwarded-For, the
 * default, or Forwarded: only the header the proxies set may be read, the
 * other could come from the client), read once at start: 0, or -1 after
 * logging config_invalid. */
int tp_proxies_init(void);
/* tp_client_addr_of with the configured list. */
bool tp_client_addr(const char *peer, const char *xff, char *out, size_t cap);
/* Whether any proxy is configured (the header is read only then). */
bool tp_proxies_configured(void);
/* The configured header's name: "X-Forwarded-For" or "Forwarded". */
const char *tp_proxies_header(void);
/* Whether the configured header is Forwarded (RFC 7239). */
bool tp_proxies_rfc7239(void);

#endif
