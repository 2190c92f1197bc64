/* WebSocket event stream: the upgrade handler (HTTP thread), the committed
 * event feed (writer thread) and the stream thread that owns every
 * connection after the upgrade.
 *
 *  writer --(copy, O(1))--> event queue --eventfd--> stream thread --> wslay
 *  MHD upgrade callback --> pending list --eventfd-->      |
 *
 * The writer never waits: it copies each event onto a bounded queue. If the
 * queue overflows (the stream thread fell far behind), every client is closed
 * with 1013 and can resume from its last event id, so nothing is lost
 * silently. Each client has a bounded send buffer: a client that does not
 * read is closed with 1008 instead of growing memory, nothing more is read
 * from one whose own messages filled it, and a resume is read from the
 * table a page at a time as the client takes it. */
#include "net/stream.h"
#include "jpack.h"
#include "jparse.h"

#include "api/http.h"
#include "config.h"
#include "log.h"
#include "main/features.h"
#include "sec/auth.h"
#include "sec/scopes.h"
#include "sec/ratelimit.h"
#include "metrics.h"
#include "util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wslay/wslay.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define TP_STREAM_MAX_RECV_MSG (64 * 1024)  /* a subscribe message is small */
#define TP_STREAM_MAX_PATTERNS 64
#define TP_STREAM_MAX_OBJECTS 256
#define TP_STREAM_CLOSE_GRACE_MS 2000       /* close handshake, then the socket goes */
#define TP_STREAM_TICK_MS 100
#define TP_STREAM_TOKEN_MAX 200
#define TP_STREAM_RECHECK_MS 5000

/* Settings ([stream] in the INI file), read at start. */
static struct {
  int64_t max_connections;
  int64_t max_per_account;
  int64_t ping_interval_ms;
  int64_t send_buffer_bytes;
  int64_t sndbuf;
  int64_t replay_max;
  int64_t token_ttl_s;
  int64_t queue_max;
} cfg = {1000, 100, 20000, 1048576, 65536, 1000, 60, 65536};


struct ev {
  struct ev *next;
  char merchant[64];
  char id[64];
  char type[96];
  size_t len;
  char json[]; /* NUL-terminated */
};

/* Handed from the upgrade handler to the callback. Held by the callback and
 * by the request (freed by whichever lets go last): MHD runs the callback
 * once the 101 is out, and completes the request only after the upgraded
 * socket is closed, or without any callback if the client left first, in
 * which case the request's release gives the connection slot back. */
struct handshake {
  struct handshake *next, *prev;
  char merchant[64];
  char *cred; /* the key or access token that opened it (NULL: a stream token) */
  bool hide_reports; /* the key lacks reports:read: no balance or payout events */
  int refs;
  bool upgraded;
};

static void handshake_unlink(struct handshake *h);

struct conn {
  struct conn *next;
  int fd;
  struct MHD_UpgradeResponseHandle *urh;
  wslay_event_context_ptr ws;
  char merchant[64];
  char *extra;        /* bytes MHD read past the request headers */
  size_t extra_len, extra_off;
  bool subscribed;
  char patterns[TP_STREAM_MAX_PATTERNS][100];
  int npatterns;
  char (*objects)[64];
  int nobjects;
  /* A resume: the merchant's events after replay_last are read from the
   * table a page at a time as the client's queue drains (replay_step);
   * live events wait in the table meanwhile, and once it has caught up
   * the live ones up to replay_last are skipped (sent already). */
  bool replaying, replay_checked;
  char replay_last[64];
  bool closing;        /* close queued or owed: send nothing else */
  bool close_owed;     /* queued once what is queued before it has gone */
  bool close_counted;  /* its close is in the metric and the log */
  uint16_t close_code;
  char close_reason[64];
  bool io_failed;      /* the socket failed (not the peer's protocol) */
  bool frame_open;     /* a frame is partly written: nothing else may go out before its rest */
  int64_t close_deadline_ms;
  bool ping_outstanding;
  int64_t next_ping_ms;
  /* The API key or OAuth access token that opened the stream, checked
   * again every TP_STREAM_RECHECK_MS: a key that expires (a roll's
   * overlap, --expires-in) or a token revoked or past its exp closes the
   * stream, as it fails every request. NULL for a wst_ stream token, which
   * only opens a stream. */
  char *cred;
  int64_t next_auth_ms;
  bool hide_reports; /* opened by a key without reports:read */
  bool dead;
  uint32_t epoll_events;
  size_t read_budget;  /* bytes this pump may still read (ws_recv) */
};

/* What one pump reads from a client at most: wslay reads until the socket
 * would block, so a client that keeps its socket readable (a flood of
 * pongs or empty fragments, which queue nothing and so meet no bound) held
 * the thread, and every other client's events, pings and deadlines, for as
 * long as it sent. Past it the client waits for the loop's next turn
 * (epoll is level-triggered: it is woken again at once). */
#define READ_BUDGET_BYTES 65536

static struct {
  pthread_mutex_t mu;
  struct ev *head, *tail;
  size_t qlen;
  bool overflow;
  struct conn *pending;          /* upgraded, not yet taken by the thread */
  struct handshake *handshakes;  /* 101 queued, callback not yet run */
  pthread_t thread;
  bool running, stopping;
  int efd, epfd;
  uint8_t token_key[32];
  atomic_int nconns;             /* handshaking + live */
  struct conn *conns;            /* stream thread only */
} S = {.mu = PTHREAD_MUTEX_INITIALIZER, .efd = -1, .epfd = -1};

/* Stream slots, handshaking and live: the gateway's (S.nconns) and each
 * account's, so one account cannot take every slot ([stream]
 * max_connections_per_account). The per-account counts are a small table
 * of the accounts with a stream open, under their own mutex (taken inside
 * S.mu, never the other way). */
struct slot_count {
  char merchant[64];
  int64_t n;
};
static pthread_mutex_t slots_mu = PTHREAD_MUTEX_INITIALIZER;
static struct slot_count *slots;
static size_t nslots, slots_cap;

/* 0: taken; else the error that refuses it */
static enum tp_err slot_take(const char *merchant)
{
  atomic_int *total = &S.nconns;
  if (atomic_fetch_add(total, 1) >= cfg.max_connections) {
    atomic_fetch_sub(total, 1);
    return TP_ERR_WEBSOCKET_CONNECTION_LIMIT;
  }
  enum tp_err e = TP_ERR_OK;
  pthread_mutex_lock(&slots_mu);
  size_t i = 0;
  while (i < nslots && strcmp(slots[i].merchant, merchant) != 0)
    i++;
  if (i < nslots && slots[i].n >= cfg.max_per_account) {
    e = TP_ERR_WEBSOCKET_ACCOUNT_CONNECTION_LIMIT;
  } else if (i == nslots) {
    if (nslots == slots_cap) {
      size_t cap = slots_cap ? slots_cap * 2 : 16;
      struct slot_count *n = realloc(slots, cap * sizeof *n);
      if (!n)
        e = TP_ERR_INTERNAL;
      else {
        slots = n;
        slots_cap = cap;
      }
    }
    if (e == TP_ERR_OK) {
      tp_scopy(slots[i].merchant, sizeof slots[i].merchant, merchant);
      slots[i].n = 1;
      nslots++;
    }
  } else {
    slots[i].n++;
  }
  pthread_mutex_unlock(&slots_mu);
  if (e != TP_ERR_OK)
    atomic_fetch_sub(total, 1);
  return e;
}

