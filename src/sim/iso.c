/* The simulator's ISO 8583 acquirer host: TCP, each message framed by a
 * 2-byte big-endian length, decoded with src/core/iso8583.c. One epoll
 * thread reads and decodes; answers are written by whichever thread has them
 * ready (journal writer, timer), so they go out in completion order, not in
 * request order, like a real host with many messages in flight.
 *
 * Lifetime: a connection is reference-counted (one for the epoll thread, one
 * per message in flight), so a late answer for a closed connection is simply
 * dropped. */
#include "sim/sim.h"
#include "cli.h"
#include "core/currency.h"
#include "core/iso8583.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define ISO_MAX_CONNS 1024
#define ISO_OUT_MAX (1024 * 1024) /* unsent answers per connection before we drop it */
#define ISO_IN_MAX (2 + TP_ISO_MAX_MSG)
#define ISO_INFLIGHT_MAX 10000 /* messages in flight per connection; past it: 39=91 */

struct iconn {
  int fd;
  atomic_int refs;
  pthread_mutex_t mu; /* fd, closed, out */
  bool closed;
  uint8_t in[ISO_IN_MAX];
  size_t in_len;
  uint8_t *out;
  size_t out_len, out_cap;
  bool want_out;
  char peer[64];
  struct iconn *prev, *next; /* the epoll thread's list */
};

/* One message in flight. */
struct pending {
  struct tp_sim_waiter w;
  struct iconn *c;
  struct tp_iso_msg req; /* field 2 and 14 removed: no card data kept */
  bool drop;             /* injected timeout: never answer */
  int64_t delay_ms;
  uint8_t frame[2 + TP_ISO_MAX_MSG];
  int frame_len;
};

static int lfd = -1, efd = -1, wakefd = -1;
static pthread_t thread;
static bool running;
static atomic_bool stop_flag;
static char proc_name[TP_SIM_NAME_MAX];
static struct iconn *conns;
static unsigned n_conns;

static void conn_unref(struct iconn *c)
{
  if (atomic_fetch_sub(&c->refs, 1) == 1) {
    pthread_mutex_destroy(&c->mu);
    free(c->out);
    free(c);
  }
}

/* Close (epoll thread). */
static void conn_close(struct iconn *c, const char *why)
{
  pthread_mutex_lock(&c->mu);
  if (!c->closed) {
    c->closed = true;
    epoll_ctl(efd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
  }
  pthread_mutex_unlock(&c->mu);
  if (why)
    tp_log(TP_LOG_INFO, "sim_iso_close", "{s:s, s:s}", "peer", c->peer, "reason", why);
  if (c->prev)
    c->prev->next = c->next;
  else
    conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  n_conns--;
  conn_unref(c);
}

/* Caller holds c->mu. Writes what the socket takes; arms EPOLLOUT for the rest. */
static void flush_locked(struct iconn *c)
{
  while (c->out_len > 0 && !c->closed) {
    ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      memmove(c->out, c->out + n, c->out_len - (size_t)n);
      c->out_len -= (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        epoll_ctl(efd, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = true;
      }
      return;
    }
    /* The peer went away: drop what is queued; the epoll thread sees the close. */
    c->out_len = 0;
    return;
  }
  if (c->want_out && !c->closed) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(efd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = false;
  }
}

/* Queue a framed answer (any thread). */
static void conn_send(struct iconn *c, const uint8_t *buf, size_t len)
{
  pthread_mutex_lock(&c->mu);
  if (c->closed) {
    pthread_mutex_unlock(&c->mu);
    return;
  }
  if (c->out_len + len > ISO_OUT_MAX) {
    /* The peer does not read: shut it down, the epoll thread cleans up. */
    shutdown(c->fd, SHUT_RDWR);
    pthread_mutex_unlock(&c->mu);
    return;
  }
  if (c->out_len + len > c->out_cap) {
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + len)
      cap *= 2;
    uint8_t *nb = realloc(c->out, cap);
    if (!nb) {
      pthread_mutex_unlock(&c->mu);
      return;
    }
    c->out = nb;
    c->out_cap = cap;
  }
  memcpy(c->out + c->out_len, buf, len);
  c->out_len += len;
  flush_locked(c);
  pthread_mutex_unlock(&c->mu);
}

static void send_msg(struct iconn *c, const struct tp_iso_msg *m)
{
  uint8_t buf[2 + TP_ISO_MAX_MSG];
  int n = tp_iso_frame(m, buf, sizeof buf);
  if (n < 0) {
    tp_log(TP_LOG_ERROR, "sim_iso_pack", "{s:s}", "mti", m->mti);
    return;
  }
  conn_send(c, buf, (size_t)n);
}

