/* The HTTP front: request context, route table entry points, replies.
 *
 * A handler parses, validates, builds one change set and either replies at
 * once or suspends the connection (tp_req_suspend) and replies later from a
 * completion (tp_req_resume). No HTTP thread ever waits on a processor or a
 * commit. */
#ifndef TP_HTTP_H
#define TP_HTTP_H
#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"
#include "tp_errors.h"

struct tp_req;
typedef void (*tp_handler_fn)(struct tp_req *r);

enum tp_route_flags {
  TP_R_AUTH = 1,        /* needs a secret key */
  TP_R_PUBLIC = 2,      /* no authentication */
  TP_R_HTML = 4,        /* form posts from a browser page, no Stripe auth */
  TP_R_CLIENT = 8,      /* with TP_R_AUTH: a publishable key too, with the object's client_secret */
  TP_R_PUBLISHABLE = 16, /* with TP_R_AUTH: a publishable key too, as is (a browser tokenising a card) */
  TP_R_NO_NEW_WORK = 32, /* a POST that starts nothing new: served while the disk is short of space */
  TP_R_SEALED_REPLY = 64, /* its reply holds a webhook secret: kept sealed under an Idempotency-Key (idem.c) */
};

struct tp_route {
  const char *method;
  const char *pattern;  /* "/v1/payment_intents/{id}/confirm" */
  tp_handler_fn fn;
  int flags;
};

struct tp_req {
  struct MHD_Connection *conn;
  const struct tp_route *route;
  char method[8];
  char *url;
  char request_id[40];
  int64_t t0_ns;

  char *body;
  size_t body_len, body_cap;
  uint64_t body_seen;  /* bytes of body received, kept or dropped */
  size_t field_bytes;  /* the request line's and header fields' share of the pool (framing_error) */
  const char *section_start; /* the request line in libmicrohttpd's buffer (on_uri), or NULL */
  int field_count;     /* header fields and query arguments (framing_error) */
  bool too_large;
  bool chunked;        /* Transfer-Encoding: chunked (trailer fields may follow) */
  bool dispatched;

  json_t *params;
  char path_id[72];
  char path_sub[72];

  bool authed;
  struct tp_merchant merchant;
  char key_kind[16];
  unsigned scopes;        /* TP_SCOPE_* of the key or token (sec/scopes.h) */
  char actor[80];         /* "key:sk_test_...abcd" | "oauth:oc_..." (audit, logs) */
  char rl_id[80];         /* rate-limit bucket of the key or OAuth client */
  char client_addr[48];   /* tp_req_client_addr, once asked; "" before */
  bool client_addr_known; /* false: a proxy did not disclose the client (proxies.h) */
  unsigned retry_after_s; /* Retry-After of a 429/503, 0 = 1 s */
  char www_authenticate[96]; /* WWW-Authenticate header value, if any */

  /* idempotency */
  char idem_key[256];
  char idem_slot[264];     /* the key as stored: a publishable key's in a space of its own (idem.c) */
  bool has_idem;
  bool idem_registered;
  char req_hash[TP_REQ_HASH_LEN];
  char req_hash_v1[65]; /* the whole-request part as before session 39, when it differs ("" else) */