static void slot_put(const char *merchant)
{
  pthread_mutex_lock(&slots_mu);
  for (size_t i = 0; i < nslots; i++) {
    if (strcmp(slots[i].merchant, merchant) == 0) {
      if (--slots[i].n <= 0)
        slots[i] = slots[--nslots];
      break;
    }
  }
  pthread_mutex_unlock(&slots_mu);
  atomic_fetch_sub(&S.nconns, 1);
}

static void wake(void)
{
  uint64_t one = 1;
  ssize_t w = write(S.efd, &one, sizeof one);
  (void)w;
}

static void free_cred(char **cred)
{
  if (*cred) {
    OPENSSL_cleanse(*cred, strlen(*cred));
    free(*cred);
    *cred = NULL;
  }
}

/* ---- tokens ------------------------------------------------------------------ */
/* wst_<merchant>.<nonce>.<expires_at>.<hmac hex>: the merchant and expiry
 * are signed with a key made at start-up, so tokens die with the process
 * (60 s anyway); the nonce makes each token its own. */
void tp_stream_token_make(const char *merchant, long long expires_at, char *out, size_t cap)
{
  char msg[128], mac[65], nonce[13];
  tp_random_b62(nonce, 12);
  int n = snprintf(msg, sizeof msg, "%s.%s.%lld", merchant, nonce, expires_at);
  tp_hmac_sha256_hex(S.token_key, sizeof S.token_key, msg, (size_t)n, mac);
  snprintf(out, cap, "wst_%s.%s", msg, mac);
}

/* The key or access token each live stream token was made with (by its
 * MAC), so a stream opened with the token is checked against it as one
 * opened with the key is (conn.cred): a token outlived by its key no
 * longer keeps a stream open. A token whose entry was pushed out opens no
 * stream: a merchant holds at most TP_STREAM_MINTED_PER live entries (its
 * own soonest to expire goes first), so one merchant cannot push out
 * another's, whatever it mints. */
#define TP_STREAM_MINTED 1024
#define TP_STREAM_MINTED_PER 64
static struct minted {
  char mac[65];
  char merchant[64];
  char *cred;
  long long exp;
} minted[TP_STREAM_MINTED];
static pthread_mutex_t minted_mu = PTHREAD_MUTEX_INITIALIZER;

static void minted_add(const char *merchant, const char *token, char *cred, long long exp)
{
  const char *mac = strrchr(token, '.');
  if (!mac || strlen(mac + 1) != 64) {
    free_cred(&cred);
    return;
  }
  long long now = (long long)tp_now();
  pthread_mutex_lock(&minted_mu);
  size_t slot = TP_STREAM_MINTED, own = TP_STREAM_MINTED, any = 0;
  int live_own = 0;
  for (size_t i = 0; i < TP_STREAM_MINTED; i++) {
    bool live = minted[i].cred && minted[i].exp >= now;
    if (!live && slot == TP_STREAM_MINTED)
      slot = i; /* free, or expired */
    if (live && strcmp(minted[i].merchant, merchant) == 0) {
      live_own++;
      if (own == TP_STREAM_MINTED || minted[i].exp < minted[own].exp)
        own = i;
    }
    if (minted[i].exp < minted[any].exp)
      any = i;
  }
  if (live_own >= TP_STREAM_MINTED_PER || (slot == TP_STREAM_MINTED && own != TP_STREAM_MINTED))
    slot = own; /* its own quota, or a full table: the merchant's own oldest */
  else if (slot == TP_STREAM_MINTED)
    slot = any; /* full of other merchants' live tokens (more than 16 merchants at their quota) */
  free_cred(&minted[slot].cred);
  tp_scopy(minted[slot].mac, sizeof minted[slot].mac, mac + 1);
  tp_scopy(minted[slot].merchant, sizeof minted[slot].merchant, merchant);
  minted[slot].cred = cred;
  minted[slot].exp = exp;
  pthread_mutex_unlock(&minted_mu);
}

/* A copy of the credential token was made with, or NULL when unknown. */
static char *minted_cred(const char *token)
{
  const char *mac = strrchr(token, '.');
  char *out = NULL;
  if (!mac)
    return NULL;
  pthread_mutex_lock(&minted_mu);
  for (size_t i = 0; i < TP_STREAM_MINTED && !out; i++)
    if (minted[i].cred && strcmp(minted[i].mac, mac + 1) == 0)
      out = strdup(minted[i].cred);
  pthread_mutex_unlock(&minted_mu);
  return out;
}

bool tp_stream_token_verify(const char *token, char *merchant, size_t mcap, bool *expired)
{
  *expired = false;
  if (!token || strncmp(token, "wst_", 4) != 0 || strlen(token) > TP_STREAM_TOKEN_MAX)
    return false;
  const char *body = token + 4;
  const char *mac = strrchr(body, '.');
  if (!mac || strlen(mac + 1) != 64)
    return false;
  char msg[160];
  size_t mlen = (size_t)(mac - body);
  if (mlen >= sizeof msg)
    return false;
  memcpy(msg, body, mlen);
  msg[mlen] = '\0';
  char want[65];
  tp_hmac_sha256_hex(S.token_key, sizeof S.token_key, msg, mlen, want);
  if (!tp_ct_equal(want, mac + 1, 64))
    return false;
  char *dot = strrchr(msg, '.');
  if (!dot)
    return false;
  *dot = '\0';
  char *nonce = strchr(msg, '.');
  if (nonce)
    *nonce = '\0'; /* the merchant is what comes before it */
  char *end;
  long long exp = strtoll(dot + 1, &end, 10);
  if (*end || strlen(msg) >= mcap || !msg[0])
    return false;
  if (exp < tp_now()) {
    *expired = true; /* ours, only old */
    return false;
  }
  snprintf(merchant, mcap, "%s", msg);
  return true;
}

/* POST /v1/turnpike/stream_tokens */
void tp_h_stream_token(struct tp_req *r)
{
  /* A token opens a stream of every event of the account (it carries no
   * scopes): only a key that may read them all makes one. */
  if (!tp_req_require_scope(r, TP_SCOPE_PAYMENTS_READ | TP_SCOPE_REPORTS_READ))
    return;
  if (json_object_size(r->params) > 0) {
    const char *k = json_object_iter_key(json_object_iter(r->params));
    tp_reply_error(r, TP_ERR_PARAMETER_UNKNOWN, k, NULL);
    return;
  }
  long long exp = (long long)tp_now() + cfg.token_ttl_s;
  char tok[TP_STREAM_TOKEN_MAX + 1];
  tp_stream_token_make(r->merchant.id, exp, tok, sizeof tok);
  minted_add(r->merchant.id, tok, tp_req_credential(r), exp);
  tp_reply_json(r, 200, tp_pack("{s:s, s:s, s:I}", "object", "turnpike.stream_token", "token", tok, "expires_at",
                                   (json_int_t)exp));
}

/* ---- matching -------------------------------------------------------------- */
bool tp_stream_type_matches(const char *pattern, const char *type)
{
  if (strcmp(pattern, "*") == 0)
    return true;
  size_t n = strlen(pattern);
  if (n >= 2 && pattern[n - 1] == '*' && pattern[n - 2] == '.')
    return strncmp(pattern, type, n - 1) == 0;
  return strcmp(pattern, type) == 0;
}

static bool conn_wants(const struct conn *c, const char *type, const char *object_id)
{
  /* Balance and payout events show the balance, which needs reports:read
   * (as /v1/events hides them from a key without it). */
  if (c->hide_reports && (strncmp(type, "balance.", 8) == 0 || strncmp(type, "payout.", 7) == 0))
    return false;
  bool ok = false;
  for (int i = 0; i < c->npatterns && !ok; i++)
    ok = tp_stream_type_matches(c->patterns[i], type);
  if (!ok)
    return false;
  if (c->nobjects == 0)
    return true;
  if (!object_id)
    return false;
  for (int i = 0; i < c->nobjects; i++)
    if (strcmp(c->objects[i], object_id) == 0)
      return true;
  return false;
}