/* Response MTI: third digit + 1 (0100 -> 0110, 0401 -> 0410 after masking the repeat). */
static void response_mti(const char *mti, char out[5])
{
  snprintf(out, 5, "%s", mti);
  if (out[3] == '1')
    out[3] = '0'; /* a repeat (0401) is answered like the original (0410) */
  out[2] = (char)(out[2] + 1);
}

static void copy_fields(struct tp_iso_msg *resp, const struct tp_iso_msg *req, const int *fields, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    const char *v = tp_iso_get(req, fields[i]);
    if (v)
      tp_iso_set(resp, fields[i], v);
  }
}

static const int echo_fields[] = {3, 4, 7, 11, 12, 13, 37, 41, 42, 49};

static void pending_free(struct pending *p)
{
  tp_iso_free(&p->req);
  conn_unref(p->c);
  free(p);
}

static void send_pending(void *arg)
{
  struct pending *p = arg;
  conn_send(p->c, p->frame, (size_t)p->frame_len);
  pending_free(p);
}

/* The answer is durable (journal writer thread): build it and send it now or later. */
static void on_durable(struct tp_sim_waiter *w, const char *response, bool ok)
{
  struct pending *p = (struct pending *)((char *)w - offsetof(struct pending, w));
  if (p->drop || !ok) {
    pending_free(p);
    return;
  }
  json_t *o = json_loads(response, 0, NULL);
  const char *status = json_string_value(json_object_get(o, "status"));
  const char *decline = json_string_value(json_object_get(o, "decline_code"));
  const char *code = json_string_value(json_object_get(o, "auth_code"));
  const char *op = json_string_value(json_object_get(o, "operation"));
  struct tp_iso_msg resp;
  char mti[5];
  response_mti(p->req.mti, mti);
  tp_iso_init(&resp, mti);
  copy_fields(&resp, &p->req, echo_fields, sizeof echo_fields / sizeof echo_fields[0]);
  /* Fields 4 and 49 say what the host holds, which for a repeated RRN is
   * the first message's, not the repeat's (a gateway checks them). */
  json_int_t held = json_integer_value(json_object_get(o, "amount"));
  const char *held_cur = json_string_value(json_object_get(o, "currency"));
  char f4[24], f49[4];
  if (op && strcmp(op, "reversal") != 0 && held > 0 && held_cur && tp_iso_currency_numeric(held_cur, f49) == 0) {
    snprintf(f4, sizeof f4, "%012lld", (long long)held);
    tp_iso_set(&resp, 4, f4);
    tp_iso_set(&resp, 49, f49);
  }
  if (op && !strcmp(op, "reversal"))
    tp_iso_set(&resp, 39, status && strcmp(status, "not_found") != 0 ? "00" : "25");
  else if (op && !strcmp(op, "capture"))
    tp_iso_set(&resp, 39, "00"); /* a refused capture is never stored */
  else if (op && !strcmp(op, "refund"))
    tp_iso_set(&resp, 39, status && !strcmp(status, "succeeded") ? "00" : "13"); /* over the captured remainder */
  else {
    bool approved = status && !strcmp(status, "approved");
    tp_iso_set(&resp, 39, approved ? "00" : tp_iso_f39_for_decline(decline ? decline : "do_not_honor"));
    if (approved && code)
      tp_iso_set(&resp, 38, code);
  }
  json_decref(o);
  p->frame_len = tp_iso_frame(&resp, p->frame, sizeof p->frame);
  tp_iso_free(&resp);
  if (p->frame_len < 0) {
    pending_free(p);
    return;
  }
  if (p->delay_ms > 0)
    tp_sim_timer_add(p->delay_ms, send_pending, p);
  else
    send_pending(p);
}

/* An immediate answer with only a response code (errors, 0810). */
static void answer_code(struct iconn *c, const struct tp_iso_msg *req, const char *f39)
{
  struct tp_iso_msg resp;
  char mti[5];
  response_mti(req->mti, mti);
  tp_iso_init(&resp, mti);
  static const int net_fields[] = {3, 4, 7, 11, 12, 13, 37, 41, 42, 49, 70};
  copy_fields(&resp, req, net_fields, sizeof net_fields / sizeof net_fields[0]);
  tp_iso_set(&resp, 39, f39);
  send_msg(c, &resp);
  tp_iso_free(&resp);
}

static bool has(const struct tp_iso_msg *m, const int *f, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (!tp_iso_get(m, f[i]))
      return false;
  return true;
}