  /* response */
  unsigned status;
  char *resp;
  size_t resp_len;
  const char *content_type;
  bool replayed;
  bool default_card_sent; /* default_source came as default_card (tp_card_param_alias): errors name that */
  bool settled_error;            /* an error that was committed: the same request will not do better */
  int err;                       /* enum tp_err of the reply set by tp_reply_error (0: not an error reply) */
  char api_version[48];   /* the request's Stripe-Version, echoed in the reply ("" none; TP_API_VERSION_MAX) */
  char original_request[40]; /* a replay: the request whose reply it is ("" if unknown) */
  bool publishable; /* authenticated by a publishable key (TP_R_CLIENT or TP_R_PUBLISHABLE route) */
  char *location; /* a 303's (malloc'd): a return_url, percent-encoded, and its parameters */
  char frame_origin[256]; /* the 3-D Secure page: the one origin that may frame it ("" none) */
  char methods[48];    /* the methods the path serves: a preflight's, a 405's Allow */
  bool cors_preflight; /* answering an OPTIONS preflight */
  bool bad_path;       /* the path encodes a delimiter (%2F, %5C, %00): 404 */
  bool bad_query;      /* the query string has a "%" not followed by two hex digits: 400 */
  bool bad_target;     /* the request target holds a space or tab: 400, closed */
  bool close_after;    /* refused before its body was read: Connection: close */
  size_t reply_held;   /* bytes of this reply counted in the replies held for their clients (server.c) */
  bool reply_queued;   /* its reply is with libmicrohttpd, being sent (counted in server.c's replying) */
  bool keep_alive;     /* the client keeps the connection (Connection, HTTP version): say for how long */
  bool http11;         /* HTTP/1.1 or a later 1.x (else 1.0) */
  bool coded_body;     /* Content-Encoding other than identity: 415 */
  bool customer_page;  /* the customer's answer on the 3-D Secure page, not an API call: its events name no request */
  bool charges_api;    /* POST /v1/charges: its card errors name `source`, not `payment_method` */
  bool observed;       /* counted and logged (observe_request) */
  int conflict_err;    /* enum tp_err a compare-and-set conflict of its commit means (0: store_unavailable) */
  char conflict_param[48];
  char conflict_msg[128];
  unsigned gone_status; /* the reply the client left before getting (logged as 499) */
  char pm_made_for[72]; /* the PaymentIntent this request makes a PaymentMethod for ("" none: tp_pm_usable) */
  bool suspended;
  uint64_t sync_mark;        /* pipelined: held until this batch is synced (sync_hold) */
  struct tp_req *sync_next;  /* in the list of replies held for a sync */
  bool lock_rerun;           /* woken from a lock wait: run the handler again */
  int64_t lock_deadline_ms;  /* tp_mono_ms after which a busy object is 429 (0: not waited yet) */
  struct MHD_Response *raw_resp; /* queued as is with status (a 101 upgrade) */

  /* handler-private state for async work */
  void *ctx;
  void (*ctx_free)(void *ctx);
};

/* Global application state shared by the handlers. */
struct tp_app {
  struct tp_store store;
  char data_dir[1024];
  char public_url[256];   /* "http://127.0.0.1:8420" for links we hand out */
  uint8_t vault_key[32];  /* file KEK (embedded default) */
  _Atomic int shutting_down;
};
extern struct tp_app tp_app;

/* Start/stop the HTTP daemon on host:port (port 0 picks one); *bound_port out. */
/* Bind and listen (the port is known from here: 0 asks the kernel), then
 * start answering on that socket. */
int tp_http_listen(const char *host, uint16_t port, uint16_t *bound_port);
int tp_http_start(unsigned threads);
/* The HTTP threads serving requests (set by tp_http_start). */
unsigned tp_http_threads(void);
/* The request carries Basic credentials and comes from another site's page
 * (its Origin is not the gateway's Host, or Sec-Fetch-Site says
 * cross-site/same-site): credentials a browser kept and replays. */
bool tp_req_browser_basic(const struct tp_req *r);
/* The client (behind a trusted proxy: the one it names) is on the gateway's
 * own host: the operator, for routes about the whole process (metrics.c). */
bool tp_req_client_is_loopback(struct tp_req *r);
/* Serve HTTPS: certificate chain and private key as PEM text, GnuTLS
 * priorities ("NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"). Call before
 * tp_http_start; -1 if libmicrohttpd has no TLS. */
int tp_http_set_tls(const char *cert_pem, const char *key_pem, const char *priorities);
/* Stop accepting, wait up to ms for in-flight requests, then stop. */
void tp_http_stop(unsigned wait_ms);
/* Number of suspended (in-flight) requests. */
unsigned tp_http_inflight(void);

/* Replies. All take ownership of what they are given. */
void tp_reply_json(struct tp_req *r, unsigned status, json_t *obj);
/* payment_intents.c: a reply body to a publishable key: with no card
 * fingerprint anywhere and, on a client_secret route (client), a
 * PaymentIntent or SetupIntent (or an error holding one) cut to what such a
 * client may see; malloc'ed, *len in and out; NULL when body is not JSON or
 * memory ran out. */