/* ---- the writer side ------------------------------------------------------- */
/* Writer thread: copy the event and return. Nothing is queued while no
 * client is connected (a resume reads the table instead). */
static void on_event(const char *merchant, const char *event_id, const char *type, const char *json, size_t len,
                     void *arg)
{
  (void)arg;
  if (atomic_load(&S.nconns) == 0 || !merchant || !event_id || !type)
    return;
  struct ev *e = malloc(sizeof *e + len + 1);
  if (!e)
    return;
  e->next = NULL;
  tp_scopy(e->merchant, sizeof e->merchant, merchant);
  tp_scopy(e->id, sizeof e->id, event_id);
  tp_scopy(e->type, sizeof e->type, type);
  memcpy(e->json, json, len);
  e->json[len] = '\0';
  e->len = len;
  pthread_mutex_lock(&S.mu);
  if (S.qlen >= (size_t)cfg.queue_max || S.stopping) {
    S.overflow = !S.stopping;
    pthread_mutex_unlock(&S.mu);
    free(e);
    return;
  }
  if (S.tail)
    S.tail->next = e;
  else
    S.head = e;
  S.tail = e;
  S.qlen++;
  pthread_mutex_unlock(&S.mu);
  wake();
}

/* ---- wslay callbacks ----------------------------------------------------------- */
/* More queued for the client than its bound: deliver() closes a slow
 * reader; reading from a client that does not read stops here. */
static bool over_bound(const struct conn *c)
{
  return wslay_event_get_queued_msg_length(c->ws) > (size_t)cfg.send_buffer_bytes;
}