/* Trim the right padding of an alphanumeric fixed field (37, 41). */
static void trimmed(const char *v, char *out, size_t cap)
{
  snprintf(out, cap, "%s", v ? v : "");
  size_t n = strlen(out);
  while (n > 0 && out[n - 1] == ' ')
    out[--n] = '\0';
}

/* One decoded message (epoll thread). Returns false to close the connection. */
static bool handle(struct iconn *c, struct tp_iso_msg *m)
{
  struct tp_sim_behaviour b;
  tp_sim_behaviour(proc_name, &b);
  if (b.outage)
    return false;
  const char *mti = m->mti;
  if (!strcmp(mti, "0800")) {
    answer_code(c, m, "00");
    return true;
  }
  const char *f3 = tp_iso_get(m, 3);
  /* A repeat (last digit 1: 0101, 0201, 0221, 0401, 0421) is the original
   * sent again; the RRN makes every one of them idempotent. 0420 is a
   * reversal advice: reversed like a 0400, answered 0430. */
  bool financial = !strcmp(mti, "0200") || !strcmp(mti, "0201");
  bool refund = financial && f3 && !strcmp(f3, "200000");
  bool auth = (!strcmp(mti, "0100") || !strcmp(mti, "0101") || financial) && !refund;
  bool advice = !strcmp(mti, "0220") || !strcmp(mti, "0221"); /* capture of a 0100 */
  bool rev = !strcmp(mti, "0400") || !strcmp(mti, "0401") || !strcmp(mti, "0420") || !strcmp(mti, "0421");
  if ((advice || auth) && f3 && strcmp(f3, "000000") != 0) {
    /* Field 3's first two digits are the transaction type: only goods and
     * services (00) is authorized or captured here, not a credit (20, but
     * as a refund), a balance inquiry (31) or cash (01). */
    answer_code(c, m, "12");
    return true;
  }
  if (!auth && !rev && !refund && !advice) {
    if (mti[2] == '0' || mti[2] == '2' || mti[2] == '4' || mti[2] == '6' || mti[2] == '8')
      answer_code(c, m, "12"); /* invalid transaction */
    return true;              /* responses from the peer are ignored */
  }
  static const int need_auth[] = {2, 4, 11, 37, 41, 49};
  static const int need_rev[] = {11, 37, 41};
  static const int need_linked[] = {4, 11, 37, 41, 48, 49}; /* capture, refund: no PAN, 48 = the auth's RRN */
  if (auth ? !has(m, need_auth, 6) : rev ? !has(m, need_rev, 3) : !has(m, need_linked, 6)) {
    answer_code(c, m, "30"); /* format error */
    return true;
  }
  if (b.reset_rate > 0 && tp_sim_rand() < b.reset_rate)
    return false;
  if (atomic_load(&c->refs) > ISO_INFLIGHT_MAX) {
    answer_code(c, m, "91"); /* overloaded: the peer sends faster than we commit */
    return true;
  }
  if (b.error_rate > 0 && tp_sim_rand() < b.error_rate) {
    answer_code(c, m, "96");
    return true;
  }
  bool timeout = b.timeout_rate > 0 && tp_sim_rand() < b.timeout_rate;
  if (timeout && b.timeout_before)
    return true; /* lost on the way in: never processed, never answered */

  char rrn[16], tid[16], pan[24] = "", cur[4] = "", orig[16] = "";
  trimmed(tp_iso_get(m, 37), rrn, sizeof rrn);
  trimmed(tp_iso_get(m, 41), tid, sizeof tid);
  if (!rev && !auth) {
    const char *f48 = tp_iso_get(m, 48);
    if (strlen(f48) >= sizeof orig) {
      answer_code(c, m, "30"); /* not an RRN */
      return true;
    }
    trimmed(f48, orig, sizeof orig);
  }
  if (!rrn[0] || (!rev && !auth && !orig[0])) {
    answer_code(c, m, "30");
    return true;
  }
  struct tp_sim_request q;
  memset(&q, 0, sizeof q);
  q.processor = proc_name;
  q.iso = true;
  q.reference = rrn;
  q.terminal = tid;
  q.payment = rrn;
  q.b = &b;
  q.amount = tp_iso_get(m, 4) ? strtoll(tp_iso_get(m, 4), NULL, 10) : 0;
  const char *f49 = tp_iso_get(m, 49);
  const char *alpha = f49 ? tp_iso_currency_alpha(f49) : NULL;
  if (alpha)
    tp_scopy(cur, sizeof cur, alpha);
  if (auth) {
    if (strlen(tp_iso_get(m, 2)) < 12) {
      answer_code(c, m, "14"); /* invalid card number */
      return true;
    }
    if (!alpha || q.amount <= 0 || q.amount > TP_AMOUNT_MAX) {
      answer_code(c, m, alpha ? "13" : "30"); /* 13 invalid amount (REST's limit too) */
      return true;
    }
    q.op = TP_SIM_AUTHORIZE;
    q.capture = mti[1] == '2';
    tp_scopy(pan, sizeof pan, tp_iso_get(m, 2));
    q.pan = pan;
    const char *f14 = tp_iso_get(m, 14); /* expiration date, YYMM */
    if (f14 && strlen(f14) == 4 && strspn(f14, "0123456789") == 4) {
      q.exp_year = 2000 + (f14[0] - '0') * 10 + (f14[1] - '0');
      q.exp_month = (f14[2] - '0') * 10 + (f14[3] - '0');
    }
  } else if (refund || advice) {
    if (!alpha || q.amount <= 0 || q.amount > TP_AMOUNT_MAX) {
      answer_code(c, m, alpha ? "13" : "30");
      return true;
    }
    q.op = refund ? TP_SIM_REFUND : TP_SIM_CAPTURE;
    q.target = orig; /* the authorization's RRN, on the same terminal */
  } else {
    q.op = TP_SIM_REVERSAL;
    q.target = rrn;
    const char *f90 = tp_iso_get(m, 90);
    /* Field 90 (original MTI, STAN, ...) is only a cross-check: the RRN decides. */
    if (f90 && strncmp(f90, "0100", 4) != 0 && strncmp(f90, "0200", 4) != 0 && strncmp(f90, "0220", 4) != 0)
      tp_log(TP_LOG_WARN, "sim_iso_reversal_f90", "{s:s}", "rrn", rrn);
  }
  memcpy(q.currency, cur, sizeof q.currency);

  struct pending *p = calloc(1, sizeof *p);
  if (!p)
    return false;
  p->c = c;
  atomic_fetch_add(&c->refs, 1);
  p->req = *m; /* take the fields over */
  tp_iso_init(m, NULL);
  tp_iso_set(&p->req, 2, NULL);
  tp_iso_set(&p->req, 14, NULL);
  tp_iso_set(&p->req, 35, NULL);
  tp_iso_set(&p->req, 52, NULL);
  p->drop = timeout;
  p->delay_ms = tp_sim_latency(&b);
  p->w.fn = on_durable;
  char *resp = NULL;
  bool replayed;
  enum tp_sim_result res = tp_sim_process(&q, &p->w, &resp, &replayed);
  memset(pan, 0, sizeof pan);
  switch (res) {
  case TP_SIM_DONE:
    on_durable(&p->w, resp, true);
    break;
  case TP_SIM_WAIT:
    break;
  default:
    /* Refusals change nothing and are not stored: a repeat is decided again. */
    if (res == TP_SIM_NOT_FOUND)
      answer_code(c, &p->req, "25"); /* unable to locate the authorization */
    else if (res == TP_SIM_TOO_LARGE)
      answer_code(c, &p->req, "13"); /* over the authorized amount */
    else if (replayed)
      answer_code(c, &p->req, "94"); /* the RRN was used for another kind of message */
    else
      answer_code(c, &p->req, "12"); /* the authorization's state forbids it */
    pending_free(p);
    break;
  }
  free(resp);
  return true;
}