char *tp_publishable_view(const char *body, size_t *len, bool client);
/* payment_intents.c: void and cancel ("automatic") an uncaptured
 * PaymentIntent whose authorization is past its capture_before; 1 when
 * started, 0 when not due or busy. */
int tp_pi_expire(const char *merchant, const char *pi_id, int64_t now);
void tp_reply_raw(struct tp_req *r, unsigned status, char *body, size_t len, const char *content_type);
void tp_reply_error(struct tp_req *r, enum tp_err e, const char *param, const char *message);
/* Reply to a change set that did not commit (its completion's rc != 0):
 * 503 store_full when the disk is full, else 503 store_unavailable. */
void tp_reply_commit_failed(struct tp_req *r, int rc);
/* Build the Stripe error object {"type","code",...} (without the "error" wrapper),
 * with Stripe's doc_url for its code (https://stripe.com/docs/error-codes/card-declined). */
json_t *tp_error_object(enum tp_err e, const char *param, const char *message);
/* Add request_log_url (the request log entry of r) to the error object err. */
void tp_error_request_log(json_t *err, const struct tp_req *r);
/* Reply with a params-module error (bad body / unknown parameter). */
struct tp_params_error;
void tp_reply_params_error(struct tp_req *r, const struct tp_params_error *pe, bool unknown);

/* Authenticate the request's API key (for routes that also accept other
 * credentials and so are not TP_R_AUTH); sets r->merchant and r->authed. */
enum tp_err tp_req_authenticate(struct tp_req *r);
/* The API key or access token of r's Authorization header (malloc'd; the
 * caller wipes and frees it), or NULL. */
char *tp_req_credential(struct tp_req *r);
/* r's key or token holds every scope of need (TP_SCOPE_* mask); else the
 * 403 (or OAuth insufficient_scope) naming one it lacks is set: false. */
bool tp_req_require_scope(struct tp_req *r, unsigned need);
/* Is key (as tp_req_credential gives it) still good for merchant: TP_ERR_OK,
 * or why not (expired, revoked, rolled away, store_unavailable). */
enum tp_err tp_credential_check(const char *key, const char *merchant);
/* What an authenticated route gets before its handler (for a public route
 * that authenticates itself, the stream): the failed-login block, the key,
 * its rate limit, the route's scope, Stripe-Account and Stripe-Version;
 * false when it replied. */
bool tp_req_access(struct tp_req *r);
/* The failed-login block of the client's address: true after replying 429. */
bool tp_req_login_blocked(struct tp_req *r);
/* The same for failures counted under their own bucket key (the metrics
 * token's, apart from API keys'). */
bool tp_req_login_blocked_as(struct tp_req *r, const char *bucket);
/* Count a failed authentication (e) toward that block, unless it proves no
 * guess (no credential, a publishable key, a real key or token expired). */
void tp_req_login_failed(struct tp_req *r, enum tp_err e);

/* Async: suspend before submitting work; resume after setting the reply. */
void tp_req_suspend(struct tp_req *r);
void tp_req_resume(struct tp_req *r);

/* Idempotency (idem.c). Begin returns true when the reply is already set
 * (replayed, conflicting or in use) and the handler must not run. */
bool tp_idem_begin(struct tp_req *r);
/* Add the idempotency record with the final reply to a change set: call after
 * the reply is set, before submitting the change set. No-op without a key. */
void tp_idem_record(struct tp_req *r, struct tp_cs *cs);
/* Mark the key as in flight durably (write-ahead of a processor call). */
/* r's reply is an error Stripe would keep for replays under its key. */
bool tp_idem_keeps_error(const struct tp_req *r);
void tp_idem_record_pending(struct tp_req *r, struct tp_cs *cs);
/* Forget the in-memory in-flight mark (request finished). */
void tp_idem_end(struct tp_req *r);

/* The route table (routes.c). */
extern const struct tp_route tp_routes[];
extern const unsigned tp_routes_count;
#endif