static ssize_t ws_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *user)
{
  (void)flags;
  struct conn *c = user;
  if (c->extra_off < c->extra_len) {
    size_t n = c->extra_len - c->extra_off;
    if (n > len)
      n = len;
    memcpy(buf, c->extra + c->extra_off, n);
    c->extra_off += n;
    return (ssize_t)n;
  }
  if (over_bound(c)) {
    /* What the client's messages made us queue (answers, pongs) waits for
     * it to read: nothing more is read until that drains (conn_pump). */
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (c->read_budget == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (len > c->read_budget)
    len = c->read_budget;
  ssize_t n = recv(c->fd, buf, len, 0);
  if (n > 0)
    c->read_budget -= (size_t)n;
  if (n < 0) {
    bool again = errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    c->io_failed = !again;
    wslay_event_set_error(ctx, again ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  if (n == 0) {
    c->io_failed = true;
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return n;
}

static ssize_t ws_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *user)
{
  struct conn *c = user;
  ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL | ((flags & WSLAY_MSG_MORE) ? MSG_MORE : 0));
  if (n >= 0) /* wslay says MORE while the frame it writes has more to come */
    c->frame_open = (size_t)n < len || (flags & WSLAY_MSG_MORE);
  if (n < 0) {
    bool again = errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    c->io_failed |= !again;
    wslay_event_set_error(ctx, again ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return n;
}

static int ws_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user)
{
  (void)ctx;
  (void)user;
  tp_random(buf, len);
  return 0;
}

static void send_text(struct conn *c, const char *s, size_t len)
{
  struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)s, len};
  if (wslay_event_queue_msg(c->ws, &m) == 0)
    tp_metric_inc("turnpike_stream_messages_sent_total", NULL, 1);
}

static void send_json(struct conn *c, json_t *o)
{
  char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(o);
  if (s) {
    send_text(c, s, strlen(s));
    free(s);
  }
}

/* A connection's close, once: the metric by code and the log line. A
 * client's own code (3000-4999, echoed) is one label, "application": each
 * value was a series of its own, and one client made two thousand. */
static void close_count(struct conn *c, uint16_t code, const char *reason)
{
  if (c->close_counted)
    return;
  c->close_counted = true;
  char lbl[64];
  if (code >= 1000 && code < 3000)
    snprintf(lbl, sizeof lbl, "code=\"%u\"", (unsigned)code);
  else
    snprintf(lbl, sizeof lbl, "code=\"application\"");
  tp_metric_inc("turnpike_stream_closed_total", lbl, 1);
  tp_log(code == 1000 || code == 1001 || code == 1005 ? TP_LOG_DEBUG : TP_LOG_INFO, "stream_close",
         "{s:s, s:i, s:s}", "merchant", c->merchant, "code", (int)code, "reason", reason);
}

/* Close now: wslay sends a close frame ahead of any queued message, and
 * nothing after it (a slow reader's backlog is dropped). */
static void conn_close(struct conn *c, uint16_t code, const char *reason)
{
  if (c->dead || (c->closing && !c->close_owed))
    return;
  c->closing = true;
  c->close_owed = false;
  c->close_deadline_ms = tp_mono_ms() + TP_STREAM_CLOSE_GRACE_MS;
  wslay_event_queue_close(c->ws, code, (const uint8_t *)reason, strlen(reason));
  close_count(c, code, reason);
}

static void send_error(struct conn *c, const char *code, const char *message)
{
  send_json(c, tp_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "message", message));
}

/* Close once what is queued (an error message saying why) has been sent:
 * conn_pump queues the close frame when the queue is empty, and the
 * close deadline still bounds a client that does not read. */
static void conn_close_after_queued(struct conn *c, uint16_t code, const char *reason)
{
  if (c->closing || c->dead)
    return;
  c->closing = true;
  c->close_owed = true;
  c->close_code = code;
  tp_scopy(c->close_reason, sizeof c->close_reason, reason);
  c->close_deadline_ms = tp_mono_ms() + TP_STREAM_CLOSE_GRACE_MS;
}

/* Queue one event message unless the client's buffer is full, in which case
 * the client is closed: a slow reader never costs more than its bound. */
static void deliver(struct conn *c, const char *msg, size_t len)
{
  if (c->closing || c->dead)
    return;
  if (wslay_event_get_queued_msg_length(c->ws) + len > (size_t)cfg.send_buffer_bytes) {
    tp_metric_inc("turnpike_stream_slow_client_closes_total", NULL, 1);
    conn_close(c, 1008, "send buffer limit exceeded: client too slow");
    return;
  }
  send_text(c, msg, len);
}

/* {"type":"event","event":<stored event JSON>} without re-serializing. */
static char *event_msg(const char *json, size_t len, size_t *out_len)
{
  static const char pre[] = "{\"type\":\"event\",\"event\":";
  char *m = malloc(sizeof pre + len + 2);
  if (!m)
    return NULL;
  memcpy(m, pre, sizeof pre - 1);
  memcpy(m + sizeof pre - 1, json, len);
  m[sizeof pre - 1 + len] = '}';
  *out_len = sizeof pre + len;
  m[*out_len] = '\0';
  return m;
}

static const char *object_id_of(json_t *ev)
{
  return json_string_value(json_object_get(json_object_get(json_object_get(ev, "data"), "object"), "id"));
}

#define TP_STREAM_REPLAY_PAGE 100

/* The subscription's event types as SQL over events.type, its values
 * appended to args from parameter number first on: "" when it takes every
 * type. A resume counts and reads only what it may send (a subscriber to
 * one rare type, a thousand events of others behind, was refused every
 * reconnect as too far: review, session 41). */
static void type_filter_sql(const struct conn *c, json_t *args, int first, char *out, size_t cap)
{
  out[0] = '\0';
  for (int i = 0; i < c->npatterns; i++)
    if (strcmp(c->patterns[i], "*") == 0)
      return;
  size_t len = 0;
  int k = first;
  for (int i = 0; i < c->npatterns && len < cap; i++) {
    const char *pat = c->patterns[i];
    size_t n = strlen(pat);
    int w;
    if (n >= 2 && pat[n - 1] == '*' && pat[n - 2] == '.') {
      /* "charge.*": from "charge." up to "charge/" ('.' + 1) */
      char lo[100], hi[100];
      snprintf(lo, sizeof lo, "%.*s", (int)(n - 1), pat);
      snprintf(hi, sizeof hi, "%.*s/", (int)(n - 2), pat);
      json_array_append_new(args, json_string(lo));
      json_array_append_new(args, json_string(hi));
      w = snprintf(out + len, cap - len, "%s(type >= ?%d AND type < ?%d)", i ? " OR " : " AND (", k, k + 1);
      k += 2;
    } else {
      json_array_append_new(args, json_string(pat));
      w = snprintf(out + len, cap - len, "%stype = ?%d", i ? " OR " : " AND (", k);
      k++;
    }
    if (w < 0 || (size_t)w >= cap - len) {
      out[0] = '\0'; /* cannot happen with 64 patterns in 4 KiB; then unfiltered, as before */
      return;
    }
    len += (size_t)w;
  }
  if (len + 2 > cap) {
    out[0] = '\0';
    return;
  }
  memcpy(out + len, ")", 2);
}

/* One page of a resume (conn.replaying), when the client's queue has room:
 * first whether the window is within replay_max, then the next events after
 * replay_last in id order. A page shorter than a full one has caught up. */
static void replay_step(struct conn *c)
{
  if (!c->replay_checked) {
    json_t *args = tp_pack("[s, s, I]", c->merchant, c->replay_last, (json_int_t)(cfg.replay_max + 1));
    char filter[4096], sql[4400];
    type_filter_sql(c, args, 4, filter, sizeof filter);
    snprintf(sql, sizeof sql,
             "SELECT count(*) AS n, (SELECT max(id) FROM events WHERE merchant = ?1) AS newest "
             "FROM (SELECT 1 FROM events WHERE merchant = ?1 AND id > ?2%s LIMIT ?3)",
             filter);
    json_t *rows = tp_store_query(&tp_app.store, sql, args);
    json_decref(args);
    json_t *n = json_object_get(json_array_get(rows, 0), "n");
    const char *newest = json_string_value(json_object_get(json_array_get(rows, 0), "newest"));
    bool ok = json_is_integer(n);
    bool too_far = ok && json_integer_value(n) > cfg.replay_max;
    if (ok && newest && strcmp(c->replay_last, newest) > 0) {
      /* After every event of this account (another's id, or made up): the
       * live events would all sort before it and be skipped for good. Said,
       * and the resume goes on from the newest event there is (those
       * committed since the subscription still come). */
      tp_scopy(c->replay_last, sizeof c->replay_last, newest);
      send_error(c, "invalid_subscription", "last_event_id is after every event of this account; resuming from now.");
    }
    if (ok && !newest && c->replay_last[0]) {
      /* No event at all: what comes is after any cursor but one that sorts
       * after the ids made from now on (a Stripe id, evt_1..., after every
       * one of ours for decades), and such a cursor had every live event
       * skipped for good, silently (review, session 39). Read from the
       * start; said when the cursor is of the future. */
      char floor_now[TP_ID_MAX];
      tp_id_floor(floor_now, "evt", tp_now() * 1000);
      bool future = strcmp(c->replay_last, floor_now) >= 0;
      c->replay_last[0] = '\0';
      if (future)
        send_error(c, "invalid_subscription", "last_event_id is after every event of this account; resuming from now.");
    }
    json_decref(rows);
    if (!ok || too_far) {
      c->replaying = false;
      if (too_far)
        send_error(c, "resume_too_far", "Too many events since last_event_id; page through /v1/events instead.");
      else
        send_error(c, "resume_failed", "The event log could not be read; retry.");
      conn_close_after_queued(c, too_far ? 1008 : 1011, too_far ? "resume window exceeded" : "resume failed");
      return;
    }
    c->replay_checked = true;
  }
  /* Only events on disk (commit_sync = pipelined): one committed and not
   * yet synced was sent, and a power cut then erased it; it comes live,
   * after its sync, to this subscribed connection. */
  char bound[TP_ID_MAX];
  tp_writer_durable_bound(bound);
  json_t *args = tp_pack("[s, s, I, s]", c->merchant, c->replay_last, (json_int_t)TP_STREAM_REPLAY_PAGE, bound);
  char filter[4096], sql[4400];
  type_filter_sql(c, args, 5, filter, sizeof filter);
  snprintf(sql, sizeof sql,
           "SELECT id, type, tp_json(data) AS data FROM events WHERE merchant = ?1 AND id > ?2 "
           "AND (?4 = '' OR id < ?4)%s ORDER BY id LIMIT ?3",
           filter);
  json_t *rows = tp_store_query(&tp_app.store, sql, args);
  json_decref(args);
  if (!json_is_array(rows)) {
    json_decref(rows);
    c->replaying = false;
    send_error(c, "resume_failed", "The event log could not be read; retry.");
    conn_close_after_queued(c, 1011, "resume failed");
    return;
  }
  /* And again now that the read is done: a batch committed between the
   * bound above and the read's snapshot set the bound before its COMMIT,
   * so it shows here (the read saw it unbounded). Rows from it on go: the
   * page is short, caught up, and they come live. */
  tp_writer_durable_bound(bound);
  size_t n = json_array_size(rows);
  for (size_t i = 0; bound[0] && i < n; i++) {
    const char *id = json_string_value(json_object_get(json_array_get(rows, i), "id"));
    if (id && strcmp(id, bound) >= 0) {
      n = i;
      break;
    }
  }
  bool full = false;
  for (size_t i = 0; i < n; i++) {
    json_t *row = json_array_get(rows, i);
    const char *id = json_string_value(json_object_get(row, "id"));
    const char *type = json_string_value(json_object_get(row, "type"));
    const char *data = json_string_value(json_object_get(row, "data"));
    if (!id || !type || !data)
      continue;
    const char *oid = NULL;
    json_t *ev = NULL;
    if (c->nobjects) {
      ev = tp_json_loads(data);
      oid = object_id_of(ev);
    }
    if (conn_wants(c, type, oid)) {
      size_t ml;
      char *m = event_msg(data, strlen(data), &ml);
      /* Bounded by bytes, not only by rows: a page of the largest events
       * (30 KB each) held several send buffers for a client that does not
       * read. The rest waits for the next page (replay_ready). One event
       * always goes when nothing is queued. */
      size_t queued = wslay_event_get_queued_msg_length(c->ws);
      if (m && queued > 0 && queued + ml > (size_t)cfg.send_buffer_bytes) {
        free(m);
        json_decref(ev);
        full = true;
        break;
      }
      if (m)
        send_text(c, m, ml);
      free(m);
      tp_metric_inc("turnpike_stream_replayed_events_total", NULL, 1);
    }
    tp_scopy(c->replay_last, sizeof c->replay_last, id);
    json_decref(ev);
  }
  json_decref(rows);
  if (n < TP_STREAM_REPLAY_PAGE && !full)
    c->replaying = false;
}

/* A page of the resume may be read now: the client has taken at least half
 * of its bound. */
static bool replay_ready(const struct conn *c)
{
  return c->replaying && !c->closing && !c->dead &&
         wslay_event_get_queued_msg_length(c->ws) <= (size_t)cfg.send_buffer_bytes / 2;
}

static bool valid_token_chars(const char *s, size_t max)
{
  size_t n = strlen(s);
  if (n == 0 || n >= max)
    return false;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
          *s == '.' || *s == '*' || *s == '-'))
      return false;
  return true;
}