/* Decode every complete frame in c->in. False closes the connection. */
static bool consume(struct iconn *c)
{
  size_t off = 0;
  bool ok = true;
  while (c->in_len - off >= 2) {
    size_t len = ((size_t)c->in[off] << 8) | c->in[off + 1];
    if (len < 12 || len > TP_ISO_MAX_MSG) {
      tp_log(TP_LOG_ERROR, "sim_iso_malformed", "{s:s, s:s, s:I}", "peer", c->peer, "error",
             "frame length out of range", "length", (json_int_t)len);
      return false;
    }
    if (c->in_len - off - 2 < len)
      break;
    struct tp_iso_msg m;
    char err[128];
    if (tp_iso_unpack(&m, c->in + off + 2, len, err, sizeof err) != 0) {
      /* The frame itself is whole: drop it and go on with the next, so the
       * answers already queued and the messages after it are not lost with
       * the connection (a frame length out of range above has lost the
       * framing, and closes it). */
      tp_log(TP_LOG_ERROR, "sim_iso_malformed", "{s:s, s:s}", "peer", c->peer, "error", err);
      off += 2 + len;
      continue;
    }
    off += 2 + len;
    ok = handle(c, &m);
    tp_iso_free(&m);
    if (!ok)
      break;
  }
  memmove(c->in, c->in + off, c->in_len - off);
  c->in_len -= off;
  return ok;
}

