/* The recent-request log behind request_log_url. */
#ifndef TP_REQUESTS_H
#define TP_REQUESTS_H
#include <stddef.h>
#include <stdint.h>

/* Remember one finished request of a merchant (path already redacted; ip:
 * the client address, see [server] trusted_proxies). */
void tp_reqlog_record(const char *request_id, const char *merchant, const char *method, const char *route,
                      const char *path, const char *ip, unsigned status, const char *body, size_t body_len, int64_t latency_us);
#endif