/* A text message from the client: only "subscribe" is defined. */
static void on_client_message(struct conn *c, const uint8_t *data, size_t len)
{
  json_error_t jerr;
  json_t *m = json_loadb((const char *)data, len, 0, &jerr);
  const char *type = json_string_value(json_object_get(m, "type"));
  if (!json_is_object(m) || !type) {
    json_decref(m);
    send_error(c, "invalid_message", "Messages are JSON objects with a \"type\".");
    return;
  }
  if (strcmp(type, "subscribe") != 0) {
    json_decref(m);
    send_error(c, "unknown_type", "Unknown message type; only \"subscribe\" is defined.");
    return;
  }
  json_t *events = json_object_get(m, "events");
  json_t *objects = json_object_get(m, "objects");
  json_t *last = json_object_get(m, "last_event_id");
  const char *bad = NULL;
  if (!json_is_array(events) || json_array_size(events) == 0 || json_array_size(events) > TP_STREAM_MAX_PATTERNS)
    bad = "\"events\" must be a non-empty array of at most 64 event types or patterns.";
  for (size_t i = 0; !bad && i < json_array_size(events); i++) {
    const char *p = json_string_value(json_array_get(events, i));
    if (!p || !valid_token_chars(p, sizeof c->patterns[0]) ||
        (strchr(p, '*') && !(strcmp(p, "*") == 0 || (strlen(p) >= 2 && strcmp(p + strlen(p) - 2, ".*") == 0 &&
                                                     strchr(p, '*') == p + strlen(p) - 1))))
      bad = "Each event pattern is \"*\", \"prefix.*\" or an exact event type.";
  }
  if (!bad && objects && !json_is_null(objects)) {
    if (!json_is_array(objects) || json_array_size(objects) > TP_STREAM_MAX_OBJECTS)
      bad = "\"objects\" must be an array of at most 256 object ids.";
    for (size_t i = 0; !bad && i < json_array_size(objects); i++) {
      const char *o = json_string_value(json_array_get(objects, i));
      if (!o || !valid_token_chars(o, 64) || strchr(o, '*'))
        bad = "Each entry of \"objects\" is an object id like pi_123.";
    }
  }
  const char *last_id = NULL;
  if (!bad && last && !json_is_null(last)) {
    last_id = json_string_value(last);
    if (!last_id || strncmp(last_id, "evt_", 4) != 0 || !valid_token_chars(last_id, 64) || strchr(last_id, '*'))
      bad = "\"last_event_id\" must be an event id (evt_...).";
  }
  if (bad) {
    json_decref(m);
    send_error(c, "invalid_subscription", bad);
    return;
  }
  c->npatterns = 0;
  for (size_t i = 0; i < json_array_size(events); i++)
    tp_scopy(c->patterns[c->npatterns++], sizeof c->patterns[0], json_string_value(json_array_get(events, i)));
  free(c->objects);
  c->objects = NULL;
  c->nobjects = 0;
  size_t no = json_array_size(objects);
  if (no) {
    c->objects = calloc(no, sizeof *c->objects);
    for (size_t i = 0; c->objects && i < no; i++)
      snprintf(c->objects[c->nobjects++], 64, "%s", json_string_value(json_array_get(objects, i)));
  }
  c->subscribed = true;
  send_json(c, tp_pack("{s:s, s:O, s:o}", "type", "subscribed", "events", events, "objects",
                       no ? json_incref(objects) : json_array()));
  /* A resume reads the table from last_id a page at a time (replay_step,
   * from the loop); live events wait there meanwhile. Without one, live
   * events flow from now on (any skip of an earlier resume stays). */
  if (last_id) {
    c->replaying = true;
    c->replay_checked = false;
    tp_scopy(c->replay_last, sizeof c->replay_last, last_id);
  }
  json_decref(m);
}

static void ws_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg, void *user)
{
  (void)ctx;
  struct conn *c = user;
  if (arg->opcode == WSLAY_PONG)
    c->ping_outstanding = false;
  else if (arg->opcode == WSLAY_TEXT_FRAME && !c->closing && !tp_utf8_valid(arg->msg, arg->msg_length))
    conn_close(c, 1007, "text messages must be UTF-8"); /* RFC 6455 8.1: fail the connection */
  else if (arg->opcode == WSLAY_TEXT_FRAME && !c->closing)
    on_client_message(c, arg->msg, arg->msg_length);
  else if (arg->opcode == WSLAY_BINARY_FRAME && !c->closing)
    conn_close(c, 1003, "binary messages are not accepted");
}

/* A close frame whose payload is one byte (a status code is two) is a
 * protocol error (RFC 6455 5.5.1), which wslay would read as "no status"
 * and echo: answer it with 1002 first (wslay then sends nothing else). */
static void ws_on_frame_start(wslay_event_context_ptr ctx, const struct wslay_event_on_frame_recv_start_arg *arg,
                              void *user)
{
  (void)user;
  if (arg->opcode == WSLAY_CONNECTION_CLOSE && arg->payload_length == 1)
    wslay_event_queue_close(ctx, 1002, (const uint8_t *)"close payload of one byte", 25);
}

static const struct wslay_event_callbacks ws_callbacks = {ws_recv, ws_send, ws_genmask, ws_on_frame_start, NULL, NULL,
                                                          ws_on_msg};

/* ---- the stream thread ---------------------------------------------------------- */
static void conn_free(struct conn *c)
{
  if (c->fd >= 0)
    epoll_ctl(S.epfd, EPOLL_CTL_DEL, c->fd, NULL);
  if (c->urh)
    MHD_upgrade_action(c->urh, MHD_UPGRADE_ACTION_CLOSE); /* closes the socket */
  if (c->ws)
    wslay_event_context_free(c->ws);
  free(c->extra);
  free(c->objects);
  free_cred(&c->cred);
  slot_put(c->merchant);
  free(c);
  tp_metric_add("turnpike_stream_connections", NULL, -1);
}