static void on_readable(struct iconn *c)
{
  for (;;) {
    ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, MSG_DONTWAIT);
    if (n > 0) {
      c->in_len += (size_t)n;
      if (!consume(c)) {
        conn_close(c, "malformed message or outage");
        return;
      }
      continue;
    }
    if (n == 0) {
      conn_close(c, NULL);
      return;
    }
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      conn_close(c, "read error");
    return;
  }
}

static void on_accept(void)
{
  for (;;) {
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    int fd = accept4(lfd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return;
    struct tp_sim_behaviour b;
    tp_sim_behaviour(proc_name, &b);
    if (b.outage || n_conns >= ISO_MAX_CONNS) {
      close(fd); /* refused: the host is down (or full) */
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct iconn *c = calloc(1, sizeof *c);
    if (!c) {
      close(fd);
      continue;
    }
    c->fd = fd;
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->mu, NULL);
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    snprintf(c->peer, sizeof c->peer, "%s:%u", ip, ntohs(sa.sin_port));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(efd, EPOLL_CTL_ADD, fd, &ev) != 0) {
      close(fd);
      pthread_mutex_destroy(&c->mu);
      free(c);
      continue;
    }
    c->next = conns;
    if (conns)
      conns->prev = c;
    conns = c;
    n_conns++;
  }
}

static void *iso_main(void *arg)
{
  (void)arg;
  struct epoll_event evs[64];
  while (!atomic_load(&stop_flag)) {
    int n = epoll_wait(efd, evs, 64, 1000);
    for (int i = 0; i < n; i++) {
      void *ptr = evs[i].data.ptr;
      if (ptr == &lfd)
        on_accept();
      else if (ptr == &wakefd) {
        uint64_t v;
        if (read(wakefd, &v, sizeof v) < 0) {
          /* nothing to do: the stop flag is checked by the loop */
        }
      } else {
        struct iconn *c = ptr;
        if (evs[i].events & EPOLLOUT) {
          pthread_mutex_lock(&c->mu);
          flush_locked(c);
          pthread_mutex_unlock(&c->mu);
        }
        if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
          on_readable(c);
      }
    }
  }
  while (conns)
    conn_close(conns, NULL);
  return NULL;
}

int tp_sim_iso_start(const char *host, uint16_t port, const char *name, uint16_t *bound)
{
  tp_scopy(proc_name, sizeof proc_name, name);
  struct sockaddr_storage sa;
  socklen_t sa_len;
  if (tp_cli_sockaddr(host, port, &sa, &sa_len) != 0)
    return -1;
  lfd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0)
    return -1;
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  socklen_t sl = sizeof sa;
  if (bind(lfd, (struct sockaddr *)&sa, sa_len) != 0 || listen(lfd, 512) != 0 ||
      getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0)
    goto fail;
  *bound = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                          : ((struct sockaddr_in *)&sa)->sin_port);
  efd = epoll_create1(EPOLL_CLOEXEC);
  wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd < 0 || wakefd < 0)
    goto fail;
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &lfd};
  struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &wakefd};
  if (epoll_ctl(efd, EPOLL_CTL_ADD, lfd, &ev) != 0 || epoll_ctl(efd, EPOLL_CTL_ADD, wakefd, &wev) != 0)
    goto fail;
  atomic_store(&stop_flag, false);
  if (pthread_create(&thread, NULL, iso_main, NULL) != 0)
    goto fail;
  running = true;
  return 0;
fail:
  tp_log(TP_LOG_ERROR, "sim_iso_listen", "{s:s, s:s}", "host", host, "error", strerror(errno));
  if (lfd >= 0)
    close(lfd);
  if (efd >= 0)
    close(efd);
  if (wakefd >= 0)
    close(wakefd);
  lfd = efd = wakefd = -1;
  return -1;
}

void tp_sim_iso_stop(void)
{
  if (!running)
    return;
  atomic_store(&stop_flag, true);
  uint64_t one = 1;
  if (write(wakefd, &one, sizeof one) < 0) {
    /* the loop wakes within a second anyway */
  }
  pthread_join(thread, NULL);
  running = false;
  close(lfd);
  close(efd);
  close(wakefd);
  lfd = efd = wakefd = -1;
}
