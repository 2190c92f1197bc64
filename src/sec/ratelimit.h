/* Rate limiting: a token bucket per API key or OAuth client, and a counter of
 * authentication failures per remote address. Both live in fixed-size tables
 * (set-associative, least recently used way evicted), so memory is bounded
 * whatever the number of keys or addresses. Nothing here sleeps: a caller
 * over a limit answers 429 at once with Retry-After. */
#ifndef TP_RATELIMIT_H
#define TP_RATELIMIT_H
#include <stddef.h>
#include <stdint.h>

#define TP_RL_SETS 1024      /* sets per table */
#define TP_RL_WAYS 4         /* entries per set: 4096 keys / addresses tracked */

/* Read [ratelimit] rate, burst, auth_failures, auth_window (and reset the
 * tables). rate 0 turns the per-key limit off. */
void tp_ratelimit_init(void);
/* Set the limits directly (tests); rate per second, burst tokens. */
void tp_ratelimit_configure(int64_t rate, int64_t burst, int64_t auth_failures, int64_t auth_window_s);
/* Take one token for the caller id (key hash, client id); 0 when allowed,
 * else the seconds to wait (>= 1). */
int tp_ratelimit_take(const char *id, int64_t now_ms);
/* Seconds an address must wait before it may try to authenticate again
 * (0: it may). */
int tp_ratelimit_auth_blocked(const char *addr, int64_t now_ms);
/* The bucket an address counts in: itself, or an IPv6 address's /64. */
void tp_ratelimit_addr_bucket(const char *addr, char *out, size_t n);
/* Count one failed authentication from addr. */
void tp_ratelimit_auth_failed(const char *addr, int64_t now_ms);
#endif