/* Read and write what the socket allows; mark dead when finished. */
static void conn_pump(struct conn *c)
{
  if (c->dead)
    return;
  c->read_budget = READ_BUDGET_BYTES;
  if (wslay_event_want_read(c->ws) && !over_bound(c) && wslay_event_recv(c->ws) != 0) {
    if (!c->io_failed) {
      /* The peer broke the framing in a way wslay gives up on (a control
       * frame over 125 bytes or fragmented, a length with its top bit set
       * or not in its shortest form). wslay has queued a close without a
       * status code (ahead of what else is queued); RFC 6455 7.1.7 wants
       * 1002. Unless a frame is half written (its rest must come first,
       * then wslay's close), the 1002 close goes out instead, written here;
       * what was queued is dropped, as it would be after wslay's close. */
      close_count(c, 1002, "protocol error");
      if (!c->frame_open) {
        static const uint8_t f[] = {0x88, 16, 0x03, 0xEA, 'p', 'r', 'o', 't', 'o', 'c', 'o', 'l', ' ', 'e', 'r', 'r',
                                    'o', 'r'};
        ssize_t w = send(c->fd, f, sizeof f, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
      } else {
        wslay_event_send(c->ws);
      }
    }
    c->dead = true;
    return;
  }
  if (c->close_owed && wslay_event_get_queued_msg_count(c->ws) == 0)
    conn_close(c, c->close_code, c->close_reason);
  if (wslay_event_want_write(c->ws) && wslay_event_send(c->ws) != 0) {
    c->dead = true;
    return;
  }
  /* A close wslay sent itself: a message over the size limit (1009),
   * text that is not UTF-8 (1007), or the echo of the client's close
   * (its code; 1005 for none). */
  if (!c->close_counted && wslay_event_get_close_sent(c->ws)) {
    uint16_t code = wslay_event_get_status_code_sent(c->ws);
    bool echo = wslay_event_get_close_received(c->ws) && code == wslay_event_get_status_code_received(c->ws);
    close_count(c, code,
                echo           ? "closed by the client"
                : code == 1007 ? "invalid UTF-8"
                : code == 1009                          ? "message too big"
                                                        : "protocol error");
  }
  if (c->close_owed && wslay_event_get_queued_msg_count(c->ws) == 0) {
    conn_close(c, c->close_code, c->close_reason);
    if (wslay_event_send(c->ws) != 0) {
      c->dead = true;
      return;
    }
  }
  if (!wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws)) {
    c->dead = true; /* close handshake done */
    return;
  }
  /* Over its bound a client is not read, and a half-close then (RDHUP, level
   * triggered) would wake the loop for nothing until the ping timeout: not
   * asked for either until the queue drains. */
  uint32_t want = over_bound(c) ? 0 : EPOLLRDHUP;
  if (wslay_event_want_read(c->ws) && !over_bound(c))
    want |= EPOLLIN;
  if (wslay_event_want_write(c->ws))
    want |= EPOLLOUT;
  if (want != c->epoll_events) {
    struct epoll_event ee = {.events = want, .data.ptr = c};
    epoll_ctl(S.epfd, EPOLL_CTL_MOD, c->fd, &ee);
    c->epoll_events = want;
  }
}

static void take_pending(void)
{
  pthread_mutex_lock(&S.mu);
  struct conn *p = S.pending;
  S.pending = NULL;
  pthread_mutex_unlock(&S.mu);
  while (p) {
    struct conn *c = p;
    p = p->next;
    int fl = fcntl(c->fd, F_GETFL);
    fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
    int one = 1; /* events are small and latency matters: no Nagle delay */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int sb = (int)cfg.sndbuf;
    if (sb > 0)
      setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb);
    c->epoll_events = EPOLLIN | EPOLLRDHUP;
    struct epoll_event ee = {.events = c->epoll_events, .data.ptr = c};
    if (wslay_event_context_server_init(&c->ws, &ws_callbacks, c) != 0)
      c->dead = true;
    else if (epoll_ctl(S.epfd, EPOLL_CTL_ADD, c->fd, &ee) != 0)
      c->dead = true;
    else
      wslay_event_config_set_max_recv_msg_length(c->ws, TP_STREAM_MAX_RECV_MSG);
    c->next_ping_ms = tp_mono_ms() + cfg.ping_interval_ms;
    c->next = S.conns;
    S.conns = c;
    if (!c->dead)
      conn_pump(c); /* bytes MHD already read (extra_in) */
  }
}

/* Hand every queued committed event to the clients that want it. */
static void fan_out(void)
{
  pthread_mutex_lock(&S.mu);
  struct ev *e = S.head;
  bool overflow = S.overflow;
  tp_metric_set("turnpike_stream_event_queue_depth", NULL, (int64_t)S.qlen);
  S.head = S.tail = NULL;
  S.qlen = 0;
  S.overflow = false;
  pthread_mutex_unlock(&S.mu);
  if (overflow) {
    tp_log(TP_LOG_WARN, "stream_queue_overflow", "{s:I}", "max", (json_int_t)cfg.queue_max);
    for (struct conn *c = S.conns; c; c = c->next) {
      conn_close(c, 1013, "event queue overflow: reconnect with last_event_id");
      conn_pump(c); /* out now: a client sending nothing had its close sit until the 2 s close deadline */
    }
  }
  bool need_obj = false;
  for (struct conn *c = S.conns; c; c = c->next)
    need_obj |= c->nobjects > 0;
  while (e) {
    struct ev *next = e->next;
    json_t *parsed = need_obj ? tp_json_loadb(e->json, e->len) : NULL;
    const char *oid = parsed ? object_id_of(parsed) : NULL;
    char *msg = NULL;
    size_t ml = 0;
    for (struct conn *c = S.conns; c; c = c->next) {
      if (!c->subscribed || c->closing || c->dead || strcmp(c->merchant, e->merchant) != 0 ||
          !conn_wants(c, e->type, oid))
        continue;
      /* A resume still reading reads this one from the table too; one that
       * has caught up sent it already if its id is not past the replay.
       * (Event ids sort in commit order: tp_cs_number_events.) */
      if (c->replaying || (c->replay_last[0] && strcmp(e->id, c->replay_last) <= 0))
        continue;
      if (!msg)
        msg = event_msg(e->json, e->len, &ml);
      if (msg) {
        deliver(c, msg, ml);
        conn_pump(c);
      }
    }
    free(msg);
    json_decref(parsed);
    free(e);
    e = next;
  }
}

static void timers(int64_t now)
{
  for (struct conn *c = S.conns; c; c = c->next) {
    if (c->dead)
      continue;
    if (c->closing && now > c->close_deadline_ms) {
      c->dead = true; /* the peer never finished the close handshake */
      continue;
    }
    if (!c->closing && c->cred && now >= c->next_auth_ms) {
      c->next_auth_ms = now + TP_STREAM_RECHECK_MS;
      enum tp_err e = tp_credential_check(c->cred, c->merchant);
      if (e != TP_ERR_OK && e != TP_ERR_STORE_UNAVAILABLE) {
        tp_metric_inc("turnpike_stream_rejected_total", "reason=\"credential\"", 1);
        conn_close(c, 1008, e == TP_ERR_API_KEY_EXPIRED || e == TP_ERR_OAUTH_TOKEN_EXPIRED ? "credential expired"
                                                                                          : "credential revoked");
        conn_pump(c);
        continue;
      }
    }
    if (!c->closing && now >= c->next_ping_ms) {
      if (c->ping_outstanding) {
        tp_metric_inc("turnpike_stream_ping_timeouts_total", NULL, 1);
        conn_close(c, 1001, "ping timeout");
      } else {
        struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"tp", 2};
        wslay_event_queue_msg(c->ws, &m);
        c->ping_outstanding = true;
      }
      c->next_ping_ms = now + cfg.ping_interval_ms;
      conn_pump(c);
    }
  }
}

static void reap(void)
{
  struct conn **pp = &S.conns;
  while (*pp) {
    struct conn *c = *pp;
    if (c->dead) {
      *pp = c->next;
      conn_free(c);
    } else
      pp = &c->next;
  }
}

