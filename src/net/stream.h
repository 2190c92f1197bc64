/* The WebSocket event stream (GET /v1/turnpike/stream): every committed
 * event of a merchant, pushed to its subscribed clients within milliseconds.
 * One epoll thread drives every connection; wslay does the framing. The
 * protocol is documented in docs/observability.md. */
#ifndef TP_STREAM_H
#define TP_STREAM_H
#include <stdbool.h>
#include <stddef.h>

struct tp_req;

/* GET /v1/turnpike/stream: validate, authenticate (Bearer key or ?token=),
 * answer 101 and hand the socket to the stream thread. */
void tp_h_stream(struct tp_req *r);
/* POST /v1/turnpike/stream_tokens: a short-lived token for browsers. */
void tp_h_stream_token(struct tp_req *r);
/* Close every stream connection (close code 1001) and stop the thread; the
 * HTTP front calls it before stopping libmicrohttpd. Idempotent. */
void tp_stream_shutdown(void);

/* Does an event type match a subscription pattern: "*", "prefix.*" or an
 * exact type? (Exposed for tests.) */
bool tp_stream_type_matches(const char *pattern, const char *type);
/* Make a stream token for merchant valid until expires_at (Unix seconds);
 * out gets at most cap bytes. Verify returns true and fills merchant
 * (cap mcap) when the token is genuine and not expired; *expired says a
 * genuine token has expired. */
void tp_stream_token_make(const char *merchant, long long expires_at, char *out, size_t cap);
bool tp_stream_token_verify(const char *token, char *merchant, size_t mcap, bool *expired);
#endif