static void *stream_main(void *arg)
{
  (void)arg;
  struct epoll_event evs[64];
  bool closing_all = false;
  int64_t all_deadline = 0;
  for (;;) {
    bool replays = false;
    for (struct conn *c = S.conns; c && !replays; c = c->next)
      replays = replay_ready(c);
    int n = epoll_wait(S.epfd, evs, 64, replays ? 0 : TP_STREAM_TICK_MS);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.ptr == NULL) {
        uint64_t v;
        ssize_t rd = read(S.efd, &v, sizeof v);
        (void)rd;
        continue;
      }
      struct conn *c = evs[i].data.ptr;
      if (evs[i].events & (EPOLLERR | EPOLLHUP))
        c->dead = true;
      conn_pump(c);
    }
    take_pending();
    fan_out();
    /* Resumes, a page each per turn, so that one does not hold up the rest. */
    for (struct conn *c = S.conns; c; c = c->next)
      if (replay_ready(c)) {
        replay_step(c);
        conn_pump(c);
      }
    int64_t now = tp_mono_ms();
    timers(now);
    pthread_mutex_lock(&S.mu);
    bool stop = S.stopping;
    pthread_mutex_unlock(&S.mu);
    if (stop && !closing_all) {
      closing_all = true;
      all_deadline = now + 1000;
      for (struct conn *c = S.conns; c; c = c->next) {
        conn_close(c, 1001, "server shutting down");
        conn_pump(c);
      }
    }
    if (closing_all && now > all_deadline)
      for (struct conn *c = S.conns; c; c = c->next)
        c->dead = true;
    reap();
    if (closing_all && !S.conns)
      break;
  }
  return NULL;
}

/* ---- the upgrade ----------------------------------------------------------------- */
/* MHD thread, once the 101 is sent: the socket is ours now. */
static void on_upgrade(void *cls, struct MHD_Connection *connection, void *con_cls, const char *extra_in,
                       size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
  (void)connection;
  (void)con_cls;
  struct handshake *h = cls;
  char merchant[64];
  pthread_mutex_lock(&S.mu);
  handshake_unlink(h);
  h->upgraded = true;
  tp_scopy(merchant, sizeof merchant, h->merchant);
  char *cred = h->cred;
  h->cred = NULL;
  bool hide_reports = h->hide_reports;
  bool last = --h->refs == 0;
  pthread_mutex_unlock(&S.mu);
  if (last)
    free(h);
  struct conn *c = calloc(1, sizeof *c);
  if (c && extra_in_size) {
    c->extra = malloc(extra_in_size);
    if (c->extra) {
      memcpy(c->extra, extra_in, extra_in_size);
      c->extra_len = extra_in_size;
    } else {
      free(c);
      c = NULL;
    }
  }
  if (!c) {
    free_cred(&cred);
    MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
    slot_put(merchant);
    return;
  }
  c->fd = sock;
  c->urh = urh;
  c->cred = cred;
  c->hide_reports = hide_reports;
  c->next_auth_ms = tp_mono_ms() + TP_STREAM_RECHECK_MS;
  tp_scopy(c->merchant, sizeof c->merchant, merchant);
  /* Checked in the same critical section as the push, so the stream
   * thread, which leaves only once stopping is set, takes every push. */
  pthread_mutex_lock(&S.mu);
  bool stopping = S.stopping || !S.running;
  if (!stopping) {
    tp_metric_add("turnpike_stream_connections", NULL, 1);
    c->next = S.pending;
    S.pending = c;
  }
  pthread_mutex_unlock(&S.mu);
  if (stopping) {
    MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
    slot_put(merchant);
    free(c->extra);
    free_cred(&c->cred);
    free(c);
    return;
  }
  wake();
}

/* Sec-WebSocket-Key: 16 bytes in base64 (RFC 6455 4.1), i.e. 22 characters
 * of the alphabet and "==". */
static bool ws_key_valid(const char *key)
{
  if (!key || strlen(key) != 24 || key[22] != '=' || key[23] != '=')
    return false;
  for (int i = 0; i < 22; i++)
    if (!((key[i] >= 'A' && key[i] <= 'Z') || (key[i] >= 'a' && key[i] <= 'z') || (key[i] >= '0' && key[i] <= '9') ||
          key[i] == '+' || key[i] == '/'))
      return false;
  return true;
}

static bool header_has_token(struct tp_req *r, const char *name, const char *token)
{
  const char *v = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
  if (!v)
    return false;
  size_t tl = strlen(token);
  for (const char *p = v; *p;) {
    while (*p == ' ' || *p == ',' || *p == '\t')
      p++;
    const char *e = p;
    while (*e && *e != ',')
      e++;
    const char *te = e;
    while (te > p && (te[-1] == ' ' || te[-1] == '\t'))
      te--;
    if ((size_t)(te - p) == tl && strncasecmp(p, token, tl) == 0)
      return true;
    p = e;
  }
  return false;
}

/* Caller holds S.mu. Unlinking twice is harmless. */
static void handshake_unlink(struct handshake *h)
{
  if (h->prev)
    h->prev->next = h->next;
  else if (S.handshakes == h)
    S.handshakes = h->next;
  if (h->next)
    h->next->prev = h->prev;
  h->next = h->prev = NULL;
}

/* The request is complete: if the upgrade never happened, free its slot. */
static void handshake_release(void *arg)
{
  struct handshake *h = arg;
  pthread_mutex_lock(&S.mu);
  if (!h->upgraded) {
    handshake_unlink(h);
    slot_put(h->merchant);
    /* The 101 never went (the client left first): on_upgrade will not
     * run, and its reference goes too (the record, and its copy of the
     * key, leaked). */
    h->refs--;
  }
  bool last = --h->refs == 0;
  pthread_mutex_unlock(&S.mu);
  if (last) {
    free_cred(&h->cred);
    free(h);
  }
}

/* GET /v1/turnpike/stream */
void tp_h_stream(struct tp_req *r)
{
  char *token_cred = NULL; /* a stream token's: the key it was made with */
  const char *key = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Sec-WebSocket-Key");
  const char *ver = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Sec-WebSocket-Version");
  /* RFC 6455 4.2.1/4.4: not an upgrade to version 13 is 426 (with the
   * version and protocol to use), an upgrade with a bad key 400. */
  if (!header_has_token(r, "Upgrade", "websocket") || !header_has_token(r, "Connection", "upgrade") || !ver ||
      strcmp(ver, "13") != 0) {
    tp_reply_error(r, TP_ERR_WEBSOCKET_UPGRADE_REQUIRED, NULL, NULL);
    return;
  }
  /* RFC 6455 4.1: the handshake is HTTP/1.1 or higher (libmicrohttpd will
   * not upgrade a 1.0 connection: it was logged 101, never answered). */
  if (strcmp(r->method, "GET") != 0 || !ws_key_valid(key) || !r->http11) {
    tp_reply_error(r, TP_ERR_WEBSOCKET_HANDSHAKE_INVALID, NULL, NULL);
    return;
  }
  const char *tok = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "token");
  if (tok) {
    /* A token is a credential: guesses count toward the address's block,
     * as failed keys do. */
    if (tp_req_login_blocked(r))
      return;
    bool expired;
    if (!tp_stream_token_verify(tok, r->merchant.id, sizeof r->merchant.id, &expired)) {
      /* An expired token is one we made (a browser reconnecting with its
       * old URL), not a guess: it does not count toward the block, as an
       * expired key does not (tp_req_login_failed). */
      if (!expired)
        tp_req_login_failed(r, TP_ERR_AUTH_INVALID_KEY);
      tp_reply_error(r, TP_ERR_AUTH_INVALID_KEY, NULL,
                     expired ? "Expired stream token: ask for a new one." : "Invalid stream token.");
      return;
    }
    r->authed = true;
    token_cred = minted_cred(tok);
    enum tp_err e = token_cred ? tp_credential_check(token_cred, r->merchant.id) : TP_ERR_AUTH_INVALID_KEY;
    if (e != TP_ERR_OK && e != TP_ERR_STORE_UNAVAILABLE) {
      /* the key it was made with has expired or gone since */
      free_cred(&token_cred);
      tp_reply_error(r, TP_ERR_AUTH_INVALID_KEY, NULL,
                     "Expired or replaced stream token (its key has expired, or 64 newer ones were made): ask "
                     "for a new one.");
      return;
    }
  } else if (tp_req_browser_basic(r)) {
    /* A browser sends Origin on every WebSocket handshake and can set no
     * Authorization header there: Basic credentials with another site's
     * Origin are ones the browser kept (typed at the 401 prompt) and
     * replays to any page that opens the stream (cross-site WebSocket
     * hijacking). A page uses a stream token. Clients that name the
     * gateway itself as their Origin (Python's websocket-client, Netty do,
     * by default) are not refused. */
    tp_reply_error(r, TP_ERR_STREAM_BROWSER_BASIC_AUTH, NULL, NULL);
    return;
  } else if (!tp_req_access(r) || !tp_req_require_scope(r, TP_SCOPE_PAYMENTS_READ)) {
    /* a key as on any route: its scope (admin, as for stream tokens), rate
     * limit, failed logins; and payments:read, which reads events */
    return;
  }
  pthread_mutex_lock(&S.mu);
  bool up = S.running && !S.stopping;
  pthread_mutex_unlock(&S.mu);
  if (!up || tp_app.shutting_down) {
    free_cred(&token_cred);
    tp_reply_error(r, TP_ERR_SHUTTING_DOWN, NULL, NULL);
    return;
  }
  enum tp_err full = slot_take(r->merchant.id);
  if (full != TP_ERR_OK) {
    free_cred(&token_cred);
    tp_metric_inc("turnpike_stream_rejected_total",
                  full == TP_ERR_WEBSOCKET_ACCOUNT_CONNECTION_LIMIT ? "reason=\"account_connection_limit\""
                                                                   : "reason=\"connection_limit\"",
                  1);
    tp_reply_error(r, full, NULL, NULL);
    return;
  }
  /* Sec-WebSocket-Accept = base64(SHA1(key + GUID)) (RFC 6455 §4.2.2) */
  char buf[64];
  unsigned char sha[SHA_DIGEST_LENGTH];
  snprintf(buf, sizeof buf, "%s%s", key, WS_GUID);
  SHA1((const unsigned char *)buf, strlen(buf), sha);
  unsigned char accept[32];
  EVP_EncodeBlock(accept, sha, SHA_DIGEST_LENGTH);

  struct handshake *h = calloc(1, sizeof *h);
  struct MHD_Response *resp = h ? MHD_create_response_for_upgrade(on_upgrade, h) : NULL;
  if (!resp) {
    free(h);
    free_cred(&token_cred);
    slot_put(r->merchant.id);
    tp_reply_error(r, TP_ERR_INTERNAL, NULL, NULL);
    return;
  }
  tp_scopy(h->merchant, sizeof h->merchant, r->merchant.id);
  if (!tok) {
    h->cred = tp_req_credential(r);
    h->hide_reports = !(r->scopes & TP_SCOPE_REPORTS_READ);
  } else {
    h->cred = token_cred; /* the key the token was made with */
    token_cred = NULL;
  }
  h->refs = 2;
  r->ctx = h;
  r->ctx_free = handshake_release;
  pthread_mutex_lock(&S.mu);
  h->next = S.handshakes;
  if (S.handshakes)
    S.handshakes->prev = h;
  S.handshakes = h;
  pthread_mutex_unlock(&S.mu);
  MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "websocket");
  MHD_add_response_header(resp, "Sec-WebSocket-Accept", (const char *)accept);
  MHD_add_response_header(resp, "Request-Id", r->request_id);
  r->status = MHD_HTTP_SWITCHING_PROTOCOLS;
  r->raw_resp = resp;
}

/* ---- start / stop ------------------------------------------------------------------ */
int tp_stream_start(void)
{
  cfg.max_connections = tp_config_int("stream", "max_connections", cfg.max_connections, 1, 100000);
  cfg.max_per_account = tp_config_int("stream", "max_connections_per_account", cfg.max_per_account, 1, 100000);
  cfg.ping_interval_ms = tp_config_int("stream", "ping_interval_ms", cfg.ping_interval_ms, 100, 3600000);
  cfg.send_buffer_bytes = tp_config_int("stream", "send_buffer_bytes", cfg.send_buffer_bytes, 4096, 1 << 30);
  cfg.sndbuf = tp_config_int("stream", "socket_sndbuf", cfg.sndbuf, 0, 1 << 26);
  cfg.replay_max = tp_config_int("stream", "replay_max", cfg.replay_max, 1, 100000);
  cfg.token_ttl_s = tp_config_int("stream", "token_ttl_s", cfg.token_ttl_s, 5, 3600);
  cfg.queue_max = tp_config_int("stream", "queue_max", cfg.queue_max, 16, 1 << 22);
  tp_random(S.token_key, sizeof S.token_key);
  tp_metric_help("turnpike_stream_connections", "Open WebSocket event stream connections.");
  tp_metric_help("turnpike_stream_messages_sent_total", "Messages queued to stream clients.");
  tp_metric_help("turnpike_stream_closed_total", "Stream connections closed, by close code (the server's, or the client's echoed).");
  tp_metric_help("turnpike_stream_slow_client_closes_total", "Stream clients closed because their send buffer was full.");
  tp_metric_help("turnpike_stream_event_queue_depth", "Events waiting for the stream thread to fan them out to clients.");
  tp_metric_set("turnpike_stream_connections", NULL, 0);
  tp_metric_inc("turnpike_stream_slow_client_closes_total", NULL, 0);
  tp_metric_inc("turnpike_stream_rejected_total", "reason=\"credential\"", 0);
  tp_metric_inc("turnpike_stream_rejected_total", "reason=\"connection_limit\"", 0);
  S.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  S.epfd = epoll_create1(EPOLL_CLOEXEC);
  if (S.efd < 0 || S.epfd < 0)
    return -1;
  struct epoll_event ee = {.events = EPOLLIN, .data.ptr = NULL};
  if (epoll_ctl(S.epfd, EPOLL_CTL_ADD, S.efd, &ee) != 0)
    return -1;
  if (tp_writer_subscribe(on_event, NULL) != 0) {
    tp_log(TP_LOG_ERROR, "stream_subscribe_failed", NULL);
    return -1;
  }
  S.running = true;
  S.stopping = false;
  if (pthread_create(&S.thread, NULL, stream_main, NULL) != 0) {
    S.running = false;
    return -1;
  }
  pthread_setname_np(S.thread, "tp-stream");
  return 0;
}

void tp_stream_shutdown(void)
{
  pthread_mutex_lock(&S.mu);
  bool was = S.running && !S.stopping;
  S.stopping = true;
  pthread_mutex_unlock(&S.mu);
  if (!was)
    return;
  wake();
  pthread_join(S.thread, NULL);
}

void tp_stream_stop(void)
{
  tp_stream_shutdown();
  pthread_mutex_lock(&S.mu);
  S.running = false;
  struct ev *e = S.head;
  S.head = S.tail = NULL;
  S.qlen = 0;
  struct handshake *h = S.handshakes;
  S.handshakes = NULL;
  struct conn *p = S.pending;
  S.pending = NULL;
  pthread_mutex_unlock(&S.mu);
  while (e) {
    struct ev *n = e->next;
    free(e);
    e = n;
  }
  while (h) {
    struct handshake *n = h->next;
    free_cred(&h->cred);
    free(h);
    h = n;
  }
  while (p) {
    struct conn *n = p->next;
    MHD_upgrade_action(p->urh, MHD_UPGRADE_ACTION_CLOSE);
    free(p->extra);
    free(p);
    p = n;
  }
  if (S.epfd >= 0)
    close(S.epfd);
  if (S.efd >= 0)
    close(S.efd);
  S.epfd = S.efd = -1;
}
